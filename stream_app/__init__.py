"""seqstream's faust service: Kafka records -> state (pure statistics) -> results and alerts.

Import ``stream_app.app`` for the faust application (it reads its settings from the
environment at import time); the other modules are usable without it.
"""
