"""Private faust and mode internals: ``Consumer._drain_messages`` (copied, with the
attributes it reads: ``_commit_every``, ``_n_acked``, ``diag``, ``suspend_flow``), its ``wait_first`` race,
``Consumer.getmany``'s internals (``_wait_next_records``, ``scheduler``, ``_to_message``, ``_buffered_partitions``, ``_seek``),
``Consumer._read_offset``, ``_gap``, ``_acked``, ``_acked_index``, ``_thread`` (its ``call_thread`` and
``_ensure_consumer``), ``faust._cython.streams.sleep``, mode's ``FlowControlEvent._queues`` and
asyncio's ``Queue._queue``
(checked against faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0;
tests/test_internals.py fails when they are gone).

faust's per-message delivery without four tasks per message.

faust's drain loop (``faust.transport.consumer.Consumer._drain_messages``) hands every fetched
message to the conductor with::

    await self.wait_first(callback(message), self.suspend_flow.wait())

``wait_first`` wraps the delivery, the flow-suspension wait and the consumer's stopped and crashed
events in four tasks, waits for the first to finish and cancels the rest: three event-loop
iterations and four tasks per message. That is most of the 200 us per message faust costs here
(bench/bench_faust_noop.py: an agent that does nothing gets about 4.6k messages/s).

The race only matters when the delivery has to wait: for flow control (a rebalance), for the
producer buffer to ebb, or for room in a full stream queue. Usually it does not: it decodes the
message and puts it on the queue without suspending. :func:`eager` therefore runs the delivery's
first step at once. If that finishes it, there is nothing to race and the loop goes on; if it
suspends, the rest of the delivery (:class:`_Rest`) goes to faust's own ``wait_first``, racing
the flow-suspension wait exactly as before, so a rebalance can still interrupt a blocked
delivery. The first step is the one the delivery task would have run first anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Awaitable, Callable, Generator

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.consumer import CONSUMER_FETCHING
from mode.services import WaitResults


class _Done:
    """An awaitable that completes without suspending (``await`` it: nothing happens)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())


DELIVERED = _Done()  # the result of a delivery that finished in its first step
_DELIVERED_RESULTS = WaitResults([DELIVERED], [None], False)


_HANDED_OVER = object()


class _Rest(Coroutine):
    """The rest of a coroutine that has run to its first suspension, where it yielded ``pending``
    (the future it waits for, or None for a bare yield).

    A coroutine in its own right (collections.abc.Coroutine), so ``asyncio.ensure_future`` makes
    a task of it directly: the task's first ``send`` gets ``pending``, and every later ``send``,
    ``throw`` (cancellation included, even before the first ``send``) and ``close`` goes to the
    coroutine itself, as it would have in a task made of the coroutine from the start.
    """

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine, pending: Any):
        self._coro = coro
        self._pending = pending

    def send(self, value: Any) -> Any:
        pending = self._pending
        if pending is not _HANDED_OVER:
            self._pending = _HANDED_OVER
            return pending
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._pending = _HANDED_OVER
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._pending = _HANDED_OVER
        self._coro.close()

    def __await__(self) -> "_Rest":
        return self

    def __iter__(self) -> "_Rest":
        return self

    def __next__(self) -> Any:
        return self.send(None)


def eager(callback: Callable[[Any], Coroutine], counts: Any) -> Callable[[Any], Awaitable]:
    """``callback`` with its first step run at once: returns DELIVERED when that finishes it, else
    the rest of it (an awaitable). Exceptions raised in the first step propagate to the caller.
    Counts both outcomes in ``counts.deliveries_at_once`` and ``counts.deliveries_waited``."""

    def deliver(message: Any) -> Awaitable:
        coro = callback(message)
        try:
            pending = coro.send(None)
        except StopIteration:
            counts.deliveries_at_once += 1
            return DELIVERED
        counts.deliveries_waited += 1
        return _Rest(coro, pending)

    return deliver


_NOW = _Done()  # a sleep(0) that does not yield
YIELD_EVERY = 100  # messages a stream takes between two yields to the event loop


def yield_every(n: int, sleep: Callable[..., Awaitable] = asyncio.sleep) -> Callable[..., Awaitable]:
    """``asyncio.sleep`` for faust's stream iterator: ``sleep(0)`` yields to the event loop once
    in ``n`` calls and completes at once otherwise; any other delay is a real sleep."""
    calls = 0

    def sleep_every_n(delay: float, result: Any = None) -> Awaitable:
        nonlocal calls
        if delay == 0:
            calls += 1
            if calls % n:
                return _NOW
        return sleep(delay, result)

    return sleep_every_n


