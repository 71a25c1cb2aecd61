"""``seqstream watch``: a live terminal view of results and alerts (rich).

The view is a pure function of a small state: ``WatchState.apply(kind, message)`` folds messages
from the ``results``, ``experiments``, ``alerts`` and ``deadletter`` topics in (latest row per
experiment, metric and variation; latest config version per experiment; the last alerts by time;
a dead-letter tally per experiment), and ``render(state, width, height, page)`` returns a rich
renderable: experiments most urgent first (stream_app.health: SRM, guardrail harm, regressions,
dead letters, ...), as many as fit the screen per page, a compact table below 100 columns that
keeps variation names whole, and ``summary=True`` one line per experiment.
``main(args)`` only does the Kafka reading, the screen and the paging (pages turn every
``--page-seconds``; n / p or space turn them by hand).

Colours: a significant effect is green when it is an improvement and red when it is a regression,
where "improvement" respects the metric's ``lower_is_better`` from the experiment's config.
Numbers are written by stream_app.formatting, as on every surface.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from aiokafka.errors import KafkaError
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..formatting import IMPROVEMENT, REGRESSION, finite, fmt_time, lower_is_better
from ..health import BURN_IN, HARM, NO_HARM, by_urgency, experiment_health, row_display
from ..recent import DeadLetters, deadletter_experiment
from ..settings import Settings, broker_settings

WATCH_KINDS = ("experiments", "results", "alerts", "deadletter")
ALERT_LIMIT = 10
COMPACT_BELOW = 100  # columns: a narrower screen gets the compact table

STYLES = {IMPROVEMENT: "bold green", REGRESSION: "bold red", HARM: "bold red"}
STATE_TEXT = {IMPROVEMENT: "improvement", REGRESSION: "regression", HARM: "harm", NO_HARM: "no harm",
              BURN_IN: "burn-in", "inconclusive": "not significant"}
STATUS_STYLES = {"srm": "bold white on red", "harm": "bold red", "regression": "bold red", "dead_letters": "yellow",
                 "winner": "bold green", "burn_in": "cyan", "running": "default", "waiting": "dim"}
ALERT_STYLES = {
    "srm": "bold white on red",
    "significance_lost": "yellow",
    "stats_reset": "cyan",
    "data_quality": "yellow",
    "effect_changed": "yellow",
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
    alerts: list = field(default_factory=list)  # the latest ``alert_limit`` by interval time, oldest first
    srm: dict[str, dict] = field(default_factory=dict)  # experiment -> its (latest) SRM alert
    resets: dict[str, int] = field(default_factory=dict)  # experiment -> stats_reset alerts
    dead_letters: DeadLetters = field(default_factory=DeadLetters)
    # experiment -> its keys of ``rows``, so a screen of many experiments is not quadratic
    by_experiment: dict[str, dict[tuple[str, str, str], None]] = field(default_factory=dict)
    messages: int = 0  # messages applied, a cheap "has anything changed" counter
    status: str | None = None  # a problem to show above the tables (e.g. a missing topic)

    def __post_init__(self) -> None:
        if self.experiments is not None:
            self.experiments = frozenset(self.experiments)
        self.alerts = sorted(self.alerts, key=_alert_time)[-self.alert_limit:]

    def wants(self, experiment: Any) -> bool:
        return isinstance(experiment, str) and (self.experiments is None or experiment in self.experiments)

    def apply(self, kind: str, message: Any) -> bool:
        """Fold one decoded message in; returns whether it was used (malformed ones are skipped)."""
        if kind == "deadletter" and isinstance(message, Mapping):  # keyed by experiment; no experiment_id
            experiment = deadletter_experiment(message.get("key"))
            if experiment is None or not self.wants(experiment):
                return False
            self.dead_letters.add(experiment, message)
            self.messages += 1
            return True
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
            self.by_experiment.setdefault(experiment, {})[key] = None
        elif kind == "experiments":
            if not newer_config(self.configs.get(experiment), message):
                return False
            self.configs[experiment] = dict(message)
        elif kind == "alerts":
            if not isinstance(message.get("kind"), str):
                return False
            # Alerts come in partition order; the screen shows the latest by interval time.
            bisect.insort(self.alerts, dict(message), key=_alert_time)
            del self.alerts[:-self.alert_limit]
            if message["kind"] == "srm":
                self.srm[experiment] = dict(message)
            elif message["kind"] == "stats_reset":
                self.resets[experiment] = self.resets.get(experiment, 0) + 1
        else:
            return False
        self.messages += 1
        return True

    def experiment_ids(self) -> list[str]:
        """Most urgent first (stream_app.health.by_urgency), so a problem is never below the fold."""
        names = sorted(set(self.by_experiment) | set(self.srm))
        return [h["experiment_id"] for h in by_urgency(self.health(e) for e in names)]

    def health(self, experiment: str) -> dict:
        rows = self.experiment_rows(experiment)
        alerts = [{"kind": "stats_reset"}] * self.resets.get(experiment, 0)
        return experiment_health(experiment, rows, self.configs.get(experiment), srm=experiment in self.srm,
                                 alerts=alerts, dead_letters=self.dead_letters.get(experiment).to_dict())

    def experiment_rows(self, experiment: str) -> list[dict]:
        """Latest rows of an experiment: metrics in config order (then first seen), variations
        in first-seen order."""
        rows = [self.rows[key] for key in self.by_experiment.get(experiment, ())]
        config_metrics = list((self.configs.get(experiment) or {}).get("metrics") or {})
        metric_order = {m: i for i, m in enumerate(dict.fromkeys(config_metrics + [r["metric"] for r in rows]))}
        variation_order = {v: i for i, v in enumerate(dict.fromkeys(r["variation_id"] for r in rows))}
        return sorted(rows, key=lambda r: (metric_order[r["metric"]], variation_order[r["variation_id"]]))


# ---------------------------------------------------------------------------------------- render
def _alert_time(alert: Mapping[str, Any]) -> float:
    return finite(alert.get("interval_timestamp")) or 0.0


def _title(state: WatchState, experiment: str, rows: list[dict], health: dict) -> Text:
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
        title.append(" results may be biased", style="bold red")
    elif health["status"] not in ("running", "waiting"):
        title.append(f"  {health['status_label']}", style=STATUS_STYLES.get(health["status"], ""))
    if health["stats_resets"]:
        title.append(f"  ·  {health['stats_resets']} stats reset(s)", style="cyan")
    dead = state.dead_letters.get(experiment)
    if dead.count:
        late = f", {dead.late} too late" if dead.late else ""
        title.append(f"\n{dead.count} dead-lettered{late}, not in these results; latest: {dead.reasons[-1]}", style="yellow")
    return title


def _significance(shown: Mapping[str, Any], srm: bool) -> Text:
    verdict = shown["state"]
    text = Text(STATE_TEXT.get(verdict, verdict), style=STYLES.get(verdict, "dim"))
    if verdict == BURN_IN:
        text.append(f" {shown['burn_in']['percent']}%", style="dim")
    if srm:
        text.append(" SRM!", style=ALERT_STYLES["srm"])
    return text


def _metric_label(config: Mapping[str, Any] | None, metric: str, guardrail: bool) -> str:
    return metric + (" (lower is better)" if lower_is_better(config, metric) else "") + (" (guardrail)" if guardrail else "")


def _experiment_table(state: WatchState, experiment: str, width: int | None = None) -> RenderableType:
    """The experiment's latest rows, metrics in config order. Below COMPACT_BELOW columns each
    metric is a heading over its own small table, without the units column, and the variation
    column is never narrower than its longest name, so variations such as message_1 and
    message_2 stay distinct."""
    rows = state.experiment_rows(experiment)
    config = state.configs.get(experiment)
    health = state.health(experiment)
    srm = experiment in state.srm
    title = _title(state, experiment, rows, health)
    if width is not None and width < COMPACT_BELOW:
        return _compact(title, rows, config, srm)
    table = Table(title=title, title_justify="left", expand=False, header_style="bold")
    table.add_column("metric")
    table.add_column("variation", no_wrap=True)
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
        shown = row_display(row, config, srm)
        first = i == 0 or rows[i - 1]["metric"] != metric
        last = i == len(rows) - 1 or rows[i + 1]["metric"] != metric
        table.add_row(
            Text(_metric_label(config, metric, shown["guardrail"]), style="bold") if first else Text(""),
            Text(row["variation_id"]), Text(f"{shown['units']} / {shown['control_units']}"),
            Text(shown["lift"], style="dim" if shown["state"] == BURN_IN else ""), Text(shown["ci"]), Text(shown["p"]),
            _significance(shown, srm), style=STYLES.get(shown["state"], ""), end_section=last)
    return table


def _compact(title: Text, rows: list[dict], config: Mapping[str, Any] | None, srm: bool) -> RenderableType:
    parts: list[RenderableType] = [title]
    if not rows:
        parts.append(Text("no results yet", style="dim"))
    longest = max((len(r["variation_id"]) for r in rows), default=9)
    by_metric: dict[str, list[dict]] = {}
    for row in rows:
        by_metric.setdefault(row["metric"], []).append(row)
    for n, (metric, metric_rows) in enumerate(by_metric.items()):
        # Same fixed widths in every metric's table, so their columns line up under one header.
        table = Table(box=None, show_header=n == 0, header_style="bold underline", pad_edge=False, padding=(0, 1))
        table.add_column("variation", no_wrap=True, width=max(longest, 9))
        table.add_column("lift", justify="right", no_wrap=True, width=8)
        table.add_column("always-valid CI", justify="right", no_wrap=True, width=20)
        table.add_column("corr. p", justify="right", no_wrap=True, width=7)
        table.add_column("significance", overflow="fold", min_width=12)
        shown_rows = [row_display(r, config, srm) for r in metric_rows]
        parts.append(Text(_metric_label(config, metric, shown_rows[0]["guardrail"]), style="bold underline"))
        for row, shown in zip(metric_rows, shown_rows):
            table.add_row(Text(row["variation_id"]), Text(shown["lift"], style="dim" if shown["state"] == BURN_IN else ""),
                          Text(shown["ci"]), Text(shown["p"]), _significance(shown, srm),
                          style=STYLES.get(shown["state"], ""))
        parts.append(table)
    parts.append(Text(""))
    return Group(*parts)


def _alert_style(alert: Mapping[str, Any]) -> str:
    if alert.get("kind") == "significance_reached":
        details = alert.get("details") or {}
        return STYLES.get(details.get("direction") if isinstance(details, Mapping) else None, "bold")
    return ALERT_STYLES.get(alert.get("kind"), "")


def _alerts_table(state: WatchState) -> Table:
    table = Table(title=Text(f"latest alerts (up to {state.alert_limit}, newest first)", style="bold"),
                  title_justify="left", header_style="bold")
    table.add_column("interval", no_wrap=True)
    table.add_column("experiment")
    table.add_column("kind")
    table.add_column("message", overflow="fold")
    for alert in sorted(state.alerts, key=_alert_time, reverse=True):  # newest first, by interval time
        kind = alert.get("kind", "?")
        table.add_row(Text(fmt_time(alert.get("interval_timestamp"))), Text(str(alert.get("experiment_id"))),
                      Text("SRM" if kind == "srm" else kind), Text(str(alert.get("message", ""))),
                      style=_alert_style(alert))
    if not state.alerts:
        table.add_row(Text("none", style="dim"), "", "", "")
    return table


def render_summary(state: WatchState, experiments: Sequence[str] | None = None, title: str = "") -> Table:
    """One line per experiment (all, or ``experiments``), most urgent first."""
    table = Table(title=Text(f"experiments, most urgent first{title}", style="bold"), title_justify="left",
                  header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("status", no_wrap=True)
    table.add_column("experiment", overflow="fold")
    table.add_column("wins", justify="right")
    table.add_column("regr.", justify="right")
    table.add_column("harm", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("last interval", no_wrap=True)
    for experiment in state.experiment_ids() if experiments is None else experiments:
        h = state.health(experiment)
        status = {"srm": "SRM", "burn_in": "burn-in", "dead_letters": "dead letters"}.get(h["status"], h["status"])
        if h["burn_in"] and h["burn_in_progress"]:
            status += f" {h['burn_in_progress']['percent']}%"
        table.add_row(Text(status, style=STATUS_STYLES.get(h["status"], "")), experiment, str(h["wins"]),
                      str(h["regressions"]), str(h["guardrail_harms"]), str(h["dead_letters"]),
                      fmt_time(h["last_interval"], with_date=False))
    return table


class Page(NamedTuple):
    experiments: list[str]
    number: int  # from 0
    count: int


def paginate(state: WatchState, width: int, height: int, page: int, console: Console | None = None) -> Page:
    """The experiments of page ``page`` (modulo the page count): as many tables as fit in
    ``height`` lines, most urgent first, at least one per page."""
    console = console or Console(width=width, file=io.StringIO())
    options: ConsoleOptions = console.options.update(width=width)
    budget = max(height - 3 - len(render_lines(console, _alerts_table(state), options)), 6)
    pages: list[list[str]] = [[]]
    used = 0
    for experiment in state.experiment_ids():
        lines = len(render_lines(console, _experiment_table(state, experiment, width), options))
        if pages[-1] and used + lines > budget:
            pages.append([])
            used = 0
        pages[-1].append(experiment)
        used += lines
    number = page % len(pages)
    return Page(pages[number], number, len(pages))


def render_lines(console: Console, renderable: RenderableType, options: ConsoleOptions) -> list:
    return console.render_lines(renderable, options, pad=False)


def render(state: WatchState, width: int | None = None, height: int | None = None, page: int = 0,
           summary: bool = False) -> RenderableType:
    """The whole screen for a state (pure: no clock, no I/O). ``width`` picks the compact table
    below COMPACT_BELOW columns; with ``height`` too, only page ``page`` of the experiments."""
    experiments = state.experiment_ids()
    header = Text("seqstream watch", style="bold")
    header.append(f"  ·  {len(experiments)} experiment(s)  ·  {len(state.rows)} metric x variation  ·  "
                  "green: significant improvement, red: significant regression or harm", style="dim")
    parts: list[RenderableType] = [header]
    if state.status:
        parts.append(Text(state.status, style="bold yellow"))
    if not experiments:
        scope = f" for {', '.join(sorted(state.experiments))}" if state.experiments else ""
        parts.append(Text(f"waiting for results{scope}...", style="dim"))
    if summary:
        if height is None:
            parts.append(render_summary(state))
        else:  # a page of lines: what fits above the alerts
            per_page = max(height - 24, 5)
            pages = max(1, -(-len(experiments) // per_page))
            number = page % pages
            shown = experiments[number * per_page:(number + 1) * per_page]
            parts.append(render_summary(state, shown, f" (page {number + 1} of {pages})" if pages > 1 else ""))
    else:
        shown = experiments
        if width is not None and height is not None and experiments:
            current = paginate(state, width, height, page)
            shown = current.experiments
            if current.count > 1:
                parts.append(Text(f"page {current.number + 1} of {current.count} (n / p to turn, or wait)", style="bold"))
        parts.extend(_experiment_table(state, experiment, width) for experiment in shown)
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


class Pager:
    """Which page the live screen shows: it turns every ``seconds``, and on n / space (next) or
    p (previous) typed on the terminal."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.page = 0
        self.turned = 0.0  # loop time of the last turn

    def tick(self, now: float) -> bool:
        if self.seconds > 0 and now - self.turned >= self.seconds:
            self.turn(1, now)
            return True
        return False

    def turn(self, step: int, now: float) -> None:
        self.page += step
        self.turned = now


