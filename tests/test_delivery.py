"""stream_app.kafka.delivery: faust's per-message delivery, run eagerly when nothing blocks it.

The stream tests (tests/test_stream.py: kill -9, duplicates, two workers rebalancing) run every
worker through this consumer; these tests pin the coroutine mechanics and the race with flow
control that a rebalance relies on.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import types
import warnings
from collections import namedtuple

import mode
import pytest
from faust.transport import consumer as faust_consumer
from faust.types import TP

from stream_app.kafka.delivery import DELIVERED, EagerDelivery, SeqstreamConsumer, eager, yield_every
from stream_app.kafka.scheduling import TimestampOrder
from stream_app.metrics import Metrics


class Probe(EagerDelivery, mode.Service):
    """A mode Service with the consumer's wait_first (faust's Consumer is one too)."""


def recording(log: list, gate: asyncio.Future | None = None, fail_at: str | None = None):
    async def on_message(message):
        log.append(("start", message))
        if fail_at == "start":
            raise ValueError("in the first step")
        if gate is not None:
            try:
                log.append(("resumed", await gate))
            finally:
                log.append(("finally", message))
        if fail_at == "end":
            raise KeyError("after waiting")
        return f"delivered {message}"

    return on_message


def test_a_delivery_that_never_waits_finishes_in_its_first_step():
    log, counts = [], Metrics()
    deliver = eager(recording(log), counts)
    assert deliver("m1") is DELIVERED  # no event loop needed: nothing was awaited
    assert deliver("m2") is DELIVERED
    assert log == [("start", "m1"), ("start", "m2")]
    assert (counts.deliveries_at_once, counts.deliveries_waited) == (2, 0)


def test_a_delivery_that_waits_resumes_where_it_stopped_and_runs_its_first_step_once():
    async def scenario():
        log, counts = [], Metrics()
        gate = asyncio.get_running_loop().create_future()
        rest = eager(recording(log, gate), counts)("m")
        assert rest is not DELIVERED and log == [("start", "m")]
        task = asyncio.ensure_future(rest)  # as faust's wait_first wraps it
        await asyncio.sleep(0)
        assert log == [("start", "m")] and not task.done()
        gate.set_result(7)
        assert await task == "delivered m"
        assert log == [("start", "m"), ("resumed", 7), ("finally", "m")]
        assert (counts.deliveries_at_once, counts.deliveries_waited) == (0, 1)

    asyncio.run(scenario())


def test_a_bare_yield_is_resumed_too():
    async def on_message(message):
        await asyncio.sleep(0)  # yields None to the loop, not a future
        await asyncio.sleep(0)
        return message * 2

    async def scenario():
        rest = eager(on_message, Metrics())(21)
        assert rest is not DELIVERED
        assert await rest == 42

    asyncio.run(scenario())


def test_errors_propagate_from_the_first_step_and_from_the_rest():
    with pytest.raises(ValueError, match="in the first step"):
        eager(recording([], fail_at="start"), Metrics())("m")

    async def scenario():
        gate = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(eager(recording([], gate, fail_at="end"), Metrics())("m"))
        gate.set_result(None)
        with pytest.raises(KeyError, match="after waiting"):
            await task

    asyncio.run(scenario())


def test_cancelling_a_waiting_delivery_cancels_the_coroutine_itself():
    async def scenario():
        log = []
        gate = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(eager(recording(log, gate), Metrics())("m"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == [("start", "m"), ("finally", "m")]  # the CancelledError went into the coroutine
        assert gate.cancelled()  # and from there to what it awaited, as in a task of its own

    asyncio.run(scenario())


@pytest.mark.parametrize("before_first_step", [True, False])
def test_cancelling_a_delivery_throws_into_the_coroutine_even_at_a_bare_yield(before_first_step):
    """A task cancelled before it ever ran (faust's wait_first cancels the losers at once) or
    while at a bare yield has no future to cancel: the CancelledError must reach the coroutine,
    whose first step has already run, so its cleanup runs now rather than whenever it is
    garbage collected."""

    async def scenario():
        log = []

        async def on_message(message):
            try:
                await asyncio.sleep(0)
                log.append("continued")
            finally:
                log.append("finally")

        task = asyncio.ensure_future(eager(on_message, Metrics())("m"))
        if not before_first_step:
            await asyncio.sleep(0)
            assert log == []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["finally"]

    asyncio.run(scenario())


def test_wait_first_returns_at_once_for_a_finished_delivery_and_closes_the_flow_wait():
    async def scenario():
        probe = Probe()
        flow_wait = asyncio.Event().wait()
        result = await probe.wait_first(eager(recording([]), Metrics())("m"), flow_wait)
        assert result.done == [DELIVERED] and not result.stopped
        assert inspect.getcoroutinestate(flow_wait) == inspect.CORO_CLOSED

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be an error here
        asyncio.run(scenario())
        gc.collect()


def test_flow_control_still_interrupts_a_delivery_that_waits():
    """faust's drain loop: ``wait_first(callback(message), suspend_flow.wait())``. In a
    rebalance faust sets suspend_flow so a delivery blocked on flow control gives way."""

    async def scenario():
        probe, log = Probe(), []
        gate = asyncio.get_running_loop().create_future()  # flow control that never opens
        suspend_flow = asyncio.Event()
        racing = asyncio.ensure_future(probe.wait_first(eager(recording(log, gate), Metrics())("m"),
                                                        suspend_flow.wait()))
        await asyncio.sleep(0.01)
        assert not racing.done()
        suspend_flow.set()
        result = await asyncio.wait_for(racing, 5)
        assert len(result.done) == 1 and result.done[0] is not DELIVERED  # the flow wait won
        await asyncio.sleep(0)
        assert log == [("start", "m"), ("finally", "m")]  # the delivery was cancelled, not left hanging

    asyncio.run(scenario())


def test_a_waiting_delivery_that_completes_wins_the_race():
    async def scenario():
        probe = Probe()
        gate = asyncio.get_running_loop().create_future()
        rest = eager(recording([], gate), Metrics())("m")
        racing = asyncio.ensure_future(probe.wait_first(rest, asyncio.Event().wait()))
        await asyncio.sleep(0)
        gate.set_result("open")
        result = await asyncio.wait_for(racing, 5)
        assert result.results == ["delivered m"]

    asyncio.run(scenario())


def test_the_worker_app_uses_the_eager_consumer_and_counts_into_its_metrics():
    from stream_app import app as worker_app
    from stream_app.kafka.delivery import SeqstreamConsumer

    transport = worker_app.app.transport
    assert transport.Consumer is SeqstreamConsumer
    assert transport.counts is worker_app.metrics


@pytest.mark.parametrize("key, value", [(b"exp-1", b'{"a": 1}'), (None, b"v"), (b"k", None), (b"", b"")])
def test_the_input_topics_raw_schema_makes_the_event_faust_s_raw_schema_makes(key, value):
    """The agent's topics decode with RawSchema, which skips faust's codec registry: its events
    must carry what faust's own raw decoding gives (keys and values untouched, tombstones and
    key-less messages included), in the app's Event class, for the same message."""
    import faust
    from faust.types import Message

    from stream_app import app as worker_app
    from stream_app.kafka.delivery import RawSchema

    app = worker_app.app
    assert isinstance(worker_app.inputs.schema, RawSchema)
    message = Message("seqstream.observations", 2, 7, 1.0, 0, [("h", b"1")], key, value, None)
    faust_own = faust.Schema(key_serializer="raw", value_serializer="raw").compile(app)
    ours = worker_app.inputs.schema.compile(app)

    async def decode_both():
        return await faust_own(message), await ours(message)

    expected, event = asyncio.run(decode_both())
    assert type(event) is type(expected) is app.conf.Event
    assert (event.key, event.value, event.headers, event.message, event.app) == \
        (expected.key, expected.value, expected.headers, message, app)


