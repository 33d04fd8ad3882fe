"""greeter: the Python standard library's http.server. `GET /greet?name=Ada` → `{"text": "Hello, Ada!"}`.

It has no health endpoint, reads its port from PORT and refuses to start without GREETING.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def greeting(name: str) -> str:
    return f"{os.environ['GREETING']}, {name}!"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != "/greet":
            self.send_error(404)
            return
        name = parse_qs(url.query).get("name", ["world"])[0]
        body = json.dumps({"text": greeting(name)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"greeter: {format % args}\n")


def main() -> None:
    if not os.environ.get("GREETING"):
        sys.exit("greeter: GREETING is not set")
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()


if __name__ == "__main__":
    main()
