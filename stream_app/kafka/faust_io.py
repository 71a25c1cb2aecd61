"""Private faust and aiokafka internals: ``Producer._ensure_producer``, ``Consumer._read_offset``,
``Consumer._thread._consumer`` and aiokafka's ``AIOKafkaConsumer._coordinator.member_id`` and
``_coordinator._coordination_task`` (checked
against faust-streaming 0.15.3 and aiokafka 0.14.0; tests/test_internals.py fails when they are
gone).

The aiokafka producer behind faust's, for sending record batches that faust flushes before it
commits offsets, and the consumer's last delivered offsets, for the lag metric.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from aiokafka import AIOKafkaProducer

from .clients import send_keyed


class BatchedSender:
    """Sends (key, value) pairs as record batches (clients.send_keyed) through faust's producer;
    remembers each topic's partition count after its first send."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._partition_counts: dict[str, int] = {}

    def _producer(self) -> AIOKafkaProducer:
        return self._app.producer._ensure_producer()

    async def send(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> list[asyncio.Future]:
        """Returns the batches' futures (none for no messages)."""
        if not messages:
            return []
        producer = self._producer()
        partitions = self._partition_counts.get(topic)
        if partitions is None:
            partitions = self._partition_counts[topic] = len(await producer.partitions_for(topic))
        return await send_keyed(producer, topic, partitions, messages)


def consumer_lag(consumer: Any, topics: Iterable[str]) -> int:
    """Messages behind the log end on the consumer's assigned partitions of ``topics``."""
    wanted = set(topics)
    lag = 0
    for tp in consumer.assignment():
        if tp.topic in wanted:
            highwater = consumer.highwater(tp)
            read = consumer._read_offset.get(tp)  # faust's last delivered offset per partition
            if highwater is not None:
                lag += max(0, highwater - (read + 1 if read is not None else 0))
    return lag


def group_member_id(consumer: Any) -> str | None:
    """This worker's member id in its consumer group (GET /health: which member a process is),
    None before it has joined."""
    try:
        return consumer._thread._consumer._coordinator.member_id or None
    except AttributeError:
        return None


def coordination_failure(consumer: Any) -> BaseException | None:
    """The error that ended aiokafka's group coordination task, None while it runs.

    aiokafka logs "Unexpected error in coordinator routine" and ends the task (seen: noida-db
    0.2.3 answering a joining member's SyncGroup with an empty assignment under CPU load, which
    aiokafka cannot decode). The consumer then neither heartbeats nor rejoins, and faust does not
    notice: the worker goes on fetching its last partitions as a member the group dropped."""
    try:
        task = consumer._thread._consumer._coordinator._coordination_task
    except AttributeError:
        return None
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()
