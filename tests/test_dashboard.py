"""The live dashboard end to end: a worker on the real broker, simulated traffic with a real effect,
the page rendered by headless Chromium (Debian's chromium package, installed by .ci/run).

The expected significance of every row comes from ``state.evaluate`` on the same data, so the page
is checked against the engine, not against numbers copied into the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from state import evaluate
from state.simulate import ExperimentSpec, MetricSpec, simulate
from stream_app.kafka.embedded_broker import free_port
from stream_app.kafka.partitions import partition_for
from tests.stream_support import (collect, config_messages, isolated_settings, observation_messages, produce, request_for,
                                  result_key, start_worker, until_keys)

pytestmark = pytest.mark.timeout(240)

EFFECT = "checkout-redesign"  # real effect: +25% conversion for treatment_a, nothing else
SPLIT = "banner-split"  # traffic served 55/45 against 50/50: a sample ratio mismatch alert
BURN = "slow-start"  # min_units far above its traffic: burn-in from first to last interval
GUARD = "fast-images"  # +35% conversion, but its guardrail page_load_ms (lower is better) up 20%: harm
RESET = "hero-flip"  # +30% then -30% from interval 6 on: a stats reset, then a significant regression
FILLERS = [f"team-{i:02d}" for i in range(55)]  # with the five above: a 60-experiment program
INTERVALS = 12
BURN_MIN_UNITS = 1_000_000
BAD_OBSERVATIONS = 3  # dead-lettered, keyed by GUARD

SPECS = (
    ExperimentSpec(
        EFFECT,
        variations=("control", "treatment_a", "treatment_b"),
        metrics=(MetricSpec("conversion", 0.10, is_binary=True, lifts={"treatment_a": 0.25}),
                 MetricSpec("revenue_per_visitor", 5.0, sd=12.0)),
        units_per_interval=4500, intervals=INTERVALS),
    ExperimentSpec(
        SPLIT, weights=(0.5, 0.5), served_weights=(0.55, 0.45),
        metrics=(MetricSpec("conversion", 0.08, is_binary=True),),
        units_per_interval=2000, intervals=INTERVALS),
)


EXTRA_SPECS = (
    ExperimentSpec(BURN, metrics=(MetricSpec("signup", 0.2, is_binary=True),), units_per_interval=400, intervals=4),
    ExperimentSpec(
        GUARD,
        metrics=(MetricSpec("conversion", 0.10, is_binary=True, lifts={"treatment": 0.35}),
                 MetricSpec("page_load_ms", 800.0, sd=150.0, lifts={"treatment": 0.20})),
        units_per_interval=5000, intervals=6),
    ExperimentSpec(RESET, metrics=(MetricSpec("conversion", 0.10, is_binary=True, lifts={"treatment": 0.3},
                                              lift_changes=((6, {"treatment": -0.3}),)),),
                   units_per_interval=6000, intervals=14),
    *(ExperimentSpec(name, metrics=(MetricSpec("clicks", 0.3, is_binary=True),), units_per_interval=300, intervals=2)
      for name in FILLERS),
)
OPTIONS = {BURN: {"min_units": BURN_MIN_UNITS}}
METRIC_OPTIONS = {GUARD: {"page_load_ms": {"in_fdr_family": False, "lower_is_better": True}}}


def _configs(specs=SPECS):
    out = {}
    for spec in specs:
        weights = dict(zip(spec.variations, spec.weights or (1.0,) * len(spec.variations)))
        out[spec.experiment_id] = ({"reference_variation_id": "control", "weights": weights,
                                    **OPTIONS.get(spec.experiment_id, {})},
                                   {m.name: {"is_binary": m.is_binary, **METRIC_OPTIONS.get(spec.experiment_id, {}).get(m.name, {})}
                                    for m in spec.metrics})
    return out


def _keys(spec: ExperimentSpec) -> int:
    return len(spec.metrics) * (len(spec.variations) - 1) * spec.intervals


def _bad_observations() -> list:
    bad = {"experiment_id": GUARD, "metric": "conversion", "variation_id": "control", "interval_timestamp": 1_700_000_000.0,
           "unit_count": "many", "unit_observation_sum": 1, "unit_observation_sum_of_squares": 1}
    return [("observations", GUARD.encode(), orjson.dumps(dict(bad, unit_count=f"many-{i}"))) for i in range(BAD_OBSERVATIONS)]


def _final_expected(rows: list[dict], experiment: str, config: dict, metric_options: dict) -> dict:
    """(metric, variation) -> the last interval's row, as state.evaluate computes it."""
    request = request_for(rows, experiment, config, metric_options)
    final = {}
    for metric_rows in evaluate(request):
        for row in metric_rows:
            final[(row["metric"], row["variation_id"])] = row  # rows come in interval order
    return final


