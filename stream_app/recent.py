"""What the web views show of the results and alerts this worker has produced: every
experiment's latest interval and a bounded history of earlier ones, kept as the JSON rows sent to
the results topic (:class:`RecentResults`), and its recent alerts (:class:`RecentAlerts`).

Rows are kept as the bytes already encoded for Kafka, not as dicts: no work per close, and no
row dicts kept alive. Memory is bounded twice: at most ``max_intervals`` intervals of one
experiment (the size of a history response), and at most ``max_bytes`` of rows in all; past
either bound the oldest intervals go first. An experiment's latest interval (what ``/results``
shows) is its newest, so it goes last: only once everything that arrived before it has gone, as
happens to an experiment that stopped long ago, never to the interval just added.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Iterable, Iterator, NamedTuple, Sequence


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

    def __len__(self) -> int:
        """Experiments with results here."""
        return len(self._history)

    def add(self, experiment: str, interval_timestamp: float, rows: Sequence[bytes]) -> None:
        rows = tuple(rows)
        self._serial += 1
        entry = RecentInterval(self._serial, interval_timestamp, rows, sum(map(len, rows)))
        history = self._history.setdefault(experiment, deque())
        history.append(entry)
        self._arrivals.append((experiment, entry.serial))
        self.bytes += entry.size
        self.intervals += 1
        if len(history) > self.max_intervals:
            self._drop_oldest(experiment)
        while self.bytes > self.max_bytes and self._arrivals[0][1] != entry.serial:
            oldest, serial = self._arrivals.popleft()
            held = self._history.get(oldest)
            if held and held[0].serial == serial:
                self._drop_oldest(oldest)
        if len(self._arrivals) > 2 * self.intervals + 1024:
            self._arrivals = deque(pair for pair in self._arrivals if self._held(*pair))

    def latest(self, experiment: str) -> tuple[bytes, ...]:
        history = self._history.get(experiment)
        return history[-1].rows if history else ()

    def history(self, experiment: str, since: float | None = None) -> Iterator[RecentInterval]:
        """Held intervals of ``experiment``, oldest first; only those after ``since`` if given."""
        for entry in list(self._history.get(experiment, ())):
            if since is None or entry.interval_timestamp > since:
                yield entry

    def _drop_oldest(self, experiment: str) -> None:
        history = self._history[experiment]
        entry = history.popleft()
        self.bytes -= entry.size
        self.intervals -= 1
        if not history:
            del self._history[experiment]

    def _held(self, experiment: str, serial: int) -> bool:
        history = self._history.get(experiment)
        return bool(history) and history[0].serial <= serial


class RecentAlerts:
    """Each experiment's last ``per_experiment`` alerts (as dicts, for ``/alerts``), for at most
    ``experiments`` experiments: past that, the one that alerted least recently is forgotten, so a
    long-running worker does not keep every experiment it ever saw."""

    def __init__(self, experiments: int, per_experiment: int):
        self.experiments = experiments
        self.per_experiment = per_experiment
        self._alerts: OrderedDict[str, deque[dict]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._alerts)

    def add(self, experiment: str, alerts: Iterable[dict]) -> None:
        held = self._alerts.pop(experiment, None)
        if held is None:
            held = deque(maxlen=self.per_experiment)
        held.extend(alerts)
        self._alerts[experiment] = held  # now the most recent
        while len(self._alerts) > self.experiments:
            self._alerts.popitem(last=False)

    def get(self, experiment: str) -> list[dict]:
        return list(self._alerts.get(experiment, ()))
