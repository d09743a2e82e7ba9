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
        # local planner's engine); more threads only fight over them.
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
