"""What the web views read of the worker, and how a request reaches the experiment's owner.

The views never import the worker module (stream_app.app): it hands them a :class:`WorkerReadModel`
when it registers them (stream_app.web.register), and each view finds it as ``self.worker``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

import orjson
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from state.live import LiveExperiment

from ..metrics import Metrics
from ..recent import DeadLetters, RecentAlerts, RecentResults
from ..settings import Settings


class WorkerReadModel(Protocol):
    """The worker's state as the views may read it (and the one write they may make)."""

    settings: Settings
    metrics: Metrics
    recent: RecentResults
    recent_alerts: RecentAlerts
    dead_letters: DeadLetters
    table_name: str  # the experiment table: requests for an experiment go to its partition's owner

    def current_experiment(self, experiment_id: str) -> LiveExperiment | None: ...
    def has_experiment(self, experiment_id: str) -> bool: ...
    def local_experiments(self) -> list[str]: ...
    def assigned_partitions(self) -> list[int]: ...
    def group_member_id(self) -> str | None: ...
    def rebuilding(self) -> bool: ...
    async def publish_config(self, experiment_id: str, message: bytes) -> None: ...


class WorkerView(View):
    @property
    def worker(self) -> WorkerReadModel:
        return self.app.seqstream_worker


Handler = Callable[..., Awaitable[Response]]


def owner_routed(match_info: str) -> Callable[[Handler], Handler]:
    """faust's ``app.table_route(table, match_info=...)`` for a table named at request time: the
    request goes to the worker that holds the key's partition of the experiment table, or is
    answered here when that is this worker."""

    def decorate(handler: Handler) -> Handler:
        async def routed(view: WorkerView, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = request.match_info[match_info]
            try:
                return await view.app.router.route_req(view.worker.table_name, key, view.web, request)
            except SameNode:
                return await handler(view, request, *args, **kwargs)
            except ServiceUnavailable:
                # No worker holds the key's partition yet (a fresh worker before its first
                # assignment): an experiment this worker does not hold is unknown, not unavailable.
                if view.worker.has_experiment(key):
                    raise
                return view.bytes(orjson.dumps({"error": f"no experiment {key!r}"}), status=404,
                                  content_type="application/json")

        routed.__name__, routed.__doc__ = handler.__name__, handler.__doc__
        return routed

    return decorate
