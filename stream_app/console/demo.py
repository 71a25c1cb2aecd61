"""``seqstream demo``: the whole product on one machine in under a minute.

With no KAFKA_BOOTSTRAP it starts an embedded broker (noida-db) of its own; it creates the topics,
starts a worker, publishes example traffic interval by interval (seeded simulator: one experiment
with real effects on some metrics and none on others, one with a 55/45 split against 50/50),
prints results and alerts as they arrive, then a summary table, and stops everything. When its
reader leaves (``seqstream demo --json | head -3``) it stops at once: the first write to the
closed pipe ends the publishing and the wait, and the worker and broker are stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from state.simulate import demo_experiments, simulate

from ..codec import config_message, encode_row
from ..formatting import fmt_effect, fmt_interval, fmt_p, has_estimate
from ..kafka.clients import follow, send_config, send_observations, started_producer
from ..kafka.embedded_broker import EmbeddedBroker, free_port
from ..kafka.topics import create_topics_async
from ..kafka.worker_process import WorkerProcess
from ..settings import Settings
from .files import by_interval, read_csv_observations, summarize_errors


class DemoInputError(ValueError):
    """The --data file or the --metric options cannot be replayed; ``str()`` is one line."""


def _lift(row: dict) -> str:
    # stream_app/formatting.py, as every surface writes it; a burn-in placeholder is no 0% lift
    return f"{fmt_effect(row['lift_estimate']) if has_estimate(row) else 'burn-in':>8}"


def _ci(lo, hi) -> str:
    return f"{fmt_interval(lo, hi):^20}"


def format_row(row: dict) -> str:
    mark = "*" if row["rejected"] else " "
    when = time.strftime("%H:%M", time.gmtime(row["interval_timestamp"]))
    return (f"{when}  {row['experiment_id'][:18]:<18} {row['metric'][:26]:<26} {row['variation_id'][:12]:<12} "
            f"lift {_lift(row)} CI {_ci(row['corrected_conf_interval_lower'], row['corrected_conf_interval_upper'])} "
            f"p {fmt_p(row['corrected_p_value'])} {mark}")


def summary_table(final: dict, alerts: list[dict]) -> str:
    header = (f"{'experiment':<18} {'metric':<26} {'variation':<12} {'units':>7} {'lift':>8} {'always-valid CI':^20} "
              f"{'corr. p':>9}  significant")
    lines = [header, "-" * len(header)]
    for (experiment, metric, variation), row in sorted(final.items()):
        lines.append(f"{experiment[:18]:<18} {metric[:26]:<26} {variation[:12]:<12} {row['treatment_unit_cumcount']:>7.0f} "
                     f"{_lift(row)} {_ci(row['corrected_conf_interval_lower'], row['corrected_conf_interval_upper'])} "
                     f"{fmt_p(row['corrected_p_value']):>9}  {'yes' if row['rejected'] else 'no'}")
    srm = sorted({a["experiment_id"] for a in alerts if a["kind"] == "srm"})
    lines.append("")
    lines.append("sample ratio mismatch: " + (", ".join(srm) if srm else "none detected"))
    return "\n".join(lines)


DATA_EXPERIMENT = "demo-experiment"  # the experiment id of a --data replay without --experiment


def replay_configs(data: str, experiment: str, metrics: list[str] | None, metric_options: dict[str, dict]):
    """(configs, intervals) replaying a CSV: every metric of the file (or of ``metrics``) declared
    in the config, as the reference service was asked (is_binary false), with ``metric_options``
    (``--metric NAME:lower``, the spec of ``experiment set --metric``) on top."""
    from .files import FileError

    try:
        replay = read_csv_observations(data, experiment, metrics)
    except FileError as exc:
        raise DemoInputError(str(exc)) from None
    if replay.errors:
        raise DemoInputError(f"{data}: {len(replay.errors)} bad row(s), the first: {summarize_errors(replay.errors)[0]}")
    metric_names = sorted({r["metric"] for r in replay.rows})
    unknown = sorted(set(metrics or ()) - set(metric_names)) + sorted(set(metric_options) - set(metric_names))
    if unknown or not metric_names:
        raise DemoInputError(f"{data}: no metric {', '.join(map(repr, unknown))} to replay "
                             f"(its metrics: {', '.join(sorted(replay.metrics)) or 'none'})")
    configs = {experiment: ({"reference_variation_id": "control", "use_stats_resets": True},
                            {m: {"is_binary": False, **metric_options.get(m, {})} for m in metric_names})}
    return configs, by_interval(replay.rows)


async def run_demo(settings: Settings, *, replay: tuple | None, as_json: bool, pace: float, workdir: Path) -> int:
    """``replay``: (configs, intervals) of :func:`replay_configs`, or None for simulated traffic."""
    out = sys.stdout
    if replay:
        configs, intervals = replay
    else:
        specs = demo_experiments()
        configs = {}
        for spec in specs:
            weights = dict(zip(spec.variations, spec.weights or (1.0,) * len(spec.variations)))
            configs[spec.experiment_id] = ({"reference_variation_id": "control", "weights": weights},
                                           {m.name: {"is_binary": m.is_binary} for m in spec.metrics})
        per_spec = [simulate(spec, seed) for seed, spec in enumerate(specs, start=1)]
        intervals = [sum(group, []) for group in zip(*per_spec)]
    expected_rows = _expected_rows(intervals, configs)

    await create_topics_async(settings)
    worker = WorkerProcess(settings, workdir / "worker.log").start()
    final: dict = {}
    alerts: list[dict] = []
    received = 0
    done = asyncio.Event()

    async def read():
        nonlocal received
        async for kind, message in follow(settings, ["results", "alerts"], stop=done):
            if kind == "results":
                received += 1
                final[(message["experiment_id"], message["metric"], message["variation_id"])] = message
                print(encode_row(message).decode() if as_json else format_row(message),
                      file=out, flush=True)
            else:
                alerts.append(message)
                if not as_json:
                    print(f"ALERT {message['kind']}: {message['experiment_id']}: {message['message']}", file=out, flush=True)
            if received >= expected_rows:
                done.set()

    reader = asyncio.create_task(read())
    try:
        async with started_producer(settings) as prod:
            for experiment_id, (options, metric_opts) in configs.items():
                await send_config(prod, settings, experiment_id, config_message(experiment_id, 1, options, metric_opts))
            for group in intervals:
                if reader.done():  # stdout closed (`| head`), or the reader failed: stop publishing
                    break
                await send_observations(prod, settings, group)
                await asyncio.wait([reader], timeout=pace)
        deadline = time.monotonic() + 45
        while not done.is_set() and not reader.done():
            if worker.process.poll() is not None or time.monotonic() > deadline:
                print(f"demo: only {received} of {expected_rows} result rows arrived; worker log:\n{worker.log_tail()}",
                      file=sys.stderr)
                return 1
            await asyncio.wait([reader], timeout=0.2)
    finally:
        done.set()
        try:
            await reader  # re-raises BrokenPipeError: the caller exits quietly with 0
        finally:
            # Even when the reader failed; promptly when its pipe closed (nothing of the run is kept).
            worker.stop(timeout=3.0 if _pipe_closed(reader) else 15.0)
    if not as_json:
        print("\n" + summary_table(final, alerts), file=out)
    return 0


def _pipe_closed(reader: asyncio.Task) -> bool:
    return reader.done() and not reader.cancelled() and isinstance(reader.exception(), BrokenPipeError)


def _expected_rows(intervals: list[list[dict]], configs) -> int:
    """Rows the worker will emit: every hypothesis seen so far, at every interval."""
    seen: dict[str, set] = {}
    total = 0
    for group in intervals:
        for row in group:
            if row["variation_id"] != configs[row["experiment_id"]][0].get("reference_variation_id", "control"):
                seen.setdefault(row["experiment_id"], set()).add((row["metric"], row["variation_id"]))
        total += sum(len(h) for e, h in seen.items() if any(r["experiment_id"] == e for r in group))
    return total


def main(args, metric_options: dict[str, dict] | None = None) -> int:
    """Raises DemoInputError (a bad --data file or --metric), EmbeddedBrokerMissing (no [local]
    extra) or BrokerStartError before anything runs; BrokenPipeError when stdout closed."""
    from ..kafka.clients import broker_answers, no_broker_message

    base = Settings.from_env()
    metrics = args.metrics.split(",") if args.metrics else None
    replay = (replay_configs(args.data, args.experiment or DATA_EXPERIMENT, metrics, metric_options or {})
              if args.data else None)
    if metric_options and not args.data:
        raise DemoInputError("--metric sets the options of a --data file's metrics; the simulated traffic has its own")
    for flag, given in (("--experiment", args.experiment), ("--metrics", args.metrics)):
        if given is not None and not args.data:  # was silently ignored
            raise DemoInputError(f"{flag} names what to replay from --data FILE; the simulated traffic has its own")
    if base.bootstrap and not broker_answers(base.bootstrap):
        raise DemoInputError(no_broker_message(base))
    run_id = time.strftime("%Y%m%d%H%M%S")
    with tempfile.TemporaryDirectory(prefix="seqstream-demo-") as tmp:
        workdir = Path(tmp)
        # An isolated app id and topic prefix per run, so a demo never mixes with earlier data,
        # and a memory store with a short idle timeout: the demo is about seeing results.
        settings = dataclasses.replace(
            base, app_id=f"seqstream-demo-{run_id}", topic_prefix=f"seqstream-demo-{run_id}.", store="memory://",
            datadir=str(workdir / "data"), web_port=free_port(), idle_timeout=min(base.idle_timeout, 3.0))
        broker = None
        if not settings.bootstrap:
            broker = EmbeddedBroker(data_dir=workdir / "broker").start()
            settings = dataclasses.replace(settings, bootstrap=broker.bootstrap)
            print(f"no KAFKA_BOOTSTRAP set: started an embedded broker on {broker.bootstrap}", file=sys.stderr)
        try:
            return asyncio.run(run_demo(settings, replay=replay, as_json=args.json, pace=args.pace, workdir=workdir))
        finally:
            if broker is not None:
                broker.stop()
