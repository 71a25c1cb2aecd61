"""Helpers for integration tests on a real Kafka-protocol broker (see the ``broker`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from stream_app.codec import config_message, decode_row
from stream_app.kafka.embedded_broker import free_port
from stream_app.settings import Settings
from stream_app.kafka.topics import create_topics
from stream_app.kafka.worker_process import WorkerProcess
from state.config import DEFAULT_VARIANCE_METHOD
from tests.conftest import covid_request

_ids = itertools.count()


def isolated_settings(bootstrap: str, tmp_path: Path, create: bool = True, **overrides) -> Settings:
    """Own app id, topic prefix, data dir and web port: tests share one broker, nothing else."""
    n = next(_ids)
    run = f"t{int(time.time() * 1000) % 10**9}-{n}"
    settings = dataclasses.replace(
        Settings.from_env({}), bootstrap=bootstrap, app_id=f"seqstream-{run}", topic_prefix=f"{run}.",
        store="memory://", datadir=str(tmp_path / f"data-{n}"), web_port=free_port(), idle_timeout=2.0,
        session_timeout=6.0, heartbeat_interval=1.0, rebalance_timeout=10.0, log_level="warn")
    settings = dataclasses.replace(settings, **overrides)
    if create:
        create_topics(settings)
    return settings


def start_worker(settings: Settings, tmp_path: Path, name: str = "worker", **overrides) -> WorkerProcess:
    settings = dataclasses.replace(settings, **overrides)
    worker = WorkerProcess(settings, tmp_path / f"{name}.log").start()
    worker.wait_healthy(60)
    return worker


async def _produce(settings: Settings, messages) -> list:
    """Send (topic kind, key, value bytes) in order; returns RecordMetadata per message."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=2, enable_idempotence=True,
                                max_request_size=4_194_304)
    await producer.start()
    try:
        futures = [await producer.send(settings.topic(kind), key=key, value=value) for kind, key, value in messages]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


def produce(settings: Settings, messages) -> list:
    return asyncio.run(_produce(settings, messages))


def observation_messages(rows) -> list:
    return [("observations", row["experiment_id"].encode(), orjson.dumps(row)) for row in rows]


def config_messages(experiment_id: str, version: int = 1, options=None, metrics=None) -> list:
    return [("experiments", experiment_id.encode(), config_message(experiment_id, version, options or {}, metrics or {}))]


@contextlib.asynccontextmanager
async def _from_the_beginning(bootstrap: str, topic: str):
    """A group-less consumer assigned every partition of ``topic`` at its first offset; yields
    (consumer, partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        yield consumer, partitions
    finally:
        await consumer.stop()


async def _collect(settings: Settings, kind: str, done, timeout: float) -> list[dict]:
    out: list[dict] = []
    async with _from_the_beginning(settings.bootstrap, settings.topic(kind)) as (consumer, _):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(out):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    message = decode_row(record.value) if kind == "results" else orjson.loads(record.value)
                    message["_offset"] = (record.partition, record.offset)
                    out.append(message)
    return out


def collect(settings: Settings, kind: str, done=lambda out: False, timeout: float = 60.0) -> list[dict]:
    """Messages of an output topic from the beginning, until ``done(messages)`` or the timeout."""
    return asyncio.run(_collect(settings, kind, done, timeout))


async def _batch_codecs(bootstrap: str, topic: str) -> dict[int, int]:
    """codec -> number of record batches of that codec stored in ``topic`` (aiokafka's
    DefaultRecordBatch.CODEC_*: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd), read with raw Fetch
    requests: a consumer decompresses silently, so only the stored batches tell. Control batches
    (transaction markers, written by the broker) are not counted."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    codecs: dict[int, int] = {}
    try:
        await client._metadata_update(client.cluster, [topic])
        for partition in sorted(client.cluster.partitions_for_topic(topic) or ()):
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            offset = 0
            while True:
                request = FetchRequest(100, 1, 16 * 1024 * 1024, 0, [(topic, [(partition, offset, 16 * 1024 * 1024)])])
                response = await client.send(node, request)
                *_, records = response.topics[0][1][0]
                batches = MemoryRecords(records or b"")
                start = offset
                while (batch := batches.next_batch()) is not None:
                    offset = batch.next_offset
                    if batch.is_control_batch:  # a transaction marker: the broker's, never compressed
                        continue
                    codecs[batch.compression_type] = codecs.get(batch.compression_type, 0) + 1
                if offset == start:
                    break
    finally:
        await client.close()
    return codecs


