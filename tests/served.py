"""A real OpenAI-compatible server for the served-model tests: `transformers serve` over
the embedded model's folder (`agentflow model-path`), standing in for vLLM, Ollama's /v1
or OpenAI itself. Its model id is the folder's path, so a test names the model
`openai:<path>` with the server's base URL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_S = 180.0  # loading the model on a shared 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """`transformers serve MODEL_PATH` on a fixed local port; stop and start it again on
    the same port (the fault tests take it down mid-eval)."""

    def __init__(self, model_path: str, log: Path, port: int | None = None) -> None:
        self.model_path = model_path
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The agentflow model name of what the server serves."""
        return f"openai:{self.model_path}"

    def start(self) -> None:
        command = [str(Path(sys.executable).with_name("transformers")), "serve", self.model_path,
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]
        # One thread: the machine's two cores are shared with the test process (and the
        # local planner's engine); more threads only fight over them (measured on a busy
        # 2-core machine: 40 tokens in 4.3 s with one thread, 31 s with the default).
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"transformers serve did not answer within {STARTUP_S:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


class _Proxy:
    """An HTTP proxy on 127.0.0.1 in front of a real server; subclasses decide per request
    (`_handle`) what reaches the server. Used as a context manager."""

    def __init__(self, upstream: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.upstream = upstream.rstrip("/")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

            def reply(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(code)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self) -> None:
                proxy._handle(self, "GET", b"")

            def do_POST(self) -> None:
                proxy._handle(self, "POST", self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.closed = False

    def _handle(self, handler, method: str, body: bytes) -> None:
        raise NotImplementedError

    def _forward(self, handler, method: str, body: bytes) -> httpx.Response:
        """The real server's answer to the request (the caller sends it back: `handler.reply`)."""
        return httpx.request(method, self.upstream + handler.path.removeprefix("/v1"), content=body,
                             headers={"Content-Type": "application/json"}, timeout=300)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FlakyProxy(_Proxy):
    """A proxy in front of a real server whose first `failures` chat requests fail the way
    busy servers do: `status` (429, 503, ...) or, with status None, an answer slower than
    the client's timeout. Everything else is forwarded. It tests the clients' retries."""

    def __init__(self, upstream: str, status: int | None, failures: int = 1, delay_s: float = 15.0) -> None:
        super().__init__(upstream)
        self.status, self.failures, self.delay_s = status, failures, delay_s
        self.failed = 0
        self.forwarded = 0  # chat requests that reached the server

    def _handle(self, handler, method: str, body: bytes) -> None:
        if method == "POST" and self.failed < self.failures:
            self.failed += 1
            if self.status is None:
                time.sleep(self.delay_s)  # the client has given up by now
            else:
                handler.reply(self.status, b'{"error": {"message": "busy"}}', {"Retry-After": "0"})
                return
        response = self._forward(handler, method, body)
        self.forwarded += method == "POST"
        handler.reply(response.status_code, response.content, {})


class DyingProxy(_Proxy):
    """A proxy in front of a real server that answers `answers` chat requests and then goes
    away (stops listening), as a server that dies mid-run: later calls are refused, and the
    client's retries are refused too. GET requests (the start-up check) are forwarded."""

    def __init__(self, upstream: str, answers: int = 1) -> None:
        super().__init__(upstream)
        self.answers = answers
        self.answered = 0

    def _handle(self, handler, method: str, body: bytes) -> None:
        import threading

        response = self._forward(handler, method, body)
        handler.reply(response.status_code, response.content, {})
        if method == "POST":
            self.answered += 1
            if self.answered >= self.answers:  # die: from another thread, shutdown() waits for this one
                threading.Thread(target=self.close, daemon=True).start()
