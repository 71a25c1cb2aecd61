"""The stream's input path without Kafka: BatchProcessor fuzzed with hypothesis (many examples).

The real-broker version of this fuzz lives in test_stream.py; here thousands of malformed
messages check that nothing raises, every bad message becomes exactly one dead letter with a
reason and its source, and the valid messages' results are those of state.evaluate.
"""

from __future__ import annotations

import math

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state import evaluate
from state.live import Lateness
from stream_app.codec import encode_row
from stream_app.processor import BatchProcessor, InMessage
from tests.stream_support import covid_stream_rows, request_for

PARTITIONS = 4
TOPICS = {"obs": "observations", "cfg": "experiments", "tick": "ticks"}


def partition_of(key: bytes) -> int:
    return DefaultPartitioner()(key, list(range(PARTITIONS)), list(range(PARTITIONS)))


def good_rows(experiment="fz", intervals=6):
    return covid_stream_rows(experiment)[: intervals * 6]


def _is_json(value: bytes) -> bool:
    try:
        orjson.loads(value)
        return True
    except orjson.JSONDecodeError:
        return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["experiment_id", "metric", "variation_id", "interval_timestamp", "unit_count", "unit_observation_sum",
          "unit_observation_sum_of_squares"]


@st.composite
def bad_values(draw):
    base = dict(good_rows()[0])
    kind = draw(st.sampled_from(["bytes", "json", "drop", "retype", "negative", "variance", "nan", "big"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=40))
        try:
            doc = orjson.loads(raw)
            if isinstance(doc, dict):
                raw = b"{" + raw  # make sure it cannot be a valid observation
        except orjson.JSONDecodeError:
            pass
        return raw
    if kind == "json":
        # not a list: an array is a valid envelope (tested below); an empty one is a bad message
        value = draw(json_values.filter(lambda v: not isinstance(v, (dict, list)) or (isinstance(v, dict) and "unit_count" not in v)))
        return orjson.dumps(draw(st.sampled_from([value, []])))
    if kind == "drop":
        base.pop(draw(st.sampled_from(FIELDS)))
    elif kind == "retype":
        field = draw(st.sampled_from(FIELDS[2:]))
        wrong = [None, [], {}, True] + ([] if field == "variation_id" else ["x"])  # "x" is a valid variation id
        base[field] = draw(st.sampled_from(wrong))
    elif kind == "negative":
        base["unit_count"] = -draw(st.integers(1, 10**6))
    elif kind == "variance":
        base["unit_observation_sum"], base["unit_observation_sum_of_squares"] = 100.0, 1.0
    elif kind == "nan":
        return orjson.dumps(base).replace(b'"unit_observation_sum":', b'"unit_observation_sum":NaN,"_":')
    else:
        base["padding"] = "x" * 70_000
    return orjson.dumps(base)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(bad_values(), st.integers(0, 35)), min_size=1, max_size=12),
       st.integers(1, 50))
def test_fuzzed_batches_dead_letter_exactly_the_bad_messages(bad, batch_size):
    rows = good_rows()
    key = b"fz"
    part = partition_of(key)
    stream = [("good", orjson.dumps(r)) for r in rows]
    for value, position in bad:
        stream.insert(position, ("bad", value))
    messages = [InMessage("obs", part, offset, key, value) for offset, (_, value) in enumerate(stream)]
    processor = BatchProcessor(TOPICS, PARTITIONS, clock=lambda: 0.0)
    store: dict[str, bytes] = {}
    results, dead = [], []
    for i in range(0, len(messages), batch_size):
        out = processor.process(messages[i:i + batch_size], store)
        processor.save_to(store)
        results += [orjson.loads(v) for _, v in out.results]
        dead += [orjson.loads(v) for _, v in out.deadletters]
    bad_offsets = [m.offset for m, (kind, _) in zip(messages, stream) if kind == "bad"]
    assert sorted(d["offset"] for d in dead) == bad_offsets
    assert all(d["reason"] and d["topic"] == "obs" and d["partition"] == part for d in dead)
    request = request_for(rows, "fz")
    # the last interval is complete (all arms known), so every interval has closed
    expected = {(r["metric"], r["variation_id"], r["interval_timestamp"]): r["lift_estimate"]
                for rows_ in evaluate(request) for r in rows_}
    got = {(r["metric"], r["variation_id"], r["interval_timestamp"]): r["lift_estimate"] for r in results}
    assert got == expected


