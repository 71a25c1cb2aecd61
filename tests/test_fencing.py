"""Fenced state writes (stream_app/kafka/fencing.py) against the real broker: a worker that lost a
partition without knowing it can no longer write its changelog partition once the new owner has
claimed it, and a claim leaves the partition ending in a record, which faust's recovery needs."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.kafka.admin import TopicSpec, ensure_topics
from stream_app.kafka.fencing import CLAIM_KEY, PartitionNotClaimed, PartitionWriters

from tests.stream_support import isolated_settings, latest_values


def test_a_former_owner_cannot_write_after_the_new_owner_claims(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path, partitions=2)
    changelog = f"{settings.app_id}-fencing-changelog"

    async def scenario():
        await ensure_topics(broker, {changelog: TopicSpec(2)})
        old, new = (PartitionWriters(broker, settings.app_id, changelog) for _ in range(2))
        try:
            await old.claim([0, 1])
            await old.write(0, [(b"e", b"old-1")])
            await new.claim([0])  # the new owner of partition 0; partition 1 stays the old one's
            with pytest.raises(PartitionNotClaimed):
                await old.write(0, [(b"e", b"old-2, written after the new owner's claim")])
            assert old.fenced == 1 and old.claimed == {1}
            await old.write(1, [(b"f", b"old, on its own partition")])
            await new.write(0, [(b"e", b"new-1")])
            with pytest.raises(PartitionNotClaimed):
                await new.write(1, [(b"f", b"never claimed")])
        finally:
            await old.close()
            await new.close()

    asyncio.run(scenario())
    assert latest_values(broker, changelog) == {b"e": b"new-1", b"f": b"old, on its own partition"}


def test_a_claim_leaves_the_partition_ending_in_a_record(broker, tmp_path):
    """faust's recovery is done when it has read the record at highwater - 1; a transaction's
    commit marker there is never delivered, so the claim's tombstone must come after it."""
    settings = isolated_settings(broker, tmp_path, partitions=1)
    changelog = f"{settings.app_id}-fencing-changelog"

    async def scenario():
        await ensure_topics(broker, {changelog: TopicSpec(1)})
        first, second = (PartitionWriters(broker, settings.app_id, changelog) for _ in range(2))
        try:
            await first.claim([0])
            await first.write(0, [(b"e", b"state")])  # ends in a commit marker
            await second.claim([0])
        finally:
            await first.close()
            await second.close()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(changelog, 0)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            consumer.seek(tp, end - 1)
            records = (await consumer.getmany(tp, timeout_ms=5000)).get(tp, [])
        finally:
            await consumer.stop()
        return end, records

    end, records = asyncio.run(scenario())
    assert [(r.offset, r.key, r.value) for r in records] == [(end - 1, CLAIM_KEY, None)]
