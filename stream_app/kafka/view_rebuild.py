"""Rebuilds the web views' memory (stream_app/recent.py) of the partitions a worker takes over, from
the results, alerts and dead-letter topics, so a restart or a partition move never empties the
dashboard.

Why the topics and not a changelog-backed table: the worker already writes every row, alert and
dead letter to them, keyed by experiment id with the input's partitioner (kafka/clients.py
``send_keyed``), so partition ``p`` of each holds exactly the experiments of input partition
``p``. A table would write every row a second time (results are most of the worker's output:
bench_stream's 20k rows/s would double the produced bytes) to recover what is already there.

On each assignment (faust's ``on_partitions_assigned``, awaited before the stream resumes) the
rebuilder forgets the experiments of partitions it lost, takes the end offsets of the new ones
right away, before the worker produces anything more there, and reads up to them in the
background with a group-less consumer. What the worker produces after those offsets reaches the
views live, as its acks come back (app.py ``_acked``); the two meet in recent.py, which orders
intervals by timestamp and drops an alert or interval already held. Memory is that of recent.py
(its bounds) plus one pending interval per experiment being read; time is one read of each
partition, at most ``max_messages`` messages back from its end (SEQSTREAM_REBUILD_MESSAGES).
While a read runs, ``rebuilding`` names its partitions and the views say so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from ..codec import decode_number
from ..recent import DeadLetters, RecentAlerts, RecentResults, deadletter_experiment
from ..settings import Settings
from .partitions import partition_for

log = logging.getLogger(__name__)

VIEW_KINDS = ("results", "alerts", "deadletter")


REBUILD_BATCH_RECORDS = 500  # records decoded between two yields to the event loop


class _PendingInterval:
    """The rows read so far of an experiment's latest interval; a row emitted again (after a
    crash, identical) replaces its twin."""

    __slots__ = ("timestamp", "rows")

    def __init__(self, timestamp: float):
        self.timestamp = timestamp
        self.rows: dict[tuple, bytes] = {}


class ViewRebuilder:
    def __init__(self, settings: Settings, recent: RecentResults, alerts: RecentAlerts, dead_letters: DeadLetters,
                 max_messages: int):
        self.settings = settings
        self.recent, self.alerts, self.dead_letters = recent, alerts, dead_letters
        self.max_messages = max_messages
        self.held: set[int] = set()  # input partitions whose views this worker holds
        self.rebuilding: set[int] = set()
        self._tasks: dict[asyncio.Task, set[int]] = {}  # running reads and their partitions

    async def on_assigned(self, app: Any, assigned, **kwargs: Any) -> None:
        """faust signal: ``assigned`` is the whole new assignment (every topic).

        A read still running from an earlier assignment is cancelled and its partitions count as
        new again; a new partition's views are forgotten before they are read, so reading one
        twice never counts a dead letter twice."""
        for task, partitions in list(self._tasks.items()):
            task.cancel()
            self.held -= partitions
        observations = self.settings.topic("observations")
        now = {tp.partition for tp in assigned if tp.topic == observations}
        lost, new = self.held - now, now - self.held
        if lost | new:
            self._forget(lost | new)
        self.held = now
        if not new:
            return
        # In the background: faust awaits this signal inside the rebalance, and a rebalance held
        # up by a consumer start and offset look-ups (or a loop busy decoding rows) let the chaos
        # test lose rows (tests/test_chaos.py: exact without the rebuild, rows missing with it
        # awaited here).
        self.rebuilding |= new
        task = asyncio.create_task(self._rebuild(new))
        self._tasks[task] = new
        task.add_done_callback(lambda done: self._tasks.pop(done, None))

    async def _rebuild(self, partitions: set[int]) -> None:
        try:
            consumer, ends = await self._open(partitions)
        except asyncio.CancelledError:
            self.rebuilding -= partitions
            raise
        except Exception:  # the views stay live-only: never fail the worker over them
            log.exception("cannot read the output topics to rebuild the views of partitions %s", sorted(partitions))
            self.rebuilding -= partitions
            return
        await self._read(consumer, ends, partitions)

    def _forget(self, partitions: set[int]) -> None:
        n = self.settings.partitions
        mine = lambda e: partition_for(e.encode(), n) in partitions  # noqa: E731
        for experiment in [e for e in self.recent.experiments() if mine(e)]:
            self.recent.forget(experiment)
        for experiment in [e for e in self.alerts.experiments_held() if mine(e)]:
            self.alerts.forget(experiment)
        for experiment in [e for e in self.dead_letters.experiments_held() if mine(e)]:
            self.dead_letters.forget(experiment)

    async def _open(self, partitions: set[int]) -> tuple[AIOKafkaConsumer, dict[TopicPartition, int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False,
                                    max_partition_fetch_bytes=4 * 1_048_576)
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(self.settings.topic(kind), p) for kind in VIEW_KINDS for p in sorted(partitions)
                   if p in (consumer.partitions_for_topic(self.settings.topic(kind)) or ())]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(starts[tp], ends[tp] - self.max_messages))
        except BaseException:
            await consumer.stop()
            raise
        return consumer, {tp: end for tp, end in ends.items() if end > starts[tp]}

    async def _read(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], partitions: set[int]) -> None:
        kinds = {self.settings.topic(kind): kind for kind in VIEW_KINDS}
        pending: dict[str, _PendingInterval] = {}
        try:
            left = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
            while left:
                # a few hundred records at a time, yielding between them: the stream shares the loop
                batch = await consumer.getmany(*left, timeout_ms=500, max_records=REBUILD_BATCH_RECORDS)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset >= ends[tp]:
                            break
                        self._apply(kinds[tp.topic], record.key, record.value, pending)
                    if records and records[-1].offset + 1 >= ends[tp]:
                        left.discard(tp)
                for tp in list(left):
                    if await consumer.position(tp) >= ends[tp]:
                        left.discard(tp)
                await asyncio.sleep(0)
            for experiment, interval in pending.items():
                self.recent.add(experiment, interval.timestamp, list(interval.rows.values()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rebuilding the views of partitions %s failed: they show live outputs only", sorted(partitions))
        finally:
            self.rebuilding -= partitions
            await consumer.stop()

    def _apply(self, kind: str, key: bytes | None, value: bytes | None, pending: dict[str, _PendingInterval]) -> None:
        if value is None:
            return
        if kind == "deadletter":
            self.dead_letters.add_message(key, value)
            return
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        experiment = deadletter_experiment(key) if key else None
        if not isinstance(doc, dict) or experiment is None or doc.get("experiment_id") != experiment:
            return
        if kind == "alerts":
            doc["details"] = {k: decode_number(v) for k, v in (doc.get("details") or {}).items()}
            self.alerts.add(experiment, [doc])
            return
        ts = doc.get("interval_timestamp")
        if not isinstance(ts, (int, float)):
            return
        interval = pending.get(experiment)
        if interval is None or interval.timestamp != ts:
            if interval is not None:
                self.recent.add(experiment, interval.timestamp, list(interval.rows.values()))
            interval = pending[experiment] = _PendingInterval(float(ts))
        interval.rows[(doc.get("metric"), doc.get("variation_id"), doc.get("segment"))] = value