# Element-level faults only: raw bytes, NaN or oversize break the whole message (covered above).
bad_elements = bad_values().filter(lambda v: len(v) < 4096 and _is_json(v))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(st.lists(st.tuples(bad_elements, st.integers(0, 5)), max_size=6), st.integers(1, 6))
def test_array_messages_count_good_elements_and_dead_letter_bad_ones(bad, per_message):
    """An experiment's rows packed into array messages (per_message rows each), with bad
    elements mixed in: a message's one bad element is a dead letter naming its index, several are
    one dead letter counting them; the results are evaluate's on the good rows."""
    rows = good_rows()
    part = partition_of(b"fz")
    elements: list = [orjson.dumps(r) for r in rows]
    for value, position in bad:
        elements.insert(position, value)
    chunks = [elements[i:i + per_message] for i in range(0, len(elements), per_message)]
    decodable = [InMessage("obs", part, offset, b"fz", b"[" + b",".join(c) + b"]") for offset, c in enumerate(chunks)]
    processor = BatchProcessor(TOPICS, PARTITIONS, clock=lambda: 0.0)
    store: dict[str, bytes] = {}
    out = processor.process(decodable, store)
    dead = [orjson.loads(v) for _, v in out.deadletters]
    bad_per_message = [n for m in decodable if (n := sum(1 for e in orjson.loads(m.value) if not _valid(e)))]
    assert len(dead) == len(bad_per_message)  # one dead letter per message with bad elements
    assert [d.get("invalid_elements", 1) for d in dead] == bad_per_message
    assert all(d["reason"].startswith(f"element {d['element']}:") for d in dead if "element" in d)
    results = [orjson.loads(v) for _, v in out.results]
    assert {(r["metric"], r["variation_id"], r["interval_timestamp"]) for r in results} == _expected_keys(rows)


def _valid(element) -> bool:
    from state import InvalidInput, parse_observation
    try:
        return isinstance(element, dict) and element.get("experiment_id") == "fz" and bool(parse_observation(element))
    except InvalidInput:
        return False


def _expected_keys(rows) -> set:
    request = request_for(rows, "fz")
    return {(r["metric"], r["variation_id"], r["interval_timestamp"]) for rows_ in evaluate(request) for r in rows_}


def test_an_internal_error_is_dead_lettered_and_the_batch_goes_on(monkeypatch):
    from state.live import LiveExperiment

    rows = good_rows(intervals=2)
    part = partition_of(b"fz")
    messages = [InMessage("obs", part, i, b"fz", orjson.dumps(r)) for i, r in enumerate(rows)]
    original = LiveExperiment.take
    calls = {"n": 0}

    def flaky(self, obs, now=0.0, *policy):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(self, obs, now, *policy)

    monkeypatch.setattr(LiveExperiment, "take", flaky)
    processor = BatchProcessor(TOPICS, PARTITIONS)
    out = processor.process(messages, {})
    dead = [orjson.loads(v) for _, v in out.deadletters]
    assert [(d["offset"], d["error"]) for d in dead] == [(2, "internal_error")] and "boom" in dead[0]["reason"]
    assert out.changed == {"fz"} and processor.take_states()  # the other messages were applied


def test_an_internal_error_while_scoring_spares_the_other_experiments(monkeypatch):
    """Scoring runs once per batch for all experiments (state.live.score_all). A bug there is
    retried experiment by experiment; the one that still fails has its rows dead-lettered and
    its state left unwritten, the others' results and states are those of a clean run."""
    import state.live
    from state.experiment import ExperimentState

    messages = []
    for key in (b"ok", b"bad"):
        part = partition_of(key)
        messages += [InMessage("obs", part, 100 * (key == b"bad") + i, key, orjson.dumps(r))
                     for i, r in enumerate(good_rows(key.decode(), intervals=3))]
    clean_processor = BatchProcessor(TOPICS, PARTITIONS, clock=lambda: 1.0, lateness=Lateness(delay=0))
    clean = clean_processor.process(messages, {})

    def failing_batch(items):
        raise RuntimeError("batch boom")

    original = ExperimentState.update

    def failing_for_bad(self, ts, observations):
        if self.experiment_id == "bad":
            raise RuntimeError("bad boom")
        return original(self, ts, observations)

    monkeypatch.setattr(state.live, "update_many", failing_batch)
    monkeypatch.setattr(ExperimentState, "update", failing_for_bad)
    processor = BatchProcessor(TOPICS, PARTITIONS, clock=lambda: 1.0, lateness=Lateness(delay=0))
    out = processor.process(messages, {})
    assert out.results == [kv for kv in clean.results if kv[0] == b"ok"]
    states = processor.take_states()
    assert set(states) == {"ok"} and states["ok"] == clean_processor.take_states()["ok"]
    dead = [orjson.loads(v) for _, v in out.deadletters]
    assert [d["error"] for d in dead] == ["internal_error"] and "bad boom" in dead[0]["reason"]
    rows = orjson.loads(dead[0]["value"])
    assert [len(interval) for interval in rows] == [6, 6, 6]  # every closed interval of the batch, whole
    assert {row["experiment_id"] for interval in rows for row in interval} == {"bad"}


