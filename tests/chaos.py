"""The chaos run: two workers, experiments published continuously, ``kill -9`` of a random worker
again and again (restarted each time), then every result compared with ``state.evaluate`` on the
same data. Used by tests/test_chaos.py (bounded, in the suite) and bench/soak_chaos.py (longer).

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
from tests.stream_support import (collect, config_messages, distinct_results, isolated_settings, produce,
                                  request_for, result_key, wait_until_held)

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

    def dump(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2))

    def summary(self) -> str:
        return (f"{self.kills} kills, {self.published} observation messages, {self.expected_rows} result rows expected, "
                f"{self.received_rows} read; missing {len(self.missing)}, mismatched {len(self.mismatched)}, "
                f"unexpected {len(self.unexpected)}, dead letters {len(self.deadletters)}; {self.seconds:.0f} s")


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


def _start(settings, tmp_path: Path, name: str, generation: int) -> WorkerProcess:
    return WorkerProcess(settings, tmp_path / f"{name}-{generation}.log").start()


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
    generation = {name: 0 for name in names}
    workers = {name: _start(worker_settings[name], tmp_path, name, 0) for name in names}
    publisher = expiry = None
    killed = 0
    try:
        for w in workers.values():
            w.wait_healthy(60)
        expiry = SessionExpiry(broker, settings.app_id, workers, settings.session_timeout)
        expiry.start()
        produce(settings, [m for e in data for m in config_messages(e, 1, CONFIG, METRIC_OPTIONS)])
        wait_until_held(list(workers.values()), set(data), timeout=60)
        packed = {e for i, e in enumerate(data) if i % 2}
        publisher = Publisher(settings, data, pause, packed)
        publisher.start()
        span = intervals * pause
        moments = sorted(rng.uniform(0.05 * span, 0.9 * span) for _ in range(kills))
        t0 = time.monotonic()
        for moment in moments:
            time.sleep(max(0.0, t0 + moment - time.monotonic()))
            victim = rng.choice(names)
            workers[victim].kill()  # its member expires after the session timeout (SessionExpiry)
            killed += 1
            time.sleep(rng.uniform(0.0, 1.5))  # the survivor takes over, then the victim is back
            generation[victim] += 1
            workers[victim] = _start(worker_settings[victim], tmp_path, victim, generation[victim])
        publisher.join(timeout=span + 120)
        assert publisher.error is None, publisher.error
        want = set(expected)
        rows = collect(settings, "results", lambda out: want <= {result_key(r) for r in out}, timeout=settle_timeout)
        deadletters = collect(settings, "deadletter", timeout=1)
        status = {name: _status(w) for name, w in workers.items()}
    finally:
        if expiry is not None:
            expiry.stopped.set()
        for w in workers.values():
            w.stop()
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
                       list(first_mismatch.values()))


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
