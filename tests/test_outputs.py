"""OutputSender (stream_app/outputs.py): the agent's outputs handed over in the background, in
order, bounded, flushed before states are saved, and failures raised to the agent and the save."""

from __future__ import annotations

import asyncio

import pytest

from stream_app.outputs import OutputSender


class FakeProducer:
    """Hands over by recording the item; each item's ack is a future the test resolves (or that
    resolves at once with ``auto_ack``)."""

    def __init__(self, auto_ack: bool = True, fail_on=None):
        self.handed: list[int] = []
        self.acks: dict[int, asyncio.Future] = {}
        self.auto_ack = auto_ack
        self.fail_on = fail_on
        self.gate = asyncio.Event()
        self.gate.set()

    async def hand_over(self, item: int) -> list[asyncio.Future]:
        await self.gate.wait()
        if item == self.fail_on:
            raise ConnectionError(f"broker gone at {item}")
        self.handed.append(item)
        ack = self.acks[item] = asyncio.get_running_loop().create_future()
        if self.auto_ack:
            ack.set_result(None)
        return [ack]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_items_are_handed_over_and_acked_in_order_and_flush_waits_for_every_ack():
    async def scenario():
        producer = FakeProducer(auto_ack=False)
        acked: list[int] = []
        sender = OutputSender(producer.hand_over, lambda item, seconds: acked.append(item), max_pending=100)
        for item in range(5):
            await sender.put(item)
        flushing = asyncio.ensure_future(sender.flush())
        await asyncio.sleep(0.01)
        assert producer.handed == [0] and acked == [] and not flushing.done()  # the next waits for its ack
        for item in range(5):
            while item not in producer.acks:
                await asyncio.sleep(0)
            assert not flushing.done()
            producer.acks[item].set_result(None)
        await flushing
        return producer.handed, acked

    handed, acked = run(scenario())
    assert handed == acked == [0, 1, 2, 3, 4]


def test_put_waits_while_max_pending_items_are_queued():
    async def scenario():
        producer = FakeProducer()
        producer.gate.clear()  # the broker does not take anything yet
        sender = OutputSender(producer.hand_over, lambda item, seconds: None, max_pending=2)
        await sender.put(0)
        await asyncio.sleep(0)  # the sender takes item 0 and waits at the gate
        await sender.put(1)
        await sender.put(2)
        blocked = asyncio.ensure_future(sender.put(3))
        await asyncio.sleep(0.01)
        was_blocked = not blocked.done()
        producer.gate.set()
        await blocked
        await sender.flush()
        return was_blocked, producer.handed

    was_blocked, handed = run(scenario())
    assert was_blocked and handed == [0, 1, 2, 3]


@pytest.mark.parametrize("failure", ["hand_over", "ack"])
def test_a_failed_hand_over_or_ack_drops_the_rest_and_raises_at_the_next_put_and_flush(failure):
    async def scenario():
        producer = FakeProducer(auto_ack=failure != "ack", fail_on=1 if failure == "hand_over" else None)
        acked: list[int] = []
        sender = OutputSender(producer.hand_over, lambda item, seconds: acked.append(item), max_pending=10)
        for item in range(4):
            await sender.put(item)
        if failure == "ack":
            while 0 not in producer.acks:
                await asyncio.sleep(0)
            producer.acks[0].set_exception(ConnectionError("broker gone at 0"))
        with pytest.raises(RuntimeError, match="sending outputs failed: ConnectionError"):
            await sender.flush()
        with pytest.raises(RuntimeError, match="sending outputs failed"):
            await sender.put(9)
        return producer.handed, acked

    handed, acked = run(scenario())
    if failure == "hand_over":
        assert handed == [0] and acked == [0]  # 1 failed; 2 and 3 were dropped, never handed over
    else:
        assert handed == [0] and acked == []


def test_a_cancelled_sender_does_not_leave_a_flush_waiting():
    async def scenario():
        producer = FakeProducer()
        producer.gate.clear()
        sender = OutputSender(producer.hand_over, lambda item, seconds: None, max_pending=10)
        for item in range(3):
            await sender.put(item)
        await asyncio.sleep(0)
        sender._task.cancel()  # as at shutdown, with items still queued
        with pytest.raises(RuntimeError, match="sending outputs failed: CancelledError"):
            await sender.flush()

    run(scenario())


def test_flush_with_nothing_queued_returns_at_once():
    async def scenario():
        sender = OutputSender(FakeProducer().hand_over, lambda item, seconds: None)
        await sender.flush()
        await sender.put(1)
        await sender.flush()
        await sender.flush()

    run(scenario())
