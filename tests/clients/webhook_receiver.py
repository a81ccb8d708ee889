"""A webhook receiver as an app backend would write one (EVENTS.md): verifies every `Sign`
with Python's own HMAC-SHA256 over the raw body, and appends one JSON line per request to
OUT: {"sign_ok", "event_id", "attempt", "status", "body"}.

usage: webhook_receiver.py PORT KEY OUT [--fail-first CODE ...] [--status-file PATH]

--fail-first CODE: the first attempt of each event of that type gets HTTP 500.
--status-file PATH: while PATH holds a number, every request is answered with it.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import sys
import threading
import time

port, key, out = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
args = sys.argv[4:]
fail_first = set()
status_file = None
# --bind ADDR: listen there (a cluster test's nodes reach it from their namespaces).
host = "127.0.0.1"
while args:
    flag = args.pop(0)
    if flag == "--fail-first":
        fail_first.add(int(args.pop(0)))
    elif flag == "--status-file":
        status_file = args.pop(0)
    elif flag == "--bind":
        host = args.pop(0)
lock = threading.Lock()
failed_once = set()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        expected = base64.b64encode(hmac.new(key, raw, hashlib.sha256).digest()).decode()
        sign_ok = hmac.compare_digest(expected, self.headers.get("Sign", ""))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        event_id = self.headers.get("Tessera-Event-Id", "")
        status = 200
        if status_file and os.path.exists(status_file):
            with open(status_file) as f:
                text = f.read().strip()
            if text:
                status = int(text)
        with lock:
            if body and body.get("EventType") in fail_first and event_id not in failed_once:
                failed_once.add(event_id)
                status = 500
            line = {
                "t": time.time(),
                "sign_ok": sign_ok,
                "event_id": event_id,
                "attempt": int(self.headers.get("Tessera-Attempt", "0")),
                "app": self.headers.get("SdkAppId"),
                "content_type": self.headers.get("Content-Type"),
                "status": status,
                "body": body,
            }
            with open(out, "a") as f:
                f.write(json.dumps(line) + "\n")
        reply = b'{"code":0}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
