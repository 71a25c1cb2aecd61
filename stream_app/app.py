"""The faust application: topics, the experiment table, the agent and the idle timer.

Run with ``seqstream worker`` or ``faust -A stream_app.app worker``; configuration comes from the
environment (stream_app/settings.py). The agent consumes observations, experiment configs and
internal idle ticks together (all keyed by experiment_id, co-partitioned), so one worker owns an
experiment's config, its data and its state, and applies them in order.

Per batch: decode and apply (stream_app.processor) -> queue the results, alerts and dead letters
for a background task that hands them to the producer in order and awaits their acks
(stream_app.outputs), while the agent goes on with the next batch. The changed experiments'
states are saved to the table (and its changelog) when faust commits offsets, every
SEQSTREAM_COMMIT_INTERVAL seconds: before each commit, :func:`save_states` waits until every
queued output is acked, writes every state changed since the last save, and faust then flushes
the producer and commits. So a state is written only after the outputs of everything it reflects
were acked, and offsets are committed only after the states that reflect them were written: a
crash leaves the saved state level with or ahead of the committed offsets, never behind them and
never ahead of its outputs; redelivered messages already reflected in the state are skipped by
their offset (state.live). An experiment that closes several intervals between two commits
(catching up on a backlog) is serialised and written once, not once per batch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import NamedTuple

import faust
from faust.exceptions import ConsumerNotStarted

from state.live import Lateness

from . import web
from .web import install_security_headers
from .kafka import long_poll, zstd_level
from .kafka.delivery import RawSchema, SeqstreamTransport, install_stream_yield, report_cleared_events
from .kafka.faust_io import BatchedSender, consumer_lag, coordination_failure, group_member_id
from .kafka.fencing import PartitionWriters
from .kafka.tables import PromptTableManager, StateWriteFailed, changelog_partitions_behind, write_acked
from .kafka.scheduling import TimestampOrder
from .codec import deadletter_message
from .metrics import Metrics
from .outputs import OutputSender
from .processor import BatchProcessor, chunks_by_experiment
from .recent import DeadLetters, RecentAlerts, RecentResults
from .settings import Settings
from .kafka.topics import TABLE_NAME, changelog_topic, create_topics_async
from .kafka.view_rebuild import ViewRebuilder

settings = Settings.from_env()
long_poll.install(settings.fetch_idle_wait)
zstd_level.install()
install_stream_yield()
metrics = Metrics()


class SeqstreamWorker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """No start-up spinner: at log levels warn and above (below warn faust drops it itself) it
        lowers the root logger to DEBUG and never raises it again, so every debug call in faust and
        aiokafka then builds a LogRecord that no handler prints (bench_stream --pack, which runs
        the worker at warn, three alternating pairs: about 15% less worker CPU without it)."""
        self.spinner = None
        super().on_setup_root_logger(logger, level)


class RoutineBackpressure(logging.Filter):
    """Drops faust's log lines for routine changelog backpressure. Past 100 pending table writes,
    faust holds back input until its changelog buffer drains, saying so at WARNING ("producer
    buffer full") and INFO ("producer flush took"). A batch writes one entry per experiment it
    touches, so with a few hundred experiments that is every batch. The wait itself stays: it
    paces input to the changelog (a larger buffer let commits lag by 9 s in bench_stream)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("producer buffer full", "producer flush took"))


logging.getLogger("faust.transport.producer").addFilter(RoutineBackpressure())
log = logging.getLogger("seqstream.worker")


class SeqstreamApp(faust.App):
    def _new_transport(self):
        """faust's aiokafka transport, with a consumer that delivers a message without four tasks
        when nothing blocks it and saves the changed states before it commits offsets
        (stream_app/kafka/delivery.py)."""
        return SeqstreamTransport(self.conf.broker_consumer, self, counts=metrics, before_commit=save_states,
                                  before_assigned=claim_partitions, after_stop=partition_writers.close)

    def on_webserver_init(self, web) -> None:
        """Every response, the dashboard's and the API's, with the security headers."""
        super().on_webserver_init(web)
        install_security_headers(web)

    async def on_first_start(self) -> None:
        """Create every topic with its partition count before the consumer subscribes: a broker
        that auto-creates topics would otherwise make them with one partition. This makes
        ``faust -A stream_app.app worker`` as safe as ``seqstream worker``."""
        if settings.bootstrap:
            await create_topics_async(settings)
        await super().on_first_start()


