"""``seqstream watch``: a live terminal view of results and alerts (rich).

The view is a pure function of a small state: ``WatchState.apply(kind, message)`` folds messages
from the ``results``, ``experiments`` and ``alerts`` topics in (latest row per experiment, metric
and variation; latest config version per experiment; the last alerts), and ``render(state)``
returns a rich renderable. ``main(args)`` only does the Kafka reading and the screen.

Colours: a significant effect is green when it is an improvement and red when it is a regression,
where "improvement" respects the metric's ``lower_is_better`` from the experiment's config.
Numbers are written by stream_app.formatting, as on every surface.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from aiokafka.errors import KafkaError
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..formatting import (IMPROVEMENT, REGRESSION, direction, finite, fmt_count, fmt_effect, fmt_interval, fmt_p, fmt_time,
                          has_estimate, is_relative, lower_is_better)
from ..settings import Settings, broker_settings

WATCH_KINDS = ("experiments", "results", "alerts")
ALERT_LIMIT = 10

STYLES = {IMPROVEMENT: "bold green", REGRESSION: "bold red"}
ALERT_STYLES = {
    "srm": "bold white on red",
    "significance_lost": "yellow",
    "stats_reset": "cyan",
    "data_quality": "yellow",
}


def newer_config(current: Mapping[str, Any] | None, message: Any) -> bool:
    """Whether a config message replaces ``current``: as the worker does, a higher version wins and
    an older or equal one is ignored. Malformed messages never win."""
    if not isinstance(message, Mapping):
        return False
    version = message.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        return False
    if message.get("metrics") is not None and not isinstance(message.get("metrics"), Mapping):
        return False
    return current is None or version > current.get("version", -1)


def latest_configs(messages: Iterable[Any]) -> dict[str, dict]:
    """Experiment id -> its winning config, from config messages in topic order."""
    out: dict[str, dict] = {}
    for message in messages:
        if isinstance(message, Mapping) and isinstance(message.get("experiment_id"), str):
            if newer_config(out.get(message["experiment_id"]), message):
                out[message["experiment_id"]] = dict(message)
    return out


# ----------------------------------------------------------------------------------------- state
@dataclass
class WatchState:
    """What the screen shows, folded from topic messages. ``experiments`` limits it to those ids."""

    experiments: frozenset[str] | None = None
    alert_limit: int = ALERT_LIMIT
    rows: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    configs: dict[str, dict] = field(default_factory=dict)
    alerts: deque = field(default_factory=deque)
    srm: dict[str, dict] = field(default_factory=dict)  # experiment -> its (latest) SRM alert
    messages: int = 0  # messages applied, a cheap "has anything changed" counter
    status: str | None = None  # a problem to show above the tables (e.g. a missing topic)

    def __post_init__(self) -> None:
        if self.experiments is not None:
            self.experiments = frozenset(self.experiments)
        self.alerts = deque(self.alerts, maxlen=self.alert_limit)

    def wants(self, experiment: Any) -> bool:
        return isinstance(experiment, str) and (self.experiments is None or experiment in self.experiments)

    def apply(self, kind: str, message: Any) -> bool:
        """Fold one decoded message in; returns whether it was used (malformed ones are skipped)."""
        if not isinstance(message, Mapping) or not self.wants(message.get("experiment_id")):
            return False
        experiment = message["experiment_id"]
        if kind == "results":
            metric, variation = message.get("metric"), message.get("variation_id")
            ts = finite(message.get("interval_timestamp"))
            if not isinstance(metric, str) or not isinstance(variation, str) or ts is None:
                return False
            key = (experiment, metric, variation)
            previous = self.rows.get(key)
            if previous is not None and previous["interval_timestamp"] > ts:
                return False  # an older interval (re-delivered): the screen shows the latest
            self.rows[key] = dict(message)
        elif kind == "experiments":
            if not newer_config(self.configs.get(experiment), message):
                return False
            self.configs[experiment] = dict(message)
        elif kind == "alerts":
            if not isinstance(message.get("kind"), str):
                return False
            self.alerts.append(dict(message))
            if message["kind"] == "srm":
                self.srm[experiment] = dict(message)
        else:
            return False
        self.messages += 1
        return True

    def experiment_ids(self) -> list[str]:
        return sorted({e for e, _, _ in self.rows} | set(self.srm))

    def experiment_rows(self, experiment: str) -> list[dict]:
        """Latest rows of an experiment: metrics in config order (then first seen), variations
        in first-seen order."""
        rows = [row for (e, _, _), row in self.rows.items() if e == experiment]
        config_metrics = list((self.configs.get(experiment) or {}).get("metrics") or {})
        metric_order = {m: i for i, m in enumerate(dict.fromkeys(config_metrics + [r["metric"] for r in rows]))}
        variation_order = {v: i for i, v in enumerate(dict.fromkeys(r["variation_id"] for r in rows))}
        return sorted(rows, key=lambda r: (metric_order[r["metric"]], variation_order[r["variation_id"]]))


# ---------------------------------------------------------------------------------------- render
def _experiment_table(state: WatchState, experiment: str) -> Table:
    rows = state.experiment_rows(experiment)
    config = state.configs.get(experiment)
    title = Text(experiment, style="bold")
    if rows:
        latest = max(r["interval_timestamp"] for r in rows)
        references = sorted({str(r.get("reference_variation_id")) for r in rows})
        title.append(f"  vs {', '.join(references)}  ·  interval {fmt_time(latest)}", style="default")
    if config is not None:
        title.append(f"  ·  config v{config.get('version')}", style="dim")
    if experiment in state.srm:
        title.append("  SAMPLE RATIO MISMATCH", style=ALERT_STYLES["srm"])
    table = Table(title=title, title_justify="left", expand=False, header_style="bold")
    table.add_column("metric")
    table.add_column("variation")
    table.add_column("units (t / c)", justify="right")
    table.add_column("lift", justify="right")
    table.add_column("always-valid CI", justify="right")
    table.add_column("corrected p", justify="right")
    table.add_column("significance")
    if not rows:
        table.add_row(Text("no results yet", style="dim"), *[""] * 6)
        return table
    for i, row in enumerate(rows):
        metric = row["metric"]
        lower_better = lower_is_better(config, metric)
        first = i == 0 or rows[i - 1]["metric"] != metric
        last = i == len(rows) - 1 or rows[i + 1]["metric"] != metric
        relative = is_relative(row)
        verdict = direction(row, lower_better)
        if verdict is not None:
            significance = Text(verdict, style=STYLES[verdict])
        elif row.get("rejected") is True:
            significance = Text("significant", style="bold")
        else:
            significance = Text("not significant", style="dim")
        metric_cell = Text(metric + (" (lower is better)" if lower_better else ""), style="bold") if first else Text("")
        table.add_row(
            metric_cell,
            Text(row["variation_id"]),
            Text(f"{fmt_count(row.get('treatment_unit_cumcount'))} / {fmt_count(row.get('control_unit_cumcount'))}"),
            Text(fmt_effect(row.get("lift_estimate"), relative)) if has_estimate(row) else Text("burn-in", style="dim"),
            Text(fmt_interval(row.get("corrected_conf_interval_lower"), row.get("corrected_conf_interval_upper"), relative)),
            Text(fmt_p(row.get("corrected_p_value"))),
            significance,
            style=STYLES.get(verdict, ""),
            end_section=last,
        )
    return table


def _alert_style(alert: Mapping[str, Any]) -> str:
    if alert.get("kind") == "significance_reached":
        details = alert.get("details") or {}
        return STYLES.get(details.get("direction") if isinstance(details, Mapping) else None, "bold")
    return ALERT_STYLES.get(alert.get("kind"), "")


def _alerts_table(state: WatchState) -> Table:
    table = Table(title=Text(f"latest alerts (up to {state.alert_limit})", style="bold"), title_justify="left",
                  header_style="bold")
    table.add_column("interval")
    table.add_column("experiment")
    table.add_column("kind")
    table.add_column("message")
    for alert in reversed(state.alerts):  # newest first
        kind = alert.get("kind", "?")
        table.add_row(Text(fmt_time(alert.get("interval_timestamp"))), Text(str(alert.get("experiment_id"))),
                      Text("SRM" if kind == "srm" else kind), Text(str(alert.get("message", ""))),
                      style=_alert_style(alert))
    if not state.alerts:
        table.add_row(Text("none", style="dim"), "", "", "")
    return table


def render(state: WatchState) -> RenderableType:
    """The whole screen for a state (pure: no clock, no I/O)."""
    experiments = state.experiment_ids()
    header = Text("seqstream watch", style="bold")
    header.append(f"  ·  {len(experiments)} experiment(s)  ·  {len(state.rows)} metric x variation  ·  "
                  "green: significant improvement, red: significant regression", style="dim")
    parts: list[RenderableType] = [header]
    if state.status:
        parts.append(Text(state.status, style="bold yellow"))
    if not experiments:
        scope = f" for {', '.join(sorted(state.experiments))}" if state.experiments else ""
        parts.append(Text(f"waiting for results{scope}...", style="dim"))
    parts.extend(_experiment_table(state, experiment) for experiment in experiments)
    parts.append(_alerts_table(state))
    return Group(*parts)


# ------------------------------------------------------------------------------------------ I/O
class MissingTopic(Exception):
    """A topic the command needs does not exist (no worker has created it, or the wrong prefix)."""


async def existing_kinds(settings: Settings, kinds: Sequence[str]) -> list[str]:
    """The kinds whose topics exist (an all-topics metadata request: never auto-creates one)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        topics = await consumer.topics()
    finally:
        await consumer.stop()
    return [kind for kind in kinds if settings.topic(kind) in topics]


