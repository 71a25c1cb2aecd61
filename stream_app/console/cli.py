"""``seqstream``: the command line (worker, demo, publish, experiment, tail, watch, report)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..settings import broker_settings


def cmd_worker(args) -> int:
    settings = broker_settings("worker")
    if settings is None:
        return 2
    from ..app import app  # creates the topics before consuming (SeqstreamApp.on_first_start)

    sys.argv = ["seqstream", "worker", "-l", settings.log_level, "--web-port", str(settings.web_port),
                "--web-bind", settings.web_host]
    app.main()
    return 0


def cmd_demo(args) -> int:
    from .demo import main

    try:
        return main(args)
    except BrokenPipeError:  # `seqstream demo --json | head`: the reader left; that is fine
        import os

        # As the Python docs advise: point stdout at devnull so the exit-time flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_publish(args) -> int:
    from ..kafka.clients import producer, send_observations
    from .files import by_interval, read_csv_observations, read_jsonl_observations

    settings = broker_settings("publish")
    if settings is None:
        return 2
    if args.file.endswith((".jsonl", ".json", ".ndjson")):
        rows, errors = read_jsonl_observations(args.file)
    else:
        rows, errors = read_csv_observations(args.file, args.experiment, args.metrics.split(",") if args.metrics else None)
    for error in errors:
        print(f"{args.file}: {error}", file=sys.stderr)
    if errors and not args.skip_bad:
        print(f"{len(errors)} bad row(s): nothing sent (use --skip-bad to send the valid ones)", file=sys.stderr)
        return 1

    async def run() -> int:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        prod = producer(settings)
        await prod.start()
        groups = by_interval(rows)
        columns = (TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn())
        try:
            with Progress(*columns, console=Console(stderr=True)) as progress:
                task = progress.add_task("rows", total=len(rows))
                for i, group in enumerate(groups, start=1):
                    progress.advance(task, await send_observations(prod, settings, group))
                    if args.pace and i < len(groups):
                        await asyncio.sleep(args.pace)
        finally:
            await prod.stop()
        print(f"sent {len(rows)} rows in {len(groups)} intervals", file=sys.stderr)
        return 0

    return asyncio.run(run())


def cmd_tail(args) -> int:
    import orjson

    from ..codec import encode_row
    from ..kafka.clients import follow

    settings = broker_settings("tail")
    if settings is None:
        return 2

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if not args.follow:
            loop.call_later(args.wait, stop.set)
        console = None
        if args.table:
            from rich.console import Console

            console = Console()
        async for kind, message in follow(settings, [args.topic], from_beginning=args.from_beginning, stop=stop):
            if args.experiment and message.get("experiment_id", _key_of(message)) != args.experiment:
                continue
            if console is not None:
                console.print(_table_line(kind, message), highlight=False, soft_wrap=True)
            else:  # results as the worker wrote them: non-finite numbers as "inf", "-inf", "nan"
                print((encode_row(message) if kind == "results" else orjson.dumps(message)).decode(), flush=True)
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


def _parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--weights: expected name=number pairs, got {part!r}") from None
    return weights


def _parse_metric(text: str) -> tuple[str, dict]:
    """NAME[:binary][:lower][:guardrail][:absolute] -> (name, options)."""
    name, *flags = text.split(":")
    known = {"binary": ("is_binary", True), "lower": ("lower_is_better", True),
             "guardrail": ("in_fdr_family", False), "absolute": ("effect", "absolute")}
    options = {}
    for flag in flags:
        if flag not in known:
            raise SystemExit(f"--metric {text!r}: unknown flag {flag!r} (binary, lower, guardrail, absolute)")
        key, value = known[flag]
        options[key] = value
    return name, options


def cmd_experiment(args) -> int:
    import time

    import orjson

    from state import InvalidInput

    from ..codec import checked_config_message
    from ..kafka.clients import follow, producer, send_config
    from .watch import newer_config

    settings = broker_settings("experiment")
    if settings is None:
        return 2
    if args.action == "show":
        async def show() -> int:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(args.wait, stop.set)
            latest = None
            async for _, message in follow(settings, ["experiments"], stop=stop):
                if message.get("experiment_id") == args.experiment and newer_config(latest, message):
                    latest = message  # the version the worker applies: the highest, not the last
            if latest is None:
                print(f"no config published for experiment {args.experiment!r}", file=sys.stderr)
                return 1
            print(orjson.dumps(latest, option=orjson.OPT_INDENT_2).decode())
            return 0

        return asyncio.run(show())

    if args.file:
        doc = orjson.loads(open(args.file, "rb").read())
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
        print("seqstream experiment set: name the experiment (--experiment or experiment_id in the file)", file=sys.stderr)
        return 2
    version = args.version if args.version is not None else version
    if version is None:
        version = int(time.time() * 1000)  # increasing across calls, so the newest set wins
    try:
        message = checked_config_message(experiment, version, doc)
    except InvalidInput as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 1

    async def publish() -> int:
        prod = producer(settings)
        await prod.start()
        try:
            await send_config(prod, settings, experiment, message)
        finally:
            await prod.stop()
        print(f"published config version {version} for {experiment}")
        return 0

    return asyncio.run(publish())


def cmd_watch(args) -> int:
    from .watch import main

    return main(args)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqstream", description="Live, always-valid experiment analysis on Kafka")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a stream worker against KAFKA_BOOTSTRAP").set_defaults(func=cmd_worker)

    demo = sub.add_parser("demo", help="run broker (if none configured), worker and example traffic end to end")
    demo.add_argument("--data", help="replay a CSV in the covid data's format instead of simulated traffic")
    demo.add_argument("--experiment", default="demo-experiment", help="experiment id for --data")
    demo.add_argument("--metrics", help="comma-separated metric names to replay from --data")
    demo.add_argument("--json", action="store_true", help="print every results row as one JSON line")
    demo.add_argument("--pace", type=float, default=0.3, help="seconds between intervals (default 0.3)")
    demo.set_defaults(func=cmd_demo)

    publish = sub.add_parser("publish", help="validate and publish observations from a CSV or JSON-lines file")
    publish.add_argument("file")
    publish.add_argument("--experiment", help="experiment id when the CSV has no experiment_id column")
    publish.add_argument("--metrics", help="comma-separated metric names to publish")
    publish.add_argument("--pace", type=float, default=0.0, help="seconds between intervals")
    publish.add_argument("--skip-bad", action="store_true", help="send the valid rows even if some are bad")
    publish.set_defaults(func=cmd_publish)

    tail = sub.add_parser("tail", help="print results, alerts or dead letters as JSON lines")
    tail.add_argument("topic", choices=["results", "alerts", "deadletter"])
    tail.add_argument("--experiment")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new messages")
    tail.add_argument("--wait", type=float, default=3.0, help="without --follow: stop after this many seconds")
    tail.add_argument("--table", action="store_true", help="readable aligned lines instead of JSON")
    tail.set_defaults(func=cmd_tail)

    experiment = sub.add_parser("experiment", help="publish or read experiment configs")
    actions = experiment.add_subparsers(dest="action", required=True)
    set_ = actions.add_parser("set", help="publish a config version (a JSON file, or flags)")
    set_.add_argument("file", nargs="?", help="JSON config file (see README)")
    set_.add_argument("--experiment", help="experiment id (default: experiment_id in the file)")
    set_.add_argument("--reference", default="control", help="reference variation (default control)")
    set_.add_argument("--weights", help="intended allocation, e.g. control=1,treatment=1")
    set_.add_argument("--metric", action="append", help="NAME[:binary][:lower][:guardrail][:absolute], repeatable")
    set_.add_argument("--alpha", type=float)
    set_.add_argument("--version", type=int, help="config version (default: now in ms)")
    set_.set_defaults(func=cmd_experiment)
    show = actions.add_parser("show", help="print the latest published config")
    show.add_argument("experiment")
    show.add_argument("--wait", type=float, default=2.0, help="seconds to read the configs topic")
    show.set_defaults(func=cmd_experiment)

    watch = sub.add_parser("watch", help="live terminal view of results and alerts")
    watch.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    watch.add_argument("--refresh", type=float, default=1.0, help="seconds between screen updates")
    watch.add_argument("--once", action="store_true", help="print one snapshot of everything so far and exit")
    watch.add_argument("--summary", action="store_true", help="one line per experiment, most urgent first")
    watch.add_argument("--page-seconds", type=float, default=8.0, help="seconds per page when not all fit (default 8)")
    watch.set_defaults(func=cmd_watch)

    report = sub.add_parser("report", help="write an HTML report of an experiment's results")
    report.add_argument("--experiment", required=True)
    report.add_argument("--html", required=True, help="output file")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
