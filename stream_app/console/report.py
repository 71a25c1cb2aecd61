"""``seqstream report --experiment ID --html FILE``: one self-contained HTML report.

Per metric, an overview table in the style of Optimizely's Stats Engine results page (the
reference variation marked "baseline", then each variation with its subjects, total value,
average value, improvement, always-valid confidence interval, corrected p-value and statistical
significance), and per variation an inline SVG chart of the lift and its always-valid interval
over the experiment's intervals. No scripts, fonts, images or style sheets are fetched: the file
opens anywhere, offline.

``build_report(experiment_id, rows, configs)`` is pure (rows are results rows as the worker emits
them, non-finite numbers already decoded to floats); ``main(args)`` reads the topics.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from aiokafka.errors import KafkaError

from ..settings import broker_settings
from ..formatting import (IMPROVEMENT, REGRESSION, finite, direction, fmt_count, fmt_effect, fmt_interval, fmt_p,
                          fmt_significance, fmt_time, has_estimate, is_relative, lower_is_better, metric_options)
from .watch import MissingTopic, consume, latest_configs

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;margin:24px auto;max-width:1180px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 2px}
.meta{color:#59636e;margin:0 0 10px}
table.overview{border-collapse:collapse;width:100%;margin:8px 0 14px}
.overview th,.overview td{padding:7px 10px;border-bottom:1px solid #d1d9e0;text-align:right;white-space:nowrap}
.overview th{background:#f6f8fa;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#444c56}
.overview th:first-child,.overview td:first-child,.overview td.mark{text-align:left}
tr.baseline td{background:#fafbfc;color:#444c56}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#e7ecf0;color:#444c56;font-size:12px}
tr.improvement td.effect,tr.improvement td.sig{color:#1a7f37;font-weight:600}
tr.regression td.effect,tr.regression td.sig{color:#cf222e;font-weight:600}
tr.improvement td:first-child{box-shadow:inset 4px 0 #2da44e}tr.regression td:first-child{box-shadow:inset 4px 0 #cf222e}
.verdict{font-size:12px;color:#59636e;font-weight:400}
.charts{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;border:1px solid #d1d9e0;border-radius:6px;padding:8px 10px}
figcaption{font-weight:600;margin-bottom:4px}
.alert{border:2px solid #cf222e;background:#ffebe9;border-radius:6px;padding:10px 14px;margin:14px 0}
.alerts li.srm{color:#cf222e;font-weight:600}
footer{color:#59636e;margin-top:36px;font-size:12px}
"""

CHART_W, CHART_H = 540, 220
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 14, 12, 34
BAND = {IMPROVEMENT: ("#2da44e", "#1a7f37"), REGRESSION: ("#cf222e", "#a40e26"), None: ("#8c959f", "#24292f")}


def _select_config(experiment_id: str, configs: Any) -> dict | None:
    """``configs``: config messages in topic order (any experiments), or a mapping of experiment
    id to its config (as ``WatchState.configs``), or None."""
    if configs is None:
        return None
    if isinstance(configs, Mapping):
        config = configs.get(experiment_id)
        return dict(config) if isinstance(config, Mapping) else None
    return latest_configs(configs).get(experiment_id)


def _series(rows: Iterable[Mapping[str, Any]], experiment_id: str) -> dict[tuple[str, str], list[dict]]:
    """(metric, variation) -> rows by interval; a row re-emitted for the same interval (allowed
    after a worker crash, with identical numbers) counts once, the last one kept."""
    by_key: dict[tuple[str, str], dict[float, dict]] = {}
    for row in rows:
        if not isinstance(row, Mapping) or row.get("experiment_id") != experiment_id:
            continue
        ts = finite(row.get("interval_timestamp"))
        metric, variation = row.get("metric"), row.get("variation_id")
        if ts is None or not isinstance(metric, str) or not isinstance(variation, str):
            continue
        by_key.setdefault((metric, variation), {})[ts] = dict(row)
    return {key: [points[ts] for ts in sorted(points)] for key, points in by_key.items()}


def _value(value: Any) -> str:
    number = finite(value)
    if number is None:
        return "n/a"
    return f"{number:,.0f}" if number.is_integer() else f"{number:,.2f}"


def _average(total: Any, units: Any, binary: bool) -> str:
    total, units = finite(total), finite(units)
    if total is None or not units:
        return "n/a"
    average = total / units
    if binary:
        return f"{average * 100:.2f}%"
    return f"{average:,.2f}" if abs(average) >= 100 else f"{average:.4f}"


