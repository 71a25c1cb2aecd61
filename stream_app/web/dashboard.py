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
  Each interval also carries ``display``: per row, its state and formatted numbers
  (stream_app.health.row_display), so the charts colour each point by its own state and write
  numbers as every other surface does.
- ``GET /experiments/{id}/export?format=csv|json``: the same rows, every held interval, as a CSV
  (columns in state.results.ROW_COLUMNS order, then any others; non-finite numbers as in the API)
  or a JSON array, for download.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import orjson
from faust.web import Request, Response

from state.results import ROW_COLUMNS

from ..codec import decode_row
from ..health import row_display
from .context import WorkerView, owner_routed
from .views import NotFound, _error, _json, _json_array, config_doc, has_srm, live_experiment, page

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
            live = live_experiment(self, experiment_id)
        except NotFound as exc:
            return _error(self, 404, str(exc))
        state = live.state
        since = _since(request)
        if isinstance(since, str):
            return _error(self, 400, since)
        config = config_doc(live)
        srm = has_srm(self.worker, experiment_id, live)
        head = {
            "experiment_id": experiment_id,
            "reference_variation_id": state.config.reference_variation_id,
            "alpha": state.config.alpha,
            # which direction is an improvement, per metric (rows do not carry it)
            "lower_is_better": {m: bool(state.metric_config(m).lower_is_better) for m in state.metrics},
            "metrics": list(config["metrics"]),  # config order
            "rebuilding": self.worker.rebuilding(),
        }

        def display(rows) -> bytes:
            return orjson.dumps([row_display(decode_row(raw), config, srm) for raw in rows])

        parts = (b'{"interval_timestamp":' + orjson.dumps(interval.interval_timestamp) + b',"rows":'
                 + _json_array(interval.rows) + b',"display":' + display(interval.rows) + b"}"
                 for interval in self.worker.recent.history(experiment_id, since))
        return _json(self, orjson.dumps(head)[:-1] + b',"intervals":' + _json_array(parts) + b"}")


def _csv_cell(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def rows_csv(rows: list[dict]) -> str:
    """Rows as they are on the results topic (non-finite numbers as "inf", "-inf", "nan")."""
    columns = [c for c in ROW_COLUMNS if any(c in r for r in rows)]
    columns += list(dict.fromkeys(k for r in rows for k in r if k not in columns))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return out.getvalue()


@page("/experiments/{experiment_id}/export")
class Export(WorkerView):
    @owner_routed(match_info="experiment_id")
    async def get(self, request: Request, experiment_id: str) -> Response:
        if not self.worker.has_experiment(experiment_id):
            return _error(self, 404, f"no experiment {experiment_id!r}")
        kind = request.query.get("format", "csv")
        if kind not in ("csv", "json"):
            return _error(self, 400, f"format must be csv or json, got {kind!r}")
        raw = [row for interval in self.worker.recent.history(experiment_id) for row in interval.rows]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_id)
        headers = {"Content-Disposition": f'attachment; filename="{safe}-results.{kind}"'}
        if kind == "json":
            return self.bytes(_json_array(raw), content_type="application/json", headers=headers)
        text = rows_csv([orjson.loads(r) for r in raw])
        return self.bytes(text.encode(), content_type="text/csv", headers=headers)