def _keys(pager: Pager, changed: Callable[[], None]) -> Callable[[], None]:
    """Read n / p / space from a terminal stdin without echo; returns the undo. A no-op when
    stdin is not a terminal."""
    if not sys.stdin.isatty():
        return lambda: None
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    loop = asyncio.get_running_loop()

    def read() -> None:
        key = os.read(fd, 1)
        if key in (b"n", b" ", b"p"):
            pager.turn(-1 if key == b"p" else 1, loop.time())
            changed()

    loop.add_reader(fd, read)

    def undo() -> None:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return undo


async def _live(settings: Settings, state: WatchState, refresh: float, console: Console, summary: bool = False,
                page_seconds: float = 8.0) -> None:
    from rich.live import Live

    pager = Pager(page_seconds)
    loop = asyncio.get_running_loop()

    def screen() -> RenderableType:
        return render(state, console.width, console.height, pager.page, summary=summary)

    with Live(screen(), console=console, auto_refresh=False, vertical_overflow="crop") as live:
        dirty = [True]
        undo = _keys(pager, lambda: dirty.__setitem__(0, True))

        async def painter() -> None:
            shown = -1
            pager.turned = loop.time()
            while True:
                if pager.tick(loop.time()) or state.messages != shown or dirty[0]:
                    shown, dirty[0] = state.messages, False
                    live.update(screen(), refresh=True)
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
            undo()


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
            console.print(render(state, console.width, summary=getattr(args, "summary", False)))
            return 0
        refresh = float(getattr(args, "refresh", 1.0) or 1.0)
        if refresh <= 0:
            print("seqstream watch: --refresh must be positive", file=sys.stderr)
            return 2
        asyncio.run(_live(settings, state, refresh, console, summary=getattr(args, "summary", False),
                          page_seconds=float(getattr(args, "page_seconds", 8.0) or 0.0)))
    except KafkaError as exc:
        print(f"seqstream watch: Kafka at {settings.bootstrap}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