def test_redelivered_batch_is_skipped_by_offset():
    rows = good_rows()
    part = partition_of(b"fz")
    messages = [InMessage("obs", part, i, b"fz", orjson.dumps(r)) for i, r in enumerate(rows)]
    processor = BatchProcessor(TOPICS, PARTITIONS)
    store: dict[str, bytes] = {}
    processor.process(messages[:20], store)
    processor.save_to(store)
    again = processor.process(messages[:20], store)  # a crash before the offsets were committed
    assert again.results == [] and again.deadletters == [] and processor.metrics.redelivered == 20


def test_wrong_partition_and_unknown_keys_are_dead_lettered_without_creating_state():
    part = partition_of(b"fz")
    row = orjson.dumps(good_rows()[0])
    processor = BatchProcessor(TOPICS, PARTITIONS)
    out = processor.process([InMessage("obs", (part + 1) % PARTITIONS, 0, b"fz", row),
                             InMessage("obs", part, 1, None, row)], {})
    assert [orjson.loads(v)["offset"] for _, v in out.deadletters] == [0, 1]
    assert "partition" in orjson.loads(out.deadletters[0][1])["reason"]
    assert out.changed == set() and processor.take_states() == {}


def test_config_then_tick_closes_an_idle_interval():
    part = partition_of(b"fz")
    now = [100.0]
    processor = BatchProcessor(TOPICS, PARTITIONS, idle_timeout=5.0, clock=lambda: now[0])
    store: dict[str, bytes] = {}
    cfg = orjson.dumps({"experiment_id": "fz", "version": 1, "reference_variation_id": "control",
                        "metrics": {"Customer support calls per visitor": {"is_binary": False}}})
    rows = [r for r in good_rows() if r["metric"] == "Customer support calls per visitor"][:3]
    out = processor.process([InMessage("cfg", part, 0, b"fz", cfg)]
                            + [InMessage("obs", part, i, b"fz", orjson.dumps(r)) for i, r in enumerate(rows)], store)
    processor.save_to(store)
    assert out.results == []
    assert processor.idle_status(store, ["fz"])[0] == []
    now[0] = 106.0
    assert processor.idle_status(store, ["fz"])[0] == ["fz"]
    out = processor.process([InMessage("tick", part, 0, b"fz", b"{}")], store)
    assert len(out.results) == 2  # message_1 and message_2 at the first interval


@pytest.mark.parametrize("batch_size", [1, 10_000])  # experiments scored alone, and together
def test_rows_cut_from_one_document_equal_rows_written_one_by_one(batch_size):
    """The processor writes a result known to be all finite in one orjson call and cuts it into
    rows at newlines it writes between them (codec.encode_rows). Every row must be what
    encode_row writes, the flag must be right (a burn-in interval's bounds are infinite, and
    a wrong flag would send them as null), and names holding a newline or "},{" cut nothing."""
    odd = 'odd\n,{"x": 1},\n,'
    rows = good_rows("plain", intervals=8) + [dict(r, metric=r["metric"] + '"\n},{') for r in good_rows(odd, intervals=8)]
    messages = []
    for offset, row in enumerate(rows):
        key = row["experiment_id"].encode()
        messages.append(InMessage("obs", partition_of(key), offset, key, orjson.dumps(row)))
    processor = BatchProcessor(TOPICS, PARTITIONS)
    closed = [c for j in range(0, len(messages), batch_size) for c in processor.process(messages[j:j + batch_size], {}).closed]
    assert {c.result.experiment_id for c in closed} == {"plain", odd}
    for result, sent in closed:
        numbers = [v for column in result.columns.values() for v in column if isinstance(v, float)]
        assert result.all_finite == all(math.isfinite(v) for v in numbers)
        assert sent == [encode_row(row) for row in result.rows]
        assert [orjson.loads(row)["metric"] for row in sent] == result.columns["metric"]
    assert {c.result.all_finite for c in closed} == {True, False}  # both ways of writing were taken


