"""The Kafka I/O a worker does, without the worker (issue 3 context): prints figures, asserts nothing.

A "null worker" in plain aiokafka does exactly the stream's I/O for the throughput workload and
nothing else: it consumes the packed observations (one message per experiment-interval, as
``bench_stream.py --pack`` publishes them) in a consumer group, and for every message produces as
many result-sized messages as the worker emits rows (metrics x treatments, 1.15 KB each) and one
state-sized changelog message (4.9 KB), as record batches per partition, waits for the acks, and
commits. Same embedded noida-db broker, same 2 cores. The figure bounds what the broker and the
client library allow; the gap between it and ``bench_stream.py --pack`` is the worker's own cost
(faust and our processing).

Run: python bench/bench_io_ceiling.py [--experiments 1000] [--intervals 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_stream import METRICS, generate_interval, pack_by_experiment, publish_all, variations_of  # noqa: E402

from stream_app.kafka.embedded_broker import EmbeddedBroker  # noqa: E402
from stream_app.kafka.clients import send_keyed  # noqa: E402
from stream_app.kafka.admin import TopicSpec, ensure_topics  # noqa: E402

ROW = b'{"row":"' + b"r" * 1140 + b'"}'  # a results row's size
STATE = b'{"state":"' + b"s" * 4900 + b'"}'  # a changelog value's size
PARTITIONS = 4


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--intervals", type=int, default=20)
    parser.add_argument("--variations", type=int, default=3)
    args = parser.parse_args()
    rows_per_message = len(METRICS) * (args.variations - 1)
    with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap, {name: TopicSpec(partitions=PARTITIONS) for name in ("obs", "res", "chg")})
        rng = np.random.default_rng(1)
        experiments = [f"exp-{i:05d}" for i in range(args.experiments)]
        messages = []
        for i in range(args.intervals):
            messages += pack_by_experiment(generate_interval(rng, experiments, METRICS, variations_of(args.variations),
                                                             i, 3000.0))
        await publish_all(broker.bootstrap, "obs", PARTITIONS, messages, None)  # filler rows: uncompressed
        consumer = AIOKafkaConsumer("obs", bootstrap_servers=broker.bootstrap, group_id="null-worker",
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, max_batch_size=262_144, acks=-1)
        await consumer.start()
        await producer.start()
        try:
            done, started = 0, None
            while done < len(messages):
                batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
                records = [r for rs in batch.values() for r in rs]
                if not records:
                    continue
                started = started or time.perf_counter()
                rows = [(r.key, ROW) for r in records for _ in range(rows_per_message)]
                states = [(r.key, STATE) for r in records]
                futures = await send_keyed(producer, "res", PARTITIONS, rows)
                await asyncio.gather(*futures, *await send_keyed(producer, "chg", PARTITIONS, states))
                await consumer.commit()
                done += len(records)
            elapsed = time.perf_counter() - started
        finally:
            await consumer.stop()
            await producer.stop()
    observations = done * len(METRICS) * args.variations
    print(f"null worker (plain aiokafka, consume packed input, produce {rows_per_message} rows of {len(ROW)} B + one "
          f"{len(STATE)} B state per message, acks=all, commit per batch): {done:,} messages = {observations:,} obs in "
          f"{elapsed:.2f} s = {observations / elapsed:,.0f} obs/s, {done * rows_per_message / elapsed:,.0f} result rows/s")


if __name__ == "__main__":
    asyncio.run(main())
