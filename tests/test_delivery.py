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

import mode
import pytest
from faust.transport import consumer as faust_consumer

from stream_app.kafka.delivery import DELIVERED, EagerDelivery, SeqstreamConsumer, eager, yield_every
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
