"""A worker as a child process (``python -m stream_app worker``): used by the demo and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .embedded_broker import die_with_parent
from ..settings import Settings


WORKER_ARGV = (sys.executable, "-m", "stream_app", "worker")


class WorkerProcess:
    """``argv`` defaults to ``seqstream worker``; e.g. ``faust -A stream_app.app worker`` also works."""

    def __init__(self, settings: Settings, log_path: str | Path, extra_env: dict[str, str] | None = None,
                 argv: tuple[str, ...] | list[str] = WORKER_ARGV):
        self.settings = settings
        self.log_path = Path(log_path)
        self.extra_env = dict(extra_env or {})
        self.argv = list(argv)
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        env = {**os.environ, **self.settings.to_env(), **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, env=env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_parent(signal.SIGTERM) if sys.platform.startswith("linux")
                                        else None)
        log.close()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker not healthy after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9: no shutdown work at all, as in a crash."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
