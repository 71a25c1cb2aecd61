"""Handing the agent's outputs to the producer in the background, in order.

The agent used to process a batch, hand its outputs to the producer and wait for their acks
before it processed anything else. Handing over is mostly waiting for the broker: aiokafka's
accumulator holds one record batch per partition until the sender has drained the one before,
and the sender has one request per broker in flight, so a batch's 13,000 result rows (15 MB in
256 KB record batches) went out in about 15 round trips while the worker's processing stood
still (bench_stream --pack --modes live: 130-160 us of every 700 us per interval closed).

:class:`OutputSender` runs the hand-over in a task of its own. The agent queues each batch's
outputs and goes on with the next batch; the hand-over, aiokafka's sender and the acks move on
whenever the agent awaits (its next messages, or room in the queue), and the broker takes what
was handed over on the other core while the agent processes.

- Order: one task hands the queued items over in the order they were queued, so every partition
  receives them in that order (an experiment's results stay in interval order).
- Bounded: at most ``max_pending`` items wait; :meth:`put` waits for room.
- Acks: :meth:`flush` returns once everything queued has been handed over and acked. The worker
  calls it before it writes states (stream_app/app.py ``save_states``), so a state is never
  written before the outputs of what it reflects are acked.
- Failure: should a hand-over or an ack raise, the sender drops what is still queued and the
  next :meth:`put` or :meth:`flush` raises that error; the worker then fails as it did when the
  agent awaited its own sends, and a restart resumes from the saved states and committed offsets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Generic, TypeVar

Item = TypeVar("Item")


class OutputSender(Generic[Item]):
    def __init__(self, hand_over: Callable[[Item], Awaitable[list[asyncio.Future]]],
                 on_acked: Callable[[Item, float], None], max_pending: int = 2):
        """``hand_over(item)`` gives the item's messages to the producer and returns their
        futures; ``on_acked(item, seconds)`` runs once they are all acked, with the seconds
        that took after the hand-over."""
        self._hand_over = hand_over
        self._on_acked = on_acked
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=max_pending)
        self._task: asyncio.Task | None = None
        self._error: BaseException | None = None

    async def put(self, item: Item) -> None:
        self._raise_if_failed()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        await self._queue.put(item)

    async def flush(self) -> None:
        """Wait until everything queued so far is handed over and acked."""
        if self._task is not None:
            await self._queue.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"sending outputs failed: {self._error!r}") from self._error

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            item = await self._queue.get()
            try:
                if self._error is None:
                    futures = await self._hand_over(item)
                    handed = clock()
                    if futures:
                        await asyncio.gather(*futures)
                    self._on_acked(item, clock() - handed)
            except asyncio.CancelledError as exc:
                self._error = exc
                self._drop_queued()
                raise
            except Exception as exc:  # noqa: BLE001 - kept, and raised to the agent and to save_states
                self._error = exc
            finally:
                self._queue.task_done()

    def _drop_queued(self) -> None:
        """Mark what is still queued as done, so a flush that waits on it returns (and raises)."""
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
