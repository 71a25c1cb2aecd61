"""The client-side long poll (stream_app/kafka/long_poll.py): the pure wait rule, and on the real broker
that an idle assigned consumer stops busy-polling while data still arrives."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient

from stream_app.kafka import long_poll
from stream_app.kafka.admin import TopicSpec, ensure_topics


@pytest.mark.parametrize(
    "elapsed, got_records, max_wait, cap, expected",
    [
        (0.001, False, 0.5, 0.005, 0.004),  # empty and early: wait out the capped rest
        (0.001, False, 0.002, 0.005, 0.001),  # the broker's own wait is shorter than the cap
        (0.001, True, 0.5, 0.005, 0.0),  # records: fetch again at once
        (0.6, False, 0.5, 0.005, 0.0),  # a broker that waited: nothing added
        (0.001, False, 0.5, 0.0, 0.0),  # cap 0 turns it off
    ],
)
def test_idle_wait_rule(elapsed, got_records, max_wait, cap, expected):
    assert long_poll.idle_wait(elapsed, got_records, max_wait, cap) == pytest.approx(expected)


@pytest.fixture
def fetches(monkeypatch) -> list:
    """The node of every Fetch request any aiokafka client sends while the test runs."""
    sent = []
    original_send = AIOKafkaClient.send

    async def counting_send(self, node_id, request, **kwargs):
        if type(request).__name__.startswith("FetchRequest"):
            sent.append(node_id)
        return await original_send(self, node_id, request, **kwargs)

    monkeypatch.setattr(AIOKafkaClient, "send", counting_send)
    return sent


def test_an_idle_consumer_stops_busy_polling_and_still_gets_new_data(broker, fetches):
    topic = f"longpoll-{uuid.uuid4().hex[:8]}"
    cap = 0.05

    async def fetches_in(consumer_cap: float, seconds: float = 1.0) -> int:
        long_poll.install(consumer_cap)
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=500)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_end(tp)
            await asyncio.sleep(0.2)  # settle: position known, fetch loop running
            before = len(fetches)
            await asyncio.sleep(seconds)
            counted = len(fetches) - before
            # Idle, yet data produced now still arrives.
            producer = AIOKafkaProducer(bootstrap_servers=broker)
            await producer.start()
            try:
                await producer.send_and_wait(topic, b"hello", partition=0)
            finally:
                await producer.stop()
            got = await asyncio.wait_for(consumer.getone(), timeout=10)
            assert got.value == b"hello"
            return counted
        finally:
            await consumer.stop()

    async def run():
        await ensure_topics(broker, {topic: TopicSpec(partitions=1)})
        try:
            spinning = await fetches_in(0.0)
            waiting = await fetches_in(cap)
        finally:
            long_poll.install(long_poll.DEFAULT_CAP_SECONDS)
        return spinning, waiting

    spinning, waiting = asyncio.run(run())
    # At most one fetch per cap interval, plus the one in flight and the produce wake-up.
    assert waiting <= 1.0 / cap + 5, (spinning, waiting)
    if not os.environ.get("KAFKA_BOOTSTRAP"):  # noida-db answers empty fetches at once
        assert spinning > 5 * waiting, (spinning, waiting)


def test_fetches_wait_while_fetched_records_are_not_taken_and_resume_when_they_are(broker, fetches):
    """While records fetched for one partition wait for the application, an empty fetch for the
    other is followed by a wait of up to busy_cap, not cap; once the application takes them, data
    on the other partition arrives as promptly as before."""
    topic = f"longpoll-busy-{uuid.uuid4().hex[:8]}"
    cap, busy_cap = 0.005, 0.25

    async def fetches_while_busy(installed_busy_cap: float) -> tuple[int, float]:
        long_poll.install(cap, installed_busy_cap)
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=500)
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await consumer.start()
        await producer.start()
        try:
            busy_tp, idle_tp = TopicPartition(topic, 0), TopicPartition(topic, 1)
            consumer.assign([busy_tp, idle_tp])
            await consumer.seek_to_end(busy_tp, idle_tp)
            await asyncio.sleep(0.2)
            await producer.send_and_wait(topic, b"backlog", partition=0)
            fetcher = consumer._fetcher
            deadline = asyncio.get_running_loop().time() + 10
            while busy_tp not in fetcher._records:  # fetched, not taken
                assert asyncio.get_running_loop().time() < deadline, "the record was never fetched"
                await asyncio.sleep(0.01)
            before = len(fetches)
            await asyncio.sleep(1.0)
            counted = len(fetches) - before
            taken = await consumer.getmany(busy_tp, timeout_ms=1000)
            assert [r.value for r in taken[busy_tp]] == [b"backlog"]
            await asyncio.sleep(0.3)  # no longer busy: back to the short wait
            sent_at = asyncio.get_running_loop().time()
            await producer.send_and_wait(topic, b"new", partition=1)
            got = await asyncio.wait_for(consumer.getone(idle_tp), timeout=10)
            assert got.value == b"new"
            return counted, asyncio.get_running_loop().time() - sent_at
        finally:
            await producer.stop()
            await consumer.stop()

    async def run():
        await ensure_topics(broker, {topic: TopicSpec(partitions=2)})
        try:
            busy_waiting = await fetches_while_busy(busy_cap)
            cap_only = await fetches_while_busy(cap)
        finally:
            long_poll.install()
        return busy_waiting, cap_only

    (busy_fetches, busy_delay), (cap_fetches, _) = asyncio.run(run())
    assert busy_fetches <= 1.0 / busy_cap + 3, (busy_fetches, cap_fetches)
    assert busy_delay < busy_cap, busy_delay  # once taken, the long wait no longer applies
    if not os.environ.get("KAFKA_BOOTSTRAP"):  # noida-db answers empty fetches at once
        assert cap_fetches > 5 * busy_fetches, (busy_fetches, cap_fetches)
