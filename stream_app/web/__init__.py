"""The web surface every worker serves: the HTTP API (views.py) and the live dashboard
(dashboard.py, static/). ``register(app, worker)`` adds them to a faust app; the views read the
worker only through the :class:`~stream_app.web.context.WorkerReadModel` it is given."""

from __future__ import annotations

import faust

from .context import WorkerReadModel


def register(app: faust.App, worker: WorkerReadModel) -> None:
    from . import dashboard, views  # noqa: F401  (their pages add themselves to views.PAGES)

    app.seqstream_worker = worker
    for path, view in views.PAGES:
        app.page(path)(view)
