"""``seqstream``: the command line (worker, demo, publish, tail)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .settings import Settings


def cmd_worker(args) -> int:
    settings = Settings.from_env()
    if not settings.bootstrap:
        print("seqstream worker: set KAFKA_BOOTSTRAP (host:port of a Kafka broker), "
              "or run `seqstream demo` to try everything on an embedded broker", file=sys.stderr)
        return 2
    from .topics import create_topics

    create_topics(settings)
    from .app import app

    sys.argv = ["seqstream", "worker", "-l", settings.log_level, "--web-port", str(settings.web_port),
                "--web-bind", settings.web_host]
    app.main()
    return 0


def cmd_demo(args) -> int:
    from .demo import main

    return main(args)


def cmd_publish(args) -> int:
    from .io import by_interval, producer, read_csv_observations, read_jsonl_observations, send_observations

    settings = Settings.from_env()
    if not settings.bootstrap:
        print("seqstream publish: set KAFKA_BOOTSTRAP", file=sys.stderr)
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
        prod = producer(settings)
        await prod.start()
        sent = 0
        try:
            groups = by_interval(rows)
            for i, group in enumerate(groups, start=1):
                sent += await send_observations(prod, settings, group)
                print(f"\rinterval {i}/{len(groups)}  rows sent {sent}", end="", file=sys.stderr, flush=True)
                if args.pace and i < len(groups):
                    await asyncio.sleep(args.pace)
        finally:
            await prod.stop()
        print(file=sys.stderr)
        return 0

    return asyncio.run(run())


def cmd_tail(args) -> int:
    import orjson

    from .io import follow

    settings = Settings.from_env()
    if not settings.bootstrap:
        print("seqstream tail: set KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if not args.follow:
            loop.call_later(args.wait, stop.set)
        async for kind, message in follow(settings, [args.topic], from_beginning=args.from_beginning, stop=stop):
            if args.experiment and message.get("experiment_id") != args.experiment:
                continue
            print(orjson.dumps(message).decode(), flush=True)
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


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
    tail.set_defaults(func=cmd_tail)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
