"""Reading observation files (CSV as the reference service's data, JSON lines) for the CLI and the
demo."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import orjson

from state import InvalidInput, parse_observation

CSV_COLUMNS = ("variation_id", "interval_timestamp", "unit_count", "unit_observation_sum",
               "unit_observation_sum_of_squares", "metric_name")


def _csv_timestamp(text: str) -> float:
    """The covid CSV's naive timestamps are UTC; ISO strings with a zone are honoured."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def read_csv_observations(path: str | Path, experiment_id: str | None = None,
                          metrics: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Rows of a CSV in the covid data's format as observation dicts, validated; returns
    (rows, errors) with errors naming the line number."""
    rows, errors = [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            return [], [f"{path}: missing column(s) {', '.join(missing)}"]
        for line, record in enumerate(reader, start=2):
            if metrics and record["metric_name"] not in metrics:
                continue
            experiment = experiment_id or record.get("experiment_id")
            if not experiment:
                errors.append(f"line {line}: no experiment_id column; pass --experiment")
                continue
            try:
                row = {
                    "experiment_id": str(experiment),
                    "metric": record["metric_name"],
                    "variation_id": record["variation_id"],
                    "interval_timestamp": _csv_timestamp(record["interval_timestamp"]),
                    "unit_count": float(record["unit_count"]),
                    "unit_observation_sum": float(record["unit_observation_sum"]),
                    "unit_observation_sum_of_squares": float(record["unit_observation_sum_of_squares"]),
                }
                if row["unit_count"].is_integer():
                    row["unit_count"] = int(row["unit_count"])
                parse_observation(row)
            except (ValueError, InvalidInput) as exc:
                errors.append(f"line {line}: {exc}")
                continue
            rows.append(row)
    return rows, errors


def read_jsonl_observations(path: str | Path) -> tuple[list[dict], list[str]]:
    rows, errors = [], []
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
                parse_observation(row)
                if not isinstance(row.get("experiment_id"), str) or not row["experiment_id"]:
                    raise InvalidInput("must be a non-empty string", field="experiment_id")
            except (orjson.JSONDecodeError, InvalidInput) as exc:
                errors.append(f"line {line}: {exc}")
                continue
            rows.append(row)
    return rows, errors


def by_interval(rows: Iterable[dict]) -> list[list[dict]]:
    groups: dict[float, list[dict]] = {}
    for row in rows:
        groups.setdefault(float(row["interval_timestamp"]), []).append(row)
    return [groups[ts] for ts in sorted(groups)]
