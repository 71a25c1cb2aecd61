"""The live dashboard end to end: a worker on the real broker, simulated traffic with a real effect,
the page rendered by headless Chromium (Debian's chromium package, installed by .ci/run).

The expected significance of every row comes from ``state.evaluate`` on the same data, so the page
is checked against the engine, not against numbers copied into the test.
"""

from __future__ import annotations

import asyncio
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
from tests.stream_support import (collect, config_messages, isolated_settings, observation_messages, produce, request_for,
                                  result_key, start_worker, until_keys)

pytestmark = pytest.mark.timeout(240)

EFFECT = "checkout-redesign"  # real effect: +25% conversion for treatment_a, nothing else
SPLIT = "banner-split"  # traffic served 55/45 against 50/50: a sample ratio mismatch alert
INTERVALS = 12

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


def _configs():
    out = {}
    for spec in SPECS:
        weights = dict(zip(spec.variations, spec.weights or (1.0,) * len(spec.variations)))
        out[spec.experiment_id] = ({"reference_variation_id": "control", "weights": weights},
                                   {m.name: {"is_binary": m.is_binary} for m in spec.metrics})
    return out


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
    configs = _configs()
    data = {spec.experiment_id: [r for group in simulate(spec, seed) for r in group]
            for seed, spec in enumerate(SPECS, start=11)}
    expected = {e: _final_expected(rows, e, *configs[e]) for e, rows in data.items()}
    n_keys = sum(len(final) for final in expected.values()) * INTERVALS
    messages = [m for e, (options, metric_options) in configs.items() for m in config_messages(e, 1, options, metric_options)]
    by_interval = sorted((r for rows in data.values() for r in rows), key=lambda r: r["interval_timestamp"])
    produce(settings, messages + observation_messages(by_interval))
    worker = start_worker(settings, tmp)
    try:
        results = collect(settings, "results", until_keys(n_keys), timeout=90)
        assert len({result_key(r) for r in results}) == n_keys, worker.log_tail()
        # the web views' in-memory history is filled just after the results are acknowledged
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sizes = [len(_get(f"{worker.url}/experiments/{e}/history")[1].get("intervals", [])) for e in data]
            if sizes == [INTERVALS] * len(data):
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
        shown = re.search(r'class="r num lift">([^<]*)<', cells).group(1)
        assert float(shown.replace("−", "-").rstrip("%")) / 100 == pytest.approx(row["lift_estimate"], abs=6e-4), shown
    classes, cells = rows[("conversion", "treatment_a")]
    assert classes == ["significant", "improvement"] and "Yes · improvement" in cells
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


def test_dashboard_selects_the_first_experiment_by_default_and_shows_its_srm_alert(dashboard):
    worker, _, tmp, _ = dashboard
    dom = _dump_dom(worker, tmp)
    assert [a["data-experiment"] for a, _ in _elements(dom, "li") if "selected" in a.get("class", "").split()] == [SPLIT]
    assert any(a.get("id") == "srm-status" and "mismatch" in dom[end:end + 20] for a, end in _elements(dom, "span"))
    assert any(a.get("data-kind") == "srm" for a, _ in _elements(dom, "li"))


def test_dashboard_screenshot(dashboard):
    worker, _, tmp, _ = dashboard
    shot = tmp / "dashboard.png"
    _run_chromium(tmp, "--virtual-time-budget=5000", "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,900",
                  f"{worker.url}/dashboard?experiment={EFFECT}")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000, f"screenshot of {shot.stat().st_size} bytes looks blank"


# ------------------------------------------------------------ live updates, over the DevTools protocol
class _DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate an expression in the open page."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def evaluate(self, expression: str):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True}})
        async for message in self.ws:
            reply = orjson.loads(message.data)
            if reply.get("id") == self.next_id:
                assert "exceptionDetails" not in reply["result"], reply
                return reply["result"]["result"].get("value")
        raise AssertionError("DevTools connection closed")


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
    port = free_port()
    profile = tmp / "chromium-devtools-profile"
    chromium = subprocess.Popen(
        _chromium_argv(profile, f"--remote-debugging-port={port}", "--window-size=1280,900",
                       f"{worker.url}/dashboard?experiment={experiment}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    async def drive():
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

    try:
        early, late = asyncio.run(drive())
    finally:
        os.killpg(chromium.pid, signal.SIGTERM)
        try:
            chromium.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(chromium.pid, signal.SIGKILL)
            chromium.wait()
    assert early["lines"] == [3] and early["marker"] is None
    assert late["marker"] == "yes", "the page was reloaded instead of updated in place"
    assert late["lines"] == [INTERVALS]
    assert late["rows"] == [["conversion", "treatment", "significant improvement"]]
    assert "significance_reached" in late["alerts"]