def install_stream_yield(n: int = YIELD_EVERY) -> bool:
    """Make faust's compiled stream iterator (``faust._cython.streams.StreamIterator.next``) yield
    to the event loop once per ``n`` messages instead of before every one.

    ``next`` starts with ``await sleep(0)``: a whole event-loop iteration, with its epoll call,
    per message, which is most of what kept the agent's take buffer from filling (a full stream
    queue of 4,096 events moved into the buffer at 300-600 per 50 ms in bench_stream --pack).
    faust's own drain loop yields once per 100 messages; this does the same here. The iterator
    reads ``sleep`` from its module's globals on every call, so replacing it there is enough.
    Returns False, changing nothing, where faust runs without its compiled extension."""
    try:
        from faust._cython import streams as compiled_streams
    except ImportError:
        return False
    compiled_streams.sleep = yield_every(n)
    return True


async def _seek_in_thread(consumer: Any, partition: Any, offset: int) -> None:
    consumer.seek(partition, offset)


def report_cleared_events(flow_control: Any, topics: Any, on_cleared: Callable[[list], None]) -> None:
    """Make faust's flow control hand the events of ``topics`` it clears from the stream queues
    to ``on_cleared`` first (mode's ``FlowControlEvent.clear`` over each queue's ``_queue``).

    faust clears every stream queue when a rebalance revokes partitions and again when the flow
    resumes after a table recovery, which it does only after it has resumed the partitions and
    sought them to their committed offsets: events fetched in between are dropped unprocessed,
    while later ones of the same partitions are processed, and lift the experiments' offset
    high-water marks past the dropped ones, which are then skipped as redelivered for good
    (chaos test under load: offsets 141-190 of a partition never processed)."""
    wanted = set(topics)
    clear = flow_control.clear

    def clear_reporting() -> None:
        cleared = [item for queue in list(flow_control._queues) for item in queue._queue
                   if getattr(getattr(item, "message", None), "topic", None) in wanted]
        clear()
        if cleared:
            on_cleared(cleared)

    flow_control.clear = clear_reporting


class RawSchema(faust.Schema):
    """Keys and values as the bytes they arrive as: the event faust's own raw schema makes
    (``Schema(key_serializer="raw", value_serializer="raw")``), without its decoding.

    faust's compiled decode runs both codecs through its serializer registry, which returns the
    bytes unchanged, and looks up the app's Event class in its settings, per message: 7.8-9.2 us
    a message against 0.8 here (bench/bench_faust_noop.py --decode), 6.5% of the worker's main
    thread with one message per observation (bench_stream --modes live --profile). Nothing here
    can fail to decode, so the decode-error handlers never run.
    """

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, default_propagate: bool = False, **handlers: Any) -> Callable[..., Awaitable]:
        event = app.conf.Event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return event(app, message.key, message.value, message.headers, message)

        return decode


