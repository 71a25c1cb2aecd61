"""Private faust internals: ``TableManager._update_channels``, ``faust.streams._current_event``,
``Table.data`` (the store, written without faust's changelog send) and
``Recovery.active_remaining`` (checked against
faust-streaming 0.15.3; tests/test_internals.py fails when they are gone).

The worker's one table, started without faust's start-up pause, and written under the partition
each key belongs to, with its changelog records sent and acknowledged before the write counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, Iterable

from faust.streams import _current_event
from faust.tables import TableManager


class PromptTableManager(TableManager):
    """faust's table manager without its start-up pause. faust's ``TableManager.on_start`` sleeps
    a second before it starts the tables' changelog channels and recovery, to let tables that an
    app defines late register first; the worker subscribes and joins its group only after that.
    This app's one table is defined when the module is imported, before any service starts, so
    the pause only delays every start and every restart after a crash (bench_stream: first
    result row 1 s sooner)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


@contextlib.contextmanager
def _processing(event: Any):
    """As if ``event`` (an input event of the key's own partition) were being processed.

    faust's rocksdb store files a key under the *current event's* partition even with
    use_partitioner (faust.stores.rocksdb.Store._set); a batch mixes partitions, so without this a
    state would land in another partition's local database and be read back stale after a
    restart."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class StateWriteFailed(RuntimeError):
    """Changelog writes were refused or never acknowledged: the offsets must not be committed.
    ``partitions``: the input partitions whose states were not written."""

    def __init__(self, message: str, partitions: set[int]):
        super().__init__(message)
        self.partitions = partitions


async def write_acked(table: Any, writers: Any, states: Iterable[tuple[bytes, bytes, int, Any]]) -> int:
    """Write (key, value, partition, event) states durably: each partition's records in one
    transaction of its fenced producer (stream_app.kafka.fencing.PartitionWriters; the changelog
    partition is the input partition, the key's murmur2 partition, which faust's use_partitioner
    picks), all partitions at once; only once a partition's transaction is committed are its
    states written to the local store, under their event's partition (:func:`_processing`),
    without faust's own changelog send.

    Why not ``table[key] = value``: faust queues that record in its producer buffer, and the
    flush it runs before committing offsets gives up after 0.1 s without a send
    (faust.transport.producer.ProducerBuffer.flush_atmost), so offsets could be committed before
    the states they depend on were in the changelog, or past a state the broker refused; and a
    worker that lost its partitions without knowing it yet would write over the new owner's.
    Raises :class:`StateWriteFailed` naming the partitions not written (the others are written).
    Returns how many states were written.
    """
    by_partition: dict[int, list[tuple[bytes, bytes, Any]]] = {}
    for key, value, partition, event in states:
        by_partition.setdefault(partition, []).append((key, value, event))
    if not by_partition:
        return 0
    order = list(by_partition)
    results = await asyncio.gather(
        *(writers.write(p, [(key, value) for key, value, _ in by_partition[p]]) for p in order),
        return_exceptions=True)
    store = table.data
    written = 0
    failed: dict[int, BaseException] = {}
    for partition, result in zip(order, results):
        if isinstance(result, BaseException):
            failed[partition] = result
            continue
        for key, value, event in by_partition[partition]:
            with _processing(event):
                store[key] = value
        written += len(by_partition[partition])
        # recovery after a restart may start after what is stored (rocksdb)
        store.set_persisted_offset(result.topic_partition, result.offset)
    if failed:
        raise StateWriteFailed(
            f"states of partitions {sorted(failed)} not written to the changelog: {next(iter(failed.values()))!r}",
            set(failed))
    return written


def changelog_partitions_behind(app: Any) -> dict[int, int]:
    """The changelog partitions faust's table recovery still waits on (partition -> offsets to
    go), empty when it waits on none."""
    return {tp.partition: n for tp, n in app.tables.recovery.active_remaining().items() if n > 0}
