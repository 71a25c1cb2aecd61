"""The order in which one fetch's records are delivered across partitions and topics.

Kafka orders records within a partition only. faust's default strategy delivers a fetch round
robin, one record per topic and partition in turn, so a worker that starts on a backlog read an
experiment's config (experiments topic) only after as many observations as there were configs
ahead of it in its partition: the experiment's first intervals were scored under the default
config (a burn-in experiment showed "inconclusive", tests/test_dashboard.py, about one run in
six). Kafka Streams orders a task's input by timestamp instead: its PartitionGroup always takes
the partition whose head record has the lowest timestamp. :class:`TimestampOrder` does the same
within each fetch: configs published before observations are applied before them.

Each partition's own order is kept whatever its timestamps say (a merge of the partitions' record
lists by their head records, never a sort), so offsets are still delivered in order and nothing
the delivery code relies on (read offsets, gaps, records fetched again) changes. Records of equal
timestamps: the experiments topic first (configs govern the observations published with
them), then faust's partition order. This orders what one fetch returned; records of a fetch
still to come are not waited for (Kafka Streams' ``max.task.idle.ms``): a config published after
the observations it should govern is applied from the interval it arrives in, as before.
Timestamps are the producers' (CreateTime; the broker's under LogAppendTime): a config producer
whose clock runs ahead has its config ordered that much later, as in Kafka Streams.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from itertools import repeat
from typing import Any

from faust.types import TP
from faust.types.transports import SchedulingStrategyT


class TimestampOrder(SchedulingStrategyT):
    """faust ``ConsumerScheduler``: a fetch's records by timestamp across partitions, each
    partition in offset order (module docstring). On equal timestamps the records of
    ``first_topics`` go first: a producer that publishes a config and then its observations
    within one millisecond (one batch) gives them one timestamp, and the config must still
    govern them. :meth:`preferring` makes the class faust instantiates."""

    first_topics: frozenset[str] = frozenset()

    @classmethod
    def preferring(cls, *topics: str) -> type[TimestampOrder]:
        return type(cls.__name__, (cls,), {"first_topics": frozenset(topics)})

    def __init__(self) -> None:
        pass

    def iterate(self, records: Mapping[TP, list]) -> Iterator[tuple[TP, Any]]:
        if len(records) == 1:  # one partition: its own order is the order
            ((tp, messages),) = records.items()
            return zip(repeat(tp), messages)
        first = self.first_topics

        def key(item: tuple[TP, Any]) -> tuple[int, bool]:
            return item[1].timestamp, item[0].topic not in first

        return heapq.merge(*(zip(repeat(tp), messages) for tp, messages in records.items()), key=key)
