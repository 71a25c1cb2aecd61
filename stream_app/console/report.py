"""``seqstream report --experiment ID --html FILE``: one self-contained HTML report.

Per metric, an overview table in the style of Optimizely's Stats Engine results page (the
reference variation marked "baseline", then each variation with its subjects, total value,
average value, improvement, always-valid confidence interval, corrected p-value and statistical
significance, and a plain-language verdict), and per variation an inline SVG chart of the lift and
its always-valid interval over the experiment's intervals, with stats resets and config epochs
marked and each look coloured by its own state. Health comes first: a banner for a sample ratio
mismatch (every result flagged), guardrail harm, regressions and dead-lettered input; guardrail
metrics (out of the FDR family) have their own section. Numbers, states and verdicts are those
of every surface (stream_app.formatting, stream_app.health). No scripts, fonts, images or style
sheets are fetched: the file opens anywhere, offline.

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
from ..formatting import (CLIP_NOTE, IMPROVEMENT, REGRESSION, finite, fmt_time, has_estimate, is_relative, lower_is_better,
                          metric_options)
from ..health import BURN_IN, HARM, SRM_WARNING, experiment_health, is_guardrail, results_table, row_display
from ..recent import DeadLetters, deadletter_experiment
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
.banner{border-radius:6px;padding:12px 16px;margin:14px 0;font-size:15px}
.banner.srm{background:#cf222e;color:#fff;font-weight:600}.banner.harm{background:#ffebe9;color:#cf222e;border:1px solid #ffcecb}
.banner.dead{background:#fff8c5;color:#7d4e00;border:1px solid #eed888}.banner.ok{background:#dafbe1;color:#1a7f37}
.banner ul{margin:4px 0 0 18px;padding:0}
tr.harm td.effect,tr.harm td.sig{color:#cf222e;font-weight:600}tr.harm td:first-child{box-shadow:inset 4px 0 #cf222e}
tr.burn_in td.effect{color:#59636e}
.note{color:#59636e;font-size:12px}
.overview td.verdict{white-space:normal;text-align:left;min-width:170px;font-size:13px;color:#444c56}
.overview th{white-space:normal;vertical-align:bottom}.overview th:last-child{text-align:left}.overview th,.overview td{padding:7px 8px}
.wrap{overflow-x:auto}
.alerts li.srm{color:#cf222e;font-weight:600}
footer{color:#59636e;margin-top:36px;font-size:12px}
"""

CHART_W, CHART_H = 540, 220
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 58, 14, 12, 34
BAND = {IMPROVEMENT: ("#2da44e", "#1a7f37"), REGRESSION: ("#cf222e", "#a40e26"), None: ("#8c959f", "#24292f")}
POINT = {IMPROVEMENT: "#1a7f37", REGRESSION: "#cf222e", HARM: "#cf222e"}  # else the neutral stroke


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


def lift_chart(points: Sequence[Mapping[str, Any]], relative: bool, verdict: str | None, label: str,
               config: Mapping[str, Any] | None = None) -> str:
    """Inline SVG: the lift (line) and its always-valid interval (band) per interval, each look's
    dot in the colour of its own state, stats resets (amber, dashed) and config epochs (purple)
    marked."""
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
    epoch = usable[0].get("epoch")
    for p, t in zip(usable, ts):
        if p.get("stats_reset") is True:
            out.append(f'<line class="reset" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{MARGIN_T}" y2="{MARGIN_T + plot_h}" '
                       f'stroke="#bf8700" stroke-width="1.5" stroke-dasharray="3 2"><title>stats reset at {escape(fmt_time(t))}'
                       f'</title></line><text x="{x(t):.1f}" y="{MARGIN_T + 10}" text-anchor="middle" font-size="10" '
                       f'fill="#bf8700">reset</text>')
        if p.get("epoch") is not None and p.get("epoch") != epoch:
            epoch = p.get("epoch")
            out.append(f'<line class="epoch" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{MARGIN_T}" y2="{MARGIN_T + plot_h}" '
                       f'stroke="#8250df" stroke-width="1.5"><title>config epoch {escape(str(epoch))} from '
                       f'{escape(fmt_time(t))}</title></line>')
    out.append(f'<polyline points="{" ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(ts, lifts))}" fill="none" '
               f'stroke="{stroke}" stroke-width="2"/>')
    for p, t, v in zip(usable, ts, lifts):
        shown = row_display(p, config)
        tip = f"{fmt_time(t)}: lift {shown['lift']}, CI {shown['ci']}, corrected p {shown['p']}"
        colour = POINT.get(shown["state"], BAND[None][1])
        out.append(f'<circle class="pt {shown["state"]}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}">'
                   f'<title>{escape(tip)}</title></circle>')
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


