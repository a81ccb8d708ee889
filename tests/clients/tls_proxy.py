"""A TLS terminator in front of a plain TCP server, as a CDN's rtmps edge is: accepts TLS on
127.0.0.1:LISTEN with CERT/KEY (Python's ssl, not our TLS stack) and pipes each connection to
127.0.0.1:TARGET.

usage: tls_proxy.py LISTEN TARGET CERT KEY
"""

import asyncio
import ssl
import sys

listen, target, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=context)
    async with server:
        await server.serve_forever()


asyncio.run(main())
