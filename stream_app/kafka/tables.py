"""Private faust internals: ``TableManager._update_channels``, ``faust.streams._current_event`` and
``Table.data`` (the store, written without faust's changelog send) (checked against
faust-streaming 0.15.3; tests/test_internals.py fails when they are gone).

The worker's one table, started without faust's start-up pause, and written under the partition
each key belongs to, with its changelog records sent and acknowledged before the write counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any, Awaitable, Callable, Iterable

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
    """A changelog write was refused or never acknowledged: the offsets must not be committed."""


async def write_acked(table: Any, changelog: str, states: Iterable[tuple[bytes, bytes, Any]],
                      send: Callable[[str, list], Awaitable[list[asyncio.Future]]]) -> int:
    """Write (key, value, event) states durably: their changelog records are sent with ``send``
    (stream_app.kafka.faust_io.BatchedSender: record batches, each key to its murmur2 partition,
    which is the partition faust's use_partitioner picks) and awaited until the broker has
    acknowledged every one; only then is each written to the local store, under its event's
    partition (:func:`_processing`), without faust's own changelog send.

    Why not ``table[key] = value``: faust queues that record in its producer buffer, and the
    flush it runs before committing offsets gives up after 0.1 s without a send
    (faust.transport.producer.ProducerBuffer.flush_atmost), so offsets could be committed before
    the states they depend on were in the changelog, or past a state the broker refused.
    Raises :class:`StateWriteFailed` (nothing written locally) when any record is not acked.
    Returns how many were written.
    """
    states = list(states)
    if not states:
        return 0
    try:
        futures = await send(changelog, [(key, value) for key, value, _ in states])
        results = await asyncio.gather(*futures)
    except Exception as exc:  # noqa: BLE001 - any refusal means: not durable, no commit
        raise StateWriteFailed(f"{len(states)} state(s) not acknowledged by the changelog {changelog}: {exc!r}") from exc
    store = table.data
    for key, value, event in states:
        with _processing(event):
            store[key] = value
    for metadata in results:  # recovery after a restart may start after what is stored (rocksdb)
        if metadata is not None:
            store.set_persisted_offset(metadata.topic_partition, metadata.offset)
    return len(states)
