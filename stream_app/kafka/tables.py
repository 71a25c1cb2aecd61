"""Private faust internals: ``TableManager._update_channels`` and ``faust.streams._current_event``
(checked against faust-streaming 0.15.3; tests/test_internals.py fails when they are gone).

The worker's one table, started without faust's start-up pause, and written under the partition
each key belongs to.
"""

from __future__ import annotations

import weakref
from typing import Any

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


def write_under_event(table: Any, key: bytes, value: bytes, event: Any) -> None:
    """``table[key] = value`` as if ``event`` (an input event of the key's own partition) were
    being processed.

    faust's rocksdb store files a key under the *current event's* partition even with
    use_partitioner (faust.stores.rocksdb.Store._set); a batch mixes partitions, so without this a
    state would land in another partition's local database and be read back stale after a
    restart. The changelog partition comes from the key either way.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        table[key] = value
    finally:
        _current_event.reset(token)