app = SeqstreamApp(
    settings.app_id,
    broker=f"kafka://{settings.bootstrap or settings.local_broker}",  # the local default when KAFKA_BOOTSTRAP is unset
    store=settings.store,
    datadir=settings.datadir,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    topic_allow_declare=False,  # created with explicit partitions in on_first_start (topics.py)
    processing_guarantee="at_least_once",
    broker_commit_interval=settings.commit_interval,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    broker_rebalance_timeout=settings.rebalance_timeout,
    web_bind=settings.web_host,
    web_port=settings.web_port,
    web_in_thread=False,
    # faust's raw table view (/table/...) would serve any experiment's serialised state to anyone
    # who can reach the port; the API's views say what a user may see.
    web_tables_enabled=False,
    Worker=SeqstreamWorker,
    TableManager=PromptTableManager,
    producer_max_request_size=max(1_048_576, 4 * settings.max_message_bytes),
    producer_max_batch_size=262_144,  # results go out as record batches (kafka.faust_io.BatchedSender)
    producer_compression_type=settings.compression_type,
    consumer_max_fetch_size=max(4_194_304, 8 * settings.max_message_bytes),
    # a fetch's configs before the observations published after them (or with them)
    ConsumerScheduler=TimestampOrder.preferring(settings.topic("experiments")),
)

INPUT_KINDS = ("observations", "experiments", "ticks")
INPUT_TOPICS = {settings.topic(kind): kind for kind in INPUT_KINDS}
inputs = app.topic(*INPUT_TOPICS, schema=RawSchema())
ticks_topic = app.topic(settings.topic("ticks"), key_serializer="raw", value_serializer="raw")

# experiment_id -> LiveExperiment bytes. use_partitioner: a batch mixes partitions, so the
# changelog partition comes from the key (murmur2, as the input topics'), not the current event.
# Keys are bytes so faust serialises them raw: the same bytes, hence the same partition, as the
# input messages' keys (a str key type would be JSON-quoted and hash elsewhere).
live_table = app.Table(
    TABLE_NAME,
    default=None,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    use_partitioner=True,
)

metrics.track_gc()
processor = BatchProcessor(
    INPUT_TOPICS,
    settings.partitions,
    max_message_bytes=settings.max_message_bytes,
    idle_timeout=settings.idle_timeout,
    metrics=metrics,
    cache_size=settings.cache_experiments,
    lateness=Lateness(settings.watermark_delay, settings.allowed_lateness, settings.max_future_skew),
    max_arms=settings.max_arms,
    max_experiments=settings.max_experiments,
)

# What this worker has seen lately, for the web views (the owner of an experiment answers):
# filled live as outputs are acked, and from the output topics for every partition it takes over
# (a restart, a rebalance), so the views outlive the worker (stream_app/kafka/view_rebuild.py).
HISTORY_INTERVALS = 1000  # per experiment: the longest history response
recent = RecentResults(settings.history_mb * 1_048_576, HISTORY_INTERVALS)
recent_alerts = RecentAlerts(experiments=10_000, per_experiment=200)
dead_letters = DeadLetters(experiments=10_000, reasons=5)
view_rebuilder = ViewRebuilder(settings, recent, recent_alerts, dead_letters, settings.rebuild_messages)
open_intervals: dict[str, float] = {}  # experiment -> last activity, for the idle timer
_open_index_built = False


class _TableView:
    """Read-only mapping over the table for the processor (missing keys -> None)."""

    def get(self, key: str, default=None):
        value = live_table.get(key.encode())
        return default if value is None else value

    def __contains__(self, key: str) -> bool:
        return live_table.get(key.encode()) is not None

    def __len__(self) -> int:  # experiments saved on this worker's partitions
        return len(live_table)


def local_experiments() -> list[str]:
    """Experiments this worker holds: saved in the table, or changed since the last save."""
    return sorted({key.decode() for key in live_table.keys()} | set(processor.unsaved_experiments()))


