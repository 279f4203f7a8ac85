"""The upstream's upload sink, behind nginx: reads every byte of a request body, keeps none,
and only then answers 204. Usage: upload_sink.py PORT"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with nginx's upstream pool

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None:  # nginx passes on the Content-Length of every upload in the run
            self.send_error(411)
            return
        remaining = int(length)
        view = memoryview(bytearray(CHUNK))
        while remaining > 0:
            read = self.rfile.readinto(view[: min(remaining, CHUNK)])
            if not read:
                return
            remaining -= read
        self.send_response(204)
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, format: str, *args: object) -> None:
        """No log lines: the sink is not what is measured."""


def main() -> None:
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()


if __name__ == "__main__":
    main()