def test_batch_boundaries_do_not_change_any_output():
    """The processor scores a batch's closed intervals together, after the loop over messages.
    Whatever the batch size, every experiment's results, alerts, dead letters and final state
    are those of message-by-message processing: a config with new weights applies after the
    intervals closed before it (epoch), late and conflicting rows are refused, ticks close."""
    messages, offsets = [], {}

    def add(topic, key, value):
        part = partition_of(key)
        messages.append(InMessage(topic, part, offsets.setdefault((topic, part), 0), key, value))
        offsets[(topic, part)] += 1

    for e in ("p", "q", "r"):
        metrics = {row["metric"]: {} for row in good_rows(e, intervals=1)} if e == "p" else {}  # declared arms
        add("cfg", e.encode(), orjson.dumps({"experiment_id": e, "version": 1, "reference_variation_id": "control",
                                             "weights": {"control": 1, "message_1": 1, "message_2": 1},
                                             "metrics": metrics}))
    intervals = {e: [good_rows(e, intervals=8)[i * 6:(i + 1) * 6] for i in range(8)] for e in ("p", "q", "r")}
    for i in range(8):
        for e in ("p", "q", "r"):
            for row in intervals[e][i]:
                add("obs", e.encode(), orjson.dumps(row))
            if e == "q" and i == 3:  # new weights: intervals closed so far are scored under the old ones
                add("cfg", b"q", orjson.dumps({"experiment_id": "q", "version": 2, "reference_variation_id": "control",
                                               "weights": {"control": 2, "message_1": 1, "message_2": 1}}))
            if i == 5:
                add("obs", e.encode(), orjson.dumps(intervals[e][2][0]))  # late duplicate: ignored
                conflict = dict(intervals[e][2][1], unit_count=intervals[e][2][1]["unit_count"] + 1)
                add("obs", e.encode(), orjson.dumps(conflict))
    for e in ("p", "q", "r"):
        add("tick", e.encode(), b"{}")

    def run(batch_size, save_every=1, **options):
        processor = BatchProcessor(TOPICS, PARTITIONS, idle_timeout=0.0, clock=lambda: 1.0, **options)
        store: dict[str, bytes] = {}
        per_key: dict = {}
        for n, j in enumerate(range(0, len(messages), batch_size), start=1):
            out = processor.process(messages[j:j + batch_size], store)
            if n % save_every == 0:  # the worker saves at faust's commits, after any number of batches
                processor.save_to(store)
            for kind, pairs in (("r", out.results), ("a", out.alerts), ("d", out.deadletters)):
                for key, value in pairs:
                    per_key.setdefault((kind, key), []).append(value)
        processor.save_to(store)
        return per_key, store

    one_by_one, one_store = run(1)
    assert sum(len(v) for k, v in one_by_one.items() if k[0] == "r") == 3 * 8 * 4  # every interval, ticks included
    assert b'"epoch":1' in one_by_one[("r", b"q")][-1] and [orjson.loads(v)["reason"][:9] for v in one_by_one[("d", b"p")]] == ["conflicts"]
    assert b'"epoch":0' in one_by_one[("r", b"q")][4 * 4 - 1]  # interval 3 closed before version 2 came
    for size in (7, 50, len(messages)):
        assert run(size) == (one_by_one, one_store)
    # with one experiment or none kept decoded, states are read back from the store every batch
    for size, cache_size in ((1, 0), (7, 1), (50, 1)):
        assert run(size, cache_size=cache_size) == (one_by_one, one_store)
    # states saved every few batches: unsaved ones are read before the (older) store, cached or not
    for size, save_every, cache_size in ((1, 10, 0), (7, 3, 1), (7, 1000, 0), (50, 2, 50_000)):
        assert run(size, save_every, cache_size=cache_size) == (one_by_one, one_store)


