"""Turning a stream of rows into closed intervals, exactly once (pure: no Kafka here).

:class:`LiveExperiment` wraps an :class:`~state.experiment.ExperimentState` with what a stream
needs on top of the statistics. Event time is the rows' ``interval_timestamp``; time is counted in
the experiment's own intervals. The design is Flink's bounded out-of-orderness watermark with
allowed lateness (Kafka Streams: a window's grace period), docs/lateness.md:

- **Open intervals.** Rows are buffered per interval; several intervals may be open at once.
- **Watermark.** The latest interval timestamp taken. A row dated more than ``future_skew``
  seconds after the wall clock is rejected and never moves it.
- **Emission** (:meth:`advance`, run after a whole message or batch, never row by row inside
  one), oldest interval first, since the statistics are applied in order: an interval is emitted
  when it is *complete* (every expected arm reported, and it follows the last emitted interval by
  no more than the experiment's interval spacing, so no earlier interval can still be missing),
  when the watermark has passed it by more than ``delay`` intervals (more than ``delay`` later
  intervals are open), or after the idle timeout (:meth:`close_idle`).
- **Allowed lateness.** A row for an interval already emitted, within the last ``lateness``
  emitted intervals, is applied: folded into the next emitted interval (added to that arm's
  sums there; :attr:`folded` tells which rows carry it). Only a row older than every remembered
  interval is rejected, as too late, with its interval and the watermark in the reason.
- **Duplicates.** A row identical to one buffered, applied or folded in the remembered intervals
  (the whole allowed lateness) is a duplicate and is ignored; the same key with other numbers is
  a conflict.
- **Offsets.** Per-source high-water marks, so a message redelivered after a crash (its effect
  already in the restored state) is recognised by offset and skipped.
- Closed intervals wait in ``unscored`` until scored (:func:`score_all` scores many experiments
  at once).

State stays bounded: at most ``delay + 1`` open intervals after each :meth:`advance`, one folded
row per arm, digests of ``lateness`` emitted intervals, one offset per input partition.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any, Iterable, Mapping, NamedTuple

import orjson

from .config import EngineConfig, MetricConfig
from .errors import InvalidInput
from .experiment import ExperimentState, update_many
from .observation import Observation
from .results import IntervalResult
from .serialize import exact_size, state_from_dict, state_to_dict

FORMAT_VERSION = 3  # 3: several open intervals, folded late rows, the lateness floor; 2 is still read
_NUMBERS = struct.Struct("<3d")


def _digest(obs: Observation) -> bytes:
    """64-bit digest of a row's numbers: enough to tell a duplicate (equal) from a conflict
    (different), at a quarter of the bytes the numbers and their keys took in every state write."""
    numbers = _NUMBERS.pack(obs.unit_count, obs.unit_observation_sum, obs.unit_observation_sum_of_squares)
    return hashlib.blake2b(numbers, digest_size=8).digest()


class ClosedDigests(NamedTuple):
    """A closed interval's rows: their (metric, variation) keys and, in the same order, their
    8-byte digests end to end (as the state bytes carry them; a dict of Python ints took 3.7x the
    memory, and a cached experiment keeps four intervals)."""

    keys: tuple[tuple[str, str], ...]
    digests: bytes

    def digest_of(self, key: tuple[str, str]) -> bytes | None:
        try:
            i = self.keys.index(key)
        except ValueError:
            return None
        return self.digests[8 * i:8 * i + 8]


class Duplicate(Exception):
    """The row was already counted (same key and numbers): ignore it."""


class Rejected(InvalidInput):
    """A row that conflicts with applied data, arrives past the allowed lateness, or is dated in
    the future."""


class Lateness(NamedTuple):
    """When intervals are emitted and how late a row may be (docs/lateness.md), in intervals of
    the experiment's own sequence. Defaults: an interval that is not complete waits until more than
    2 later intervals are open (absorbs rows displaced by up to two intervals, and a producer
    lagging 1.5); a row is applied if its interval is one of the last 12 emitted (folded into the
    next emission), rejected as too late beyond; a row dated more than a day after the wall clock
    is rejected (a clock or unit error) and never moves the watermark."""

    delay: int = 2
    lateness: int = 12
    future_skew: float = 86_400.0


DEFAULT_LATENESS = Lateness()


class LiveExperiment:
    def __init__(self, state: ExperimentState, config_version: int = -1):
        self.state = state
        self.config_version = config_version
        self.open: dict[float, dict[tuple[str, str], Observation]] = {}  # interval -> its rows so far
        self.late: dict[tuple[str, str], Observation] = {}  # rows past their emission, summed per arm
        self.late_rows = 0  # how many rows ``late`` sums
        self.recent: dict[float, ClosedDigests] = {}  # the last ``lateness`` emitted intervals
        self.floor: float | None = None  # rows before this interval are too late (None: none are)
        self.spacing: float | None = None  # the smallest gap between two interval timestamps seen
        self.offsets: dict[str, int] = {}
        self.last_activity = 0.0
        self.unscored: list[tuple[float, list[Observation]]] = []  # closed, in order, not yet scored
        # interval -> (metric -> late rows folded into it), for the emitted rows' flags; consumed
        # by whoever emits the results (stream_app.processor)
        self.folded: dict[float, dict[str, int]] = {}
        self._expected: set[tuple[str, str]] | None = None
        self._recent_packed: dict[float, list] = {}  # ts -> its entry in to_bytes' "recent"
        # One (metric, variation) key object per arm, shared by the open intervals and the recent
        # digests: each message decodes its own copies of the names, and the recent intervals'
        # digests held those copies (a quarter of a cached experiment's memory).
        self._keys: dict[tuple[str, str], tuple[str, str]] = {key: key for key in state._arm_by_name}

    @classmethod
    def new(cls, experiment_id: str) -> "LiveExperiment":
        return cls(ExperimentState(experiment_id))

    @property
    def experiment_id(self) -> str:
        return self.state.experiment_id

    @property
    def open_interval(self) -> float | None:
        """The oldest open interval (the next to be emitted), None when none is open."""
        return min(self.open) if self.open else None

    def arm_count(self) -> int:
        """(metric, variation) arms the experiment has: registered, open, or folded."""
        return len(self._keys)

    def knows_arm(self, metric: str, variation: str) -> bool:
        return (metric, variation) in self._keys

    @property
    def watermark(self) -> float | None:
        """The latest interval taken: open, or emitted."""
        if self.open:
            return max(self.open)
        return self.last_closed

    # ------------------------------------------------------------------------------- offsets
    def already_processed(self, source: str, offset: int) -> bool:
        """True when this message's effect is already in the state (redelivery after a crash)."""
        return offset <= self.offsets.get(source, -1)

    def mark_processed(self, source: str, offset: int) -> None:
        if offset > self.offsets.get(source, -1):
            self.offsets[source] = offset

    # -------------------------------------------------------------------------------- config
    def configure(self, version: int, config: EngineConfig, metric_configs: Mapping[str, MetricConfig]) -> bool:
        """Apply a config version; older or equal versions are ignored (returns False)."""
        if version <= self.config_version:
            return False
        if self.unscored:
            raise RuntimeError("score the closed intervals before a new config applies (score_closed)")
        if self.state.variations and config.reference_variation_id != self.state.config.reference_variation_id:
            raise Rejected(
                f"the reference variation cannot change once data exists "
                f"({self.state.config.reference_variation_id!r} -> {config.reference_variation_id!r})",
                field="reference_variation_id",
            )
        self.state.reconfigure(config, metric_configs)
        self.config_version = version
        self._expected = None
        return True

    def expected_arms(self) -> set[tuple[str, str]]:
        """Arms an interval must have to be complete: those seen before (scored or closed since),
        plus those a config declares (its metrics x the variations it weights). Cached, as this
        runs for every row; configuring drops the cache, closing an interval adds its arms, and
        scoring one changes nothing (it registers exactly the arms its closing added)."""
        if self._expected is None:
            state = self.state
            expected = set(state._arm_by_name)
            for _, observations in self.unscored:
                self._expect(expected, observations)
            weights = state.config.weights
            if weights and state.metric_configs:
                expected |= {(m, v) for m in state.metric_configs for v in weights}
            self._expected = expected
        return self._expected

    def _expect(self, expected: set[tuple[str, str]], observations) -> None:
        """Add the arms scoring ``observations`` will register, as ExperimentState._register
        does: each observation's arm, and for a treatment its metric's control arm."""
        reference = self.state.config.reference_variation_id
        for o in observations:
            expected.add((o.metric, o.variation_id))
            expected.add((o.metric, reference))

    @property
    def last_closed(self) -> float | None:
        """The latest closed interval, scored or not."""
        return self.unscored[-1][0] if self.unscored else self.state.last_interval

    # ---------------------------------------------------------------------------------- rows
    def offer(self, obs: Observation, now: float = 0.0, policy: Lateness = DEFAULT_LATENESS,
              wall: float | None = None) -> list[IntervalResult]:
        """Take one validated row and emit what is due (a one-row batch); returns the results of
        the intervals it emitted.

        Raises :class:`Duplicate` (ignore) or :class:`Rejected` (dead-letter) without changing state.
        """
        self.take(obs, now, policy, wall)
        self.advance(policy)
        return self.score_closed()

    def take(self, obs: Observation, now: float = 0.0, policy: Lateness = DEFAULT_LATENESS,
             wall: float | None = None) -> None:
        """Buffer one validated row: into its open interval, as a new open interval, or, past its
        interval's emission but within the allowed lateness, folded into the next emission.
        Nothing is emitted here: :meth:`advance` does that once the whole message or batch is in.
        ``now`` is the activity clock (idle timeout); ``wall`` the wall clock in unix seconds
        against which a row dated in the future is refused (None: not checked).

        Raises :class:`Duplicate` (ignore) or :class:`Rejected` (dead-letter) without changing state.
        """
        key = (obs.metric, obs.variation_id)
        ts = obs.interval_timestamp
        rows = self.open.get(ts)
        if rows is not None:
            previous = rows.get(key)
            if previous is not None:
                if previous.same_numbers(obs):
                    raise Duplicate()
                raise Rejected(f"conflicts with the row already received for {key} at {ts!r}")
            rows[self._keys.setdefault(key, key)] = obs
            self.last_activity = now
            return
        last = self.last_closed
        if last is not None and ts <= last:
            self._take_late(key, obs, ts, policy)
            self.last_activity = now
            return
        if wall is not None and ts > wall + policy.future_skew:
            raise Rejected(f"interval {ts!r} is more than {policy.future_skew:g} s after the wall clock ({wall:.0f}): "
                           "not applied, and the watermark stays where it was", field="interval_timestamp")
        self._note_spacing(ts)
        self.open[ts] = {self._keys.setdefault(key, key): obs}
        self.last_activity = now

    def _take_late(self, key: tuple[str, str], obs: Observation, ts: float, policy: Lateness) -> None:
        """A row for an interval at or before the last emitted one."""
        closed = self.recent.get(ts)
        if closed is not None:
            applied = closed.digest_of(key)
            if applied is not None:
                if applied == _digest(obs):
                    raise Duplicate()
                raise Rejected(f"conflicts with the row already received for {key} at {ts!r}")
        elif self.floor is not None and ts < self.floor:
            raise Rejected(f"too late: interval {ts!r} is past the allowed lateness of {policy.lateness} intervals "
                           f"(the watermark is at interval {self.watermark!r}; intervals before {self.floor!r} are "
                           "final)", field="interval_timestamp")
        key = self._keys.setdefault(key, key)
        before = self.late.get(key)
        self.late[key] = obs if before is None else _summed(before, obs, before.interval_timestamp)
        self.late_rows += 1
        self._remember(ts, [(key, obs)], policy)

    def _note_spacing(self, ts: float) -> None:
        gaps = [abs(ts - other) for other in (*self.open, self.last_closed) if other is not None and other != ts]
        if gaps:
            gap = min(gaps)
            if self.spacing is None or gap < self.spacing:
                self.spacing = gap

    def advance(self, policy: Lateness = DEFAULT_LATENESS) -> int:
        """Emit the intervals that are due, oldest first (see the module docstring); they wait in
        ``unscored``. Run once a whole message or batch is taken. Returns how many."""
        emitted = 0
        while self.open:
            ts = min(self.open)
            if not (self._complete(ts) or sum(1 for other in self.open if other > ts) > policy.delay):
                break
            self._close(ts, policy)
            emitted += 1
        return emitted

    def _complete(self, ts: float) -> bool:
        last = self.last_closed
        if last is not None and self.spacing is not None and ts - last > self.spacing:
            return False  # an interval between the last emitted and this one may still come
        expected = self.expected_arms()
        pending = self.open[ts]
        return bool(expected) and len(pending) >= len(expected) and expected.issubset(pending)

    def _close(self, ts: float, policy: Lateness) -> None:
        """Emit open interval ``ts``, with the late rows folded in: its rows wait for scoring; its
        digests tell later copies of them (duplicates) from conflicting rows."""
        pending = self.open.pop(ts)
        self._remember(ts, list(pending.items()), policy)
        if self.late:
            folded: dict[str, int] = {}
            for key, late in self.late.items():
                on_time = pending.get(key)
                pending[key] = _summed(late, on_time, ts)
                folded[key[0]] = folded.get(key[0], 0) + 1
            self.folded[ts] = folded
            self.late = {}
            self.late_rows = 0
        observations = list(pending.values())
        self.unscored.append((ts, observations))
        if self._expected is not None:
            self._expect(self._expected, observations)

    def _remember(self, ts: float, rows: list, policy: Lateness) -> None:
        """Add rows' digests to interval ``ts``'s, keep the last ``policy.lateness`` intervals, and
        move the floor up past the ones forgotten (their duplicates could no longer be told)."""
        keys = tuple(key for key, _ in rows)
        digests = b"".join(_digest(o) for _, o in rows)
        known = self.recent.get(ts)
        if known is not None:
            keys, digests = known.keys + keys, known.digests + digests
            self._recent_packed.pop(ts, None)
        self.recent[ts] = ClosedDigests(keys, digests)
        while len(self.recent) > max(1, policy.lateness):
            oldest = min(self.recent)
            del self.recent[oldest]
            self.floor = min(self.recent)

    def close(self) -> IntervalResult:
        """Emit every open interval and score them (with any closed before): the last result."""
        return self.close_all()[-1]

    def close_all(self, policy: Lateness = DEFAULT_LATENESS) -> list[IntervalResult]:
        """Emit every open interval, oldest first, and score everything closed."""
        while self.open:
            self._close(min(self.open), policy)
        return self.score_closed()

    def score_closed(self) -> list[IntervalResult]:
        """Score the closed intervals, in order (each leaves ``unscored`` once scored)."""
        results = []
        while self.unscored:
            results.append(self.state.update(*self.unscored[0]))
            self._scored_first()
        return results

    def _scored_first(self) -> None:
        """The first closed interval was scored: it leaves the queue. Scoring registered its arms
        and their controls, which its closing had added to the expected arms: they stand."""
        del self.unscored[0]

    def is_idle(self, now: float, idle_timeout: float) -> bool:
        """An interval is open and the experiment has had no row for ``idle_timeout`` seconds."""
        return bool(self.open) and now - self.last_activity >= idle_timeout

    def close_if_idle(self, now: float, idle_timeout: float) -> IntervalResult | None:
        return self.close() if self.is_idle(now, idle_timeout) else None

    def close_idle(self, now: float, idle_timeout: float, policy: Lateness = DEFAULT_LATENESS) -> bool:
        """Emit every open interval when idle, without the scoring; True when it did."""
        idle = self.is_idle(now, idle_timeout)
        if idle:
            while self.open:
                self._close(min(self.open), policy)
        return idle

    def summary(self) -> dict[str, Any]:
        """What a status view shows: progress, arms, SRM counts, the open interval."""
        state = self.state
        return {
            "experiment_id": state.experiment_id,
            "config_version": self.config_version,
            "intervals_closed": state.intervals,
            "last_interval": state.last_interval,
            "open_interval": self.open_interval,
            "open_intervals": sorted(self.open),
            "open_rows": sum(map(len, self.open.values())),
            "late_rows_pending": self.late_rows,
            "watermark": self.watermark,
            "metrics": list(state.metrics),
            "variations": list(state.variations),
            "reference_variation_id": state.config.reference_variation_id,
            "epoch": state.epoch,
            "exposures": dict(zip(state.variations, state.srm_counts)),
            "srm_detected": state.srm_alerted,
        }

    # ------------------------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        if self.unscored:
            raise RuntimeError("score the closed intervals before saving (score_closed or score_all)")
        return exact_size(orjson.dumps({
            "v": FORMAT_VERSION,
            "state": state_to_dict(self.state),
            "config_version": self.config_version,
            "open": [[ts, [_packed_row(o) for o in rows.values()]] for ts, rows in self.open.items()],
            "late": [[o.interval_timestamp, *_packed_row(o)] for o in self.late.values()],
            "late_rows": self.late_rows,
            "floor": self.floor,
            "spacing": self.spacing,
            "recent": self._packed_recent(),
            "offsets": self.offsets,
            "last_activity": self.last_activity,
        }))

    def _packed_recent(self) -> list[list]:
        """Per recent closed interval: [ts, arms, base64 of the little-endian uint64 digests]; an
        arm registered in the state is its index there, one not yet (a late row's new arm, until
        the emission it is folded into is scored) its [metric, variation]. A closed interval's
        digests change only when a late row joins them, so each is packed once, not on every
        state write."""
        packed = self._recent_packed
        for ts in [ts for ts in packed if ts not in self.recent]:
            del packed[ts]
        arm_of = self.state._arm_by_name
        out = []
        for ts, closed in self.recent.items():
            entry = packed.get(ts)
            if entry is None:
                arms = [arm_of.get(key, list(key)) for key in closed.keys]
                entry = [ts, arms, base64.b64encode(closed.digests).decode("ascii")]
                if all(isinstance(arm, int) for arm in arms):  # names may become indices once scored
                    packed[ts] = entry
            out.append(entry)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> "LiveExperiment":
        doc: dict[str, Any] = orjson.loads(data)
        version = doc.get("v")
        if version not in (2, FORMAT_VERSION):
            raise InvalidInput(f"live state format version {version!r} is not {FORMAT_VERSION}")
        live = cls(state_from_dict(doc["state"]), doc["config_version"])
        key = live._keys.setdefault
        if version == 2:  # one open interval; four recent intervals remembered
            opened = [[doc["open_interval"], doc["pending"]]] if doc["open_interval"] is not None else []
            doc.update(open=opened, late=[], late_rows=0, spacing=None,
                       floor=min(r[0] for r in doc["recent"]) if len(doc["recent"]) >= 4 else None)
        for ts, rows in doc["open"]:
            live.open[ts] = {key((m, v), (m, v)): Observation(m, v, ts, n, s, q) for m, v, n, s, q in rows}
        live.late = {key((m, v), (m, v)): Observation(m, v, ts, n, s, q) for ts, m, v, n, s, q in doc["late"]}
        live.late_rows = doc["late_rows"]
        live.floor = doc["floor"]
        live.spacing = doc["spacing"]
        names = {arm: key for key, arm in live.state._arm_by_name.items()}
        for ts, arms, digests in doc["recent"]:
            keys = tuple(names[arm] if isinstance(arm, int) else key(tuple(arm), tuple(arm)) for arm in arms)
            live.recent[ts] = ClosedDigests(keys, base64.b64decode(digests))
        live.offsets = doc["offsets"]
        live.last_activity = doc["last_activity"]
        return live