def batch_codecs(bootstrap: str, topic: str) -> dict[int, int]:
    return asyncio.run(_batch_codecs(bootstrap, topic))


def worker_counter(worker: WorkerProcess, name: str, kind: str = "counter") -> float:
    """One of the worker's counters (or gauges, ``kind="gauge"``) from GET /metrics (e.g.
    "observations_in")."""
    text = urllib.request.urlopen(worker.url + "/metrics", timeout=10).read().decode()
    prefix = f"seqstream_{name}_total " if kind == "counter" else f"seqstream_{name} "
    return next(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def wait_for_counter(worker: WorkerProcess, name: str, at_least: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while worker_counter(worker, name) < at_least:
        assert time.monotonic() < deadline, f"{name} never reached {at_least}: {worker.log_tail()}"
        time.sleep(0.1)


def held_experiments(workers) -> list[set[str]]:
    """Each worker's experiments (GET /experiments: saved or changed since the last save)."""
    return [set(orjson.loads(urllib.request.urlopen(w.url + "/experiments", timeout=10).read())["experiments"])
            for w in workers]


def wait_until_held(workers, experiments: set[str], timeout: float = 30.0) -> None:
    """Until the workers together hold every one of the experiments (e.g. their configs applied)."""
    deadline = time.monotonic() + timeout
    while not experiments <= set().union(*held_experiments(workers)):
        assert time.monotonic() < deadline, f"never held {experiments}: {held_experiments(workers)}"
        time.sleep(0.1)


async def _committed_offsets(settings: Settings, kind: str) -> dict[int, int]:
    """partition -> the worker group's committed offset (the next to read) on a topic; -1 when
    nothing was committed. A consumer that never subscribes does not join the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=settings.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        topic = settings.topic(kind)
        return {p: (await consumer.committed(TopicPartition(topic, p))) or -1
                for p in sorted(consumer.partitions_for_topic(topic) or ())}
    finally:
        await consumer.stop()


def committed_offsets(settings: Settings, kind: str = "observations") -> dict[int, int]:
    return asyncio.run(_committed_offsets(settings, kind))


async def _latest_values(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    latest: dict[bytes, bytes] = {}
    async with _from_the_beginning(bootstrap, topic) as (consumer, partitions):
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.value is None:  # a tombstone (a claim's: stream_app.kafka.fencing)
                        latest.pop(record.key, None)
                    else:
                        latest[record.key] = record.value
    return latest


def latest_values(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """key -> its latest value in a topic (a changelog's current table, as the worker's recovery
    reads it), read to the end."""
    return asyncio.run(_latest_values(bootstrap, topic))


def covid_stream_rows(experiment_id: str) -> list[dict]:
    """The covid request's rows as stream observations, interval by interval, metrics in order."""
    request = covid_request()
    rows = [dict(r, experiment_id=experiment_id, metric=m["config"]["name"])
            for m in request["metrics"] for r in m["data"]]
    return sorted(rows, key=lambda r: r["interval_timestamp"])


def request_for(rows: list[dict], experiment_id: str, config: dict | None = None,
                metric_options: dict | None = None) -> dict:
    """The batch request (state.evaluate) equivalent to these stream observation rows. The
    stream's default method is named unless the config names one (evaluate's default is the
    reference service's)."""
    metric_options = metric_options or {}
    config = {"variance_method": DEFAULT_VARIANCE_METHOD, **(config or {})}
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    return {"experiment_id": experiment_id, "config": dict(config or {}), "metrics": [
        {"config": {"name": m, **metric_options.get(m, {})},
         "data": [{k: v for k, v in r.items() if k not in ("experiment_id", "metric")} for r in rows if r["metric"] == m]}
        for m in metrics]}


def result_key(row: dict) -> tuple:
    return row["experiment_id"], row["metric"], row["variation_id"], row["interval_timestamp"]


def distinct_results(rows: list[dict]) -> dict[tuple, str]:
    """Rows by key; a key emitted twice (allowed after a crash) must carry identical numbers."""
    out: dict[tuple, str] = {}
    for row in rows:
        row = {k: v for k, v in row.items() if k != "_offset"}
        text = repr(row)
        previous = out.setdefault(result_key(row), text)
        assert previous == text, f"row {result_key(row)} emitted twice with different numbers"
    return out


def until_keys(n: int):
    return lambda rows: len({result_key(r) for r in rows}) >= n
