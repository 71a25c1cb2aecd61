"""Producing observations and configs, and reading results, with plain aiokafka (CLI and demo), and
sending the worker's outputs as record batches."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import sys
import time
from typing import AsyncIterator, Iterable, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from . import long_poll, zstd_level
from ..codec import decode_row
from ..settings import Settings
from .partitions import partition_for


# While KAFKA_BOOTSTRAP is unset, a command waits this long for the local default broker, and up to
# LOCAL_BROKER_STARTING while a worker says it is starting one (embedded_broker.starting_marker):
# pasted as `seqstream worker & seqstream experiment set ...`, the second command starts while the
# first is still bringing its embedded broker up.
LOCAL_BROKER_GRACE = 2.0
LOCAL_BROKER_STARTING = 20.0


def split_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); ValueError for anything else."""
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def broker_answers(bootstrap: str, wait: float = 0.0) -> bool:
    """Whether a TCP connection to one of the bootstrap addresses opens, retrying for ``wait`` s.

    Only a pre-check, made before any Kafka client exists: an aiokafka client started against a
    closed port logs an error per attempt and, if its start fails, warns about itself at exit.
    """
    deadline = time.monotonic() + wait
    while True:
        for address in bootstrap.split(","):
            try:
                host, port = split_address(address)
                with socket.create_connection((host, port), timeout=1.0):
                    return True
            except (OSError, ValueError):
                continue
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def no_broker_message(settings: Settings) -> str:
    """What a command says when no broker answers where it looks."""
    if settings.bootstrap:
        return (f"no broker answers at {settings.bootstrap} (KAFKA_BOOTSTRAP): "
                "start it, or unset KAFKA_BOOTSTRAP to use the local default broker")
    return (f"no broker answers at {settings.local_broker} (KAFKA_BOOTSTRAP is unset): "
            "start one with `seqstream worker` (it starts an embedded broker there) or `seqstream broker`, "
            "or set KAFKA_BOOTSTRAP to your Kafka")


def reachable_broker(command: str, settings: Settings) -> Settings | None:
    """``settings`` pointed at KAFKA_BOOTSTRAP, or while it is unset at the local default broker;
    None, after one line on stderr, when nothing answers there."""
    from .embedded_broker import starting_marker

    address = settings.bootstrap or settings.local_broker
    answers = broker_answers(address, 0.0 if settings.bootstrap else LOCAL_BROKER_GRACE)
    marker = starting_marker(settings.datadir)
    deadline = time.monotonic() + LOCAL_BROKER_STARTING
    while not answers and not settings.bootstrap and _fresh(marker) and time.monotonic() < deadline:
        answers = broker_answers(address, 1.0)
    if answers:
        return dataclasses.replace(settings, bootstrap=address)
    print(f"seqstream {command}: {no_broker_message(settings)}", file=sys.stderr)
    return None


def _fresh(marker, age: float = LOCAL_BROKER_STARTING) -> bool:
    try:
        return time.time() - marker.stat().st_mtime < age
    except OSError:
        return False


@contextlib.asynccontextmanager
async def started_producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped on the way out even when starting it failed (aiokafka warns
    "Unclosed AIOKafkaProducer" at exit about one that was never stopped)."""
    prod = producer(settings)
    try:
        await prod.start()
        yield prod
    finally:
        await prod.stop()


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
                     messages: Iterable[tuple[bytes | None, bytes]], batches: list | None = None) -> list[asyncio.Future]:
    """Send (key, value) pairs as record batches, one per partition and more when one fills;
    returns the batches' futures, and appends to ``batches`` (when given) each one's partition
    and pairs, in the same order.

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
        futures += await send_to_partition(producer, topic, partition, pairs, batches)
    return futures