def _get(url: str):
    """(status, parsed JSON body) without raising on 4xx."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.fixture(scope="module")
def dashboard(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = isolated_settings(broker, tmp)
    configs = _configs(SPECS + EXTRA_SPECS)
    data = {spec.experiment_id: [r for group in simulate(spec, seed) for r in group]
            for seed, spec in enumerate(SPECS + EXTRA_SPECS, start=11)}
    expected = {e: _final_expected(data[e], e, *configs[e]) for e in (EFFECT, SPLIT)}
    n_keys = sum(_keys(spec) for spec in SPECS + EXTRA_SPECS)
    messages = [m for e, (options, metric_options) in configs.items() for m in config_messages(e, 1, options, metric_options)]
    by_interval = sorted((r for rows in data.values() for r in rows), key=lambda r: r["interval_timestamp"])
    produce(settings, messages + observation_messages(by_interval) + _bad_observations())
    worker = start_worker(settings, tmp)
    try:
        results = collect(settings, "results", until_keys(n_keys), timeout=90)
        assert len({result_key(r) for r in results}) == n_keys, worker.log_tail()
        # the web views' history is filled just after the results are acknowledged
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sizes = [len(_get(f"{worker.url}/experiments/{s.experiment_id}/history")[1].get("intervals", []))
                     for s in SPECS + EXTRA_SPECS[:3]]
            if sizes == [s.intervals for s in SPECS + EXTRA_SPECS[:3]]:
                break
            time.sleep(0.2)
        yield worker, expected, tmp, settings
    finally:
        worker.stop()


def test_the_chosen_traffic_has_a_certain_effect_and_a_certain_null(dashboard):
    """Sanity of the fixture's seeds, so the page assertions below test the page."""
    _, expected, _, _ = dashboard
    final = expected[EFFECT]
    assert final[("conversion", "treatment_a")]["rejected"] is True
    assert final[("conversion", "treatment_a")]["lift_estimate"] > 0
    assert final[("conversion", "treatment_b")]["rejected"] is False


def test_history_endpoint_returns_the_rows_of_every_interval(dashboard):
    worker, expected, _, _ = dashboard
    status, body = _get(f"{worker.url}/experiments/{EFFECT}/history")
    assert status == 200
    assert body["experiment_id"] == EFFECT
    assert body["reference_variation_id"] == "control"
    assert body["lower_is_better"] == {"conversion": False, "revenue_per_visitor": False}
    intervals = body["intervals"]
    assert len(intervals) == INTERVALS
    stamps = [i["interval_timestamp"] for i in intervals]
    assert stamps == sorted(stamps) and len(set(stamps)) == INTERVALS
    for interval in intervals:
        rows = interval["rows"]
        assert {(r["metric"], r["variation_id"]) for r in rows} == set(expected[EFFECT])
        assert all(r["interval_timestamp"] == interval["interval_timestamp"] and r["experiment_id"] == EFFECT for r in rows)
        for r in rows:  # JSON numbers, or the API's strings for non-finite ones
            for column in ("lift_estimate", "corrected_conf_interval_lower", "corrected_conf_interval_upper"):
                assert isinstance(r[column], (int, float)) or r[column] in ("inf", "-inf", "nan")
    last = {(r["metric"], r["variation_id"]): r for r in intervals[-1]["rows"]}
    for key, row in expected[EFFECT].items():
        assert last[key]["rejected"] == row["rejected"]
        assert last[key]["lift_estimate"] == pytest.approx(row["lift_estimate"], rel=1e-9)

    status, since = _get(f"{worker.url}/experiments/{EFFECT}/history?since={stamps[-4]}")
    assert status == 200 and [i["interval_timestamp"] for i in since["intervals"]] == stamps[-3:]

    status, body = _get(f"{worker.url}/experiments/no-such-experiment/history")
    assert status == 404 and "no-such-experiment" in body["error"]
    status, body = _get(f"{worker.url}/experiments/{EFFECT}/history?since=yesterday")
    assert status == 400 and "since" in body["error"]


