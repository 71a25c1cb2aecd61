"""Public aiokafka API only (transactional producers).

State writes fenced per input partition, so a worker that lost a partition without knowing it yet
(a zombie: evicted from the group while slow, its heartbeats late) can never write a state over
the new owner's.

Without this, a zombie's save ran before its offset commit failed (IllegalGeneration): its states
reached the changelog after the new owner's, the next owner recovered the stale ones, and rows
were lost or counted twice (the chaos test under CPU load: 36 result rows missing, 111 wrong).
The group's generation check fences the zombie's offset commit, not its changelog write.

The fence is Kafka's own (KIP-98, as Kafka Streams' exactly-once-alpha does it per task): every
input partition P has its own transactional id, ``<app>-<changelog>-P``. A worker assigned P
*claims* it before it reads anything of P (its committed offsets are already final then: a
former owner's offset commits fail the group's generation check): the claim (InitProducerId)
bumps the id's epoch, which aborts a former owner's open transaction and makes the broker refuse
every later write of its producer (ProducerFenced). States are written in one transaction per
partition. So whatever a former owner wrote is in the changelog before the claim, and nothing
after it: the new owner recovers, last write winning, either its predecessors' last states or
later ones it writes itself, never a stale state over a newer one.

Recovery reads with faust's default read_uncommitted: a write a claim aborted is applied like a
committed one. That is sound for the same reason: it precedes the claim, and like every save it
was written after the outputs of everything it reflects were acked, so it is only a state ahead
of the committed offsets, which redelivery handles (state.live skips messages by offset), as
after a kill between a save and its commit. So the worker's consumer keeps faust's default.

A claim then writes one plain (non-transactional) tombstone of a reserved key to the changelog
partition, so that the partition ends in a record and not in a transaction marker: faust's
recovery (faust.tables.recovery) is done when it has read the record at highwater - 1, and a
commit or abort marker there is never delivered (faust only works around that in its
exactly_once mode, after two 5 s timeouts). The tombstone deletes a key no table holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerFenced

from .clients import send_to_partition

log = logging.getLogger("seqstream.fencing")

CLAIM_KEY = b"\x00seqstream:claimed"  # the tombstone a claim writes; never a table key
# Seconds a claim may take: it runs inside the group's assignment callback, which holds the worker
# back from fetching; a broker that does not answer must not hold it forever.
CLAIM_TIMEOUT = 30.0


class PartitionNotClaimed(RuntimeError):
    """This worker has no claim on the partition (never assigned, or fenced by a newer owner)."""


class PartitionWriters:
    """One transactional producer per claimed input partition, writing its changelog partition."""

    def __init__(self, bootstrap: str, transactional_prefix: str, changelog: str, **producer_config: Any) -> None:
        self._bootstrap = bootstrap
        self._prefix = transactional_prefix
        self._changelog = changelog
        self._config = producer_config
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._plain: AIOKafkaProducer | None = None
        self.fenced = 0  # writes refused because a newer owner claimed the partition

    def transactional_id(self, partition: int) -> str:
        return f"{self._prefix}-{self._changelog}-{partition}"

    @property
    def claimed(self) -> set[int]:
        return set(self._producers)

    async def claim(self, partitions: Iterable[int]) -> None:
        """Claim ``partitions`` (this worker's input partitions of a new assignment) and give up
        every other: each gets a new producer, so a claim fences even this worker's own earlier
        producer of the partition, which a generation it missed may have let another owner fence.
        Raises when a claim fails: the partition stays unclaimed and its states unwritten (no
        offsets are committed) until the next assignment claims it again."""
        wanted = sorted(set(partitions))
        old, self._producers = self._producers, {}
        await asyncio.gather(*(_stop_quietly(p) for p in old.values()))
        if self._plain is None:
            self._plain = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", **self._config)
            await self._plain.start()
        results = await asyncio.gather(*(asyncio.wait_for(self._claim_one(p), CLAIM_TIMEOUT) for p in wanted),
                                       return_exceptions=True)
        failed = {p: r for p, r in zip(wanted, results) if isinstance(r, BaseException)}
        if failed:
            raise PartitionNotClaimed(f"claims of changelog partitions {sorted(failed)} failed: {next(iter(failed.values()))!r}")

    async def _claim_one(self, partition: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap,
                                    transactional_id=self.transactional_id(partition), **self._config)
        try:
            await producer.start()  # InitProducerId: the fence
            await self.end_in_a_record(partition)
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._producers[partition] = producer

    async def end_in_a_record(self, partition: int) -> None:
        """Write the claim's tombstone to the changelog partition, so that it ends in a record:
        at every claim, and again when recovery waits on a transaction marker at the partition's
        end (one written after the claim's tombstone); it is done once it has read a record past it."""
        if self._plain is not None:
            await self._plain.send_and_wait(self._changelog, key=CLAIM_KEY, value=None, partition=partition)

    async def write(self, partition: int, records: list[tuple[bytes, bytes]]) -> Any:
        """Write ``records`` to the changelog partition in one transaction; returns the last
        record's metadata once the transaction is committed. Raises PartitionNotClaimed if a newer
        owner fenced this worker (the partition's producer is then given up), or the broker's
        error (the transaction is aborted; the next save tries again)."""
        producer = self._producers.get(partition)
        if producer is None:
            raise PartitionNotClaimed(f"changelog partition {partition} is not claimed by this worker")
        try:
            await producer.begin_transaction()
            futures = await send_to_partition(producer, self._changelog, partition, records)
            metadata = await asyncio.gather(*futures)
            await producer.commit_transaction()
        except ProducerFenced as exc:
            self.fenced += 1
            self._producers.pop(partition, None)
            await _stop_quietly(producer)
            raise PartitionNotClaimed(f"changelog partition {partition} was claimed by a newer owner: {exc}") from exc
        except BaseException:
            if not await _aborted(producer):  # unusable until claimed again, at the next assignment
                self._producers.pop(partition, None)
                await _stop_quietly(producer)
            raise
        return metadata[-1]

    async def close(self) -> None:
        producers = [*self._producers.values(), *([self._plain] if self._plain else [])]
        self._producers, self._plain = {}, None
        await asyncio.gather(*(_stop_quietly(p) for p in producers))


async def _aborted(producer: AIOKafkaProducer) -> bool:
    """Abort the producer's transaction; False if that failed (the producer is then unusable)."""
    try:
        await producer.abort_transaction()
        return True
    except Exception as exc:  # noqa: BLE001
        log.error("aborting a changelog transaction failed: %r", exc)
        return False


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:  # noqa: BLE001 - a fenced producer may fail to stop cleanly
        log.debug("stopping a changelog producer: %r", exc)
