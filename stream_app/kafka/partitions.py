"""Where a key's messages and state live: the partition Kafka's default (murmur2) partitioner gives it."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import DefaultPartitioner

from ..settings import DEFAULT_CACHE_EXPERIMENTS

_partitioner = DefaultPartitioner()


@lru_cache(maxsize=DEFAULT_CACHE_EXPERIMENTS)  # one entry per experiment key seen lately
def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default (murmur2) partitioner gives this key: where its state lives."""
    every = list(range(partitions))
    return _partitioner(key, every, every)