def test_dashboard_page_is_served(dashboard):
    worker, _, _, _ = dashboard
    with urllib.request.urlopen(f"{worker.url}/dashboard", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        page = response.read().decode()
    assert 'id="results"' in page and "/history" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load anything external"


# ------------------------------------------------------------------------- headless Chromium
def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("headless Chromium is required for the dashboard tests but `chromium` is not on PATH: "
                    ".ci/run installs Debian's chromium package (apt-get install -y chromium); install it the same way")
    return path


def _chromium_argv(profile: Path, *args: str) -> list[str]:
    """Headless Chromium with its own profile directory, nothing in the background, then ``args``."""
    return [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]


def _run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    command = _chromium_argv(tmp / f"chromium-profile-{time.monotonic_ns()}", *args)
    done = subprocess.run(command, capture_output=True, timeout=120, text=True)
    assert done.returncode == 0, f"chromium exited with {done.returncode}:\n{done.stderr[-3000:]}"
    return done


_TAG = re.compile(r"<(tr|li|figure|path|h1|span)\b([^>]*)>", re.S)
_ATTR = re.compile(r'([\w:-]+)="([^"]*)"')


def _elements(dom: str, tag: str) -> list[tuple[dict, int]]:
    """(attributes, position) of every ``tag`` element in a serialised DOM."""
    out = []
    for match in _TAG.finditer(dom):
        if match.group(1) == tag:
            attrs = {k: html.unescape(v) for k, v in _ATTR.findall(match.group(2))}
            out.append((attrs, match.end()))
    return out


def _row_html(dom: str, start: int) -> str:
    return dom[start:dom.index("</tr>", start)]


def _dump_dom(worker, tmp: Path, query: str = "") -> str:
    return _run_chromium(tmp, "--virtual-time-budget=5000", "--dump-dom", f"{worker.url}/dashboard{query}").stdout


def test_dashboard_in_headless_chromium_shows_the_significant_results(dashboard):
    worker, expected, tmp, _ = dashboard
    dom = _dump_dom(worker, tmp, f"?experiment={EFFECT}")

    title = _elements(dom, "h1")
    assert any(a.get("id") == "experiment-title" and a.get("data-experiment") == EFFECT for a, _ in title), dom[:2000]
    selected = [a for a, _ in _elements(dom, "li") if "selected" in a.get("class", "").split()]
    assert [a["data-experiment"] for a in selected] == [EFFECT]
    assert {a.get("data-experiment") for a, _ in _elements(dom, "li") if "data-experiment" in a} >= {EFFECT, SPLIT}

    rows = {(a["data-metric"], a["data-variation"]): (a["class"].split(), _row_html(dom, end))
            for a, end in _elements(dom, "tr") if "data-metric" in a}
    assert set(rows) == set(expected[EFFECT])  # every metric x variation, and nothing else
    for key, row in expected[EFFECT].items():
        classes, cells = rows[key]
        if row["rejected"]:
            direction = "improvement" if row["lift_estimate"] > 0 else "regression"
            assert classes == ["significant", direction], (key, classes)
        else:
            assert classes == ["not-significant"], (key, classes)
        shown = re.search(r'class="r num lift"[^>]*>([^<]*)<', cells).group(1)
        assert float(shown.replace("−", "-").rstrip("%")) / 100 == pytest.approx(row["lift_estimate"], abs=6e-4), shown
    classes, cells = rows[("conversion", "treatment_a")]
    assert classes == ["significant", "improvement"] and '<span class="badge good">improvement</span>' in cells
    assert "Better than control" in cells
    assert rows[("conversion", "treatment_b")][0] == ["not-significant"]

    charts = [a for a, _ in _elements(dom, "figure") if "chart" in a.get("class", "").split()]
    assert {(a["data-metric"], a["data-variation"]) for a in charts} == set(expected[EFFECT])
    paths = [a for a, _ in _elements(dom, "path")]
    bands = [a for a in paths if a.get("class") == "ci-band"]
    lines = [a for a in paths if a.get("class") == "lift-line"]
    assert len(lines) == len(charts) and bands
    assert all(re.fullmatch(r"M[\d.,L-]+", a["d"]) and a["d"].count("L") == INTERVALS - 1 for a in lines)
    assert all("NaN" not in a["d"] and "Infinity" not in a["d"] for a in bands + lines)

    alerts = [(a, end) for a, end in _elements(dom, "li") if "alert" in a.get("class", "").split()]
    reached = [dom[end:dom.index("</li>", end)] for a, end in alerts if a.get("data-kind") == "significance_reached"]
    assert any("treatment_a" in text and "conversion" in text for text in reached), [a for a, _ in alerts]
    status = re.search(r'<div id="status" class="([^"]*)"', dom)
    assert status and status.group(1) == "status live", status


def test_dashboard_opens_on_the_most_urgent_experiment_an_srm_with_its_full_width_banner(dashboard):
    worker, _, tmp, _ = dashboard
    dom = _dump_dom(worker, tmp)
    assert [a["data-experiment"] for a, _ in _elements(dom, "li") if "selected" in a.get("class", "").split()] == [SPLIT]
    banner = re.search(r'<div id="srm-banner" role="alert"><b>Sample ratio mismatch</b>([^<]*)</div>', dom)
    assert banner and "biased" in banner.group(1), dom[:3000]
    assert any(a.get("id") == "srm-status" and "mismatch" in dom[end:end + 20] for a, end in _elements(dom, "span"))
    assert any(a.get("data-kind") == "srm" for a, _ in _elements(dom, "li"))
    rows = [(a, _row_html(dom, end)) for a, end in _elements(dom, "tr") if "data-metric" in a]
    assert rows and all("srm" in a["class"].split() and "unreliable: sample ratio mismatch" in cells for a, cells in rows)
    charts = dom[dom.index('<div id="charts">'):dom.index('id="charts-empty"')]
    assert charts.count('<span class="badge alarm" title="sample ratio mismatch') == len(rows)  # the charts too
    listed = [a for a, _ in _elements(dom, "li") if "data-status" in a]
    assert len(listed) >= 60 and listed[0]["data-status"] == "srm"
    # every experiment of the list has its server-side status, most urgent first
    order = ["srm", "harm", "regression", "dead_letters", "winner", "burn_in", "running", "waiting"]
    assert [order.index(a["data-status"]) for a in listed] == sorted(order.index(a["data-status"]) for a in listed)
    assert not re.search(r'id="srm-banner"', _dump_dom(worker, tmp, f"?experiment={EFFECT}"))


def test_a_burn_in_experiment_shows_burn_in_with_its_progress_never_a_zero_lift(dashboard):
    worker, _, tmp, _ = dashboard
    dom = _dump_dom(worker, tmp, f"?experiment={BURN}")
    rows = [(a, _row_html(dom, end)) for a, end in _elements(dom, "tr") if "data-metric" in a]
    assert [a["data-state"] for a, _ in rows] == ["burn_in"]
    cells = rows[0][1]
    assert re.search(r'class="r num lift"[^>]*>burn-in<', cells) and re.search(r'class="num ci"[^>]*>\u2014<', cells)
    assert "0.00%" not in cells and f"of {BURN_MIN_UNITS:,} units per arm" in cells
    progress = re.search(r'<span id="burn-in-progress">(.*?)</dd>', dom)
    assert progress and f"of {BURN_MIN_UNITS:,} units per arm" in progress.group(1)
    (chart,) = [a for a, _ in _elements(dom, "figure") if "chart" in a.get("class", "").split()]
    assert chart["data-burn-in"] == "4" and "burn-in: no estimate yet" in dom
    assert not [a for a, _ in _elements(dom, "path") if a.get("class") == "lift-line"], "no line through placeholders"


def test_guardrails_have_their_own_section_with_harm_and_dead_letters_show(dashboard):
    worker, _, tmp, _ = dashboard
    dom = _dump_dom(worker, tmp, f"?experiment={GUARD}")
    goals = dom[dom.index('<table id="results"'):dom.index('<section id="guardrails-card"')]
    guardrails = dom[dom.index('<table id="guardrails"'):dom.index('<section id="charts-card"')]
    assert 'data-metric="conversion"' in goals and 'data-metric="page_load_ms"' not in goals
    assert re.search(r'<tr class="significant regression harm" data-metric="page_load_ms"[^>]*data-state="harm"', guardrails)
    assert 'data-baseline="page_load_ms"' in guardrails
    dead = re.search(r'<div id="dead-banner">(.*?)</div>', dom, re.S)
    assert dead and f"{BAD_OBSERVATIONS} input message(s) dead-lettered" in dead.group(1) and "unit_count" in dead.group(1)
    assert 'id="harm-banner"' in dom


def test_stats_resets_are_marked_on_the_chart_and_each_point_has_its_own_state(dashboard):
    worker, _, tmp, _ = dashboard
    dom = _dump_dom(worker, tmp, f"?experiment={RESET}")
    assert 'class="mark-reset"' in dom
    points = re.findall(r'<circle class="pt ([a-z_]+)"', dom)
    assert "improvement" in points and "regression" in points, points  # before and after the flip


def test_dashboard_screenshots_at_1400_and_390_px(dashboard):
    worker, _, tmp, _ = dashboard
    for width, height, experiment in ((1400, 1500, GUARD), (390, 2400, GUARD), (1400, 1100, SPLIT)):
        shot = tmp / f"dashboard-{experiment}-{width}.png"
        _run_chromium(tmp, "--virtual-time-budget=5000", "--hide-scrollbars", f"--screenshot={shot}",
                      f"--window-size={width},{height}", f"{worker.url}/dashboard?experiment={experiment}")
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000, f"screenshot of {shot.stat().st_size} bytes looks blank"


# ------------------------------------------------------------ live updates, over the DevTools protocol
class _DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate an expression in the open page."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        async for message in self.ws:
            reply = orjson.loads(message.data)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]
        raise AssertionError("DevTools connection closed")

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")


