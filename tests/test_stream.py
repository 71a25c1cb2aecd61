"""The stream path end to end on a real broker: worker processes, real topics, real crashes.

Every expectation is ``state.evaluate`` on the same data (itself checked against the reference
data in test_covid/test_conformance), so these tests prove the stream adds nothing and loses
nothing: no row counted twice, none missing, under crashes, duplicates, rebalances and bad input.
"""

from __future__ import annotations

import asyncio
import math
import random
import string
import time
import urllib.error
import urllib.request

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from state import evaluate
from state.live import LiveExperiment
from stream_app.kafka.embedded_broker import free_port
from stream_app.kafka.admin import evict_group_members
from state.simulate import ExperimentSpec, MetricSpec, simulate
from tests.conftest import COVID_METRICS, covid_request
from stream_app.console.files import by_interval
from stream_app.kafka import clients as io
from state.config import DEFAULT_VARIANCE_METHOD
from stream_app.codec import config_message
from stream_app.kafka.topics import changelog_topic, create_topics
from tests.stream_support import (batch_codecs, collect, committed_offsets, config_messages, distinct_results,
                                  held_experiments, isolated_settings, latest_values, observation_messages,
                                  covid_stream_rows, produce, request_for, result_key, start_worker, until_keys,
                                  worker_counter,
                                  wait_for_counter, wait_until_held)
from tests.test_processor import bad_values, good_rows

pytestmark = pytest.mark.timeout(240)

# "ses" named: an experiment config with the reference service's method streamed through the
# worker reproduces the batch call's (the reference service's) numbers (issue 16)
COVID_CONFIG = {"reference_variation_id": "control", "use_stats_resets": True, "variance_method": "ses"}
COVID_METRIC_OPTIONS = {name: {"is_binary": False} for name in COVID_METRICS}


def expected_covid(experiment_id: str, variance_method: str = "ses") -> dict:
    """evaluate's rows for the covid request: with the reference method, as a stream configured
    with COVID_CONFIG gives them, or with another (the native default for unconfigured streams)."""
    request = dict(covid_request(), experiment_id=experiment_id)
    request["config"] = {**request["config"], "variance_method": variance_method}
    return distinct_results([r for rows in evaluate(request) for r in rows])


def expected_for(rows: list[dict], experiment_id: str, config: dict, metric_options: dict) -> dict:
    request = request_for(rows, experiment_id, config, metric_options)
    return distinct_results([r for rows_ in evaluate(request) for r in rows_])


def results_of_a_worker(settings, tmp_path, n_keys: int) -> dict:
    """Start a worker on what is published, collect its first ``n_keys`` distinct result rows."""
    worker = start_worker(settings, tmp_path)
    try:
        return distinct_results(collect(settings, "results", until_keys(n_keys), timeout=60))
    finally:
        worker.stop()


def test_covid_through_the_stream_equals_evaluate_row_for_row(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path)
    expected = expected_covid("covid")
    produce(settings, config_messages("covid", 1, COVID_CONFIG, COVID_METRIC_OPTIONS)
            + observation_messages(covid_stream_rows("covid")))
    assert results_of_a_worker(settings, tmp_path, len(expected)) == expected
    assert collect(settings, "deadletter", timeout=1) == []


async def _publish_as_seqstream_publish(settings, experiment_id: str, rows: list[dict]) -> None:
    """The config, then the rows interval by interval, through stream_app.kafka.clients's producer."""
    producer = io.producer(settings)
    await producer.start()
    try:
        message = config_message(experiment_id, 1, COVID_CONFIG, COVID_METRIC_OPTIONS)
        await io.send_config(producer, settings, experiment_id, message)
        for interval in by_interval(rows):
            await io.send_observations(producer, settings, interval)
    finally:
        await producer.stop()


@pytest.mark.parametrize("compression, codec", [("zstd", 4), ("lz4", 3), ("none", 0)])  # DefaultRecordBatch.CODEC_*
def test_record_batches_are_compressed_as_seqstream_compression_says(broker, tmp_path, compression, codec):
    """SEQSTREAM_COMPRESSION sets the codec of every record batch the worker produces (results
    through send_keyed, the table's changelog through faust's producer) and of `seqstream
    publish`'s producer; the worker reads its input either way, with identical results. The
    batches are read raw from the broker: a consumer would decompress them silently."""
    settings = isolated_settings(broker, tmp_path, compression=compression)
    expected = expected_covid("covid")
    asyncio.run(_publish_as_seqstream_publish(settings, "covid", covid_stream_rows("covid")))
    assert results_of_a_worker(settings, tmp_path, len(expected)) == expected
    for topic in (settings.topic("observations"), settings.topic("results"), changelog_topic(settings)):
        codecs = batch_codecs(broker, topic)
        assert set(codecs) == {codec}, f"{topic}: record batches by codec {codecs}, expected only codec {codec}"


