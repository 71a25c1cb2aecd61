"""Turning a stream of rows into closed intervals, exactly once (pure: no Kafka here).

:class:`LiveExperiment` wraps an :class:`~state.experiment.ExperimentState` with what a stream
needs on top of the statistics:

- the open interval's rows, buffered until the interval closes: when every expected arm has
  reported, when a later interval of the experiment arrives, or after an idle timeout;
- deduplication: a row identical to one already buffered or applied (recent closed intervals) is a
  duplicate and is ignored; the same key with other numbers is a conflict;
- late rows (for an interval already closed) are rejected with a reason, never folded in: folding
  would make results depend on arrival timing, and the stream must equal the batch call;
- per-source offset high-water marks, so a message redelivered after a crash (its effect already
  in the restored state) is recognised by offset and skipped;
- closed intervals wait in ``unscored`` until scored: ``offer`` scores at once, while the stream
  ``take``s a whole batch of rows and then scores every experiment's closes together
  (:func:`score_all`), which is several times cheaper than one experiment at a time.

State stays bounded for in-order data: one open interval, digests of the last few closed
intervals, one offset per input partition.
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

# Closed intervals whose row digests are kept to recognise producer duplicates.
RECENT_INTERVALS = 4
FORMAT_VERSION = 2  # 2: recent rows as 64-bit digests keyed by arm index
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
    """A row that conflicts with applied data or arrives for a closed interval."""


class LiveExperiment:
    def __init__(self, state: ExperimentState, config_version: int = -1):
        self.state = state
        self.config_version = config_version
        self.open_interval: float | None = None
        self.pending: dict[tuple[str, str], Observation] = {}
        self.recent: dict[float, ClosedDigests] = {}  # the last RECENT_INTERVALS closed
        self.offsets: dict[str, int] = {}
        self.last_activity = 0.0
        self.unscored: list[tuple[float, list[Observation]]] = []  # closed, in order, not yet scored
        self._expected: set[tuple[str, str]] | None = None
        self._recent_packed: dict[float, list] = {}  # ts -> its entry in to_bytes' "recent"
        # One (metric, variation) key object per arm, shared by the open interval and the recent
        # digests: each message decodes its own copies of the names, and the recent intervals'
        # digests held those copies (a quarter of a cached experiment's memory).
        self._keys: dict[tuple[str, str], tuple[str, str]] = {key: key for key in state._arm_by_name}

    @classmethod
    def new(cls, experiment_id: str) -> "LiveExperiment":
        return cls(ExperimentState(experiment_id))

    @property
    def experiment_id(self) -> str:
        return self.state.experiment_id

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
    def offer(self, obs: Observation, now: float = 0.0) -> list[IntervalResult]:
        """Take one validated row; returns the results of intervals it closed (0, 1 or 2).

        Raises :class:`Duplicate` (ignore) or :class:`Rejected` (dead-letter) without changing state.
        """
        self.take(obs, now)
        return self.score_closed()

    def take(self, obs: Observation, now: float = 0.0) -> None:
        """:meth:`offer` without the scoring: intervals the row closes wait in ``unscored`` for
        :meth:`score_closed` or :func:`score_all` (which scores many experiments at once)."""
        key = (obs.metric, obs.variation_id)
        ts = obs.interval_timestamp
        if self.open_interval is not None and ts == self.open_interval:
            previous = self.pending.get(key)
            if previous is not None:
                if previous.same_numbers(obs):
                    raise Duplicate()
                raise Rejected(f"conflicts with the row already received for {key} at {ts!r}")
            self.pending[self._keys.setdefault(key, key)] = obs
            self.last_activity = now
            if self._complete():
                self._close()
            return
        closed = self.recent.get(ts)
        last = self.last_closed
        if closed is not None or (last is not None and ts <= last) or (
            self.open_interval is not None and ts < self.open_interval
        ):
            applied = None if closed is None else closed.digest_of(key)
            if applied is not None:
                if applied == _digest(obs):
                    raise Duplicate()
                raise Rejected(f"conflicts with the row applied for {key} at {ts!r}")
            raise Rejected(f"late: interval {ts!r} is already closed (results for it were emitted)",
                           field="interval_timestamp")
        if self.open_interval is not None:
            self._close()
        self.open_interval = ts
        self.pending = {self._keys.setdefault(key, key): obs}
        self.last_activity = now
        if self._complete():
            self._close()

    def _complete(self) -> bool:
        expected = self.expected_arms()
        return bool(expected) and len(self.pending) >= len(expected) and expected.issubset(self.pending)

    def _close(self) -> None:
        """Close the open interval: its rows wait for scoring; its digests tell later copies of
        them (duplicates) from conflicting rows."""
        ts, pending = self.open_interval, self.pending
        observations = list(pending.values())
        self.unscored.append((ts, observations))
        if self._expected is not None:
            self._expect(self._expected, observations)
        self.recent[ts] = ClosedDigests(tuple(pending), b"".join(map(_digest, pending.values())))
        while len(self.recent) > RECENT_INTERVALS:
            del self.recent[min(self.recent)]
        self.open_interval = None
        self.pending = {}

    def close(self) -> IntervalResult:
        """Close the open interval and score it (with any closed before it)."""
        self._close()
        return self.score_closed()[-1]

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
        """An interval is open and has had no row for ``idle_timeout`` seconds."""
        return self.open_interval is not None and now - self.last_activity >= idle_timeout

    def close_if_idle(self, now: float, idle_timeout: float) -> IntervalResult | None:
        return self.close() if self.is_idle(now, idle_timeout) else None

    def close_idle(self, now: float, idle_timeout: float) -> bool:
        """:meth:`close_if_idle` without the scoring; True when it closed the open interval."""
        idle = self.is_idle(now, idle_timeout)
        if idle:
            self._close()
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
            "open_rows": len(self.pending),
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
            "open_interval": self.open_interval,
            "pending": [[o.metric, o.variation_id, o.unit_count, o.unit_observation_sum, o.unit_observation_sum_of_squares]
                        for o in self.pending.values()],
            "recent": self._packed_recent(),
            "offsets": self.offsets,
            "last_activity": self.last_activity,
        }))

    def _packed_recent(self) -> list[list]:
        """Per recent closed interval: [ts, arm indices, base64 of the little-endian uint64
        digests] (its arms are all registered in the state, so an index names each). A closed
        interval's digests never change, so each is packed once, not on every state write."""
        packed = self._recent_packed
        for ts in [ts for ts in packed if ts not in self.recent]:
            del packed[ts]
        arm_of = self.state._arm_by_name
        for ts, closed in self.recent.items():
            if ts not in packed:
                packed[ts] = [ts, [arm_of[key] for key in closed.keys], base64.b64encode(closed.digests).decode("ascii")]
        return list(packed.values())

    @classmethod
    def from_bytes(cls, data: bytes) -> "LiveExperiment":
        doc: dict[str, Any] = orjson.loads(data)
        if doc.get("v") != FORMAT_VERSION:
            raise InvalidInput(f"live state format version {doc.get('v')!r} is not {FORMAT_VERSION}")
        live = cls(state_from_dict(doc["state"]), doc["config_version"])
        live.open_interval = doc["open_interval"]
        live.pending = {live._keys.setdefault((m, v), (m, v)): Observation(m, v, live.open_interval, n, s, q)
                        for m, v, n, s, q in doc["pending"]}
        names = {arm: key for key, arm in live.state._arm_by_name.items()}
        for ts, arms, digests in doc["recent"]:
            live.recent[ts] = ClosedDigests(tuple(names[arm] for arm in arms), base64.b64decode(digests))
        live.offsets = doc["offsets"]
        live.last_activity = doc["last_activity"]
        return live


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
