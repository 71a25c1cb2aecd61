"""The README tour, run as written on the embedded default: the commands of its marked block, in
order, each through bash in a fresh directory with KAFKA_BOOTSTRAP unset, exactly as a newcomer
pastes them after the first set-up command. ``seqstream worker &`` and ``kill %1`` are the
shell's job control, which the test does itself (it starts the line in the background and later
sends the job SIGTERM, what ``kill %1`` sends).

The only deviation from a newcomer's machine: the local default broker and the web port are
free ports (SEQSTREAM_LOCAL_BROKER, SEQSTREAM_WEB_PORT), since 127.0.0.1:9092 and 6066 are
shared with other test runs on this machine.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from stream_app.kafka.clients import broker_answers
from stream_app.kafka.embedded_broker import free_port

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TOUR_MARK = "<!-- tour:"

pytestmark = pytest.mark.timeout(240)


def tour_commands(readme: str | None = None) -> list[str]:
    """The marked block's commands, continuation lines joined, comments kept (bash drops them)."""
    text = README.read_text() if readme is None else readme
    block = text.split(TOUR_MARK, 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


class Session:
    """A newcomer's shell: a fresh directory, no KAFKA_BOOTSTRAP, ``seqstream`` on the PATH (this
    checkout's code), background jobs."""

    def __init__(self, root: Path) -> None:
        self.cwd = root / "fresh"
        self.cwd.mkdir()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "seqstream"
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m stream_app \"$@\"\n")
        shim.chmod(0o755)
        self.local = f"127.0.0.1:{free_port()}"
        self.env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
        self.env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(REPO),
                        SEQSTREAM_LOCAL_BROKER=self.local, SEQSTREAM_WEB_PORT=str(free_port()))
        self.jobs: list[tuple[subprocess.Popen, Path]] = []
        self.ran: dict[str, subprocess.CompletedProcess] = {}

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stderr[-3000:]}\n{self.logs()}"
        assert "Traceback" not in done.stderr, f"`{command}`:\n{done.stderr[-3000:]}"
        self.ran[" ".join(words(command)[:3])] = done
        return done

    def background(self, command: str) -> subprocess.Popen:
        log = self.cwd.parent / f"job{len(self.jobs) + 1}.log"
        with open(log, "wb") as out:
            argv = words(command)
            assert argv[-1] == "&", command
            job = subprocess.Popen(["bash", "-c", f"exec {shlex.join(argv[:-1])}"], cwd=self.cwd,
                                   env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.jobs.append((job, log))
        return job

    def kill(self, number: int = 1, timeout: float = 30) -> int:
        job, _ = self.jobs[number - 1]
        job.send_signal(signal.SIGTERM)
        return job.wait(timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                         for _, log in self.jobs)

    def close(self) -> None:
        for job, _ in self.jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()


@pytest.fixture
def session(tmp_path):
    s = Session(tmp_path)
    try:
        yield s
    finally:
        s.close()


def play(session: Session, commands: list[str]) -> None:
    for command in commands:
        argv = words(command)
        if argv[-1] == "&":
            session.background(command)
        elif argv[0] == "kill" and argv[1].startswith("%"):
            assert session.kill(int(argv[1][1:])) == 0, session.logs()
        else:
            session.run(command)


def file_hypotheses(path: Path) -> set[tuple[str, str]]:
    with path.open() as f:
        return {(r["metric_name"], r["variation_id"]) for r in csv.DictReader(f) if r["variation_id"] != "control"}


def check_results(session: Session, data: Path) -> None:
    """Every metric x treatment of the file reached the results, at every interval; nothing was
    dead-lettered."""
    rows = [orjson.loads(line) for line in session.ran["seqstream tail results"].stdout.splitlines()]
    assert {(r["metric"], r["variation_id"]) for r in rows} == file_hypotheses(data), session.logs()
    intervals = {r["interval_timestamp"] for r in rows}
    assert len(intervals) == 18 and len(rows) == 18 * len(file_hypotheses(data))
    assert session.ran["seqstream tail deadletter"].stdout == ""
    assert "has no messages yet" in session.ran["seqstream tail deadletter"].stderr


def test_the_readme_tour_runs_as_written(session):
    commands = tour_commands()
    assert words(commands[1]) == ["seqstream", "worker", "&"]
    assert words(commands[2])[:3] == ["seqstream", "experiment", "set"]  # issued right after the worker starts
    assert all(not w.startswith("KAFKA_BOOTSTRAP") for c in commands for w in words(c))
    play(session, commands)

    worker_log = session.jobs[0][1].read_text()
    assert f"KAFKA_BOOTSTRAP is unset: started an embedded broker on {session.local}" in worker_log
    check_results(session, session.cwd / "covid.csv")
    lower = orjson.loads(session.ran["seqstream experiment show"].stdout)["metrics"]
    assert lower["Customer support calls per visitor"] == {"lower_is_better": True}
    assert "covid" in session.ran["seqstream watch --once"].stdout
    assert (session.cwd / "covid.html").stat().st_size > 1000
    assert session.ran["seqstream topics check"].stdout.count(" ok") == 8
    # kill %1 stopped the worker, and with it the broker it had started
    deadline = time.monotonic() + 10
    while broker_answers(session.local) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not broker_answers(session.local), subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    assert (session.cwd / "seqstream-data" / "broker").is_dir()


def test_experiment_set_before_any_worker_exists(session):
    """The order that used to kill the worker for good: a config published (its topic created)
    before any worker ran. The tour's own lines, with the broker started apart first."""
    commands = {" ".join(words(c)[:3]): c for c in tour_commands()}
    session.run(commands["seqstream example covid.csv"])
    session.background("seqstream broker &")
    session.run(commands["seqstream experiment set"])  # waits for the broker, creates every topic
    assert session.run("seqstream topics check").stdout.count(" ok") == 8
    session.background(commands["seqstream worker &"])
    session.run(commands["seqstream publish covid.csv"].replace("--pace 0.2", "--pace 0"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tail = session.run(commands["seqstream tail results"])
        if len(tail.stdout.splitlines()) >= 180:
            break
    session.run(commands["seqstream tail deadletter"])
    check_results(session, session.cwd / "covid.csv")
    assert "using the broker that answers at" in session.jobs[1][1].read_text()
    assert session.kill(2) == 0 and session.kill(1) == 0, session.logs()
    assert re.search(r"seqstream broker: embedded broker on 127\.0\.0\.1:\d+", session.jobs[0][1].read_text())