def current_experiment(experiment_id: str):
    """An experiment's latest state (a LiveExperiment, to read only), unsaved changes included;
    None when this worker has none."""
    return processor.current(experiment_id, _TableView())


def has_experiment(experiment_id: str) -> bool:
    """Whether this worker holds the experiment, saved or not, without decoding its state."""
    return processor.holds(experiment_id, _TableView())


def _refused_output(topic: str, partition: int, key: bytes | None, value: bytes, exc: BaseException):
    """An output record the broker refuses for what it is (kafka.faust_io.RECORD_REFUSALS): it
    goes to the dead-letter topic instead (a prefix of it, its size and hash), so the worker
    neither stops on it nor crash-loops on it after a restart."""
    metrics.outputs_refused += 1
    log.error("the broker refused a %d-byte record for %s[%d] (%r): dead-lettered instead", len(value), topic,
              partition, exc)
    letter = deadletter_message(f"the broker refused this {len(value)}-byte output record: {exc!r}", topic, partition,
                                None, key, value, error="output_refused")
    dead_letters.add_message(key, letter)
    return DEADLETTER_TOPIC, key, letter


batched = BatchedSender(app, on_refused=_refused_output)


# Fencing, so that a state never claims input it has not applied. The per-experiment offset
# high-water marks (state.live) skip a redelivered message as "already processed"; that is only
# sound if every partition reaches the processor in order and without gaps from the committed
# offset on. Across a rebalance it did not: events fetched before it (in the agent's take buffer,
# or taken while partitions were being revoked) were processed after the states were reloaded
# from the table, so a state's high-water mark jumped past messages the consumer then fetched
# again from the committed offset, and every later owner skipped them (issue 17: offsets
# 1203-1231 lost with no dead letter). Now an event is processed only if it was fetched in the
# current consumer generation and no revocation happened since: anything else is dropped
# unprocessed and its offset never acknowledged (so never committed), and fetched again: a
# rebalance resets the positions to the committed offsets, and where the fetch came after that
# reset, the partition is sought back to it (_current_events).
# Between the end of a revocation (unsaved states dropped) and the next assignment: every event
# is from before it, and no offset is committed (save_states refuses), since acks of events
# whose effects were just dropped may be recorded meanwhile.
_fenced = False


_fetching_again: dict = {}  # partition -> the offset its dropped events are fetched again from


async def _on_revoked(app, revoked, **kwargs) -> None:
    global _fenced
    _fenced = True
    processor.invalidate()  # partitions may move: the table is the truth again


async def _on_assigned(app, assigned, **kwargs) -> None:
    global _fenced
    processor.invalidate()
    _fetching_again.clear()  # every position is reset to the committed offset
    _fenced = False


def _hold_back(tp, offset: int) -> None:
    """Events of ``tp`` after ``offset`` are dropped until the one at ``offset``, fetched again,
    comes (_current_events)."""
    _fetching_again[tp] = min(_fetching_again.get(tp, offset), offset)


def _drop(message) -> None:
    message.acked = True  # faust's ack is then a no-op: its offset is never recorded, never committed
    metrics.stale_events_dropped += 1


async def _current_events(events: list) -> list:
    """The events fetched in this consumer generation since the last assignment, in offset order
    per partition. The others are marked acknowledged without faust recording their offsets
    (Message.acked set first makes faust's ack a no-op), so they can never be committed, and
    their partitions are fetched again from them (kafka.delivery.SeqstreamConsumer.fetch_again:
    unless a rebalance already reset the position to the committed offset, before them; one
    fetched under the new assignment before faust took the new generation has no reset after
    it). Events of such a partition already queued behind them are dropped the same way until
    the first one fetched again comes: processed before it, they would move the experiments'
    offset high-water marks past the events fetched again, which would then be skipped as
    redelivered (state.live), lost for good."""
    generation = app.consumer_generation_id
    if not _fenced and not _fetching_again and all(event.message.generation_id == generation for event in events):
        return events
    fresh, stale = [], {}
    for event in events:
        message = event.message
        tp = message.tp
        if _fenced or message.generation_id != generation:
            _drop(message)
            stale.setdefault(tp, message.offset)
            if not _fenced:  # while fenced the assignment is about to change, and with it every position
                _hold_back(tp, message.offset)
        elif tp in _fetching_again and message.offset > _fetching_again[tp]:
            _drop(message)  # fetched before the seek back: it comes again, after the ones before it
        else:
            _fetching_again.pop(tp, None)  # from here on, in order again
            fresh.append(event)
    again = {tp: offset for tp, offset in stale.items() if tp in _fetching_again}
    if again:
        await app.consumer.fetch_again(again)
    return fresh