def _consumer_with(before_commit):
    """A SeqstreamConsumer shell: just what force_commit reads (no broker, no faust app)."""
    consumer = object.__new__(SeqstreamConsumer)
    consumer.transport = types.SimpleNamespace(before_commit=before_commit)
    return consumer


def test_states_are_saved_before_faust_picks_the_offsets_to_commit(monkeypatch):
    """The worker saves states in before_commit (stream_app.app.save_states): faust's commit, which
    picks the acked offsets and commits them, must only start after it, and not at all when it
    fails, or offsets could be committed ahead of the saved states."""
    order = []

    async def faust_force_commit(self, topics=None, start_new_transaction=True):
        order.append(("commit", topics))
        return True

    async def save():
        order.append(("save", None))

    async def failing_save():
        order.append(("save failed", None))
        raise OSError("changelog unreachable")

    monkeypatch.setattr(faust_consumer.Consumer, "force_commit", faust_force_commit)
    assert asyncio.run(_consumer_with(save).force_commit({"t"})) is True
    assert order == [("save", None), ("commit", {"t"})]
    order.clear()
    with pytest.raises(OSError):
        asyncio.run(_consumer_with(failing_save).force_commit())
    assert order == [("save failed", None)]
    order.clear()
    assert asyncio.run(_consumer_with(None).force_commit()) is True and order == [("commit", None)]


