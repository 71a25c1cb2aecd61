"""The live dashboard served by every worker (faust web views).

- ``GET /dashboard``: one self-contained HTML page (stream_app/web/static/dashboard.html; no external
  scripts or styles) that polls the JSON API below and updates in place: the experiments list, the
  selected experiment's results table, a chart of lift with its always-valid confidence sequence
  per interval for every metric x variation, and the alerts feed. ``?experiment=ID`` selects one.
- ``GET /experiments/{id}/history[?since=TS]``: the result rows of every interval this worker has
  closed for the experiment and still holds (oldest first; at most stream_app.app.HISTORY_INTERVALS, and
  SEQSTREAM_HISTORY_MB of rows over all experiments: stream_app/recent.py), only those after
  interval timestamp ``TS`` when given; answered by the worker that owns the experiment's
  partition. Non-finite numbers are the strings "inf", "-inf", "nan", as everywhere in the API.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
from faust.web import Request, Response

from .context import WorkerView, owner_routed
from .views import NotFound, _error, _json, _json_array, live_experiment, page

STATIC = Path(__file__).resolve().parent / "static"
DASHBOARD_HTML = STATIC / "dashboard.html"


@page("/dashboard")
class Dashboard(WorkerView):
    async def get(self, request: Request) -> Response:
        try:
            page = DASHBOARD_HTML.read_bytes()  # read per request: small, and edits show on reload
        except OSError as exc:
            return _error(self, 500, f"dashboard page missing from the installation: {exc}")
        return self.bytes(page, content_type="text/html", headers={"Cache-Control": "no-cache"})


def _since(request: Request):
    """The ``since`` query parameter as a float, None when absent, or an error message."""
    raw = request.query.get("since")
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        return f"since must be an interval timestamp (unix seconds), got {raw!r}"
    return None if math.isnan(value) else value


@page("/experiments/{experiment_id}/history")
class History(WorkerView):
    @owner_routed(match_info="experiment_id")
    async def get(self, request: Request, experiment_id: str) -> Response:
        try:
            state = live_experiment(self, experiment_id).state
        except NotFound as exc:
            return _error(self, 404, str(exc))
        since = _since(request)
        if isinstance(since, str):
            return _error(self, 400, since)
        head = {
            "experiment_id": experiment_id,
            "reference_variation_id": state.config.reference_variation_id,
            "alpha": state.config.alpha,
            # which direction is an improvement, per metric (rows do not carry it)
            "lower_is_better": {m: bool(state.metric_config(m).lower_is_better) for m in state.metrics},
        }
        parts = (b'{"interval_timestamp":' + orjson.dumps(interval.interval_timestamp) + b',"rows":'
                 + _json_array(interval.rows) + b"}" for interval in self.worker.recent.history(experiment_id, since))
        return _json(self, orjson.dumps(head)[:-1] + b',"intervals":' + _json_array(parts) + b"}")
