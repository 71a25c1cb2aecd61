"""Worker counters, rendered in the Prometheus text format for ``GET /metrics``."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Metrics:
    observations_in: int = 0
    rows_out: int = 0
    alerts_out: int = 0
    deadletters: int = 0
    duplicates: int = 0
    redelivered: int = 0
    intervals_closed: int = 0
    batches: int = 0
    # Seconds from the arrival of the message that closed an interval to its results being sent.
    close_latency_sum: float = 0.0
    close_latency_count: int = 0
    consumer_lag: int = 0

    _HELP = {
        "observations_in": ("counter", "Observation messages consumed"),
        "rows_out": ("counter", "Result rows produced"),
        "alerts_out": ("counter", "Alerts produced"),
        "deadletters": ("counter", "Messages sent to the dead-letter topic"),
        "duplicates": ("counter", "Duplicate observations ignored"),
        "redelivered": ("counter", "Redelivered messages skipped by offset"),
        "intervals_closed": ("counter", "Intervals closed and scored"),
        "batches": ("counter", "Batches processed"),
        "close_latency_sum": ("counter", "Sum of interval-close latencies in seconds"),
        "close_latency_count": ("counter", "Number of interval-close latency samples"),
        "consumer_lag": ("gauge", "Messages behind the log end on this worker's partitions"),
    }

    def prometheus(self) -> str:
        lines = []
        for f in fields(self):
            kind, text = self._HELP[f.name]
            name = f"seqstream_{f.name}" + ("_total" if kind == "counter" and not f.name.endswith(("_sum", "_count")) else "")
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {getattr(self, f.name)}"]
        return "\n".join(lines) + "\n"