def test_the_stream_iterator_yields_to_the_loop_once_per_n_messages():
    """faust's compiled StreamIterator.next awaits sleep(0) before every message; the worker makes
    it yield once per YIELD_EVERY (stream_app.kafka.delivery.install_stream_yield)."""
    from faust._cython import streams as compiled_streams

    from stream_app import app  # noqa: F401  (the worker module installs it)
    from stream_app.kafka.delivery import YIELD_EVERY

    assert compiled_streams.sleep.__name__ == "sleep_every_n"
    slept = []

    async def fake_sleep(delay, result=None):
        slept.append(delay)

    sleep = yield_every(3, fake_sleep)
    calls = [sleep(0) for _ in range(9)] + [sleep(1.5)]

    async def run():
        for awaitable in calls:
            await awaitable

    asyncio.run(run())
    # every third sleep(0) is a real one (a coroutine the loop runs); other delays always are
    assert [asyncio.iscoroutine(c) for c in calls] == [False, False, True] * 3 + [True]
    assert slept == [0, 0, 0, 1.5] and YIELD_EVERY > 1


def test_the_tables_start_without_faust_s_one_second_pause(monkeypatch):
    """faust's TableManager.on_start sleeps 1 s before starting the changelog channels and
    recovery, which delays every worker start (stream_app.app.PromptTableManager)."""
    from faust.tables import TableManager

    from stream_app import app as worker_app

    manager = worker_app.app.tables
    assert isinstance(manager, worker_app.PromptTableManager)
    steps = []

    async def record(name, *args):
        steps.append((name,) + args)

    monkeypatch.setattr(TableManager, "sleep", lambda self, seconds: record("sleep", seconds))
    monkeypatch.setattr(TableManager, "_update_channels", lambda self: record("channels"))
    monkeypatch.setattr(type(manager.recovery), "start", lambda self: record("recovery"))
    asyncio.run(manager.on_start())
    assert steps == [("channels",), ("recovery",)]
    steps.clear()
    asyncio.run(TableManager.on_start(manager))  # faust's own, for contrast: the pause comes first
    assert steps == [("sleep", 1.0), ("channels",), ("recovery",)]


def _record(tp, offset: int):
    from aiokafka.structs import ConsumerRecord

    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, ())


