"""faust's own delivery rate (issue 3 context): a worker whose agent does nothing; prints figures.

Publishes the throughput workload (one message per observation, or with ``--pack`` one per
experiment-interval, as bench_stream.py does) to the embedded broker, then runs a faust worker
(this file, re-run as a child with ``--agent``) whose agent only counts what
``stream.take_events(SEQSTREAM_BATCH_SIZE, within=SEQSTREAM_BATCH_WITHIN)`` delivers, as
seqstream's agent takes it. Its rate bounds what any faust agent with this delivery can reach here.

With ``--decode`` it only times, in this process and without a broker, faust's own raw decoding
of a message into an event against the worker's (stream_app.kafka.delivery.RawSchema).

Run: python bench/bench_faust_noop.py [--pack] [--eager] [--experiments 1000] [--intervals 4]
     python bench/bench_faust_noop.py --decode
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def agent_main() -> None:
    """The child: a faust app on seqstream's settings and input topic, with a counting agent."""
    import faust

    from stream_app.settings import Settings

    settings = Settings.from_env()
    total = int(os.environ["NOOP_TOTAL"])
    App = faust.App
    schema = faust.Schema(key_serializer="raw", value_serializer="raw")
    if os.environ.get("NOOP_EAGER"):  # the worker's delivery (stream_app/kafka/delivery.py), all of it
        from stream_app.kafka.delivery import RawSchema, SeqstreamTransport, install_stream_yield
        from stream_app.metrics import Metrics

        class App(faust.App):  # seqstream's consumer
            def _new_transport(self):
                return SeqstreamTransport(self.conf.broker_consumer, self, counts=Metrics())

        install_stream_yield()
        schema = RawSchema()

    app = App(settings.app_id + "-noop", broker=f"kafka://{settings.bootstrap}", store="memory://",
                    topic_partitions=settings.partitions, topic_allow_declare=False,
                    processing_guarantee="at_least_once", consumer_auto_offset_reset="earliest",
                    web_port=settings.web_port, broker_session_timeout=settings.session_timeout,
                    broker_heartbeat_interval=settings.heartbeat_interval)
    inputs = app.topic(settings.topic("observations"), schema=schema)
    seen = {"n": 0, "t0": 0.0}

    @app.agent(inputs)
    async def count(stream):
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            seen["t0"] = seen["t0"] or time.perf_counter()
            seen["n"] += len(events)
            if seen["n"] >= total:
                elapsed = time.perf_counter() - seen["t0"]
                print(f"NOOP {seen['n']} {elapsed:.3f}", flush=True)
                os.kill(os.getpid(), 15)

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--web-port", str(settings.web_port)]
    app.main()


async def time_decoding(messages: int = 100_000, rounds: int = 3) -> None:
    """Microseconds per message through each decode function (best of ``rounds``)."""
    import faust
    from faust.types import Message

    from stream_app.app import app
    from stream_app.kafka.delivery import RawSchema

    batch = [Message("seqstream.observations", 0, i, 1.0, 0, None, b"exp-00001", b'{"unit_count": 1}', None)
             for i in range(messages)]
    decoders = {"faust Schema(key_serializer='raw', value_serializer='raw')":
                faust.Schema(key_serializer="raw", value_serializer="raw").compile(app),
                "RawSchema": RawSchema().compile(app)}
    for name, decode in decoders.items():
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            for message in batch:
                await decode(message, propagate=True)
            best = min(best, time.perf_counter() - t0)
        print(f"decode {name}: {best / messages * 1e6:.2f} us per message (best of {rounds} x {messages:,})")


async def main() -> None:
    import numpy as np

    from bench_stream import METRICS, generate_interval, pack_by_experiment, publish_all, variations_of
    from stream_app.kafka.embedded_broker import EmbeddedBroker, free_port
    from stream_app.kafka.admin import TopicSpec, ensure_topics
    from stream_app.settings import Settings
    from stream_app.kafka.topics import create_topics_async

    parser = argparse.ArgumentParser()
    parser.add_argument("--pack", action="store_true", help="one message per experiment-interval")
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--intervals", type=int, default=4)
    parser.add_argument("--eager", action="store_true",
                        help="with the worker's delivery (stream_app/kafka/delivery.py: its consumer, stream "
                             "yield and raw schema) instead of faust's own")
    parser.add_argument("--decode", action="store_true",
                        help="only time faust's raw decoding against stream_app.kafka.delivery.RawSchema (no broker)")
    args = parser.parse_args()
    if args.decode:
        await time_decoding()
        return
    with tempfile.TemporaryDirectory(prefix="faust-noop-") as tmp, EmbeddedBroker(data_dir=f"{tmp}/broker") as broker:
        settings = dataclasses.replace(Settings.from_env(), bootstrap=broker.bootstrap, app_id="noop",
                                       topic_prefix="noop.", datadir=f"{tmp}/data", web_port=free_port())
        await create_topics_async(settings)
        await ensure_topics(broker.bootstrap, {"noop-noop-__assignor-__leader": TopicSpec(partitions=1)})
        rng = np.random.default_rng(1)
        experiments = [f"exp-{i:05d}" for i in range(args.experiments)]
        messages = []
        for i in range(args.intervals):
            rows = generate_interval(rng, experiments, METRICS, variations_of(3), i, 3000.0)
            messages += pack_by_experiment(rows) if args.pack else rows
        await publish_all(broker.bootstrap, settings.topic("observations"), settings.partitions, messages,
                          settings.compression_type)
        env = {**os.environ, **settings.to_env(), "NOOP_TOTAL": str(len(messages)), "NOOP_EAGER": "1" if args.eager else ""}
        child = subprocess.run([sys.executable, __file__, "--agent"], env=env, capture_output=True, text=True,
                               timeout=600)
    found = re.search(r"NOOP (\d+) ([0-9.]+)", child.stdout + child.stderr)  # faust logs what agents print
    if not found:
        print("no-op worker did not finish:", child.stdout[-2000:], child.stderr[-2000:])
        return
    count, elapsed = int(found.group(1)), float(found.group(2))
    per_message = len(METRICS) * 3 if args.pack else 1
    print(f"faust no-op agent{' with the worker delivery' if args.eager else ''} (take_events({settings.batch_size}, within={settings.batch_within:g})), "
          f"{'one message per experiment-interval' if args.pack else 'one message per observation'}: "
          f"{count:,} messages in {elapsed:.2f} s (first to last delivery) = {count / elapsed:,.0f} msg/s "
          f"= {count * per_message / elapsed:,.0f} obs/s")


if __name__ == "__main__":
    if "--agent" in sys.argv:
        agent_main()
    else:
        asyncio.run(main())
