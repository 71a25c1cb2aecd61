"""The command line: every command that needs Kafka says how to configure one; the worker's logging."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from stream_app.console.cli import main


@pytest.mark.parametrize("argv", [
    ["worker"],
    ["publish", "observations.csv", "--experiment", "e"],
    ["tail", "results"],
    ["experiment", "show", "e"],
    ["watch", "--once"],
    ["report", "--experiment", "e", "--html", "report.html"],
], ids=lambda argv: argv[0])
def test_a_command_that_needs_kafka_refuses_without_KAFKA_BOOTSTRAP(argv, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"seqstream {argv[0]}: set KAFKA_BOOTSTRAP (host:port of a Kafka broker)" in err
    assert "seqstream demo" in err  # the one command that brings its own broker
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing written


WORKER_LOG_LEVEL = """
import logging, sys
import faust
from stream_app.app import SeqstreamWorker, app
assert app.conf.Worker is SeqstreamWorker  # what `seqstream worker` and `faust -A ... worker` start
worker = (SeqstreamWorker if sys.argv[1] == "seqstream" else faust.Worker)(app, loglevel="warn", redirect_stdouts=False)
worker._setup_logging()  # what `worker` does at start
print("root", logging.getLogger().level, "spinner", worker.spinner is not None)
"""


def test_the_worker_keeps_the_root_logger_at_the_configured_level():
    """At warn and above, faust's start-up spinner lowers the root logger to DEBUG for good (every
    debug call in faust and aiokafka then builds a record nobody prints); the app's Worker class
    has no spinner. In a
    subprocess: importing the app patches aiokafka (long_poll) and setting up logging is global."""
    def run(kind: str) -> str:
        done = subprocess.run([sys.executable, "-c", WORKER_LOG_LEVEL, kind], capture_output=True, text=True,
                              timeout=60, env={k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"})
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if line.startswith("root")][-1]

    assert run("seqstream") == f"root {logging.WARNING} spinner False"
    assert run("faust") == f"root {logging.DEBUG} spinner True"  # the behaviour it avoids


def test_compression_setting_is_checked_and_every_codec_is_installed():
    """SEQSTREAM_COMPRESSION names one of aiokafka's codecs, and each one's library is installed:
    the worker must read input compressed with any of them (tests/test_stream.py runs zstd and
    lz4 end to end)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from stream_app.settings import COMPRESSION_TYPES, Settings

    assert Settings.from_env({}).compression_type == "zstd"  # at level 1: test_zstd_batches_are_written_at_level_1
    with pytest.raises(SystemExit, match="SEQSTREAM_COMPRESSION='brotli' is not one of none, gzip, snappy, lz4, zstd"):
        Settings.from_env({"SEQSTREAM_COMPRESSION": "brotli"})

    async def producers() -> list[str | None]:
        made = []
        for name in COMPRESSION_TYPES:
            codec = Settings.from_env({"SEQSTREAM_COMPRESSION": name}).compression_type
            AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", compression_type=codec)  # raises if the codec is missing
            made.append(codec)
        return made

    assert asyncio.run(producers()) == [None, "gzip", "snappy", "lz4", "zstd"]


def test_zstd_batches_are_written_at_level_1():
    """aiokafka has no setting for the zstd level; stream_app.kafka.zstd_level makes its record batch
    builder (the class producers use) compress at level 1, and the records read back unchanged."""
    import cramjam
    import orjson
    from aiokafka.record._crecords import default_records as cython_records
    from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords

    from stream_app.kafka import zstd_level

    values = [orjson.dumps({"alpha": 0.05, "lift_estimate": i / 7, "metric": f"m{i % 5}"}) for i in range(3000)]

    def batch_at(level: int) -> bytes:
        zstd_level.install(level)
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=DefaultRecordBatch.CODEC_ZSTD,
                                            is_transactional=0, producer_id=-1, producer_epoch=-1,
                                            base_sequence=-1, batch_size=1 << 24)
        for offset, value in enumerate(values):
            builder.append(offset, timestamp=None, key=b"e", value=value, headers=[])
        return bytes(builder.build())

    try:
        level_19 = batch_at(19)
        level_1 = batch_at(1)
    finally:
        zstd_level.install()
    assert len(level_1) != len(level_19)  # the builder calls the replaced encoder
    payload = b"".join(values)
    assert cython_records.zstd_encode(payload) == bytes(cramjam.zstd.compress(payload, level=zstd_level.ZSTD_LEVEL))
    for raw in (level_1, level_19):
        batch = MemoryRecords(raw).next_batch()
        assert batch.compression_type == DefaultRecordBatch.CODEC_ZSTD
        assert [record.value for record in batch] == values