class EagerDelivery:
    """A mode Service mixin: ``wait_first`` returns at once for a delivery :func:`eager` finished,
    and is the service's own for anything else (the rest of a delivery that had to wait)."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if coros and coros[0] is DELIVERED:
            for other in coros[1:]:  # the unstarted suspend_flow.wait(): close it, never awaited
                close = getattr(other, "close", None)
                if close is not None:
                    close()
            return _DELIVERED_RESULTS
        return await super().wait_first(*coros, timeout=timeout)


class SeqstreamConsumer(EagerDelivery, faust_aiokafka.Consumer):
    """faust's aiokafka consumer with :func:`eager` delivery, counted in ``transport.counts``,
    ``transport.before_commit`` awaited before every offset commit (none when it returns False),
    and no read offsets or acks from before an assignment kept past it."""

    def __init__(self, transport: "SeqstreamTransport", *args: Any, callback: Callable[[Any], Coroutine],
                 **kwargs: Any):
        super().__init__(transport, *args, callback=eager(callback, transport.counts), **kwargs)
        # Seeks, per partition: how many took effect (a fetch asked for before one may hold
        # records from before it: _stale), and where the last one went, until the next record
        # delivered (the drain loop's read offset is put there then: _drain_messages).
        self._seeks: dict[Any, int] = {}
        self._sought_to: dict[Any, int | None] = {}
        # the seek counts as they were when the fetch being delivered was asked for (getmany, _stale)
        self._fetched: dict[Any, int] = {}
        # Clear while faust's seek to the committed offsets runs in the consumer's thread: records
        # delivered then, from after it, would be measured against the read offset it sets when
        # it is done (a gap over records delivered), so the drain loop waits.
        self._no_seek_running = asyncio.Event()
        self._no_seek_running.set()

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Every commit path (the commit timer, commit-every-N, rebalances, shutdown) ends here;
        faust picks the offsets to commit only after ``before_commit`` returns, with no await in
        between, so they cover nothing acked after it. If it raises or returns False (a state
        write the broker did not acknowledge), nothing is committed."""
        before_commit = self.transport.before_commit
        if before_commit is not None and await before_commit() is False:
            return False
        return await super().force_commit(topics, start_new_transaction=start_new_transaction)

    async def seek(self, partition: Any, offset: int) -> None:
        """faust's seek, made in the consumer's own thread. faust moves aiokafka's position from
        this thread while the consumer's thread may be handing out a fetch, which then sets the
        position past it again (aiokafka's ``FetchResult`` updates it as it returns records), and
        the seek is lost; in the consumer's thread the two come one after the other."""
        consumer = self._thread._ensure_consumer()
        await self._thread.call_thread(_seek_in_thread, consumer, partition, offset)
        self._read_offset[partition] = offset if offset else None  # as faust's seek: read again from there
        self._seeking({partition: offset})

    async def perform_seek(self) -> None:
        """faust's seek of every partition to its committed offset (after a table recovery, when
        the flow stops), counted as seeks once it has taken effect (it runs in the consumer's
        thread: a fetch may return records from before it after it started)."""
        assigned = self.assignment()
        self._no_seek_running.clear()  # the drain loop delivers nothing meanwhile
        try:
            await super().perform_seek()
            self._seeking({tp: self._read_offset[tp] for tp in assigned})
        finally:
            self._no_seek_running.set()

    async def _drain_messages(self, fetcher: Any) -> None:
        """faust's drain loop (``Consumer._drain_messages``), except that a record is checked
        against the seeks of its partition right before it is measured against the read offset
        and delivered, with nothing awaited in between (:meth:`_stale`), and the partitions of
        the records it holds back are fetched again from them. faust yields to the event loop
        between taking a record and reading the read offset (every 100 records), when a seek
        that completed meanwhile had already set the read offset to its target."""
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        sought_to = self._sought_to
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                await self.sleep(0)  # as faust: getmany may be called in a loop that never yields
                if not self.should_stop:
                    stale: dict[Any, int] = {}
                    async for tp, message in records:
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if not self._no_seek_running.is_set():
                            await self._no_seek_running.wait()
                        if self._stale(tp):
                            stale.setdefault(tp, message.offset)
                            continue
                        if sought_to and tp in sought_to:
                            read_offset[tp] = sought_to.pop(tp)
                        offset = message.offset
                        r_offset = read_offset[tp]
                        if r_offset is None or offset >= r_offset:
                            if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            read_offset[tp] = offset
                        since_yield += 1
                        if since_yield >= YIELD_EVERY:
                            since_yield = 0
                            await asyncio.sleep(0)
                    if stale:
                        await self.fetch_again(stale)
                    self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _seeking(self, targets: dict) -> None:
        seeks = self._seeks
        for tp, offset in targets.items():
            seeks[tp] = seeks.get(tp, 0) + 1
            self._sought_to[tp] = offset

    def _stale(self, tp: Any) -> bool:
        """Whether a seek of the partition took effect since the fetch being delivered was asked
        for: its records may be from before the seek, or from after it (a seek made while the
        fetch was waiting) with the seek's own count arriving later. Either way they are not
        delivered, and the partition is fetched again from the first of them unless the seek
        put it there or before (:meth:`fetch_again`): nothing is delivered out of order or
        measured against a read offset the seek moved, and nothing is lost."""
        return self._seeks.get(tp) != self._fetched.get(tp)

    async def getmany(self, timeout: float) -> Any:
        """faust's ``Consumer.getmany``, except that every fetched record it does not deliver is
        fetched again (:meth:`fetch_again`): records of a partition that stopped being active
        while the fetch was in flight (paused for a table's recovery), and the rest of the fetch
        when the generation changes or the flow stops mid-way. faust dropped them silently with
        aiokafka's position already past them (chaos test under CPU load: a start-up's configs
        never applied). It also notes what the drain loop needs to tell records fetched before a
        seek (:meth:`_stale`).

        Why the drain loop must tell them: a partition sought while its fetched records were
        being delivered (faust's seek to the committed offsets after a table recovery,
        :meth:`fetch_again`, an assignment) delivered the rest of them after the seek, measured
        against the read offset the seek had just set, and the offsets in between were taken for
        a gap (``_add_gap``) a commit could pass (chaos test: a gap 657-855 recorded at a seek
        to 656, 24 observations lost for good). And the first record delivered after a seek sets
        the read offset to where the seek went: a delivery in flight at the seek records its own
        offset as read afterwards, and every record up to it, fetched again, would be dropped as
        already read (``_read_offset``)."""
        self._fetched = dict(self._seeks)  # the previous fetch is all delivered by now
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        to_message = self._to_message
        if not self.flow_active:  # as faust: seek back to the committed offsets
            try:
                await self.perform_seek()
            except Exception as exc:  # noqa: BLE001
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        undelivered: dict[Any, int] = {}
        cut = False
        for tp, record in self.scheduler.iterate(records):
            if cut or not self.flow_active or self.app.consumer_generation_id != generation_id:
                cut = True
            elif tp not in undelivered and (active_partitions is None or tp in active_partitions
                                            or tp in self._buffered_partitions):
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
                continue
            undelivered.setdefault(tp, record.offset)
        if undelivered:
            await self.fetch_again(undelivered)

    async def fetch_again(self, offsets: dict) -> None:
        """Make the consumer fetch each assigned partition again from ``offsets[tp]`` (records
        fetched and not delivered or not processed), unless its position is there or before it
        already (a rebalance or a seek put it there): never past an offset not yet delivered."""
        assigned = self.assignment()
        for tp, offset in offsets.items():
            if tp not in assigned:
                continue
            try:
                position = await self.position(tp)
            except Exception:  # noqa: BLE001 - revoked meanwhile: its next owner reads it
                continue
            if position is None or position > offset:
                await self.seek(tp, offset)
                self.transport.counts.records_fetched_again += 1

    async def on_stop(self) -> None:
        """faust's stop (its last commit included), then ``transport.after_stop()``."""
        await super().on_stop()
        if self.transport.after_stop is not None:
            await self.transport.after_stop()

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        """First ``transport.before_assigned(assigned)``: the claim of the assigned partitions'
        changelog writes (stream_app.kafka.fencing), before faust starts reading any of them.

        Then forget faust's per-partition bookkeeping of the assigned partitions from before the
        assignment. A delivery interrupted by the revocation records its offset as read
        (``_read_offset``) after faust cleared it; the drain loop then drops every message below
        it as already read when the partition is fetched again from its committed offset (a
        gap; robinhood/faust#115). Acks recorded between the revocation and now are of events
        fetched before it, whose effects the worker dropped with its unsaved states
        (stream_app.app), and must not let a commit pass them."""
        # The claim first: the drain loop may deliver while it is awaited, and must not record
        # read offsets or acks after they are cleared below.
        before_assigned = self.transport.before_assigned
        if before_assigned is not None:
            await before_assigned(assigned)
        for tp in assigned:
            self._read_offset.pop(tp, None)
            self._gap.pop(tp, None)  # offsets another generation took for a gap: read again now
        # every position is reset to the committed offset, as by a seek
        self._seeking({tp: None for tp in assigned})
        # Every ack recorded so far is of an event of the previous generation, on any partition,
        # assigned again or not: a commit must not carry one (the group accepts a commit for a
        # partition now owned by another member, which would overwrite the new owner's offset).
        self._acked.clear()
        self._acked_index.clear()
        await super().on_partitions_assigned(assigned, generation_id)


class SeqstreamTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with :class:`SeqstreamConsumer`; ``counts`` (e.g. the worker's
    Metrics) gets the delivery counters; ``before_commit`` (a coroutine function, or None) runs
    before every offset commit, ``before_assigned(assigned)`` at every assignment before faust
    handles it, and ``after_stop()`` once the consumer has stopped (its last commit done)."""

    Consumer = SeqstreamConsumer

    def __init__(self, *args: Any, counts: Any, before_commit: Callable[[], Awaitable[None]] | None = None,
                 before_assigned: Callable[[Any], Awaitable[None]] | None = None,
                 after_stop: Callable[[], Awaitable[None]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.counts = counts
        self.before_commit = before_commit
        self.before_assigned = before_assigned
        self.after_stop = after_stop