def _drain(fetches: list, between: dict | None = None, during: dict | None = None, committed: int = 0,
           slow_seek: bool = False):
    """The worker's drain loop (SeqstreamConsumer._drain_messages, faust's with the seek checks)
    over SeqstreamConsumer.getmany, on one partition, with aiokafka's side played here: each fetch returns the records from the
    position on (``fetches[i]`` of them at most) and moves the position past them, a seek moves
    it, faust's seek to the committed offsets puts it at ``committed``. ``between[i](consumer,
    tp)`` runs before fetch i, ``during[offset](consumer, tp)`` while the record at ``offset`` is
    being delivered (the agent, or faust's table recovery, at work meanwhile). Returns the
    offsets the loop delivered, the seeks made, and the consumer."""
    from stream_app import app as worker_app

    tp = faust_consumer.TP("seqstream.observations", 0)
    delivered, seeks = [], []
    position = {tp: 0}

    async def scenario():
        async def callback(message):
            delivered.append(message.offset)
            if during and message.offset in during and len(delivered) == 1 + delivered.index(message.offset):
                await during[message.offset](consumer, tp)

        consumer = SeqstreamConsumer(worker_app.app.transport, callback=callback,
                                     on_partitions_revoked=None, on_partitions_assigned=None)
        fetcher = mode.Service()
        script = list(enumerate(fetches))

        async def wait_next_records(timeout):
            if not script:
                fetcher._stopped.set()
                return None, None
            i, count = script.pop(0)
            if between and i in between:
                await between[i](consumer, tp)
            offsets = range(position[tp], position[tp] + count)
            position[tp] += count
            return {tp: [_record(tp, o) for o in offsets]}, None

        async def seek_to_committed():
            if slow_seek:
                await asyncio.sleep(0.05)
            position[tp] = committed
            return {tp: committed}

        async def current_position(partition):
            return position[partition]

        async def call_thread(fun, *args):  # the consumer's thread, played in this one
            return await fun(*args)

        aiokafka_consumer = types.SimpleNamespace(seek=lambda partition, offset: (seeks.append(offset),
                                                                                  position.__setitem__(partition, offset)))
        consumer._thread = types.SimpleNamespace(call_thread=call_thread, _ensure_consumer=lambda: aiokafka_consumer)
        consumer._wait_next_records = wait_next_records
        consumer.position, consumer.seek_to_committed = current_position, seek_to_committed
        consumer.assignment = lambda: {tp}
        consumer.highwater = lambda partition: 100
        await asyncio.wait_for(consumer._drain_messages(fetcher), 10)
        return consumer

    consumer = asyncio.run(scenario())
    return delivered, seeks, consumer, tp


async def _agent_fetches_again_from_3(consumer, tp):
    await consumer.fetch_again({tp: 3})


def test_records_fetched_again_are_delivered_though_the_drain_loop_delivered_later_ones():
    """The agent drops events 3-9 unprocessed (fetched before a rebalance, stream_app.app) and has
    the consumer fetch them again, after the loop delivered 0-9: faust's drain loop drops every
    record at or before the last it delivered as read; the records fetched again must all be
    delivered, with no gap recorded (which would let a commit pass them)."""
    delivered, seeks, consumer, tp = _drain([10, 10, 10], between={1: _agent_fetches_again_from_3})
    # The seek took effect while the next fetch was waiting: its records (3-12, from after the
    # seek here) cannot be told from records of before it, so they are fetched again once more.
    assert seeks == [3, 3]
    assert delivered == list(range(10)) + list(range(3, 13))
    assert not consumer._gap[tp]


def test_records_fetched_before_a_seek_are_not_delivered_after_it():
    """The agent has the partition fetched again from 3 while the loop delivers record 5 of a
    fetch of 0-9: 6-9, fetched before the seek, must not be delivered after it (they come again,
    after 3-5)."""
    delivered, seeks, consumer, tp = _drain([10, 10], during={5: _agent_fetches_again_from_3})
    assert seeks == [3]
    assert delivered == list(range(6)) + list(range(3, 13))
    assert not consumer._gap[tp]


