"""Fenced state writes (stream_app/kafka/fencing.py) against the real broker: a worker that lost a
partition without knowing it can no longer write its changelog partition once the new owner has
claimed it, and a claim leaves the partition ending in a record, which faust's recovery needs.

Each scenario runs in a child interpreter, as the workers do: a fenced producer ends aiokafka's
sender task with a logged ProducerFenced traceback, and a pytest run in which that happened
in-process later failed every ast.parse (CPython 3.11.7: "AST constructor recursion depth
mismatch"), pytest's own traceback rendering included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.kafka.admin import TopicSpec, ensure_topics
from stream_app.kafka.fencing import CLAIM_KEY, PartitionNotClaimed, PartitionWriters
from tests.stream_support import isolated_settings, latest_values

ROOT = Path(__file__).resolve().parent.parent


def _in_child(scenario: str, *args: str) -> dict:
    """Run ``scenario(*args)`` (a coroutine function of this module) in a child interpreter;
    returns what it returned (JSON)."""
    code = (f"import asyncio, sys, orjson; sys.path.insert(0, {str(ROOT)!r}); import tests.test_fencing as t; "
            f"sys.stdout.buffer.write(orjson.dumps(asyncio.run(t.{scenario}(*sys.argv[1:]))))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return orjson.loads(done.stdout)


async def former_owner_after_a_new_claim(broker: str, app_id: str, changelog: str) -> dict:
    await ensure_topics(broker, {changelog: TopicSpec(2)})
    old, new = (PartitionWriters(broker, app_id, changelog) for _ in range(2))
    outcome: dict = {}
    try:
        await old.claim([0, 1])
        await old.write(0, [(b"e", b"old-1")])
        await new.claim([0])  # the new owner of partition 0; partition 1 stays the old one's
        try:
            await old.write(0, [(b"e", b"old-2, written after the new owner's claim")])
            outcome["late_write"] = "accepted"
        except PartitionNotClaimed:
            outcome["late_write"] = "refused"
        outcome["old_fenced"], outcome["old_claimed"] = old.fenced, sorted(old.claimed)
        await old.write(1, [(b"f", b"old, on its own partition")])
        await new.write(0, [(b"e", b"new-1")])
        try:
            await new.write(1, [(b"f", b"never claimed")])
            outcome["unclaimed_write"] = "accepted"
        except PartitionNotClaimed:
            outcome["unclaimed_write"] = "refused"
    finally:
        await old.close()
        await new.close()
    return outcome


def test_a_former_owner_cannot_write_after_the_new_owner_claims(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path, partitions=2)
    changelog = f"{settings.app_id}-fencing-changelog"
    outcome = _in_child("former_owner_after_a_new_claim", broker, settings.app_id, changelog)
    assert outcome == {"late_write": "refused", "old_fenced": 1, "old_claimed": [1], "unclaimed_write": "refused"}
    assert latest_values(broker, changelog) == {b"e": b"new-1", b"f": b"old, on its own partition"}


async def a_write_then_a_claim(broker: str, app_id: str, changelog: str) -> dict:
    await ensure_topics(broker, {changelog: TopicSpec(1)})
    first, second = (PartitionWriters(broker, app_id, changelog) for _ in range(2))
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
    return {"end": end, "records": [[r.offset, r.key.decode("latin-1"), r.value] for r in records]}


def test_a_claim_leaves_the_partition_ending_in_a_record(broker, tmp_path):
    """faust's recovery is done when it has read the record at highwater - 1; a transaction's
    commit marker there is never delivered, so the claim's tombstone must come after it."""
    settings = isolated_settings(broker, tmp_path, partitions=1)
    changelog = f"{settings.app_id}-fencing-changelog"
    got = _in_child("a_write_then_a_claim", broker, settings.app_id, changelog)
    assert got["records"] == [[got["end"] - 1, CLAIM_KEY.decode("latin-1"), None]]


def test_the_scenarios_can_fail():
    """The child's failures reach the test: a scenario that raises fails _in_child."""
    try:
        _in_child("no_such_scenario")
    except AssertionError as exc:
        assert "no_such_scenario" in str(exc)
    else:
        raise AssertionError("a failing child passed")
