"""``seqstream``: the command line (worker, broker, demo, example, publish, experiment, topics, tail,
watch, report).

A user's mistake (a bad file, a bad flag, no broker, an unknown experiment, Ctrl-C) ends a
command with one line on stderr, ``seqstream COMMAND: what is wrong and what to do``, and a
non-zero exit code, never a traceback: :func:`run` turns the errors a command can meet into that
line. With KAFKA_BOOTSTRAP unset every command talks to the local default broker
(SEQSTREAM_LOCAL_BROKER, 127.0.0.1:9092), which ``seqstream worker`` and ``seqstream broker``
start embedded when nothing answers there.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import textwrap
from typing import NamedTuple

from ..settings import Settings, broker_settings


class CommandError(Exception):
    """What ends a command on a user's mistake: one line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (it prints the whole usage, then the error)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _number(text: str, ok, wanted: str) -> float:
    """A flag's number, or argparse's error (one line, by Parser.error) saying what it must be."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be {wanted}")
    return value


def positive_float(text: str) -> float:
    return _number(text, lambda v: 0 < v < float("inf"), "a positive number of seconds")


def non_negative_float(text: str) -> float:
    return _number(text, lambda v: 0 <= v < float("inf"), "zero or a positive number of seconds")


def alpha(text: str) -> float:
    return _number(text, lambda v: 0 < v < 1, "between 0 and 1")


def _broker(command: str) -> Settings:
    """Settings pointed at a broker that answers, or the one line that says how to get one."""
    settings = broker_settings(command)  # prints that line itself (watch and report use it too)
    if settings is None:
        raise CommandError("", code=2)
    return settings


# -- worker and broker --------------------------------------------------------------------------

def _local_broker(settings: Settings):
    """For ``worker`` and ``broker`` with KAFKA_BOOTSTRAP unset: the embedded broker started at
    the local default address with its data under the data dir, or None when a broker already
    answers there (it is used as it is)."""
    from ..kafka.clients import broker_answers, split_address
    from ..kafka.embedded_broker import (BrokerStartError, EmbeddedBroker, EmbeddedBrokerMissing, noida_executable,
                                         starting_marker)

    address = settings.local_broker
    if broker_answers(address):
        return None
    try:
        host, port = split_address(address)
    except ValueError as exc:
        raise CommandError(f"SEQSTREAM_LOCAL_BROKER: {exc}", code=2) from None
    marker = starting_marker(settings.datadir)
    data_dir = marker.parent
    try:
        noida_executable()  # before anything is written: a missing [local] extra leaves nothing behind
        data_dir.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return EmbeddedBroker(port=port, host=host, data_dir=data_dir).start()
    except EmbeddedBrokerMissing as exc:
        raise CommandError(f"KAFKA_BOOTSTRAP is unset and {exc}", code=2) from None
    except BrokerStartError as exc:
        if broker_answers(address, wait=2.0):  # another command started one there just now
            return None
        first = str(exc).splitlines()[0]
        raise CommandError(f"could not start the embedded broker at {address}: {first} "
                           f"(log: {data_dir / 'noida-db.log'})") from None
    finally:
        marker.unlink(missing_ok=True)


def _check_web_port(settings: Settings) -> None:
    """Bind the web port once before faust starts: taken, faust fails three seconds in with a
    hundred and sixty lines and three tracebacks (aiohttp's OSError 98)."""
    import errno
    import socket

    with socket.socket(socket.AF_INET6 if ":" in settings.web_host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no conflict
        try:
            sock.bind((settings.web_host, settings.web_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(f"port {settings.web_port} on {settings.web_host} is in use (another worker?): "
                                   "set SEQSTREAM_WEB_PORT to a free one", code=2) from None
            raise CommandError(f"cannot serve on {settings.web_host}:{settings.web_port} ({exc.strerror or exc}): "
                               "set SEQSTREAM_WEB_HOST / SEQSTREAM_WEB_PORT", code=2) from None


WORKER_LOCK = "worker.lock"
_held_locks: list = []  # the open lock files of this process: flock holds while they stay open


def _lock_data_dir(settings: Settings) -> None:
    """Hold an exclusive flock on SEQSTREAM_DATADIR/worker.lock for the worker's life (the kernel
    drops it when the process dies, even by kill -9). A second worker on the same data dir would
    otherwise crash inside faust on RocksDB's own lock, with a traceback, and keep running."""
    import fcntl
    from pathlib import Path

    path = Path(settings.datadir) / WORKER_LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a+")
    except OSError as exc:
        raise CommandError(f"cannot use the data dir {settings.datadir} ({exc.strerror or exc}): "
                           "set SEQSTREAM_DATADIR", code=2) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise CommandError(f"the data dir {settings.datadir} is used by another worker{by}: set SEQSTREAM_DATADIR "
                           "to another directory for a second worker", code=2) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _held_locks.append(lock)


def _stop_with_broker(broker, worker_stopping) -> None:
    """Watch the embedded broker this worker started (its child): if it exits while the worker
    runs, say so in one line and end the worker with exit code 3.

    Otherwise the worker logged "Unable connect to node" some 40 times a second for as long as it
    ran, and a SIGTERM then took a minute (faust waits on commits and flushes no broker can
    answer). Ending at once is what a crash is, and crashes are safe here: states are saved before
    the offsets they reflect are committed (ARCHITECTURE.md), and with the broker gone nothing can
    be committed or produced anyway."""
    import threading
    import time

    def watch() -> None:
        while broker.is_running():
            if worker_stopping.wait(0.2):
                return  # the worker stops the broker itself (cmd_worker's finally)
        if worker_stopping.is_set():
            return
        for name in ("aiokafka", "faust", "mode"):  # no retry lines after the one that explains
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        line = (f"seqstream worker: the embedded broker it started on {broker.bootstrap} exited (code "
                f"{broker.returncode}; log: {broker.log_path}): stopping; `seqstream worker` starts both again\n")
        os.write(2, line.encode())  # the fd itself: faust has sys.stderr redirected into its logging
        os._exit(3)

    threading.Thread(target=watch, name="seqstream-broker-watchdog", daemon=True).start()


def cmd_worker(args) -> int:
    import threading

    from ..kafka.admin import run_sync
    from ..kafka.clients import broker_answers, no_broker_message
    from ..kafka.topics import ensure_app_topics

    settings = Settings.from_env()
    _check_web_port(settings)  # nothing written yet: a taken port leaves no data dir behind
    broker, local, stopping = None, not settings.bootstrap, threading.Event()
    if settings.bootstrap:
        if not broker_answers(settings.bootstrap):
            raise CommandError(no_broker_message(settings), code=2)
    else:
        broker = _local_broker(settings)
        settings = dataclasses.replace(settings, bootstrap=settings.local_broker)
        os.environ["KAFKA_BOOTSTRAP"] = settings.bootstrap  # stream_app.app reads it at import
    try:
        _lock_data_dir(settings)  # before faust opens the tables (RocksDB) under the data dir
        if broker is not None:
            print(f"seqstream worker: KAFKA_BOOTSTRAP is unset: started an embedded broker on {broker.bootstrap} "
                  f"(data in {broker.data_dir}; it stops with the worker)", file=sys.stderr, flush=True)
        elif local:
            print(f"seqstream worker: KAFKA_BOOTSTRAP is unset: using the broker that answers at {settings.bootstrap}",
                  file=sys.stderr)
        # Before faust starts: a wrong partition count is one line here, a traceback in there.
        run_sync(lambda: ensure_app_topics(settings))
        from ..app import app  # creates the topics again before consuming (SeqstreamApp.on_first_start)

        sys.argv = ["seqstream", "worker", "-l", settings.log_level, "--web-port", str(settings.web_port),
                    "--web-bind", settings.web_host]
        if broker is not None:
            _stop_with_broker(broker, stopping)
        app.main()
        return 0
    finally:
        stopping.set()
        if broker is not None:
            broker.stop()


def cmd_broker(args) -> int:
    import signal
    import time

    settings = Settings.from_env()
    broker = _local_broker(settings)
    if broker is None:
        raise CommandError(f"a broker already answers at {settings.local_broker}: nothing to start")
    print(f"seqstream broker: embedded broker on {broker.bootstrap} (data in {broker.data_dir}); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop it as Ctrl-C does
    try:
        while broker.is_running():
            time.sleep(0.2)
        raise CommandError(f"the embedded broker exited (code {broker.returncode}); log: {broker.log_path}")
    except KeyboardInterrupt:
        return 0  # the way to stop it
    finally:
        broker.stop()


# -- demo and example -----------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from ..kafka.embedded_broker import EmbeddedBrokerMissing
    from .demo import DemoInputError, main

    try:
        return main(args, metric_options=dict(_parse_metric(m) for m in args.metric or []))
    except DemoInputError as exc:
        raise CommandError(str(exc)) from None
    except EmbeddedBrokerMissing as exc:
        raise CommandError(f"KAFKA_BOOTSTRAP is unset and {exc}", code=2) from None


def cmd_example(args) -> int:
    from .files import FileError, write_example_csv

    try:
        rows = write_example_csv(args.file)
    except FileError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {args.file}: {rows} rows in the covid data's format (it has no experiment_id column: "
          "publish it with --experiment ID)", file=sys.stderr)
    return 0


# -- publish --------------------------------------------------------------------------------------

def _names(text: str | None) -> list[str] | None:
    names = [name.strip() for name in text.split(",") if name.strip()] if text else []
    return names or None


def cmd_publish(args) -> int:
    from ..kafka.clients import send_observations, started_producer
    from ..kafka.topics import ensure_app_topics
    from .files import FileError, by_interval, read_observations, summarize_errors

    metrics = _names(args.metrics)
    try:
        data = read_observations(args.file, args.experiment, metrics)
    except FileError as exc:
        raise CommandError(str(exc)) from None
    unknown = sorted(set(metrics or ()) - data.metrics)
    if unknown:
        raise CommandError(f"--metrics: {', '.join(map(repr, unknown))} not in {args.file} "
                           f"(its metrics: {', '.join(sorted(data.metrics)) or 'none'}): nothing sent")
    if not data.rows and not data.errors:
        raise CommandError(f"{args.file}: holds no observations: nothing sent")
    if data.errors and not args.skip_bad:
        summary = summarize_errors(data.errors)
        valid = f"--skip-bad sends the {len(data.rows)} valid one(s)" if data.rows else "no row is valid"
        if len(summary) == 1:  # every bad row for one reason: said once, with the count
            raise CommandError(f"{args.file}: {summary[0]}: nothing sent ({valid})")
        for line in summary:
            print(f"seqstream publish: {args.file}: {line}", file=sys.stderr)
        raise CommandError(f"{len(data.errors)} bad row(s): nothing sent ({valid})")
    if not data.rows:
        raise CommandError(f"{args.file}: no valid row: nothing sent")
    settings = _broker("publish")
    groups = by_interval(data.rows)
    sent = 0  # intervals whose messages the broker acked

    async def run() -> int:
        nonlocal sent
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        await ensure_app_topics(settings)
        columns = (TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn())
        stderr = Console(stderr=True)
        async with started_producer(settings) as prod:
            with Progress(*columns, console=stderr, disable=not stderr.is_terminal) as progress:
                task = progress.add_task("rows", total=len(data.rows))
                for i, group in enumerate(groups, start=1):
                    progress.advance(task, await send_observations(prod, settings, group))
                    sent = i
                    if args.pace and i < len(groups):
                        await asyncio.sleep(args.pace)
        skipped = f", skipped {len(data.errors)} bad row(s)" if data.errors else ""
        print(f"sent {_count(len(data.rows), 'row')} in {_count(len(groups), 'interval')} to "
              f"{settings.topic('observations')}{skipped}", file=sys.stderr)
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        # Said exactly: a part of the file is on the topic, and publishing it all again sends it twice.
        if not sent:
            raise CommandError("interrupted before any interval was sent", code=130) from None
        raise CommandError(f"interrupted after {sent} of {_count(len(groups), 'interval')} "
                           f"({'those were' if sent != 1 else 'that one was'} sent, the rest not)", code=130) from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- tail -----------------------------------------------------------------------------------------

TAIL_UNREACHABLE = 3.0  # seconds without a broker before `tail` says so and exits 1


def cmd_tail(args) -> int:
    import orjson

    from ..codec import encode_row
    from ..kafka.clients import follow

    settings = _broker("tail")
    topic = settings.topic(args.topic)

    async def run() -> tuple[int, set]:
        stop = asyncio.Event()
        if not args.follow:
            asyncio.get_running_loop().call_later(args.wait, stop.set)
        console = None
        if args.table:
            from rich.console import Console

            console = Console()
        printed, others = 0, set()
        async for kind, message in follow(settings, [args.topic], from_beginning=args.from_beginning, stop=stop,
                                          unreachable_after=TAIL_UNREACHABLE):
            experiment = message.get("experiment_id", _key_of(message)) if isinstance(message, dict) else None
            if args.experiment and experiment != args.experiment:
                others.add(str(experiment))
                continue
            if console is not None:
                console.print(_table_line(kind, message), highlight=False, soft_wrap=True)
            else:  # results as the worker wrote them: non-finite numbers as "inf", "-inf", "nan"
                print((encode_row(message) if kind == "results" else orjson.dumps(message)).decode(), flush=True)
            printed += 1
        return printed, others

    printed, others = asyncio.run(run())
    if printed:
        return 0
    if args.experiment and args.from_beginning:
        seen = f"messages of: {', '.join(sorted(others)[:20])}" if others else "no messages at all"
        raise CommandError(f"no messages for experiment {args.experiment!r} on {topic} (it has {seen})")
    if args.from_beginning:
        print(f"seqstream tail: {topic} has no messages yet", file=sys.stderr)
    elif not args.follow:
        print(f"seqstream tail: no new messages on {topic} in {args.wait:g} s: add --from-beginning to see "
              "the older ones, or --follow to wait for new ones", file=sys.stderr)
    return 0


# -- experiment -----------------------------------------------------------------------------------

def _parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise CommandError(f"--weights: expected name=number pairs, got {part!r}", code=2) from None
    return weights


def _parse_metric(text: str) -> tuple[str, dict]:
    """NAME[:binary][:lower][:guardrail][:absolute] -> (name, options)."""
    name, *flags = text.split(":")
    known = {"binary": ("is_binary", True), "lower": ("lower_is_better", True),
             "guardrail": ("in_fdr_family", False), "absolute": ("effect", "absolute")}
    if not name.strip():
        raise CommandError(f"--metric {text!r}: no metric name before the flags", code=2)
    options = {}
    for i, flag in enumerate(flags):
        if flag not in known:
            raise CommandError(f"--metric {text!r}: unknown flag {flag!r} (binary, lower, guardrail, absolute)", code=2)
        if flag in flags[:i]:
            raise CommandError(f"--metric {text!r}: flag {flag!r} given twice", code=2)
        key, value = known[flag]
        options[key] = value
    return name, options


async def _latest_configs(settings: Settings) -> dict[str, dict]:
    """Experiment id -> the config version the worker applies (the highest, not the last)."""
    from ..kafka.clients import follow
    from .watch import newer_config

    latest: dict[str, dict] = {}
    async for _, message in follow(settings, ["experiments"], to_end=True):
        experiment = message.get("experiment_id") if isinstance(message, dict) else None
        if isinstance(experiment, str) and newer_config(latest.get(experiment), message):
            latest[experiment] = message
    return latest


def cmd_experiment(args) -> int:
    import time

    import orjson

    from state import InvalidInput

    from ..codec import checked_config_message
    from ..kafka.clients import send_config, started_producer
    from ..kafka.topics import ensure_app_topics
    from .files import FileError, read_text

    if args.action == "show":
        settings = _broker(f"experiment {args.action}")
        configs = asyncio.run(_latest_configs(settings))
        if args.experiment not in configs:
            known = f"experiments with configs: {', '.join(sorted(configs)[:20])}" if configs else "no configs at all"
            raise CommandError(f"no config published for experiment {args.experiment!r} on "
                               f"{settings.topic('experiments')} ({known})")
        print(orjson.dumps(configs[args.experiment], option=orjson.OPT_INDENT_2).decode())
        return 0

    if args.file:
        try:
            doc = orjson.loads(read_text(args.file, kind="a JSON config"))
        except FileError as exc:
            raise CommandError(str(exc)) from None
        except orjson.JSONDecodeError as exc:
            raise CommandError(f"{args.file}: not a JSON config ({exc})") from None
        if not isinstance(doc, dict):
            raise CommandError(f"{args.file}: a config is a JSON object (see the README), not {type(doc).__name__}")
        experiment = args.experiment or doc.get("experiment_id")
        version = doc.get("version")
    else:
        experiment = args.experiment
        doc = {"reference_variation_id": args.reference}
        if args.weights:
            doc["weights"] = _parse_weights(args.weights)
        if args.alpha is not None:
            doc["alpha"] = args.alpha
        doc["metrics"] = dict(_parse_metric(m) for m in args.metric or [])
        version = None
    if not experiment:
        raise CommandError("name the experiment (--experiment or experiment_id in the file)", code=2)
    weights, reference = doc.get("weights"), doc.get("reference_variation_id", "control")
    if isinstance(weights, dict) and weights and reference not in weights:
        # results compare every arm with the reference: without its weight the SRM check has no
        # expected share for it, so the config could never be what was meant
        where = f"{args.file}: reference_variation_id" if args.file else "--reference"
        raise CommandError(f"{where} {reference!r} has no weight (weights: {', '.join(map(str, weights))}): "
                           "name the reference among them", code=2)
    version = args.version if args.version is not None else version
    if version is None:
        version = int(time.time() * 1000)  # increasing across calls, so the newest set wins
    try:
        message = checked_config_message(experiment, version, doc)
    except InvalidInput as exc:
        raise CommandError(f"invalid config: {exc}") from None
    settings = _broker(f"experiment {args.action}")

    async def publish() -> int:
        await ensure_app_topics(settings)  # before the first write: never an auto-created topic
        async with started_producer(settings) as prod:
            await send_config(prod, settings, experiment, message)
        print(f"published config version {version} for {experiment}")
        return 0

    return asyncio.run(publish())


# -- topics ---------------------------------------------------------------------------------------

def cmd_topics(args) -> int:
    from ..kafka.topics import check_topics, ensure_app_topics, mismatch_line, recreate_mismatched

    settings = _broker(f"topics {args.action}")
    if args.action == "check":
        statuses = asyncio.run(check_topics(settings))
        width = max(len(s.name) for s in statuses)
        print(f"{'topic':<{width}}  {'partitions':>10}  {'wanted':>6}  state")
        for s in statuses:
            print(f"{s.name:<{width}}  {'-' if s.found is None else s.found:>10}  {s.wanted:>6}  {s.state}")
        wrong = {s.name: (s.found, s.wanted) for s in statuses if s.state == "MISMATCH"}
        if wrong:
            raise CommandError(mismatch_line(wrong))
        missing = [s.name for s in statuses if s.found is None]
        if missing:
            raise CommandError(f"{len(missing)} topic(s) missing on {settings.bootstrap}: run `seqstream topics create` "
                               "(every producing command and the worker also create them)")
        return 0
    if args.recreate:
        before = asyncio.run(recreate_mismatched(settings))
        for s in before:
            if s.state == "MISMATCH":
                print(f"recreated {s.name}: {s.found} -> {s.wanted} partition(s) (its messages were deleted)")
    else:
        before = asyncio.run(check_topics(settings))
        asyncio.run(ensure_app_topics(settings))
    created = [s.name for s in before if s.found is None]
    print(f"created {len(created)} topic(s){': ' + ', '.join(created) if created else ''}; "
          f"all {len(before)} exist with the configured partitions on {settings.bootstrap}")
    return 0


# -- watch and report -----------------------------------------------------------------------------

def cmd_watch(args) -> int:
    from .watch import main

    if args.once and args.experiment:
        settings = _broker("watch")
        known = set(asyncio.run(_latest_configs(settings)))
        missing = sorted(set(args.experiment) - known - asyncio.run(_experiments_with_results(settings, args.experiment)))
        if missing:
            there = f"experiments there: {', '.join(sorted(known)[:20])}" if known else "no experiments at all"
            raise CommandError(f"no experiment {', '.join(map(repr, missing))} on {settings.bootstrap} "
                               f"with prefix {settings.topic_prefix!r} ({there})")
    elif args.once:  # one snapshot of nothing used to say "waiting for results..." and exit 0
        settings = _broker("watch")
        if not asyncio.run(_experiments_with_results(settings, None)):
            raise CommandError(f"no results yet on {settings.topic('results')}: a worker writes them as intervals "
                               "of published observations close (`seqstream tail results --follow` waits for them)")
    return main(args)


async def _experiments_with_results(settings: Settings, wanted) -> set[str]:
    """Which of ``wanted`` have results on the topic (``wanted`` None: the first one found, if any)."""
    from ..kafka.clients import NoSuchTopics, follow

    found: set[str] = set()
    try:
        async for _, row in follow(settings, ["results"], to_end=True):
            if isinstance(row, dict) and (wanted is None or row.get("experiment_id") in wanted):
                found.add(row.get("experiment_id"))
                if wanted is None or found >= set(wanted):
                    break
    except NoSuchTopics:
        pass
    return found


def cmd_report(args) -> int:
    from .report import main

    return main(args)


def _key_of(message: dict):
    return message.get("key")  # dead letters carry the original key


def _table_line(kind: str, m: dict) -> str:
    """One readable, aligned line per message for ``tail --table`` (rich markup for colour)."""
    import time

    from rich.markup import escape

    if kind == "results":
        from ..formatting import fmt_effect, fmt_interval, fmt_p, has_estimate  # as every surface writes them

        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m["interval_timestamp"]))
        verdict = "[bold green]significant[/]" if m["rejected"] else "[dim]not significant[/]"
        return (f"{when}  {m['experiment_id']:<18} {m['metric']:<28.28} {m['variation_id']:<14.14} "
                f"lift {fmt_effect(m['lift_estimate']) if has_estimate(m) else 'burn-in':>9}  CI "
                f"{escape(fmt_interval(m['corrected_conf_interval_lower'], m['corrected_conf_interval_upper']))}  "
                f"p {fmt_p(m['corrected_p_value'])}  {verdict}")
    if kind == "alerts":
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m["interval_timestamp"]))
        colour = "red" if m["kind"] in ("srm", "data_quality") else "yellow"
        return f"{when}  [{colour}]{m['kind']:<20}[/] {m['experiment_id']:<18} {escape(m['message'])}"
    return f"{m['topic']}\\[{m['partition']}]@{m['offset']}  key={m.get('key')!r}  [red]{escape(m['reason'])}[/]"