def test_a_seek_to_the_committed_offsets_mid_fetch_records_no_gap_and_loses_nothing():
    """faust's table recovery seeks every partition to its committed offset (2) while the loop
    delivers record 4 of a fetch of 0-9. Delivered after it, 5-9 were measured against the read
    offset the seek set and 3-4 taken for a gap a commit could pass (chaos test: a gap 657-855,
    24 observations lost); and 2-4 fetched again were dropped as read."""
    async def recovery_done(consumer, tp):
        await consumer.perform_seek()

    delivered, seeks, consumer, tp = _drain([10, 10], during={4: recovery_done}, committed=2)
    assert delivered == list(range(5)) + list(range(2, 12))
    assert not consumer._gap[tp]


def test_a_seek_that_takes_effect_while_a_fetch_is_delivered_stops_the_rest_of_it():
    """faust's seek to the committed offsets (2) runs in the consumer's thread: it starts while
    record 3 of a fetch of 0-9 is delivered, and takes 50 ms there. The drain loop delivers
    nothing until it is done; 4-9 are then from before it: not delivered, no gap (chaos run: a
    gap 417-614 recorded so); reading goes on from 2."""
    async def recovery_starts(consumer, tp):
        consumer.seeking = asyncio.ensure_future(consumer.perform_seek())
        await asyncio.sleep(0)

    delivered, seeks, consumer, tp = _drain([10, 10], during={3: recovery_starts}, committed=2, slow_seek=True)
    assert delivered == list(range(4)) + list(range(2, 12))
    assert not consumer._gap[tp]


def test_no_seek_when_the_position_is_before_the_records_fetched_again():
    """A seek already put the position before the records to fetch again (the committed offset,
    after a rebalance): no seek, and what follows is delivered from there on, in order."""
    async def committed_then_agent(consumer, tp):
        await consumer.perform_seek()
        await consumer.fetch_again({tp: 5})

    delivered, seeks, consumer, tp = _drain([8, 8, 8], between={1: committed_then_agent}, committed=2)
    assert seeks == [2]  # no seek to 5; the fetch that waited across the seek to 2 is read again
    assert delivered == list(range(8)) + list(range(2, 10))


def _event(partition: int, offset: int, generation: int):
    tp = faust_consumer.TP("seqstream.observations", partition)
    message = types.SimpleNamespace(tp=tp, topic=tp.topic, partition=partition, offset=offset, key=b"exp",
                                    generation_id=generation, acked=False)
    return types.SimpleNamespace(message=message)


def _agent_in_generation_2(monkeypatch):
    """stream_app.app with a fake consumer in generation 2, not fenced; returns the module and the
    list of the partitions (partition -> offset) it was asked to fetch again."""
    from stream_app import app as worker_app

    fetched_again = []

    async def fetch_again(offsets):
        fetched_again.append({tp.partition: offset for tp, offset in offsets.items()})

    fake_app = types.SimpleNamespace(consumer_generation_id=2, consumer=types.SimpleNamespace(fetch_again=fetch_again))
    monkeypatch.setattr(worker_app, "app", fake_app)
    monkeypatch.setattr(worker_app, "_fetching_again", {})
    monkeypatch.setattr(worker_app, "_fenced", False)
    return worker_app, fetched_again


