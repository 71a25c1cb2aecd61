"""The chaos run of tests/test_chaos.py, longer: more experiments, more intervals, more kills, several
seeds, on an embedded noida-db broker (or KAFKA_BOOTSTRAP). Not part of the suite.

    python bench/soak_chaos.py                       # 3 seeds x 20 kills, about 4 minutes a seed
    python bench/soak_chaos.py --seeds 1 --kills 40 --intervals 1200

Prints one line per run (kills, rows compared, missing, mismatched) and exits non-zero when any
run lost, under- or double-counted a row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_app.kafka.embedded_broker import EmbeddedBroker  # noqa: E402
from tests.chaos import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--intervals", type=int, default=600)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between published intervals")
    parser.add_argument("--store", default="rocksdb://")
    args = parser.parse_args()
    failed = 0
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    broker = None if bootstrap else EmbeddedBroker().start()
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
                report = run_chaos(bootstrap or broker.bootstrap, Path(tmp), seed=seed, kills=args.kills,
                                   experiments=args.experiments, intervals=args.intervals, pause=args.pause,
                                   store=args.store, settle_timeout=180)
            bad = report.missing or report.mismatched or report.unexpected or report.deadletters
            failed += bool(bad)
            print(f"seed {seed}: {report.summary()}{'  FAILED' if bad else ''}", flush=True)
    finally:
        if broker is not None:
            broker.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
