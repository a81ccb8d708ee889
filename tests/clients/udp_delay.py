#!/usr/bin/env python3
"""A UDP relay that adds a fixed delay each way (this kernel has no netem).

Listens on --listen ip:port; each client address gets its own socket to --target, so the
server sees one address per client. Datagrams are forwarded --delay-ms later in both
directions. Prints {"ready": true} once listening; runs until killed.
"""
import argparse
import asyncio
import json


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay, client):
        self.relay, self.client = relay, client

    def datagram_received(self, data, addr):
        self.relay.later(lambda: self.relay.transport.sendto(data, self.client))


class Relay(asyncio.DatagramProtocol):
    def __init__(self, target, delay):
        self.target, self.delay, self.up = target, delay, {}

    def connection_made(self, transport):
        self.transport = transport

    def later(self, f):
        asyncio.get_running_loop().call_later(self.delay, f)

    def datagram_received(self, data, addr):
        asyncio.ensure_future(self.forward(data, addr))

    async def forward(self, data, addr):
        up = self.up.get(addr)
        if up is None:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self.up[addr] = fut
            transport, _ = await loop.create_datagram_endpoint(lambda: Upstream(self, addr), remote_addr=self.target)
            fut.set_result(transport)
            up = fut
        transport = await up
        self.later(lambda: transport.sendto(data))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--delay-ms", type=float, default=50)
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    thost, tport = a.target.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Relay((thost, int(tport)), a.delay_ms / 1000), local_addr=(host, int(port)))
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
