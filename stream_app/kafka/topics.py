"""Every topic the worker touches, with explicit partition counts, created before anything
consumes or produces.

All topics of one kind share the partition count so that an experiment's messages (keyed by
experiment_id) land on the same partition number everywhere, and one worker owns it whole. Every
command that writes (publish, experiment set, demo, the worker) calls :func:`ensure_app_topics`
first, whoever starts first: a broker that auto-creates topics would otherwise create a topic the
first producer names with one partition, and the worker could never start on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .admin import (TopicSetupError, TopicSpec, delete_topics, ensure_topics, ensure_topics_sync, partition_counts,
                    validate_topics)
from ..settings import Settings

TABLE_NAME = "live"  # faust's changelog for it: "{app_id}-live-changelog"
FIX_COMMAND = "seqstream topics create --recreate"


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


def topic_specs(settings: Settings) -> dict[str, TopicSpec]:
    def spec(**config: str) -> TopicSpec:
        return TopicSpec(partitions=settings.partitions, config=config, replication_factor=settings.replication)

    return {
        settings.topic("observations"): spec(),
        settings.topic("experiments"): spec(**{"cleanup.policy": "compact"}),  # latest config per experiment
        settings.topic("ticks"): spec(),  # internal: idle-interval punctuation for the agent
        settings.topic("results"): spec(),
        settings.topic("alerts"): spec(),
        settings.topic("deadletter"): spec(),
        changelog_topic(settings): spec(**{"cleanup.policy": "compact"}),
        # faust's assignor creates this itself with one partition, unless a broker auto-creates it first
        f"{settings.app_id}-__assignor-__leader": TopicSpec(partitions=1, replication_factor=settings.replication),
    }


@dataclass(frozen=True)
class TopicStatus:
    """One topic of the configuration against the broker: ``found`` is None when it is missing."""

    name: str
    wanted: int
    found: int | None

    @property
    def state(self) -> str:
        return "ok" if self.found == self.wanted else "missing" if self.found is None else "MISMATCH"


class TopicMismatch(TopicSetupError):
    """Topics exist with other partition counts than the configuration's; ``str()`` is one line
    naming each, what it has, what it should have, and the command that fixes it."""


def mismatch_line(mismatches: dict[str, tuple[int, int]]) -> str:
    details = "; ".join(f"topic {name} has {found} partition(s), the configuration wants {wanted}"
                        for name, (found, wanted) in sorted(mismatches.items()))
    it, its = ("it", "its") if len(mismatches) == 1 else ("them", "their")
    return (f"{details} (SEQSTREAM_PARTITIONS): run `{FIX_COMMAND}` to delete and recreate {it} "
            f"({its} messages are lost), or use another SEQSTREAM_TOPIC_PREFIX")


async def check_topics(settings: Settings) -> list[TopicStatus]:
    """Each configured topic with its partition count on the broker (nothing is created)."""
    counts = await partition_counts(settings.bootstrap)
    return [TopicStatus(name, spec.partitions, counts.get(name)) for name, spec in topic_specs(settings).items()]


async def ensure_app_topics(settings: Settings) -> dict[str, int]:
    """Create the missing topics and verify every partition count; a mismatch raises
    :class:`TopicMismatch` with its one-line explanation."""
    try:
        return await ensure_topics(settings.bootstrap, topic_specs(settings))
    except TopicSetupError as exc:
        if exc.mismatches:
            raise TopicMismatch(mismatch_line(exc.mismatches), exc.mismatches) from None
        raise


async def recreate_mismatched(settings: Settings) -> list[TopicStatus]:
    """Delete the topics whose partition count is wrong, then create every missing one. Returns
    the statuses found before (their messages are gone).

    Nothing is deleted unless the broker first says it would create every replacement (and every
    missing topic) as configured: a spec it refuses (a replication factor above the broker count,
    say) must not cost the old topics their messages."""
    before = await check_topics(settings)
    wrong = [status.name for status in before if status.state == "MISMATCH"]
    if wrong:
        specs = topic_specs(settings)
        await validate_topics(settings.bootstrap, {s.name: specs[s.name] for s in before if s.state != "ok"})
        await delete_topics(settings.bootstrap, wrong)
    await ensure_app_topics(settings)
    return before


def create_topics(settings: Settings) -> None:
    ensure_topics_sync(settings.bootstrap, topic_specs(settings))


async def create_topics_async(settings: Settings) -> None:
    await ensure_app_topics(settings)
