"""HTTP API served by every worker (faust web views).

- ``POST /stats-engine/v0/batch``: the reference service's batch call (state.evaluate); the
  response is a JSON list (one list of rows per metric) with non-finite numbers as the strings
  "inf", "-inf", "nan".
- ``GET /experiments``: experiments whose state this worker holds.
- ``GET /experiments/{id}/results`` and ``/alerts``: latest rows and recent alerts, answered by the
  worker that owns the experiment's partition (faust table routing).
- ``PUT /experiments/{id}/config``: publish a config version (bearer token SEQSTREAM_API_TOKEN).
- ``GET /health``, ``GET /metrics`` (Prometheus text).
Errors are JSON ``{"error": message}`` with a 4xx/5xx status; request bodies are limited to
SEQSTREAM_MAX_MESSAGE_BYTES x 16, batch requests to 32 MB (BATCH_BODY_BYTES).
"""

from __future__ import annotations

import asyncio
import hmac

import orjson
from faust.web import Request, Response, View

from state import InvalidInput, evaluate
from state.live import LiveExperiment

from ..codec import checked_config_message, encode_row
from .context import WorkerView, owner_routed

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


@page("/experiments")
class Experiments(WorkerView):
    async def get(self, request: Request) -> Response:
        return _json(self, {"experiments": self.worker.local_experiments()})


@page("/experiments/{experiment_id}/results")
class Results(WorkerView):
    @owner_routed(match_info="experiment_id")
    async def get(self, request: Request, experiment_id: str) -> Response:
        try:
            summary = live_experiment(self, experiment_id).summary()
        except NotFound as exc:
            return _error(self, 404, str(exc))
        rows = _json_array(self.worker.recent.latest(experiment_id))
        return _json(self, b'{"summary":' + orjson.dumps(summary) + b',"rows":' + rows + b"}")


@page("/experiments/{experiment_id}/alerts")
class Alerts(WorkerView):
    @owner_routed(match_info="experiment_id")
    async def get(self, request: Request, experiment_id: str) -> Response:
        if not self.worker.has_experiment(experiment_id):
            return _error(self, 404, f"no experiment {experiment_id!r}")
        return _json(self, {"experiment_id": experiment_id, "alerts": self.worker.recent_alerts.get(experiment_id)})


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