async def _page(port: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    pages = [t for t in await response.json() if t.get("type") == "page"]
                    if pages:
                        return pages[0]["webSocketDebuggerUrl"]
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"headless Chromium opened no DevTools endpoint on port {port} in {timeout}s")


async def _wait_for(devtools: _DevTools, expression: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await devtools.evaluate(expression)
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"page never satisfied {expression!r} (last value {value!r})")


@contextlib.contextmanager
def _chromium_with_devtools(profile: Path, url: str, window: str = "1280,900"):
    """Headless Chromium showing ``url``, with the DevTools protocol on a free port (yielded);
    stopped by its process group on the way out."""
    port = free_port()
    chromium = subprocess.Popen(
        _chromium_argv(profile, f"--remote-debugging-port={port}", f"--window-size={window}", url),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield port
    finally:
        os.killpg(chromium.pid, signal.SIGTERM)
        try:
            chromium.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(chromium.pid, signal.SIGKILL)
            chromium.wait()


STATE_JS = """JSON.stringify({
  intervals: document.querySelector('#summary dd') && document.querySelector('#summary dd').textContent,
  rows: [...document.querySelectorAll('#results tr[data-metric]')].map(r => [r.dataset.metric, r.dataset.variation, r.className]),
  lines: [...document.querySelectorAll('#charts path.lift-line')].map(p => p.getAttribute('d').split('L').length),
  alerts: [...document.querySelectorAll('#alerts li.alert')].map(li => li.dataset.kind),
  marker: window.__loadedOnce || null,
})"""


def test_dashboard_updates_in_place_as_intervals_close(dashboard, broker):
    """Load the page with 3 intervals closed, then publish the rest: the open page (never reloaded)
    catches up to every interval, and the significant result appears with its alert."""
    worker, _, tmp, settings = dashboard
    experiment = "live-update"
    spec = ExperimentSpec(experiment, metrics=(MetricSpec("conversion", 0.10, is_binary=True, lifts={"treatment": 0.3}),),
                          units_per_interval=4000, intervals=INTERVALS)
    groups = simulate(spec, 5)
    produce(settings, config_messages(experiment, 1, {"reference_variation_id": "control"}, {"conversion": {"is_binary": True}})
            + observation_messages([r for g in groups[:3] for r in g]))
    async def drive(port: int):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(await _page(port), max_msg_size=0) as ws:
                devtools = _DevTools(ws)
                early = orjson.loads(await _wait_for(
                    devtools, f"(() => {{ const s = JSON.parse({STATE_JS}); return s.lines.length && s.intervals === '3' ? JSON.stringify(s) : null }})()"))
                await devtools.evaluate("window.__loadedOnce = 'yes'")  # a reload would clear it
                await asyncio.to_thread(produce, settings, observation_messages([r for g in groups[3:] for r in g]))
                late = orjson.loads(await _wait_for(
                    devtools, f"(() => {{ const s = JSON.parse({STATE_JS}); return s.intervals === '{INTERVALS}' && s.lines[0] === {INTERVALS} && s.alerts.length ? JSON.stringify(s) : null }})()",
                    timeout=60))
                return early, late

    with _chromium_with_devtools(tmp / "chromium-devtools-profile", f"{worker.url}/dashboard?experiment={experiment}") as port:
        early, late = asyncio.run(drive(port))
    assert early["lines"] == [3] and early["marker"] is None
    assert late["marker"] == "yes", "the page was reloaded instead of updated in place"
    assert late["lines"] == [INTERVALS]
    assert late["rows"] == [["conversion", "treatment", "significant improvement"]]
    assert "significance_reached" in late["alerts"]


WIDTH_JS = """(() => {
  const title = document.getElementById('experiment-title');
  if (!title || title.dataset.experiment !== %r || !document.querySelector('#charts figure')) return null;
  return JSON.stringify({viewport: window.innerWidth, document: document.documentElement.scrollWidth,
                         body: document.body.scrollWidth,
                         widest: Math.max(...[...document.querySelectorAll('body *')].map(e => e.getBoundingClientRect().right)),
                         sidebar: getComputedStyle(document.getElementById('sidebar')).display,
                         columns: getComputedStyle(document.querySelector('#results td.lift')).display});
})()"""


def _measure(worker, tmp: Path, width: int, experiment: str) -> dict:
    async def drive(port: int):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(await _page(port), max_msg_size=0) as ws:
                devtools = _DevTools(ws)
                # a phone's viewport (headless windows are at least 500 px wide, so it is emulated)
                await devtools.call("Emulation.setDeviceMetricsOverride", width=width, height=844,
                                    deviceScaleFactor=1, mobile=width < 700)
                return orjson.loads(await _wait_for(devtools, WIDTH_JS % experiment))

    with _chromium_with_devtools(tmp / f"chromium-width-{width}", f"{worker.url}/dashboard?experiment={experiment}",
                                 f"{width},900") as port:
        return asyncio.run(drive(port))


def test_at_390_px_the_page_is_no_wider_than_the_viewport(dashboard):
    """Measured in the browser: the document's scroll width and the right edge of every element."""
    worker, _, tmp, _ = dashboard
    narrow = _measure(worker, tmp, 390, GUARD)
    assert narrow["viewport"] == 390, narrow
    assert narrow["document"] <= 390 and narrow["body"] <= 390 and narrow["widest"] <= 390.5, narrow
    assert narrow["sidebar"] == "none" and narrow["columns"] == "flex", narrow  # collapsed list, rows as cards
    wide = _measure(worker, tmp, 1400, GUARD)
    assert wide["document"] <= 1400 and wide["sidebar"] == "flex" and wide["columns"] == "table-cell", wide


# ------------------------------------------------------------- the API an analyst's program runs on
def test_experiments_returns_a_server_side_summary_for_each_of_60_experiments_most_urgent_first(dashboard):
    worker, expected, _, _ = dashboard
    status, body = _get(f"{worker.url}/experiments")
    assert status == 200
    ids = {EFFECT, SPLIT, BURN, GUARD, RESET, *FILLERS}
    assert len(ids) == 60 and ids <= set(body["experiments"]) and body["experiments"] == sorted(body["experiments"])
    summaries = {s["experiment_id"]: s for s in body["summaries"]}
    assert ids <= set(summaries) and len(body["summaries"]) == len(body["experiments"])
    urgencies = [s["urgency"] for s in body["summaries"]]
    assert urgencies == sorted(urgencies), "most urgent first"
    assert body["summaries"][0]["experiment_id"] == SPLIT and summaries[SPLIT]["status"] == "srm"
    assert summaries[SPLIT]["srm"] is True and all(not summaries[e]["srm"] for e in ids - {SPLIT})
    guard = summaries[GUARD]
    assert guard["status"] == "harm" and guard["guardrail_harms"] == 1 and guard["wins"] == 1
    assert guard["dead_letters"] == BAD_OBSERVATIONS and guard["late"] == 0
    assert all("unit_count" in reason for reason in guard["dead_letter_reasons"])
    wins = sum(1 for row in expected[EFFECT].values() if row["rejected"] and row["lift_estimate"] > 0)
    effect = summaries[EFFECT]
    assert (effect["status"], effect["wins"], effect["regressions"]) == ("winner", wins, 0)
    assert effect["intervals_closed"] == INTERVALS and effect["last_interval_text"].endswith("UTC")
    burn = summaries[BURN]
    assert burn["status"] == "burn_in" and burn["burn_in"] is True
    progress = burn["burn_in_progress"]
    assert progress["min_units"] == BURN_MIN_UNITS and 0 < progress["units"] < BURN_MIN_UNITS and progress["percent"] == 0
    reset = summaries[RESET]
    assert reset["stats_resets"] >= 1 and reset["status"] == "regression" and reset["regressions"] == 1
    for name in FILLERS:
        assert summaries[name]["status"] in ("running", "burn_in", "winner") and summaries[name]["dead_letters"] == 0


def test_results_have_a_baseline_per_metric_in_config_order_a_guardrail_section_and_dead_letters(dashboard):
    worker, _, _, _ = dashboard
    status, body = _get(f"{worker.url}/experiments/{GUARD}/results")
    assert status == 200
    table = body["table"]
    assert [t["metric"] for t in table] == ["conversion", "page_load_ms"]  # config order, not alphabetical by luck
    conversion, load = table
    assert conversion["guardrail"] is False and load["guardrail"] is True and load["lower_is_better"] is True
    rows = {(r["metric"], r["variation_id"]): r for r in body["rows"]}
    raw = rows[("conversion", "treatment")]
    assert conversion["baseline"]["variation_id"] == "control"
    assert conversion["baseline"]["units"] == f"{raw['control_unit_cumcount']:,.0f}"
    assert conversion["baseline"]["value"] == f"{100 * raw['control_observation_cumsum'] / raw['control_unit_cumcount']:.2f}%"
    (shown,) = conversion["rows"]
    assert shown["state"] == "improvement" and shown["lift"] == f"{raw['lift_estimate'] * 100:+.2f}%"
    assert shown["value"] == f"{100 * raw['treatment_observation_cumsum'] / raw['treatment_unit_cumcount']:.2f}%"
    assert shown["p"] in ("<0.0001", f"{raw['corrected_p_value']:.4f}") and shown["verdict"].startswith("Better than control")
    (harm,) = load["rows"]
    assert harm["state"] == "harm" and harm["verdict"].startswith("Harm")
    assert body["dead_letters"]["count"] == BAD_OBSERVATIONS and len(body["dead_letters"]["reasons"]) == BAD_OBSERVATIONS
    assert body["health"]["status"] == "harm" and body["srm_warning"] is None

    status, body = _get(f"{worker.url}/experiments/{SPLIT}/results")
    assert body["health"]["srm"] is True and "Sample ratio mismatch" in body["srm_warning"]
    assert all(r["srm"] and "sample ratio mismatch" in r["verdict"] for t in body["table"] for r in t["rows"])

    status, body = _get(f"{worker.url}/experiments/{BURN}/results")
    (row,) = body["table"][0]["rows"]
    assert row["state"] == "burn_in" and row["lift"] == "burn-in" and row["ci"] == row["p"] == "\u2014"
    assert "0.00%" not in row.values()
    assert row["burn_in"]["min_units"] == BURN_MIN_UNITS and f"of {BURN_MIN_UNITS:,}" in row["verdict"]


def test_csv_and_json_exports_hold_exactly_the_rows_of_the_history(dashboard):
    import csv
    import io

    worker, _, _, _ = dashboard
    _, history = _get(f"{worker.url}/experiments/{EFFECT}/history")
    rows = [r for interval in history["intervals"] for r in interval["rows"]]
    assert len(rows) == INTERVALS * 4
    with urllib.request.urlopen(f"{worker.url}/experiments/{EFFECT}/export?format=json", timeout=10) as response:
        assert "attachment" in response.headers["Content-Disposition"]
        assert orjson.loads(response.read()) == rows
    with urllib.request.urlopen(f"{worker.url}/experiments/{EFFECT}/export?format=csv", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/csv")
        assert f'filename="{EFFECT}-results.csv"' in response.headers["Content-Disposition"]
        exported = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert len(exported) == len(rows)
    for got, row in zip(exported, rows):
        assert set(got) == set(row)
        for column, value in row.items():
            if isinstance(value, bool):
                assert got[column] == str(value).lower(), column
            elif isinstance(value, (int, float)):
                assert float(got[column]) == value, column  # every digit survives (repr of the float)
            else:
                assert got[column] == value, column
    assert _get(f"{worker.url}/experiments/{EFFECT}/export?format=xml")[0] == 400
    assert _get(f"{worker.url}/experiments/nobody/export")[0] == 404


def _views(worker, experiment: str) -> dict:
    """What the views show of an experiment: its intervals, alerts and dead letters."""
    _, history = _get(f"{worker.url}/experiments/{experiment}/history")
    _, alerts = _get(f"{worker.url}/experiments/{experiment}/alerts")
    _, results = _get(f"{worker.url}/experiments/{experiment}/results")
    return {"intervals": [(i["interval_timestamp"], sorted((r["metric"], r["variation_id"]) for r in i["rows"]))
                          for i in history.get("intervals", [])],
            "last": sorted(orjson.dumps(r) for r in results.get("rows", [])),
            "alerts": alerts.get("alerts"), "dead_letters": results.get("dead_letters")}


def _owner(workers, experiment: str, partitions: int):
    partition = partition_for(experiment.encode(), partitions)
    return next(w for w in workers if partition in _get(f"{w.url}/health")[1]["partitions"])


def test_after_a_worker_restart_and_a_partition_move_history_alerts_and_dead_letters_are_back(dashboard):
    """Last in the module: the views of every experiment are rebuilt from the output topics by the
    worker that takes its partition over: a new worker after the first one stopped, then a
    second worker that takes half the partitions, while the first forgets what it no longer owns."""
    worker, _, tmp, settings = dashboard
    watched = (EFFECT, SPLIT, GUARD, RESET, BURN)
    before = {e: _views(worker, e) for e in watched}
    assert len(before[EFFECT]["intervals"]) == INTERVALS and any(a["kind"] == "srm" for a in before[SPLIT]["alerts"])
    assert before[GUARD]["dead_letters"]["count"] == BAD_OBSERVATIONS
    with_results = _get(f"{worker.url}/health")[1]["experiments_local"]
    assert with_results >= 60
    worker.stop()
    again = start_worker(settings, tmp, name="worker-restarted")
    second = None
    try:
        deadline = time.monotonic() + 60
        after = None
        while time.monotonic() < deadline:
            after = {e: _views(again, e) for e in before}
            if after == before:
                break
            time.sleep(0.5)
        assert after == before, again.log_tail()
        _, listed = _get(f"{again.url}/experiments")
        assert listed["rebuilding"] is False and listed["summaries"][0]["experiment_id"] == SPLIT

        second = start_worker(settings, tmp, name="worker-second", web_port=free_port(), datadir=str(tmp / "second"))
        workers = (again, second)
        deadline = time.monotonic() + 90
        moved = None
        while time.monotonic() < deadline:
            parts = [set(_get(f"{w.url}/health")[1]["partitions"]) for w in workers]
            if all(parts) and not parts[0] & parts[1] and len(parts[0] | parts[1]) == settings.partitions:
                moved = {e: _views(_owner(workers, e, settings.partitions), e) for e in before}
                held = [_get(f"{w.url}/health")[1]["experiments_local"] for w in workers]
                if moved == before and sum(held) == with_results:
                    break
            time.sleep(0.5)
        assert moved == before, (parts, second.log_tail())
        assert all(held) and sum(held) == with_results, held  # each experiment's views on its owner alone
    finally:
        again.stop()
        if second is not None:
            second.stop()
