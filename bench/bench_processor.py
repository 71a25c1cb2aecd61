"""The stream's processing ceiling without Kafka (issue 3 context): BatchProcessor.process alone.

1,000 experiments x 5 metrics x 3 variations, one-minute intervals, batches of 2,000 messages
through a dict store, after two warm-up intervals. Prints observations per second; asserts
nothing. Run: python bench/bench_processor.py [--intervals N] [--pack] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from state.simulate import ExperimentSpec, MetricSpec, simulate  # noqa: E402
from stream_app.kafka.partitions import partition_for  # noqa: E402
from stream_app.processor import BatchProcessor, InMessage  # noqa: E402


def messages(experiments: int, intervals: int, pack: bool = False) -> list[InMessage]:
    """One message per observation, or with ``pack`` one JSON array per experiment-interval (as
    ``seqstream publish`` sends them)."""
    metrics = tuple(MetricSpec(f"m{i}", 1.0, sd=2.0, lifts={"t1": 0.02}) for i in range(5))
    per_interval: list[list] = [[] for _ in range(intervals)]
    for e in range(experiments):
        spec = ExperimentSpec(f"exp-{e:05d}", metrics, variations=("control", "t1", "t2"),
                              units_per_interval=3000, intervals=intervals)
        for i, rows in enumerate(simulate(spec, e)):
            per_interval[i].extend(rows)
    offsets = [0] * 4
    out = []
    for rows in per_interval:
        groups: dict[str, list] = {}
        for row in rows:
            groups.setdefault(row["experiment_id"], []).append(row)
        for experiment, group in groups.items():
            key = experiment.encode()
            p = partition_for(key, 4)
            for value in [orjson.dumps(group)] if pack else map(orjson.dumps, group):
                out.append(InMessage("obs", p, offsets[p], key, value))
                offsets[p] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--intervals", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--pack", action="store_true", help="one message per experiment-interval")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--per-interval", action="store_true",
                        help="time each interval's messages apart (packed): the first close registers arms")
    args = parser.parse_args()
    msgs = messages(args.experiments, args.intervals, args.pack)
    if args.per_interval:
        per_interval(msgs, args)
        return
    warm = 2 * args.experiments * (1 if args.pack else 15)
    processor = BatchProcessor({"obs": "observations"}, 4)
    store: dict[str, bytes] = {}

    def run(chunk):
        for j in range(0, len(chunk), args.batch):
            processor.process(chunk[j:j + args.batch], store)
            processor.save_to(store)  # as if faust committed after every batch

    run(msgs[:warm])
    profiler = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    run(msgs[warm:])
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - t0
    n = (len(msgs) - warm) * (15 if args.pack else 1)
    print(f"BatchProcessor.process alone{' (packed)' if args.pack else ''}: {n:,} observations in {elapsed:.2f} s = {n / elapsed:,.0f} obs/s "
          f"({args.experiments} experiments x 15 arms, batches of {args.batch}, dict store)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def per_interval(msgs: list[InMessage], args) -> None:
    """Microseconds per experiment for each interval's messages, packed. Interval 0 closes nothing
    (an experiment's arms are unknown until a later interval comes); interval 1 closes interval 0,
    each experiment's first close, which registers its arms and hypotheses, and then itself (now
    complete); every later interval closes itself."""
    if not args.pack:
        raise SystemExit("--per-interval needs --pack (one message per experiment-interval)")
    processor = BatchProcessor({"obs": "observations"}, 4)
    store: dict[str, bytes] = {}
    n = args.experiments
    for i in range(args.intervals):
        chunk = msgs[i * n:(i + 1) * n]
        t0 = time.perf_counter()
        for j in range(0, len(chunk), args.batch):
            processor.process(chunk[j:j + args.batch], store)
            processor.save_to(store)  # as if faust committed after every batch
        elapsed = time.perf_counter() - t0
        print(f"interval {i}: {elapsed / n * 1e6:,.0f} us per experiment ({processor.metrics.intervals_closed:,} closed so far)")


if __name__ == "__main__":
    main()
