"""The worker's HTTP API on a real broker: batch endpoint, auth, limits, routing, metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from state import evaluate
from stream_app.codec import decode_number
from stream_app.web.views import BATCH_BODY_BYTES
from tests.conftest import covid_request
from tests.stream_support import (collect, covid_stream_rows, isolated_settings, observation_messages, produce,
                                  start_worker, until_keys)

pytestmark = pytest.mark.timeout(180)
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def api(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    settings = isolated_settings(broker, tmp, api_token=TOKEN, max_message_bytes=65536)
    produce(settings, observation_messages(covid_stream_rows("web")))
    worker = start_worker(settings, tmp)
    collect(settings, "results", until_keys(72), timeout=60)
    yield settings, worker.url
    worker.stop()


def call(url, method="GET", body: bytes | None = None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return decode_number(value)


def test_batch_endpoint_returns_exactly_what_evaluate_returns(api):
    _, url = api
    request = covid_request()
    status, content_type, body = call(url + "/stats-engine/v0/batch", "POST", json.dumps(request).encode(),
                                      {"Content-Type": "application/json"})
    assert status == 200 and content_type.startswith("application/json")
    assert repr(_decode(json.loads(body))) == repr(evaluate(request))


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"config": {"alhpa": 1}, "metrics": []}).encode(), 400, "unknown option"),
    (b"x" * (BATCH_BODY_BYTES + 10), 413, "exceeds"),  # batch bodies: 32 MB (100,000 rows), issue 17
], ids=["malformed", "unknown-option", "oversized"])
def test_bad_batch_requests_get_json_errors(api, body, status, message):
    _, url = api
    got, content_type, raw = call(url + "/stats-engine/v0/batch", "POST", body)
    assert got == status and content_type.startswith("application/json")
    assert message in json.loads(raw)["error"]


def test_config_writes_need_the_bearer_token(api):
    settings, url = api
    config = json.dumps({"version": 5, "reference_variation_id": "control", "alpha": 0.05}).encode()
    assert call(url + "/experiments/web/config", "PUT", config)[0] == 401
    assert call(url + "/experiments/web/config", "PUT", config, {"Authorization": "Bearer wrong"})[0] == 401
    bad = json.dumps({"version": 6, "alpha": 7}).encode()
    status, _, raw = call(url + "/experiments/web/config", "PUT", bad, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and "alpha" in json.loads(raw)["error"]
    status, _, _ = call(url + "/experiments/web/config", "PUT", config, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 202
    shown = subprocess.run([sys.executable, "-m", "stream_app", "experiment", "show", "web"], capture_output=True,
                           text=True, env={**__import__("os").environ, **settings.to_env()}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["alpha"] == 0.05 and json.loads(shown.stdout)["version"] == 5


def test_results_alerts_experiments_health_and_metrics(api):
    _, url = api
    status, _, raw = call(url + "/experiments")
    assert status == 200 and "web" in json.loads(raw)["experiments"]
    status, _, raw = call(url + "/experiments/web/results")
    doc = json.loads(raw)
    assert status == 200 and doc["summary"]["intervals_closed"] == 18 and len(doc["rows"]) == 4
    assert all(row["rejected"] for row in doc["rows"])
    status, _, raw = call(url + "/experiments/web/alerts")
    kinds = {a["kind"] for a in json.loads(raw)["alerts"]}
    assert status == 200 and "significance_reached" in kinds
    status, _, raw = call(url + "/experiments/nobody/results")
    assert status == 404 and "nobody" in json.loads(raw)["error"]
    assert call(url + "/health")[0] == 200
    deadline = time.monotonic() + 15  # states are saved at faust's next offset commit (every 2.8 s)
    while True:
        status, content_type, raw = call(url + "/metrics")
        text = raw.decode()
        if "seqstream_states_saved_total 0\n" not in text or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    saved = int(re.search(r"^seqstream_states_saved_total (\d+)$", text, re.M).group(1))
    assert saved >= 1, text  # one experiment, saved at each commit after its state changed
    assert status == 200 and content_type.startswith("text/plain")
    observations = len(covid_stream_rows("web"))
    assert f"seqstream_observations_in_total {observations}\n" in text
    assert "seqstream_rows_out_total 72\n" in text and "seqstream_deadletters_total 0\n" in text
    # The agent's account of its time: every stage ran, so every one has taken some.
    seconds = dict(re.findall(r"^seqstream_(seconds_\w+|gc_seconds)_total ([0-9.e-]+)$", text, re.M))
    assert set(seconds) == {"seconds_waiting_for_input", "seconds_processing", "seconds_sending",
                            "seconds_awaiting_acks", "seconds_writing_state", "gc_seconds"}
    assert all(float(v) > 0 for v in seconds.values()), seconds


def test_health_before_the_consumer_starts_reports_no_partitions_instead_of_failing():
    """The web server answers before faust's consumer has started; /health must not raise then
    (a plain install's first health probes logged a ConsumerNotStarted traceback)."""
    from faust.exceptions import ConsumerNotStarted

    from stream_app.app import WorkerReadModel, app

    with pytest.raises(ConsumerNotStarted):
        app.consumer.assignment()  # the situation: not started in this process
    assert WorkerReadModel.assigned_partitions() == []
