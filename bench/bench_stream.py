"""End-to-end stream speed (issue 3): prints figures, asserts nothing but sanity.

On the embedded broker (noida-db, a fresh one per phase), with real worker child processes
(stream_app.kafka.worker_process), each with its own app id, topic prefix, web port and data dir:

1. Throughput: INTERVALS one-minute intervals of EXPERIMENTS experiments x 5 metrics x 3
   variations (keyed by experiment_id, orjson values as stream_app/kafka/clients.py writes them, batched
   aiokafka), one worker per store (memory://, rocksdb://), in two modes (--modes):
   - live, the issue's "publish to results": the worker is started and consuming first (it has
     dead-lettered a warm-up message), then everything is published while it runs; the rate runs
     from the first publish to the last expected result row.
   - backlog: everything is published first, then the worker starts; reported from the worker's
     start (its start-up included) and from the first result row (the catch-up rate).
   When a run is cut at --max-seconds, the worker's own observations_in counter (GET /metrics) over
   the time. Expected rows = intervals x experiments x metrics x treatments; distinct
   (experiment, metric, variation, interval) keys are counted.
2. Yardsticks: plain aiokafka reading the same topic from the beginning (no processing), and the
   processing code alone (stream_app.processor.BatchProcessor over the same messages in batches
   of SEQSTREAM_BATCH_SIZE, no Kafka): the ceiling a worker could reach if Kafka I/O were free.
3. Latency at a steady rate (default 2,000 observations/s: 200 experiments x 5 metrics x 2
   variations per one-minute interval, one interval per wall second, sent in 20 slots): latency
   = arrival of an (experiment, interval)'s last result row minus the send of its last
   observation. Rows not received within --latency-drain s after traffic count as infinite.
4. State size: the changelog's latest LiveExperiment bytes per (experiment, metric, variation),
   the same state rebuilt offline, and the worker's VmRSS per arm.

Targets (issue): >= 20,000 observations/s through one worker, publish to results (the live
run's figure); <= 2 KB state per (experiment, metric, variation).

Broker note: noida-db answers an empty Fetch at once (it ignores fetch.max.wait.ms), so an
aiokafka consumer left assigned busy-polls a core. The readers here keep their partitions
paused and poll end offsets instead (a 10-50 ms resolution, stated with the figures).

The scenarios are here; the measuring helpers are in bench/measure.py and the synthetic workload in
bench/workload.py.

Run: python bench/bench_stream.py            (about 6 minutes; --help for the sizes)
     python bench/bench_stream.py --profile  (adds py-spy of the workers and cProfile of the
                                              processing code; raw stacks in /tmp/bench_helper)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import dataclasses
import functools
import gc
import math
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer  # noqa: E402

from state.live import LiveExperiment  # noqa: E402
from stream_app.codec import decode_observations  # noqa: E402
from stream_app.kafka.embedded_broker import EmbeddedBroker, free_port  # noqa: E402
from stream_app.kafka.partitions import partition_for  # noqa: E402
from stream_app.processor import BatchProcessor, InMessage  # noqa: E402
from stream_app.settings import Settings  # noqa: E402
from stream_app.kafka.topics import changelog_topic, create_topics  # noqa: E402
from stream_app.kafka.worker_process import WorkerProcess  # noqa: E402

from measure import (  # noqa: E402
    log, Reader, plain_consume, latest_per_key, proc_status_kb, cpu_s, thread_cpu_s, worker_metrics,
    brief_metrics, time_split, crash_lines, MetricsSampler, Profiler, steady_rate, warm_up, ms,
)
from workload import (  # noqa: E402
    METRICS, START_TS, INTERVAL_S, variations_of, generate_interval, pack_by_experiment, publish_all,
)


# ---------------------------------------------------------------------------------- throughput
@dataclasses.dataclass
class ThroughputResult:
    store: str
    live: bool
    topic: str  # the observations topic the run published to
    messages: int  # messages published to it
    observations: int
    expected_rows: int
    distinct_rows: int
    duplicate_rows: int
    publish_s: float
    healthy_s: float | None
    first_row_s: float | None
    last_row_s: float | None
    end_s: float
    obs_in_end: float | None
    steady_obs_per_s: float | None
    complete: bool
    crashes: list[str]
    state_sizes: list[int]
    rss_kb: int | None
    hwm_kb: int | None
    datadir_kb: int | None
    cpu: dict
    worker_metrics: dict
    profile: list[str]


async def throughput_run(base: Settings, store: str, messages, args, workdir: Path, tag: str,
                         broker_pid: int | None, live: bool) -> ThroughputResult:
    """One worker, one store. Backlog (``live`` False): everything is published first, then the
    worker starts, and the clock runs from its start. Live: the worker is started, warmed up and
    idle first, and the clock runs from the first publish, which goes on while the worker works
    (publish to results, as in service)."""
    settings = dataclasses.replace(base, app_id=f"bench-{tag}", topic_prefix=f"bench-{tag}.", store=store,
                                   datadir=str(workdir / f"data-{tag}"), web_port=free_port(),
                                   idle_timeout=args.idle_timeout)
    create_topics(settings)
    topic = settings.topic("observations")
    if args.pack:
        messages = pack_by_experiment(messages)
    publish = functools.partial(publish_all, settings.bootstrap, topic, settings.partitions, messages,
                                settings.compression_type)
    publish_s = None
    if not live:
        log(f"[{store}] publishing {args.n_obs:,} observations in {len(messages):,} messages to {topic}")
        publish_s = await publish()
        log(f"[{store}] published in {publish_s:.1f} s = {len(messages) / publish_s:,.0f} msg/s; starting the worker")

    n_metrics, n_var = args.metrics, args.variations
    expected = args.intervals * args.experiments * n_metrics * (n_var - 1)
    reader = await Reader.open(settings.bootstrap, settings.topic("results"), idle=0.05)
    seen: set = set()
    duplicates = 0
    arrivals: list[float] = []

    loop = asyncio.get_running_loop()
    t_start = time.perf_counter()
    cpu0 = {"broker": cpu_s(broker_pid), "bench": time.process_time()}
    worker = WorkerProcess(settings, workdir / f"worker-{tag}.log").start()
    profiler = None
    healthy = loop.run_in_executor(None, worker.wait_healthy, 60.0)
    healthy_at = None
    sampler = None
    publishing = None
    if live:
        await healthy
        healthy_at = time.perf_counter() - t_start
        await warm_up(worker, settings.bootstrap, settings.topic("experiments"))
        log(f"[{store}] worker consuming {time.perf_counter() - t_start:.1f} s after its start; publishing "
            f"{args.n_obs:,} observations in {len(messages):,} messages to {topic} while it runs")
        t_start = time.perf_counter()
        cpu0 = {"broker": cpu_s(broker_pid), "bench": time.process_time(), "worker": cpu_s(worker.process.pid),
                "threads": thread_cpu_s(worker.process.pid)}
        publishing = asyncio.ensure_future(publish())
        sampler = MetricsSampler(worker)
    if args.profile:
        profiler = Profiler(worker.process.pid, Path(args.profile_dir) / f"worker-{tag}.txt", args.profile_rate,
                            args.profile_gil)
    try:
        last_progress, last_obs_in = time.perf_counter(), -1.0
        while len(seen) < expected:
            if healthy.done() and healthy_at is None:
                healthy.result()
                healthy_at = time.perf_counter() - t_start
                sampler = MetricsSampler(worker)
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            now = time.perf_counter()
            if sampler and sampler.samples and sampler.samples[-1][1].get("observations_in", 0) != last_obs_in:
                last_obs_in = sampler.samples[-1][1].get("observations_in", 0)
                last_progress = max(last_progress, sampler.samples[-1][0])
            if now - t_start > args.max_seconds:
                log(f"[{store}] cut at --max-seconds {args.max_seconds:g}: {len(seen):,} of {expected:,} rows")
                break
            if now - last_progress > args.stall:
                log(f"[{store}] no progress for {args.stall:g} s: {len(seen):,} of {expected:,} rows")
                break
            records = await reader.poll()
            now = time.perf_counter()
            for r in records:
                row = orjson.loads(r.value)
                k = (row["experiment_id"], row["metric"], row["variation_id"], float(row["interval_timestamp"]))
                if k in seen:
                    duplicates += 1
                else:
                    seen.add(k)
                    arrivals.append(now)
            if records:
                last_progress = now
        end = time.perf_counter()
        if healthy_at is None:
            await healthy
            healthy_at = time.perf_counter() - t_start
        if publishing is not None:
            publish_s = await publishing
        if profiler:
            profiler.stop()
        final_metrics = worker_metrics(worker)
        if sampler and final_metrics:
            sampler.samples.append((end, final_metrics))
        rss, hwm = proc_status_kb(worker.process.pid, "VmRSS"), proc_status_kb(worker.process.pid, "VmHWM")
        threads = thread_cpu_s(worker.process.pid)
        main_thread = worker.process.pid
        before = cpu0.get("threads", {})
        spent = {tid: seconds - before.get(tid, 0.0) for tid, seconds in threads.items()}
        cpu = {"wall": end - t_start, "worker": cpu_s(worker.process.pid) - cpu0.get("worker", 0.0),
               "worker_main": spent.get(main_thread, 0.0),
               "worker_others": sorted((v for tid, v in spent.items() if tid != main_thread), reverse=True),
               "bench": time.process_time() - cpu0["bench"],
               "broker": (cpu_s(broker_pid) - cpu0["broker"]) if broker_pid else None}
    finally:
        if sampler:
            await sampler.stop()
        if profiler:
            profiler.stop()
        if publishing is not None and not publishing.done():
            publishing.cancel()
        await reader.close()
        worker.stop()
    crashes = crash_lines(worker)

    sizes: list[int] = []
    try:
        sizes = [len(v) for v in (await latest_per_key(settings.bootstrap, changelog_topic(settings))).values()]
    except Exception as exc:  # noqa: BLE001 - a figure, not a test
        log(f"[{store}] changelog read failed: {exc!r}")
    datadir_kb = None
    if store.startswith("rocksdb"):
        datadir_kb = sum(f.stat().st_size for f in Path(settings.datadir).rglob("*") if f.is_file()) // 1024
    return ThroughputResult(
        store=store, live=live, topic=topic, messages=len(messages), observations=args.n_obs, expected_rows=expected, distinct_rows=len(seen),
        duplicate_rows=duplicates, publish_s=publish_s,
        healthy_s=healthy_at,
        first_row_s=(arrivals[0] - t_start) if arrivals else None,
        last_row_s=(arrivals[-1] - t_start) if arrivals else None,
        end_s=end - t_start, obs_in_end=final_metrics.get("observations_in") if final_metrics else None,
        steady_obs_per_s=steady_rate(sampler.obs_in()) if sampler else None,
        complete=len(seen) >= expected, crashes=crashes, state_sizes=sizes,
        rss_kb=rss, hwm_kb=hwm, datadir_kb=datadir_kb, cpu=cpu, worker_metrics=final_metrics,
        profile=profiler.summary(args.profile_top) if profiler else [])


def verdict(rate: float) -> str:
    """The issue's target, judged on a live run's publish-to-results rate."""
    return f"target >= 20,000 (publish to results): {'MET' if rate >= 20000 else 'NOT MET'}"


def throughput_lines(r: ThroughputResult, name: str, args) -> list[str]:
    """The live run's rate (first publish -> last result row, the worker already running) is the
    issue's figure, publish to results; a backlog run's (worker start -> last row) adds the
    worker's start-up, and its first -> last row is the rate of catching up."""
    n_obs, arms = r.observations, args.experiments * args.metrics * args.variations
    name = f"{name} {'live' if r.live else 'backlog'}"
    out = [f"publish    [{name}] {n_obs:,} obs published (batched aiokafka, acks=1) in {r.publish_s:.2f} s "
           f"= {n_obs / r.publish_s:,.0f} obs/s" + (" while the worker ran" if r.live else ", before the worker started")]
    if r.complete:
        rate = n_obs / r.last_row_s
        spread = r.last_row_s - r.first_row_s  # 0 when every row came in one poll (a tiny run)
        catch_up = f"{spread:.1f} s = " + (f"{n_obs / spread:,.0f} obs/s" if spread > 0 else "n/a obs/s")
        if r.live:
            out.append(f"throughput [{name}] {n_obs:,} obs from first publish to the last of {r.expected_rows:,} result "
                       f"rows ({r.duplicate_rows} dup) in {r.last_row_s:.1f} s = {rate:,.0f} obs/s [first row "
                       f"{r.first_row_s:.1f} s; first -> last row {catch_up}; worker started and consuming beforehand, "
                       f"healthy {r.healthy_s:.1f} s after its start] {verdict(rate)}")
        else:
            out.append(f"throughput [{name}] {n_obs:,} obs processed in {r.last_row_s:.1f} s (worker start -> last of "
                       f"{r.expected_rows:,} rows, {r.duplicate_rows} dup, start-up included) = {rate:,.0f} obs/s; "
                       f"first -> last row {catch_up} [healthy {r.healthy_s:.1f} s, first row {r.first_row_s:.1f} s]")
    else:
        done = r.obs_in_end or 0.0
        rate = r.steady_obs_per_s or (done / r.end_s if r.end_s else 0.0)
        out.append(f"throughput [{name}] INCOMPLETE: {r.distinct_rows:,}/{r.expected_rows:,} rows; worker consumed "
                   f"{done:,.0f} of {n_obs:,} obs in {r.end_s:.1f} s = {done / r.end_s:,.0f} obs/s; steady "
                   f"(worker observations_in slope) {r.steady_obs_per_s or float('nan'):,.0f} obs/s "
                   f"[healthy {r.healthy_s or float('nan'):.1f} s, first row "
                   f"{r.first_row_s if r.first_row_s is not None else float('nan'):.1f} s]"
                   + (f" {verdict(rate)}" if r.live else ""))
    for crash in r.crashes:
        out.append(f"CRASH      [{name}] worker log: {crash}")
    if r.worker_metrics:
        out.append(f"worker     [{name}] /metrics: {brief_metrics(r.worker_metrics)}")
        out.append(f"agent time [{name}] {time_split(r.worker_metrics)}")
    c = r.cpu
    out.append(f"cpu        [{name}] over {c['wall']:.1f} s: worker {c['worker'] or 0:.1f} s "
               f"({100 * (c['worker'] or 0) / c['wall']:.0f}% of one core), broker "
               + (f"{c['broker']:.1f} s ({100 * c['broker'] / c['wall']:.0f}%)" if c["broker"] is not None else "n/a")
               + f", this script {c['bench']:.1f} s ({100 * c['bench'] / c['wall']:.0f}%); worker threads: main "
               f"{c['worker_main']:.1f} s, others " + ", ".join(f"{v:.1f}" for v in c["worker_others"] if v >= 0.05)
               + " s")
    per_exp = args.metrics * args.variations
    if r.state_sizes:
        mean = statistics.mean(r.state_sizes)
        out.append(f"state      [{name}] changelog latest value: {len(r.state_sizes):,} experiments, mean {mean:,.0f} B "
                   f"(max {max(r.state_sizes):,} B) / {per_exp} arms = {mean / per_exp:,.0f} B per (experiment, metric, "
                   f"variation); target <= 2,048: {'MET' if mean / per_exp <= 2048 else 'NOT MET'}")
    if r.rss_kb:
        out.append(f"memory     [{name}] worker VmRSS {r.rss_kb / 1024:,.0f} MiB (VmHWM {r.hwm_kb / 1024:,.0f} MiB) / "
                   f"{arms:,} arms = {r.rss_kb * 1024 / arms:,.0f} B per arm (whole process: interpreter, faust, buffers)")
    if r.datadir_kb is not None:
        out.append(f"disk       [{name}] rocksdb datadir {r.datadir_kb / 1024:,.1f} MiB")
    if r.profile:
        out.append(f"profile    [{name}] py-spy of the worker (raw: {args.profile_dir}/worker-*-{name}.txt):")
        out += ["           " + line for line in r.profile]
    return out


