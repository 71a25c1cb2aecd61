"""The private faust, mode and aiokafka attributes stream_app/kafka relies on still exist.

Each module of stream_app/kafka that reaches into one names it in its first docstring line, with
the versions it was checked against, and pyproject.toml pins those versions. An upgrade that drops
or renames one fails here with the attribute's name, instead of as a wrong result or a crash in
the stream."""

from __future__ import annotations

import importlib
from pathlib import Path
from importlib.metadata import version

import pytest

# (module, dotted attribute, the stream_app module that relies on it)
PRIVATE = [
    ("faust.transport.consumer", "Consumer._drain_messages", "kafka/delivery.py"),
    ("faust.transport.consumer", "Consumer.force_commit", "kafka/delivery.py"),
    ("mode.services", "Service.wait_first", "kafka/delivery.py"),
    ("mode.services", "WaitResults", "kafka/delivery.py"),
    ("faust._cython.streams", "sleep", "kafka/delivery.py"),
    ("faust.transport.drivers.aiokafka", "Transport.Consumer", "kafka/delivery.py"),
    ("aiokafka.consumer.fetcher", "Fetcher._proc_fetch_request", "kafka/long_poll.py"),
    ("aiokafka.record.default_records", "zstd_encode", "kafka/zstd_level.py"),
    ("aiokafka.record._crecords.default_records", "zstd_encode", "kafka/zstd_level.py"),
    ("aiokafka.admin", "AIOKafkaAdminClient._send_request", "kafka/admin.py"),
    ("faust.tables", "TableManager._update_channels", "kafka/tables.py"),
    ("faust.streams", "_current_event", "kafka/tables.py"),
    ("faust.tables.base", "Collection.data", "kafka/tables.py"),
    ("faust.stores.base", "Store.set_persisted_offset", "kafka/tables.py"),
    ("faust.transport.consumer", "Consumer.on_partitions_assigned", "kafka/delivery.py"),
    ("faust.transport.drivers.aiokafka", "Producer._ensure_producer", "kafka/faust_io.py"),
    ("faust.transport.consumer", "Consumer.getmany", "kafka/delivery.py"),
    ("faust.transport.consumer", "Consumer._wait_next_records", "kafka/delivery.py"),
    ("faust.transport.consumer", "Consumer._to_message", "kafka/delivery.py"),
    ("faust.transport.consumer", "Consumer.perform_seek", "kafka/delivery.py"),
    ("faust.transport.drivers.aiokafka", "ThreadDelegateConsumer._seek", "kafka/delivery.py"),
    ("faust.tables.recovery", "Recovery.active_remaining", "kafka/tables.py"),
]


@pytest.mark.parametrize("module, attribute, user", PRIVATE, ids=[f"{m}.{a}" for m, a, _ in PRIVATE])
def test_private_attribute_exists(module, attribute, user):
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        assert hasattr(obj, part), (
            f"{module}.{attribute} is gone (faust-streaming {version('faust-streaming')}, aiokafka "
            f"{version('aiokafka')}, mode-streaming {version('mode-streaming')}): stream_app/{user} relies on it; "
            f"check that module against this version or pin the one in pyproject.toml")
        obj = getattr(obj, part)


def test_instance_attributes_the_worker_reads():
    """Attributes set in __init__ (not visible on the class): the fetcher's record buffer and
    faust's per-partition read offsets."""
    import inspect

    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.consumer import Consumer

    assert "self._records" in inspect.getsource(Fetcher.__init__), "aiokafka Fetcher._records is gone (kafka/long_poll.py)"
    assert "self._read_offset" in inspect.getsource(Consumer.__init__), "faust Consumer._read_offset is gone (kafka/faust_io.py)"
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, ThreadDelegateConsumer

    assert "self.member_id" in inspect.getsource(GroupCoordinator.__init__), "aiokafka coordinator member_id is gone (kafka/faust_io.py)"
    assert "self._coordination_task" in inspect.getsource(GroupCoordinator.__init__), \
        "aiokafka coordinator _coordination_task is gone (kafka/faust_io.py)"
    for name in ("self.scheduler", "self._buffered_partitions"):
        assert name in inspect.getsource(Consumer.__init__), f"faust Consumer {name} is gone (kafka/delivery.py)"
    assert "self._thread" in inspect.getsource(ThreadDelegateConsumer.__init__), "faust Consumer._thread is gone (kafka/faust_io.py)"
    # the class's module text, not inspect.getsource(class): that parses the module with ast, which
    # CPython 3.11.7 failed once mid-suite ("AST constructor recursion depth mismatch")
    assert "self._consumer" in Path(inspect.getsourcefile(AIOKafkaConsumerThread)).read_text(), \
        "faust AIOKafkaConsumerThread._consumer is gone (kafka/faust_io.py)"
    for attribute in ("self._acked ", "self._acked_index", "self._gap"):  # kafka/delivery.py
        assert attribute in inspect.getsource(Consumer.__init__), f"faust Consumer.{attribute[5:]} is gone (kafka/delivery.py)"
    # a seek made in the consumer's own thread (kafka/delivery.py SeqstreamConsumer.seek)
    assert callable(AIOKafkaConsumerThread._ensure_consumer) and callable(AIOKafkaConsumerThread.call_thread), \
        "faust AIOKafkaConsumerThread._ensure_consumer / call_thread is gone (kafka/delivery.py)"


def test_pinned_versions_are_the_installed_ones():
    """pyproject.toml pins what stream_app/kafka was checked against; a different install is untested."""
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==") for d in deps if "==" in d)
    for name in ("faust-streaming", "aiokafka", "mode-streaming"):
        assert pins.get(name) == version(name), f"{name}: pinned {pins.get(name)}, installed {version(name)}"


def test_what_the_copied_drain_loop_reads_is_on_faust_s_consumer():
    """SeqstreamConsumer._drain_messages is faust's drain loop with the seek checks: what it reads
    of faust's Consumer must still be there (kafka/delivery.py)."""
    from stream_app import app as worker_app
    from stream_app.kafka.delivery import SeqstreamConsumer

    consumer = SeqstreamConsumer(worker_app.app.transport, callback=None, on_partitions_revoked=None,
                                 on_partitions_assigned=None)
    for attribute in ("_stopped", "_read_offset", "_commit_every", "_n_acked", "diag", "suspend_flow",
                      "consumer_stopped_errors", "callback", "commit", "_add_gap", "wait_first", "sleep"):
        assert hasattr(consumer, attribute), f"faust Consumer.{attribute} is gone (kafka/delivery.py _drain_messages)"



def test_mode_s_flow_control_clears_its_queues_through_clear():
    """kafka/delivery.py report_cleared_events wraps FlowControlEvent.clear and reads the managed
    queues' items: resume() must still clear through self.clear(), over _queues, each a deque in _queue."""
    import inspect

    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    assert "self.clear()" in inspect.getsource(FlowControlEvent.resume), "mode FlowControlEvent.resume no longer calls clear"
    assert "self._queues" in inspect.getsource(FlowControlEvent.clear), "mode FlowControlEvent._queues is gone"
    assert "self._queue.clear()" in inspect.getsource(FlowControlQueue.clear), "mode FlowControlQueue._queue is gone"
