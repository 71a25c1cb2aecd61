"""The command line: one line on stderr and a non-zero exit for every user mistake (never a
traceback), the local default broker, topics check/create, help and --version; the worker's
logging; the compression settings."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from stream_app.console.cli import build_parser, main
from stream_app.kafka import clients
from stream_app.kafka.embedded_broker import free_port

pytestmark = pytest.mark.timeout(120)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``seqstream ARGV`` in this process: (exit code, stdout, stderr). An exception that
    escapes the CLI (what a user would see as a traceback) fails the test here."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str, exit_code: int | None = None) -> None:
    lines = err.strip().splitlines()
    assert code != 0, err
    assert exit_code is None or code == exit_code, (code, err)
    assert len(lines) == 1, f"want one line on stderr, got:\n{err}"
    assert "Traceback" not in err and "Unclosed" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def run_subprocess(*argv: str, env: dict | None = None, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app", *argv], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture
def no_kafka(monkeypatch):
    """KAFKA_BOOTSTRAP unset and nothing at the local default address (a free port, never
    9092), with a short grace for a broker still starting there."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("SEQSTREAM_LOCAL_BROKER", f"127.0.0.1:{free_port()}")
    monkeypatch.setattr(clients, "LOCAL_BROKER_GRACE", 0.3)


@pytest.fixture
def on_broker(broker, monkeypatch):
    """The session's broker, with a topic prefix and app id of this test's own."""
    run = f"cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP", broker)
    monkeypatch.setenv("SEQSTREAM_TOPIC_PREFIX", f"{run}.")
    monkeypatch.setenv("SEQSTREAM_APP_ID", run)
    return run


CSV_HEADER = "variation_id,interval_timestamp,unit_count,unit_observation_sum,unit_observation_sum_of_squares,metric_name\n"


def write_csv(path, rows: list[str]) -> str:
    path.write_text(CSV_HEADER + "".join(f"{row}\n" for row in rows))
    return str(path)


def good_rows(n: int = 6) -> list[str]:
    return [f"{v},2020-09-14 11:{21 + i // 2}:00,100,10,10,conversion" for i in range(n) for v in ("control",)]


# -- files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "directory", "binary", "unreadable", "not-utf8"])
@pytest.mark.parametrize("command", ["publish", "experiment set"])
def test_a_file_that_cannot_be_read_is_one_line(kind, command, tmp_path, capsys, no_kafka):
    path = {"missing": str(tmp_path / "nope.csv"), "directory": str(tmp_path), "unreadable": "/proc/self/mem"}.get(kind)
    if kind == "binary":
        path = str(tmp_path / "data.csv")
        (tmp_path / "data.csv").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" * 10)
    if kind == "not-utf8":
        path = str(tmp_path / "data.csv")
        (tmp_path / "data.csv").write_bytes(CSV_HEADER.encode() + b"control,2020-09-14 11:21:00,1,1,1,caf\xe9\n")
    argv = ["publish", path, "--experiment", "e"] if command == "publish" else ["experiment", "set", path]
    code, out, err = cli(capsys, *argv)
    want = {"missing": "no such file", "directory": "is a directory", "binary": "binary",
            "unreadable": "cannot read it", "not-utf8": "not UTF-8"}[kind]
    assert_one_line_error(code, err, f"seqstream {command}: {path}: ", want, exit_code=1)
    assert out == ""


@pytest.mark.parametrize("kind,reason", [("directory", "Is a directory"), ("no-folder", "No such file or directory"),
                                         ("disk-full", "No space left on device")])
def test_example_to_a_path_that_cannot_be_written_is_one_line(kind, reason, tmp_path, capsys):
    path = {"directory": str(tmp_path), "no-folder": str(tmp_path / "nope" / "x.csv"), "disk-full": "/dev/full"}[kind]
    code, out, err = cli(capsys, "example", path)
    assert_one_line_error(code, err, f"seqstream example: cannot write {path}: {reason}", exit_code=1)
    assert out == ""


def test_experiment_set_with_a_binary_file_says_a_json_config_was_expected(tmp_path, capsys, no_kafka):
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02" * 50)
    code, _, err = cli(capsys, "experiment", "set", str(tmp_path / "bin.dat"))
    assert_one_line_error(code, err, f"seqstream experiment set: {tmp_path / 'bin.dat'}: looks like a binary file, "
                          "not a JSON config", exit_code=1)
    (tmp_path / "c.json").write_text('{"experiment_id": "e", "reference_variation_id": "ctl", "weights": {"a": 1}}')
    code, _, err = cli(capsys, "experiment", "set", str(tmp_path / "c.json"))
    assert_one_line_error(code, err, f"{tmp_path / 'c.json'}: reference_variation_id 'ctl' has no weight", exit_code=2)