def _nice_step(span: float) -> float:
    raw = span / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _y_range(lifts: list[float], lows: list[float], highs: list[float]) -> tuple[float, float]:
    """Around the lift path, the latest interval and zero, with room for the band, but not
    stretched by the (possibly huge or infinite) intervals of the first few looks."""
    finite_lows = [v for v in lows if math.isfinite(v)]
    finite_highs = [v for v in highs if math.isfinite(v)]
    core = [0.0] + [v for v in lifts if math.isfinite(v)]
    if lows and math.isfinite(lows[-1]):
        core.append(lows[-1])
    if highs and math.isfinite(highs[-1]):
        core.append(highs[-1])
    core_lo, core_hi = min(core), max(core)
    pad = max(core_hi - core_lo, 1e-9) * 0.75
    lo = max(min(finite_lows + [core_lo]), core_lo - pad)
    hi = min(max(finite_highs + [core_hi]), core_hi + pad)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    margin = (hi - lo) * 0.05
    return lo - margin, hi + margin


def lift_chart(points: Sequence[Mapping[str, Any]], relative: bool, verdict: str | None, label: str) -> str:
    """Inline SVG: the lift (line) and its always-valid interval (band) per interval."""
    scale = 100.0 if relative else 1.0
    usable = [p for p in points if has_estimate(p)]
    waiting = len(points) - len(usable)
    if not usable:
        return f'<svg class="chart" width="{CHART_W}" height="60" role="img" aria-label="{escape(label)}">' \
               f'<text x="10" y="30" fill="#59636e">no estimate yet (burn-in: too few units)</text></svg>'

    def bound(value: Any, default: float) -> float:
        number = finite(value)
        if number is not None:
            return number * scale
        raw = value if isinstance(value, float) else math.nan
        return raw if math.isinf(raw) else default  # NaN bound: treat as unbounded

    ts = [float(p["interval_timestamp"]) for p in usable]
    lifts = [float(p["lift_estimate"]) * scale for p in usable]
    lows = [bound(p.get("corrected_conf_interval_lower"), -math.inf) for p in usable]
    highs = [bound(p.get("corrected_conf_interval_upper"), math.inf) for p in usable]
    y_lo, y_hi = _y_range(lifts, lows, highs)
    plot_w, plot_h = CHART_W - MARGIN_L - MARGIN_R, CHART_H - MARGIN_T - MARGIN_B
    t0, t1 = ts[0], ts[-1]

    def x(t: float) -> float:
        return MARGIN_L + (plot_w / 2 if t1 == t0 else (t - t0) / (t1 - t0) * plot_w)

    def y(v: float) -> float:
        v = min(max(v, y_lo), y_hi)
        return MARGIN_T + (y_hi - v) / (y_hi - y_lo) * plot_h

    fill, stroke = BAND[verdict]
    unit = "%" if relative else ""
    out = [f'<svg class="chart" width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" '
           f'role="img" aria-label="{escape(label)}">',
           f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#d1d9e0"/>']
    step = _nice_step(y_hi - y_lo)
    decimals = max(0, -math.floor(math.log10(step)))
    if abs(round(step, decimals) - step) > step * 1e-6:  # steps like 2.5 need one more
        decimals += 1
    tick = math.ceil(y_lo / step) * step
    while tick <= y_hi + 1e-12:
        ty = y(tick)
        out.append(f'<line x1="{MARGIN_L}" x2="{MARGIN_L + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#eef1f4"/>')
        text = f"{tick:+.{decimals}f}{unit}" if abs(tick) > step * 1e-6 else f"0{unit}"
        out.append(f'<text x="{MARGIN_L - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="11" fill="#59636e">'
                   f'{escape(text)}</text>')
        tick += step
    band = [f"{x(t):.1f},{y(h):.1f}" for t, h in zip(ts, highs)] + \
           [f"{x(t):.1f},{y(lo):.1f}" for t, lo in zip(reversed(ts), reversed(lows))]
    if len(ts) == 1:  # a single look: a bar instead of a band
        out.append(f'<line x1="{x(ts[0]):.1f}" x2="{x(ts[0]):.1f}" y1="{y(highs[0]):.1f}" y2="{y(lows[0]):.1f}" '
                   f'stroke="{fill}" stroke-width="8" stroke-opacity="0.3"/>')
    else:
        out.append(f'<polygon points="{" ".join(band)}" fill="{fill}" fill-opacity="0.18" stroke="{fill}" '
                   f'stroke-opacity="0.45" stroke-width="1"/>')
    zero = y(0.0)
    out.append(f'<line x1="{MARGIN_L}" x2="{MARGIN_L + plot_w}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#57606a" '
               f'stroke-dasharray="4 3"/>')
    for p, t in zip(usable, ts):
        if p.get("stats_reset") is True:
            out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{MARGIN_T}" y2="{MARGIN_T + plot_h}" '
                       f'stroke="#bf8700" stroke-dasharray="2 2"><title>stats reset</title></line>')
    out.append(f'<polyline points="{" ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(ts, lifts))}" fill="none" '
               f'stroke="{stroke}" stroke-width="2"/>')
    for p, t, v in zip(usable, ts, lifts):
        tip = (f"{fmt_time(t)}: lift {fmt_effect(p.get('lift_estimate'), relative)}, CI "
               f"{fmt_interval(p.get('corrected_conf_interval_lower'), p.get('corrected_conf_interval_upper'), relative)}, "
               f"p {fmt_p(p.get('corrected_p_value'))}")
        out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{stroke}"><title>{escape(tip)}</title></circle>')
    same_day = time.gmtime(t0)[:3] == time.gmtime(t1)[:3]
    for t, anchor in ((t0, "start"), (t1, "end")) if t1 != t0 else ((t0, "middle"),):
        text = time.strftime("%H:%M" if same_day else "%m-%d %H:%M", time.gmtime(t))
        out.append(f'<text x="{x(t):.1f}" y="{CHART_H - MARGIN_B + 16}" text-anchor="{anchor}" font-size="11" '
                   f'fill="#59636e">{escape(text)}</text>')
    out.append(f'<text x="{MARGIN_L + plot_w / 2:.1f}" y="{CHART_H - 4}" text-anchor="middle" font-size="11" '
               f'fill="#59636e">interval (UTC{", " + time.strftime("%Y-%m-%d", time.gmtime(t0)) if same_day else ""}), '
               f'{len(ts)} look(s){f" after {waiting} in burn-in" if waiting else ""}</text>')
    out.append("</svg>")
    return "".join(out)