def _packed_row(o: Observation) -> list:
    return [o.metric, o.variation_id, o.unit_count, o.unit_observation_sum, o.unit_observation_sum_of_squares]


def _summed(a: Observation, b: Observation | None, ts: float) -> Observation:
    """One arm's rows added up (sufficient statistics add), dated ``ts``."""
    if b is None:
        return Observation(a.metric, a.variation_id, ts, a.unit_count, a.unit_observation_sum,
                           a.unit_observation_sum_of_squares)
    return Observation(a.metric, a.variation_id, ts, a.unit_count + b.unit_count,
                       a.unit_observation_sum + b.unit_observation_sum,
                       a.unit_observation_sum_of_squares + b.unit_observation_sum_of_squares)


def score_all(experiments: Iterable[LiveExperiment]) -> list[IntervalResult]:
    """Score every experiment's closed intervals: round r scores each experiment's r-th, all in one
    :func:`~state.experiment.update_many`, so each experiment's results stay in interval order.

    A round leaves the queues only once scored: if scoring raises (a bug, never bad input), what
    is still in ``unscored`` tells the caller what was not applied.
    """
    queued = [live for live in experiments if live.unscored]
    results: list[IntervalResult] = []
    while queued:
        results += update_many([(live.state, *live.unscored[0]) for live in queued])
        for live in queued:
            live._scored_first()
        queued = [live for live in queued if live.unscored]
    return results
