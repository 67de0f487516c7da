"""A real chat-completions server (http.server in a thread) on 127.0.0.1 for the `openai:` judge tests.

Each test gives it a `reply(n, body) -> (status, headers, payload, delay)` function: n counts the
requests from 0, body is the parsed request; payload is a dict (sent as JSON) or bytes (sent as is).
The server records each request's body, headers (`headers[n]`, there before `reply` is called) and
arrival time (`arrivals[n]`, time.monotonic()), and the most requests it has had in flight at once
(`max_in_flight`: counted from arrival until the reply is sent).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(content: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "judge",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }


def answers_in(body: dict) -> tuple[str, str]:
    """The two answers a default-template judge prompt shows."""
    content = body["messages"][-1]["content"]
    match = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\nFirst explain", content, re.S)
    return match.group(1), match.group(2)


class ChatServer:
    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.reply = lambda n, body: (200, {}, chat_reply("[[C]]"), 0.0)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server.lock:
                    n = len(server.requests)
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.arrivals.append(time.monotonic())
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(n, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, n, body):
                status, headers, payload, delay = server.reply(n, body)
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
