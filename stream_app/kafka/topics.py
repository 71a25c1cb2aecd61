"""Every topic the worker touches, with explicit partition counts, created before it consumes.

All topics of one kind share the partition count so that an experiment's messages (keyed by
experiment_id) land on the same partition number everywhere, and one worker owns it whole.
"""

from __future__ import annotations

from .admin import TopicSpec, ensure_topics, ensure_topics_sync
from ..settings import Settings

TABLE_NAME = "live"  # faust's changelog for it: "{app_id}-live-changelog"


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


def create_topics(settings: Settings) -> None:
    ensure_topics_sync(settings.bootstrap, topic_specs(settings))


async def create_topics_async(settings: Settings) -> None:
    await ensure_topics(settings.bootstrap, topic_specs(settings))