def test_plain_faust_worker_creates_its_topics_with_their_partitions(broker, tmp_path):
    """`faust -A stream_app.app worker` works on a fresh prefix: no topic auto-created with 1 partition."""
    from stream_app.kafka.admin import topic_partitions
    from stream_app.kafka.topics import topic_specs
    from stream_app.kafka.worker_process import WorkerProcess

    settings = isolated_settings(broker, tmp_path, create=False, partitions=3)
    argv = ["faust", "-A", "stream_app.app", "worker", "-l", "warn", "--web-port", str(settings.web_port)]
    worker = WorkerProcess(settings, tmp_path / "faust.log", argv=argv).start()
    try:
        worker.wait_healthy(60)
        produce(settings, observation_messages(covid_stream_rows("plain")))
        got = distinct_results(collect(settings, "results", until_keys(72), timeout=60))
    finally:
        worker.stop()
    assert got == expected_covid("plain", DEFAULT_VARIANCE_METHOD)  # no config: the native default
    for name, spec in topic_specs(settings).items():
        assert asyncio.run(topic_partitions(broker, name)) == spec.partitions, name


def test_kill_9_at_several_points_changes_nothing(broker, tmp_path):
    """rocksdb store, as in production; kill -9 after several chunks, restart, finish."""
    settings = isolated_settings(broker, tmp_path, store="rocksdb://")
    expected = expected_covid("crash")
    rows = covid_stream_rows("crash")
    produce(settings, config_messages("crash", 1, COVID_CONFIG, COVID_METRIC_OPTIONS))
    chunks = [rows[i:i + 50] for i in range(0, len(rows), 50)]
    worker = start_worker(settings, tmp_path, "worker-0")
    try:
        wait_until_held([worker], {"crash"})  # configs applied before any observation is read
        for i, chunk in enumerate(chunks):
            produce(settings, observation_messages(chunk))
            time.sleep(0.3 * (i % 3))  # crash at different depths: mid-batch, between batches
            if i < len(chunks) - 1:
                worker.kill()
                # Real Kafka drops a dead member after session.timeout.ms; noida-db 0.2.3 never
                # does, so the test does what the broker should (stream_app.kafka.admin).
                asyncio.run(evict_group_members(broker, settings.app_id))
                worker = start_worker(settings, tmp_path, f"worker-{i + 1}")
        results = collect(settings, "results", until_keys(len(expected)), timeout=90)
    finally:
        worker.stop()
    got = distinct_results(results)  # also asserts a re-emitted row carries identical numbers
    assert got == expected  # cumulative counts included: nothing counted twice, nothing lost
    assert collect(settings, "deadletter", timeout=1) == []


def _check_saved_states_cover_commits(settings, sent) -> dict[int, int]:
    """Every observation below the group's committed offset must be in its experiment's saved
    state (the changelog): offsets are never committed ahead of the states. Returns the offsets."""
    committed = committed_offsets(settings)
    saved = {key.decode(): LiveExperiment.from_bytes(value)
             for key, value in latest_values(settings.bootstrap, changelog_topic(settings)).items()}
    topic = settings.topic("observations")
    for experiment, meta in sent:
        if meta.offset < committed[meta.partition]:
            source = f"{topic}:{meta.partition}"
            assert experiment in saved and saved[experiment].offsets.get(source, -1) >= meta.offset, (
                f"{experiment}: offset {meta.offset} of {source} committed (up to {committed[meta.partition]}) "
                f"but not in its saved state ({saved.get(experiment) and saved[experiment].offsets})")
    return committed


