"""The benchmarks' synthetic workload: experiments x 5 metrics x variations per one-minute interval,
as orjson messages keyed by experiment, and publishing them."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer  # noqa: E402

from stream_app.kafka.clients import send_keyed  # noqa: E402



METRICS = ("conversion", "revenue", "signups", "session_minutes", "retained")


BINARY = {"conversion": 0.10, "signups": 0.03, "retained": 0.40}


NORMAL = {"revenue": (5.0, 12.0), "session_minutes": (8.0, 6.0)}


START_TS = 1_700_000_000


INTERVAL_S = 60


def variations_of(n: int) -> tuple[str, ...]:
    return ("control",) + tuple(f"treatment_{i}" for i in range(1, n))


# ------------------------------------------------------------------------------ data generation
def generate_interval(rng: np.random.Generator, experiments: list[str], metrics: tuple[str, ...],
                      variations: tuple[str, ...], interval: int, units: float) -> list[tuple[bytes, bytes]]:
    """(key, value) messages for one interval of every experiment, experiment by experiment.

    Vectorised draws as state.simulate makes them (binomial sums for 0/1 metrics; normal sums and
    the chi-square decomposition of the sum of squares otherwise), encoded as stream_app/kafka/clients.py does."""
    e, v = len(experiments), len(variations)
    n = rng.poisson(units / v, size=(e, v)).astype(np.float64) + 2.0
    sums, squares = {}, {}
    for m in metrics:
        if m in BINARY:
            s = rng.binomial(n.astype(np.int64), BINARY[m]).astype(np.float64)
            sums[m], squares[m] = s.tolist(), s.tolist()
        else:
            mu, sd = NORMAL.get(m, (5.0, 10.0))
            s = rng.normal(n * mu, sd * np.sqrt(n))
            sums[m], squares[m] = s.tolist(), (s * s / n + sd * sd * rng.chisquare(n - 1)).tolist()
    ts = START_TS + interval * INTERVAL_S
    counts = n.astype(np.int64).tolist()
    out = []
    for i, experiment in enumerate(experiments):
        key = experiment.encode()
        for m in metrics:
            for k, variation in enumerate(variations):
                out.append((key, orjson.dumps({
                    "experiment_id": experiment, "metric": m, "variation_id": variation,
                    "interval_timestamp": ts, "unit_count": counts[i][k],
                    "unit_observation_sum": sums[m][i][k],
                    "unit_observation_sum_of_squares": squares[m][i][k]})))
    return out


def pack_by_experiment(messages: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """One array message per run of one experiment's rows (an experiment-interval, as
    generate_interval orders them): the envelope stream_app.codec.decode_observations accepts."""
    packed: list[tuple[bytes, bytes]] = []
    for key, group in itertools.groupby(messages, key=lambda kv: kv[0]):
        packed.append((key, b"[" + b",".join(value for _, value in group) + b"]"))
    return packed


# ------------------------------------------------------------------------------------ kafka bits
async def publish_all(bootstrap: str, topic: str, partitions: int, messages: list[tuple[bytes, bytes]],
                      compression_type: str | None) -> float:
    """Publish fast: record batches per partition (stream_app.kafka.clients.send_keyed: murmur2 of the key,
    the partition the worker expects), no per-message await, compressed as `seqstream publish`
    compresses (SEQSTREAM_COMPRESSION). Seconds until all are acked."""
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                            max_request_size=8 * 1024 * 1024, acks=1, compression_type=compression_type)
    await prod.start()
    t0 = time.perf_counter()
    try:
        futures = await send_keyed(prod, topic, partitions, messages)
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        await prod.stop()

