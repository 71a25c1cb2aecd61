"""Client-side long poll for brokers that answer an empty Fetch at once.

Kafka holds a Fetch that finds no data for up to ``fetch.max.wait.ms`` (faust asks for 1.5 s), so
a consumer whose partitions are all caught up sends a couple of requests a second. noida-db, the
embedded broker, ignores that wait and answers immediately; aiokafka's fetcher then re-sends the
Fetch for every idle partition (the configs and ticks topics, say) in a tight loop. In a worker that
loop ran on faust's consumer thread at 70% of a core and held the interpreter lock against the
agent: a third of the worker's busy samples were socket writes of empty Fetch requests.

:func:`install` wraps aiokafka's ``Fetcher._proc_fetch_request``: when a response brought no records
and came back sooner than the broker was allowed to wait, the fetch task sleeps for the rest, up to
``cap`` seconds. Against a broker that honours the wait the response of an empty fetch never comes
back early, so the wrapper never sleeps; with noida-db it turns a busy loop into at most 1/cap
requests a second per broker connection, at the price of up to ``cap`` of added latency for data
that arrives while idle.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.consumer.fetcher import Fetcher

DEFAULT_CAP_SECONDS = 0.005
_installed_cap: list[float] = []


def idle_wait(elapsed: float, got_records: bool, max_wait: float, cap: float) -> float:
    """Seconds to wait after a fetch that took ``elapsed``: the rest of the broker's allowed wait
    (``max_wait``, capped at ``cap``) when it brought nothing, else 0."""
    if got_records:
        return 0.0
    return max(0.0, min(max_wait, cap) - elapsed)


def install(cap: float = DEFAULT_CAP_SECONDS) -> None:
    """Idempotent: later calls only change the cap."""
    if _installed_cap:
        _installed_cap[0] = cap
        return
    _installed_cap.append(cap)
    original = Fetcher._proc_fetch_request

    async def _proc_fetch_request(self, assignment, node_id, request):
        started = time.monotonic()
        got_records = await original(self, assignment, node_id, request)
        wait = idle_wait(time.monotonic() - started, got_records, self._fetch_max_wait_ms / 1000, _installed_cap[0])
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                # As the wrapped coroutine does: the fetcher cancels fetch tasks on close and
                # unassignment and then awaits them, expecting them to end quietly.
                return False
        return got_records

    _proc_fetch_request.__wrapped__ = original
    Fetcher._proc_fetch_request = _proc_fetch_request
