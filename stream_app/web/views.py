"""HTTP API served by every worker (faust web views).

- ``POST /stats-engine/v0/batch``: the reference service's batch call (state.evaluate); the
  response is a JSON list (one list of rows per metric) with non-finite numbers as the strings
  "inf", "-inf", "nan".
- ``GET /experiments``: experiments whose state this worker holds: ``experiments`` (their ids,
  sorted) and ``summaries`` (one health summary each, stream_app.health.experiment_health: status,
  wins, regressions, guardrail harm, SRM, stats resets, burn-in, dead letters, last interval;
  most urgent first).
- ``GET /experiments/{id}/results``: the latest rows (``rows``, as on the results topic), their
  results table (``table``: per metric in config order, baseline and variations with their
  formatted numbers and verdicts, stream_app.health.results_table), the experiment's ``health``,
  its ``dead_letters`` tally and whether the views are still ``rebuilding`` after a takeover.
  ``/alerts``: recent alerts, in time order. ``/export?format=csv|json``: every held interval's
  rows as a download. All answered by the worker that owns the experiment's partition (faust
  table routing).
- ``PUT /experiments/{id}/config``: publish a config version (bearer token SEQSTREAM_API_TOKEN).
- ``GET /health``, ``GET /metrics`` (Prometheus text).
Errors are JSON ``{"error": message}`` with a 4xx/5xx status; request bodies are limited to
SEQSTREAM_MAX_MESSAGE_BYTES x 16, batch requests to 32 MB (BATCH_BODY_BYTES).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import NamedTuple

import orjson
from faust.web import Request, Response, View

from state import InvalidInput, evaluate
from state.live import LiveExperiment

from ..codec import checked_config_message, decode_row, encode_row
from ..formatting import CLIP_NOTE
from ..health import SRM_WARNING, by_urgency, experiment_health, results_table
from .context import WorkerReadModel, WorkerView, owner_routed

PAGES: list[tuple[str, type[View]]] = []  # (path, view), registered on the app by stream_app.web.register


def page(path: str):
    def add(view: type[View]) -> type[View]:
        PAGES.append((path, view))
        return view
    return add


def _json(view: View, payload, status: int = 200) -> Response:
    return view.bytes(payload if isinstance(payload, bytes) else orjson.dumps(payload), status=status,
                      content_type="application/json")


def _error(view: View, status: int, message: str) -> Response:
    return _json(view, {"error": message}, status)


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _body(view: WorkerView, request: Request):
    """The JSON body; RequestError for one too large (checked before reading it all) or malformed.
    Bodies are limited to SEQSTREAM_MAX_MESSAGE_BYTES x 16."""
    body = await _raw_body(view, request, 16 * view.worker.settings.max_message_bytes)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None


async def _raw_body(view: WorkerView, request: Request, MAX_BODY: int) -> bytes:
    """The body's bytes; RequestError for one over MAX_BODY (checked before reading it all)."""
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise RequestError(413, f"request body of {length} bytes exceeds the {MAX_BODY}-byte limit")
    chunks, size = [], 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestError(413, f"request body exceeds the {MAX_BODY}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class NotFound(Exception):
    pass


def live_experiment(view: WorkerView, experiment_id: str) -> LiveExperiment:
    """The owner's latest state of an experiment, changes not yet saved included (the views are
    table-routed to the owner). The worker's own object: read it, never change it."""
    current = view.worker.current_experiment(experiment_id)
    if current is None:
        raise NotFound(f"no experiment {experiment_id!r}")
    return current


def _json_array(items) -> bytes:
    """A JSON array of already encoded JSON values (bytes)."""
    return b"[" + b",".join(items) + b"]"


def _rows_json(rows) -> bytes:
    return _json_array(encode_row(r) for r in rows)


@page("/health")
class Health(WorkerView):
    async def get(self, request: Request) -> Response:
        worker = self.worker
        return _json(self, {"status": "ok", "app_id": worker.settings.app_id, "partitions": worker.assigned_partitions(),
                            "member_id": worker.group_member_id(), "experiments_local": len(worker.recent)})


@page("/metrics")
class PrometheusMetrics(WorkerView):
    async def get(self, request: Request) -> Response:
        return self.text(self.worker.metrics.prometheus(), content_type="text/plain; version=0.0.4")


BATCH_BODY_BYTES = 32 * 1_048_576  # a batch request of 100,000 rows is about 15 MB


def _evaluate_encoded(body: bytes) -> bytes:
    """Parse, score and encode a batch request (state.evaluate): all of it in a worker thread."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    return _json_array(_rows_json(rows) for rows in evaluate(request))


@page("/stats-engine/v0/batch")
class Batch(WorkerView):
    async def post(self, request: Request) -> Response:
        """Run off the event loop, which the stream shares: a 100,000-row request takes seconds
        to score and encode, and on the loop it would hold back results and heartbeats that
        long. In a thread the loop keeps its turn (the GIL is handed over every few ms, and
        numpy releases it), so stream results keep flowing (tests/test_stream.py)."""
        try:
            body = await _raw_body(self, request, max(BATCH_BODY_BYTES, 16 * self.worker.settings.max_message_bytes))
            response = await asyncio.to_thread(_evaluate_encoded, body)
        except RequestError as exc:
            return _error(self, exc.status, str(exc))
        except InvalidInput as exc:
            return _error(self, 400, str(exc))
        return _json(self, response)


def config_doc(live: LiveExperiment) -> dict:
    """The experiment's config as a config message writes it (what stream_app.health reads),
    metrics in config order."""
    state = live.state
    metrics = list(dict.fromkeys(list(state.metric_configs) + list(state.metrics)))
    return {"version": live.config_version, "reference_variation_id": state.config.reference_variation_id,
            "min_units": state.config.min_units, "alpha": state.config.alpha,
            "metrics": {m: state.metric_config(m).to_dict() for m in metrics}}


class ExperimentView(NamedTuple):
    summary: dict
    config: dict
    rows: list[dict]  # the latest interval's, decoded
    alerts: list[dict]
    dead_letters: dict
    health: dict


def has_srm(worker: WorkerReadModel, experiment_id: str, live: LiveExperiment) -> bool:
    """The engine's SRM flag for the experiment, or an SRM alert among those held."""
    return bool(live.state.srm_alerted) or any(a.get("kind") == "srm" for a in worker.recent_alerts.get(experiment_id))


def experiment_view(worker: WorkerReadModel, experiment_id: str, live: LiveExperiment) -> ExperimentView:
    summary = live.summary()
    config = config_doc(live)
    rows = [decode_row(raw) for raw in worker.recent.latest(experiment_id)]
    alerts = worker.recent_alerts.get(experiment_id)
    dead = worker.dead_letters.get(experiment_id).to_dict()
    srm = has_srm(worker, experiment_id, live)
    health = experiment_health(experiment_id, rows, config, srm=srm, alerts=alerts, dead_letters=dead,
                               intervals_closed=summary.get("intervals_closed"), last_interval=summary.get("last_interval"))
    return ExperimentView(summary, config, rows, alerts, dead, health)


SUMMARIES_BETWEEN_YIELDS = 200  # GET /experiments yields to the event loop after this many


@page("/experiments")
class Experiments(WorkerView):
    async def get(self, request: Request) -> Response:
        worker = self.worker
        names = worker.local_experiments()
        summaries = []
        for n, name in enumerate(names):
            if n and not n % SUMMARIES_BETWEEN_YIELDS:
                # Each summary decodes a state: 50,000 of them held the event loop, and with it the
                # stream, for 5 s (bench/bench_startup.py).
                await asyncio.sleep(0)
            live = worker.current_experiment(name)
            if live is not None:
                summaries.append(experiment_view(worker, name, live).health)
        return _json(self, {"experiments": names, "summaries": by_urgency(summaries),
                            "rebuilding": worker.rebuilding()})


@page("/experiments/{experiment_id}/results")
class Results(WorkerView):
    @owner_routed(match_info="experiment_id")
    async def get(self, request: Request, experiment_id: str) -> Response:
        try:
            live = live_experiment(self, experiment_id)
        except NotFound as exc:
            return _error(self, 404, str(exc))
        view = experiment_view(self.worker, experiment_id, live)
        srm = view.health["srm"]
        head = {"summary": view.summary, "health": view.health, "dead_letters": view.dead_letters,
                "table": [t.to_dict() for t in results_table(view.rows, view.config, srm)],
                "config": view.config, "srm_warning": SRM_WARNING if srm else None, "clip_note": CLIP_NOTE,
                "rebuilding": self.worker.rebuilding()}
        rows = _json_array(self.worker.recent.latest(experiment_id))
        return _json(self, orjson.dumps(head)[:-1] + b',"rows":' + rows + b"}")


@page("/experiments/{experiment_id}/alerts")
class Alerts(WorkerView):
    @owner_routed(match_info="experiment_id")
    async def get(self, request: Request, experiment_id: str) -> Response:
        if not self.worker.has_experiment(experiment_id):
            return _error(self, 404, f"no experiment {experiment_id!r}")
        return _json(self, {"experiment_id": experiment_id, "alerts": self.worker.recent_alerts.get(experiment_id),
                            "rebuilding": self.worker.rebuilding()})


@page("/experiments/{experiment_id}/config")
class Config(WorkerView):
    async def put(self, request: Request, experiment_id: str) -> Response:
        token = self.worker.settings.api_token
        if not token:
            return _error(self, 403, "config writes are disabled: set SEQSTREAM_API_TOKEN on the worker")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(self, 401, "missing or wrong bearer token")
        try:
            body = await _body(self, request)
        except RequestError as exc:
            return _error(self, exc.status, str(exc))
        if not isinstance(body, dict):
            return _error(self, 400, "the config must be a JSON object")
        try:
            value = checked_config_message(experiment_id, body.get("version"), body)
        except InvalidInput as exc:
            return _error(self, 400, str(exc))
        await self.worker.publish_config(experiment_id, value)
        return _json(self, {"status": "published", "experiment_id": experiment_id}, 202)
