"""``evaluate``: a drop-in for the reference service's batch call (POST /stats-engine/v0/batch).

Request: ``{"config": {...engine options}, "metrics": [{"config": {...metric options}, "data":
[rows]}]}`` with rows of interval_timestamp (unix seconds or ISO-8601 with zone), variation_id,
unit_count, unit_observation_sum, unit_observation_sum_of_squares (extra row fields are ignored).
Response: one list of section-8 row dicts per metric, in request order, rows ordered by variation
(first appearance in that metric's data) then interval. All metrics form one FDR family.

The request is replayed interval by interval through :class:`~state.experiment.ExperimentState`,
the same object the stream keeps, so batch and streaming results are identical by construction.
Unlike everything native, a request that names no ``variance_method`` is scored with the
reference service's ("ses"); any request may name "fieller" (the native default) or "delta".
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping

from .config import BATCH_VARIANCE_METHOD, EngineConfig, MetricConfig
from .errors import InvalidInput
from .experiment import ExperimentState
from .observation import parse_observation

_REQUEST_KEYS = {"config", "metrics", "experiment_id"}
_METRIC_KEYS = {"config", "data"}


def parse_request(request: Mapping[str, Any]):
    """Validate a batch request into (experiment id, config, metric configs, intervals, metric names)."""
    if not isinstance(request, Mapping):
        raise InvalidInput(f"the request must be an object, got {type(request).__name__}")
    unknown = sorted(set(request) - _REQUEST_KEYS)
    if unknown:
        raise InvalidInput(f"unknown request key(s) {unknown}; expected config and metrics")
    config_doc = request.get("config")
    if isinstance(config_doc, Mapping) and "variance_method" not in config_doc:
        # A drop-in for the reference service: a request naming no method gets its method, so
        # the reference request returns the reference numbers (METHODS.md section 10).
        config_doc = {**config_doc, "variance_method": BATCH_VARIANCE_METHOD}
    elif config_doc is None:
        config_doc = {"variance_method": BATCH_VARIANCE_METHOD}
    config = EngineConfig.from_dict(config_doc)
    metrics = request.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise InvalidInput("must be a non-empty list of {config, data} objects", field="metrics")
    names: list[str] = []
    metric_configs: dict[str, MetricConfig] = {}
    intervals: dict[float, list] = defaultdict(list)
    for i, metric in enumerate(metrics):
        if not isinstance(metric, Mapping) or set(metric) - _METRIC_KEYS:
            raise InvalidInput("each metric must be an object with only 'config' and 'data'", field=f"metrics[{i}]")
        mconf = MetricConfig.from_dict(metric.get("config"))
        name = mconf.name or f"metric_{i}"
        if name in metric_configs:
            raise InvalidInput(f"metric name {name!r} appears twice", field=f"metrics[{i}].config.name")
        names.append(name)
        metric_configs[name] = mconf
        data = metric.get("data")
        if not isinstance(data, list):
            raise InvalidInput("must be a list of rows", field=f"metrics[{i}].data")
        seen: set[tuple[str, float]] = set()
        has_reference = False
        for r, row in enumerate(data):
            try:
                obs = parse_observation(row, metric=name, is_binary=mconf.is_binary)
            except InvalidInput as exc:
                raise InvalidInput(f"metrics[{i}].data[{r}]: {exc}", field=exc.field) from None
            key = (obs.variation_id, obs.interval_timestamp)
            if key in seen:
                raise InvalidInput(
                    f"metrics[{i}].data[{r}]: a second row for variation {obs.variation_id!r} at {obs.interval_timestamp!r}"
                )
            seen.add(key)
            has_reference |= obs.variation_id == config.reference_variation_id
            intervals[obs.interval_timestamp].append(obs)
        if not has_reference:
            raise InvalidInput(
                f"metric {name!r} has no data for the reference variation {config.reference_variation_id!r}",
                field="reference_variation_id",
            )
    experiment_id = str(request.get("experiment_id", "batch"))
    return experiment_id, config, metric_configs, dict(sorted(intervals.items())), names


def evaluate(request: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """Score a whole request; see the module docstring. Raises InvalidInput on bad input."""
    experiment_id, config, metric_configs, intervals, names = parse_request(request)
    state = ExperimentState(experiment_id, config, metric_configs)
    rows_by_metric: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for timestamp, observations in intervals.items():
        for row in state.update(timestamp, observations).rows:
            rows_by_metric[row["metric"]].append(row)
    out = []
    for name in names:
        rows = rows_by_metric[name]
        order = {v: k for k, v in enumerate(dict.fromkeys(r["variation_id"] for r in rows))}
        out.append(sorted(rows, key=lambda r: (order[r["variation_id"]], r["interval_timestamp"])))
    return out
