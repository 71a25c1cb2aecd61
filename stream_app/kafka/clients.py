"""Producing observations and configs, and reading results, with plain aiokafka (CLI and demo), and
sending the worker's outputs as record batches."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from . import long_poll, zstd_level
from ..codec import decode_row
from ..settings import Settings
from .partitions import partition_for


def producer(settings: Settings) -> AIOKafkaProducer:
    zstd_level.install()
    return AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=5, enable_idempotence=True,
                            compression_type=settings.compression_type)


async def send_observations(prod: AIOKafkaProducer, settings: Settings, rows: Iterable[dict]) -> int:
    """Send rows, one message per experiment (a JSON array when it has several rows): callers
    pass one interval at a time, so each message is an experiment's interval. Returns rows sent."""
    topic = settings.topic("observations")
    by_experiment: dict[str, list[dict]] = {}
    for row in rows:
        by_experiment.setdefault(row["experiment_id"], []).append(row)
    futures = []
    for experiment, group in by_experiment.items():
        value = orjson.dumps(group[0] if len(group) == 1 else group)
        futures.append(await prod.send(topic, key=experiment.encode(), value=value))
    await asyncio.gather(*futures)
    return sum(len(group) for group in by_experiment.values())


async def send_keyed(producer: AIOKafkaProducer, topic: str, partitions: int,
                     messages: Iterable[tuple[bytes | None, bytes]]) -> list[asyncio.Future]:
    """Send (key, value) pairs as record batches, one per partition and more when one fills;
    returns the batches' futures.

    aiokafka's per-message ``send`` (a partitioner call, an accumulator lookup and a future per
    message) is several times the cost. The partition is the key's murmur2 partition, the one a
    keyed ``send`` picks, so each key's messages land on one partition in order; key-less ones go
    to partition 0.
    """
    by_partition: dict[int, list] = {}
    for key, value in messages:
        by_partition.setdefault(partition_for(key, partitions) if key else 0, []).append((key, value))
    futures = []
    for partition, pairs in by_partition.items():
        batch = producer.create_batch()
        for key, value in pairs:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start another
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one record
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def send_config(prod: AIOKafkaProducer, settings: Settings, experiment_id: str, message: bytes) -> None:
    await prod.send_and_wait(settings.topic("experiments"), key=experiment_id.encode(), value=message)


async def follow(settings: Settings, kinds: Sequence[str], *, from_beginning: bool = True,
                 stop: asyncio.Event | None = None) -> AsyncIterator[tuple[str, dict]]:
    """Yield (kind, decoded message) from the given output topics, without a consumer group."""
    long_poll.install(settings.fetch_idle_wait)  # a caught-up reader must not busy-poll noida-db either
    topics = {settings.topic(kind): kind for kind in kinds}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = []
        await consumer.topics()  # a metadata round trip, so partitions_for_topic knows the topics
        for topic in topics:
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                partitions.append(TopicPartition(topic, p))
        if not partitions:
            missing = ", ".join(topics)
            raise SystemExit(f"no such topic(s) on {settings.bootstrap}: {missing} (is the topic prefix right?)")
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                for message in messages:
                    kind = topics[tp.topic]
                    try:  # a tombstone or a foreign message must not end a reader
                        yield kind, decode_row(message.value) if kind == "results" else orjson.loads(message.value)
                    except (orjson.JSONDecodeError, TypeError, AttributeError):
                        continue
    finally:
        await consumer.stop()