async def send_to_partition(producer: AIOKafkaProducer, topic: str, partition: int,
                            pairs: list[tuple[bytes | None, bytes]], batches: list | None = None) -> list[asyncio.Future]:
    """Send (key, value) pairs to one partition as record batches, a new one when one fills;
    appends (partition, the batch's pairs) to ``batches`` for each, when given."""
    futures = []
    batch = producer.create_batch()
    start = 0
    for index, (key, value) in enumerate(pairs):
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start another
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            if batches is not None:
                batches.append((partition, pairs[start:index]))
            start = index
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one record
    futures.append(await producer.send_batch(batch, topic, partition=partition))
    if batches is not None:
        batches.append((partition, pairs[start:]))
    return futures


async def send_config(prod: AIOKafkaProducer, settings: Settings, experiment_id: str, message: bytes) -> None:
    await prod.send_and_wait(settings.topic("experiments"), key=experiment_id.encode(), value=message)


async def _read_to(consumer: AIOKafkaConsumer, ends: dict) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


class NoSuchTopics(LookupError):
    """None of the topics a reader was asked for exists (no worker or producer has created them)."""


class BrokerUnreachable(ConnectionError):
    """The broker a reader was following stopped answering; ``str()`` is one line."""


async def _answers(bootstrap: str) -> bool:
    """Whether a TCP connection to one of the bootstrap addresses opens (within a second)."""
    for address in bootstrap.split(","):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*split_address(address)), 1.0)
        except (OSError, ValueError, asyncio.TimeoutError):
            continue
        writer.close()
        return True
    return False


async def follow(settings: Settings, kinds: Sequence[str], *, from_beginning: bool = True,
                 stop: asyncio.Event | None = None, to_end: bool = False,
                 unreachable_after: float | None = None) -> AsyncIterator[tuple[str, dict]]:
    """Yield (kind, decoded message) from the given output topics, without a consumer group.

    ``to_end``: stop once every partition is read up to the end offset it had when reading began
    (what was there, read as fast as the broker serves it, instead of waiting for a timeout).
    ``unreachable_after``: raise :class:`BrokerUnreachable` once no bootstrap address has accepted
    a connection for that many seconds (checked about every second while nothing arrives); aiokafka
    itself retries forever without a word, so a follower of a dead broker just fell silent.
    """
    long_poll.install(settings.fetch_idle_wait)  # a caught-up reader must not busy-poll noida-db either
    topics = {settings.topic(kind): kind for kind in kinds}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        partitions = []
        await consumer.topics()  # a metadata round trip, so partitions_for_topic knows the topics
        for topic in topics:
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                partitions.append(TopicPartition(topic, p))
        if not partitions:
            raise NoSuchTopics(f"no such topic(s) on {settings.bootstrap}: {', '.join(topics)} "
                               "(no worker or producer has run with this SEQSTREAM_TOPIC_PREFIX yet)")
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        ends = await consumer.end_offsets(partitions) if to_end else {}
        loop = asyncio.get_running_loop()
        checked = answered = loop.time()
        while stop is None or not stop.is_set():
            if to_end and await _read_to(consumer, ends):
                return
            batch = await consumer.getmany(timeout_ms=200)
            if unreachable_after is not None and not batch and loop.time() - checked >= 1.0:
                checked = loop.time()
                if await _answers(settings.bootstrap):
                    answered = checked
                elif checked - answered >= unreachable_after:
                    gone = BrokerUnreachable(f"the broker at {settings.bootstrap} stopped answering "
                                             f"{checked - answered:.0f} s ago")
                    # aiokafka's fetcher, stopped with no broker, lets its own task's CancelledError out
                    # of stop(); this reader's task is not cancelled, so only the reason above counts
                    with contextlib.suppress(asyncio.CancelledError):
                        await consumer.stop()
                    raise gone
            for tp, messages in batch.items():
                for message in messages:
                    kind = topics[tp.topic]
                    try:  # a tombstone or a foreign message must not end a reader
                        yield kind, decode_row(message.value) if kind == "results" else orjson.loads(message.value)
                    except (orjson.JSONDecodeError, TypeError, AttributeError):
                        continue
    finally:
        await consumer.stop()