def _cells(*cells: tuple[str, str]) -> str:
    return "".join(f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>" for cls, text in cells)


def _metric_section(metric: str, series: dict[str, list[dict]], config: Mapping[str, Any] | None) -> str:
    options = metric_options(config, metric)
    lower_better = lower_is_better(config, metric)
    latest = {variation: points[-1] for variation, points in series.items()}
    newest = max(latest.values(), key=lambda r: r["interval_timestamp"])
    reference = str(newest.get("reference_variation_id") or (config or {}).get("reference_variation_id") or "control")
    relative = is_relative(newest)
    binary = options.get("is_binary") is True
    looks = len({r["interval_timestamp"] for points in series.values() for r in points})
    alpha = finite(newest.get("alpha"))
    meta = [("lower" if lower_better else "higher") + " is better",
            ("relative" if relative else "absolute") + " effect", f"{looks} interval(s)",
            f"latest {fmt_time(newest['interval_timestamp'])}"]
    if alpha is not None:
        meta.append(f"significance level {100 * (1 - alpha):g}%")
    if options.get("in_fdr_family") is False:
        meta.append("not in the FDR family")
    head = ("Variation", "", "Subjects", "Value", "Average value", "Improvement", "Confidence interval", "p-value",
            "Statistical significance")
    body = ['<tr class="baseline">' + _cells(("", reference))
            + '<td class="mark"><span class="badge">baseline</span></td>'
            + _cells(("", fmt_count(newest.get("control_unit_cumcount"))),
                     ("", _value(newest.get("control_observation_cumsum"))),
                     ("", _average(newest.get("control_observation_cumsum"), newest.get("control_unit_cumcount"), binary)),
                     ("effect", "\u2014"), ("", "\u2014"), ("", "\u2014"), ("sig", "\u2014")) + "</tr>"]
    charts = []
    for variation, row in latest.items():
        verdict = direction(row, lower_better)
        row_relative = is_relative(row)
        mark = f'<span class="verdict">{verdict}</span>' if verdict else ""
        body.append(
            f'<tr class="{verdict or "inconclusive"}">'
            + _cells(("", variation))
            + f'<td class="mark">{mark}</td>'
            + _cells(("", fmt_count(row.get("treatment_unit_cumcount"))),
                     ("", _value(row.get("treatment_observation_cumsum"))),
                     ("", _average(row.get("treatment_observation_cumsum"), row.get("treatment_unit_cumcount"), binary)),
                     ("effect", fmt_effect(row.get("lift_estimate"), row_relative) if has_estimate(row) else "n/a"),
                     ("", fmt_interval(row.get("corrected_conf_interval_lower"),
                                       row.get("corrected_conf_interval_upper"), row_relative)),
                     ("", fmt_p(row.get("corrected_p_value"))),
                     ("sig", fmt_significance(row.get("corrected_p_value"))))
            + "</tr>")
        label = f"{metric}: lift of {variation} over {reference}"
        charts.append(f"<figure><figcaption>{escape(variation)} vs {escape(reference)}"
                      f'{" · " + verdict if verdict else ""}</figcaption>'
                      f"{lift_chart(series[variation], row_relative, verdict, label)}</figure>")
    return (f'<section class="metric"><h2>{escape(metric)}</h2><p class="meta">{escape(" · ".join(meta))}</p>'
            '<table class="overview"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"
            + '<div class="charts">' + "".join(charts) + "</div></section>")


def build_report(experiment_id: str, rows: Iterable[Mapping[str, Any]], configs: Any = None, *,
                 alerts: Iterable[Mapping[str, Any]] = (), generated_at: float | None = None) -> str:
    """The HTML report of one experiment from its results rows (any order, duplicates allowed),
    its config(s) (see ``_select_config``) and optionally its alerts. Raises ValueError when the
    experiment has no results rows."""
    series = _series(rows, experiment_id)
    if not series:
        raise ValueError(f"no results rows for experiment {experiment_id!r}")
    config = _select_config(experiment_id, configs)
    config_metrics = list((config or {}).get("metrics") or {})
    metrics = list(dict.fromkeys([m for m in config_metrics if any(k[0] == m for k in series)]
                                 + [m for m, _ in series]))
    all_rows = [r for points in series.values() for r in points]
    first = min(r["interval_timestamp"] for r in all_rows)
    last = max(r["interval_timestamp"] for r in all_rows)
    alerts = [a for a in alerts if isinstance(a, Mapping) and a.get("experiment_id") == experiment_id]
    srm = [a for a in alerts if a.get("kind") == "srm"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(experiment_id)} · seqstream report</title><style>{CSS}</style></head><body>",
             f"<header><h1>Experiment {escape(experiment_id)}</h1>",
             f'<p class="meta">Always-valid results (mixture SPRT, FDR-corrected): p-values and confidence intervals '
             f"stay valid however often you look. Intervals {escape(fmt_time(first))} to {escape(fmt_time(last))}"
             + (f"; config version {escape(str(config.get('version')))}" if config else "")
             + ". Green: significant improvement; red: significant regression.</p></header>"]
    for alert in srm:
        parts.append(f'<div class="alert"><strong>Sample ratio mismatch</strong> at '
                     f'{escape(fmt_time(alert.get("interval_timestamp")))}: {escape(str(alert.get("message", "")))}. '
                     "Results may be biased: check the assignment before trusting them.</div>")
    parts.extend(_metric_section(metric, {v: pts for (m, v), pts in series.items() if m == metric}, config)
                 for metric in metrics)
    if alerts:
        parts.append('<h2>Alerts</h2><ul class="alerts">')
        for alert in alerts[-50:]:
            kind = str(alert.get("kind", ""))
            parts.append(f'<li class="{escape(kind)}">{escape(fmt_time(alert.get("interval_timestamp")))} '
                         f'<strong>{escape(kind)}</strong>: {escape(str(alert.get("message", "")))}</li>')
        parts.append("</ul>")
    footer = "Generated by seqstream" + (f" at {fmt_time(generated_at)}" if generated_at is not None else "")
    parts.append(f"<footer>{escape(footer)} from {len(all_rows)} results row(s).</footer></body></html>")
    return "\n".join(parts)