def _metric_section(metric: str, series: dict[str, list[dict]], config: Mapping[str, Any] | None, srm: bool) -> str:
    options = metric_options(config, metric)
    lower_better = lower_is_better(config, metric)
    latest = {variation: points[-1] for variation, points in series.items()}
    newest = max(latest.values(), key=lambda r: r["interval_timestamp"])
    (table,) = results_table(list(latest.values()), config, srm)
    reference = table.reference_variation_id
    relative = is_relative(newest)
    looks = len({r["interval_timestamp"] for points in series.values() for r in points})
    alpha = finite(newest.get("alpha"))
    meta = [("lower" if lower_better else "higher") + " is better",
            ("relative" if relative else "absolute") + " effect", f"{looks} interval(s)",
            f"latest {fmt_time(newest['interval_timestamp'])}"]
    if alpha is not None:
        meta.append(f"significance level {100 * (1 - alpha):g}%")
    if options.get("in_fdr_family") is False:
        meta.append("guardrail: not in the FDR family, judged on harm only")
    head = ("Variation", "", "Subjects", "Value", "Average value", "Improvement", "Confidence interval", "p-value",
            "Statistical significance", "Verdict")
    body = ['<tr class="baseline">' + _cells(("", reference))
            + '<td class="mark"><span class="badge">baseline</span></td>'
            + _cells(("", table.baseline["units"]),
                     ("", _value(newest.get("control_observation_cumsum"))),
                     ("", table.baseline["value"]),
                     ("effect", "\u2014"), ("", "\u2014"), ("", "\u2014"), ("sig", "\u2014"), ("verdict", "reference arm")) + "</tr>"]
    charts = []
    for shown in table.rows:
        variation = shown["variation_id"]
        row = latest[variation]
        state = shown["state"]
        verdict = {IMPROVEMENT: IMPROVEMENT, REGRESSION: REGRESSION, HARM: REGRESSION}.get(state)
        word = {HARM: "harm", BURN_IN: "burn-in"}.get(state, verdict)
        mark = f'<span class="verdict">{word}</span>' if word else ""
        body.append(
            f'<tr class="{verdict or "inconclusive"}{" harm" if state == HARM else ""}{" burn_in" if state == BURN_IN else ""}">'
            + _cells(("", variation))
            + f'<td class="mark">{mark}</td>'
            + _cells(("", shown["units"]),
                     ("", _value(row.get("treatment_observation_cumsum"))),
                     ("", shown["value"]),
                     ("effect", shown["lift"]), ("", shown["ci"]), ("", shown["p"]), ("sig", shown["significance"]),
                     ("verdict", shown["verdict"]))
            + "</tr>")
        label = f"{metric}: lift of {variation} over {reference}"
        charts.append(f"<figure><figcaption>{escape(variation)} vs {escape(reference)}"
                      f'{" · " + word if word else ""}</figcaption>'
                      f"{lift_chart(series[variation], is_relative(row), verdict, label, config)}</figure>")
    clip = f'<p class="note">{escape(CLIP_NOTE)}</p>' if any(r["ci_clipped"] for r in table.rows) else ""
    return (f'<section class="metric"><h2>{escape(metric)}</h2><p class="meta">{escape(" · ".join(meta))}</p>'
            '<div class="wrap"><table class="overview"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>" + clip
            + '<div class="charts">' + "".join(charts) + "</div></section>")