# -- the parser -----------------------------------------------------------------------------------

BROKER_ENV = "KAFKA_BOOTSTRAP (unset: the local default broker), SEQSTREAM_LOCAL_BROKER (127.0.0.1:9092), " \
             "SEQSTREAM_TOPIC_PREFIX"
TOPIC_ENV = BROKER_ENV + ", SEQSTREAM_PARTITIONS, SEQSTREAM_REPLICATION, SEQSTREAM_APP_ID (topics it creates)"

class CommandHelp(NamedTuple):
    """A (sub-)command's help: the one-line summary of `seqstream --help` (kept as written: it
    names variables such as KAFKA_BOOTSTRAP), the description, an example and what it reads."""

    summary: str
    description: str
    example: str
    env: str


def _worker_env() -> str:
    from ..settings import ENVIRONMENT  # every variable, so the list cannot drift from settings.py

    return ", ".join(ENVIRONMENT)


# command (or "command action") -> its help
HELP = {
    "worker": CommandHelp(
        "run a stream worker (on an embedded broker while KAFKA_BOOTSTRAP is unset)",
        "Run a stream worker: consumes observations and configs, writes results and alerts, serves the HTTP API "
        "and dashboard. With KAFKA_BOOTSTRAP unset it uses the broker at SEQSTREAM_LOCAL_BROKER, starting an "
        "embedded one there (data under SEQSTREAM_DATADIR) if nothing answers.",
        "seqstream worker",
        _worker_env()),
    "broker": CommandHelp(
        "run only the embedded broker, in the foreground",
        "Run only the embedded Kafka-protocol broker (noida-db, the [local] extra) in the foreground at "
        "SEQSTREAM_LOCAL_BROKER, its data under SEQSTREAM_DATADIR/broker; Ctrl-C stops it.",
        "seqstream broker",
        "SEQSTREAM_LOCAL_BROKER, SEQSTREAM_DATADIR"),
    "demo": CommandHelp(
        "run broker, worker and example traffic end to end, then a summary",
        "Run broker (if KAFKA_BOOTSTRAP is unset), worker and example traffic end to end, print results and alerts "
        "as they arrive, then a summary; everything is stopped at the end.",
        "seqstream demo --data covid.csv --experiment covid --metric 'Customer support calls per visitor:lower'",
        "KAFKA_BOOTSTRAP (unset: an embedded broker of its own), SEQSTREAM_IDLE_TIMEOUT"),
    "example": CommandHelp(
        "write an example observations CSV in the covid data's format",
        "Write an example observations CSV in the format (and with the metric names) of Optimizely's "
        "covid-messaging data: 3 variations x 5 metrics x 18 one-minute intervals, simulated with a seed.",
        "seqstream example covid.csv",
        "none"),
    "publish": CommandHelp(
        "validate a CSV or JSON-lines file of observations, then publish it",
        "Validate a CSV (the covid data's format) or JSON-lines file of observations, then publish it one message "
        "per experiment and interval; nothing is sent if any row is bad, unless --skip-bad.",
        "seqstream publish covid.csv --experiment covid --pace 0.5",
        TOPIC_ENV + ", SEQSTREAM_COMPRESSION"),
    "experiment": CommandHelp(
        "publish an experiment's config version, or print the latest one",
        "Publish an experiment's config version (`set`), or print the latest one (`show`).",
        "seqstream experiment set --experiment covid --metric 'Customer support calls per visitor:lower'",
        TOPIC_ENV),
    "experiment set": CommandHelp(
        "publish a config version (a JSON file, or flags)",
        "Publish a config version (a JSON file, or flags); it governs what the worker reads after it.",
        "seqstream experiment set --experiment covid --weights control=1,message_1=1 "
        "--metric 'Customer support calls per visitor:lower'",
        TOPIC_ENV),
    "experiment show": CommandHelp(
        "print the latest published config",
        "Print the config version of an experiment the worker applies (the highest version published).",
        "seqstream experiment show covid",
        BROKER_ENV),
    "topics": CommandHelp(
        "check the topics against the configuration, or create the missing ones",
        "Check the topics against the configuration (partitions found against wanted), or create the missing "
        "ones; --recreate deletes and recreates those with a wrong partition count.",
        "seqstream topics check",
        TOPIC_ENV),
    "topics check": CommandHelp(
        "each topic's partitions against the configuration; exit 1 if any is missing or wrong",
        "Print each topic of the configuration with the partitions found on the broker and the partitions "
        "wanted; exit 1, naming the fix, if any is missing or has another count. Creates nothing.",
        "seqstream topics check",
        TOPIC_ENV),
    "topics create": CommandHelp(
        "create the missing topics",
        "Create the missing topics with the configured partitions. With --recreate, also delete and recreate "
        "those with a wrong partition count (their messages are lost); nothing is deleted unless the broker "
        "would accept every replacement.",
        "seqstream topics create --recreate",
        TOPIC_ENV),
    "tail": CommandHelp(
        "print the results, alerts or dead-letter topic as JSON lines",
        "Print the messages of the results, alerts or dead-letter topic as JSON lines (or --table).",
        "seqstream tail results --experiment covid --from-beginning",
        BROKER_ENV),
    "watch": CommandHelp(
        "live terminal view of results and alerts",
        "Live terminal view of results and alerts: lift, always-valid CI, corrected p and significance per "
        "metric and variation.",
        "seqstream watch --experiment covid",
        BROKER_ENV),
    "report": CommandHelp(
        "write a static HTML report of an experiment's results",
        "Write a static HTML report of an experiment's results (overview tables, lift and CI charts).",
        "seqstream report --experiment covid --html covid.html",
        BROKER_ENV),
}