def test_saved_states_never_fall_behind_the_committed_offsets(broker, tmp_path):
    """States are saved when faust commits offsets, not after every batch (stream_app.app.
    save_states). With commits every 0.3 s, kill -9 lands between saves and commits again and
    again: at every kill, each message below the committed offsets must be in its experiment's
    saved state; a graceful stop saves and commits everything; the results are evaluate's."""
    settings = isolated_settings(broker, tmp_path, store="rocksdb://", commit_interval=0.3)
    data = _experiments(6, intervals=12)
    config, options = {"reference_variation_id": "control"}, {"conv": {"is_binary": True}}
    expected = {}
    for experiment, rows in data.items():
        expected.update(expected_for(rows, experiment, config, options))
    produce(settings, [m for e in data for m in config_messages(e, 1, config, options)])
    rows = sorted((r for rows in data.values() for r in rows), key=lambda r: r["interval_timestamp"])
    # four chunks: three kills, one before, one around and one after a commit (the sleeps below);
    # tests/test_chaos.py kills more often, with two workers
    chunks = [rows[i:i + len(rows) // 4 + 1] for i in range(0, len(rows), len(rows) // 4 + 1)]
    sent, committed_at_kills = [], 0
    worker = start_worker(settings, tmp_path, "worker-0")
    try:
        wait_until_held([worker], set(data))  # configs applied before any observation is read
        for i, chunk in enumerate(chunks):
            metadata = produce(settings, observation_messages(chunk))
            sent += [(row["experiment_id"], meta) for row, meta in zip(chunk, metadata)]
            if i < len(chunks) - 1:
                wait_for_counter(worker, "observations_in", len(chunk))  # it is at work on this chunk
                time.sleep((0.05, 0.4, 0.8)[i % 3])  # then die before, around or after a commit
                worker.kill()
                committed_at_kills += sum(1 for _, meta in sent
                                          if meta.offset < _check_saved_states_cover_commits(settings, sent)[meta.partition])
                asyncio.run(evict_group_members(broker, settings.app_id))
                worker = start_worker(settings, tmp_path, f"worker-{i + 1}")
        results = collect(settings, "results", until_keys(len(expected)), timeout=90)
    finally:
        worker.stop()
    assert worker.process.returncode == 0, worker.log_tail()
    final = _check_saved_states_cover_commits(settings, sent)
    assert all(meta.offset < final[meta.partition] for _, meta in sent), final  # the stop committed all
    assert committed_at_kills > 0  # commits did happen between kills: the check above had work to do
    assert distinct_results(results) == expected
    assert collect(settings, "deadletter", timeout=1) == []


def test_every_message_delivered_twice_gives_identical_results(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path)
    expected = expected_covid("dup")
    messages = observation_messages(covid_stream_rows("dup"))
    doubled = [m for message in messages for m in (message, message)]
    produce(settings, config_messages("dup", 1, COVID_CONFIG, COVID_METRIC_OPTIONS) + doubled)
    worker = start_worker(settings, tmp_path)
    try:
        results = collect(settings, "results", until_keys(len(expected)), timeout=60)
        time.sleep(1.0)
        results = collect(settings, "results", timeout=2)
    finally:
        worker.stop()
    assert distinct_results(results) == expected
    assert len(results) == len(expected)  # duplicates were ignored, not re-emitted
    assert collect(settings, "deadletter", timeout=1) == []


def _experiments(n: int, intervals: int = 8):
    specs = [ExperimentSpec(f"exp-{i}", (MetricSpec("conv", 0.1, is_binary=True, lifts={"treatment": 0.05 * i}),
                                         MetricSpec("revenue", 3.0, sd=5.0)),
                            units_per_interval=400, intervals=intervals) for i in range(n)]
    return {spec.experiment_id: [r for rows in simulate(spec, seed) for r in rows] for seed, spec in enumerate(specs)}


def partitions_once_split(workers, timeout: float = 60.0) -> list[list[int]]:
    """Each worker's partitions, once both members joined and hold disjoint halves of the 4."""
    deadline = time.monotonic() + timeout
    while True:
        held = [orjson.loads(urllib.request.urlopen(w.url + "/health", timeout=10).read())["partitions"]
                for w in workers]
        if all(held) and sorted(held[0] + held[1]) == [0, 1, 2, 3]:
            return held
        assert time.monotonic() < deadline, f"group never split the partitions: {held}"
        time.sleep(0.5)


def test_two_workers_on_four_partitions_match_the_single_worker_results(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path, partitions=4)
    data = _experiments(8)
    config, options = {"reference_variation_id": "control"}, {"conv": {"is_binary": True}}
    expected = {}
    for experiment, rows in data.items():
        expected.update(expected_for(rows, experiment, config, options))
    workers = [start_worker(settings, tmp_path, name, web_port=free_port(), datadir=str(tmp_path / name))
               for name in ("w1", "w2")]
    try:
        held = partitions_once_split(workers)
        # Configs first, and applied, before any observation: the workers read both topics while
        # they run, and an observation read a batch before its config would be scored under the
        # defaults (README, "Configs and ordering").
        produce(settings, [m for e in data for m in config_messages(e, 1, config, options)])
        wait_until_held(workers, set(data))
        by_interval = sorted((r for rows in data.values() for r in rows), key=lambda r: r["interval_timestamp"])
        produce(settings, observation_messages(by_interval))
        results = collect(settings, "results", until_keys(len(expected)), timeout=90)
        alive = [w.process.poll() is None for w in workers]
        owned = held_experiments(workers)
    finally:
        for w in workers:
            w.stop()
    assert alive == [True, True]
    assert all(owned) and owned[0] | owned[1] == set(data)  # both workers did part of the work
    assert distinct_results(results) == expected
    assert {r["experiment_id"] for r in results} == set(data)
    logs = [w.log_tail(2000) for w in workers]
    assert all("Traceback" not in log for log in logs), logs


def test_srm_alert_for_a_55_45_split_and_none_for_a_correct_one(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path)
    metric = (MetricSpec("conv", 0.1, is_binary=True),)
    skewed = ExperimentSpec("skewed", metric, weights=(0.5, 0.5), served_weights=(0.55, 0.45),
                            units_per_interval=1000, intervals=12)
    fair = ExperimentSpec("fair", metric, weights=(0.5, 0.5), units_per_interval=1000, intervals=12)
    rows = [r for spec, seed in ((skewed, 3), (fair, 4)) for group in simulate(spec, seed) for r in group]
    config = {"reference_variation_id": "control", "weights": {"control": 1, "treatment": 1}}
    produce(settings, config_messages("skewed", 1, config, {"conv": {"is_binary": True}})
            + config_messages("fair", 1, config, {"conv": {"is_binary": True}})
            + observation_messages(sorted(rows, key=lambda r: r["interval_timestamp"])))
    worker = start_worker(settings, tmp_path)
    try:
        collect(settings, "results", until_keys(24), timeout=60)
        alerts = collect(settings, "alerts", timeout=2)
    finally:
        worker.stop()
    srm = [a for a in alerts if a["kind"] == "srm"]
    assert [a["experiment_id"] for a in srm] == ["skewed"]
    assert srm[0]["details"]["sequential_p_value"] <= 0.001


def test_a_backlog_applies_each_config_before_the_observations_published_after_it(broker, tmp_path):
    """40 experiments' configs (alpha 0.05), then their observations in the reverse order, all
    published before the worker starts: in each partition the experiment whose config is last
    has the first observations. Delivered round robin (faust's default) its first intervals were
    scored under the default config (alpha 0.1) before its config arrived; by timestamp
    (stream_app/kafka/scheduling.py) every row of every experiment has the config's alpha."""
    settings = isolated_settings(broker, tmp_path)
    metric = (MetricSpec("conv", 0.1, is_binary=True),)
    experiments = [f"order-{i:02d}" for i in range(40)]
    config = {"reference_variation_id": "control", "alpha": 0.05}
    configs = [m for e in experiments for m in config_messages(e, 1, config, {"conv": {"is_binary": True}})]
    rows = [r for i, e in enumerate(reversed(experiments))
            for group in simulate(ExperimentSpec(e, metric, units_per_interval=200, intervals=5), i) for r in group]
    produce(settings, configs)
    produce(settings, observation_messages(rows))
    worker = start_worker(settings, tmp_path)
    try:
        results = collect(settings, "results", until_keys(40 * 5), timeout=60)  # 5 intervals each
    finally:
        worker.stop()
    assert {r["experiment_id"] for r in results} == set(experiments)
    wrong = sorted({(r["experiment_id"], r["interval_timestamp"]) for r in results if r["alpha"] != 0.05})
    assert not wrong, wrong


def test_bad_input_is_dead_lettered_with_reason_and_source(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path, max_message_bytes=4096)
    good = covid_stream_rows("mixed")[:60]
    first = good[0]
    bad = [
        ("observations", b"mixed", b"{not json"),
        ("observations", b"mixed", orjson.dumps({**first, "unit_count": -5})),
        ("observations", b"mixed", orjson.dumps({**first, "unit_count": "many"})),
        ("observations", b"mixed", orjson.dumps({k: v for k, v in first.items() if k != "metric"})),
        ("observations", b"mixed", orjson.dumps(first).replace(b'"unit_observation_sum":', b'"unit_observation_sum":NaN,"x":')),
        ("observations", b"mixed", orjson.dumps({**first, "unit_observation_sum": 10.0, "unit_observation_sum_of_squares": 1.0})),
        ("observations", b"mixed", b'"just a string"'),
        ("observations", b"mixed", b"[]"),
        ("observations", b"mixed", orjson.dumps({**first, "pad": "x" * 5000})),
        ("observations", b"other", orjson.dumps(first)),  # key does not match the experiment_id
        ("observations", None, orjson.dumps(first)),
        ("experiments", b"mixed", b'{"version": "one"}'),
        # dated in 2100: refused, and the watermark does not move (a late row within the allowed
        # lateness is applied instead: tests/test_lateness.py)
        ("observations", b"mixed", orjson.dumps({**first, "variation_id": "future", "interval_timestamp": 4.1e9})),
    ]
    messages = [bad[0]] + observation_messages(good[:30]) + bad[1:] + observation_messages(good[30:])
    metadata = produce(settings, messages)
    bad_sources = {(md.topic, md.partition, md.offset) for md, m in zip(metadata, messages) if m in bad}
    worker = start_worker(settings, tmp_path)
    try:
        dead = collect(settings, "deadletter", lambda out: len(out) >= len(bad), timeout=60)
        time.sleep(2.5)  # the idle timeout closes the last interval
        results = collect(settings, "results", timeout=3)
        alive = worker.process.poll() is None
    finally:
        worker.stop()
    assert alive
    assert {(d["topic"], d["partition"], d["offset"]) for d in dead} == bad_sources
    assert all(d["reason"] for d in dead)
    assert any("after the wall clock" in d["reason"] and '"future"' in d["value"] for d in dead)
    originals = {m[2].decode() for m in bad}
    assert {d["value"] for d in dead} == originals  # the original bytes travel with the reason
    expected = expected_for(good, "mixed", {}, {})
    assert distinct_results([r for r in results if r["experiment_id"] == "mixed"]) == expected


def test_outputs_the_broker_refuses_are_dead_lettered_and_the_worker_goes_on(broker, tmp_path):
    """The results topic takes at most 4,096 bytes a record batch (its max.message.bytes, of the
    compressed batch): batches of many rows are refused and sent again a row at a time, and the
    rows of a variation named with 12,000 random characters are refused alone. Those go to the dead-letter topic, with the
    broker's error, the row's size and hash; every other row is written, equal to evaluate's, and
    the worker keeps running (it used to fail, and fail again after every restart)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    settings = isolated_settings(broker, tmp_path, create=False)  # the results topic is made here first
    wide_name = "".join(random.Random(5).choices(string.ascii_letters + string.digits, k=12_000))  # incompressible

    async def create_small_results_topic():
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.topic("results"), settings.partitions, 1,
                                                topic_configs={"max.message.bytes": "4096"})])
        finally:
            await admin.close()

    asyncio.run(create_small_results_topic())
    create_topics(settings)  # the others, as the worker makes them
    plain = covid_stream_rows("plain")
    wide = [dict(r, variation_id=wide_name if r["variation_id"] == "message_2" else r["variation_id"])
            for r in covid_stream_rows("wide")]
    produce(settings, observation_messages(sorted(plain + wide, key=lambda r: r["interval_timestamp"])))
    expected = {**expected_for(plain, "plain", {}, {}), **expected_for(wide, "wide", {}, {})}
    refused_keys = {k for k in expected if k[2] == wide_name}
    assert len(refused_keys) == 36  # 2 metrics x 18 intervals (the last closed by the idle timeout)
    worker = start_worker(settings, tmp_path)
    try:
        dead = collect(settings, "deadletter", lambda out: len(out) >= len(refused_keys), timeout=60)
        results = collect(settings, "results", until_keys(len(expected) - len(refused_keys)), timeout=30)
        alive = worker.process.poll() is None
        refused_count = worker_counter(worker, "outputs_refused")
    finally:
        worker.stop()
    assert alive
    assert distinct_results(results) == {k: v for k, v in expected.items() if k not in refused_keys}
    assert len(dead) == len(refused_keys) == refused_count
    assert all(d["error"] == "output_refused" and d["topic"] == settings.topic("results") for d in dead)
    assert all("MessageSizeTooLarge" in d["reason"] and d["key"] == "wide" for d in dead)
    rows = [d for d in dead if d.get("value_truncated")]
    assert len(rows) == len(dead) and all(d["value_bytes"] > 12_000 and wide_name[:100] in d["value"] for d in rows)


def test_results_encode_non_finite_numbers_as_strings(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path)
    rows = covid_stream_rows("enc")[:12]  # the first interval is in burn-in: infinite bounds
    produce(settings, observation_messages(rows))
    worker = start_worker(settings, tmp_path)
    try:
        raw = collect(settings, "results", until_keys(4), timeout=30)
    finally:
        worker.stop()
    burn_in = [r for r in raw if r["treatment_unit_cumcount"] < 100]
    assert burn_in and all(r["standard_error"] == math.inf for r in burn_in)
    assert all(r["corrected_conf_interval_lower"] == -math.inf for r in burn_in)


@pytest.fixture(scope="module")
def fuzz_worker(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = isolated_settings(broker, tmp)
    worker = start_worker(settings, tmp)
    yield settings, worker
    worker.stop()


_fuzz_ids = iter(range(10**6))


# Against a live broker: no shrinking (each call costs seconds; a failure is reported as found).
@hyp_settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(bad=st.lists(bad_values(), min_size=1, max_size=8), positions=st.lists(st.integers(0, 23), min_size=8, max_size=8))
def test_fuzzed_messages_on_the_real_broker(fuzz_worker, bad, positions):
    """hypothesis-generated malformed messages between valid ones, through a running worker."""
    settings, worker = fuzz_worker
    experiment = f"fz{next(_fuzz_ids)}"
    rows = [dict(r, experiment_id=experiment) for r in good_rows(experiment, intervals=4)]
    messages = observation_messages(rows)
    bad_messages = [("observations", experiment.encode(), value) for value in bad]
    for message, position in zip(bad_messages, positions):
        messages.insert(position, message)
    metadata = produce(settings, messages)
    bad_sources = {(md.topic, md.partition, md.offset) for md, m in zip(metadata, messages) if m in bad_messages}
    mine = lambda out: [d for d in out if d["key"] == experiment]  # noqa: E731
    dead = mine(collect(settings, "deadletter", lambda out: len(mine(out)) >= len(bad_messages), timeout=60))
    results = [r for r in collect(settings, "results", lambda out: len({result_key(r) for r in out
                                                                        if r["experiment_id"] == experiment}) >= 16,
                                  timeout=60) if r["experiment_id"] == experiment]
    assert worker.process.poll() is None, worker.log_tail()
    assert {(d["topic"], d["partition"], d["offset"]) for d in dead} == bad_sources
    assert all(d["reason"] for d in dead)
    assert distinct_results(results) == expected_for(rows, experiment, {}, {})


def test_incomplete_interval_closes_after_the_idle_timeout(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path, idle_timeout=2.0)
    rows = covid_stream_rows("idle")[:6 * 3]
    rows = rows[:-1]  # the third interval misses one arm: it can only close by the idle timeout
    produce(settings, observation_messages(rows))
    worker = start_worker(settings, tmp_path)
    try:
        started = time.monotonic()
        results = collect(settings, "results", until_keys(3 * 4), timeout=30)
        waited = time.monotonic() - started
    finally:
        worker.stop()
    assert len({result_key(r) for r in results}) == 12
    last = max(r["interval_timestamp"] for r in results)
    assert last == rows[-1]["interval_timestamp"]
    assert waited >= 1.0  # it was the timeout, not a later interval, that closed it


HAND_OVER_MARKS = ("Joined group", "Revoking", "Setting newly assigned", "Restore complete", "Worker ready",
                   "Signal received", "LeaveGroup", "WARNING", "ERROR", "Traceback", "dropping")


def hand_over_story(workers, lines: int = 60) -> str:
    """Each worker's log lines about group membership, recovery and trouble (the last ``lines``),
    so that a failed hand-over test says where the hand-over stopped."""
    story = []
    for w in workers:
        marked = [line for line in w.log_tail(100_000).splitlines() if any(m in line for m in HAND_OVER_MARKS)]
        story.append(f"--- {w.log_path.name}\n" + "\n".join(marked[-lines:]))
    return "\n".join(story)


def test_an_open_interval_that_moves_in_by_a_rebalance_closes_after_the_idle_timeout(broker, tmp_path):
    """w2 takes rows whose last interval misses an arm, then leaves before its idle timer fires.
    w1, already running, gets w2's partitions by the rebalance and must close those intervals by
    the idle timeout although no row for them ever reaches it (its index of open intervals is
    rebuilt after every rebalance, not only at start)."""
    from stream_app.kafka.partitions import partition_for

    settings = isolated_settings(broker, tmp_path, partitions=4, idle_timeout=8.0,
                                log_level="info")  # INFO: the hand-over story on failure
    workers = [start_worker(settings, tmp_path, name, web_port=free_port(), datadir=str(tmp_path / name))
               for name in ("w1", "w2")]
    try:
        held = partitions_once_split(workers)
        experiments = [f"moved-{i}" for i in range(12)]
        on_w2 = [e for e in experiments if partition_for(e.encode(), 4) in held[1]]
        assert on_w2, held
        rows = []
        for e in on_w2:
            rows += covid_stream_rows(e)[:6 * 2 - 1]  # the second interval misses one arm
        produce(settings, observation_messages(rows))
        first = collect(settings, "results", until_keys(len(on_w2) * 4), timeout=30)  # the first intervals
        workers[1].stop()  # well inside the 8 s idle timeout of the open second intervals
        assert {r["experiment_id"] for r in first} == set(on_w2)
        results = collect(settings, "results", until_keys(len(on_w2) * 8), timeout=120)
        alive = workers[0].process.poll() is None
    finally:
        for w in workers:
            w.stop()
    assert alive
    second = {result_key(r) for r in results if r["interval_timestamp"] == rows[-1]["interval_timestamp"]}
    # every moved experiment's open interval closed, once each
    if len(second) != len(on_w2) * 4:  # the workers' logs (INFO) say where the hand-over stopped
        pytest.fail(f"{len(second)} of {len(on_w2) * 4} moved open intervals closed\n{hand_over_story(workers)}",
                    pytrace=False)
    assert len(results) == len({result_key(r) for r in results})


def test_a_batch_touching_many_experiments_logs_no_producer_buffer_warnings(broker, tmp_path):
    """A batch writes one table entry per experiment it touches. faust's changelog buffer holds
    back input past 100 pending writes and said so at WARNING ("producer buffer full"): with
    hundreds of experiments that was every batch, in normal operation."""
    settings = isolated_settings(broker, tmp_path)
    experiments = [f"wide-{i:03d}" for i in range(300)]
    messages = [("observations", e.encode(), orjson.dumps([
        {"experiment_id": e, "metric": "m", "variation_id": v, "interval_timestamp": ts, "unit_count": 100,
         "unit_observation_sum": 50.0 + (v == "t"), "unit_observation_sum_of_squares": 40.0} for v in ("control", "t")]))
        for ts in (0, 60) for e in experiments]
    produce(settings, messages)  # all there before the worker starts: its batches touch many experiments
    worker = start_worker(settings, tmp_path)
    try:
        results = collect(settings, "results", until_keys(2 * len(experiments)), timeout=60)
        text = urllib.request.urlopen(worker.url + "/metrics", timeout=10).read().decode()
    finally:
        worker.stop()
    assert len({result_key(r) for r in results}) == 2 * len(experiments)  # interval 0 and the complete 60
    log = worker.log_path.read_text(errors="replace")
    assert "producer buffer full" not in log, worker.log_tail()
    # Every input message went through stream_app.kafka.delivery's counted paths exactly once (the path
    # that waits is covered in tests/test_delivery.py; here nothing had to wait).
    counts = {name: int(float(value)) for name, value in
              (line.split() for line in text.splitlines() if line.startswith("seqstream_deliveries_"))}
    assert counts["seqstream_deliveries_at_once_total"] > 0, counts
    ticks = collect(settings, "ticks", timeout=2)  # interval 0 has no expected arms: closed when idle
    # and the changelog's one record per partition before the start: the worker's claim of it
    # (stream_app.kafka.fencing), read back by the table's recovery
    claims = int(float(next(line.split()[1] for line in text.splitlines() if line.startswith("seqstream_partitions_claimed "))))
    assert claims == settings.partitions
    assert sum(counts.values()) == len(messages) + len(ticks) + claims, (counts, len(ticks))


def _settings_with_topic_limit(broker, tmp_path, kind: str, max_bytes: int, **overrides):
    """Isolated settings whose topic ``kind`` (or the changelog) refuses records over max_bytes."""
    import dataclasses as dc

    from stream_app.kafka.admin import ensure_topics_sync
    from stream_app.kafka.topics import topic_specs

    settings = isolated_settings(broker, tmp_path, create=False, **overrides)
    specs = topic_specs(settings)
    name = changelog_topic(settings) if kind == "changelog" else settings.topic(kind)
    specs[name] = dc.replace(specs[name], config={**specs[name].config, "max.message.bytes": str(max_bytes)})
    ensure_topics_sync(settings.bootstrap, specs)
    return settings


def test_a_dead_letter_over_the_brokers_limit_is_cut_and_the_worker_goes_on(broker, tmp_path):
    """A 300 KB malformed message, outputs uncompressed, a dead-letter topic that refuses records
    over 100 KB: its dead letter carries a prefix, the size and the hash (no refusal, so no crash
    loop), and the experiment's good rows after it are all counted."""
    import hashlib

    settings = _settings_with_topic_limit(broker, tmp_path, "deadletter", 100_000, compression="none")
    bad = b'{"experiment_id": "big", "metric": ' + b"9" * 300_000
    rows = covid_stream_rows("big")
    produce(settings, config_messages("big", 1, COVID_CONFIG, COVID_METRIC_OPTIONS)
            + [("observations", b"big", bad)] + observation_messages(rows))
    expected = expected_covid("big")
    worker = start_worker(settings, tmp_path)
    try:
        results = collect(settings, "results", until_keys(len(expected)), timeout=90)
        dead = collect(settings, "deadletter", lambda out: len(out) >= 1, timeout=30)
        alive = worker.process.poll() is None
    finally:
        worker.stop()
    assert alive, worker.log_tail()
    assert distinct_results(results) == expected
    (letter,) = dead
    assert letter["value_truncated"] and letter["value_bytes"] == len(bad)
    assert letter["value_sha256"] == hashlib.sha256(bad).hexdigest() and bad.startswith(letter["value"].encode())
    assert "Traceback" not in worker.log_tail(2000)


def test_a_state_write_the_changelog_refuses_commits_no_offset_past_it(broker, tmp_path):
    """The changelog refuses records over 20 KB; one experiment's state grows past that (300
    metrics). Its write fails: the worker says so, commits no offset from then on, and keeps
    serving; a restart resumes from the committed offsets, before the refused state's input."""
    settings = _settings_with_topic_limit(broker, tmp_path, "changelog", 20_000, commit_interval=0.3, compression="none")
    small = [("observations", b"small", orjson.dumps(r)) for r in covid_stream_rows("small")[:24]]
    metadata = produce(settings, small)
    worker = start_worker(settings, tmp_path)
    try:
        wait_for_counter(worker, "states_saved", 1)  # the small experiment's state was written
        committed_before = committed_offsets(settings)
        big = [{"experiment_id": "wide", "metric": f"m{i}", "variation_id": v, "interval_timestamp": ts,
                "unit_count": 100, "unit_observation_sum": 50.0, "unit_observation_sum_of_squares": 40.0}
               for ts in (0.0, 60.0) for i in range(300) for v in ("control", "t")]
        wide = produce(settings, [("observations", b"wide", orjson.dumps(big[j:j + 100])) for j in range(0, len(big), 100)])
        wait_for_counter(worker, "state_write_failures", 2, timeout=60)  # refused, and refused again at the retry
        produce(settings, small[:1])  # more input: still nothing may be committed past the refused state
        time.sleep(1.5)
        committed_after = committed_offsets(settings)
        alive = worker.process.poll() is None
        log = worker.log_tail(400)
    finally:
        worker.kill()
    assert alive, log
    assert "offsets NOT committed" in log and "wide" in log
    wide_partition, first_wide = wide[0].partition, min(m.offset for m in wide)
    assert committed_after[wide_partition] <= first_wide, (committed_before, committed_after, first_wide)
    assert committed_before[metadata[0].partition] > 0  # commits did happen before the refusal


def test_a_fresh_worker_answers_404_for_an_unknown_experiment_sends_security_headers_and_no_table_view(broker, tmp_path):
    settings = isolated_settings(broker, tmp_path)
    worker = start_worker(settings, tmp_path)
    try:
        answers = {}
        for path in ("/experiments/nope/results", "/experiments/nope/alerts", "/table/live/", "/dashboard", "/health"):
            try:
                with urllib.request.urlopen(worker.url + path, timeout=10) as response:
                    answers[path] = (response.status, dict(response.headers))
            except urllib.error.HTTPError as exc:
                answers[path] = (exc.code, dict(exc.headers))
    finally:
        worker.stop()
    assert answers["/experiments/nope/results"][0] == 404 and answers["/experiments/nope/alerts"][0] == 404
    assert answers["/table/live/"][0] == 404  # faust's raw table view is not served
    for status, headers in answers.values():
        assert headers.get("X-Content-Type-Options") == "nosniff" and headers.get("X-Frame-Options") == "DENY"
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", "")


def test_a_100000_row_batch_request_does_not_hold_back_stream_results(broker, tmp_path):
    """Results of an experiment published every 0.1 s keep coming within 1 s of their input while
    the worker scores a 100,000-row batch request (it runs off the event loop)."""
    import threading

    from aiokafka import AIOKafkaConsumer

    settings = isolated_settings(broker, tmp_path, partitions=1)
    options = {"conv": {"is_binary": True}, "revenue": {}}
    produce(settings, config_messages("steady", 1, {"reference_variation_id": "control",
                                                    "weights": {"control": 1, "treatment": 1}}, options))
    data = _experiments(1, intervals=400)["exp-0"]
    by_ts: dict[float, list] = {}
    for row in data:
        by_ts.setdefault(row["interval_timestamp"], []).append(dict(row, experiment_id="steady"))
    published: dict[float, float] = {}
    arrived: dict[float, float] = {}
    stop = threading.Event()

    def publish():
        async def run():
            producer = io.producer(settings)
            await producer.start()
            try:
                for ts, rows in sorted(by_ts.items()):
                    if stop.is_set():
                        return
                    published[ts] = time.monotonic()
                    await (await producer.send(settings.topic("observations"), key=b"steady", value=orjson.dumps(rows)))
                    await asyncio.sleep(0.1)
            finally:
                await producer.stop()
        asyncio.run(run())

    def consume():
        async def run():
            consumer = AIOKafkaConsumer(settings.topic("results"), bootstrap_servers=settings.bootstrap,
                                        auto_offset_reset="earliest", enable_auto_commit=False)
            await consumer.start()
            try:
                while not stop.is_set():
                    for records in (await consumer.getmany(timeout_ms=100)).values():
                        for record in records:
                            arrived.setdefault(orjson.loads(record.value)["interval_timestamp"], time.monotonic())
            finally:
                await consumer.stop()
        asyncio.run(run())

    request = {"experiment_id": "big", "config": {"reference_variation_id": "control"}, "metrics": [
        {"config": {"name": f"m{j}"}, "data": [
            {"interval_timestamp": 1.6e9 + 60 * i, "variation_id": v, "unit_count": 100,
             "unit_observation_sum": 50.0 + i % 7, "unit_observation_sum_of_squares": 40.0 + i % 5}
            for i in range(5000) for v in ("control", "t")]} for j in range(10)]}
    worker = start_worker(settings, tmp_path)
    threads = [threading.Thread(target=publish), threading.Thread(target=consume)]
    try:
        wait_until_held([worker], {"steady"})
        for t in threads:
            t.start()
        time.sleep(3.0)
        started = time.monotonic()
        body = urllib.request.urlopen(urllib.request.Request(worker.url + "/stats-engine/v0/batch",
                                                             data=orjson.dumps(request), method="POST"), timeout=300).read()
        finished = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        worker.stop()
    response = orjson.loads(body)
    assert [len(rows) for rows in response] == [5000] * 10  # one row per interval and metric (one treatment)
    assert response[0][-1]["treatment_unit_cumcount"] == 5000 * 100 and response[9][-1]["metric"] == "m9"
    # Every interval published while the request ran, the last second's included (their results
    # must come within 1 s too; the test waits 2 s after the request): a request that took only
    # 1.5 s on a fast machine left 4 intervals whose whole second fell inside it.
    during = [ts for ts, at in published.items() if started <= at <= finished]
    assert len(during) >= 5, (finished - started, len(published))  # the request took long enough to tell
    late = {ts: arrived.get(ts, math.inf) - published[ts] for ts in during if arrived.get(ts, math.inf) - published[ts] > 1.0}
    assert not late, f"{len(late)} of {len(during)} intervals took over 1 s while the request ran ({finished - started:.1f} s)"
