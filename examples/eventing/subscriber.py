#!/usr/bin/env python3
"""A tiny CloudEvents subscriber for trying the broker (standard library only).

  python3 examples/eventing/subscriber.py [PORT]

Prints every event it gets (binary mode: ce-* headers and the body). On the
path /orders it answers with a reply event (a 2xx carrying a CloudEvent),
which the broker appends back to itself; elsewhere it answers 204.
"""
import http.server
import sys
import uuid


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        attrs = {k[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        print(self.path, attrs, body[:200], flush=True)
        if self.path == "/orders" and attrs.get("type") == "com.example.order.created":
            self.send_response(200)
            self.send_header("ce-specversion", "1.0")
            self.send_header("ce-id", str(uuid.uuid4()))
            self.send_header("ce-source", "/billing")
            self.send_header("ce-type", "com.example.invoice.created")
            self.send_header("content-type", "application/json")
            reply = b'{"invoice": "pending"}'
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        else:
            self.send_response(204)
            self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
