"""What the web views show of the results, alerts and dead letters of the experiments this worker
owns: every experiment's latest interval and a bounded history of earlier ones, kept as the JSON
rows sent to the results topic (:class:`RecentResults`), its recent alerts (:class:`RecentAlerts`)
and a tally of its dead-lettered input (:class:`DeadLetters`).

They are filled twice: live, as the worker's own outputs are acked (stream_app/app.py), and from
the results, alerts and dead-letter topics when the worker takes a partition over, after a restart
or a rebalance (stream_app/kafka/view_rebuild.py). The two may meet out of order and overlap: an
interval arriving again replaces the one held, an older one is inserted in timestamp order, and
an alert already held is not added twice.

Rows are kept as the bytes already encoded for Kafka, not as dicts: no work per close, and no
row dicts kept alive. Memory is bounded twice: at most ``max_intervals`` intervals of one
experiment (the size of a history response), and at most ``max_bytes`` of rows in all; past
either bound the oldest intervals go first. An experiment's latest interval (what ``/results``
shows) is its newest, so it goes last: only once everything that arrived before it has gone, as
happens to an experiment that stopped long ago, never to the interval just added.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import orjson


class RecentInterval(NamedTuple):
    serial: int  # arrival number: identifies the entry in the arrival order
    interval_timestamp: float
    rows: tuple[bytes, ...]
    size: int


class RecentResults:
    def __init__(self, max_bytes: int, max_intervals: int):
        self.max_bytes = max_bytes
        self.max_intervals = max_intervals
        self.bytes = 0  # rows held
        self.intervals = 0  # intervals held
        self._serial = 0
        self._history: dict[str, deque[RecentInterval]] = {}
        # (experiment, serial) in arrival order, for the byte bound. It may still name entries the
        # per-experiment bound already dropped; it is compacted when those outnumber the rest.
        self._arrivals: deque[tuple[str, int]] = deque()
        self._serials: set[int] = set()  # of the entries held

    def __len__(self) -> int:
        """Experiments with results here."""
        return len(self._history)

    def add(self, experiment: str, interval_timestamp: float, rows: Sequence[bytes]) -> None:
        rows = tuple(rows)
        self._serial += 1
        entry = RecentInterval(self._serial, interval_timestamp, rows, sum(map(len, rows)))
        history = self._history.setdefault(experiment, deque())
        if not history or history[-1].interval_timestamp < interval_timestamp:
            history.append(entry)  # the common case: the next interval
        else:  # from a rebuild, or emitted again after a crash: in timestamp order, replacing its twin
            stamps = [held.interval_timestamp for held in history]
            at = bisect.bisect_left(stamps, interval_timestamp)
            if at < len(history) and stamps[at] == interval_timestamp:
                self._discard(experiment, at)
                history = self._history.setdefault(experiment, deque())
            history.insert(at, entry)
        self._serials.add(entry.serial)
        self._arrivals.append((experiment, entry.serial))
        self.bytes += entry.size
        self.intervals += 1
        if len(history) > self.max_intervals:
            self._discard(experiment, 0)
        while self.bytes > self.max_bytes and self._arrivals[0][1] != entry.serial:
            oldest, serial = self._arrivals.popleft()
            if serial in self._serials:
                # The experiment's oldest interval by time goes, which is the one that arrived
                # first unless a rebuild inserted older ones later: its latest still goes last.
                dropped = self._history[oldest][0].serial
                self._discard(oldest, 0)
                if dropped != serial:
                    self._arrivals.appendleft((oldest, serial))  # still held: still the oldest arrival
        if len(self._arrivals) > 2 * self.intervals + 1024:
            self._arrivals = deque(pair for pair in self._arrivals if pair[1] in self._serials)

    def forget(self, experiment: str) -> None:
        """Drop an experiment's intervals (its partition moved to another worker)."""
        while experiment in self._history:
            self._discard(experiment, 0)

    def experiments(self) -> list[str]:
        return list(self._history)

    def latest(self, experiment: str) -> tuple[bytes, ...]:
        history = self._history.get(experiment)
        return history[-1].rows if history else ()

    def history(self, experiment: str, since: float | None = None) -> Iterator[RecentInterval]:
        """Held intervals of ``experiment``, oldest first; only those after ``since`` if given."""
        for entry in list(self._history.get(experiment, ())):
            if since is None or entry.interval_timestamp > since:
                yield entry

    def _discard(self, experiment: str, index: int) -> None:
        history = self._history[experiment]
        entry = history[index]
        del history[index]
        self._serials.discard(entry.serial)
        self.bytes -= entry.size
        self.intervals -= 1
        if not history:
            del self._history[experiment]


