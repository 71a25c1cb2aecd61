"""Start-up with many experiments in the table (issue 17: "start-up with 50,000 experiments in the
table never blocks the loop for more than 1 s"). Prints figures, asserts nothing.

On an embedded noida-db broker: the changelog is seeded with N experiment states, each with an
open interval (so the idle check that follows a start decodes every one of them), then a worker
is started on it and timed until it holds all N (GET /experiments). The figure is the worker's own
event-loop probe (GET /metrics: ``loop_stall_max_seconds``, ``loop_stalls_over_1s``: how late a
0.1 s sleep woke), for this start and, as the yardstick, for a start of the same worker on an
empty table in the same run.

Run: python bench/bench_startup.py                 (50,000 experiments, memory store; about 2 minutes)
     python bench/bench_startup.py --experiments 10000 --store rocksdb://
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_app.kafka.clients import send_to_partition  # noqa: E402
from stream_app.kafka.embedded_broker import EmbeddedBroker  # noqa: E402
from stream_app.kafka.partitions import partition_for  # noqa: E402
from stream_app.kafka.topics import changelog_topic  # noqa: E402
from stream_app.processor import BatchProcessor, InMessage  # noqa: E402
from tests.stream_support import covid_stream_rows, isolated_settings, start_worker, worker_counter  # noqa: E402

SLICE = 5_000  # experiments processed (and written) at a time while seeding


def seeded_states(settings, experiments: int):
    """experiment -> (state bytes, partition): each has taken one interval's rows and holds it
    open (no later interval has come)."""
    topics = {settings.topic("observations"): "observations"}
    first_interval = [r for r in covid_stream_rows("x") if r["interval_timestamp"] == 1600082460.0]
    processor = BatchProcessor(topics, settings.partitions)

    for start in range(0, experiments, SLICE):
        messages = []
        for i in range(start, min(experiments, start + SLICE)):
            key = f"startup-{i}".encode()
            messages += [InMessage(settings.topic("observations"), partition_for(key, settings.partitions), n, key,
                                   orjson.dumps(dict(row, experiment_id=key.decode())))
                         for n, row in enumerate(first_interval)]
        processor.process(messages, {})
        yield processor.take_states()


async def seed(settings, experiments: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, max_request_size=4_194_304, linger_ms=5)
    await producer.start()
    written = 0
    try:
        for states in seeded_states(settings, experiments):
            by_partition: dict[int, list] = {}
            for experiment, (blob, partition) in states.items():
                by_partition.setdefault(partition, []).append((experiment.encode(), blob))
            futures = []
            for partition, pairs in by_partition.items():
                futures += await send_to_partition(producer, changelog_topic(settings), partition, pairs)
            await asyncio.gather(*futures)
            written += len(states)
    finally:
        await producer.stop()
    return written


def held(worker) -> int:
    return len(orjson.loads(urllib.request.urlopen(worker.url + "/experiments", timeout=30).read())["experiments"])


def start_and_measure(settings, tmp: Path, name: str, expected: int, timeout: float) -> dict:
    t0 = time.monotonic()
    worker = start_worker(settings, tmp, name=name)
    try:
        healthy = time.monotonic() - t0
        while held(worker) < expected and time.monotonic() - t0 < timeout:
            time.sleep(0.5)
        holding = time.monotonic() - t0
        time.sleep(max(3.0, 2 * settings.idle_timeout))  # the idle check runs over every experiment
        return {"healthy_s": healthy, "holds_all_s": holding, "held": held(worker),
                "loop_stall_max_s": worker_counter(worker, "loop_stall_max_seconds", kind="gauge"),
                "stalls_over_1s": worker_counter(worker, "loop_stalls_over_1s")}
    finally:
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=50_000)
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the worker to hold them all")
    args = parser.parse_args()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        tmp = Path(tmp)
        empty = isolated_settings(broker.bootstrap, tmp, store=args.store)
        baseline = start_and_measure(empty, tmp, "empty", 0, args.timeout)
        settings = isolated_settings(broker.bootstrap, tmp, store=args.store)
        t0 = time.monotonic()
        written = asyncio.run(seed(settings, args.experiments))
        print(f"seeded {written} experiment states in {time.monotonic() - t0:.1f} s", flush=True)
        full = start_and_measure(settings, tmp, "full", written, args.timeout)
    for label, figures in (("empty table (yardstick)", baseline), (f"{written} experiments", full)):
        print(f"{label}: healthy after {figures['healthy_s']:.1f} s, holds all after {figures['holds_all_s']:.1f} s "
              f"({figures['held']} held); longest event-loop stall {figures['loop_stall_max_s']:.3f} s, "
              f"stalls over 1 s: {figures['stalls_over_1s']:.0f}")
    print(f"longest stall, ratio to the empty start: {full['loop_stall_max_s'] / max(baseline['loop_stall_max_s'], 1e-3):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
