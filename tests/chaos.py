"""The chaos run: two workers, experiments published continuously, ``kill -9`` of a random worker
again and again (restarted each time), then every result compared with ``state.evaluate`` on the
same data. Used by tests/test_chaos.py (bounded, in the suite) and bench/soak_chaos.py (longer).

A worker that exits by itself is started again, as its supervisor would (tests/chaos.py
Supervisor): one whose group coordination ended for good exits with status 3 by design (seen when
noida-db answers a SyncGroup with an empty assignment under load); the report lists such exits.

Only workers are killed, never the broker: noida-db may lose acknowledged writes when it is
killed itself (shared/docs/broker.md), which would test the broker, not the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from state import evaluate
from state.simulate import ExperimentSpec, MetricSpec, simulate
from stream_app.kafka.admin import evict_group_members, group_members
from stream_app.kafka.embedded_broker import free_port
from stream_app.kafka.worker_process import WorkerProcess
from tests.stream_support import (collect, config_messages, distinct_results, held_experiments, isolated_settings,
                                  produce, request_for, result_key)

# The method named, so the stream (whose default is "fieller") and evaluate (whose default is the
# reference service's "ses") compute the same statistics, resets included.
CONFIG = {"reference_variation_id": "control", "variance_method": "fieller"}
METRIC_OPTIONS = {"conv": {"is_binary": True}}


@dataclasses.dataclass(frozen=True)
class ChaosReport:
    kills: int
    published: int  # observation messages
    expected_rows: int
    received_rows: int  # result messages read, re-emissions included
    missing: list  # result keys evaluate has and the stream never emitted
    mismatched: list  # keys emitted with numbers other than evaluate's
    unexpected: list  # keys the stream emitted that evaluate has not
    deadletters: list
    seconds: float
    workers: dict  # each worker's partitions and counters at the end (what to look at when it fails)
    first_mismatches: list  # per experiment, its first mismatched row: expected and got
    exits: list = dataclasses.field(default_factory=list)  # exit statuses of workers that exited unasked (restarted)

    def dump(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2))

    def summary(self) -> str:
        return (f"{self.kills} kills, {self.published} observation messages, {self.expected_rows} result rows expected, "
                f"{self.received_rows} read; missing {len(self.missing)}, mismatched {len(self.mismatched)}, "
                f"unexpected {len(self.unexpected)}, dead letters {len(self.deadletters)}; exited unasked "
                f"{self.exits or 'none'}; {self.seconds:.0f} s")


def chaos_data(experiments: int, intervals: int) -> dict[str, list[list[dict]]]:
    """experiment -> its rows interval by interval (two metrics x two variations)."""
    specs = [ExperimentSpec(f"chaos-{i}", (MetricSpec("conv", 0.1, is_binary=True, lifts={"treatment": 0.02 * i}),
                                           MetricSpec("revenue", 3.0, sd=5.0)),
                            units_per_interval=300, intervals=intervals) for i in range(experiments)]
    return {spec.experiment_id: simulate(spec, seed) for seed, spec in enumerate(specs)}


def _messages_of_interval(data, i: int, packed: set[str]) -> list[tuple[bytes, bytes]]:
    """Interval ``i`` of every experiment: one message per row, or one JSON array per experiment
    for those in ``packed`` (both input shapes go through the crashes)."""
    out = []
    for experiment, intervals in data.items():
        rows = intervals[i]
        if experiment in packed:
            out.append((experiment.encode(), orjson.dumps(rows)))
        else:
            out.extend((experiment.encode(), orjson.dumps(row)) for row in rows)
    return out


class Publisher(threading.Thread):
    """Publishes the data interval by interval, ``pause`` seconds apart, in a thread of its own."""

    def __init__(self, settings, data, pause: float, packed: set[str]):
        super().__init__(daemon=True)
        self.settings, self.data, self.pause, self.packed = settings, data, pause, packed
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # noqa: BLE001 - reported by the run
            self.error = exc

    async def _publish(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, linger_ms=5, enable_idempotence=True)
        await producer.start()
        try:
            topic = self.settings.topic("observations")
            intervals = len(next(iter(self.data.values())))
            for i in range(intervals):
                futures = [await producer.send(topic, key=key, value=value)
                           for key, value in _messages_of_interval(self.data, i, self.packed)]
                await asyncio.gather(*futures)
                self.sent += len(futures)
                await asyncio.sleep(self.pause)
        finally:
            await producer.stop()


def _member_id(worker: WorkerProcess) -> str | None:
    try:
        return orjson.loads(urllib.request.urlopen(worker.url + "/health", timeout=5).read()).get("member_id")
    except OSError:
        return None


class SessionExpiry(threading.Thread):
    """What real Kafka does and noida-db does not: drop a group member that nobody heartbeats for
    ``session_timeout`` seconds. noida-db keeps a killed worker's member, and the old id of a
    member that rejoined under a new one, forever, and then waits for them in every rebalance.
    Here a member that no running worker claims (GET /health's member_id) for that long is
    evicted; a live worker's member is never touched."""

    def __init__(self, broker: str, group: str, workers: dict, session_timeout: float):
        super().__init__(daemon=True)
        self.broker, self.group, self.workers, self.timeout = broker, group, workers, session_timeout
        self.stopped = threading.Event()
        self.evicted = 0

    def run(self) -> None:
        unclaimed_since: dict[str, float] = {}
        while not self.stopped.wait(0.5):
            try:
                members = set(asyncio.run(group_members(self.broker, self.group)))
                running = [w for w in list(self.workers.values()) if w.process.poll() is None]
                claimed = {_member_id(w) for w in running}
                now = time.monotonic()
                for member in members - claimed:
                    unclaimed_since.setdefault(member, now)
                for member in set(unclaimed_since) - (members - claimed):
                    del unclaimed_since[member]
                # Never more than the members in excess of the running workers, the longest
                # unclaimed first: a live worker whose /health was slow to answer, or that
                # reported its id a moment late, keeps its membership.
                excess = max(0, len(members) - len(running))
                expired = sorted((m for m in members - claimed if now - unclaimed_since[m] >= self.timeout),
                                 key=unclaimed_since.__getitem__)[:excess]
                if expired:
                    asyncio.run(evict_group_members(self.broker, self.group, expired))
                    self.evicted += len(expired)
            except Exception:  # noqa: BLE001 - the broker busy or a worker restarting: look again
                continue


class Supervisor(threading.Thread):
    """What a process supervisor (systemd, Kubernetes) does: a worker that exits by itself is
    started again (a worker exits with status 3 when its group coordination ends for good:
    stream_app.app.measure_lag). Kills go through :meth:`kill`, which restarts the victim itself
    after ``pause`` seconds."""

    def __init__(self, settings: dict, tmp_path: Path):
        super().__init__(daemon=True)
        self.settings, self.tmp_path = settings, tmp_path
        self.generation = {name: 0 for name in settings}
        self.workers = {name: self._start(name) for name in settings}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.exits: list[int] = []  # statuses of workers that exited by themselves, started again
        self.down: set[str] = set()  # killed, restarted by kill() itself

    def _start(self, name: str) -> WorkerProcess:
        return WorkerProcess(self.settings[name], self.tmp_path / f"{name}-{self.generation[name]}.log").start()

    def _restart(self, name: str) -> None:
        self.generation[name] += 1
        self.workers[name] = self._start(name)

    def kill(self, name: str, pause: float) -> None:
        with self.lock:
            self.workers[name].kill()
            self.down.add(name)
        time.sleep(pause)  # the survivor takes over, then the victim is back
        with self.lock:
            self._restart(name)
            self.down.discard(name)

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            with self.lock:
                for name, worker in list(self.workers.items()):
                    if name not in self.down and worker.process.poll() is not None:
                        self.exits.append(worker.process.returncode)
                        self._restart(name)

    def held(self) -> set[str]:
        """The experiments the running workers hold (GET /experiments); a worker restarting holds none."""
        held: set[str] = set()
        for worker in list(self.workers.values()):
            try:
                held |= held_experiments([worker])[0]
            except OSError:
                continue
        return held

    def stop(self) -> None:
        self.stopped.set()
        if self.ident is not None:  # started (a worker that never became healthy stops it early)
            self.join(timeout=5)
        for worker in self.workers.values():
            worker.stop()


def run_chaos(broker: str, tmp_path: Path, *, seed: int = 17, kills: int = 6, experiments: int = 8,
              intervals: int = 120, pause: float = 0.3, store: str = "rocksdb://", partitions: int = 4,
              commit_interval: float = 0.5, settle_timeout: float = 60.0, **overrides) -> ChaosReport:
    """Run the chaos scenario; the kills are spread over the publishing (``intervals * pause``
    seconds) at seeded random moments, each followed by a restart of the killed worker."""
    t_start = time.monotonic()
    rng = random.Random(seed)
    settings = isolated_settings(broker, tmp_path, store=store, partitions=partitions,
                                 commit_interval=commit_interval, **overrides)
    data = chaos_data(experiments, intervals)
    expected: dict[tuple, str] = {}
    for experiment, rows in data.items():
        flat = [r for interval in rows for r in interval]
        expected.update(distinct_results([r for rs in evaluate(request_for(flat, experiment, CONFIG, METRIC_OPTIONS))
                                          for r in rs]))
    names = ("w1", "w2")
    worker_settings = {name: dataclasses.replace(settings, web_port=free_port(), datadir=str(tmp_path / name))
                       for name in names}
    supervisor = Supervisor(worker_settings, tmp_path)
    workers = supervisor.workers
    publisher = expiry = None
    killed = 0
    try:
        for w in workers.values():
            w.wait_healthy(60)
        supervisor.start()
        expiry = SessionExpiry(broker, settings.app_id, workers, settings.session_timeout)
        expiry.start()
        produce(settings, [m for e in data for m in config_messages(e, 1, CONFIG, METRIC_OPTIONS)])
        deadline = time.monotonic() + 60
        while not set(data) <= supervisor.held():
            assert time.monotonic() < deadline, f"configs never applied: {sorted(set(data) - supervisor.held())}"
            time.sleep(0.1)
        packed = {e for i, e in enumerate(data) if i % 2}
        publisher = Publisher(settings, data, pause, packed)
        publisher.start()
        span = intervals * pause
        moments = sorted(rng.uniform(0.05 * span, 0.9 * span) for _ in range(kills))
        t0 = time.monotonic()
        for moment in moments:
            time.sleep(max(0.0, t0 + moment - time.monotonic()))
            # its member expires after the session timeout (SessionExpiry)
            supervisor.kill(rng.choice(names), rng.uniform(0.0, 1.5))
            killed += 1
        publisher.join(timeout=span + 120)
        assert publisher.error is None, publisher.error
        want = set(expected)
        rows = collect(settings, "results", lambda out: want <= {result_key(r) for r in out}, timeout=settle_timeout)
        deadletters = collect(settings, "deadletter", timeout=1)
        status = {name: _status(w) for name, w in workers.items()}
    finally:
        if expiry is not None:
            expiry.stopped.set()
        supervisor.stop()
    got: dict[tuple, str] = {}
    duplicates_differ = []
    for row in rows:
        row = {k: v for k, v in row.items() if k != "_offset"}
        text = repr(row)
        previous = got.setdefault(result_key(row), text)
        if previous != text:
            duplicates_differ.append(result_key(row))
    missing = sorted(set(expected) - set(got))
    first_mismatch = {}
    for key in sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k]):
        first_mismatch.setdefault(key[0], {"key": key, "expected": expected[key], "got": got[key]})
    mismatched = sorted({k for k in expected.keys() & got.keys() if expected[k] != got[k]} | set(duplicates_differ))
    return ChaosReport(killed, publisher.sent if publisher else 0, len(expected), len(rows), missing, mismatched,
                       sorted(set(got) - set(expected)), deadletters, time.monotonic() - t_start, status,
                       list(first_mismatch.values()), supervisor.exits)


def _status(worker: WorkerProcess) -> dict:
    try:
        health = orjson.loads(urllib.request.urlopen(worker.url + "/health", timeout=5).read())
        counters = {line.split()[0]: line.split()[1] for line in
                    urllib.request.urlopen(worker.url + "/metrics", timeout=5).read().decode().splitlines()
                    if line and not line.startswith("#")}
    except OSError as exc:
        return {"alive": worker.process.poll() is None, "error": repr(exc)}
    return {"alive": worker.process.poll() is None, "partitions": health.get("partitions"), **counters}


def worker_logs(tmp_path: Path, lines: int = 30) -> str:
    out = []
    for log in sorted(tmp_path.glob("w*.log")):
        text = log.read_text(errors="replace").splitlines()
        out.append(f"--- {log.name}\n" + "\n".join(text[-lines:]))
    return "\n".join(out)