def test_unsaved_states_are_served_and_saved_only_for_partitions_still_held():
    """The worker saves states at offset commits (stream_app.app.save_states): until then the
    processor serves its unsaved state (status views, idle closing); a save keeps only partitions
    the worker still holds, and a rebalance drops what was never saved, as a crash would."""
    rows = good_rows(intervals=3)
    part = partition_of(b"fz")
    messages = [InMessage("obs", part, i, b"fz", orjson.dumps(r)) for i, r in enumerate(rows)]
    processor = BatchProcessor(TOPICS, PARTITIONS, cache_size=0, lateness=Lateness(delay=0))
    store: dict[str, bytes] = {}
    processor.process(messages[:12], store)
    assert store == {} and processor.unsaved_experiments() == ["fz"]
    assert processor.current("fz", store).state.intervals == 2  # both complete: closed
    processor.process(messages[12:], store)
    assert processor.current("fz", store).state.intervals == 3 and processor.holds("fz", store)
    elsewhere = [p for p in range(PARTITIONS) if p != part]
    assert processor.take_states(elsewhere) == {}  # not held any more: dropped, not written
    assert processor.current("fz", store) is None and processor.unsaved_experiments() == []
    assert not processor.holds("fz", store)
    processor.process(messages[:12], store)  # the new owner starts over from the saved state: none
    states = processor.take_states([part])
    assert list(states) == ["fz"] and states["fz"][1] == part
    processor.process(messages[12:], store)
    processor.invalidate()  # a rebalance: never saved, so gone; its offsets were not committed either
    assert processor.current("fz", store) is None and processor.unsaved_experiments() == []


def test_thirty_thousand_bad_elements_are_one_dead_letter_with_a_count_and_the_first_reasons():
    """Within the 64 KB message limit: 30,000 elements that are not objects, and one good row.
    One dead letter (not 30,000), the count, the first ten reasons; the good row is applied."""
    part = partition_of(b"fz")
    good = good_rows()[0]
    value = b"[" + b"1," * 30_000 + orjson.dumps(good) + b"]"
    processor = BatchProcessor(TOPICS, PARTITIONS)
    out = processor.process([InMessage("obs", part, 0, b"fz", value)], {})
    (dead,) = [orjson.loads(v) for _, v in out.deadletters]
    assert dead["invalid_elements"] == 30_000 and dead["first_invalid"] == list(range(10))
    assert dead["reason"].startswith("30000 of 30001 elements invalid") and dead["reason"].count("element ") == 10
    assert processor.metrics.observations_in == 1 and out.changed == {"fz"}
    assert processor.current("fz", {}).open  # the good row is in its open interval


def test_deep_nesting_and_wrongly_typed_options_are_invalid_input_not_internal_errors():
    part = partition_of(b"fz")
    deep = b"1"
    for _ in range(300):
        deep = b"[" + deep + b"]"
    row = orjson.dumps(good_rows()[0])
    nested_row = row.replace(b'"metric":"', b'"metric":' + deep + b',"x":"', 1)
    values = [("obs", nested_row), ("obs", b"[" + nested_row + b"]"), ("obs", b"[" + nested_row + b"," + nested_row + b"]"),
              ("cfg", b'{"experiment_id":"fz","version":1,"metrics":{"m":[1,2]}}'),
              ("cfg", b'{"experiment_id":"fz","version":1,"metrics":{"m":"binary"}}'),
              ("cfg", b'{"experiment_id":"fz","version":1,"metrics":{"m":{"is_binary":[1]}}}'),
              ("cfg", b'{"experiment_id":"fz","version":1,"alpha":' + deep + b"}")]
    processor = BatchProcessor(TOPICS, PARTITIONS)
    out = processor.process([InMessage(topic, part, i, b"fz", v) for i, (topic, v) in enumerate(values)], {})
    dead = [orjson.loads(v) for _, v in out.deadletters]
    assert len(dead) == len(values)
    assert [d["error"] for d in dead] == ["invalid_input"] * len(values), [d["reason"] for d in dead]
    assert "nested deeper than 32" in dead[1]["reason"] and "must be an object" in dead[3]["reason"]


def test_a_dead_letter_keeps_a_prefix_of_a_large_original_with_its_size_and_hash():
    import hashlib

    from stream_app.codec import DEADLETTER_VALUE_BYTES

    part = partition_of(b"fz")
    value = b'{"not json' + b"x" * 900_000
    out = BatchProcessor(TOPICS, PARTITIONS).process([InMessage("obs", part, 0, b"fz", value)], {})
    ((_, raw),) = out.deadletters
    dead = orjson.loads(raw)
    assert len(raw) < 2 * DEADLETTER_VALUE_BYTES + 4096  # far below any broker's limit
    assert dead["value_truncated"] and dead["value_bytes"] == len(value)
    assert dead["value_sha256"] == hashlib.sha256(value).hexdigest() and value.startswith(dead["value"].encode())
    assert "exceeds" in dead["reason"]


