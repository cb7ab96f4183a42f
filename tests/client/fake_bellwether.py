"""Stand-in for the bellwether binary in bench-compare tests.

`fake_bellwether.py sim --config FILE --listen HOST:PORT` and
`fake_bellwether.py serve --config FILE` (listen address read from a `listen: HOST:PORT` line of
the rendered config). Answers chat completions; `serve` also answers GET /v1/metrics/queue and
rejects every 5th request with 429 so the two runs differ. Binds with SO_REUSEPORT, as bellwether
does."""
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode = sys.argv[1]
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
config = open(args["--config"]).read()
if mode == "sim":
    listen = args["--listen"]
else:
    listen = next(l.split(":", 1)[1].strip() for l in config.splitlines() if l.startswith("listen:"))
host, port = listen.rsplit(":", 1)
counter = {"n": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if mode == "sim" and self.path == "/sim/stats":
            with lock:
                n = counter["n"]
            self.reply(200, {"requests": n, "rejected_429": 0})
            return
        self.reply(200, {"queue_depth": 4 if mode == "serve" else 0})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with lock:
            counter["n"] += 1
            n = counter["n"]
        if mode == "serve" and n % 5 == 0:
            self.reply(429, {"error": {"message": "busy", "type": "rate_limit_error"}}, [("Retry-After", "1")])
            return
        self.reply(200, {"id": "x", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}},
                   [("x-bellwether-model", body["model"])])


class Server(ThreadingHTTPServer):
    # As bellwether's listeners do: the bench tool keeps the port bound until this one listens.
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


Server((host, int(port)), Handler).serve_forever()