def _events_cleared(events: list) -> None:
    """Events faust dropped from the stream queues unprocessed (kafka.delivery.report_cleared_events):
    as events of a past generation, never acked into a commit, and fetched again; this
    generation's events of the same partitions are dropped until the first one fetched again
    comes (_current_events)."""
    stale: dict = {}
    for event in events:
        message = event.message
        _drop(message)
        stale[message.tp] = min(stale.get(message.tp, message.offset), message.offset)
    if _fenced:  # the assignment is about to change, and with it every position
        return
    for tp, offset in stale.items():
        _hold_back(tp, offset)
    asyncio.ensure_future(app.consumer.fetch_again(stale))


report_cleared_events(app.flow_control, INPUT_TOPICS, _events_cleared)


async def _reindex_open_intervals(app, **kwargs) -> None:
    """Newly assigned experiments may hold open intervals to close. Their states are in the table
    only once recovery from the changelog is done, which is when faust sends this signal; an
    index rebuilt at assignment would miss them, and they would never close."""
    global _open_index_built
    _open_index_built = False


async def _rebuild_views(app, assigned, **kwargs) -> None:
    await view_rebuilder.on_assigned(app, assigned)


app.on_partitions_revoked.connect(_on_revoked)
app.on_partitions_assigned.connect(_on_assigned)
app.on_partitions_assigned.connect(_rebuild_views)
app.on_rebalance_complete.connect(_reindex_open_intervals)


# Held by the agent from processing a batch until its outputs are queued for sending, and by
# save_states, which first waits for everything queued to be acked (outputs.flush): a save never
# sees a batch half done, so it never writes a state whose outputs are not acked.
_batch_in_flight = asyncio.Lock()
_latest_event: dict[int, object] = {}  # partition -> the latest input event on it
CHANGELOG_TOPIC = changelog_topic(settings)
# The changelog is written by one fenced transactional producer per input partition, claimed at
# every assignment before anything of the partition is read (stream_app/kafka/fencing.py).
partition_writers = PartitionWriters(
    settings.bootstrap or settings.local_broker, settings.app_id, CHANGELOG_TOPIC,
    compression_type=settings.compression_type, max_request_size=max(1_048_576, 4 * settings.max_message_bytes),
    max_batch_size=262_144)


async def claim_partitions(assigned) -> None:
    """Before faust reads anything of a new assignment: claim its input partitions' changelog
    partitions, fencing every earlier writer of them (stream_app.kafka.fencing)."""
    partitions = {tp.partition for tp in assigned if tp.topic in INPUT_TOPICS}
    try:
        await partition_writers.claim(partitions)
    except Exception as exc:  # noqa: BLE001 - unclaimed partitions only refuse to save (no commit)
        log.error("offsets will NOT be committed until the next assignment: %s", exc)
    metrics.partitions_claimed = len(partition_writers.claimed)
# States taken for a save whose changelog write failed: written first at the next save, and
# until then no offset is committed (experiment -> (bytes, partition)).
_failed_writes: dict[str, tuple[bytes, int]] = {}