def test_the_agent_drops_events_of_a_past_generation_and_those_queued_behind_them_until_fetched_again(monkeypatch):
    """stream_app.app._current_events: events fetched in an earlier generation are dropped (never
    acked into a commit) and fetched again; this generation's events of the same partition
    queued behind them are dropped too until the first one fetched again comes. Processed first,
    they would move the experiments' offset high-water marks past the ones fetched again, which
    would be skipped as redelivered: lost."""
    worker_app, fetched_again = _agent_in_generation_2(monkeypatch)

    def offsets(events):
        return [(e.message.partition, e.message.offset) for e in events]

    batch = [_event(0, 5, 1), _event(0, 6, 1), _event(0, 7, 2), _event(1, 1, 2)]
    assert offsets(asyncio.run(worker_app._current_events(batch))) == [(1, 1)]
    assert fetched_again == [{0: 5}] and [e.message.acked for e in batch] == [True, True, True, False]
    batch = [_event(0, 8, 2), _event(0, 5, 2), _event(0, 6, 2)]  # 8 was queued before the seek back
    assert offsets(asyncio.run(worker_app._current_events(batch))) == [(0, 5), (0, 6)]
    assert batch[0].message.acked and fetched_again == [{0: 5}]
    batch = [_event(0, 7, 2), _event(0, 8, 2)]
    assert offsets(asyncio.run(worker_app._current_events(batch))) == [(0, 7), (0, 8)]
    # Fetched after a reset to the committed offset (3), behind stale ones: in order from there,
    # nothing to fetch again.
    batch = [_event(2, 9, 1), _event(2, 3, 2), _event(2, 4, 2)]
    assert offsets(asyncio.run(worker_app._current_events(batch))) == [(2, 3), (2, 4)]
    assert fetched_again == [{0: 5}] and not worker_app._fetching_again


def test_the_event_loop_probe_reports_the_longest_stall_and_those_over_a_second(monkeypatch):
    """GET /metrics' loop_stall_max_seconds and loop_stalls_over_1s (stream_app.app.probe_event_loop):
    a callback that holds the loop for 0.3 s, then one for 1.2 s, must show as such."""
    import time

    from stream_app import app as worker_app

    metrics = Metrics()
    monkeypatch.setattr(worker_app, "metrics", metrics)

    async def scenario():
        probe = asyncio.ensure_future(worker_app.probe_event_loop())
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # holds the loop
        await asyncio.sleep(0.25)
        first = metrics.loop_stall_max_seconds
        time.sleep(1.2)
        await asyncio.sleep(0.25)
        probe.cancel()
        return first

    first = asyncio.run(scenario())
    assert 0.15 <= first < 1.0 and metrics.loop_stalls_over_1s == 1  # loose above: a loaded machine wakes late
    assert 1.05 <= metrics.loop_stall_max_seconds < 2.0
    assert "seqstream_loop_stall_max_seconds " in metrics.prometheus()


@pytest.mark.parametrize("rebalance", ["generation", "revoked"])
def test_a_batch_a_rebalance_overtook_is_not_acked_into_the_next_generation(monkeypatch, rebalance):
    """The agent (stream_app.app.process) queues a batch's outputs; a rebalance meanwhile drops the
    states the batch changed (processor.invalidate), and faust acks the batch's events only when
    the next batch is taken, by then into the new generation's acks, where a commit would pass
    them. The agent must leave them acked without faust recording them (Message.acked set)."""
    import gc

    from stream_app import app as worker_app
    from stream_app.processor import Outputs

    fake_app = types.SimpleNamespace(consumer_generation_id=4)
    batch = [_event(0, 7, 4), _event(0, 8, 4)]

    async def identity(events):
        return events

    async def queue_while_rebalancing(queued):
        if rebalance == "generation":
            fake_app.consumer_generation_id = 5
        else:
            monkeypatch.setattr(worker_app, "_fenced", True)

    class OneBatch:
        async def take_events(self, size, within):
            yield batch
            assert [e.message.acked for e in batch] == [True, True]  # before faust acks them

    monkeypatch.setattr(worker_app, "app", fake_app)
    monkeypatch.setattr(worker_app, "_fenced", False)
    monkeypatch.setattr(worker_app, "_current_events", identity)
    monkeypatch.setattr(worker_app.processor, "process", lambda messages, view: Outputs())
    monkeypatch.setattr(worker_app.outputs, "put", queue_while_rebalancing)
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(gc, "set_threshold", lambda *a: None)
    asyncio.run(worker_app.process.fun(OneBatch()))
    assert [e.message.acked for e in batch] == [True, True]