def test_experiment_set_with_a_file_that_is_not_a_json_config(tmp_path, capsys, no_kafka):
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    code, _, err = cli(capsys, "experiment", "set", str(tmp_path / "c.json"))
    assert_one_line_error(code, err, "not a JSON config")
    code, _, err = cli(capsys, "experiment", "set", str(tmp_path / "list.json"))
    assert_one_line_error(code, err, "a config is a JSON object")


def test_every_row_bad_for_one_reason_is_said_once_with_the_count(tmp_path, capsys, no_kafka):
    rows = [f"control,2020-09-14 11:{21 + i}:00,-5,1,1,conversion" for i in range(30)]
    code, _, err = cli(capsys, "publish", write_csv(tmp_path / "neg.csv", rows), "--experiment", "e")
    assert_one_line_error(code, err, "30 rows (lines 2, 3, 4, 5, 6, ...): ", "nothing sent (no row is valid)")
    # the covid format without an experiment_id column needs --experiment: said once, up front
    code, _, err = cli(capsys, "publish", write_csv(tmp_path / "noexp.csv", good_rows()))
    assert_one_line_error(code, err, "has no experiment_id column: pass --experiment ID")


def test_bad_rows_of_several_kinds_are_listed_by_kind_and_nothing_is_sent(tmp_path, capsys, no_kafka):
    rows = good_rows(4) + ["control,2020-09-14 11:40:00,-5,1,1,conversion"] * 3 + ["control,yesterday,5,1,1,conversion"]
    code, _, err = cli(capsys, "publish", write_csv(tmp_path / "mixed.csv", rows), "--experiment", "e")
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert len(lines) == 3 and lines[0].startswith(f"seqstream publish: {tmp_path / 'mixed.csv'}: 3 rows (lines 6, 7, 8): ")
    assert lines[1].startswith(f"seqstream publish: {tmp_path / 'mixed.csv'}: line 9: ")
    assert lines[2] == "seqstream publish: 4 bad row(s): nothing sent (--skip-bad sends the 4 valid one(s))"


@pytest.mark.parametrize("row,reason", [
    ("control,2020-09-14 11:21:00,abc,1,1,m", "field 'unit_count': 'abc' is not a number"),
    ("control,2020-09-14 11:21:00,5,1e,1,m", "field 'unit_observation_sum': '1e' is not a number"),
    ("control,yesterday,5,1,1,m", "field 'interval_timestamp': 'yesterday' is not a date and time"),
    ("control,2020-09-14 11:21:00,-5,1,1,m", "field 'unit_count': must be a whole number >= 0, got -5"),
    ("control,2020-09-14 11:21:00,5,1,,m", "field 'unit_observation_sum_of_squares': is empty"),
], ids=["count", "sum", "timestamp", "negative", "empty"])
def test_a_bad_cell_is_named_by_its_column_and_quoted_as_written(row, reason, tmp_path, capsys, no_kafka):
    path = write_csv(tmp_path / "bad.csv", [row])
    code, _, err = cli(capsys, "publish", path, "--experiment", "e")
    assert_one_line_error(code, err, f"seqstream publish: {path}: line 2: {reason}", exit_code=1)
    assert "convert string" not in err and "isoformat" not in err and "-5.0" not in err


def test_a_line_that_is_not_json_says_so(tmp_path, capsys, no_kafka):
    (tmp_path / "bad.jsonl").write_text("not json\n")
    code, _, err = cli(capsys, "publish", str(tmp_path / "bad.jsonl"))
    assert_one_line_error(code, err, f"{tmp_path / 'bad.jsonl'}: line 1: not a JSON object (", exit_code=1)


def test_zero_rows_to_send_is_an_error(tmp_path, capsys, no_kafka):
    path = write_csv(tmp_path / "obs.csv", good_rows())
    code, _, err = cli(capsys, "publish", path, "--experiment", "e", "--metrics", "convresion")
    assert_one_line_error(code, err, "--metrics: 'convresion' not in", "(its metrics: conversion)", "nothing sent")
    code, _, err = cli(capsys, "publish", write_csv(tmp_path / "empty.csv", []), "--experiment", "e")
    assert_one_line_error(code, err, "holds no observations")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    code, _, err = cli(capsys, "publish", str(tmp_path / "empty.jsonl"))
    assert_one_line_error(code, err, f"{tmp_path / 'empty.jsonl'}: is empty")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_empty_file_is_said_to_be_empty(suffix, tmp_path, capsys, no_kafka):
    """Not "missing column(s) variation_id, ...", which sends one looking for a wrong header."""
    (tmp_path / f"empty{suffix}").write_text("")
    for argv in (["publish", str(tmp_path / f"empty{suffix}"), "--experiment", "e"],
                 ["demo", "--data", str(tmp_path / f"empty{suffix}")]):
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, f"{tmp_path / f'empty{suffix}'}: is empty", exit_code=1)