async def save_states() -> bool:
    """Write every experiment state changed since the last save, durably; faust runs this before
    each offset commit (stream_app.kafka.delivery.SeqstreamConsumer), and commits only if it
    returns True, so the offsets it then commits are never ahead of the saved states.

    Durably: the states' changelog records are acknowledged by the broker before this returns
    (kafka.tables.write_acked), whatever faust's producer buffer does. A write that fails is
    logged with its reason, kept, and retried at the next save; until one succeeds this returns
    False and nothing is committed, so a crash meanwhile resumes from states and offsets that
    agree. States of partitions this worker no longer holds are dropped: their new owner starts
    from the last saved state and the committed offsets."""
    async with _batch_in_flight:
        if _fenced:  # revoked, states dropped, not assigned yet: no ack of now may be committed
            return False
        if app.in_recovery:
            # Nothing was processed since the assignment, and a transaction committed now would
            # end a changelog partition in its marker while faust's recovery may be about to take
            # the partition's end for the record it must read (stream_app.kafka.fencing).
            return False
        t0 = time.perf_counter()
        await outputs.flush()
        held = {tp.partition for tp in app.consumer.assignment() if tp.topic in INPUT_TOPICS}
        for experiment in [e for e, (_, partition) in _failed_writes.items() if partition not in held]:
            del _failed_writes[experiment]
        states = {**_failed_writes, **processor.take_states(held)}
        _failed_writes.clear()
        try:
            await write_acked(live_table, partition_writers,
                              ((e.encode(), blob, p, _latest_event[p]) for e, (blob, p) in states.items()))
        except StateWriteFailed as exc:
            metrics.state_writes_fenced = partition_writers.fenced
            metrics.partitions_claimed = len(partition_writers.claimed)
            _failed_writes.update((e, v) for e, v in states.items() if v[1] in exc.partitions)
            metrics.state_write_failures += 1
            log.error("offsets NOT committed: %s; experiments %s; retried at the next commit, and a restart "
                      "resumes from the last committed offsets", exc, ", ".join(sorted(_failed_writes)[:10]))
            return False
        finally:
            metrics.seconds_writing_state += time.perf_counter() - t0
        metrics.states_saved += len(states)
        return True


YOUNG_COLLECTION_ALLOCATIONS = 200_000  # the worker's gc threshold 0 (see process)
EXPERIMENTS_PER_CHUNK = 500  # a batch is processed this many experiments at a time (processor.chunks_by_experiment)


class QueuedOutputs(NamedTuple):
    """A batch's messages to send, and what the web views and the latency metric need of its
    closed intervals once they are acked: only that, so its IntervalResult objects (a dict of
    column lists each) are freed when the batch is done rather than when its sends are acked."""

    results: list[tuple[bytes, bytes]]
    alerts: list[tuple[bytes, bytes]]
    deadletters: list[tuple[bytes | None, bytes]]
    closed: list[tuple[str, float, list[bytes], list]]  # experiment, interval, rows, alerts
    received: float  # when the batch was taken

    @classmethod
    def of(cls, out, received: float) -> "QueuedOutputs":
        closed = [(r.experiment_id, r.interval_timestamp, rows, r.alerts) for r, rows in out.closed]
        return cls(out.results, out.alerts, out.deadletters, closed, received)


async def _hand_over(queued: QueuedOutputs) -> list[asyncio.Future]:
    """Give a batch's messages to the producer, as record batches; returns their futures."""
    t0 = time.perf_counter()
    futures = await batched.send(RESULTS_TOPIC, queued.results)
    futures += await batched.send(ALERTS_TOPIC, queued.alerts)
    futures += await batched.send(DEADLETTER_TOPIC, queued.deadletters)
    metrics.seconds_sending += time.perf_counter() - t0
    return futures


def _acked(queued: QueuedOutputs, seconds: float) -> None:
    """A batch's outputs are acked: the web views may show them; account the close latency."""
    sent = time.time()
    metrics.seconds_awaiting_acks += seconds
    for experiment, interval, rows, alerts in queued.closed:
        recent.add(experiment, interval, rows)
        if alerts:
            recent_alerts.add(experiment, (a.to_dict() for a in alerts))
    for key, value in queued.deadletters:
        dead_letters.add_message(key, value)
    metrics.close_latency_sum += (sent - queued.received) * len(queued.closed)
    metrics.close_latency_count += len(queued.closed)


RESULTS_TOPIC, ALERTS_TOPIC, DEADLETTER_TOPIC = (settings.topic(k) for k in ("results", "alerts", "deadletter"))
# Outputs go out in the background, in order (stream_app/outputs.py); save_states flushes them.
outputs: OutputSender[QueuedOutputs] = OutputSender(_hand_over, _acked)