def _alert_key(alert: Mapping[str, Any]) -> tuple:
    return (alert.get("kind"), alert.get("interval_timestamp"), alert.get("metric"), alert.get("variation_id"),
            alert.get("message"))


def _alert_time(alert: Mapping[str, Any]) -> float:
    ts = alert.get("interval_timestamp")
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else 0.0


class RecentAlerts:
    """Each experiment's last ``per_experiment`` alerts by interval time (as dicts, for
    ``/alerts``, oldest first), for at most ``experiments`` experiments: past that, the one that
    alerted least recently is forgotten, so a long-running worker does not keep every experiment
    it ever saw. Alerts arrive live and from a rebuild, so they are kept in time order, the oldest
    dropped first, and one already held (same kind, interval, metric, variation and message) is
    not added again."""

    def __init__(self, experiments: int, per_experiment: int):
        self.experiments = experiments
        self.per_experiment = per_experiment
        self._alerts: OrderedDict[str, list[tuple[float, int, dict]]] = OrderedDict()
        self._keys: dict[str, set[tuple]] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._alerts)

    def add(self, experiment: str, alerts: Iterable[dict]) -> None:
        held = self._alerts.pop(experiment, None)
        keys = self._keys.setdefault(experiment, set())
        if held is None:
            held = []
        for alert in alerts:
            key = _alert_key(alert)
            if key in keys:
                continue
            self._serial += 1
            bisect.insort(held, (_alert_time(alert), self._serial, alert), key=lambda item: item[:2])
            keys.add(key)
            if len(held) > self.per_experiment:
                keys.discard(_alert_key(held.pop(0)[2]))
        self._alerts[experiment] = held  # now the most recent
        while len(self._alerts) > self.experiments:
            gone, _ = self._alerts.popitem(last=False)
            self._keys.pop(gone, None)

    def get(self, experiment: str) -> list[dict]:
        return [alert for _, _, alert in self._alerts.get(experiment, ())]

    def forget(self, experiment: str) -> None:
        self._alerts.pop(experiment, None)
        self._keys.pop(experiment, None)

    def experiments_held(self) -> list[str]:
        return list(self._alerts)


def deadletter_experiment(key: Any) -> str | None:
    """The experiment a dead letter belongs to: its message key (the source message's key, an
    experiment id when the producer keyed it right), as bytes or as the text it carries."""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return key if isinstance(key, str) and key else None


def is_late(doc: Mapping[str, Any]) -> bool:
    """A dead letter for data that came too late (stream lateness), not for bad data."""
    error, reason = str(doc.get("error", "")), str(doc.get("reason", ""))
    return "late" in error.lower() or "too late" in reason.lower()


class DeadLetterTally(NamedTuple):
    count: int
    late: int
    reasons: tuple[str, ...]  # the latest, oldest first

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "late": self.late, "reasons": list(self.reasons)}


class DeadLetters:
    """Per experiment: how many of its input messages (or array elements) were dead-lettered,
    how many of those for being too late, and the latest ``reasons`` reasons; for at most
    ``experiments`` experiments (the least recently dead-lettered forgotten first). Dead letters
    without an experiment key are counted under ``None``."""

    def __init__(self, experiments: int = 10_000, reasons: int = 5):
        self.experiments = experiments
        self.reasons = reasons
        self._tally: OrderedDict[str | None, DeadLetterTally] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tally)

    def add(self, experiment: str | None, doc: Mapping[str, Any]) -> None:
        held = self._tally.pop(experiment, None) or DeadLetterTally(0, 0, ())
        reason = str(doc.get("reason", "?"))[:300]
        self._tally[experiment] = DeadLetterTally(held.count + 1, held.late + is_late(doc),
                                                  (held.reasons + (reason,))[-self.reasons:])
        while len(self._tally) > self.experiments:
            self._tally.popitem(last=False)

    def add_message(self, key: bytes | None, value: bytes) -> None:
        """A dead-letter topic message (stream_app.codec.deadletter_message)."""
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        if isinstance(doc, dict):
            self.add(deadletter_experiment(key if key is not None else doc.get("key")), doc)

    def get(self, experiment: str | None) -> DeadLetterTally:
        return self._tally.get(experiment) or DeadLetterTally(0, 0, ())

    def forget(self, experiment: str) -> None:
        self._tally.pop(experiment, None)

    def experiments_held(self) -> list[str]:
        return [e for e in self._tally if e is not None]
