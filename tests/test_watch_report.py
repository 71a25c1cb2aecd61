"""``seqstream watch`` and ``seqstream report``: the pure parts on the covid data (rows from
``state.evaluate``), then the real CLI in subprocesses against a worker on a real broker."""

from __future__ import annotations

import argparse
import html as html_lib
import io
import math
import os
import re
import subprocess
import sys
from collections import defaultdict

import orjson
import pytest
from rich.console import Console

from state import Alert, evaluate
from stream_app.codec import decode_row
from stream_app.console.report import build_report
from stream_app.console.report import main as report_main
from stream_app.console.watch import WatchState, render
from stream_app.formatting import fmt_significance
from tests.conftest import COVID_METRICS, covid_request, covid_rows

MINUTES, CALLS = "Total customer support minutes per visitor", "Customer support calls per visitor"
assert set(COVID_METRICS) == {MINUTES, CALLS}


def covid_results(experiment_id: str = "covid") -> list[dict]:
    request = dict(covid_request(), experiment_id=experiment_id)
    return sorted((r for rows in evaluate(request) for r in rows), key=lambda r: r["interval_timestamp"])


def config(experiment_id: str = "covid", version: int = 1, minutes_lower: bool = True) -> dict:
    # "ses" named: the stream reproduces the reference service's numbers (evaluate's default)
    return {"experiment_id": experiment_id, "version": version, "reference_variation_id": "control",
            "variance_method": "ses", "metrics": {MINUTES: {"is_binary": False, "lower_is_better": minutes_lower}, CALLS: {"is_binary": False}}}


def watch_state(minutes_lower: bool = True, **kwargs) -> WatchState:
    state = WatchState(**kwargs)
    state.apply("experiments", config(minutes_lower=minutes_lower))
    for row in covid_results():
        state.apply("results", row)
    return state


def styled_rows(renderable) -> list[list[tuple[str, object]]]:
    """Rendered lines as [(text, rich Style)] of their non-blank segments."""
    console = Console(width=220, force_terminal=True, color_system="truecolor")
    lines = console.render_lines(renderable, console.options, pad=False)
    return [[(seg.text.strip(), seg.style) for seg in line if seg.text.strip()] for line in lines]