def test_ticks_for_experiments_not_held_create_nothing_and_arms_past_the_limit_are_dead_lettered():
    part = partition_of(b"fz")
    processor = BatchProcessor(TOPICS, PARTITIONS, max_arms=3)
    out = processor.process([InMessage("tick", part, 0, b"fz", b"{}")], {})
    assert out.changed == set() and processor.take_states() == {} and processor.metrics.ticks_ignored == 1
    rows = [dict(good_rows()[0], variation_id=f"v{i}") for i in range(5)]
    out = processor.process([InMessage("obs", part, i, b"fz", orjson.dumps(r)) for i, r in enumerate(rows)], {})
    dead = [orjson.loads(v) for _, v in out.deadletters]
    assert [d["offset"] for d in dead] == [3, 4] and all("SEQSTREAM_MAX_ARMS=3" in d["reason"] for d in dead)
    assert processor.current("fz", {}).arm_count() == 3


def test_experiments_past_the_worker_s_limit_are_dead_lettered_and_those_held_go_on():
    """SEQSTREAM_MAX_EXPERIMENTS: a message that would start one experiment more than the worker
    holds (saved on its partitions, or new and not saved yet) is dead-lettered with the limit in
    its reason; experiments already held keep taking rows, and a bad message takes no place."""
    def rows_of(key: bytes, offset: int, value: bytes | None = None):
        row = dict(good_rows()[0], experiment_id=key.decode())
        return InMessage("obs", partition_of(key), offset, key, value or orjson.dumps(row))

    seed = BatchProcessor(TOPICS, PARTITIONS)
    seed.process([rows_of(b"held", 0)], {})
    store: dict[str, bytes] = {}
    seed.save_to(store)
    processor = BatchProcessor(TOPICS, PARTITIONS, max_experiments=3)
    out = processor.process([rows_of(b"new-1", 0), rows_of(b"bad", 1, b"{not json"), rows_of(b"new-2", 2),
                             rows_of(b"new-3", 3), rows_of(b"held", 4)], store)
    dead = {orjson.loads(v)["key"]: orjson.loads(v)["reason"] for _, v in out.deadletters}
    assert set(dead) == {"bad", "new-3"} and "SEQSTREAM_MAX_EXPERIMENTS=3" in dead["new-3"]
    assert "holds 3 experiments" in dead["new-3"]
    assert out.changed == {"held", "new-1", "new-2"} and processor.metrics.experiments_refused == 1
    processor.save_to(store)
    processor.invalidate()  # a rebalance: counted again from the store
    out = processor.process([rows_of(b"new-3", 5), rows_of(b"new-1", 6)], store)
    assert [orjson.loads(v)["key"] for _, v in out.deadletters] == ["new-3"] and out.changed == {"new-1"}
    del store["new-2"]  # its partition moved to another worker
    processor.invalidate()
    out = processor.process([rows_of(b"new-3", 7)], store)
    assert out.deadletters == [] and out.changed == {"new-3"}


def test_chunks_by_experiment_keep_each_experiment_whole_and_change_no_result():
    """A batch is processed at most EXPERIMENTS_PER_CHUNK experiments at a time (the event loop is
    held that long only): each experiment's messages stay in one chunk, in their order, and the
    results and states are those of the batch processed at once."""
    from stream_app.processor import chunks_by_experiment

    keys = [f"ch-{i}".encode() for i in range(7)]
    messages = []
    for interval, rows in enumerate(zip(*(good_rows(k.decode(), intervals=4) for k in keys))):
        messages += [InMessage("obs", partition_of(k), len(messages), k, orjson.dumps(row)) for k, row in zip(keys, rows)]
    chunks = chunks_by_experiment(messages, 3)
    assert [len({m.key for m in chunk}) for chunk in chunks] == [3, 3, 1]
    for key in keys:
        [holder] = [chunk for chunk in chunks if any(m.key == key for m in chunk)]
        assert [m.offset for m in holder if m.key == key] == [m.offset for m in messages if m.key == key]
    assert chunks_by_experiment(messages, 7) == [messages]
    whole, chunked = (BatchProcessor(TOPICS, PARTITIONS, clock=lambda: 1.7e9) for _ in range(2))  # same last_activity
    rows_whole = sorted(whole.process(messages, {}).results)
    rows_chunked = sorted(r for chunk in chunks for r in chunked.process(chunk, {}).results)
    assert rows_whole == rows_chunked and len(rows_whole) > 0
    assert whole.take_states() == chunked.take_states()