def test_publish_reads_standard_input(on_broker, capsys, monkeypatch):
    """`publish -` used to say "-: no such file"; CSV or, when it starts with {, JSON lines."""
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((CSV_HEADER + "\n".join(good_rows(4))).encode())))
    code, _, err = cli(capsys, "publish", "-", "--experiment", "e")
    assert code == 0 and err.strip().endswith(f"sent 4 rows in 2 intervals to {on_broker}.observations"), err
    line = (b'{"experiment_id": "e", "metric": "m", "variation_id": "control", "interval_timestamp": 1600082460, '
            b'"unit_count": 10, "unit_observation_sum": 1, "unit_observation_sum_of_squares": 1}\n')
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line)))
    code, _, err = cli(capsys, "publish", "-")
    assert code == 0 and err.strip().endswith(f"sent 1 row in 1 interval to {on_broker}.observations"), err


def test_demo_refuses_experiment_and_metrics_without_data(capsys, no_kafka):
    for flag in (["--experiment", "x"], ["--metrics", "m"]):
        code, _, err = cli(capsys, "demo", *flag)
        assert_one_line_error(code, err, f"seqstream demo: {flag[0]} names what to replay from --data FILE", exit_code=1)


def test_watch_once_with_no_results_at_all_is_an_error(on_broker, capsys):
    assert cli(capsys, "topics", "create")[0] == 0
    code, out, err = cli(capsys, "watch", "--once")
    assert_one_line_error(code, err, f"seqstream watch: no results yet on {on_broker}.results", exit_code=1)
    assert out == ""