@app.agent(inputs)
async def process(stream):
    view = _TableView()
    clock = time.perf_counter
    idle_since = clock()
    # The app, faust and their modules are long-lived: exempt them from garbage collection, so
    # the full collections a batch's allocations trigger scan only what the stream created
    # (bench_stream: garbage collection 1.0-1.1 s -> 0.4-0.6 s of a 120,000-observation run).
    gc.freeze()
    # A batch allocates tens of thousands of containers that refcounting frees when it ends. At
    # the default 700 allocations per young collection they were scanned mid-batch and promoted,
    # which made older collections, and 7 full ones per 120,000 observations, do the rest. A young
    # generation larger than a batch's allocations lets them die unscanned (bench_stream --pack,
    # 8 intervals, six alternating pairs: garbage collection 0.9-1.3 s -> 0.1-0.2 s, no full
    # collection). Published while the worker runs, 20 intervals come in batches of about 17,000
    # observations, whose allocations outgrew 50,000: 200,000 took garbage collection from 0.7-0.9
    # s to 0.1-0.2 s of the run (bench_stream --pack --modes live, two alternating pairs; VmRSS
    # +10 MiB). Only reference cycles wait longer for collection.
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, *gc.get_threshold()[1:])
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
        received = time.time()
        generation = app.consumer_generation_id  # the one _current_events keeps the events of

        def overtaken() -> bool:  # by a rebalance
            return _fenced or app.consumer_generation_id != generation

        events = await _current_events(events)
        if not events:
            continue
        changed: set[str] = set()
        processing = 0.0
        async with _batch_in_flight:  # waits while save_states writes (its time is counted there)
            t0 = clock()
            for event in events:
                _latest_event[event.message.partition] = event  # save_states writes under these
            chunks = chunks_by_experiment([event.message for event in events], EXPERIMENTS_PER_CHUNK)
            for n, chunk in enumerate(chunks):
                if n:
                    await asyncio.sleep(0)  # the web views, the timers and the probe run in between
                if overtaken():
                    break  # the rest is read again from the committed offsets (below)
                t1 = clock()
                out = processor.process(chunk, view)
                processing += clock() - t1
                changed |= out.changed
                # Handed over and acked in the background (stream_app/outputs.py) while the
                # agent takes and processes the next messages; waits only while two chunks'
                # outputs are queued. Queued under the lock, so a save never sees states whose
                # outputs are not.
                await outputs.put(QueuedOutputs.of(out, received))
        if overtaken():
            # A rebalance came while the batch's outputs were being queued: the states it changed
            # were dropped with the revocation (processor.invalidate), and faust acks its events
            # only when the next batch is taken, into the new generation's acks, where a commit
            # would pass them. Acked here without faust recording them, they are read again from
            # the committed offset instead.
            for event in events:
                _drop(event.message)
        for experiment in changed:
            open_intervals[experiment] = received
        metrics.seconds_waiting_for_input += t0 - idle_since
        metrics.seconds_processing += processing
        metrics.batches += 1
        idle_since = clock()


_recovery_behind: dict[int, int] = {}  # changelog partition -> offsets recovery had to go, last check


async def _unstick_recovery() -> None:
    """A changelog partition whose recovery has not moved since the last check (5 s) gets a
    record at its end. Recovery is done when it has read the record at the partition's end; a
    transaction marker there is never delivered, and the claim's tombstone that should follow
    every former owner's last marker may not (a broker that writes an abort marker after
    answering the claim), which held the worker's input paused for good."""
    global _recovery_behind
    behind = changelog_partitions_behind(app) if app.in_recovery else {}
    for partition, remaining in behind.items():
        if _recovery_behind.get(partition) == remaining:
            log.warning("recovery of changelog partition %d has not moved for 5 s (%d offsets to go): "
                        "writing a record at its end", partition, remaining)
            try:
                await partition_writers.end_in_a_record(partition)
            except Exception as exc:  # noqa: BLE001 - tried again at the next check
                log.error("could not write to changelog partition %d: %r", partition, exc)
    _recovery_behind = behind


LOOP_PROBE_SECONDS = 0.1


