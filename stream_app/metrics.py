"""Worker counters, rendered in the Prometheus text format for ``GET /metrics``."""

from __future__ import annotations

import gc
import time
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
    # Where the worker's time goes (seconds): the agent waiting for a batch and processing it;
    # the background sender handing the outputs to the producer and awaiting their acks (this
    # overlaps the agent's time, stream_app/outputs.py); saving the changed states at offset
    # commits, which first waits for the queued outputs' acks; and garbage collections.
    seconds_waiting_for_input: float = 0.0
    seconds_processing: float = 0.0
    seconds_sending: float = 0.0
    seconds_awaiting_acks: float = 0.0
    seconds_writing_state: float = 0.0
    states_saved: int = 0
    gc_seconds: float = 0.0
    gc_collections: int = 0
    # Messages faust's drain loop delivered (input, and changelogs during recovery;
    # stream_app/kafka/delivery.py): at once, or after waiting (for flow control in a rebalance, the
    # producer buffer to ebb, or room in a full stream queue).
    deliveries_at_once: int = 0
    deliveries_waited: int = 0
    # Exactly-once bookkeeping (stream_app/app.py): events fetched before a rebalance, dropped
    # unprocessed to be fetched again; saves whose changelog write was not acked (no commit).
    stale_events_dropped: int = 0
    records_fetched_again: int = 0
    late_rows_folded: int = 0
    ticks_ignored: int = 0
    experiments_refused: int = 0
    outputs_refused: int = 0
    state_write_failures: int = 0
    # Fencing (stream_app/kafka/fencing.py): the input partitions this worker holds a claim on, and
    # state writes the broker refused because a newer owner had claimed the partition.
    partitions_claimed: int = 0
    state_writes_fenced: int = 0
    # The event loop's longest stall since the start (a probe that sleeps 0.1 s measures how late
    # it wakes), and how many stalls passed 1 s: the stream, the web views and the heartbeats
    # share the loop (stream_app.app.probe_event_loop).
    loop_stall_max_seconds: float = 0.0
    loop_stalls_over_1s: int = 0

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
        "seconds_waiting_for_input": ("counter", "Seconds the agent waited for a batch"),
        "seconds_processing": ("counter", "Seconds the agent spent processing batches"),
        "seconds_sending": ("counter", "Seconds the background sender spent handing outputs to the producer"),
        "seconds_awaiting_acks": ("counter", "Seconds the background sender waited for acks after a hand-over"),
        "seconds_writing_state": ("counter", "Seconds saving changed states at commits, queued outputs' acks included"),
        "states_saved": ("counter", "Experiment states written to the table (once per commit at most)"),
        "gc_seconds": ("counter", "Seconds spent in the garbage collector"),
        "gc_collections": ("counter", "Garbage collections of the oldest generation"),
        "deliveries_at_once": ("counter", "Messages the consumer delivered without waiting"),
        "deliveries_waited": ("counter", "Messages the consumer delivered after waiting (flow control, producer buffer, full queue)"),
        "ticks_ignored": ("counter", "Ticks for experiments this worker does not hold, ignored"),
        "outputs_refused": ("counter", "Output records the broker refused (their size or form), dead-lettered instead"),
        "experiments_refused": ("counter", "Messages dead-lettered for starting an experiment beyond SEQSTREAM_MAX_EXPERIMENTS"),
        "late_rows_folded": ("counter", "Late rows (within the allowed lateness) counted in a later interval"),
        "records_fetched_again": ("counter", "Partitions sought back to fetched records faust did not deliver (paused meanwhile)"),
        "stale_events_dropped": ("counter", "Events dropped unprocessed and fetched again (fetched before a rebalance, or queued behind such)"),
        "state_write_failures": ("counter", "State saves the changelog did not acknowledge (offsets not committed)"),
        "loop_stall_max_seconds": ("gauge", "The event loop's longest stall since the worker started"),
        "loop_stalls_over_1s": ("counter", "Event loop stalls longer than 1 s"),
        "partitions_claimed": ("gauge", "Input partitions whose changelog this worker may write (claimed at assignment)"),
        "state_writes_fenced": ("counter", "Partition state writes refused because a newer owner claimed the partition"),
    }

    def track_gc(self) -> None:
        """Count full collections and time every collection (gc.callbacks)."""
        started = [0.0]

        def callback(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_seconds += time.perf_counter() - started[0]
                self.gc_collections += info["generation"] == 2

        gc.callbacks.append(callback)

    def prometheus(self) -> str:
        lines = []
        for f in fields(self):
            kind, text = self._HELP[f.name]
            name = f"seqstream_{f.name}" + ("_total" if kind == "counter" and not f.name.endswith(("_sum", "_count")) else "")
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {getattr(self, f.name)}"]
        return "\n".join(lines) + "\n"
