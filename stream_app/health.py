"""What every results surface says about an experiment before its numbers: the state and the
plain-language verdict of each row, the results table in config order with its baseline and its
guardrail section, and one health summary per experiment (status, wins, regressions, guardrail
harm, SRM, stats resets, burn-in, dead letters, last interval).

Pure functions of result rows (as the worker emits them, non-finite numbers decoded), the
experiment's config as a config message's dict (``reference_variation_id``, ``min_units``,
``metrics: {name: {is_binary, in_fdr_family, lower_is_better, effect}}``), its alerts and its
dead-letter tally (stream_app.recent.DeadLetters). The dashboard (through the HTTP API), ``watch``
and the report all call these, and print numbers with stream_app.formatting, so no two surfaces
disagree on a verdict or a number.

A *guardrail* is a metric configured out of the FDR family (``in_fdr_family: false``): it is not
a goal the experiment may win on but a metric it must not harm, so its significant regressions
are a harm state of their own, and it never counts as a win.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from .formatting import (CLIP_NOTE, IMPROVEMENT, NOT_YET, REGRESSION, clipped, direction, finite, fmt_count, fmt_effect,
                         fmt_interval, fmt_p, fmt_significance, fmt_time, fmt_value, has_estimate, is_relative,
                         lower_is_better, metric_options)

DEFAULT_MIN_UNITS = 100  # state.EngineConfig.min_units

# Row states. A guardrail's significant regression is HARM; it has no improvement state.
BURN_IN, INCONCLUSIVE, HARM, NO_HARM = "burn_in", "inconclusive", "harm", "no_harm"

# Experiment statuses, most urgent first: the order of GET /experiments, watch and the dashboard.
STATUSES = ("srm", "harm", "regression", "dead_letters", "winner", "burn_in", "running", "waiting")
STATUS_LABELS = {
    "srm": "Sample ratio mismatch",
    "harm": "Guardrail harm",
    "regression": "Significant regression",
    "dead_letters": "Data dead-lettered",
    "winner": "Significant win",
    "burn_in": "Burn-in",
    "running": "Running, no significant result",
    "waiting": "No results yet",
}

SRM_WARNING = ("Sample ratio mismatch: traffic does not match the configured split, so assignment is broken "
               "and every result of this experiment may be biased. Fix the assignment before trusting them.")


def is_guardrail(config: Mapping[str, Any] | None, metric: str) -> bool:
    return metric_options(config, metric).get("in_fdr_family") is False


def is_binary(config: Mapping[str, Any] | None, metric: str) -> bool:
    return metric_options(config, metric).get("is_binary") is True


def min_units(config: Mapping[str, Any] | None) -> int:
    value = (config or {}).get("min_units")
    return value if isinstance(value, int) and not isinstance(value, bool) else DEFAULT_MIN_UNITS


def row_state(row: Mapping[str, Any], config: Mapping[str, Any] | None) -> str:
    """BURN_IN while the row has no estimate, else improvement / regression for a significant row
    (HARM for a guardrail's regression), else INCONCLUSIVE (NO_HARM for a guardrail)."""
    metric = str(row.get("metric"))
    guardrail = is_guardrail(config, metric)
    if not has_estimate(row):
        return BURN_IN
    verdict = direction(row, lower_is_better(config, metric))
    if verdict == REGRESSION:
        return HARM if guardrail else REGRESSION
    if verdict == IMPROVEMENT:
        return IMPROVEMENT
    return NO_HARM if guardrail else INCONCLUSIVE


def burn_in_progress(row: Mapping[str, Any], config: Mapping[str, Any] | None) -> tuple[int, int]:
    """(units of the smaller arm, units each arm needs): the engine estimates once both arms
    reach ``min_units`` (state/block.py)."""
    units = [finite(row.get(k)) for k in ("treatment_unit_cumcount", "control_unit_cumcount")]
    have = min((u for u in units if u is not None), default=0.0)
    return int(have), min_units(config)


def verdict_text(row: Mapping[str, Any], config: Mapping[str, Any] | None, state: str, srm: bool = False) -> str:
    reference = str(row.get("reference_variation_id") or (config or {}).get("reference_variation_id") or "control")
    if state == BURN_IN:
        have, need = burn_in_progress(row, config)
        text = f"Burn-in: {fmt_count(have)} of {fmt_count(need)} units per arm before a first estimate"
    elif state == IMPROVEMENT:
        text = f"Better than {reference}: significant improvement"
    elif state == REGRESSION:
        text = f"Worse than {reference}: significant regression"
    elif state == HARM:
        text = f"Harm: this guardrail is significantly worse than {reference}"
    elif state == NO_HARM:
        text = "No harm detected on this guardrail (yet)"
    else:
        text = f"No significant difference from {reference} yet: keep collecting"
    if row.get("effect_changed") is True:  # the engine's flag: the running interval would be empty
        text += " (the effect changed over time: see the chart)"
    if late_folded_in(row):
        text += " (includes observations that arrived late)"
    if srm:
        text += " (unreliable: sample ratio mismatch)"
    return text


def late_folded_in(row: Mapping[str, Any]) -> bool:
    """Whether the stream says it folded late observations into this row. The stream's field for
    it is not fixed yet (issue 17), so any set field named for lateness counts."""
    return any("late" in key and value not in (None, False, 0, 0.0, "", [], {}) for key, value in row.items()
               if isinstance(key, str))


def _arm_value(row: Mapping[str, Any], arm: str, binary: bool) -> str:
    total, units = finite(row.get(f"{arm}_observation_cumsum")), finite(row.get(f"{arm}_unit_cumcount"))
    return fmt_value(total / units if total is not None and units else None, binary)


def row_display(row: Mapping[str, Any], config: Mapping[str, Any] | None, srm: bool = False) -> dict[str, Any]:
    """One results row as every surface shows it: its state, verdict and formatted numbers."""
    metric = str(row.get("metric"))
    state = row_state(row, config)
    relative = is_relative(row)
    binary = is_binary(config, metric)
    lo, hi = row.get("corrected_conf_interval_lower"), row.get("corrected_conf_interval_upper")
    out = {
        "metric": metric,
        "variation_id": row.get("variation_id"),
        "interval": fmt_time(row.get("interval_timestamp")),
        "state": state,
        "verdict": verdict_text(row, config, state, srm),
        "units": fmt_count(row.get("treatment_unit_cumcount")),
        "control_units": fmt_count(row.get("control_unit_cumcount")),
        "value": _arm_value(row, "treatment", binary),
        "control_value": _arm_value(row, "control", binary),
        "lift": "burn-in" if state == BURN_IN else fmt_effect(row.get("lift_estimate"), relative),
        "ci": NOT_YET if state == BURN_IN else fmt_interval(lo, hi, relative),
        "ci_clipped": state != BURN_IN and clipped(lo, relative),
        "p": NOT_YET if state == BURN_IN else fmt_p(row.get("corrected_p_value")),
        "significance": NOT_YET if state == BURN_IN else fmt_significance(row.get("corrected_p_value")),
        "guardrail": is_guardrail(config, metric),
        "stats_reset": row.get("stats_reset") is True,
        "effect_changed": row.get("effect_changed") is True,
        "late": late_folded_in(row),
        "srm": srm,
    }
    if state == BURN_IN:
        have, need = burn_in_progress(row, config)
        out["burn_in"] = {"units": have, "min_units": need, "percent": min(100, int(100 * have / need)) if need else 100}
    return out


class MetricTable(NamedTuple):
    metric: str
    guardrail: bool
    lower_is_better: bool
    binary: bool
    reference_variation_id: str
    baseline: dict[str, Any]  # the reference arm: units and conversion rate or mean
    rows: list[dict[str, Any]]  # row_display of each variation, in first-seen order

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def metric_order(config: Mapping[str, Any] | None, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Metrics in config order, then those with rows but no config, in first-seen order."""
    configured = list((config or {}).get("metrics") or {})
    return list(dict.fromkeys(configured + [str(r.get("metric")) for r in rows]))


def results_table(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None,
                  srm: bool = False) -> list[MetricTable]:
    """The latest rows as per-metric tables in config order (metrics without rows left out)."""
    by_metric: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_metric.setdefault(str(row.get("metric")), []).append(row)
    out = []
    for metric in metric_order(config, rows):
        metric_rows = by_metric.get(metric)
        if not metric_rows:
            continue
        first = metric_rows[0]
        binary = is_binary(config, metric)
        reference = str(first.get("reference_variation_id") or (config or {}).get("reference_variation_id") or "control")
        baseline = {"variation_id": reference, "units": fmt_count(first.get("control_unit_cumcount")),
                    "value": _arm_value(first, "control", binary)}
        out.append(MetricTable(metric, is_guardrail(config, metric), lower_is_better(config, metric), binary, reference,
                               baseline, [row_display(r, config, srm) for r in metric_rows]))
    return out


def experiment_health(experiment_id: str, rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None, *,
                      srm: bool, alerts: Sequence[Mapping[str, Any]] = (), dead_letters: Mapping[str, Any] | None = None,
                      intervals_closed: int | None = None, last_interval: float | None = None) -> dict[str, Any]:
    """The one-line health of an experiment from its latest rows: GET /experiments, the
    dashboard's list, ``watch --summary`` and the report's banner all show this."""
    states = [row_state(r, config) for r in rows]
    wins, regressions, harms = states.count(IMPROVEMENT), states.count(REGRESSION), states.count(HARM)
    burn_in = bool(states) and all(s == BURN_IN for s in states)
    dead = dict(dead_letters or {})
    dead_count = int(dead.get("count", 0) or 0)
    resets = sum(1 for a in alerts if a.get("kind") == "stats_reset")
    if last_interval is None:
        last_interval = max((finite(r.get("interval_timestamp")) or 0.0 for r in rows), default=None)
    if srm:
        status = "srm"
    elif harms:
        status = "harm"
    elif regressions:
        status = "regression"
    elif dead_count:
        status = "dead_letters"
    elif wins:
        status = "winner"
    elif burn_in:
        status = "burn_in"
    elif rows:
        status = "running"
    else:
        status = "waiting"
    progress = None
    if burn_in:
        have = min(burn_in_progress(r, config)[0] for r in rows)
        need = min_units(config)
        progress = {"units": have, "min_units": need, "percent": min(100, int(100 * have / need)) if need else 100}
    return {
        "experiment_id": experiment_id,
        "status": status,
        "status_label": STATUS_LABELS[status],
        "urgency": STATUSES.index(status),
        "wins": wins,
        "regressions": regressions,
        "guardrail_harms": harms,
        "hypotheses": len(rows),
        "srm": bool(srm),
        "stats_resets": resets,
        "burn_in": burn_in,
        "burn_in_progress": progress,
        "dead_letters": dead_count,
        "late": int(dead.get("late", 0) or 0),
        "dead_letter_reasons": list(dead.get("reasons", ()))[-3:],
        "intervals_closed": intervals_closed,
        "last_interval": last_interval,
        "last_interval_text": fmt_time(last_interval),
        "clip_note": CLIP_NOTE if any(row_display(r, config)["ci_clipped"] for r in rows) else None,
    }


def by_urgency(summaries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Most urgent first; within a status, the most recently active first, then by id."""
    return sorted(summaries, key=lambda s: (s["urgency"], -(s.get("last_interval") or 0.0), s["experiment_id"]))
