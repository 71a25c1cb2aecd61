"""Private aiokafka internals: ``AIOKafkaAdminClient._send_request`` for LeaveGroup (checked
against aiokafka 0.14.0; tests/test_internals.py fails when it is gone).

Kafka topic administration: create topics up front with explicit partition counts.

Why this exists: a broker with topic auto-creation (real Kafka's default, and noida-db) creates an
unknown topic with ONE partition on the first metadata request for its name. faust then fails with
``PartitionsMismatch`` against its multi-partition tables/changelogs. So every topic the worker
touches (sources, sinks, changelogs, faust's internal topics) is created here first, and the
result is verified through metadata rather than trusted.

Works against any Kafka-protocol broker; only aiokafka is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.group import LeaveGroupRequest

__all__ = [
    "TopicSpec",
    "KafkaAdminError",
    "TopicSetupError",
    "ensure_topics",
    "ensure_topics_sync",
    "validate_topics",
    "topic_partitions",
    "partition_counts",
    "delete_topics",
    "topic_config",
    "group_members",
    "evict_group_members",
    "run_sync",
]

T = TypeVar("T")

_TOPIC_ALREADY_EXISTS = 36  # Kafka error codes
_UNKNOWN_MEMBER_ID = 25


@dataclass(frozen=True)
class TopicSpec:
    """What a topic must look like. ``config`` holds topic configs, e.g. ``{"cleanup.policy": "compact"}``."""

    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = 1


class KafkaAdminError(RuntimeError):
    """An admin request to the broker failed."""


class TopicSetupError(KafkaAdminError):
    """A topic could not be created, or exists with the wrong partition count: ``mismatches``
    maps each such topic to (partitions found, partitions wanted)."""

    def __init__(self, message: str, mismatches: Mapping[str, tuple[int, int]] | None = None) -> None:
        super().__init__(message)
        self.mismatches = dict(mismatches or {})


def run_sync(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even if an event loop already runs here.

    ``asyncio.run`` refuses to run inside a running loop (e.g. sync code called from a faust
    agent or an async test), so in that case the coroutine runs on a fresh loop in a worker
    thread and this call blocks until it is done. A factory (not a coroutine object) is taken so
    the coroutine is created on the loop that runs it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, request_timeout_ms: int = 10_000) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def _partition_counts(client: AIOKafkaAdminClient) -> dict[str, int]:
    """Partition count of every existing topic.

    Asks for ALL topics on purpose: a metadata request that names an unknown topic would make an
    auto-creating broker create it with one partition, the very thing this module prevents.
    """
    return {t["topic"]: len(t["partitions"]) for t in await client.describe_topics(None)}


async def partition_counts(bootstrap: str) -> dict[str, int]:
    """Partition count of every existing topic (never auto-creates one)."""
    async with _admin(bootstrap) as client:
        return await _partition_counts(client)


async def delete_topics(bootstrap: str, names: Sequence[str], *, timeout: float = 30.0) -> None:
    """Delete topics and wait until metadata no longer lists them (Kafka deletes asynchronously,
    and creating the same name again before that fails)."""
    async with _admin(bootstrap) as client:
        await client.delete_topics(list(names))
        deadline = asyncio.get_running_loop().time() + timeout
        while set(names) & set(await _partition_counts(client)):
            if asyncio.get_running_loop().time() > deadline:
                raise KafkaAdminError(f"topics still listed {timeout:.0f} s after deletion: {sorted(names)}")
            await asyncio.sleep(0.2)


async def topic_partitions(bootstrap: str, name: str) -> int | None:
    """Partition count of ``name``, or None if it does not exist (never auto-creates it)."""
    async with _admin(bootstrap) as client:
        return (await _partition_counts(client)).get(name)


async def topic_config(bootstrap: str, name: str) -> dict[str, str]:
    """The effective configs of an existing topic, e.g. ``{"cleanup.policy": "compact", ...}``."""
    async with _admin(bootstrap) as client:
        responses = await client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    return {
        entry["config_names"]: entry["config_value"]
        for response in responses
        for resource in response.to_object()["resources"]
        for entry in resource["config_entries"]
    }


def _new_topic(name: str, spec: TopicSpec) -> NewTopic:
    return NewTopic(name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                    topic_configs=dict(spec.config))


async def _create_topics(client: AIOKafkaAdminClient, topics: Sequence[NewTopic], *, validate_only: bool = False,
                         what: str = "could not create topics") -> None:
    """CreateTopics; TopicSetupError naming each refused topic with the broker's reason
    ("already exists" from a concurrent creator is fine)."""
    response = await client.create_topics(list(topics), validate_only=validate_only)
    failures = [
        f"{err['topic']}: error {err['error_code']} {err['error_message'] or ''}".rstrip()
        for err in response.to_object()["topic_errors"]
        if err["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)
    ]
    if failures:
        raise TopicSetupError(f"{what}: " + "; ".join(failures))


async def validate_topics(bootstrap: str, topics: Mapping[str, TopicSpec]) -> None:
    """Ask the broker whether it would create these topics (CreateTopics with validate_only: the
    partition count, replication factor against the live brokers, the configs), creating nothing;
    TopicSetupError with its reasons if not.

    For a topic that exists the broker answers "already exists" before checking anything else, so
    each spec is validated under a probe name that does not exist: what is judged is the spec.
    """
    async with _admin(bootstrap) as client:
        existing = await _partition_counts(client)
        probes = {}
        for name, spec in topics.items():
            probe = f"{name}.seqstream-validate"[-249:]  # Kafka's longest topic name
            while probe in existing:
                probe = probe[1:] + "x"
            probes[probe] = name
        try:
            await _create_topics(client, [_new_topic(probe, topics[name]) for probe, name in probes.items()],
                                 validate_only=True, what="the broker would refuse to create topics")
        except TopicSetupError as exc:
            message = str(exc)
            for probe, name in probes.items():
                message = message.replace(probe, name)
            raise TopicSetupError(message) from None


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, TopicSpec],
    *,
    verify_timeout: float = 10.0,
) -> dict[str, int]:
    """Create the missing topics in ``topics`` and verify every one has its partition count.

    Idempotent: existing topics are left alone ("already exists" from a concurrent creator is
    fine too), but an existing topic with a different partition count raises TopicSetupError,
    because nothing safe can be done automatically (typically it was auto-created with one
    partition before this ran). Existing topics' configs are not altered.
    Returns the verified partition count per topic.
    """
    async with _admin(bootstrap) as client:
        existing = await _partition_counts(client)
        missing = [_new_topic(name, spec) for name, spec in topics.items() if name not in existing]
        if missing:
            await _create_topics(client, missing)

        # A real multi-broker cluster may take a moment to show new topics in metadata.
        deadline = asyncio.get_running_loop().time() + verify_timeout
        while True:
            counts = await _partition_counts(client)
            absent = [name for name in topics if name not in counts]
            if not absent:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TopicSetupError(f"topics still missing after creation: {absent}")
            await asyncio.sleep(0.2)

    wrong = {
        name: (counts[name], spec.partitions)
        for name, spec in topics.items()
        if counts[name] != spec.partitions
    }
    if wrong:
        details = ", ".join(f"{n} has {have} partitions, want {want}" for n, (have, want) in wrong.items())
        raise TopicSetupError(
            f"partition count mismatch: {details} (was it auto-created before ensure_topics ran? "
            "delete and recreate it, or use a new name)",
            mismatches=wrong,
        )
    return {name: counts[name] for name in topics}


async def group_members(bootstrap: str, group_id: str) -> list[str]:
    """Member ids the broker currently holds for a consumer group (empty if none/unknown)."""
    async with _admin(bootstrap) as client:
        responses = await client.describe_consumer_groups([group_id])
    return [
        member["member_id"]
        for response in responses
        for group in response.to_object()["groups"]
        for member in group["members"]
    ]


async def evict_group_members(
    bootstrap: str, group_id: str, member_ids: Sequence[str] | None = None
) -> list[str]:
    """Remove members from a consumer group by sending LeaveGroup on their behalf.

    Why: noida-db 0.2.3 never expires a member whose process died without leaving (kill -9,
    OOM): its session timeout is ignored, so a restarted worker (new member id) waits in
    JoinGroup/SyncGroup forever. Real Kafka drops such members after ``session.timeout.ms``.
    Call this in crash tests after killing a worker and before starting its replacement.
    Default: every current member, which is right when all of the group's workers are dead
    (a live member that gets evicted just rejoins). Returns the evicted member ids.
    """
    targets = list(member_ids) if member_ids is not None else await group_members(bootstrap, group_id)
    async with _admin(bootstrap) as client:
        coordinator = await client.find_coordinator(group_id)
        for member_id in targets:
            response = await client._send_request(LeaveGroupRequest(group_id, member_id), coordinator)
            if response.error_code not in (0, _UNKNOWN_MEMBER_ID):
                raise KafkaAdminError(f"LeaveGroup({group_id}, {member_id}) failed: error {response.error_code}")
    return targets


def ensure_topics_sync(
    bootstrap: str,
    topics: Mapping[str, TopicSpec],
    *,
    verify_timeout: float = 10.0,
) -> dict[str, int]:
    """Sync wrapper of :func:`ensure_topics`; safe to call with or without a running loop."""
    return run_sync(lambda: ensure_topics(bootstrap, topics, verify_timeout=verify_timeout))
