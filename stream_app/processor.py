"""One batch of input messages -> outputs, and the experiment states to save (no faust here).

The agent hands :class:`BatchProcessor` the batch's raw messages and a mapping to read saved
states from; it gets back the messages to send (results, alerts, dead letters). The experiments a
batch changed stay *unsaved* in the processor until :meth:`BatchProcessor.take_states` serialises
them, which the worker does when faust commits offsets (stream_app/app.py), not after every
batch: an experiment that closes several intervals between two commits is serialised and written
to the changelog once. Keeping this free of faust makes the whole input-handling path
unit-testable, and the agent a thin I/O loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Container, Mapping, MutableMapping, NamedTuple

import orjson

from state import InvalidInput, IntervalResult
from state.live import DEFAULT_LATENESS, Duplicate, Lateness, LiveExperiment, score_all

from .codec import (MAX_DEPTH, decode_config, decode_observations, deadletter_message, element_bytes,
                    encode_alert, encode_row, encode_rows, experiment_key)
from .kafka.partitions import partition_for
from .metrics import Metrics
from .settings import DEFAULT_CACHE_EXPERIMENTS

log = logging.getLogger("seqstream.processor")
# Live experiments kept decoded between batches (SEQSTREAM_CACHE_EXPERIMENTS); beyond this many,
# the least recently used are dropped and read back from the table when they return.
CACHE_SIZE = DEFAULT_CACHE_EXPERIMENTS


@dataclass(frozen=True, slots=True)
class InMessage:
    """What the processor reads of a message; the agent passes faust's own ``Message`` objects,
    which have the same attributes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class EmittedInterval(NamedTuple):
    """A closed interval's result and its rows as sent (JSON, one per metric x treatment)."""

    result: IntervalResult
    rows: list[bytes]


@dataclass(slots=True)
class Outputs:
    results: list[tuple[bytes, bytes]] = field(default_factory=list)
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deadletters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # experiments whose state the batch changed
    partitions: dict[str, int] = field(default_factory=dict)  # experiment -> its partition
    closed: list[EmittedInterval] = field(default_factory=list)


def chunks_by_experiment(messages: list, limit: int) -> list[list]:
    """The messages in chunks of at most ``limit`` experiments (message keys), each experiment's
    messages in one chunk and in their order; the batch as it is when it has no more. Processing
    a chunk is judged as processing the batch is, experiment by experiment, so chunking changes
    no result, only how long the event loop is held at a time: after a start with 50,000
    experiments in the table, a batch of 2,000 ticks each closing another experiment's interval
    decoded and scored 2,000 states in one go (bench/bench_startup.py: the loop held up to 5 s)."""
    if len({message.key for message in messages}) <= limit:
        return [messages]
    groups: dict = {}
    for message in messages:
        groups.setdefault(message.key, []).append(message)
    keyed = list(groups.values())
    return [[message for group in keyed[start:start + limit] for message in group]
            for start in range(0, len(keyed), limit)]


