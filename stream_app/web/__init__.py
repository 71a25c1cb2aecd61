"""The web surface every worker serves: the HTTP API (views.py) and the live dashboard
(dashboard.py, static/). ``register(app, worker)`` adds them to a faust app; the views read the
worker only through the :class:`~stream_app.web.context.WorkerReadModel` it is given."""

from __future__ import annotations

import faust

from .context import WorkerReadModel


# Sent with every response of the dashboard and the API: no content sniffing, no framing by other
# sites (clickjacking), and a content security policy that lets the self-contained dashboard run
# its own inline script and style and talk to this worker only.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                "form-action 'none'"),
}


async def _add_security_headers(request, response) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def register(app: faust.App, worker: WorkerReadModel) -> None:
    from . import dashboard, views  # noqa: F401  (their pages add themselves to views.PAGES)

    app.seqstream_worker = worker
    for path, view in views.PAGES:
        app.page(path)(view)


def install_security_headers(web) -> None:
    """Add SECURITY_HEADERS to every response of faust's aiohttp server (``App.on_webserver_init``)."""
    web.web_app.on_response_prepare.append(_add_security_headers)
