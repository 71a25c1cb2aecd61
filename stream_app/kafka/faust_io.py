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
import logging
from typing import Any, Callable, Iterable

from aiokafka import AIOKafkaProducer, errors

from .clients import send_keyed, send_to_partition

log = logging.getLogger(__name__)


# How a broker refuses a record for what it is (its size, its form): the same on every retry, so
# a worker that failed on it would fail again on it after every restart (a crash loop).
RECORD_REFUSALS = (errors.MessageSizeTooLargeError, errors.RecordListTooLargeError, errors.RecordTooLargeError,
                   errors.CorruptRecordException, errors.InvalidTimestampError,
                   errors.UnsupportedForMessageFormatError)


class BatchedSender:
    """Sends (key, value) pairs as record batches (clients.send_keyed) through faust's producer;
    remembers each topic's partition count after its first send.

    A batch the broker refuses (RECORD_REFUSALS) is sent again a record at a time, and each
    record refused alone goes to ``on_refused(topic, partition, key, value, error)``, which
    returns what to send in its place (a dead letter: topic, key, value) or None; should that be
    refused too, it is logged as critical. So no output can stop the worker for good.
    Records sent again alone may land after records handed over later on the same partition."""

    def __init__(self, app: Any, on_refused: Callable[..., tuple[str, bytes | None, bytes] | None] | None = None) -> None:
        self._app = app
        self._partition_counts: dict[str, int] = {}
        self.on_refused = on_refused

    def _producer(self) -> AIOKafkaProducer:
        return self._app.producer._ensure_producer()

    async def send(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> list[asyncio.Future]:
        """Returns the batches' futures (none for no messages): each is done once its batch is
        acked, or once what the broker refused of it has been dealt with."""
        if not messages:
            return []
        producer = self._producer()
        partitions = await self._partitions(producer, topic)
        batches: list = []
        futures = await send_keyed(producer, topic, partitions, messages, batches)
        return [asyncio.ensure_future(self._delivered(future, topic, partition, pairs))
                for future, (partition, pairs) in zip(futures, batches)]

    async def _partitions(self, producer: AIOKafkaProducer, topic: str) -> int:
        partitions = self._partition_counts.get(topic)
        if partitions is None:
            partitions = self._partition_counts[topic] = len(await producer.partitions_for(topic))
        return partitions

    async def _delivered(self, future: asyncio.Future, topic: str, partition: int, pairs: list) -> None:
        try:
            await future
            return
        except RECORD_REFUSALS as exc:
            if len(pairs) == 1:
                return await self._refused(topic, partition, *pairs[0], exc)
        for key, value in pairs:  # which of them: one batch each
            try:
                await (await send_to_partition(self._producer(), topic, partition, [(key, value)]))[0]
            except RECORD_REFUSALS as exc:
                await self._refused(topic, partition, key, value, exc)

    async def _refused(self, topic: str, partition: int, key: bytes | None, value: bytes, exc: BaseException) -> None:
        replacement = self.on_refused(topic, partition, key, value, exc) if self.on_refused is not None else None
        if replacement is None:
            return
        to_topic, to_key, to_value = replacement
        producer = self._producer()
        try:
            await asyncio.gather(*await send_keyed(producer, to_topic, await self._partitions(producer, to_topic),
                                                   [(to_key, to_value)]))
        except RECORD_REFUSALS as again:
            log.critical("the broker refused a %d-byte record for %s[%d] (%r) and its %d-byte dead letter (%r): "
                         "neither was written", len(value or b""), topic, partition, exc, len(to_value), again)


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
