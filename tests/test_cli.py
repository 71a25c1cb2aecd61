"""The command line without a broker: every command that needs Kafka says how to configure one."""

from __future__ import annotations

import pytest

from stream_app.cli import main


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