def _banners(health: Mapping[str, Any], dead: Mapping[str, Any], srm: Sequence[Mapping[str, Any]]) -> list[str]:
    """Health first: SRM, harm and regressions, dead-lettered input; or that all is well."""
    out = []
    if health["srm"]:
        when = "; ".join(f"{fmt_time(a.get('interval_timestamp'))}: {a.get('message', '')}" for a in srm[-3:])
        out.append(f'<div class="banner srm alert" role="alert">{escape(SRM_WARNING)}'
                   f'{"<br><small>" + escape(when) + "</small>" if when else ""}</div>')
    problems = []
    if health["guardrail_harms"]:
        problems.append(f"{health['guardrail_harms']} guardrail metric x variation(s) significantly harmed")
    if health["regressions"]:
        problems.append(f"{health['regressions']} significant regression(s)")
    if problems:
        out.append(f'<div class="banner harm">{escape(" and ".join(problems))}: see the tables below.</div>')
    if dead.get("count"):
        late = f" ({dead['late']} too late for their interval)" if dead.get("late") else ""
        reasons = "".join(f"<li>{escape(str(r))}</li>" for r in reversed(list(dead.get("reasons", ()))))
        out.append(f'<div class="banner dead"><strong>{dead["count"]} input message(s) dead-lettered{escape(late)}</strong>: '
                   f"these results do not include them. Latest reasons:<ul>{reasons}</ul></div>")
    if not out:
        out.append(f'<div class="banner ok">Health: no sample ratio mismatch, no regression or guardrail harm, '
                   f'no dead-lettered input. Status: {escape(health["status_label"])}.</div>')
    return out


def build_report(experiment_id: str, rows: Iterable[Mapping[str, Any]], configs: Any = None, *,
                 alerts: Iterable[Mapping[str, Any]] = (), dead_letters: Mapping[str, Any] | None = None,
                 generated_at: float | None = None) -> str:
    """The HTML report of one experiment from its results rows (any order, duplicates allowed),
    its config(s) (see ``_select_config``), optionally its alerts and its dead-letter tally
    (``{"count", "late", "reasons"}``, stream_app.recent.DeadLetterTally.to_dict). Raises
    ValueError when the experiment has no results rows."""
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
    alerts = sorted((a for a in alerts if isinstance(a, Mapping) and a.get("experiment_id") == experiment_id),
                    key=lambda a: finite(a.get("interval_timestamp")) or 0.0)
    srm = [a for a in alerts if a.get("kind") == "srm"]
    latest_rows = [points[-1] for points in series.values()]
    dead = dict(dead_letters or {})
    health = experiment_health(experiment_id, latest_rows, config, srm=bool(srm), alerts=alerts, dead_letters=dead)
    goals = [m for m in metrics if not is_guardrail(config, m)]
    guardrails = [m for m in metrics if is_guardrail(config, m)]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(experiment_id)} · seqstream report</title><style>{CSS}</style></head><body>",
             f"<header><h1>Experiment {escape(experiment_id)}</h1>",
             f'<p class="meta">Always-valid results (mixture SPRT, FDR-corrected): p-values and confidence intervals '
             f"stay valid however often you look. Intervals {escape(fmt_time(first))} to {escape(fmt_time(last))}"
             + (f"; config version {escape(str(config.get('version')))}" if config else "")
             + ". Green: significant improvement; red: significant regression.</p></header>"]
    parts.extend(_banners(health, dead, srm))

    def section(metric: str) -> str:
        return _metric_section(metric, {v: pts for (m, v), pts in series.items() if m == metric}, config, bool(srm))

    parts.extend(section(metric) for metric in goals)
    if guardrails:
        parts.append('<h2 class="group">Guardrail metrics</h2><p class="meta">Metrics this experiment must not harm: '
                     "outside the FDR family, judged on harm only (a significant move in the wrong direction).</p>")
        parts.extend(section(metric) for metric in guardrails)
    if alerts:
        parts.append('<h2>Alerts</h2><ul class="alerts">')
        for alert in reversed(alerts[-50:]):  # newest first
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
    dead = DeadLetters()
    others: set[str] = set()

    def apply(kind: str, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if kind == "deadletter":  # keyed by experiment, without an experiment_id field
            if deadletter_experiment(message.get("key")) == experiment:
                dead.add(experiment, message)
            return
        if message.get("experiment_id") != experiment:
            if kind == "results" and isinstance(message.get("experiment_id"), str):
                others.add(message["experiment_id"])
            return
        {"results": rows, "experiments": configs, "alerts": alerts}[kind].append(message)

    try:
        asyncio.run(consume(settings, ("experiments", "results", "alerts", "deadletter"), apply, idle=3.0))
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
    html = build_report(experiment, rows, configs, alerts=alerts, dead_letters=dead.get(experiment).to_dict(),
                        generated_at=time.time())
    try:
        Path(args.html).write_text(html, encoding="utf-8")
    except OSError as exc:
        print(f"seqstream report: cannot write {args.html}: {exc}", file=sys.stderr)
        return 1
    series = _series(rows, experiment)
    print(f"wrote {args.html}: {len({m for m, _ in series})} metric(s), {len(series)} metric x variation, "
          f"{len(rows)} results row(s)")
    return 0
