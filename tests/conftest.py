"""Shared test fixtures: paths to ../shared and the covid reference request."""

from __future__ import annotations

import csv
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# CI runs derandomized: the same examples every run, so a red build is reproducible (and a
# green one is not luck). Locally hypothesis explores freely.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

# With KAFKA_BOOTSTRAP unset the CLI talks to the local default broker, 127.0.0.1:9092, which is
# not the tests' to use (other test runs and a user's own broker share the machine): for the
# whole session, and every subprocess a test starts, it is a free port nothing listens on.
if not os.environ.get("SEQSTREAM_LOCAL_BROKER"):
    from stream_app.kafka.embedded_broker import free_port

    os.environ["SEQSTREAM_LOCAL_BROKER"] = f"127.0.0.1:{free_port()}"

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
COVID_CSV = SHARED / "data" / "ses" / "time_aggregated_metric_data.csv"
SHARED_MISSING = (f"the tests need the project's shared material (data, METHODS.md) in ../shared beside the "
                  f"repository, and {SHARED} is not a directory: put it there, then run the tests again")


def pytest_configure(config):
    """Without ../shared some 65 tests failed one by one, most with a bare FileNotFoundError for
    ../shared/data/...: the run stops here instead, with one line naming the folder (never a silent
    skip, which CI would report green)."""
    if not SHARED.is_dir():
        raise pytest.UsageError(SHARED_MISSING)
COVID_METRICS = ("Customer support calls per visitor", "Total customer support minutes per visitor")


def naive_utc_seconds(text: str) -> float:
    """The covid CSV's naive timestamps are UTC (shared/data/ses/README.md)."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def covid_rows() -> list[dict]:
    with COVID_CSV.open() as f:
        return list(csv.DictReader(f))


def covid_request(metrics=COVID_METRICS) -> dict:
    """The reference service request of shared/data/ses/README.md, metrics in the given order."""
    rows = covid_rows()
    return {
        "config": {"reference_variation_id": "control", "use_stats_resets": True},
        "metrics": [
            {
                "config": {"is_binary": False, "name": name},
                "data": [
                    {
                        "interval_timestamp": naive_utc_seconds(r["interval_timestamp"]),
                        "variation_id": r["variation_id"],
                        "unit_count": int(r["unit_count"]),
                        "unit_observation_sum": float(r["unit_observation_sum"]),
                        "unit_observation_sum_of_squares": float(r["unit_observation_sum_of_squares"]),
                    }
                    for r in rows
                    if r["metric_name"] == name
                ],
            }
            for name in metrics
        ],
    }


@pytest.fixture(scope="module")
def broker():
    """A real Kafka-protocol broker: KAFKA_BOOTSTRAP when set (any real Kafka, shared by every
    test), otherwise an embedded noida-db per test module, started here and stopped by its own
    PID. Per module, because noida-db keeps its data in one JSON snapshot that grows slow with
    it (docs/broker.md): a session's worth made the last modules' tests up to three times slower
    (the saved-states test: 22 s alone, 50-70 s at the end of the suite); it starts in 10 ms."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    from stream_app.kafka.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED  # there: pytest_configure stops the run otherwise