# ------------------------------------------------------------------------- processing-only ceiling
def engine_ceiling(messages, partitions: int, batch_size: int, per_interval: int, warm: int, timed: int,
                   profile: bool) -> tuple[int, float, list[str]]:
    """BatchProcessor.process over the messages as the worker batches them (dict store, no Kafka):
    ``warm`` intervals untimed (arms registered), then ``timed`` intervals timed."""
    offsets = [0] * partitions
    inputs = []
    for key, value in messages[:(warm + timed) * per_interval]:
        p = partition_for(key, partitions)
        inputs.append(InMessage("obs", p, offsets[p], key, value))
        offsets[p] += 1

    def run(proc, store, lo, hi):
        for j in range(lo, hi, batch_size):
            proc.process(inputs[j:min(hi, j + batch_size)], store)
            proc.save_to(store)  # as if faust committed after every batch

    split = warm * per_interval
    proc, store = BatchProcessor({"obs": "observations"}, partitions), {}
    run(proc, store, 0, split)
    t0 = time.perf_counter()
    run(proc, store, split, len(inputs))
    elapsed = time.perf_counter() - t0
    lines: list[str] = []
    if profile:
        proc, store = BatchProcessor({"obs": "observations"}, partitions), {}
        run(proc, store, 0, split)
        prof = cProfile.Profile()
        prof.enable()
        run(proc, store, split, len(inputs))
        prof.disable()
        stats = pstats.Stats(prof)
        total = sum(v[2] for v in stats.stats.values())  # tottime sum = profiled time
        cum = {f"{Path(k[0]).parent.name}/{Path(k[0]).name}:{k[2]}": v[3] for k, v in stats.stats.items()}
        buckets = [
            ("state load LiveExperiment.from_bytes", "state/live.py:from_bytes"),
            ("state save LiveExperiment.to_bytes", "state/live.py:to_bytes"),
            ("decode+validate (codec.decode_observations)", "stream_app/codec.py:decode_observations"),
            ("interval close + scoring (ExperimentState.update)", "state/experiment.py:update"),
            ("result encoding (codec.encode_row)", "stream_app/codec.py:encode_row"),
            ("partition check (aiokafka murmur2 per message)", "aiokafka/partitioner.py:__call__"),
            ("partition check (kafka.partitions.partition_for)", "stream_app/kafka/partitions.py:partition_for"),
        ]
        lines.append(f"cProfile of BatchProcessor.process, {len(inputs) - split:,} obs ({total:.2f} s profiled); "
                     "cumulative share:")
        for label, key in buckets:
            if key in cum:
                lines.append(f"  {100 * cum[key] / total:5.1f}%  {label}")
        own = stats.stats.get(next((k for k in stats.stats if k[0].endswith("stream_app/processor.py") and k[2] == "process"),
                                   None), None)
        if own:
            lines.append(f"  {100 * own[2] / total:5.1f}%  BatchProcessor.process own loop (self time)")
    return len(inputs) - split, elapsed, lines