def verdicts(renderable) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(metric, variation) -> (significance text, its colour) from the rendered experiment table."""
    out, metric = {}, None
    for line in styled_rows(renderable):
        texts = [t for t, _ in line if t not in ("│", "┃")]
        if len(texts) == 7 and texts[1].startswith("message_"):
            metric = texts[0].replace(" (lower is better)", "") or metric
            style = [s for t, s in line if t == texts[6]][0]
            out[(metric, texts[1])] = (texts[6], style.color.name if style.color else None)
        elif len(texts) == 6 and texts[0].startswith("message_"):  # metric shown on its first row only
            style = [s for t, s in line if t == texts[5]][0]
            out[(metric, texts[0])] = (texts[5], style.color.name if style.color else None)
    return out


def export(renderable) -> str:
    console = Console(width=220, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


# --------------------------------------------------------------------------------------- watch
def test_lower_is_better_turns_the_significant_negative_lifts_into_green_improvements():
    found = verdicts(render(watch_state(minutes_lower=True)))
    assert found == {(MINUTES, "message_1"): ("improvement", "green"), (MINUTES, "message_2"): ("improvement", "green"),
                     (CALLS, "message_1"): ("regression", "red"), (CALLS, "message_2"): ("regression", "red")}


def test_higher_is_better_makes_them_red_regressions():
    found = verdicts(render(watch_state(minutes_lower=False)))
    assert set(found.values()) == {("regression", "red")} and len(found) == 4


def test_watch_shows_the_latest_row_with_lift_always_valid_interval_and_corrected_p():
    rows = covid_results()
    last = {(r["metric"], r["variation_id"]): r for r in rows}[(MINUTES, "message_1")]
    text = export(render(watch_state()))
    line = next(li for li in text.splitlines() if "message_1" in li and "3,367" in li and "-44.48%" in li)
    lo, hi = last["corrected_conf_interval_lower"], last["corrected_conf_interval_upper"]
    assert f"[{lo * 100:+.2f}%, {hi * 100:+.2f}%]" in line
    assert "<0.0001" in line and "3,367 / 3,304" in line
    assert "covid" in text and "vs control" in text and "config v1" in text and "lower is better" in text


def test_watch_state_keeps_the_latest_interval_the_newest_config_and_the_last_ten_alerts():
    state = watch_state()
    rows = covid_results()
    state.apply("results", rows[0])  # an older interval delivered again: ignored
    assert {r["interval_timestamp"] for r in state.rows.values()} == {rows[-1]["interval_timestamp"]}
    assert not state.apply("experiments", config(version=1, minutes_lower=False))  # equal version: ignored
    assert lower_flag(state) is True
    assert state.apply("experiments", config(version=2, minutes_lower=False))
    assert lower_flag(state) is False
    for bad in (None, [1, 2], {"experiment_id": 3}, {"experiment_id": "covid", "metric": "m"},
                {"experiment_id": "covid", "version": "one"}):
        assert not state.apply("results", bad) and not state.apply("experiments", bad)
    for i in range(15):
        state.apply("alerts", Alert("significance_reached", "covid", 1600082460.0 + i, f"alert {i}", MINUTES,
                                    "message_1", {"direction": "improvement"}).to_dict())
    assert [a["message"] for a in state.alerts] == [f"alert {i}" for i in range(5, 15)]


def lower_flag(state: WatchState) -> bool:
    return state.configs["covid"]["metrics"][MINUTES]["lower_is_better"]


def test_srm_alerts_are_highlighted_and_flag_the_experiment():
    state = watch_state()
    state.apply("alerts", Alert("srm", "covid", 1600082520.0, "sample ratio mismatch: observed shares ...").to_dict())
    state.apply("alerts", Alert("significance_reached", "covid", 1600082580.0, "'message_1' on calls: significant regression",
                                CALLS, "message_1", {"direction": "regression"}).to_dict())
    lines = styled_rows(render(state))
    srm = [s for line in lines for t, s in line if t == "SRM"]
    assert srm and all(s.bgcolor is not None and s.bgcolor.name == "red" for s in srm)
    title = [s for line in lines for t, s in line if t == "SAMPLE RATIO MISMATCH"]
    assert title and title[0].bgcolor.name == "red"
    regression = [s for line in lines for t, s in line if t == "significance_reached"]
    assert regression[0].color.name == "red"


def test_experiment_filter_and_empty_screen():
    state = WatchState(experiments=frozenset({"other"}))
    for row in covid_results():
        assert not state.apply("results", row)
    text = export(render(state))
    assert "waiting for results for other" in text and "none" in text


def test_burn_in_rows_show_no_lift():
    state = WatchState()
    for row in covid_results()[:4]:  # the first interval: too few units, interval (-inf, inf)
        state.apply("results", row)
    text = export(render(state))
    assert "burn-in" in text and "0.00%" not in text and "inf" not in text
    assert "not significant" not in text  # burn-in is not a result


@pytest.mark.parametrize("module", ["watch", "report"])
def test_main_needs_kafka_bootstrap(module, monkeypatch, capsys):
    import importlib

    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    args = argparse.Namespace(experiment=["x"] if module == "watch" else "x", html="x.html", refresh=1.0, once=True)
    assert importlib.import_module(f"stream_app.console.{module}").main(args) == 2
    assert "KAFKA_BOOTSTRAP" in capsys.readouterr().err


def srm_alert(experiment: str, ts: float = 1600082520.0) -> dict:
    return Alert("srm", experiment, ts, "sample ratio mismatch: observed shares ...").to_dict()


def program_state() -> WatchState:
    """covid (significant regressions), an SRM experiment, a burn-in one and twelve quiet ones."""
    state = watch_state()
    for row in covid_results("split"):
        state.apply("results", row)
    state.apply("alerts", srm_alert("split"))
    for row in covid_results("early")[:4]:
        state.apply("results", row)
    for i in range(12):
        for row in covid_results(f"quiet-{i:02d}")[:8]:
            state.apply("results", dict(row, rejected=False))
    return state


def test_watch_puts_problems_first_and_summary_mode_is_one_line_per_experiment():
    state = program_state()
    order = state.experiment_ids()
    assert order[:3] == ["split", "covid", "early"]  # SRM, a regression, burn-in, then the merely running ones
    assert order[3:] == [f"quiet-{i:02d}" for i in range(12)]
    text = export(render(state, summary=True)).split("latest alerts")[0]
    lines = [line for line in text.splitlines() if any(e in line for e in order)]
    assert len(lines) == len(order) and lines[0].split()[:2] == ["SRM", "split"]
    assert lines[1].split()[:2] == ["regression", "covid"]
    assert "burn-in" in lines[2] and "early" in lines[2] and lines[-1].split()[:2] == ["running", "quiet-11"]
    paged = [export(render(state, width=80, height=29, page=page, summary=True)) for page in range(3)]
    assert "(page 1 of 3)" in paged[0] and "split" in paged[0] and "quiet-11" in paged[2] and paged[0] != paged[1]


def test_watch_pages_when_the_experiments_do_not_fit_and_srm_is_on_the_first_page():
    state = program_state()
    first = export(render(state, width=160, height=50, page=0))
    assert "page 1 of" in first and "split" in first and "SAMPLE RATIO MISMATCH" in first
    pages = int(re.search(r"page 1 of (\d+)", first).group(1))
    assert pages > 1
    seen = set()
    for page in range(pages):
        screen = export(render(state, width=160, height=50, page=page))
        seen |= {e for e in state.experiment_ids() if re.search(rf"^\s*{re.escape(e)}\s+vs", screen, re.M)}
        assert len(screen.splitlines()) <= 50 + 30  # the alerts table below the page
    assert seen == set(state.experiment_ids())  # every experiment on some page


def test_watch_alerts_are_in_time_order_not_arrival_order():
    state = WatchState(alert_limit=3)
    for ts in (5, 1, 4, 2, 3):
        state.apply("alerts", Alert("stats_reset", "covid", 1600082460.0 + 60 * ts, f"at {ts}").to_dict())
    assert [a["message"] for a in state.alerts] == ["at 3", "at 4", "at 5"]
    text = export(render(state))
    assert text.index("at 5") < text.index("at 4") < text.index("at 3")  # newest first


def test_watch_shows_dead_letters_and_flags_every_row_of_an_srm_experiment():
    state = watch_state()
    for i in range(3):
        state.apply("deadletter", {"key": "covid", "reason": f"field 'unit_count': bad {i}", "error": "invalid_input"})
    state.apply("deadletter", {"key": "other", "reason": "x"})
    state.apply("alerts", srm_alert("covid"))
    text = export(render(state))
    assert "3 dead-lettered, not in these results; latest: field 'unit_count': bad 2" in text
    rows = [line for line in text.splitlines() if "message_" in line]
    assert len(rows) == 4 and all("SRM!" in line for line in rows)


def test_watch_at_80_columns_keeps_variation_names_whole():
    state = watch_state()
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render(state, width=80))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    rows = [line for line in text.splitlines() if "message" in line and "%" in line]
    assert sum("message_1" in line for line in rows) == 2 and sum("message_2" in line for line in rows) == 2
    assert "message…" not in text and "message..." not in text


# -------------------------------------------------------------------------------------- report
def csv_totals() -> dict[tuple[str, str], tuple[int, float]]:
    totals = defaultdict(lambda: [0, 0.0])
    for r in covid_rows():
        totals[(r["metric_name"], r["variation_id"])][0] += int(r["unit_count"])
        totals[(r["metric_name"], r["variation_id"])][1] += float(r["unit_observation_sum"])
    return {k: (n, s) for k, (n, s) in totals.items()}


def value_text(total: float) -> str:
    """Totals as the report prints them: counts whole, sums to two decimals."""
    return f"{total:,.0f}" if total.is_integer() else f"{total:,.2f}"


def metric_section(html: str, metric: str) -> str:
    return html.split(f"<h2>{metric}</h2>", 1)[1].split("</section>", 1)[0]


def table_rows(section: str) -> list[tuple[str, list[str]]]:
    """(tr class, cell texts) of the overview table."""
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [(cls, [html_lib.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td[^>]*>(.*?)</td>", tr)])
            for cls, tr in re.findall(r'<tr class="([^"]*)">(.*?)</tr>', body)]


def test_report_overview_tables_follow_the_stats_engine_layout():
    rows = covid_results()
    html = build_report("covid", rows, [config(minutes_lower=True)])
    totals = csv_totals()
    for metric in (MINUTES, CALLS):
        section = metric_section(html, metric)
        for column in ("Variation", "Subjects", "Value", "Average value", "Improvement", "Confidence interval",
                       "p-value", "Statistical significance"):
            assert f"<th>{column}</th>" in section
        table = table_rows(section)
        baseline_cls, baseline = table[0]
        units, total = totals[(metric, "control")]
        assert baseline_cls == "baseline"
        assert baseline[:5] == ["control", "baseline", f"{units:,}", value_text(total), f"{total / units:.4f}"]
        latest = {r["variation_id"]: r for r in rows if r["metric"] == metric}
        assert [variation for _, (variation, *_) in table[1:]] == ["message_2", "message_1"]
        for cls, cells in table[1:]:
            row, (units, total) = latest[cells[0]], totals[(metric, cells[0])]
            assert cells[2:5] == [f"{units:,}", value_text(total), f"{total / units:.4f}"]
            assert cells[5] == f"{row['lift_estimate'] * 100:+.2f}%"
            lo, hi = row["corrected_conf_interval_lower"], row["corrected_conf_interval_upper"]
            assert cells[6] == f"[{lo * 100:+.2f}%, {hi * 100:+.2f}%]"
            assert cells[7] == "<0.0001" and cells[8] == ">99.00%"
            assert cls == ("improvement" if metric == MINUTES else "regression")
        assert section.count("<svg") == 2 and section.count("<polygon") == 2  # lift line and CI band per variation
    assert html.count("<svg") == 4


def test_report_colours_follow_lower_is_better_and_escape_names():
    rows = [dict(r, experiment_id="<a&b>") for r in covid_results()]
    html = build_report("<a&b>", rows, [dict(config(minutes_lower=False), experiment_id="<a&b>")])
    assert "<a&b>" not in html and "&lt;a&amp;b&gt;" in html
    assert {cls for cls, _ in table_rows(metric_section(html, MINUTES))[1:]} == {"regression"}


def test_report_is_self_contained_and_finite():
    html = build_report("covid", covid_results(), None)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for external in ("http:", "https:", "<script", "src=", "<link", "@import", "url("):
        assert external not in html
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        numbers = re.findall(r'(?:points|cx|cy|x1|x2|y1|y2|x|y)="([^"]*)"', svg)
        assert numbers and not any(re.search(r"nan|inf", n) for n in numbers)


def test_report_of_early_rows_handles_burn_in_and_duplicates():
    early = [r for r in covid_results() if r["interval_timestamp"] <= 1600082520.0]
    html = build_report("covid", early + early, {"covid": config()})  # re-emitted rows count once
    assert "1 look(s) after 1 in burn-in" in html
    burn_in = build_report("covid", early[:4], None)
    assert "no estimate yet" in burn_in and "of 100 units per arm before a first estimate" in burn_in
    rows = table_rows(metric_section(burn_in, MINUTES))
    assert [cells[5] for _, cells in rows[1:]] == ["burn-in", "burn-in"]  # not a 0.00% improvement
    assert "0.00%" not in "".join(c for _, cells in rows for c in cells)
    with pytest.raises(ValueError):
        build_report("missing", early, None)


def test_significance_format():
    assert fmt_significance(0.0) == ">99.00%" and fmt_significance(0.05) == "95.00%"
    assert fmt_significance(1.0) == "0.00%" and fmt_significance(math.nan) == "n/a"


# ----------------------------------------------------------------------- the CLI on a real broker
@pytest.mark.timeout(150)
def test_cli_on_a_real_broker(broker, tmp_path, monkeypatch, capsys):
    from tests.stream_support import (collect, config_messages, covid_stream_rows, distinct_results,
                                      isolated_settings, observation_messages, produce, start_worker, until_keys)

    settings = isolated_settings(broker, tmp_path)
    experiment = "cli-covid"
    expected = distinct_results(covid_results(experiment))
    options = {k: v for k, v in config(experiment).items() if k not in ("experiment_id", "version", "metrics")}
    produce(settings, config_messages(experiment, 1, {**options, "use_stats_resets": True}, config()["metrics"])
            + observation_messages(covid_stream_rows(experiment)))
    worker = start_worker(settings, tmp_path)
    try:
        results = collect(settings, "results", until_keys(len(expected)), timeout=60)
    finally:
        worker.kill()  # the results are on the topic: no need to wait for a graceful shutdown
    assert distinct_results(results) == expected

    env = {**os.environ, **settings.to_env(), "COLUMNS": "200"}
    html = tmp_path / "report.html"
    bad_csv = tmp_path / "broken.csv"
    bad_csv.write_text("variation_id,interval_timestamp,unit_count,unit_observation_sum,"
                       "unit_observation_sum_of_squares,metric_name\n"
                       "control,2020-09-14 11:21:00,75,10.5,40.1,m\n"
                       "treatment,2020-09-14 11:21:00,lots,10.5,40.1,m\n"
                       "control,2020-09-14 11:22:00,80,11.0,41.0,m\n")

    def cli(*argv):
        return subprocess.Popen([sys.executable, "-m", "stream_app", *argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    running = {"report": cli("report", "--experiment", experiment, "--html", str(html)),
               "watch": cli("watch", "--once"),
               "tail": cli("tail", "results", "--from-beginning", "--experiment", experiment),
               "tail_table": cli("tail", "results", "--from-beginning", "--experiment", experiment, "--table"),
               "publish": cli("publish", str(bad_csv), "--experiment", "bad-csv")}
    for name, value in settings.to_env().items():  # meanwhile, in this process: a report of nothing
        monkeypatch.setenv(name, value)
    missing = argparse.Namespace(experiment="no-such-experiment", html=str(tmp_path / "x.html"))
    assert report_main(missing) == 1
    err = capsys.readouterr().err
    assert "no results for experiment 'no-such-experiment'" in err and experiment in err
    assert not (tmp_path / "x.html").exists()
    done = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=60)
        done[name] = (process.returncode, out, err)

    code, out, err = done["report"]
    assert code == 0, err
    page = html.read_text()
    units, total = csv_totals()[(MINUTES, "control")]
    assert f"<td>{units:,}</td><td>{total:,.2f}</td>" in page and page.count("<svg") == 4
    assert table_rows(metric_section(page, MINUTES))[1][0] == "improvement"
    assert table_rows(metric_section(page, CALLS))[1][0] == "regression"

    code, out, err = done["watch"]
    assert code == 0, err
    screen, alerts = out.split("latest alerts", 1)
    screen = screen.split("\n", 1)[1]  # below the header and its colour legend
    table = "\n".join(line for line in screen.splitlines() if "message_" in line)
    assert experiment in screen and table.count("improvement") == 2 and table.count("regression") == 2
    assert "Significant regression" in screen  # the experiment's status, in its title
    assert "-44.48%" in screen and "significance_reached" in alerts

    code, out, err = done["tail"]
    assert code == 0, err
    lines = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert len(lines) == len(expected) and {r["experiment_id"] for r in lines} == {experiment}
    # The wire format: non-finite numbers as strings (burn-in rows), so each line decodes back to
    # exactly the row the worker wrote.
    assert any(r["standard_error"] == "inf" for r in lines)
    assert distinct_results([decode_row(line.encode()) for line in out.splitlines() if line.strip()]) == expected

    code, out, err = done["tail_table"]
    assert code == 0, err
    readable = [line for line in out.splitlines() if line.strip()]
    assert len(readable) == len(expected)
    assert all(experiment in line and "lift" in line for line in readable)
    burn_in = [line for line in readable if "burn-in" in line]
    assert burn_in and all(" CI \u2014 " in line for line in burn_in)  # no 0% lift, no (-inf, inf)
    assert all(" CI [" in line for line in readable if line not in burn_in)
    assert sum("not significant" in line for line in readable) < len(readable)  # some are significant

    code, out, err = done["publish"]
    assert code == 1 and "line 3" in err and "nothing sent" in err
    sent = collect(settings, "observations", timeout=1.0)
    assert sent and not [m for m in sent if m.get("experiment_id") == "bad-csv"]


@pytest.mark.timeout(120)
def test_watch_in_a_pseudo_terminal_of_80_columns_keeps_variations_distinct(broker, tmp_path):
    """The real command on a real broker, its screen an 80 x 50 pseudo-terminal: every row names
    its variation whole, nothing is wider than the terminal, the SRM experiment comes first and
    the dead letters are counted."""
    import fcntl
    import pty
    import struct
    import termios

    from stream_app.codec import config_message, deadletter_message, encode_row
    from tests.stream_support import isolated_settings, produce

    settings = isolated_settings(broker, tmp_path)
    messages = [("experiments", b"covid", config_message("covid", 1, {}, config()["metrics"]))]
    messages += [("results", r["experiment_id"].encode(), encode_row(r)) for r in covid_results() + covid_results("zz-split")]
    messages += [("alerts", b"zz-split", orjson.dumps(srm_alert("zz-split")))]
    messages += [("deadletter", b"covid", deadletter_message("field 'unit_count': bad", settings.topic("observations"), 0, i,
                                                             b"covid", b"{}")) for i in range(2)]
    produce(settings, messages)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(settings.to_env(), TERM="xterm-256color")
    process = subprocess.Popen([sys.executable, "-m", "stream_app", "watch", "--once"], env=env, stdin=follower,
                               stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(30) == 0, process.stderr.read()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")
    lines = screen.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), max(lines, key=len)
    rows = [line for line in lines if re.match(r"\s*message_[12]\s", line)]
    assert len(rows) == 8, screen  # 2 experiments x 2 metrics x 2 variations, each named whole
    assert sum(line.split()[0] == "message_1" for line in rows) == 4 and sum(line.split()[0] == "message_2" for line in rows) == 4
    assert "…" not in "".join(rows)
    assert screen.index("zz-split  vs control") < screen.index("covid  vs control")  # the SRM first, not by name
    assert "2 dead-lettered" in screen


def test_report_leads_with_health_and_has_a_guardrail_section_reset_marks_and_dead_letters():
    rows = covid_results()
    reset_at = sorted({r["interval_timestamp"] for r in rows})[-5]
    rows = [dict(r, stats_reset=r["interval_timestamp"] == reset_at) for r in rows]
    guard = dict(config(), metrics={MINUTES: {"lower_is_better": True}, CALLS: {"in_fdr_family": False}})
    alerts = [srm_alert("covid"), Alert("stats_reset", "covid", reset_at, "effect changed: statistics restarted").to_dict()]
    dead = {"count": 4, "late": 1, "reasons": ["field 'unit_count': bad", "observation too late for its interval"]}
    html = build_report("covid", rows, [guard], alerts=alerts, dead_letters=dead)
    body = html.split("<body>", 1)[1]
    assert body.index('class="banner srm alert"') < body.index("<section"), "health before the numbers"
    assert "every result of this experiment may be biased" in body
    assert "4 input message(s) dead-lettered (1 too late for their interval)" in body and "too late for its interval" in body
    assert "significantly harmed" in body  # calls went up: harm on the guardrail
    goals, guardrails = body.split('<h2 class="group">Guardrail metrics</h2>')
    assert f"<h2>{MINUTES}</h2>" in goals and f"<h2>{CALLS}</h2>" in guardrails and CALLS not in goals.split("<section")[-1]
    assert {cls for cls, _ in table_rows(metric_section(html, CALLS))[1:]} == {"regression harm"}
    assert all("unreliable: sample ratio mismatch" in cells[-1] for _, cells in table_rows(metric_section(html, MINUTES))[1:])
    assert html.count('<line class="reset"') == 4  # one per chart
    assert 'class="pt improvement"' in html and 'class="pt harm"' in html

    both_lower = dict(config(), metrics={MINUTES: {"lower_is_better": True}, CALLS: {"lower_is_better": True}})
    healthy = build_report("covid", covid_results(), [both_lower])
    assert 'class="banner ok"' in healthy and "banner srm" not in healthy and "Guardrail metrics" not in healthy


def test_one_number_format_on_every_surface_with_relative_intervals_clipped_at_minus_100_percent():
    from stream_app.console.cli import _table_line
    from stream_app.console.demo import format_row, summary_table
    from stream_app.formatting import CLIP_NOTE, fmt_interval
    from stream_app.health import row_display

    assert fmt_interval(-1.5, 0.2) == "[-100.00%*, +20.00%]" and fmt_interval(-1.5, 0.2, relative=False) == "[-1.5, +0.2]"
    assert fmt_interval(-0.5, 0.2) == "[-50.00%, +20.00%]" and fmt_interval(-math.inf, math.inf) == "\u2014"
    last = {(r["metric"], r["variation_id"]): r for r in covid_results()}
    row = dict(last[(CALLS, "message_1")], corrected_conf_interval_lower=-1.7, corrected_p_value=0.0123)
    shown = row_display(row, config())
    assert (shown["lift"], shown["ci"], shown["p"]) == ("-33.45%", "[-100.00%*, -25.36%]", "0.0123") and shown["ci_clipped"]
    state = watch_state()
    state.apply("results", dict(row, interval_timestamp=row["interval_timestamp"] + 60))
    surfaces = {
        "watch": export(render(state)),
        "watch at 80 columns": export(render(state, width=80)),
        "report": html_lib.unescape(build_report("covid", covid_results()[:-4] + [row], [config()])),
        "tail --table": _table_line("results", row).replace("\\[", "["),
        "demo": format_row(row) + "\n" + summary_table({("covid", CALLS, "message_1"): row}, []),
    }
    for surface, text in surfaces.items():
        for value in (shown["lift"], shown["ci"], shown["p"]):
            assert value in text, (surface, value)
    assert CLIP_NOTE in surfaces["report"]
    # tolerated before the stream's lateness lands: a row that says it folded late data in
    assert "arrived late" in row_display(dict(row, late_observations=2), config())["verdict"]
    assert not shown["late"] and "late" not in shown["verdict"]
