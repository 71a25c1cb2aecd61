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


def broker_settings(command: str, env=None) -> Settings | None:
    """Settings for a command that needs Kafka, pointed at KAFKA_BOOTSTRAP or, while it is unset,
    at the local default broker (SEQSTREAM_LOCAL_BROKER); None, after one line on stderr saying
    how to start or name one, when no broker answers there (stream_app/kafka/clients.py)."""
    from .kafka.clients import reachable_broker  # lazy: the settings themselves need no Kafka client

    return reachable_broker(command, Settings.from_env(env))
