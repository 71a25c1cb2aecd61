"""Measuring helpers for the stream benchmarks: readers that time result arrival without busy-polling
the broker, CPU and memory of worker processes from /proc, the worker's own metrics, profilers."""

from __future__ import annotations

import asyncio
import collections
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from stream_app.kafka.worker_process import WorkerProcess  # noqa: E402



def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def assigned_consumer(bootstrap: str, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    await consumer.topics()
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not parts:
        await consumer.stop()
        raise RuntimeError(f"topic {topic} has no partitions")
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    return consumer, parts


class Reader:
    """Reads a topic from the beginning without busy-polling the broker: partitions stay paused,
    the end offsets are polled every ``idle`` s, and only partitions with new data are fetched."""

    def __init__(self, consumer: AIOKafkaConsumer, parts: list[TopicPartition], idle: float):
        self.consumer, self.parts, self.idle = consumer, parts, idle
        consumer.pause(*parts)

    @classmethod
    async def open(cls, bootstrap: str, topic: str, idle: float) -> "Reader":
        return cls(*await assigned_consumer(bootstrap, topic), idle)

    async def poll(self) -> list:
        c = self.consumer
        ends = await c.end_offsets(self.parts)
        behind = [tp for tp in self.parts if ends[tp] > await c.position(tp)]
        if not behind:
            await asyncio.sleep(self.idle)
            return []
        c.resume(*behind)
        try:
            batch = await c.getmany(*behind, timeout_ms=1000, max_records=50000)
        finally:
            c.pause(*behind)
        return [r for records in batch.values() for r in records]

    async def close(self) -> None:
        await self.consumer.stop()


async def plain_consume(bootstrap: str, topic: str, total: int, decode: bool) -> tuple[int, float]:
    """Yardstick: read the topic from the beginning, nothing else (optionally orjson.loads)."""
    consumer, _ = await assigned_consumer(bootstrap, topic)
    try:
        count = 0
        t0 = time.perf_counter()
        while count < total and time.perf_counter() - t0 < 120:
            batch = await consumer.getmany(timeout_ms=1000, max_records=50000)
            for records in batch.values():
                count += len(records)
                if decode:
                    for r in records:
                        orjson.loads(r.value)
        return count, time.perf_counter() - t0
    finally:
        await consumer.stop()


async def latest_per_key(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    reader = await Reader.open(bootstrap, topic, idle=0.05)
    latest: dict[bytes, bytes] = {}
    try:
        # to the end offsets by position, not by count: transaction markers take offsets too
        ends, t0 = await reader.consumer.end_offsets(reader.parts), time.perf_counter()
        while time.perf_counter() - t0 < 60:
            positions = [await reader.consumer.position(tp) for tp in reader.parts]  # (await in a genexp: an async generator)
            if all(position >= ends[tp] for position, tp in zip(positions, reader.parts)):
                break
            for r in await reader.poll():
                if r.value is None:
                    latest.pop(r.key, None)
                else:
                    latest[r.key] = r.value
        return latest
    finally:
        await reader.close()


# --------------------------------------------------------------------------------- worker bits
def proc_status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _stat_cpu_s(stat: Path) -> float | None:
    """utime + stime in seconds from a /proc stat file (None if it is gone)."""
    try:
        fields = stat.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_s(pid: int | None) -> float | None:
    """utime + stime of a process in seconds (None if it is gone)."""
    return None if pid is None else _stat_cpu_s(Path(f"/proc/{pid}/stat"))


def thread_cpu_s(pid: int | None) -> dict[int, float]:
    """utime + stime of each thread of a process, by thread id ({} if it is gone). The main
    thread's id is the process id; faust runs its consumer in another thread."""
    if pid is None:
        return {}
    spent = {int(task.name): _stat_cpu_s(task / "stat") for task in Path(f"/proc/{pid}/task").glob("*")}
    return {tid: seconds for tid, seconds in spent.items() if seconds is not None}


def worker_metrics(worker: WorkerProcess) -> dict[str, float]:
    """GET /metrics, names without the seqstream_ prefix and _total suffix ({} if unreachable)."""
    try:
        with urllib.request.urlopen(worker.url + "/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(?:seqstream_)?(\w+?)(?:_total)?\s+([-0-9.e+]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def brief_metrics(m: dict[str, float]) -> str:
    keys = ("observations_in", "rows_out", "intervals_closed", "batches", "deadletters", "duplicates", "redelivered",
            "deliveries_at_once", "deliveries_waited", "states_saved")
    text = ", ".join(f"{k}={m[k]:,.0f}" for k in keys if k in m)
    if m.get("batches"):
        text += f" ({m.get('observations_in', 0) / m['batches']:.0f} obs per batch)"
    return text


def time_split(m: dict[str, float]) -> str:
    """The worker's own account of its time (GET /metrics), per interval closed: the agent's
    waiting and processing, the background sender's hand-over ("sending") and ack wait, which
    overlap them, and saving states at offset commits ("writing state")."""
    stages = ("waiting_for_input", "processing", "sending", "awaiting_acks", "writing_state")
    closes = m.get("intervals_closed") or 0
    if not closes or "seconds_processing" not in m:
        return "(not reported)"
    parts = [f"{stage.replace('_', ' ')} {1e6 * m['seconds_' + stage] / closes:,.0f}" for stage in stages]
    return (", ".join(parts) + f" us per interval closed; garbage collection {m.get('gc_seconds', 0):.1f} s "
            f"({m.get('gc_collections', 0):.0f} full)")


def crash_lines(worker: WorkerProcess) -> list[str]:
    try:
        text = worker.log_path.read_text(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if "Crashed reason=" in line:
            tail = next((lines[j].strip() for j in range(i + 1, min(len(lines), i + 40))
                         if re.match(r"^\w*(Error|Exception)\b", lines[j].strip())), "")
            where = [lines[j].strip() for j in range(i + 1, min(len(lines), i + 40)) if "/work/main/" in lines[j]]
            out.append(f"{line.split('] ', 3)[-1].strip()} {tail} at {where[-1] if where else '?'}")
    return list(dict.fromkeys(out))


class MetricsSampler:
    """Polls the worker's /metrics every ``period`` s (in a thread): (perf_counter, metrics)."""

    def __init__(self, worker: WorkerProcess, period: float = 2.0):
        self.worker, self.period = worker, period
        self.samples: list[tuple[float, dict]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            m = await loop.run_in_executor(None, worker_metrics, self.worker)
            if m:
                self.samples.append((time.perf_counter(), m))
            await asyncio.sleep(self.period)

    def obs_in(self) -> list[tuple[float, float]]:
        return [(t, m.get("observations_in", 0.0)) for t, m in self.samples]

    async def stop(self):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class Profiler:
    """py-spy record --format raw --threads --idle against a worker; a per-thread summary."""

    IDLE = re.compile(r"^(EpollSelector\.)?(select|poll|epoll_wait)\b|^(Condition\.)?wait \(threading|^_worker \(concurrent")

    def __init__(self, pid: int, out: Path, rate: int, gil: bool = False):
        self.out, self.proc = out, None
        exe = shutil.which("py-spy")
        if exe is None:
            log("py-spy not found (pip install py-spy): no worker profile")
            return
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                                      "--nonblocking", "--idle", "--threads", *(["--gil"] if gil else []), "-o", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def summary(self, top: int) -> list[str]:
        if self.proc is None or not self.out.exists():
            return ["(no profile)"]
        per_thread: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        names: dict[str, str] = {}
        busy_self, busy_incl = collections.Counter(), collections.Counter()
        total_busy = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            n = int(n)
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            m = re.match(r"thread \((\w+)\)(?::\s*(.*))?$", frames[0])
            if m:
                frames = frames[1:]
                tid = m.group(1)
                if m.group(2):
                    names[tid] = m.group(2)
            else:
                tid = "?"
            if not frames:
                continue
            leaf = frames[-1]
            idle = bool(self.IDLE.search(leaf))
            per_thread[tid][0] += n
            per_thread[tid][1] += n if idle else 0
            if not idle:
                total_busy += n
                busy_self[leaf] += n
                for f in set(frames):
                    busy_incl[f] += n
        if not per_thread:
            return ["(empty profile)"]
        lines = ["threads (samples, share idle in select/wait): " + "; ".join(
            f"{names.get(t, t)} {s:,} ({100 * i / s:.0f}% idle)"
            for t, (s, i) in sorted(per_thread.items(), key=lambda kv: -kv[1][0]))]
        if total_busy:
            lines.append(f"busy samples {total_busy:,}; top self time (share of busy samples):")
            lines += [f"  {100 * c / total_busy:5.1f}%  {f}" for f, c in busy_self.most_common(top)]
            keep = re.compile(r"\((state|stream_app)/|\(faust/(streams|agents|transport/consumer|transport/conductor)")
            lines.append("top inclusive (seqstream code and faust's stream path):")
            lines += [f"  {100 * c / total_busy:5.1f}%  {f}" for f, c in busy_incl.most_common()
                      if keep.search(f) and not f.startswith(("<module>", "main ", "cmd_worker "))][:top]
        return lines


def steady_rate(points: list[tuple[float, float]]) -> float | None:
    """Slope of observations_in over the middle of the samples where it was growing."""
    growing = [(t, v) for t, v in points if v > 0]
    if len(growing) < 3:
        return None
    a, b = growing[len(growing) // 5], growing[-1 - len(growing) // 5]
    return (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] and b[1] > a[1] else None


async def warm_up(worker: WorkerProcess, bootstrap: str, topic: str, timeout: float = 60.0) -> None:
    """Wait until the worker consumes: publish one message it must dead-letter (not JSON, so no
    state and no results) and wait for its deadletters counter. ``topic`` is the experiments
    topic, so the observations topic holds exactly the benchmark's messages (the yardstick reads
    it)."""
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await prod.start()
    try:
        await prod.send_and_wait(topic, key=b"bench-warm-up", value=b"not json: the bench's warm-up message")
    finally:
        await prod.stop()
    deadline = time.perf_counter() + timeout
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, worker_metrics, worker)).get("deadletters", 0) < 1:
        if time.perf_counter() > deadline or worker.process.poll() is not None:
            raise RuntimeError(f"worker did not consume the warm-up message:\n{worker.log_tail()}")
        await asyncio.sleep(0.05)


def ms(v: float) -> str:
    return "not received" if math.isinf(v) else f"{v:,.0f} ms"

