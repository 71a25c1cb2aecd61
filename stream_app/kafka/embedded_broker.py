"""A real Kafka-protocol broker as a child process, for tests and local runs.

Why: there is no Docker or Apache Kafka distribution on our machines, but the ``noida-db`` PyPI
package ships a single binary that speaks the Kafka wire protocol well enough for aiokafka and
faust (consumer groups, committed offsets, transactions, changelog recovery). This module starts
it in the foreground (``start --only kafka``) as our own child, so we know its PID and stop
exactly that process, never "whatever listens on the port".

Usage::

    with EmbeddedBroker() as broker:          # free port, temporary data dir
        ensure_topics_sync(broker.bootstrap, {...})
        ...

Inside a running event loop use ``await broker.start_async()`` (``start()`` also works there,
it just blocks the loop for the few milliseconds readiness takes).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from .admin import run_sync

__all__ = ["EmbeddedBroker", "BrokerStartError", "EmbeddedBrokerMissing", "noida_executable", "free_port",
           "LOCAL_EXTRA"]

_HARMLESS_LOG_LINE = "GLIBC_2.39' not found"  # printed by every noida-db command; harmless
LOG_NAME = "noida-db.log"


# The extra that installs noida-db (pyproject.toml): production installs talk to a real Kafka and
# need not carry a 12 MB broker binary built for one platform.
LOCAL_EXTRA = "seqstream[local]"


class BrokerStartError(RuntimeError):
    """The broker exited or never answered a metadata request; the message has the log tail."""


class EmbeddedBrokerMissing(BrokerStartError):
    """noida-db (the ``local`` extra) is not installed; the message says how to install it."""


def starting_marker(datadir: str | os.PathLike[str]) -> Path:
    """A file ``seqstream worker`` keeps in the local broker's data dir while it starts the broker
    there, so that commands started at the same moment wait for it instead of failing."""
    return Path(datadir) / "broker" / "starting"


def noida_executable() -> Path:
    """Path of the binary inside the noida_db package, made executable.

    Wheels do not always preserve the exec bit (the package's own CLI chmods it too).
    """
    try:
        path = Path(str(files("noida_db") / "noida-db"))
    except ModuleNotFoundError:
        raise EmbeddedBrokerMissing(f"the embedded broker is not installed: pip install '{LOCAL_EXTRA}', "
                                    "or set KAFKA_BOOTSTRAP to a Kafka broker") from None
    if not path.is_file():
        raise EmbeddedBrokerMissing(f"noida-db binary not found at {path}: pip install --force-reinstall '{LOCAL_EXTRA}'")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it; tiny race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent(sig: int = signal.SIGINT):
    """A preexec_fn: on Linux the child gets ``sig`` when the thread that started it dies.

    Covers what atexit and finally blocks cannot: the parent killed by SIGTERM/SIGKILL (a CI
    timeout) or dying on an unhandled error, which would otherwise orphan brokers and workers.
    """
    def preexec() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG

    return preexec


class EmbeddedBroker:
    """noida-db (Kafka only) as a child process on 127.0.0.1.

    ``port``/``data_dir`` default to a free port and a temporary directory. ``stop()`` keeps the
    data dir and port, so ``start()`` again restarts the same broker with its data (useful for
    restart tests); leaving the context manager (or ``close()``) also deletes a temporary dir.

    On Linux the broker also dies with the thread that started it (``die_with_parent``), so a
    killed test run leaves no orphan: start it from a long-lived thread (the main thread or the
    event loop's), not from a short-lived worker thread.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        ready_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._own_data_dir = data_dir is None
        self._data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="noida-kafka-"))
        self.ready_timeout = ready_timeout
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the current (or, after stop(), the last) broker process."""
        return self._proc.pid if self._proc else None

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / LOG_NAME

    @property
    def returncode(self) -> int | None:
        """The exit code of the last broker process, None while it runs (or before start)."""
        return self._proc.poll() if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the broker log, without the harmless glibc warning."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        kept = [line for line in text.splitlines() if _HARMLESS_LOG_LINE not in line]
        return "\n".join(kept[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------
    def _spawn(self) -> None:
        if self.is_running():
            return
        executable = noida_executable()  # before making the data dir: nothing is left if it is missing
        self._data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(executable), "start",
            "--data-dir", str(self._data_dir),
            "--host", self.host,
            "--only", "kafka",
            "--kafka-port", str(self.port),
        ]
        with open(self.log_path, "ab") as log:
            # Own session/process group: a Ctrl-C in the terminal or a signal to the test
            # runner's group does not hit the broker behind our back; we stop it ourselves.
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGINT) if self.die_with_parent else None,
            )
        atexit.register(self.stop)  # never leave an orphan broker if the caller forgets

    def start(self) -> EmbeddedBroker:
        """Start the broker and block until it answers a metadata request."""
        self._spawn()
        run_sync(self.wait_ready_async)
        return self

    async def start_async(self) -> EmbeddedBroker:
        """Like start(), without blocking the running event loop while waiting."""
        self._spawn()
        await self.wait_ready_async()
        return self

    async def wait_ready_async(self) -> None:
        """Retry a real metadata round trip until it works, the process dies, or time runs out.

        A TCP connect succeeds before the broker can serve requests, so it is not a readiness
        signal; ``list_topics()`` exercises the protocol path the clients will use.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        last_error: BaseException | None = None
        while loop.time() < deadline:
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                raise BrokerStartError(
                    f"noida-db exited with code {code} before becoming ready "
                    f"({self.bootstrap}, data dir {self._data_dir}); log tail:\n{self.log_tail()}"
                )
            if not await self._port_open():
                # Quiet pre-check: aiokafka logs an ERROR for every refused connection.
                await asyncio.sleep(0.05)
                continue
            client = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=1000)
            try:
                await client.start()
                await client.list_topics()
                return
            except Exception as exc:  # connection refused, timeouts, protocol not up yet
                last_error = exc
            finally:
                await client.close()
            await asyncio.sleep(0.1)
        raise BrokerStartError(
            f"noida-db at {self.bootstrap} not ready after {self.ready_timeout:.0f} s "
            f"(last error: {last_error!r}); log tail:\n{self.log_tail()}"
        )

    async def _port_open(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT (the broker saves its data), wait up to ``timeout`` s, then SIGKILL.

        Signals go to our child's PID only. Keeps data dir and port for a later start().
        """
        proc = self._proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """stop(), and delete the data dir if it was a temporary one made by us."""
        self.stop()
        if self._own_data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> EmbeddedBroker:
        return await self.start_async()

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"EmbeddedBroker({self.bootstrap}, {state}, data_dir={str(self._data_dir)!r})"