@app.task
async def probe_event_loop() -> None:
    """How late a 0.1 s sleep wakes is how long the event loop was held by something else (a
    batch, a start-up scan, a web request): GET /metrics shows the longest such stall and the
    count over 1 s, which nothing sharing the loop may reach (issue 17)."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(LOOP_PROBE_SECONDS)
        stall = loop.time() - t0 - LOOP_PROBE_SECONDS
        if stall > metrics.loop_stall_max_seconds:
            metrics.loop_stall_max_seconds = stall
        if stall > 1.0:
            metrics.loop_stalls_over_1s += 1


COORDINATION_FAILED_EXIT = 3  # the exit status of a worker whose group membership ended for good


@app.timer(interval=5.0)
async def measure_lag():
    """Messages behind the log end on this worker's input partitions (GET /metrics), and a
    check that the consumer is still a working member of its group: if its coordination ended
    (kafka.faust_io.coordination_failure), the worker exits at once, as if killed, which every
    state and commit is made to survive; its supervisor starts it again and it rejoins."""
    metrics.consumer_lag = consumer_lag(app.consumer, INPUT_TOPICS)
    await _unstick_recovery()
    failure = coordination_failure(app.consumer)
    if failure is not None:
        log.critical("the consumer's group coordination ended (%r): exiting with status %d so that the "
                     "worker is restarted and rejoins its group", failure, COORDINATION_FAILED_EXIT)
        logging.shutdown()
        os._exit(COORDINATION_FAILED_EXIT)
    r = app.tables.recovery


@app.timer(interval=max(0.5, settings.idle_timeout / 4))
async def close_idle_intervals():
    """Punctuate idle experiments: a tick through the agent closes their open interval in-stream
    (tables can only be written from the agent). After a restart or a rebalance, rebuild the index
    from the table once."""
    global _open_index_built
    if not _open_index_built:
        for experiment in local_experiments():
            open_intervals.setdefault(experiment, 0.0)
        _open_index_built = True
    now = time.time()
    candidates = [e for e, seen in open_intervals.items() if now - seen >= settings.idle_timeout]
    # In slices, yielding between them: after a start with 50,000 experiments in the table every
    # one is a candidate, and decoding them all at once held the event loop (and with it the
    # stream and the heartbeats) for tens of seconds.
    for start in range(0, len(candidates), IDLE_CHECK_SLICE):
        chunk = candidates[start:start + IDLE_CHECK_SLICE]
        due, waiting = processor.idle_status(_TableView(), chunk)
        for experiment in due:
            await ticks_topic.send(key=experiment.encode(), value=b"{}")
        for experiment in chunk:
            open_intervals.pop(experiment, None)
        # Open but not idle yet: an experiment indexed from the table (after a start or a
        # rebalance) gets no batch to refresh its entry, so it must keep one with its real last
        # activity.
        open_intervals.update(waiting)
        await asyncio.sleep(0)


IDLE_CHECK_SLICE = 500  # experiments whose idle state is decoded between two yields to the loop


class WorkerReadModel:
    """What the web views read of this worker (stream_app.web.context.WorkerReadModel)."""

    settings = settings
    metrics = metrics
    recent = recent
    recent_alerts = recent_alerts
    dead_letters = dead_letters
    table_name = TABLE_NAME

    @staticmethod
    def rebuilding() -> bool:
        """Whether the views are still being rebuilt from the output topics (after a takeover)."""
        return bool(view_rebuilder.rebuilding)

    current_experiment = staticmethod(current_experiment)
    has_experiment = staticmethod(has_experiment)
    local_experiments = staticmethod(local_experiments)

    @staticmethod
    def assigned_partitions() -> list[int]:
        """Partitions of the observations topic this worker consumes now (empty while rebalancing, and
        while the consumer is still starting: the web server answers before it)."""
        observations = settings.topic("observations")
        try:
            assignment = app.consumer.assignment()
        except ConsumerNotStarted:
            return []
        return sorted(tp.partition for tp in assignment if tp.topic == observations)

    @staticmethod
    def group_member_id() -> str | None:
        return group_member_id(app.consumer)

    @staticmethod
    async def publish_config(experiment_id: str, message: bytes) -> None:
        await app.producer.send(settings.topic("experiments"), experiment_id.encode(), message, None, None, None)


web.register(app, WorkerReadModel())
