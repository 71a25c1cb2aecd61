"""Integration tests for the embedded noida-db broker and topic administration.

One broker for the module (starting one takes ~0.1 s, but sharing keeps the tests honest about
leaving state behind); each test uses its own topic names.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.kafka.embedded_broker import BrokerStartError, EmbeddedBroker
from stream_app.kafka.admin import (
    TopicSetupError,
    TopicSpec,
    ensure_topics,
    ensure_topics_sync,
    evict_group_members,
    group_members,
    topic_config,
    topic_partitions,
)


@pytest.fixture(scope="module")
def broker():
    with EmbeddedBroker() as b:
        yield b


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_broker_properties(broker):
    assert broker.is_running()
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.pid and os.path.exists(f"/proc/{broker.pid}")
    assert broker.log_path.parent == broker.data_dir and broker.log_path.exists()
    assert "GLIBC_2.39" not in broker.log_tail()


def test_ensure_topics_creates_verifies_and_is_idempotent(broker):
    events, state = _name("events"), _name("state")
    specs = {
        events: TopicSpec(partitions=4),
        state: TopicSpec(partitions=2, config={"cleanup.policy": "compact"}),
    }
    assert ensure_topics_sync(broker.bootstrap, specs) == {events: 4, state: 2}
    assert ensure_topics_sync(broker.bootstrap, specs) == {events: 4, state: 2}  # idempotent

    async def check():
        assert await topic_partitions(broker.bootstrap, events) == 4
        assert await topic_partitions(broker.bootstrap, state) == 2
        assert await topic_partitions(broker.bootstrap, _name("absent")) is None
        assert (await topic_config(broker.bootstrap, state))["cleanup.policy"] == "compact"
        # the async API, and the sync wrapper called from inside a running loop
        assert await ensure_topics(broker.bootstrap, specs) == {events: 4, state: 2}
        assert ensure_topics_sync(broker.bootstrap, specs) == {events: 4, state: 2}

    asyncio.run(check())


def test_partition_mismatch_is_an_error(broker):
    name = _name("auto")
    ensure_topics_sync(broker.bootstrap, {name: TopicSpec(partitions=1)})  # as auto-creation would
    with pytest.raises(TopicSetupError, match="has 1 partitions, want 4"):
        ensure_topics_sync(broker.bootstrap, {name: TopicSpec(partitions=4)})


def test_produce_and_consume_keyed_messages(broker):
    topic = _name("keyed")
    ensure_topics_sync(broker.bootstrap, {topic: TopicSpec(partitions=4)})
    sent = {f"user-{i}".encode(): f"value-{i}".encode() for i in range(20)}

    async def roundtrip():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            meta = {k: await producer.send_and_wait(topic, v, key=k) for k, v in sent.items()}
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=broker.bootstrap, group_id=_name("group"),
            auto_offset_reset="earliest",
        )
        await consumer.start()
        got = {}
        try:
            async with asyncio.timeout(10):
                while len(got) < len(sent):
                    for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                        for r in records:
                            got[r.key] = (r.value, tp.partition)
        finally:
            await consumer.stop()
        return meta, got

    meta, got = asyncio.run(roundtrip())
    assert {k: v for k, (v, _) in got.items()} == sent
    assert all(got[k][1] == meta[k].partition for k in sent)  # keyed partitioning is stable
    assert len({m.partition for m in meta.values()}) > 1  # keys spread over the 4 partitions


_CRASHING_MEMBER = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer
async def main():
    c = AIOKafkaConsumer(sys.argv[2], bootstrap_servers=sys.argv[1], group_id=sys.argv[3],
                         session_timeout_ms=6000, heartbeat_interval_ms=500)
    await c.start()
    while not c.assignment():
        await asyncio.sleep(0.05)
    print("assigned", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def test_evict_member_left_behind_by_kill_9(broker):
    """noida-db never expires a member that died without LeaveGroup; eviction unblocks the group."""
    topic, group = _name("crash"), _name("group")
    ensure_topics_sync(broker.bootstrap, {topic: TopicSpec(partitions=4)})
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_MEMBER, broker.bootstrap, topic, group],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "assigned"
    finally:
        child.kill()
        child.wait()

    async def replace_member():
        [stale] = await group_members(broker.bootstrap, group)
        assert await evict_group_members(broker.bootstrap, group) == [stale]
        assert await group_members(broker.bootstrap, group) == []
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group)
        await consumer.start()
        try:
            async with asyncio.timeout(10):
                while len(consumer.assignment()) < 4:
                    await consumer.getmany(timeout_ms=100)
        finally:
            await consumer.stop()

    asyncio.run(replace_member())


def test_stop_ends_the_process_and_restart_keeps_data(tmp_path):
    b = EmbeddedBroker(data_dir=tmp_path / "kafka").start()
    topic = _name("persist")
    ensure_topics_sync(b.bootstrap, {topic: TopicSpec(partitions=3)})
    first_pid = b.pid
    b.stop()
    assert not b.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)
    b.start()  # same port and data dir
    try:
        assert b.pid != first_pid
        assert asyncio.run(topic_partitions(b.bootstrap, topic)) == 3
    finally:
        b.close()
    assert (tmp_path / "kafka").exists()  # a given data dir is never deleted


def test_start_failure_reports_log_tail():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        b = EmbeddedBroker(port=busy.getsockname()[1], ready_timeout=5)
        try:
            with pytest.raises(BrokerStartError, match="already in use"):
                b.start()
        finally:
            b.close()
    assert not b.data_dir.exists()  # temporary data dir cleaned up