def offline_state_bytes(messages_by_experiment: dict[bytes, list[bytes]], partitions: int,
                        sample: int) -> tuple[float, int, float]:
    """LiveExperiment fed the same rows offline (the worker's decode path): its bytes as the table
    stores them (mean, max), and the mean memory one takes as a decoded object (the worker keeps
    recently used experiments decoded), by tracemalloc."""
    sizes, kept = [], []
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key in list(messages_by_experiment)[:sample]:
        live = LiveExperiment.new(key.decode())
        source = f"obs:{partition_for(key, partitions)}"
        for offset, value in enumerate(messages_by_experiment[key]):
            _, elements = decode_observations(key, value, lambda e, m: False)
            for _, obs in elements:
                live.offer(obs, time.time())
            live.mark_processed(source, offset)
        sizes.append(len(live.to_bytes()))
        kept.append(live)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before - sys.getsizeof(kept) - sys.getsizeof(sizes)
    tracemalloc.stop()
    return statistics.mean(sizes), max(sizes), held / len(kept)


# ------------------------------------------------------------------------------------- latency
async def latency_run(base: Settings, args, workdir: Path, tag: str, n_experiments: int) -> dict:
    settings = dataclasses.replace(base, app_id=f"bench-{tag}", topic_prefix=f"bench-{tag}.", store=args.latency_store,
                                   datadir=str(workdir / f"data-{tag}"), web_port=free_port(),
                                   idle_timeout=args.idle_timeout)
    create_topics(settings)
    variations = variations_of(args.latency_variations)
    metrics = METRICS[:args.metrics]
    experiments = [f"lat-{i:05d}" for i in range(n_experiments)]
    per_exp = len(metrics) * len(variations)
    rate = n_experiments * per_exp / args.latency_period
    rows_per_close = len(metrics) * (len(variations) - 1)
    n_intervals = args.latency_warmup + int(round(args.latency_seconds / args.latency_period))

    worker = WorkerProcess(settings, workdir / f"worker-{tag}.log").start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, worker.wait_healthy, 60.0)
    await asyncio.sleep(2.0)  # let the consumer group settle before traffic
    idle_rss = proc_status_kb(worker.process.pid, "VmRSS")
    reader = await Reader.open(settings.bootstrap, settings.topic("results"), idle=args.latency_poll)
    sent_at: dict[tuple[str, float], float] = {}
    counts: collections.Counter = collections.Counter()
    done_at: dict[tuple[str, float], float] = {}
    stop = asyncio.Event()

    async def receive():
        while not stop.is_set():
            records = await reader.poll()
            now = time.perf_counter()
            for r in records:
                row = orjson.loads(r.value)
                k = (row["experiment_id"], float(row["interval_timestamp"]))
                counts[k] += 1
                if counts[k] == rows_per_close:
                    done_at[k] = now

    receiver = asyncio.create_task(receive())
    prod = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=args.latency_linger_ms, acks=1)
    await prod.start()
    rng = np.random.default_rng(7)
    topic = settings.topic("observations")
    ticks = args.latency_ticks
    per_tick = -(-n_experiments // ticks)
    sent = 0
    lag_max = 0.0
    m0 = await loop.run_in_executor(None, worker_metrics, worker)
    t_traffic = time.perf_counter()
    try:
        for i in range(n_intervals):
            msgs = generate_interval(rng, experiments, metrics, variations, i, args.units)
            for t in range(ticks):
                due = t_traffic + (i + t / ticks) * args.latency_period
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    lag_max = max(lag_max, -delay)
                for e in range(t * per_tick, min(n_experiments, (t + 1) * per_tick)):
                    for key, value in msgs[e * per_exp:(e + 1) * per_exp]:
                        await prod.send(topic, key=key, value=value)  # enqueued; acks awaited at the end
                    sent_at[(experiments[e], float(START_TS + i * INTERVAL_S))] = time.perf_counter()
                    sent += per_exp
        traffic_s = time.perf_counter() - t_traffic
        m1 = await loop.run_in_executor(None, worker_metrics, worker)
        await prod.flush()
        measured = [k for k in sent_at if (k[1] - START_TS) // INTERVAL_S >= args.latency_warmup]
        deadline = time.perf_counter() + args.latency_drain
        while time.perf_counter() < deadline and not all(k in done_at for k in measured):
            await asyncio.sleep(0.1)
        rss = proc_status_kb(worker.process.pid, "VmRSS")
        m2 = await loop.run_in_executor(None, worker_metrics, worker)
    finally:
        stop.set()
        await receiver
        await prod.stop()
        await reader.close()
        worker.stop()
    lat = sorted(1000 * (done_at[k] - sent_at[k]) for k in measured if k in done_at)
    missing = sum(1 for k in measured if k not in done_at)
    allv = lat + [math.inf] * missing

    def pct(p):
        return allv[min(len(allv) - 1, int(round(p / 100 * (len(allv) - 1))))] if allv else math.nan

    processed = (m1.get("observations_in", 0) - m0.get("observations_in", 0)) if m0 and m1 else None
    return {"rate_target": rate, "rate_sent": sent / traffic_s, "traffic_s": traffic_s, "sent": sent,
            "worker_rate": processed / traffic_s if processed is not None else None,
            "samples": len(lat), "missing": missing, "p50": pct(50), "p90": pct(90), "p99": pct(99),
            "max": allv[-1] if allv else math.nan, "pacing_lag_max_ms": 1000 * lag_max, "idle_rss_kb": idle_rss,
            "rss_kb": rss, "worker_metrics": m2, "crashes": crash_lines(worker),
            "shape": f"{n_experiments} exp x {len(metrics)} metrics x {len(variations)} variations per "
                     f"{args.latency_period:g} s"}


def latency_lines(lat: dict, args) -> list[str]:
    name = args.latency_store.split(":")[0]
    wr = f"{lat['worker_rate']:,.0f}" if lat["worker_rate"] is not None else "n/a"
    out = [f"latency    [{name}] publish->result at {lat['rate_sent']:,.0f} obs/s sent (target {lat['rate_target']:,.0f}; "
           f"{lat['shape']}; {lat['traffic_s']:.0f} s of traffic, first {args.latency_warmup} intervals excluded; "
           f"reader resolution ~{1000 * args.latency_poll:.0f} ms): p50 {ms(lat['p50'])}, p90 {ms(lat['p90'])}, "
           f"p99 {ms(lat['p99'])}, max {ms(lat['max'])} over {lat['samples'] + lat['missing']:,} (experiment, interval) "
           f"closes, {lat['missing']:,} not received within {args.latency_drain:g} s after traffic; worker consumed "
           f"{wr} obs/s during traffic"]
    wm = lat["worker_metrics"]
    if wm:
        internal = (f"; mean in-worker close latency (batch received -> results acked) "
                    f"{1000 * wm['close_latency_sum'] / wm['close_latency_count']:.0f} ms"
                    if wm.get("close_latency_count") else "")
        out.append(f"latency    [{name}] worker /metrics: {brief_metrics(wm)}{internal}")
    for crash in lat["crashes"]:
        out.append(f"CRASH      [{name}] latency worker log: {crash}")
    return out


# ---------------------------------------------------------------------------------------- main
async def main_async(args, broker_bootstrap: str | None, workdir: Path) -> list[str]:
    base = dataclasses.replace(Settings.from_env(), log_level=os.environ.get("BENCH_WORKER_LOG", "warn"))
    run_id = time.strftime("%H%M%S")
    metrics = METRICS[:args.metrics]
    variations = variations_of(args.variations)
    experiments = [f"exp-{i:05d}" for i in range(args.experiments)]
    per_interval = len(experiments) * len(metrics) * len(variations)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    messages: list[tuple[bytes, bytes]] = []
    for i in range(args.intervals):
        messages += generate_interval(rng, experiments, metrics, variations, i, args.units)
    n_obs = args.n_obs = len(messages)
    log(f"generated {n_obs:,} observations ({args.experiments} exp x {len(metrics)} metrics x {len(variations)} "
        f"variations x {args.intervals} intervals, {sum(len(v) for _, v in messages) / n_obs:.0f} B each) "
        f"in {time.perf_counter() - t0:.1f} s")
    figures = [f"context    python bench/bench_stream.py: {n_obs:,} obs = {args.experiments} exp x {len(metrics)} metrics x "
               f"{len(variations)} variations x {args.intervals} intervals; "
               + ("KAFKA_BOOTSTRAP broker" if broker_bootstrap else "embedded noida-db (fresh per phase)")
               + f", {base.partitions} partitions, batch {base.batch_size}/{base.batch_within:g} s, "
               + f"{base.compression} record batches (SEQSTREAM_COMPRESSION), {os.cpu_count()} cores, "
               + ("one message per experiment-interval (--pack)" if args.pack else "one message per observation")]
    brokers: list[EmbeddedBroker] = []

    def settings_for(phase: str) -> Settings:
        """A fresh embedded broker per phase (noida-db snapshots slow down with many messages),
        unless KAFKA_BOOTSTRAP names a broker; the previous phase's broker is stopped first."""
        while brokers:
            brokers.pop().stop()
        if broker_bootstrap:
            return dataclasses.replace(base, bootstrap=broker_bootstrap)
        broker = EmbeddedBroker(data_dir=workdir / f"broker-{phase}").start()
        brokers.append(broker)
        return dataclasses.replace(base, bootstrap=broker.bootstrap)

    def emit(lines: list[str]) -> None:
        figures.extend(lines)
        for line in lines:
            log(line)

    try:
        for k, store in enumerate(args.stores):
            for mode in args.modes:
                settings = settings_for(f"{store}-{mode}")
                result = await throughput_run(settings, f"{store}://", messages, args, workdir,
                                              f"{run_id}-{store}-{mode}", brokers[0].pid if brokers else None,
                                              live=mode == "live")
                if k == 0 and mode == args.modes[0] and not args.skip_yardstick:
                    topic = result.topic
                    count, secs = await plain_consume(settings.bootstrap, topic, result.messages, decode=False)
                    emit([f"yardstick  plain aiokafka consumer reading {topic} from the beginning: {count:,} msgs in "
                          f"{secs:.2f} s = {count / secs:,.0f} msg/s"])
                    count, secs = await plain_consume(settings.bootstrap, topic, result.messages, decode=True)
                    emit([f"yardstick  same + orjson.loads of every value: {count:,} msgs in {secs:.2f} s = "
                          f"{count / secs:,.0f} msg/s"])
                emit(throughput_lines(result, store, args))
        while brokers:
            brokers.pop().stop()

        warm = min(2, max(0, args.intervals - 1))
        timed = max(1, min(args.engine_intervals, args.intervals - warm))
        count, secs, prof_lines = engine_ceiling(messages, base.partitions, base.batch_size, per_interval, warm, timed,
                                                 args.profile)
        emit([f"ceiling    processing code alone (BatchProcessor.process, batches of {base.batch_size}, dict store, no "
              f"Kafka, after {warm} warm-up intervals): {count:,} obs in {secs:.2f} s = {count / secs:,.0f} obs/s"]
             + ["           " + line for line in prof_lines])

        by_exp: dict[bytes, list[bytes]] = collections.defaultdict(list)
        for key, value in messages:
            by_exp[key].append(value)
        mean_b, max_b, in_memory = offline_state_bytes(by_exp, base.partitions, args.offline_sample)
        per_exp = len(metrics) * len(variations)
        emit([f"state      offline LiveExperiment fed the same {args.intervals} intervals ({args.offline_sample} "
              f"experiments): {mean_b:,.0f} B per experiment (max {max_b:,}) = {mean_b / per_exp:,.0f} B per "
              f"(experiment, metric, variation); target <= 2,048: {'MET' if mean_b / per_exp <= 2048 else 'NOT MET'}",
              f"state      the same, decoded in memory (as the worker caches it): {in_memory:,.0f} B per experiment = "
              f"{in_memory / per_exp:,.0f} B per (experiment, metric, variation); target <= 2,048: "
              f"{'MET' if in_memory / per_exp <= 2048 else 'NOT MET'}"])
        del messages, by_exp

        if args.latency_seconds > 0:
            for n_exp in args.latency_experiments:
                settings = settings_for(f"latency-{n_exp}")
                log(f"latency run: {n_exp} experiments, {args.latency_seconds:g} s measured")
                lat = await latency_run(settings, args, workdir, f"{run_id}-lat{n_exp}", n_exp)
                emit(latency_lines(lat, args))
                if lat["idle_rss_kb"] and lat["rss_kb"]:
                    emit([f"memory     [latency {n_exp} exp] worker VmRSS idle {lat['idle_rss_kb'] / 1024:,.0f} MiB "
                          f"-> {lat['rss_kb'] / 1024:,.0f} MiB after traffic"])
    finally:
        while brokers:
            brokers.pop().stop()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", type=int, default=1000)
    p.add_argument("--pack", action="store_true",
                   help="publish each experiment-interval's rows as one array message (else one message per row)")
    p.add_argument("--metrics", type=int, default=5, choices=range(1, len(METRICS) + 1))
    p.add_argument("--variations", type=int, default=3)
    p.add_argument("--intervals", type=int, default=20, help="20 x 1000 x 5 x 3 = 300,000 observations")
    p.add_argument("--units", type=float, default=3000.0, help="mean units per experiment-interval")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stores", default="memory,rocksdb", help="comma-separated: memory,rocksdb")
    p.add_argument("--modes", default="live,backlog",
                   help="comma-separated: live (worker running, then publish; the issue's publish-to-results "
                        "figure) and/or backlog (publish, then start the worker)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="cut each throughput run after this long (the rate then comes from the worker's counter)")
    p.add_argument("--stall", type=float, default=20.0, help="stop a run after this long without progress")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="worker SEQSTREAM_IDLE_TIMEOUT")
    p.add_argument("--skip-yardstick", action="store_true")
    p.add_argument("--engine-intervals", type=int, default=2, help="intervals timed for the processing-only ceiling")
    p.add_argument("--offline-sample", type=int, default=20, help="experiments rebuilt offline for the state size")
    p.add_argument("--latency-seconds", type=float, default=25.0, help="measured paced traffic; 0 skips latency")
    p.add_argument("--latency-experiments", default="200",
                   help="comma-separated experiment counts, one latency run each (200 -> 2,000 obs/s)")
    p.add_argument("--latency-variations", type=int, default=2)
    p.add_argument("--latency-period", type=float, default=1.0, help="wall seconds per one-minute interval")
    p.add_argument("--latency-warmup", type=int, default=3, help="intervals not measured")
    p.add_argument("--latency-ticks", type=int, default=20, help="send slots per interval")
    p.add_argument("--latency-linger-ms", type=int, default=5)
    p.add_argument("--latency-poll", type=float, default=0.01, help="result reader poll period (s)")
    p.add_argument("--latency-drain", type=float, default=15.0, help="wait for late results after traffic (s)")
    p.add_argument("--latency-store", default="memory://")
    p.add_argument("--profile", action="store_true", help="py-spy the throughput workers; cProfile the ceiling")
    p.add_argument("--profile-dir", default="/tmp/bench_helper")
    p.add_argument("--profile-rate", type=int, default=100)
    p.add_argument("--profile-top", type=int, default=12)
    p.add_argument("--profile-gil", action="store_true",
                   help="sample only the thread holding the GIL: where the worker's CPU goes, not its waits")
    p.add_argument("--keep", action="store_true", help="keep the temporary dir (worker and broker logs)")
    args = p.parse_args()
    args.stores = [s.strip().split(":")[0] for s in args.stores.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(args.modes) <= {"live", "backlog"}:
        p.error("--modes takes live and/or backlog")
    args.latency_experiments = [int(x) for x in args.latency_experiments.split(",") if x.strip()]
    if args.variations < 2 or args.latency_variations < 2:
        p.error("need a control and at least one treatment")
    if args.profile:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    bootstrap = Settings.from_env().bootstrap  # KAFKA_BOOTSTRAP set: use that broker, not embedded ones
    workdir = Path(tempfile.mkdtemp(prefix="seqstream-bench-"))
    t0 = time.perf_counter()
    try:
        figures = asyncio.run(main_async(args, bootstrap, workdir))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(figures + [f"total      {time.perf_counter() - t0:.0f} s"]), flush=True)


if __name__ == "__main__":
    main()