def test_events_faust_clears_from_its_stream_queues_are_reported_first():
    """faust clears the stream queues when the flow resumes after a table recovery, after it has
    resumed and sought the partitions: what it clears of the input topics goes to the callback
    first (stream_app.kafka.delivery.report_cleared_events); other queues' items (a table's
    changelog) are cleared as before."""
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from stream_app.kafka.delivery import report_cleared_events

    async def scenario():
        flow_control = FlowControlEvent(initially_suspended=False)
        streams = FlowControlQueue(flow_control=flow_control, clear_on_resume=True)
        kept = FlowControlQueue(flow_control=flow_control)  # not cleared on resume: untouched
        mine = [_event(0, 5, 2), _event(1, 9, 2)]
        changelog = types.SimpleNamespace(message=types.SimpleNamespace(topic="app-live-changelog", offset=3))
        for item in (mine[0], changelog, mine[1]):
            streams.put_nowait(item)
        kept.put_nowait(_event(0, 6, 2))
        reported = []
        report_cleared_events(flow_control, {"seqstream.observations"}, reported.append)
        flow_control.resume()
        return reported, streams.qsize(), kept.qsize(), mine

    reported, left, kept, mine = asyncio.run(scenario())
    assert reported == [mine] and left == 0 and kept == 1


def test_cleared_events_are_fetched_again_and_later_ones_wait_for_them(monkeypatch):
    """stream_app.app._events_cleared: the cleared events are never acked into a commit, their
    partitions are fetched again from the first of them, and later events of those partitions
    are dropped until it comes (processed first, they would make it be skipped as redelivered)."""
    worker_app, fetched_again = _agent_in_generation_2(monkeypatch)

    async def scenario():
        cleared = [_event(3, 141, 2), _event(3, 142, 2), _event(1, 7, 2)]
        worker_app._events_cleared(cleared)
        await asyncio.sleep(0)
        later = await worker_app._current_events([_event(3, 191, 2), _event(3, 141, 2), _event(1, 8, 2)])
        return cleared, later

    cleared, later = asyncio.run(scenario())
    assert all(e.message.acked for e in cleared) and fetched_again == [{3: 141, 1: 7}]
    assert [(e.message.partition, e.message.offset) for e in later] == [(3, 141)]  # 1@8 waits for 1@7 too


def test_timestamp_order_merges_partitions_by_timestamp_keeping_each_partitions_order():
    """A fetch's records across partitions by timestamp (Kafka Streams' PartitionGroup), each
    partition's own order kept even where its timestamps go back (a merge, not a sort: offsets
    are still delivered in order); on equal timestamps the preferred (configs) topic first, then
    partition order."""
    record = namedtuple("record", "offset timestamp")
    configs, observations, ticks = TP("experiments", 0), TP("observations", 0), TP("ticks", 0)
    records = {observations: [record(0, 20), record(1, 5), record(2, 30)],
               configs: [record(0, 10), record(1, 20), record(2, 40)]}
    order = [(tp.topic, r.offset) for tp, r in TimestampOrder.preferring("experiments")().iterate(records)]
    assert order == [("experiments", 0), ("experiments", 1), ("observations", 0), ("observations", 1),
                     ("observations", 2), ("experiments", 2)]
    # without a preference a tie keeps faust's partition order
    order = [(tp.topic, r.offset) for tp, r in TimestampOrder().iterate(records)]
    assert order[1:3] == [("observations", 0), ("observations", 1)] and order[3] == ("experiments", 1)
    tied = {observations: [record(0, 7)], ticks: [record(0, 7)], configs: [record(0, 7)]}
    assert [tp.topic for tp, _ in TimestampOrder.preferring("experiments")().iterate(tied)] == [
        "experiments", "observations", "ticks"]
    for tp in records:  # per partition: offsets in order
        assert [o for t, o in order if t == tp.topic] == [0, 1, 2]
    assert [(tp, r.offset) for tp, r in TimestampOrder().iterate({configs: records[configs]})] == [
        (configs, 0), (configs, 1), (configs, 2)]
    assert list(TimestampOrder().iterate({})) == []