class BatchProcessor:
    """Routes messages by topic kind: ``observations``, ``experiments`` (configs), ``ticks``."""

    def __init__(self, topic_kinds: Mapping[str, str], partitions: int, *, max_message_bytes: int = 65536,
                 idle_timeout: float = 30.0, clock: Callable[[], float] = time.time, metrics: Metrics | None = None,
                 cache_size: int = CACHE_SIZE, lateness: Lateness = DEFAULT_LATENESS, max_arms: int = 1000,
                 max_experiments: int = 100_000):
        self.topic_kinds = dict(topic_kinds)
        self.partitions = partitions
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.lateness = lateness  # when intervals are emitted, how late a row may be (state.live)
        self.max_arms = max_arms  # (metric, variation) arms per experiment: its state stays bounded
        # experiments held (on this worker's partitions): one more is refused, so the table, the
        # start-up and the timers stay bounded; counted from the store after each rebalance
        self.max_experiments = max_experiments
        self._held: int | None = None
        self.clock = clock
        self.metrics = metrics or Metrics()
        # This worker is the only writer of the experiments on its partitions, so between
        # rebalances the objects it wrote are exactly what the table holds: keeping them saves
        # a deserialisation per experiment per batch. invalidate() on every rebalance.
        self._cache: OrderedDict[str, LiveExperiment] = OrderedDict()
        self.cache_size = cache_size
        # Changed since the last take_states, with their partitions: newer than the store, so
        # read before it, and never evicted (the cache may drop them; they are kept here).
        self._unsaved: dict[str, tuple[LiveExperiment, int]] = {}

    def invalidate(self) -> None:
        """Forget every state held in memory: after a rebalance the table is the truth again.

        The worker saves the unsaved states when faust commits, which it does before partitions
        are revoked; any still unsaved here were not, and neither were the offsets of what
        changed them, so dropping them is what a crash would do: the messages come again."""
        self._cache.clear()
        self._held = None
        if self._unsaved:
            log.warning("dropping %d unsaved experiment state(s) on a rebalance: their messages will be "
                        "processed again from the committed offsets", len(self._unsaved))
            self._unsaved.clear()

    def take_states(self, partitions: Container[int] | None = None) -> dict[str, tuple[bytes, int]]:
        """The states changed since the last call, serialised: experiment -> (bytes, partition).

        Only those on ``partitions`` (all when None) are returned; the others belong to
        partitions this worker no longer owns, whose new owner starts from the saved state and
        the committed offsets, so they are dropped. The caller must write what it gets; should
        serialising raise, nothing is taken (and the worker's commit fails with it)."""
        held = [(experiment, live, partition) for experiment, (live, partition) in self._unsaved.items()
                if partitions is None or partition in partitions]
        states = {experiment: (live.to_bytes(), partition) for experiment, live, partition in held}
        for experiment in self._unsaved.keys() - states.keys():
            self._cache.pop(experiment, None)
        self._unsaved = {}
        return states

    def save_to(self, store: MutableMapping[str, bytes]) -> int:
        """:meth:`take_states` into a plain mapping (tests, benchmarks); returns how many."""
        states = self.take_states()
        store.update((experiment, blob) for experiment, (blob, _) in states.items())
        return len(states)

    def holds(self, experiment: str, store: Mapping[str, bytes]) -> bool:
        """Whether the experiment has a state here, without decoding it (the status views)."""
        return experiment in self._cache or experiment in self._unsaved or experiment in store

    def unsaved_experiments(self) -> list[str]:
        return list(self._unsaved)

    def process(self, messages: list[InMessage], store: Mapping[str, bytes]) -> Outputs:
        out = Outputs()
        live: dict[str, LiveExperiment] = {}
        now = self.clock()
        wall = time.time()  # rows dated past it by more than the future skew are refused (state.live)

        cache = self._cache

        created: set[str] = set()

        def load(experiment: str) -> LiveExperiment:
            current = live.get(experiment)
            if current is None:
                current = self.current(experiment, store)
                if current is None:
                    self._admit(experiment, store, created)
                    current = LiveExperiment.new(experiment)
                live[experiment] = current
            return current

        def is_binary(experiment: str, metric: str) -> bool:
            config = load(experiment).state.metric_configs.get(metric)
            return bool(config and config.is_binary)

        touched: set[str] = set()
        for msg in messages:
            kind = self.topic_kinds.get(msg.topic, "observations")
            source = f"{msg.topic}:{msg.partition}"
            experiment = None
            try:
                if msg.value is not None and len(msg.value) > self.max_message_bytes:
                    raise InvalidInput(f"message of {len(msg.value)} bytes exceeds the {self.max_message_bytes}-byte limit")
                experiment = experiment_key(msg.key)
                expected = partition_for(msg.key, self.partitions)
                if expected != msg.partition:
                    experiment = None  # its state lives on another partition: never touch it from here
                    raise InvalidInput(f"key {msg.key!r} belongs on partition {expected}, not {msg.partition}: "
                                       "produce with the default (murmur2) partitioner, keyed by experiment_id")
                if kind == "ticks" and experiment not in live and not self.holds(experiment, store):
                    self.metrics.ticks_ignored += 1  # ticks only punctuate experiments held here
                    experiment = None
                    continue
                state = load(experiment)
                if state.already_processed(source, msg.offset):
                    self.metrics.redelivered += 1
                    continue
                if kind == "observations":
                    _, elements = decode_observations(msg.key, msg.value, is_binary)
                    self._offer_all(state, elements, msg, now, wall, out)
                elif kind == "experiments":
                    _, version, config, metric_configs = decode_config(msg.key, msg.value)
                    if version > state.config_version:  # intervals due before it are scored under the old one
                        state.advance(self.lateness)
                        self._emit(state.score_closed(), out, live)
                    state.configure(version, config, metric_configs)
                else:  # ticks: close an idle open interval
                    state.close_idle(now, self.idle_timeout, self.lateness)
                touched.add(experiment)
            except InvalidInput as exc:
                self.metrics.deadletters += 1
                out.deadletters.append((msg.key, deadletter_message(str(exc), msg.topic, msg.partition, msg.offset,
                                                                    msg.key, msg.value)))
            except Exception as exc:  # a bug, not bad input: keep the worker alive, keep the message
                log.exception("internal error on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
                self.metrics.deadletters += 1
                out.deadletters.append((msg.key, deadletter_message(
                    f"internal error: {exc!r}", msg.topic, msg.partition, msg.offset, msg.key, msg.value,
                    error="internal_error")))
            # Record the offset so a redelivery is skipped; a bad message alone never creates an
            # experiment (a fuzzer's random keys would otherwise fill the table).
            if experiment is not None and experiment in live and (
                    experiment in touched or experiment in self._unsaved or experiment in store):
                live[experiment].mark_processed(source, msg.offset)
                touched.add(experiment)
                out.partitions[experiment] = msg.partition
            elif experiment in created:
                created.discard(experiment)  # a bad message takes no place under max_experiments
        for experiment in touched:  # judged once the whole batch is in, never row by row
            live[experiment].advance(self.lateness)
        self._score(live, touched, out)
        unsaved = self._unsaved
        for experiment in touched:
            unsaved[experiment] = (live[experiment], out.partitions[experiment])
            cache[experiment] = live[experiment]
            cache.move_to_end(experiment)
        out.changed = touched
        if self._held is not None:
            self._held += len(created)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        return out

    def _score(self, live: dict[str, LiveExperiment], touched: set[str], out: Outputs) -> None:
        """Score the batch's closed intervals, all experiments together (state.live.score_all).

        Scoring validated rows cannot fail on input; should a bug make it raise, each experiment
        is retried alone, and one that still fails has its unscored rows dead-lettered and falls
        back to its saved state (its object is neither cached nor saved), so the others are
        unaffected. What it took since the last save is then lost from its state: its results
        went out, and the error log says which experiment to replay."""
        try:
            self._emit(score_all(live.values()), out, live)
            return
        except Exception:
            log.exception("internal error scoring a batch; scoring experiment by experiment")
        for experiment, state in live.items():
            closing = list(state.unscored)
            if not closing:
                continue
            try:
                self._emit(state.score_closed(), out, live)
            except Exception as exc:
                log.exception("internal error scoring %s", experiment)
                rows = [[_row(experiment, o) for o in observations] for _, observations in closing]
                state.unscored = []
                touched.discard(experiment)
                self._cache.pop(experiment, None)
                if self._unsaved.pop(experiment, None) is not None:
                    log.error("experiment %s falls back to its saved state: what it took since the last save "
                              "is lost from its state (its results were sent); replay its input to restore it",
                              experiment)
                self.metrics.deadletters += 1
                out.deadletters.append((experiment.encode(), deadletter_message(
                    f"internal error scoring {len(rows)} interval(s): {exc!r}", "", out.partitions.get(experiment, -1),
                    -1, experiment.encode(), orjson.dumps(rows), error="internal_error")))

    def _offer_all(self, state: LiveExperiment, elements, msg: InMessage, now: float, wall: float,
                   out: Outputs) -> None:
        """Take a message's observations; a single one's error fails the message (dead-lettered
        whole by the caller). The bad elements of an array message are dead-lettered together:
        one dead letter for the message, however many (see :meth:`_deadletter_elements`)."""
        bad = []
        for index, obs in elements:
            try:
                if isinstance(obs, InvalidInput):
                    raise obs
                self.metrics.observations_in += 1
                if state.arm_count() >= self.max_arms and not state.knows_arm(obs.metric, obs.variation_id):
                    raise InvalidInput(f"experiment {state.experiment_id!r} already has {state.arm_count()} "
                                       f"(metric, variation) arms, the limit (SEQSTREAM_MAX_ARMS={self.max_arms}): "
                                       f"({obs.metric!r}, {obs.variation_id!r}) not added")
                state.take(obs, now, self.lateness, wall)
            except Duplicate:
                self.metrics.duplicates += 1
            except InvalidInput as exc:
                if index is None:
                    raise
                if not hasattr(exc, "element"):  # refused by the state (conflict, too late): the row itself
                    exc.element = _row(state.experiment_id, obs)
                bad.append((index, exc))
        if bad:
            self._deadletter_elements(bad, len(elements), msg, out)

    FIRST_REASONS = 10  # reasons a dead letter of many bad elements lists

    def _deadletter_elements(self, bad: list, total: int, msg: InMessage, out: Outputs) -> None:
        """One bad element: its own JSON and reason. Several: one dead letter of the message, with
        how many were bad and the first reasons (30,000 bad elements are one dead letter, not
        30,000, and the message is never parsed again)."""
        self.metrics.deadletters += 1
        if len(bad) == 1:
            index, exc = bad[0]
            element = element_bytes(exc.element)
            reason = f"element {index}: {exc}" if element is not None else \
                f"element {index}: nested deeper than {MAX_DEPTH} levels ({exc})"
            out.deadletters.append((msg.key, deadletter_message(
                reason, msg.topic, msg.partition, msg.offset, msg.key,
                element if element is not None else msg.value, element=index)))
            return
        first = bad[:self.FIRST_REASONS]
        reason = f"{len(bad)} of {total} elements invalid (the others were applied); first: " + "; ".join(
            f"element {index}: {exc}" for index, exc in first)
        out.deadletters.append((msg.key, deadletter_message(
            reason, msg.topic, msg.partition, msg.offset, msg.key, msg.value,
            invalid_elements=len(bad), first_invalid=[index for index, _ in first])))

    def _admit(self, experiment: str, store: Mapping[str, bytes], created: set[str]) -> None:
        """Admit a new experiment into ``created``; InvalidInput when the worker already holds
        ``max_experiments`` (those saved on its partitions, and new ones not saved yet)."""
        if self._held is None:
            self._held = len(store) + sum(1 for e in self._unsaved if e not in store)
        if self._held + len(created) >= self.max_experiments:
            self.metrics.experiments_refused += 1
            raise InvalidInput(f"experiment {experiment!r} is refused: this worker holds {self._held + len(created)} "
                               f"experiments, the limit (SEQSTREAM_MAX_EXPERIMENTS={self.max_experiments}); raise "
                               "it, or add partitions and workers")
        created.add(experiment)

    def current(self, experiment: str, store: Mapping[str, bytes]) -> LiveExperiment | None:
        """The experiment's latest state: the cached or unsaved object, else read from the table,
        else None. The object is the processor's own: callers outside it read, never change it."""
        current = self._cache.get(experiment)
        if current is None:
            unsaved = self._unsaved.get(experiment)
            if unsaved is not None:
                return unsaved[0]
            blob = store.get(experiment)
            current = LiveExperiment.from_bytes(blob) if blob else None
        return current

    def idle_status(self, store: Mapping[str, bytes], experiments) -> tuple[list[str], dict[str, float]]:
        """Of the experiments given: those whose open interval has been idle past the timeout, and
        the last activity of those with an open interval that is not idle yet."""
        now = self.clock()
        due, waiting = [], {}
        for experiment in experiments:
            state = self.current(experiment, store)
            if state is None or state.open_interval is None:
                continue
            if state.is_idle(now, self.idle_timeout):
                due.append(experiment)
            else:
                waiting[experiment] = state.last_activity
        return due, waiting

    def _emit(self, closed: list[IntervalResult], out: Outputs, live: Mapping[str, LiveExperiment]) -> None:
        for result in closed:
            key = result.experiment_id.encode()
            folded = live[result.experiment_id].folded.pop(result.interval_timestamp, None)
            if folded:  # late rows counted here, not in their own interval: say so on the rows
                self.metrics.late_rows_folded += sum(folded.values())
                rows = [encode_row(dict(row, late_rows_folded=folded[row["metric"]]) if row["metric"] in folded
                                   else row) for row in result.rows]
            else:
                rows = encode_rows(result)
            out.closed.append(EmittedInterval(result, rows))
            out.results.extend((key, row) for row in rows)
            out.alerts.extend((key, encode_alert(alert)) for alert in result.alerts)
            self.metrics.rows_out += len(rows)
            self.metrics.alerts_out += len(result.alerts)
            self.metrics.intervals_closed += 1


def _row(experiment: str, obs) -> dict:
    """An observation in the input format, to dead-letter it."""
    return {"experiment_id": experiment, "metric": obs.metric, "variation_id": obs.variation_id,
            "interval_timestamp": obs.interval_timestamp, "unit_count": obs.unit_count,
            "unit_observation_sum": obs.unit_observation_sum,
            "unit_observation_sum_of_squares": obs.unit_observation_sum_of_squares}
