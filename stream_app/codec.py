"""Wire formats: JSON via orjson, decoded and validated at the edge of the stream.

Observation (topic ``observations``, key = experiment_id as raw UTF-8):
    {"experiment_id", "metric", "variation_id", "interval_timestamp" (unix s or ISO-8601 with
     zone), "unit_count", "unit_observation_sum", "unit_observation_sum_of_squares"}
Experiment config (topic ``experiments``, compacted, same key):
    {"experiment_id", "version": int, "reference_variation_id", "metrics": {name: {"is_binary",
     "effect", "in_fdr_family", "lower_is_better"}}, "weights": {variation: weight}, and any
     engine option of state.EngineConfig (alpha, tau2 or n_star, min_units, use_stats_resets,
     srm_alpha, ...)}
Results and alerts are JSON objects. JSON has no NaN or infinity, so non-finite numbers are
written as the strings "inf", "-inf" and "nan" (ep-stats' convention); ``decode_number`` reads
them back.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any, Mapping

import orjson

from state import EngineConfig, InvalidInput, MetricConfig, Observation, parse_observation
from state.serialize import exact_size

_NON_FINITE = {math.inf: "inf", -math.inf: "-inf"}


def _loads(value: bytes | None, what: str) -> Any:
    if value is None:
        raise InvalidInput(f"empty {what} message")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def loads_object(value: bytes | None, what: str) -> dict:
    doc = _loads(value, what)
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def experiment_key(key: bytes | None) -> str:
    if not key:
        raise InvalidInput("message has no key: key every message by its experiment_id (raw UTF-8)")
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("message key is not UTF-8: key every message by its experiment_id") from None


def _observation(doc: Any, experiment: str, is_binary_of) -> Observation:
    if not isinstance(doc, dict):
        raise InvalidInput(f"an observation must be a JSON object, got {type(doc).__name__}")
    if doc.get("experiment_id") != experiment:
        raise InvalidInput(f"experiment_id {doc.get('experiment_id')!r} does not match the message key {experiment!r}",
                           field="experiment_id")
    metric = doc.get("metric")
    return parse_observation(doc, is_binary=bool(isinstance(metric, str) and is_binary_of(experiment, metric)))


def decode_observations(key: bytes | None, value: bytes | None, is_binary_of):
    """(experiment id, [(element index or None, Observation or the InvalidInput it raised)]).

    A message is one observation (a JSON object) or several of one experiment (a non-empty JSON
    array of objects, e.g. an experiment's whole interval): packing rows this way costs the
    stream one message instead of one per row. Whole-message faults raise; a bad element is
    returned with its error so the others still count. ``is_binary_of(experiment, metric)``
    gives the metric's config so 0/1 metrics are checked as such.
    """
    experiment = experiment_key(key)
    doc = _loads(value, "observation")
    if isinstance(doc, dict):
        return experiment, [(None, _observation(doc, experiment, is_binary_of))]
    if not isinstance(doc, list) or not doc:
        raise InvalidInput("an observations message must be a JSON object or a non-empty array of objects, "
                           f"got {type(doc).__name__ if doc != [] else 'an empty array'}")
    out = []
    for index, element in enumerate(doc):
        try:
            out.append((index, _observation(element, experiment, is_binary_of)))
        except InvalidInput as exc:
            exc.element = element  # what its dead letter shows, without parsing the message again
            out.append((index, exc))
    return experiment, out


MAX_DEPTH = 32  # JSON nested deeper than this is invalid input (configs; a bad element's report)


def too_deep(doc: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``doc`` nests containers deeper than ``limit`` (iterative: no recursion limit)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False


def element_bytes(element: Any) -> bytes | None:
    """The JSON of one element of an array message, already decoded (for its dead letter; the
    message is never parsed again). None when it nests too deep to be written back."""
    if too_deep(element):
        return None
    try:
        return orjson.dumps(element)
    except (TypeError, orjson.JSONEncodeError):
        return None


def decode_config(key: bytes | None, value: bytes | None) -> tuple[str, int, EngineConfig, dict[str, MetricConfig]]:
    experiment = experiment_key(key)
    doc = loads_object(value, "experiment config")
    if too_deep(doc):
        raise InvalidInput(f"experiment config nests deeper than {MAX_DEPTH} levels")
    if doc.pop("experiment_id", experiment) != experiment:
        raise InvalidInput("experiment_id does not match the message key", field="experiment_id")
    version = doc.pop("version", None)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidInput(f"must be a whole number >= 0, got {version!r}", field="version")
    metrics = doc.pop("metrics", {}) or {}
    if not isinstance(metrics, Mapping):
        raise InvalidInput("must be an object mapping metric name to its options", field="metrics")
    for name, opts in metrics.items():
        if opts is not None and not isinstance(opts, Mapping):
            raise InvalidInput(f"options of metric {name!r} must be an object, got {type(opts).__name__}",
                               field="metrics")
    try:
        metric_configs = {name: MetricConfig.from_dict({**(opts or {}), "name": name}) for name, opts in metrics.items()}
        return experiment, version, EngineConfig.from_dict(doc), metric_configs
    except (TypeError, ValueError, AttributeError) as exc:  # an option of the wrong type: the user's to fix
        raise InvalidInput(f"experiment config has an option of the wrong type: {exc}") from None


def config_message(experiment_id: str, version: int, config: EngineConfig | Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Mapping[str, Any]] | None = None) -> bytes:
    body = config.to_dict() if isinstance(config, EngineConfig) else dict(config or {})
    return orjson.dumps({"experiment_id": experiment_id, "version": version, **body, "metrics": dict(metrics or {})})


def checked_config_message(experiment_id: str, version: Any, doc: Mapping[str, Any]) -> bytes:
    """A config message from a user's document (engine options plus "metrics"), checked as the
    worker will decode it: raises InvalidInput now rather than being dead-lettered later."""
    options = {k: v for k, v in doc.items() if k not in ("experiment_id", "version", "metrics")}
    message = config_message(experiment_id, version, options, doc.get("metrics") or {})
    decode_config(experiment_id.encode(), message)
    return message


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "nan")
    return value


def encode_row(row: Mapping[str, Any]) -> bytes:
    # Rows hold no None, so orjson's "null" can only come from NaN/inf (or a name containing
    # "null"): the common, all-finite row is dumped once, without a per-value check.
    data = orjson.dumps(row)
    if b"null" in data:
        data = orjson.dumps({k: _finite(v) for k, v in row.items()})
    return exact_size(data)  # a batch holds thousands of rows until they are produced


# Compact orjson output never holds a raw newline byte (one in a string is escaped), so one written
# between rows marks, unambiguously, where each ends.
_ROW_END = orjson.Fragment(b"\n")


def encode_rows(result) -> list[bytes]:
    """An IntervalResult's rows, each as ``encode_row`` writes it.

    A result known to hold only finite numbers has its rows written in one orjson call and cut
    at the newlines written between them: about 2 us a row less than a call per row with its
    search for a non-finite number (bench_stream --pack --modes live writes 200,000 rows), and
    the pieces come out exact-size. Any other result is written row by row.
    """
    rows = result.rows
    if not result.all_finite or not rows:
        return [encode_row(row) for row in rows]
    items = [_ROW_END] * (2 * len(rows) - 1)
    items[::2] = rows
    return orjson.dumps(items)[1:-1].split(b",\n,")


def encode_alert(alert) -> bytes:
    doc = alert.to_dict()
    doc["details"] = {k: _finite(v) for k, v in doc["details"].items()}
    return orjson.dumps(doc)


def decode_number(value: Any) -> Any:
    """Inverse of the non-finite encoding, for readers of results."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def decode_row(value: bytes) -> dict[str, Any]:
    return {k: decode_number(v) for k, v in orjson.loads(value).items()}


# A dead letter carries at most this many bytes of the original message (and of its key), and
# at most this many characters of reason: far below any broker's message limit (Kafka's default
# is 1 MiB), so a dead letter is never refused, however large the input that caused it. A longer
# original is cut, and its size and SHA-256 are given to find it on its topic.
DEADLETTER_VALUE_BYTES = 8192
DEADLETTER_REASON_CHARS = 2000


def deadletter_message(reason: str, topic: str, partition: int, offset: int, key: bytes | None,
                       value: bytes | None, error: str = "invalid_input", element: int | None = None,
                       **extra: Any) -> bytes:
    """The original bytes (UTF-8 text when they decode, else base64; a prefix when longer than
    DEADLETTER_VALUE_BYTES, with ``value_bytes`` and ``value_sha256``), the reason and the source."""
    def carry(raw: bytes | None) -> tuple[str | None, str]:
        if raw is None:
            return None, "none"
        raw = raw[:DEADLETTER_VALUE_BYTES]
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"

    key_text, key_encoding = carry(key)
    value_text, value_encoding = carry(value)
    if len(reason) > DEADLETTER_REASON_CHARS:
        reason = reason[:DEADLETTER_REASON_CHARS] + "..."
    doc = {"reason": reason, "error": error, "topic": topic, "partition": partition, "offset": offset,
           "key": key_text, "key_encoding": key_encoding, "value": value_text, "value_encoding": value_encoding}
    if value is not None and len(value) > DEADLETTER_VALUE_BYTES:
        doc.update(value_truncated=True, value_bytes=len(value), value_sha256=hashlib.sha256(value).hexdigest())
    if element is not None:
        doc["element"] = element  # index in the array message; value holds that element
    doc.update(extra)
    return orjson.dumps(doc)
