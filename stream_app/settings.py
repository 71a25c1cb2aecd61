"""Worker settings from the environment; the same names are used in docker-compose.yml."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

DEFAULT_CACHE_EXPERIMENTS = 50_000  # experiments kept decoded (stream_app/processor.py)
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")

# Environment variable -> (attribute, type, default). KAFKA_BOOTSTRAP unset means "no Kafka
# configured": every command then uses the local default broker (SEQSTREAM_LOCAL_BROKER), which
# `seqstream worker` starts embedded if nothing answers there; `seqstream demo` embeds its own.
ENVIRONMENT = {
    "KAFKA_BOOTSTRAP": ("bootstrap", str, None),
    "SEQSTREAM_APP_ID": ("app_id", str, "seqstream"),
    "SEQSTREAM_TOPIC_PREFIX": ("topic_prefix", str, "seqstream."),
    "SEQSTREAM_PARTITIONS": ("partitions", int, 4),
    "SEQSTREAM_REPLICATION": ("replication", int, 1),
    "SEQSTREAM_STORE": ("store", str, "rocksdb://"),
    "SEQSTREAM_DATADIR": ("datadir", str, "./seqstream-data"),
    "SEQSTREAM_WEB_HOST": ("web_host", str, "127.0.0.1"),
    "SEQSTREAM_WEB_PORT": ("web_port", int, 6066),
    "SEQSTREAM_IDLE_TIMEOUT": ("idle_timeout", float, 30.0),
    "SEQSTREAM_BATCH_SIZE": ("batch_size", int, 2000),
    "SEQSTREAM_BATCH_WITHIN": ("batch_within", float, 0.05),
    "SEQSTREAM_MAX_MESSAGE_BYTES": ("max_message_bytes", int, 65536),
    "SEQSTREAM_SESSION_TIMEOUT": ("session_timeout", float, 10.0),
    "SEQSTREAM_HEARTBEAT_INTERVAL": ("heartbeat_interval", float, 1.0),
    "SEQSTREAM_REBALANCE_TIMEOUT": ("rebalance_timeout", float, 60.0),
    # Seconds between offset commits, each preceded by saving the experiment states changed since
    # the last (stream_app/app.py): longer saves fewer states while catching up on a backlog, and
    # leaves more to process again after a crash.
    "SEQSTREAM_COMMIT_INTERVAL": ("commit_interval", float, 2.8),
    # Longest client-side wait after an empty fetch answered early (stream_app/kafka/long_poll.py); up
    # to 50 ms while fetched records still wait for the agent.
    "SEQSTREAM_FETCH_IDLE_WAIT": ("fetch_idle_wait", float, 0.005),
    # Result rows the web views keep in memory for histories, in all (stream_app/recent.py).
    "SEQSTREAM_HISTORY_MB": ("history_mb", int, 128),
    # Experiments kept decoded between batches (stream_app/processor.py), about 20 KB each.
    "SEQSTREAM_CACHE_EXPERIMENTS": ("cache_experiments", int, DEFAULT_CACHE_EXPERIMENTS),
    # Codec of the record batches the worker and `seqstream publish` produce: none, gzip, snappy,
    # lz4 or zstd (at level 1, stream_app/kafka/zstd_level.py). Input is read whatever its codec
    # (cramjam, a dependency, has all but gzip). zstd: result rows repeat their 33 keys, so the
    # broker stores and serves about an eighth of the bytes (on the embedded broker, half its CPU).
    "SEQSTREAM_COMPRESSION": ("compression", str, "zstd"),
    "SEQSTREAM_API_TOKEN": ("api_token", str, None),
    # --- stream correctness (issue 17): event time, lateness and bounds (docs/lateness.md) ---
    # An interval that is not complete is emitted once more than this many later intervals of its
    # experiment are open (absorbs rows displaced by up to two intervals, a producer lagging 1.5).
    "SEQSTREAM_WATERMARK_DELAY": ("watermark_delay", int, 2),
    # Rows for any of an experiment's last this-many emitted intervals are still applied (folded
    # into its next emission, flagged there); older ones are dead-lettered as too late.
    "SEQSTREAM_ALLOWED_LATENESS": ("allowed_lateness", int, 12),
    # Seconds an interval_timestamp may lie after the wall clock; later is dead-lettered.
    "SEQSTREAM_MAX_FUTURE_SKEW": ("max_future_skew", float, 86_400.0),
    # (metric, variation) arms per experiment; a row of one more is dead-lettered (bounds a state,
    # about 200 bytes an arm, below the changelog's message limit).
    "SEQSTREAM_MAX_ARMS": ("max_arms", int, 1000),
    # Experiments one worker holds (on its partitions); a message that would start one more is
    # dead-lettered (bounds its table, its start-up and its timers; existing ones go on).
    "SEQSTREAM_MAX_EXPERIMENTS": ("max_experiments", int, 100_000),
    "SEQSTREAM_LOG_LEVEL": ("log_level", str, "info"),  # crit, error, warn, info or debug
    # --- results surfaces (issue 19) ---
    # On taking a partition over, the web views are rebuilt from the results, alerts and
    # dead-letter topics, reading at most this many messages back from each partition's end
    # (stream_app/kafka/view_rebuild.py).
    "SEQSTREAM_REBUILD_MESSAGES": ("rebuild_messages", int, 2_000_000),
    # -- the local default broker (issue 18) -------------------------------------------------
    # Where every command looks for a broker while KAFKA_BOOTSTRAP is unset, and where
    # `seqstream worker` and `seqstream broker` start the embedded one if nothing answers there.
    # Documented default 127.0.0.1:9092; the tests point it at a free port of their own.
    "SEQSTREAM_LOCAL_BROKER": ("local_broker", str, "127.0.0.1:9092"),
}


@dataclass(frozen=True)
class Settings:
    bootstrap: str | None
    app_id: str
    topic_prefix: str
    partitions: int
    replication: int
    store: str
    datadir: str
    web_host: str
    web_port: int
    idle_timeout: float
    batch_size: int
    batch_within: float
    max_message_bytes: int
    session_timeout: float
    heartbeat_interval: float
    rebalance_timeout: float
    commit_interval: float
    fetch_idle_wait: float
    history_mb: int
    cache_experiments: int
    compression: str
    api_token: str | None
    watermark_delay: int
    allowed_lateness: int
    max_future_skew: float
    max_arms: int
    max_experiments: int
    log_level: str
    rebuild_messages: int = 2_000_000
    # -- the local default broker (issue 18) --
    local_broker: str = "127.0.0.1:9092"

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for name, (attr, kind, default) in ENVIRONMENT.items():
            raw = env.get(name)
            try:
                values[attr] = default if raw in (None, "") else kind(raw)
            except ValueError:
                raise SystemExit(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        if values["compression"] not in COMPRESSION_TYPES:
            raise SystemExit(f"SEQSTREAM_COMPRESSION={values['compression']!r} is not one of {', '.join(COMPRESSION_TYPES)}")
        _check_values(values, env)  # issue 18: out-of-range values refused here, before any use
        return cls(**values)

    @property
    def compression_type(self) -> str | None:
        """The producers' ``compression_type`` (None: uncompressed)."""
        return None if self.compression == "none" else self.compression

    def topic(self, kind: str) -> str:
        return f"{self.topic_prefix}{kind}"

    def to_env(self) -> dict[str, str]:
        by_attr = {attr: name for name, (attr, _, _) in ENVIRONMENT.items()}
        return {by_attr[f.name]: str(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}


# -- value checks (issue 18) ------------------------------------------------------------------
# A value of the right type can still be unusable: SEQSTREAM_PARTITIONS=0 reaches the broker only
# as a failed CreateTopics (after `topics create --recreate` has deleted the old ones), a bad
# SEQSTREAM_LOG_LEVEL as faust's click usage text. Every numeric setting has its range here, so
# Settings.from_env refuses it in one line before anything runs.
LOG_LEVELS = ("crit", "error", "warn", "info", "debug")  # faust's --loglevel choices
_AT_LEAST_1 = (lambda v: v >= 1, "a whole number >= 1")
_AT_LEAST_0 = (lambda v: v >= 0, "a whole number >= 0")
_SECONDS = (lambda v: 0 < v < float("inf"), "a positive number of seconds")
_SECONDS_OR_0 = (lambda v: 0 <= v < float("inf"), "zero or a positive number of seconds")
VALUE_RANGES = {
    "partitions": _AT_LEAST_1,
    "replication": _AT_LEAST_1,
    "web_port": (lambda v: 1 <= v <= 65535, "a port number, 1 to 65535"),
    "idle_timeout": _SECONDS,
    "batch_size": _AT_LEAST_1,
    "batch_within": _SECONDS,
    "max_message_bytes": _AT_LEAST_1,
    "session_timeout": _SECONDS,
    "heartbeat_interval": _SECONDS,
    "rebalance_timeout": _SECONDS,
    "commit_interval": _SECONDS,
    "fetch_idle_wait": _SECONDS_OR_0,
    "history_mb": _AT_LEAST_0,
    "cache_experiments": _AT_LEAST_1,
    "rebuild_messages": _AT_LEAST_0,
    "max_arms": _AT_LEAST_1,
    "max_experiments": _AT_LEAST_1,
}


def _check_values(values: dict, env) -> None:
    """SystemExit with one line naming the first variable whose value is out of its range."""
    by_attr = {attr: name for name, (attr, _, _) in ENVIRONMENT.items()}

    def refuse(attr: str, wanted: str) -> None:
        name = by_attr[attr]
        raise SystemExit(f"{name}={env.get(name)!r} must be {wanted}")

    for attr, (ok, wanted) in VALUE_RANGES.items():
        if not ok(values[attr]):  # nan fails every comparison, so it is refused too
            refuse(attr, wanted)
    if values["log_level"].lower() not in LOG_LEVELS:
        refuse("log_level", "one of " + ", ".join(LOG_LEVELS))
    values["log_level"] = values["log_level"].lower()
    host, sep, port = values["local_broker"].rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        refuse("local_broker", "HOST:PORT with a port 1 to 65535")


def broker_settings(command: str, env=None) -> Settings | None:
    """Settings for a command that needs Kafka, pointed at KAFKA_BOOTSTRAP or, while it is unset,
    at the local default broker (SEQSTREAM_LOCAL_BROKER); None, after one line on stderr saying
    how to start or name one, when no broker answers there (stream_app/kafka/clients.py)."""
    from .kafka.clients import reachable_broker  # lazy: the settings themselves need no Kafka client

    return reachable_broker(command, Settings.from_env(env))