# -- flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (["watch", "--refresh", "0"], "--refresh: '0' must be a positive number"),
    (["watch", "--refresh", "-1"], "--refresh: '-1' must be a positive number"),
    (["tail", "results", "--wait", "soon"], "--wait: 'soon' is not a number"),
    (["publish", "f.csv", "--pace", "-2"], "--pace: '-2' must be zero or a positive"),
    (["experiment", "set", "--experiment", "e", "--alpha", "1.5"], "--alpha: '1.5' must be between 0 and 1"),
    (["tail", "resluts"], "invalid choice: 'resluts'"),
    (["publihs"], "invalid choice: 'publihs'"),
    ([], "the following arguments are required: COMMAND"),
    (["experiment", "set", "--experiment", "e", "--metric", "conv:lowr"], "unknown flag 'lowr'"),
    (["experiment", "set", "--experiment", "e", "--metric", ":lower"], "no metric name"),
    (["experiment", "set", "--experiment", "e", "--weights", "control:1"], "--weights: expected name=number"),
    (["experiment", "set", "--reference", "control"], "name the experiment"),
    (["experiment", "set", "--experiment", "e", "--reference", "ctl", "--weights", "control=1,t=1"],
     "seqstream experiment set: --reference 'ctl' has no weight (weights: control, t)"),
    (["experiment", "set", "--experiment", "e", "--metric", "m:binary:binary:lower"],
     "seqstream experiment set: --metric 'm:binary:binary:lower': flag 'binary' given twice"),
    (["experiment", "set", "--experiment", "e", "--alpha", "2"], "seqstream experiment set: argument --alpha: "),
    (["experiment", "show"], "seqstream experiment show: the following arguments are required"),
    (["demo", "--metric", "conversion:lower"], "--metric sets the options of a --data file's metrics"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_bad_flag_is_one_line(argv, fragment, capsys, no_kafka):
    code, _, err = cli(capsys, *argv)
    assert_one_line_error(code, err, fragment)
    assert code in (1, 2)


# -- no broker --------------------------------------------------------------------------------

def command_name(argv) -> str:
    """What errors are prefixed with: `seqstream experiment set: ...`, `seqstream publish: ...`."""
    return " ".join(argv[:2]) if argv[0] in ("experiment", "topics") else argv[0]


BROKER_COMMANDS = [
    ["worker"],
    ["publish", "{csv}", "--experiment", "e"],
    ["experiment", "set", "--experiment", "e"],
    ["experiment", "show", "e"],
    ["topics", "check"],
    ["topics", "create"],
    ["tail", "results"],
    ["watch", "--once"],
    ["report", "--experiment", "e", "--html", "report.html"],
]


@pytest.mark.parametrize("argv", BROKER_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_no_broker_at_the_local_default_says_how_to_start_one(argv, capsys, no_kafka, tmp_path, monkeypatch):
    from stream_app.kafka import embedded_broker

    monkeypatch.chdir(tmp_path)
    csv = write_csv(tmp_path / "obs.csv", good_rows())
    if argv == ["worker"]:  # it would start one; here the [local] extra is "missing"
        def missing():
            raise embedded_broker.EmbeddedBrokerMissing(
                f"the embedded broker is not installed: pip install '{embedded_broker.LOCAL_EXTRA}', or set KAFKA_BOOTSTRAP")
        monkeypatch.setattr(embedded_broker, "noida_executable", missing)
    code, out, err = cli(capsys, *[a.format(csv=csv) for a in argv])
    local = os.environ["SEQSTREAM_LOCAL_BROKER"]
    if argv == ["worker"]:
        assert_one_line_error(code, err, "seqstream worker: KAFKA_BOOTSTRAP is unset and the embedded broker is not "
                              "installed: pip install 'seqstream[local]'", exit_code=2)
    else:
        assert_one_line_error(code, err, f"seqstream {command_name(argv)}: no broker answers at {local} (KAFKA_BOOTSTRAP is unset)",
                              "`seqstream worker`", "`seqstream broker`", exit_code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs.csv"]  # nothing written


@pytest.mark.parametrize("argv", BROKER_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_kafka_bootstrap_down_is_one_line(argv, capsys, monkeypatch, tmp_path):
    down = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP", down)
    csv = write_csv(tmp_path / "obs.csv", good_rows())
    code, _, err = cli(capsys, *[a.format(csv=csv) for a in argv])
    assert_one_line_error(code, err, f"seqstream {command_name(argv)}: no broker answers at {down} (KAFKA_BOOTSTRAP)", exit_code=2)


class RefusingKafka:
    """A port that accepts TCP connections and closes them at once: the pre-check passes, then
    every Kafka client fails (a broker dying, or something else on the port)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_broker_failing_after_connect_is_one_line_without_unclosed_clients(tmp_path):
    """In a subprocess, so what aiokafka and asyncio print at exit is seen ("Unclosed
    AIOKafkaProducer" from a producer whose start failed)."""
    server = RefusingKafka()
    try:
        csv = write_csv(tmp_path / "obs.csv", good_rows())
        for argv in (["publish", csv, "--experiment", "e"], ["tail", "results"]):
            done = run_subprocess(*argv, env={"KAFKA_BOOTSTRAP": server.address, "PYTHONWARNINGS": "always"})
            assert_one_line_error(done.returncode, done.stderr, f"seqstream {argv[0]}: Kafka: ")
    finally:
        server.close()


def test_ctrl_c_is_one_line(broker, tmp_path):
    run = f"cli-{uuid.uuid4().hex[:8]}"
    env = {"KAFKA_BOOTSTRAP": broker, "SEQSTREAM_TOPIC_PREFIX": f"{run}.", "SEQSTREAM_APP_ID": run}
    assert run_subprocess("topics", "create", env=env).returncode == 0
    tail = subprocess.Popen([sys.executable, "-m", "stream_app", "tail", "results", "--follow"],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # started and reading
        tail.send_signal(signal.SIGINT)
        _, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert_one_line_error(tail.returncode, err, "seqstream tail: interrupted", exit_code=130)


BLOCK_NOIDA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'noida_db':
            raise ModuleNotFoundError("No module named 'noida_db'", name='noida_db')
sys.meta_path.insert(0, Block())
from stream_app.console.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("argv", [["demo"], ["worker"], ["broker"]])
def test_without_the_local_extra_the_error_names_it(argv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    done = subprocess.run([sys.executable, "-c", BLOCK_NOIDA, *argv], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert_one_line_error(done.returncode, done.stderr, f"seqstream {argv[0]}: ",
                          "the embedded broker is not installed: pip install 'seqstream[local]'", exit_code=2)


# -- on a broker ------------------------------------------------------------------------------

def test_unknown_experiments_are_errors(on_broker, capsys):
    assert cli(capsys, "experiment", "set", "--experiment", "known", "--metric", "conversion:binary")[0] == 0
    code, _, err = cli(capsys, "experiment", "show", "nope")
    assert_one_line_error(code, err, "no config published for experiment 'nope'", "(experiments with configs: known)")
    code, out, _ = cli(capsys, "experiment", "show", "known")
    assert code == 0 and '"experiment_id": "known"' in out
    code, _, err = cli(capsys, "tail", "alerts", "--experiment", "nope", "--from-beginning", "--wait", "1")
    assert_one_line_error(code, err, f"no messages for experiment 'nope' on {on_broker}.alerts")
    code, _, err = cli(capsys, "watch", "--once", "--experiment", "nope")
    assert_one_line_error(code, err, "no experiment 'nope'", "(experiments there: known)")


def test_publish_creates_every_topic_before_it_writes(on_broker, capsys, tmp_path):
    """The first command to write on a fresh prefix creates all the topics with the configured
    partitions (a broker that auto-creates would make the one it names with a single one)."""
    from stream_app.kafka.admin import partition_counts
    from stream_app.kafka.topics import topic_specs
    from stream_app.settings import Settings

    code, _, err = cli(capsys, "publish", write_csv(tmp_path / "obs.csv", good_rows()), "--experiment", "e")
    assert code == 0 and err.strip().endswith(f"sent 6 rows in 3 intervals to {on_broker}.observations")
    counts = asyncio.run(partition_counts(os.environ["KAFKA_BOOTSTRAP"]))
    assert {name: counts.get(name) for name in topic_specs(Settings.from_env())} == \
        {name: spec.partitions for name, spec in topic_specs(Settings.from_env()).items()}


def test_publish_says_one_row_and_one_interval_in_the_singular(on_broker, capsys, tmp_path):
    code, _, err = cli(capsys, "publish", write_csv(tmp_path / "one.csv", good_rows(1)), "--experiment", "e")
    assert code == 0 and err.strip().endswith(f"sent 1 row in 1 interval to {on_broker}.observations")


def test_ctrl_c_during_a_paced_publish_says_how_many_intervals_were_sent(broker, tmp_path):
    """Part of the file is on the topic by then: "interrupted" alone left the user to guess."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    run = f"cli-{uuid.uuid4().hex[:8]}"
    env = {"KAFKA_BOOTSTRAP": broker, "SEQSTREAM_TOPIC_PREFIX": f"{run}.", "SEQSTREAM_APP_ID": run,
           "SEQSTREAM_PARTITIONS": "1"}
    rows = [f"control,2020-09-14 {11 + i // 60:02d}:{i % 60:02d}:00,100,10,10,conversion" for i in range(40)]
    publish = subprocess.Popen([sys.executable, "-m", "stream_app", "publish", write_csv(tmp_path / "obs.csv", rows),
                                "--experiment", "e", "--pace", "0.5"], env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def on_topic() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker)
        await consumer.start()
        try:
            partition = TopicPartition(f"{run}.observations", 0)
            return (await consumer.end_offsets([partition]))[partition]
        finally:
            await consumer.stop()

    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and publish.poll() is None:
            if run in str(asyncio.run(_topic_names(broker))) and asyncio.run(on_topic()) >= 2:
                break
            time.sleep(0.2)
        publish.send_signal(signal.SIGINT)
        _, err = publish.communicate(timeout=30)
    finally:
        publish.kill()
    assert_one_line_error(publish.returncode, err, "seqstream publish: interrupted after ", " of 40 intervals (",
                          "sent, the rest not)", exit_code=130)
    sent = int(err.split("interrupted after ")[1].split()[0])
    assert 2 <= sent < 40 and asyncio.run(on_topic()) in (sent, sent + 1)  # +1: a send the interrupt cut short


async def _topic_names(bootstrap: str) -> list[str]:
    from stream_app.kafka.admin import partition_counts

    return list(await partition_counts(bootstrap))


def test_tail_without_new_messages_says_how_to_see_older_ones(on_broker, capsys):
    assert cli(capsys, "topics", "create")[0] == 0
    code, out, err = cli(capsys, "tail", "results", "--wait", "1")
    assert code == 0 and out == ""
    assert err.strip() == (f"seqstream tail: no new messages on {on_broker}.results in 1 s: add --from-beginning "
                           "to see the older ones, or --follow to wait for new ones")


def test_tail_into_a_closed_pipe_exits_0_quietly(broker, tmp_path):
    """`seqstream tail alerts --from-beginning | head -1`: the reader leaves, tail ends with 0 and
    says nothing (no BrokenPipeError, no "Exception ignored" at exit)."""
    from aiokafka import AIOKafkaProducer

    run = f"cli-{uuid.uuid4().hex[:8]}"
    env = {"KAFKA_BOOTSTRAP": broker, "SEQSTREAM_TOPIC_PREFIX": f"{run}.", "SEQSTREAM_APP_ID": run}
    assert run_subprocess("topics", "create", env=env).returncode == 0

    async def alerts() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        try:
            for i in range(2000):
                await producer.send(f"{run}.alerts", key=b"e", value=b'{"kind": "srm", "experiment_id": "e", "n": %d}' % i)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(alerts())
    script = (f"{shlex.quote(sys.executable)} -m stream_app tail alerts --from-beginning | head -1; "
              'echo "tail exit ${PIPESTATUS[0]}" >&2')
    done = subprocess.run(["bash", "-c", script], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.stdout.count("\n") == 1 and '"kind":"srm"' in done.stdout
    assert done.stderr.strip() == "tail exit 0", done.stderr


def test_topics_check_and_create(on_broker, capsys, monkeypatch):
    """check reports each topic against the configuration (exit 1 while any is missing or
    wrong); create makes the missing ones; a topic auto-created with one partition is a
    one-line error for check, create and the worker, naming the fix, which --recreate applies."""
    from stream_app.kafka.admin import TopicSpec, ensure_topics_sync, topic_partitions
    from stream_app.kafka.topics import topic_specs
    from stream_app.settings import Settings

    code, out, err = cli(capsys, "topics", "check")
    assert_one_line_error(code, err, "8 topic(s) missing", "run `seqstream topics create`")
    assert out.count(" missing") == 8
    code, out, _ = cli(capsys, "topics", "create")
    assert code == 0 and out.startswith("created 8 topic(s): ")
    code, out, err = cli(capsys, "topics", "check")
    assert code == 0 and err == "" and out.count(" ok") == 8
    assert [line.split() for line in out.splitlines() if line.startswith(f"{on_broker}.observations ")] == \
        [[f"{on_broker}.observations", "4", "4", "ok"]]

    # another prefix whose experiments topic was auto-created (one partition) by an early producer
    monkeypatch.setenv("SEQSTREAM_TOPIC_PREFIX", f"{on_broker}-b.")
    wrong = f"{on_broker}-b.experiments"
    broker = os.environ["KAFKA_BOOTSTRAP"]
    ensure_topics_sync(broker, {wrong: TopicSpec(partitions=1)})
    fix = (f"topic {wrong} has 1 partition(s), the configuration wants 4 (SEQSTREAM_PARTITIONS): run "
           "`seqstream topics create --recreate`")
    for argv in (["topics", "check"], ["topics", "create"], ["worker"],
                 ["experiment", "set", "--experiment", "e"]):
        code, _, err = cli(capsys, *argv)
        assert_one_line_error(code, err, f"seqstream {command_name(argv)}: {fix}", exit_code=1)
    code, out, _ = cli(capsys, "topics", "create", "--recreate")
    assert code == 0 and f"recreated {wrong}: 1 -> 4 partition(s)" in out
    assert asyncio.run(topic_partitions(broker, wrong)) == 4
    settings = Settings.from_env()
    for name, spec in topic_specs(settings).items():
        assert asyncio.run(topic_partitions(broker, name)) == spec.partitions, name
    assert cli(capsys, "topics", "check")[0] == 0


# -- help and version -------------------------------------------------------------------------

COMMANDS = ["worker", "broker", "demo", "example", "publish", "experiment", "experiment set", "experiment show",
            "topics", "topics check", "topics create", "tail", "watch", "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_a_description_an_example_and_its_environment(command, capsys):
    code, out, _ = cli(capsys, *command.split(), "--help")
    assert code == 0
    usage, description = out.split("\n\n")[:2]
    assert usage.startswith(f"usage: seqstream {command}") and len(description.strip()) > 30
    example = out.split("example:\n", 1)[1].splitlines()[0].strip()
    assert example.startswith(f"seqstream {command}")
    build_parser().parse_args(__import__("shlex").split(example)[1:])  # the example parses
    environment = out.split("environment:\n", 1)[1]
    assert "none" in environment if command == "example" else "SEQSTREAM_" in environment


def test_the_command_summaries_keep_the_case_of_names(capsys):
    """`seqstream --help` used to lowercase every summary: "seqstream_local_broker", "csv"."""
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    summaries = out.split("COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    assert "KAFKA_BOOTSTRAP" in summaries and "CSV" in summaries and "HTML" in summaries
    assert "kafka_bootstrap" not in summaries and " csv " not in summaries


def test_worker_help_lists_every_variable_it_reads(capsys):
    """pip users have no README: the worker's help names the variables themselves."""
    from stream_app.settings import ENVIRONMENT

    code, out, _ = cli(capsys, "worker", "--help")
    environment = " ".join(out.split("environment:\n", 1)[1].split())
    assert code == 0 and "README" not in out
    assert [name for name in ENVIRONMENT if name not in environment] == []


def test_version(capsys):
    from importlib.metadata import version

    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"seqstream {version('seqstream')} (embedded broker: installed)"


def test_version_says_when_the_local_extra_is_missing(tmp_path):
    done = subprocess.run([sys.executable, "-c", BLOCK_NOIDA, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith(
        "(embedded broker: not installed, pip install 'seqstream[local]' to have it)"), done


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


# -- settings values (a value of the right type that cannot be used) --------------------------

@pytest.mark.parametrize("name,value,wanted", [
    ("SEQSTREAM_PARTITIONS", "0", "a whole number >= 1"),
    ("SEQSTREAM_PARTITIONS", "-3", "a whole number >= 1"),
    ("SEQSTREAM_REPLICATION", "0", "a whole number >= 1"),
    ("SEQSTREAM_WEB_PORT", "0", "a port number, 1 to 65535"),
    ("SEQSTREAM_WEB_PORT", "70000", "a port number, 1 to 65535"),
    ("SEQSTREAM_IDLE_TIMEOUT", "0", "a positive number of seconds"),
    ("SEQSTREAM_SESSION_TIMEOUT", "nan", "a positive number of seconds"),
    ("SEQSTREAM_COMMIT_INTERVAL", "-1", "a positive number of seconds"),
    ("SEQSTREAM_BATCH_SIZE", "0", "a whole number >= 1"),
    ("SEQSTREAM_FETCH_IDLE_WAIT", "inf", "zero or a positive number of seconds"),
    ("SEQSTREAM_LOG_LEVEL", "loud", "one of crit, error, warn, info, debug"),
    ("SEQSTREAM_LOCAL_BROKER", "localhost", "HOST:PORT"),
])
@pytest.mark.parametrize("argv", [["topics", "create", "--recreate"], ["worker"]], ids=" ".join)
def test_a_setting_out_of_its_range_is_refused_in_one_line_before_anything_runs(
        name, value, wanted, argv, capsys, monkeypatch, tmp_path):
    from stream_app.settings import Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=f"^{name}='{value}' must be "):
        Settings.from_env()
    code, out, err = cli(capsys, *argv)
    assert_one_line_error(code, err, f"seqstream {command_name(argv)}: {name}='{value}' must be {wanted}", exit_code=2)
    assert out == "" and list(tmp_path.iterdir()) == []  # no data dir, no broker started


def test_the_log_level_is_case_insensitive_as_faust_s():
    from stream_app.settings import Settings

    assert Settings.from_env({"SEQSTREAM_LOG_LEVEL": "WARN"}).log_level == "warn"


def test_recreate_deletes_nothing_unless_the_replacement_would_be_created(on_broker, capsys, monkeypatch):
    """`topics create --recreate` with a spec the broker refuses (here a replication factor above
    its one broker) must leave the old topic and its messages alone: it used to delete first and
    then fail to create."""
    from aiokafka import AIOKafkaProducer

    from stream_app.kafka.admin import TopicSpec, ensure_topics_sync, partition_counts

    broker = os.environ["KAFKA_BOOTSTRAP"]
    wrong = f"{on_broker}.experiments"
    ensure_topics_sync(broker, {wrong: TopicSpec(partitions=1)})

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        try:
            await producer.send_and_wait(wrong, b'{"kept": true}', key=b"e")
        finally:
            await producer.stop()

    asyncio.run(produce())
    monkeypatch.setenv("SEQSTREAM_REPLICATION", "3")
    code, out, err = cli(capsys, "topics", "create", "--recreate")
    assert_one_line_error(code, err, "seqstream topics create: the broker would refuse to create topics: ", wrong,
                          "error 38", exit_code=1)
    counts = asyncio.run(partition_counts(broker))
    assert counts.get(wrong) == 1  # not deleted
    assert not [name for name in counts if name.startswith(on_broker) and name != wrong]  # nothing created
    assert not [name for name in counts if "seqstream-validate" in name]  # the probe created nothing
    monkeypatch.delenv("SEQSTREAM_REPLICATION")
    code, out, _ = cli(capsys, "topics", "create", "--recreate")  # a spec it accepts: recreated
    assert code == 0 and f"recreated {wrong}: 1 -> 4 partition(s)" in out


# -- a second worker on the same machine --------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
lock.truncate(0); lock.write(f"{os.getpid()}\\n"); lock.flush()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_worker_on_a_taken_port_or_data_dir_is_one_line_before_faust_starts(
        on_broker, capsys, monkeypatch, tmp_path):
    """Same port: faust used to fail 3 s in with 161 lines and 3 tracebacks; same data dir:
    RocksDB's LOCK error inside faust, and the worker kept running."""
    from stream_app.console import cli as cli_module

    monkeypatch.setenv("SEQSTREAM_DATADIR", str(tmp_path / "data"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        monkeypatch.setenv("SEQSTREAM_WEB_PORT", str(taken.getsockname()[1]))
        code, _, err = cli(capsys, "worker")
        assert_one_line_error(code, err, f"seqstream worker: port {taken.getsockname()[1]} on 127.0.0.1 is in use",
                              "set SEQSTREAM_WEB_PORT", exit_code=2)
        assert not (tmp_path / "data").exists()  # refused before anything was written
    finally:
        taken.close()

    monkeypatch.setenv("SEQSTREAM_WEB_PORT", str(free_port()))
    (tmp_path / "data").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "data" / cli_module.WORKER_LOCK)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, "worker")
        assert_one_line_error(code, err, f"seqstream worker: the data dir {tmp_path / 'data'} is used by another "
                              f"worker (pid {holder.pid}): set SEQSTREAM_DATADIR", exit_code=2)
        # with KAFKA_BOOTSTRAP unset, a broker answering at the local default: still that one line only
        monkeypatch.setenv("SEQSTREAM_LOCAL_BROKER", os.environ.pop("KAFKA_BOOTSTRAP"))
        code, _, err = cli(capsys, "worker")
        assert_one_line_error(code, err, "is used by another worker", exit_code=2)
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the next worker takes it, with its own pid
    from stream_app.settings import Settings

    cli_module._lock_data_dir(Settings.from_env())
    try:
        assert (tmp_path / "data" / cli_module.WORKER_LOCK).read_text() == f"{os.getpid()}\n"
    finally:
        cli_module._held_locks.pop().close()


# -- the broker the worker started dies ------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def _healthy_worker(env: dict, cwd) -> subprocess.Popen:
    import urllib.request

    from stream_app.kafka.worker_process import WORKER_ARGV

    worker = subprocess.Popen(WORKER_ARGV, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            pytest.fail(f"worker exited with {worker.returncode}: {worker.communicate()[1][-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{env['SEQSTREAM_WEB_PORT']}/health", timeout=1) as response:
                if response.status == 200:
                    return worker
        except OSError:
            time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    pytest.fail("worker not healthy in 60 s")


def test_the_worker_stops_with_one_line_when_the_broker_it_started_dies(tmp_path):
    """It used to log "Unable connect to node" some 40 times a second and keep running, and a
    SIGTERM then took a minute. A worker stopped as usual stops its broker without that line."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    env.update({"SEQSTREAM_LOCAL_BROKER": f"127.0.0.1:{free_port()}", "SEQSTREAM_WEB_PORT": str(free_port()),
                "SEQSTREAM_DATADIR": str(tmp_path / "data"), "SEQSTREAM_PARTITIONS": "1"})
    worker = _healthy_worker(env, tmp_path)
    try:
        os.killpg(worker.pid, signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    assert worker.returncode == 0 and "exited (code" not in err, err[-3000:]

    worker = _healthy_worker(env, tmp_path)
    try:
        [broker_pid] = [pid for pid in _children(worker.pid)
                        if b"noida-db" in open(f"/proc/{pid}/cmdline", "rb").read()]
        os.kill(broker_pid, signal.SIGKILL)
        killed = time.monotonic()
        _, err = worker.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    lines = err.strip().splitlines()
    assert worker.returncode == 3, err[-3000:]
    assert lines[-1].startswith(f"seqstream worker: the embedded broker it started on {env['SEQSTREAM_LOCAL_BROKER']} "
                                "exited (code -9; log: "), lines[-1]
    assert "Traceback" not in err
    assert took < 15, took  # seconds: it polls the broker every 0.2 s


def test_tail_follow_says_once_that_the_broker_stopped_answering(tmp_path):
    """It used to print nothing, for as long as it ran."""
    from stream_app.kafka.embedded_broker import EmbeddedBroker

    with EmbeddedBroker(data_dir=tmp_path / "broker") as own:  # its own: this test kills it
        env = {"KAFKA_BOOTSTRAP": own.bootstrap, "SEQSTREAM_TOPIC_PREFIX": "t.", "SEQSTREAM_APP_ID": "t"}
        assert run_subprocess("topics", "create", env=env).returncode == 0
        tail = subprocess.Popen([sys.executable, "-m", "stream_app", "tail", "results", "--follow"],
                                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(3)  # started and following
            assert tail.poll() is None
            os.kill(own.pid, signal.SIGKILL)
            stopped = time.monotonic()
            _, err = tail.communicate(timeout=30)
            took = time.monotonic() - stopped
        finally:
            tail.kill()
    assert_one_line_error(tail.returncode, err, f"seqstream tail: the broker at {own.bootstrap} stopped answering",
                          exit_code=1)
    assert took < 20, took


def test_an_orphaned_connection_error_is_not_printed_after_the_one_line(caplog):
    """aiokafka may leave a future holding a ConnectionResetError when a broker resets a
    connection; asyncio prints it at exit, after the command's one line. The CLI drops exactly
    that, and nothing else asyncio reports."""
    import asyncio
    import gc
    import logging

    from stream_app.console.cli import _DropOrphanedConnectionErrors

    drop = _DropOrphanedConnectionErrors()  # as main() installs it
    logging.getLogger("asyncio").addFilter(drop)
    try:
        async def orphan_futures():
            loop = asyncio.get_running_loop()
            reset, other = loop.create_future(), loop.create_future()
            reset.set_exception(ConnectionResetError(104, "Connection reset by peer"))
            other.set_exception(ValueError("a real bug"))
            del reset, other
            gc.collect()

        asyncio.run(orphan_futures())
        gc.collect()
    finally:
        logging.getLogger("asyncio").removeFilter(drop)
    reported = [repr(r.exc_info[1]) for r in caplog.records if r.name == "asyncio" and r.exc_info]
    assert reported == ["ValueError('a real bug')"], reported
