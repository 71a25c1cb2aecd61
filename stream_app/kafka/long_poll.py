"""Private aiokafka internals: ``Fetcher._proc_fetch_request`` and ``Fetcher._records`` (checked
against aiokafka 0.14.0; tests/test_internals.py fails when they are gone).

Client-side long poll for brokers that answer an empty Fetch at once.

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

While records fetched earlier still wait to be taken by the application (faust's consumer thread
has not taken them: the agent is busy), the wait goes on in steps of ``cap`` until they are
taken, up to ``busy_cap`` (or the broker's allowed wait, if shorter) after the fetch started: the
fetch it holds back could only add to a backlog. While the agent worked through a batch, faust's
consumer thread used to fetch the idle partitions about 200 times a second, 1.8 s of CPU per
300,000 observations published while the worker ran, holding the interpreter lock against the
agent; with this it spends 0.5-0.9 s (bench_stream.py --pack --modes live; three alternating runs
with a plain 50 ms wait: 22.0k-25.0k obs/s against 17.7k-19.3k). The agent never waits more than
``cap`` for input the wait holds back: the wait ends once the application has taken what was
buffered.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.consumer.fetcher import Fetcher

DEFAULT_CAP_SECONDS = 0.005
BUSY_CAP_SECONDS = 0.05
_installed_cap: list[float] = []  # [cap, busy_cap]


def idle_wait(elapsed: float, got_records: bool, max_wait: float, cap: float) -> float:
    """Seconds to wait after a fetch that took ``elapsed``: the rest of the broker's allowed wait
    (``max_wait``, capped at ``cap``) when it brought nothing, else 0."""
    if got_records:
        return 0.0
    return max(0.0, min(max_wait, cap) - elapsed)


def busy(fetcher: Fetcher) -> bool:
    """Records this fetcher fetched still wait to be taken by the application (aiokafka keeps
    them per partition in ``Fetcher._records`` until ``getmany``/``getone`` takes them;
    tests/test_long_poll.py checks that it still does)."""
    return bool(fetcher._records)


def install(cap: float = DEFAULT_CAP_SECONDS, busy_cap: float = BUSY_CAP_SECONDS) -> None:
    """Idempotent: later calls only change the caps."""
    installed = bool(_installed_cap)
    _installed_cap[:] = [cap, busy_cap]
    if installed:
        return
    original = Fetcher._proc_fetch_request

    async def _proc_fetch_request(self, assignment, node_id, request):
        started = time.monotonic()
        got_records = await original(self, assignment, node_id, request)
        if got_records:
            return got_records
        cap, busy_cap = _installed_cap
        max_wait = self._fetch_max_wait_ms / 1000
        wait = idle_wait(time.monotonic() - started, got_records, max_wait, cap)
        deadline = started + min(max_wait, busy_cap)
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            while cap > 0 and busy(self) and time.monotonic() + cap <= deadline:
                await asyncio.sleep(cap)
        except asyncio.CancelledError:
            # As the wrapped coroutine does: the fetcher cancels fetch tasks on close and
            # unassignment and then awaits them, expecting them to end quietly.
            return False
        return got_records

    _proc_fetch_request.__wrapped__ = original
    Fetcher._proc_fetch_request = _proc_fetch_request