def main(args) -> int:
    settings = broker_settings("report")
    if settings is None:
        return 2
    experiment = args.experiment
    rows: list[dict] = []
    configs: list[dict] = []
    alerts: list[dict] = []
    others: set[str] = set()

    def apply(kind: str, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if message.get("experiment_id") != experiment:
            if kind == "results" and isinstance(message.get("experiment_id"), str):
                others.add(message["experiment_id"])
            return
        {"results": rows, "experiments": configs, "alerts": alerts}[kind].append(message)

    try:
        asyncio.run(consume(settings, ("experiments", "results", "alerts"), apply, idle=3.0))
    except KeyboardInterrupt:
        return 130
    except KafkaError as exc:
        print(f"seqstream report: Kafka at {settings.bootstrap}: {exc}", file=sys.stderr)
        return 1
    except MissingTopic as exc:
        print(f"seqstream report: no results for experiment {experiment!r}: topic {exc} does not exist "
              f"(no worker has run with SEQSTREAM_TOPIC_PREFIX={settings.topic_prefix!r} on {settings.bootstrap})",
              file=sys.stderr)
        return 1
    if not rows:
        hint = f" (experiments with results: {', '.join(sorted(others)[:20])})" if others else ""
        print(f"seqstream report: no results for experiment {experiment!r} on topic "
              f"{settings.topic('results')!r}{hint}", file=sys.stderr)
        return 1
    html = build_report(experiment, rows, configs, alerts=alerts, generated_at=time.time())
    try:
        Path(args.html).write_text(html, encoding="utf-8")
    except OSError as exc:
        print(f"seqstream report: cannot write {args.html}: {exc}", file=sys.stderr)
        return 1
    series = _series(rows, experiment)
    print(f"wrote {args.html}: {len({m for m, _ in series})} metric(s), {len(series)} metric x variation, "
          f"{len(rows)} results row(s)")
    return 0