async def consume(settings: Settings, kinds: Sequence[str], apply: Callable[[str, Any], Any], *,
                  idle: float | None = None, stop: asyncio.Event | None = None, require: str = "results") -> int:
    """Feed every message of the topics, from the beginning, to ``apply(kind, message)``; with
    ``idle``, stop once no message has arrived for that many seconds. Returns the count. Topics
    that do not exist are skipped; raises MissingTopic if ``require``'s does not."""
    from ..kafka.clients import follow

    kinds = await existing_kinds(settings, kinds)
    if require not in kinds:
        raise MissingTopic(settings.topic(require))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    last = loop.time()
    count = 0

    async def watchdog() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if loop.time() - last >= idle:
                stop.set()

    task = asyncio.create_task(watchdog()) if idle is not None else None
    try:
        async for kind, message in follow(settings, list(kinds), from_beginning=True, stop=stop):
            last = loop.time()
            count += 1
            apply(kind, message)
    finally:
        if task is not None:
            task.cancel()
    return count


def _console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # piped or redirected: do not squeeze the tables into 80 columns
    return console


async def _live(settings: Settings, state: WatchState, refresh: float, console: Console) -> None:
    from rich.live import Live

    with Live(render(state), console=console, auto_refresh=False) as live:
        async def painter() -> None:
            shown = -1
            while True:
                if state.messages != shown:
                    shown = state.messages
                    live.update(render(state), refresh=True)
                await asyncio.sleep(refresh)

        task = asyncio.create_task(painter())
        try:
            while True:
                try:
                    await consume(settings, WATCH_KINDS, state.apply)
                    return
                except MissingTopic as exc:  # a worker may create the topics later
                    state.status = f"topic {exc} does not exist yet: is a worker running with this SEQSTREAM_TOPIC_PREFIX?"
                    state.messages += 1
                    await asyncio.sleep(max(refresh, 2.0))
                    state.status = None
        finally:
            task.cancel()


def main(args) -> int:
    settings = broker_settings("watch")
    if settings is None:
        return 2
    state = WatchState(experiments=frozenset(args.experiment) if getattr(args, "experiment", None) else None)
    console = _console()
    try:
        if getattr(args, "once", False):
            try:
                asyncio.run(consume(settings, WATCH_KINDS, state.apply, idle=3.0))
            except MissingTopic as exc:
                print(f"seqstream watch: topic {exc} does not exist (no worker has run with "
                      f"SEQSTREAM_TOPIC_PREFIX={settings.topic_prefix!r} on {settings.bootstrap})", file=sys.stderr)
                return 1
            console.print(render(state))
            return 0
        refresh = float(getattr(args, "refresh", 1.0) or 1.0)
        if refresh <= 0:
            print("seqstream watch: --refresh must be positive", file=sys.stderr)
            return 2
        asyncio.run(_live(settings, state, refresh, console))
    except KafkaError as exc:
        print(f"seqstream watch: Kafka at {settings.bootstrap}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
