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
timestamps keep faust's partition order. This orders what one fetch returned; records of a fetch
still to come are not waited for (Kafka Streams' ``max.task.idle.ms``): a config published after
the observations it should govern is applied from the interval it arrives in, as before.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from itertools import repeat
from typing import Any

from faust.types import TP
from faust.types.transports import SchedulingStrategyT


def _timestamp(item: tuple[TP, Any]) -> int:
    return item[1].timestamp


class TimestampOrder(SchedulingStrategyT):
    """faust ``ConsumerScheduler``: a fetch's records by timestamp across partitions, each
    partition in offset order (module docstring)."""

    def __init__(self) -> None:
        pass

    def iterate(self, records: Mapping[TP, list]) -> Iterator[tuple[TP, Any]]:
        if len(records) == 1:  # one partition: its own order is the order
            ((tp, messages),) = records.items()
            return zip(repeat(tp), messages)
        return heapq.merge(*(zip(repeat(tp), messages) for tp, messages in records.items()), key=_timestamp)
