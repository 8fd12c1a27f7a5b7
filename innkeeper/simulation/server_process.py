"""A server to talk to: `innkeeper serve` in a child process on a free port (the demo, the latency benchmark,
scripted voice calls), or an app object under uvicorn in a thread (tests, the dashboard screenshots)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ServerProcess:
    """`innkeeper serve` in a child process on a free port, for the demo, the benchmark and scripted calls.

    A context manager: entering starts it and waits until GET /healthz answers (models load first); leaving
    stops it. Its log goes to `home/server.log`.
    """

    def __init__(self, home: Path, *, env: dict[str, str] | None = None, llm: bool = False, timeout_s: float = 180):
        self.home = home
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"
        self.log = home / "server.log"
        self._env = {**os.environ, "INNKEEPER_HOME": str(home), **(env or {})}
        # The token for the server's call records and admin API: the caller's own, or one made for this run.
        self.token = self._env.setdefault("INNKEEPER_ADMIN_TOKEN", secrets.token_urlsafe(24))
        self._args = ["serve", "--port", str(self.port), *(["--llm"] if llm else [])]
        self._timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        executable = Path(sys.executable).with_name("innkeeper")
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                [str(executable), *self._args], env=self._env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def kill(self) -> None:
        """End the server the way a crash does: SIGKILL, no shutdown of its calls."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:  # not listening yet (URLError is an OSError)
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.http}/healthz did not answer within {self._timeout_s:g} s:\n{self.log_tail()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free port: yields its "host:port"."""
    import uvicorn

    from telephony import plain_protocol

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, ws_max_size=plain_protocol.MAX_BINARY_MESSAGE_BYTES + 1024, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the server did not start within 120 s")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
