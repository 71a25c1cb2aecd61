"""Reading observation files (CSV as the reference service's data, JSON lines) for the CLI and the
demo, with errors a person can act on: a file that cannot be read is one :class:`FileError`
line, and a bad row is a :class:`RowError` (line number and reason) that
:func:`summarize_errors` folds by reason, so a file whose every row fails for one reason says it
once with the count."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import orjson

from state import InvalidInput, parse_observation

CSV_COLUMNS = ("variation_id", "interval_timestamp", "unit_count", "unit_observation_sum",
               "unit_observation_sum_of_squares", "metric_name")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
STDIN = "-"  # the path that means standard input, as for cat


class FileError(ValueError):
    """A file that cannot be used at all (missing, a directory, unreadable, binary, not UTF-8, no
    header); ``str()`` is one line that starts with the path."""


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class ObservationFile:
    """What a file holds: the valid rows (after the metric filter), the bad ones, and every metric
    name it mentions (to say which exist when a --metrics filter matches none)."""

    rows: list[dict]
    errors: list[RowError]
    metrics: frozenset[str]


def read_text(path: str | Path, kind: str = "CSV or JSON lines") -> str:
    """The whole file as text, or a FileError saying in one line why it cannot be (``kind``: what
    the file should have been, for a binary one)."""
    p = Path(path)
    if p.is_dir():
        raise FileError(f"{path}: is a directory, not a file")
    try:
        data = sys.stdin.buffer.read() if str(path) == STDIN else p.read_bytes()
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except PermissionError:
        raise FileError(f"{path}: not readable (permission denied)") from None
    except OSError as exc:
        raise FileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if b"\0" in data[:65536]:
        raise FileError(f"{path}: looks like a binary file, not {kind}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileError(f"{path}: is not UTF-8 text (byte {exc.start})") from None


def _csv_timestamp(text: str) -> float:
    """The covid CSV's naive timestamps are UTC; ISO strings with a zone are honoured."""
    if not text.strip():
        raise InvalidInput("is empty", field="interval_timestamp")
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:  # Python's "Invalid isoformat string" names neither the column nor the format
        raise InvalidInput(f"{text!r} is not a date and time (e.g. 2020-09-14 11:21:00)",
                           field="interval_timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _csv_number(record: dict, column: str) -> float:
    """A numeric cell, or InvalidInput naming the column and quoting the cell as written."""
    text = (record[column] or "").strip()
    if not text:
        raise InvalidInput("is empty", field=column)
    try:
        return float(text)
    except ValueError:  # Python's "could not convert string to float" names no column
        raise InvalidInput(f"{text!r} is not a number", field=column) from None


def _csv_count(record: dict) -> int:
    """unit_count as an int; checked here so the message quotes the cell ("-5", not "-5.0")."""
    value = _csv_number(record, "unit_count")
    if not (value.is_integer() and value >= 0):
        raise InvalidInput(f"must be a whole number >= 0, got {record['unit_count'].strip()}", field="unit_count")
    return int(value)


def _not_empty(path: str | Path, text: str) -> str:
    if not text.strip():  # else a CSV says "missing column(s)" of a file that has nothing at all
        raise FileError(f"{path}: is empty")
    return text


def read_csv_observations(path: str | Path, experiment_id: str | None = None,
                          metrics: Sequence[str] | None = None, *, text: str | None = None) -> ObservationFile:
    """Rows of a CSV in the covid data's format as observation dicts, validated (``text``: the
    file's content when already read, as from standard input)."""
    rows, errors, seen = [], [], set()
    text = _not_empty(path, read_text(path) if text is None else text)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise FileError(f"{path}: not a CSV in the covid data's format: missing column(s) {', '.join(missing)}")
        if not experiment_id and "experiment_id" not in header:
            raise FileError(f"{path}: has no experiment_id column: pass --experiment ID")
        for line, record in enumerate(reader, start=2):
            seen.add(record["metric_name"])
            if metrics and record["metric_name"] not in metrics:
                continue
            experiment = experiment_id or record.get("experiment_id")
            if not experiment:
                errors.append(RowError(line, "empty experiment_id; pass --experiment"))
                continue
            try:
                row = {
                    "experiment_id": str(experiment),
                    "metric": record["metric_name"],
                    "variation_id": record["variation_id"],
                    "interval_timestamp": _csv_timestamp(record["interval_timestamp"] or ""),
                    "unit_count": _csv_count(record),
                    "unit_observation_sum": _csv_number(record, "unit_observation_sum"),
                    "unit_observation_sum_of_squares": _csv_number(record, "unit_observation_sum_of_squares"),
                }
                parse_observation(row)
            except (ValueError, TypeError, InvalidInput) as exc:
                errors.append(RowError(line, str(exc)))
                continue
            rows.append(row)
    except csv.Error as exc:
        raise FileError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    return ObservationFile(rows, errors, frozenset(seen))


def read_jsonl_observations(path: str | Path, metrics: Sequence[str] | None = None, *,
                            text: str | None = None) -> ObservationFile:
    rows, errors, seen = [], [], set()
    text = _not_empty(path, read_text(path) if text is None else text)
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = orjson.loads(raw)
            if isinstance(row, dict) and isinstance(row.get("metric"), str):
                seen.add(row["metric"])
                if metrics and row["metric"] not in metrics:
                    continue
            parse_observation(row)
            if not isinstance(row.get("experiment_id"), str) or not row["experiment_id"]:
                raise InvalidInput("must be a non-empty string", field="experiment_id")
        except orjson.JSONDecodeError as exc:
            errors.append(RowError(line, f"not a JSON object ({exc})"))
            continue
        except InvalidInput as exc:
            errors.append(RowError(line, str(exc)))
            continue
        rows.append(row)
    return ObservationFile(rows, errors, frozenset(seen))


def read_observations(path: str | Path, experiment_id: str | None = None,
                      metrics: Sequence[str] | None = None) -> ObservationFile:
    """A CSV or, by its suffix, a JSON-lines file; ``-`` is standard input, JSON lines if it starts
    with ``{``, else CSV."""
    if str(path) == STDIN:
        text = read_text(path)
        if text.lstrip().startswith("{"):
            return read_jsonl_observations(path, metrics, text=text)
        return read_csv_observations(path, experiment_id, metrics, text=text)
    if str(path).endswith(JSONL_SUFFIXES):
        return read_jsonl_observations(path, metrics)
    return read_csv_observations(path, experiment_id, metrics)


def summarize_errors(errors: Sequence[RowError], limit: int = 10) -> list[str]:
    """One line per distinct reason, in order of first appearance: ``line N: reason`` when one row
    has it, ``K rows (lines a, b, c, ...): reason`` when several do; at most ``limit`` lines."""
    by_reason: dict[str, list[int]] = {}
    for error in errors:
        by_reason.setdefault(error.reason, []).append(error.line)
    lines = []
    for reason, numbers in by_reason.items():
        if len(numbers) == 1:
            lines.append(f"line {numbers[0]}: {reason}")
        else:
            shown = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
            lines.append(f"{len(numbers)} rows (lines {shown}): {reason}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more kinds of error"]
    return lines


def by_interval(rows: Iterable[dict]) -> list[list[dict]]:
    groups: dict[float, list[dict]] = {}
    for row in rows:
        groups.setdefault(float(row["interval_timestamp"]), []).append(row)
    return [groups[ts] for ts in sorted(groups)]


# -- the example file of the README tour ----------------------------------------------------------

EXAMPLE_START = 1_600_082_460.0  # 2020-09-14 11:21 UTC, the covid data's first interval


def example_rows() -> list[dict]:
    """The README tour's observations: the covid data's shape and metric names (3 variations x 5
    metrics x 18 one-minute intervals), simulated with a seed, since the real file's repository
    carries no licence to redistribute it. The messages cut support calls and minutes (metrics
    where lower is better) and leave the rest alone."""
    from state.simulate import ExperimentSpec, MetricSpec, simulate

    fewer = {"message_1": -0.25, "message_2": -0.15}
    spec = ExperimentSpec(
        experiment_id="covid",
        variations=("control", "message_1", "message_2"),
        metrics=(
            MetricSpec("Customer support calls per visitor", 0.30, is_binary=True, lifts=fewer),
            MetricSpec("Total customer support minutes per visitor", 1.4, sd=3.0, lifts=fewer),
            MetricSpec("Purchase conversion rate", 0.08, is_binary=True),
            MetricSpec("Electronics revenue per visitor", 2.5, sd=12.0),
            MetricSpec("Product detail page views per visitor", 3.0, sd=2.5),
        ),
        units_per_interval=560, intervals=18, start=EXAMPLE_START, interval_seconds=60.0,
    )
    return [row for interval in simulate(spec, seed=2020) for row in interval]


def write_example_csv(path: str | Path) -> int:
    """Write :func:`example_rows` as a CSV in the covid data's format; returns the row count. A
    path that cannot be written (a directory, a missing folder, a full disk) is a FileError line."""
    rows = example_rows()
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        when = datetime.fromtimestamp(row["interval_timestamp"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        writer.writerow([row["variation_id"], when, row["unit_count"], repr(row["unit_observation_sum"]),
                         repr(row["unit_observation_sum_of_squares"]), row["metric"]])
    try:
        with open(path, "w", newline="") as f:  # the text is whole first: an error comes from the OS alone
            f.write(text.getvalue())
    except OSError as exc:  # IsADirectoryError, FileNotFoundError (its folder), ENOSPC (at write or close)
        raise FileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return len(rows)