def _add(sub, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """The parser of HELP[name] ("experiment set" under `experiment`'s sub-parsers is "set")."""
    help_ = HELP[name]
    epilog = f"example:\n  {help_.example}\n\nenvironment:\n" + textwrap.fill(help_.env, 96, initial_indent="  ",
                                                                               subsequent_indent="  ")
    parser = sub.add_parser(name.split()[-1], help=help_.summary, description=textwrap.fill(help_.description, 96),
                            epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    parser.set_defaults(func=func)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seqstream")
    except PackageNotFoundError:
        return "(not installed)"


def _local_extra() -> str:
    """Whether the embedded broker (the [local] extra) is there, without importing it."""
    from importlib.util import find_spec

    from ..kafka.embedded_broker import LOCAL_EXTRA

    try:
        if find_spec("noida_db") is not None:
            return "embedded broker: installed"
    except ImportError:  # a finder may refuse it outright instead of finding nothing
        pass
    return f"embedded broker: not installed, pip install '{LOCAL_EXTRA}' to have it"


def build_parser() -> argparse.ArgumentParser:
    # Raw: argparse would wrap the --version line at the terminal's width, like a paragraph.
    parser = Parser(prog="seqstream", description="Live, always-valid experiment analysis on Kafka",
                    epilog=textwrap.fill("`seqstream COMMAND --help` describes a command, with an example and the "
                                         "environment variables it reads.", 96),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"seqstream {_version()} ({_local_extra()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(sub, "worker", cmd_worker)
    _add(sub, "broker", cmd_broker)

    demo = _add(sub, "demo", cmd_demo)
    demo.add_argument("--data", help="replay a CSV in the covid data's format instead of simulated traffic")
    demo.add_argument("--experiment", help="experiment id for --data (default demo-experiment)")
    demo.add_argument("--metrics", help="comma-separated metric names to replay from --data (default: all)")
    demo.add_argument("--metric", action="append",
                      help="NAME[:binary][:lower][:guardrail][:absolute], a --data metric's options, repeatable")
    demo.add_argument("--json", action="store_true", help="print every results row as one JSON line")
    demo.add_argument("--pace", type=non_negative_float, default=0.3, help="seconds between intervals (default 0.3)")

    example = _add(sub, "example", cmd_example)
    example.add_argument("file", help="the CSV to write (overwritten if it exists)")

    publish = _add(sub, "publish", cmd_publish)
    publish.add_argument("file", help="CSV or JSON-lines file; - reads standard input")
    publish.add_argument("--experiment", help="experiment id when the CSV has no experiment_id column")
    publish.add_argument("--metrics", help="comma-separated metric names to publish (default: all)")
    publish.add_argument("--pace", type=non_negative_float, default=0.0, help="seconds between intervals")
    publish.add_argument("--skip-bad", action="store_true", help="send the valid rows even if some are bad")

    tail = _add(sub, "tail", cmd_tail)
    tail.add_argument("topic", choices=["results", "alerts", "deadletter"])
    tail.add_argument("--experiment")
    tail.add_argument("--from-beginning", action="store_true", help="start at the topic's first message")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new messages (Ctrl-C stops)")
    tail.add_argument("--wait", type=positive_float, default=3.0,
                      help="without --follow: stop after this many seconds (default 3)")
    tail.add_argument("--table", action="store_true", help="readable aligned lines instead of JSON")

    experiment = _add(sub, "experiment", cmd_experiment)
    actions = experiment.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_ = _add(actions, "experiment set", cmd_experiment)
    set_.add_argument("file", nargs="?", help="JSON config file (see README)")
    set_.add_argument("--experiment", help="experiment id (default: experiment_id in the file)")
    set_.add_argument("--reference", default="control", help="reference variation (default control)")
    set_.add_argument("--weights", help="intended allocation, e.g. control=1,treatment=1")
    set_.add_argument("--metric", action="append", help="NAME[:binary][:lower][:guardrail][:absolute], repeatable")
    set_.add_argument("--alpha", type=alpha, help="significance level, between 0 and 1 (default 0.1)")
    set_.add_argument("--version", type=int, help="config version (default: now in ms)")
    show = _add(actions, "experiment show", cmd_experiment)
    show.add_argument("experiment")

    topics = _add(sub, "topics", cmd_topics)
    topic_actions = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add(topic_actions, "topics check", cmd_topics)
    create = _add(topic_actions, "topics create", cmd_topics)
    create.add_argument("--recreate", action="store_true",
                        help="also delete and recreate topics with a wrong partition count (their messages are lost)")

    watch = _add(sub, "watch", cmd_watch)
    watch.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    watch.add_argument("--refresh", type=positive_float, default=1.0, help="seconds between screen updates")
    watch.add_argument("--once", action="store_true", help="print one snapshot of everything so far and exit")
    watch.add_argument("--summary", action="store_true", help="one line per experiment, most urgent first")
    watch.add_argument("--page-seconds", type=positive_float, default=8.0,
                       help="seconds per page when not all fit (default 8)")

    report = _add(sub, "report", cmd_report)
    report.add_argument("--experiment", required=True)
    report.add_argument("--html", required=True, help="output file")
    return parser


def run(args) -> int:
    """``args.func(args)``, with every error a user can cause turned into one line and an exit code."""
    from aiokafka.errors import KafkaError

    from ..kafka.admin import KafkaAdminError
    from ..kafka.clients import BrokerUnreachable, NoSuchTopics
    from ..kafka.embedded_broker import BrokerStartError

    # `seqstream experiment set: ...`, as argparse names a sub-command's usage errors (Parser.error)
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    if args.command not in ("worker", "broker"):
        # The CLI reports what went wrong itself; aiokafka would add a log line per retry.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except CommandError as exc:
        if str(exc):
            print(f"seqstream {command}: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:
        if not isinstance(exc.code, str):  # an exit code (faust's own, or sys.exit(0) on SIGTERM)
            raise
        print(f"seqstream {command}: {exc.code}", file=sys.stderr)  # Settings.from_env refusing a value
        return 2
    except KeyboardInterrupt:
        print(f"seqstream {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `seqstream tail ... | head`: the reader left; that is fine
        # As the Python docs advise: point stdout at devnull so the exit-time flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (NoSuchTopics, KafkaAdminError, BrokerStartError, BrokerUnreachable) as exc:
        print(f"seqstream {command}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except (KafkaError, ConnectionError) as exc:
        print(f"seqstream {command}: Kafka: {exc or type(exc).__name__}", file=sys.stderr)
        return 1


class _DropOrphanedConnectionErrors(logging.Filter):
    """asyncio's "Future exception was never retrieved" for a connection error: aiokafka leaves
    one behind when a broker resets a connection it was reading from, after the command has
    already said so in its one line (tests/test_cli.py, a broker failing after connect)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (str(record.msg).startswith("Future exception was never retrieved") and isinstance(exc, OSError))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.getLogger("asyncio").addFilter(_DropOrphanedConnectionErrors())
    sys.exit(run(args))
