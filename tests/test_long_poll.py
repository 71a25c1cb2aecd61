"""The client-side long poll (stream_app/long_poll.py): the pure wait rule, and on the real broker
that an idle assigned consumer stops busy-polling while data still arrives."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient

from stream_app import long_poll
from stream_app.kafka_admin import TopicSpec, ensure_topics


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


def test_an_idle_consumer_stops_busy_polling_and_still_gets_new_data(broker, monkeypatch):
    fetches = []
    original_send = AIOKafkaClient.send

    async def counting_send(self, node_id, request, **kwargs):
        if type(request).__name__.startswith("FetchRequest"):
            fetches.append(node_id)
        return await original_send(self, node_id, request, **kwargs)

    monkeypatch.setattr(AIOKafkaClient, "send", counting_send)
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
