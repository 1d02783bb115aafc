"""``intentflow bench``: throughput, latency, resources and ceilings of the IntentFlow job on the real stack.

One invocation measures three things on the same machine, with the same input:

* the JOB (jobs/intent_job.py) driven first at its peak (a bounded backlog kept in Kafka, so the
  source never starves and the run never builds minutes of lag), then at a fixed rate (default 50 %
  of the measured peak);
* the ENGINE CEILING (deploy/bench/engine_ceiling.sql): the same Kafka -> key by user -> keyed
  state -> exactly-once Kafka shape without Python, driven the same way and measured the same way;
* the MODEL CEILING: udfs/model.py's ONNX session alone on real windows, batch sizes 1..4096.

The load is real Taobao sessions cloned to as many users as asked (user-id suffix per clone, a time
shift per clone, fresh event ids), so key skew and sequence shapes stay those of real shoppers.
Event ids are ``<run>-<seq>``: the sequence number indexes the arrays that hold each event's
arrival time (the broker's LogAppendTime from the delivery report) and the time its output
became readable to a ``read_committed`` consumer. Everything measured comes from Kafka itself;
Flink's REST API is used only for checkpoints and the scorer's batch counters.
"""
from __future__ import annotations

import base64
import functools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from jobs.config import REPO_ROOT, IntentFlowConfig

ENGINE_DIR = REPO_ROOT / "deploy" / "bench"
RESULTS_DIR = ENGINE_DIR / "results"
DEFAULT_BATCH_SIZES = (1, 8, 32, 128, 512, 1024, 4096)
CLONE_SHIFT_MS = 104_729          # clone c starts c * this (mod 1 h) later: clones do not move in lockstep
CLONE_SHIFT_SPAN_MS = 3_600_000
SCORER_VERTEX = "sequence-state-batched-scoring"


@dataclass(frozen=True)
class BenchOptions:
    """What one bench run does (CLI options; defaults give a 3-5 minute run)."""
    users: int = 10_000
    max_events: int = 3_000_000       # the engine ceiling replays the same pool from its start
    peak_s: float = 30.0
    fixed_s: float = 30.0
    warmup_s: float = 5.0
    rate_fraction: float = 0.5
    backlog_s: float = 10.0           # peak phase: keep about this many seconds of work waiting in Kafka
    min_backlog: int = 2_000
    drain_timeout_s: float = 120.0
    partitions: int = 4
    engine: bool = True
    model: bool = True
    device: str = "auto"
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    model_min_s: float = 1.0
    python: bool = True               # the Python-path ceiling: the scorer's own work without PyFlink
    python_s: float = 20.0
    scorer_metrics: bool = True       # read the scorer's batch counters (waits up to ~10 s per phase for REST)
    profile_s: float = 0.0            # >0: py-spy the TaskManager's Python for this long in the job's peak phase
    dataset: str = "taobao-sample"
    label: str = ""
    note: str = ""                    # free text stored in the JSON (e.g. why the figures are not representative)
    output: str = ""


# =============================================================================================
# Load: real sessions cloned to many users
# =============================================================================================

@dataclass
class LoadPool:
    """Pre-encoded records (key, value) in produce order, plus the user index of each."""
    run: str
    keys: list[bytes]
    values: list[bytes]
    user_index: np.ndarray      # int32, the cloned user of each record
    users: int
    base_users: int
    clones: int
    encode_s: float = 0.0

    def __len__(self) -> int:
        return len(self.values)


def clone_user_id(user_id: str, clone: int) -> str:
    """The id of ``user_id``'s ``clone``-th copy (a suffix keeps the original visible)."""
    return f"{user_id}-c{clone}"


def clone_plan(base_users: Sequence[str], users: int) -> list[tuple[int, str]]:
    """(clone, original user) for ``users`` cloned users: whole clones of every user, then a part clone."""
    if users <= 0:
        raise ValueError("users must be > 0")
    base = sorted(base_users)
    return [(i // len(base), base[i % len(base)]) for i in range(users)]


def clone_shift_ms(clone: int) -> int:
    return (clone * CLONE_SHIFT_MS) % CLONE_SHIFT_SPAN_MS


def cloned_events(base_events: Sequence[dict], users: int, run: str, laps: int = 1, dicts: bool = True) -> Iterator:
    """Yield the base events cloned to ``users`` users, merged in event-time order.

    Each clone of a user gets the user's whole real sequence (same types, items, categories and
    gaps), shifted by its clone's offset; lap L repeats everything L dataset spans later (users
    continue their history). Event ids are fresh: ``<run>-<seq>`` in produce order. With
    ``dicts=False`` it yields (base index, cloned user number, event_id, user_id, event_time).
    """
    by_user: dict[str, list[int]] = {}
    for i, ev in enumerate(base_events):
        by_user.setdefault(ev["user_id"], []).append(i)
    plan = clone_plan(list(by_user), users)
    times = np.fromiter((ev["event_time"] for ev in base_events), dtype=np.int64, count=len(base_events))
    idx = np.concatenate([np.asarray(by_user[u], dtype=np.int64) for _, u in plan]) if plan else np.zeros(0, np.int64)
    owner = np.concatenate([np.full(len(by_user[u]), k, dtype=np.int64) for k, (_, u) in enumerate(plan)]) \
        if plan else np.zeros(0, np.int64)
    shift = np.asarray([clone_shift_ms(c) for c, _ in plan], dtype=np.int64)[owner] if plan else owner
    t = times[idx] + shift
    span = int(t.max() - t.min()) + 1 if len(t) else 1    # a lap starts after the last shifted event
    order = np.lexsort((idx, owner, t))       # event time; ties: user, then the user's own order
    names = [clone_user_id(u, c) for c, u in plan]
    idx_l, owner_l, t_l = idx[order].tolist(), owner[order].tolist(), t[order].tolist()
    seq = 0
    for lap in range(laps):
        for i, k, ts in zip(idx_l, owner_l, t_l):
            event_id, ts = f"{run}-{seq}", ts + lap * span
            seq += 1
            if not dicts:
                yield i, k, event_id, names[k], ts
                continue
            ev = dict(base_events[i])
            ev.update(user_id=names[k], event_time=ts, event_id=event_id)
            yield ev


def avro_long(n: int) -> bytes:
    """Avro's zigzag varint encoding of a long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def avro_string(text: str) -> bytes:
    raw = text.encode()
    return avro_long(len(raw)) + raw


class CloneEncoder:
    """Encodes cloned events byte-identically to the events encoder, at a fraction of the cost.

    A clone differs from its base event only in event_id, user_id (the first two fields) and
    event_time (the second-to-last); the fields between are encoded once per base event with the
    real encoder and reused. ``tests/jobs/test_bench.py`` checks the bytes equal the encoder's.
    """

    def __init__(self, base_events: Sequence[dict]):
        from schemas import EVENTS_SUBJECT, SchemaStore

        self.encoder = SchemaStore().encoder(EVENTS_SUBJECT)
        self.header = self.encoder.encode(dict(base_events[0]))[:5] if base_events else b""
        self.middles: list[bytes] = []
        for ev in base_events:
            full = self.encoder.encode(ev)
            head = 5 + len(avro_string(ev["event_id"])) + len(avro_string(ev["user_id"]))
            tail = len(avro_long(ev["event_time"])) + len(avro_string(ev["source"]))
            self.middles.append(full[head:len(full) - tail])
        self.sources = [avro_string(ev["source"]) for ev in base_events]

    def encode(self, base_index: int, event_id: str, user_id: str, event_time: int) -> bytes:
        return b"".join((self.header, avro_string(event_id), avro_string(user_id), self.middles[base_index],
                         avro_long(event_time), self.sources[base_index]))


def build_pool(base_events: Sequence[dict], users: int, run: str, max_events: int) -> LoadPool:
    """Encode the cloned load once, before any phase, so the producer only produces while measuring."""
    started = time.perf_counter()
    enc = CloneEncoder(base_events)
    per_lap = _events_for(base_events, users)
    laps = max(1, math.ceil(max_events / per_lap)) if per_lap else 1
    keys, values, owners = [], [], []
    for ev in cloned_events(base_events, users, run, laps, dicts=False):
        if len(values) >= max_events:
            break
        base_index, user, event_id, user_id, event_time = ev
        owners.append(user)
        keys.append(user_id.encode())
        values.append(enc.encode(base_index, event_id, user_id, event_time))
    base_users = len({ev["user_id"] for ev in base_events})
    return LoadPool(run, keys, values, np.asarray(owners, dtype=np.int32), users, base_users,
                    math.ceil(users / base_users) if base_users else 0, time.perf_counter() - started)


def _events_for(base_events: Sequence[dict], users: int) -> int:
    """Events in one lap of ``users`` cloned users."""
    counts: dict[str, int] = {}
    for ev in base_events:
        counts[ev["user_id"]] = counts.get(ev["user_id"], 0) + 1
    return sum(counts[u] for _, u in clone_plan(list(counts), users))


def load_base_events(dataset: str) -> list[dict]:
    from jobs.datasets import read_events, resolve_dataset, time_ordered

    path, fmt = resolve_dataset(dataset)
    return time_ordered(read_events(path, fmt))


# =============================================================================================
# Pure measurement maths
# =============================================================================================

def avro_string_at(buf: bytes, pos: int) -> tuple[bytes, int]:
    """The Avro string starting at ``pos`` (zigzag varint length + bytes) and the position after it."""
    shift = raw = 0
    while True:
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    n = (raw >> 1) ^ -(raw & 1)
    return buf[pos:pos + n], pos + n


def seq_of_event_id(event_id: bytes) -> int:
    return int(event_id.rpartition(b"-")[2])


def seq_from_recommendation(value: bytes) -> int:
    """Event seq of an intent.recommendation record (Confluent header, then user_id, event_id)."""
    _, pos = avro_string_at(value, 5)
    return seq_of_event_id(avro_string_at(value, pos)[0])


def seq_from_event(value: bytes) -> int:
    """Event seq of a framed UserEvent (event_id is its first field)."""
    return seq_of_event_id(avro_string_at(value, 5)[0])


def seq_from_engine_output(value: bytes) -> int:
    """Event seq of an engine-ceiling output (JSON with the input value in base64)."""
    return seq_from_event(base64.b64decode(json.loads(value)["v"]))


def percentiles(values, qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles (the smallest value with at least q % of values at or below it)."""
    arr = np.sort(np.asarray(values, dtype=np.float64))
    out: dict[str, float | None] = {}
    for q in qs:
        if not len(arr):
            out[f"p{q:g}"] = None
            continue
        rank = max(1, math.ceil(q / 100.0 * len(arr)))
        out[f"p{q:g}"] = float(arr[rank - 1])
    return out


def latency_summary(arrival_ms: np.ndarray, received_ms: np.ndarray) -> dict:
    """p50/p95/p99/max (ms) of received - arrival over the events that have both."""
    ok = (arrival_ms > 0) & (received_ms > 0)
    lat = (received_ms[ok] - arrival_ms[ok]).astype(np.float64)
    summary = {"events": int(ok.sum()), **percentiles(lat)}
    summary["max"] = float(lat.max()) if len(lat) else None
    summary["mean"] = round(float(lat.mean()), 1) if len(lat) else None
    return summary


def window_rate(samples: Sequence[tuple[float, int]], t0: float, t1: float) -> float | None:
    """Count growth per second between t0 and t1 from monotone (time, count) samples."""
    inside = [(t, c) for t, c in samples if t0 <= t <= t1]
    before = [(t, c) for t, c in samples if t < t0]
    if before:
        inside.insert(0, before[-1])
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def exactly_once(counts: np.ndarray) -> dict:
    """How many inputs got no output, or more than one (the invariant is exactly one each)."""
    return {"inputs": int(len(counts)), "missing": int((counts == 0).sum()),
            "duplicated": int((counts > 1).sum()), "outputs": int(counts.sum())}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


# =============================================================================================
# Resource sampling from /proc
# =============================================================================================

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_rss(pid: int) -> tuple[float, int] | None:
    """(CPU seconds used, RSS bytes) of a process from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as fh:
            rss = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), 0)
    except (OSError, IndexError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, rss


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole host from /proc/stat (others' load shows up here)."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return float(sum(vals) - idle), float(sum(vals))


def stack_pids(run_dir: Path) -> dict[str, int]:
    """The stack's JVMs by role, from stack.sh's pid files (only this checkout's processes)."""
    files = {"kafka": run_dir / "kafka" / "kafka.pid",
             "jobmanager": run_dir / "flink" / "pid" / "flink-intentflow-standalonesession.pid",
             "taskmanager": run_dir / "flink" / "pid" / "flink-intentflow-taskexecutor.pid"}
    pids = {}
    for role, path in files.items():
        try:
            for line in path.read_text().split():
                if line.isdigit() and os.path.exists(f"/proc/{line}"):
                    pids[role] = int(line)
                    break
        except OSError:
            pass
    pids["bench-client"] = os.getpid()
    return pids


class ProcSampler(threading.Thread):
    """Samples CPU time and RSS of the stack's JVMs (and this client) every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0):
        super().__init__(name="bench-proc-sampler", daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: list[tuple[float, dict[str, tuple[float, int]], tuple[float, float]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            snap = {role: v for role, pid in self.pids.items() if (v := proc_cpu_rss(pid)) is not None}
            self.samples.append((time.time(), snap, host_cpu()))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()

    def summary(self, t0: float, t1: float) -> dict:
        return resource_summary([s for s in self.samples if t0 <= s[0] <= t1])


def resource_summary(samples) -> dict:
    """Per role: average CPU (% of one core) and peak/mean RSS (MiB) over the samples; host busy %."""
    if len(samples) < 2:
        return {}
    (ta, first, host_a), (tb, last, host_b) = samples[0], samples[-1]
    out: dict = {}
    for role in last:
        if role not in first:
            continue
        rss = [s[1][role][1] for s in samples if role in s[1]]
        out[role] = {"cpu_pct": round(100.0 * (last[role][0] - first[role][0]) / (tb - ta), 1),
                     "rss_mib_max": round(max(rss) / 2**20, 1), "rss_mib_mean": round(sum(rss) / len(rss) / 2**20, 1)}
    busy = host_b[0] - host_a[0]
    total = host_b[1] - host_a[1]
    out["host_busy_pct"] = round(100.0 * busy / total, 1) if total else None
    return out


# =============================================================================================
# Kafka: producer with arrival times, read_committed output watcher
# =============================================================================================

class OutputWatcher(threading.Thread):
    """Reads an output topic ``read_committed`` and notes when each event's record became readable."""

    def __init__(self, bootstrap: str, topic: str, group: str, capacity: int, seq_of: Callable[[bytes], int]):
        super().__init__(name=f"bench-watch-{topic}", daemon=True)
        self.bootstrap, self.topic, self.group, self.seq_of = bootstrap, topic, group, seq_of
        self.received_ms = np.zeros(capacity, dtype=np.int64)
        self.counts = np.zeros(capacity, dtype=np.int32)
        self.total = 0
        self.undecodable = 0
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "fetch.wait.max.ms": 10, "fetch.min.bytes": 1})
        try:
            meta = consumer.list_topics(self.topic, timeout=30).topics[self.topic]
            consumer.assign([TopicPartition(self.topic, p, 0) for p in meta.partitions])
            self.ready.set()
            while not self._halt.is_set():
                msgs = consumer.consume(2000, timeout=0.1)
                now_ms = int(time.time() * 1000)
                for m in msgs:
                    if m.error():
                        continue
                    try:
                        s = self.seq_of(m.value())
                    except Exception:  # noqa: BLE001 - a record from elsewhere is counted, never fatal
                        self.undecodable += 1
                        continue
                    if 0 <= s < len(self.counts):
                        if not self.counts[s]:
                            self.received_ms[s] = now_ms
                        self.counts[s] += 1
                    else:
                        self.undecodable += 1
                self.total += len(msgs)
                self.samples.append((time.time(), self.total))
        except BaseException as exc:  # noqa: BLE001 - surfaced to the main thread
            self.error = exc
            self.ready.set()
        finally:
            consumer.close()

    def stop(self) -> None:
        self._halt.set()

    def recent_rate(self, seconds: float = 5.0) -> float:
        now = time.time()
        return window_rate(self.samples, now - seconds, now) or 0.0


class LoadProducer:
    """Produces pool records and keeps each one's LogAppendTime (the broker's arrival clock)."""

    def __init__(self, bootstrap: str, topic: str, capacity: int):
        from confluent_kafka import Producer

        self.topic, self.bootstrap = topic, bootstrap
        self.producer = Producer({"bootstrap.servers": bootstrap, "client.id": "intentflow-bench",
                                  "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                                  "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000,
                                  "queue.buffering.max.kbytes": 1_048_576, "message.timeout.ms": 60_000})
        self.arrival_ms = np.zeros(capacity, dtype=np.int64)
        self.timestamp_types: set[int] = set()
        self.produced = 0
        self.delivered = 0
        self.failed = 0

    def _delivered(self, seq: int, err, msg) -> None:
        if err is not None:
            self.failed += 1
            return
        kind, ts = msg.timestamp()
        self.timestamp_types.add(kind)
        self.arrival_ms[seq] = ts
        self.delivered += 1

    def produce(self, pool: LoadPool, seq: int) -> None:
        cb = functools.partial(self._delivered, seq)
        while True:
            try:
                self.producer.produce(self.topic, pool.values[seq], pool.keys[seq], on_delivery=cb)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.produced += 1

    def poll(self, timeout: float = 0) -> None:
        self.producer.poll(timeout)

    def flush(self, timeout: float = 60) -> int:
        return self.producer.flush(timeout)


@dataclass
class Phase:
    name: str
    target_rate: float | None
    start: float = 0.0
    end: float = 0.0
    first_seq: int = 0
    last_seq: int = 0       # one past the last produced
    pool_exhausted: bool = False


def drive(phase: Phase, pool: LoadPool, producer: LoadProducer, watcher: OutputWatcher, duration_s: float,
          opts: BenchOptions) -> Phase:
    """Produce for ``duration_s``: at ``phase.target_rate``, or (None) at the peak with a bounded backlog."""
    phase.first_seq = seq = producer.produced
    phase.start = start = time.time()
    next_poll = 0
    while True:
        now = time.time()
        if now - start >= duration_s:
            break
        if seq >= len(pool):
            phase.pool_exhausted = True
            break
        if phase.target_rate is None:
            cap = max(opts.min_backlog, opts.backlog_s * watcher.recent_rate(10.0))
            if producer.produced - watcher.total > cap:
                producer.poll(0.005)
                continue
            burst = 500
        else:
            due = phase.first_seq + int((now - start) * phase.target_rate)
            burst = min(due - seq, 2000)
            if burst <= 0:
                producer.poll(0.002)
                continue
        for _ in range(min(burst, len(pool) - seq)):
            producer.produce(pool, seq)
            seq += 1
        if seq >= next_poll:
            producer.poll(0)
            next_poll = seq + 1000
    producer.flush(60)
    phase.end = time.time()
    phase.last_seq = seq
    return phase


def wait_drained(watcher: OutputWatcher, upto: int, timeout_s: float) -> bool:
    """Wait until every input below ``upto`` has its output (or the timeout)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if watcher.error:
            raise watcher.error
        if upto == 0 or watcher.counts[:upto].min() > 0:
            return True
        time.sleep(0.25)
    return False


# =============================================================================================
# Flink side: topics, submission, checkpoints, scorer counters
# =============================================================================================

def create_topics(bootstrap: str, names: Sequence[str], log_append: Sequence[str], partitions: int) -> None:
    args = [sys.executable, str(REPO_ROOT / "deploy" / "topics.py"), "--bootstrap", bootstrap,
            "--partitions", str(partitions), "--wait", "60"]
    for name in log_append:
        args += ["--log-append-time", name]
    subprocess.run([*args, *names], check=True, stdout=subprocess.DEVNULL)


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=15).topics)
    doomed = [n for n in names if n in existing]
    for fut in (admin.delete_topics(doomed, operation_timeout=30).values() if doomed else ()):
        try:
            fut.result()
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass


def submit_engine(cfg: IntentFlowConfig, run: str, events_topic: str, output_topic: str, env: dict) -> str:
    from jobs.flink import submit_python

    k = cfg.kafka
    variables = {"events_topic": events_topic, "output_topic": output_topic, "bootstrap": k.bootstrap_servers,
                 "group": f"{run}-engine", "transactional_id_prefix": f"{run}-engine",
                 "transaction_timeout_ms": str(k.transaction_timeout_ms),
                 "window": str(cfg.scoring.sequence_length), "preceding": str(cfg.scoring.sequence_length - 1)}
    conf = {"pipeline.name": f"{run}-engine-ceiling", "parallelism.default": str(cfg.flink.parallelism),
            "execution.checkpointing.interval": f"{cfg.flink.checkpoint_interval_ms} ms",
            "execution.checkpointing.min-pause": f"{cfg.flink.min_pause_between_checkpoints_ms} ms",
            "execution.checkpointing.mode": "EXACTLY_ONCE", "table.exec.uid.generation": "ALWAYS"}
    jar = cfg.flink.connector_jar or env.get("INTENTFLOW_CONNECTOR_JAR", "")
    if jar:
        conf["pipeline.jars"] = f"file://{jar}"
    args = ["--sql", str(ENGINE_DIR / "engine_ceiling.sql")]
    args += [a for kv in variables.items() for a in ("--var", "=".join(kv))]
    args += [a for kv in conf.items() for a in ("--conf", "=".join(kv))]
    return submit_python(ENGINE_DIR / "engine_ceiling.py", args, env=env)


class CheckpointLog:
    """Completed checkpoints seen in the REST history (polled often: the history keeps only the last few)."""

    def __init__(self):
        self.completed: dict[int, dict] = {}
        self.failed = 0

    def poll(self, rest, job_id: str) -> None:
        try:
            stats = rest.checkpoints(job_id)
        except Exception:  # noqa: BLE001 - a missed poll only loses history entries
            return
        self.failed = stats.get("counts", {}).get("failed", self.failed)
        for cp in stats.get("history", []):
            if cp.get("status") == "COMPLETED" and not cp.get("is_savepoint"):
                self.completed[cp["id"]] = {k: cp.get(k) for k in
                                            ("id", "trigger_timestamp", "end_to_end_duration", "state_size",
                                             "checkpointed_size")}

    def between(self, t0: float, t1: float) -> list[dict]:
        return [c for c in sorted(self.completed.values(), key=lambda c: c["id"])
                if t0 * 1000 <= c["trigger_timestamp"] <= t1 * 1000]

    def latest(self) -> dict | None:
        return self.completed[max(self.completed)] if self.completed else None


def checkpoint_summary(cps: list[dict]) -> dict:
    durations = [c["end_to_end_duration"] for c in cps]
    return {"completed": len(cps), **{f"duration_ms_{k}": v for k, v in percentiles(durations, (50, 99)).items()},
            "duration_ms_max": max(durations) if durations else None}


class RestPoller(threading.Thread):
    def __init__(self, rest, job_id: str, log: CheckpointLog, interval: float = 2.0):
        super().__init__(name="bench-rest-poller", daemon=True)
        self.rest, self.job_id, self.log, self.interval = rest, job_id, log, interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.log.poll(self.rest, self.job_id)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.log.poll(self.rest, self.job_id)


def scorer_counters(rest, job_id: str, tries: int = 3) -> dict[str, int]:
    """The scorer's ``batches`` and ``events_scored`` counters (summed over subtasks); {} if unavailable."""
    from jobs.flink import job_vertex

    for attempt in range(tries):
        try:
            vid = job_vertex(rest, job_id, SCORER_VERTEX)
            names = [n for n in rest.metric_names(job_id, vid) if n.rsplit(".", 1)[-1] in ("batches", "events_scored")]
            if names:
                return {n.rsplit(".", 1)[-1]: int(v) for n, v in rest.vertex_metrics(job_id, vid, names).items()}
        except Exception:  # noqa: BLE001 - metrics are best effort; Kafka is the source of truth
            pass
        time.sleep(1.0 + attempt)
    return {}


def scorer_counters_reaching(rest, job_id: str, events: int, timeout_s: float = 25) -> dict[str, int]:
    """Scorer counters once they show ``events`` scored: the REST metric fetcher caches values for
    ~10 s (metrics.fetcher.update-interval), so a single read at a phase boundary is stale."""
    deadline = time.time() + timeout_s
    got: dict[str, int] = {}
    while time.time() < deadline:
        got = scorer_counters(rest, job_id, tries=1)
        if got.get("events_scored", 0) >= events:
            return got
        time.sleep(1.0)
    return {}


def avg_batch(before: dict, after: dict) -> float | None:
    """Events scored per model batch between two counter readings (None if a reading is missing)."""
    if not after or not before:
        return None
    batches = after.get("batches", 0) - before.get("batches", 0)
    scored = after.get("events_scored", 0) - before.get("events_scored", 0)
    return round(scored / batches, 1) if batches > 0 else None


def group_offset_total(bootstrap: str, group: str, topic: str) -> int | None:
    """Sum of the committed offsets of ``group`` on ``topic`` (Flink commits them on checkpoints)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        got = c.committed([TopicPartition(topic, p) for p in meta.partitions], timeout=10)
        return sum(tp.offset for tp in got if tp.offset >= 0)
    except Exception:  # noqa: BLE001
        return None
    finally:
        c.close()


# =============================================================================================
# Profile of the job's Python hot path (py-spy on the TaskManager, optional)
# =============================================================================================

# (category, substrings of a frame): a sample goes to the category of its leaf-most matching frame.
PROFILE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("onnx_session_run", ("Session.run",)),
    ("timer_register_jni", ("register_processing_time_timer",)),
    ("current_processing_time_jni", ("current_processing_time",)),
    ("current_watermark_jni", ("current_watermark",)),
    ("state_read_jni_unpickle", ("ValueStateImpl.value",)),
    ("state_write_pickle_jni", ("ValueStateImpl.update",)),
    ("state_tuple_conversion", ("UserState.to_value", "UserState.from_value")),
    ("avro_encode_outputs", ("Encoder.encode", "DeadLetters.encode")),
    ("avro_decode_validate_input", ("Decoder.decode", "parse_event")),
    ("features_and_batch_assembly", ("IntentEngine._feeds", "IntentEngine._top_categories", "IntentEngine.score",
                                     "UserState.settle")),
    ("routing", ("IntentRouter.route",)),
    ("state_append_dedup", ("IntentEngine.add", "UserState.append", "UserState.seen")),
    ("metric_counter_inc_jni", ("CounterImpl.inc",)),
    ("watermark_assigner", ("TimestampAssignerProcessFunctionAdapter", "extract_timestamp")),
    ("side_output_collect_jni", ("SideOutputContext.collect",)),   # runs the chained Java sink path too
    ("pyflink_row_conversion", ("RowDataConverter", "Row.", "_create_row")),
    ("decode_operator_other", ("DecodeEvents.process_element",)),
    ("scorer_process_element_other", ("SequenceScorer.process_element",)),
    ("scorer_timer_emit_other", ("SequenceScorer.on_timer", "SequenceScorer._emit", "SequenceScorer._score")),
)


def profile_breakdown(collapsed_lines: Sequence[str], rules=PROFILE_RULES) -> dict:
    """Shares (%) of Python samples per hot-path category from py-spy's raw (collapsed) output.

    Samples without Python frames (JVM threads py-spy also sees) are counted apart, not shared out.
    """
    cats: dict[str, int] = {}
    python = empty = 0
    for line in collapsed_lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        if not stack.strip():
            empty += int(n)
            continue
        python += int(n)
        chosen = "pyflink_framework_other"
        for frame in reversed(stack.split(";")):
            hit = next((name for name, keys in rules if any(k in frame for k in keys)), None)
            if hit:
                chosen = hit
                break
        cats[chosen] = cats.get(chosen, 0) + int(n)
    shares = {k: round(100.0 * v / python, 1) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}
    return {"python_samples": python, "samples_without_python_frames": empty, "share_pct": shares}


def py_spy_binary() -> str | None:
    import shutil

    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_py_spy(pid: int, seconds: float, out_file: Path) -> subprocess.Popen | None:
    """``py-spy record`` (non-blocking sampling, 100 Hz) of the TaskManager's embedded interpreter."""
    binary = py_spy_binary()
    if not binary:
        return None
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                             "--rate", "100", "--nonblocking", "--format", "raw", "-o", str(out_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# =============================================================================================
# One target (job or engine): submit, peak phase, fixed phase, figures
# =============================================================================================

@dataclass
class Target:
    name: str
    events_topic: str
    output_topic: str
    source_group: str
    seq_of: Callable[[bytes], int]
    submit: Callable[[], str]
    topics: list[str] = field(default_factory=list)
    job_id: str = ""
    taskmanager_pid: int | None = None
    scorer_seen: dict = field(default_factory=lambda: {"batches": 0, "events_scored": 0})  # at the last phase end


def run_target(target: Target, pool: LoadPool, cfg: IntentFlowConfig, opts: BenchOptions, rest, pids,
               out: Callable[[str], None]) -> dict:
    """Submit the target's job, drive it at the peak then at a fixed rate, and measure both phases."""
    bootstrap = cfg.kafka.bootstrap_servers
    create_topics(bootstrap, target.topics, [target.events_topic], opts.partitions)
    target.taskmanager_pid = pids.get("taskmanager")
    out(f"[bench] {target.name}: submitting")
    target.job_id = target.submit()
    out(f"[bench] {target.name}: job {target.job_id} RUNNING")
    cps = CheckpointLog()
    poller = RestPoller(rest, target.job_id, cps)
    poller.start()
    baseline = _wait_first_checkpoint(cps, rest, target.job_id)
    watcher = OutputWatcher(bootstrap, target.output_topic, f"{pool.run}-{target.name}-watch", len(pool), target.seq_of)
    watcher.start()
    watcher.ready.wait(30)
    sampler = ProcSampler(pids)
    sampler.start()
    producer = LoadProducer(bootstrap, target.events_topic, len(pool))
    result: dict = {"job_id": target.job_id, "phases": {}}
    try:
        peak = _run_phase(Phase("peak", None), pool, producer, watcher, opts.peak_s, opts, rest, target, cps,
                          sampler, out)
        result["phases"]["peak"] = peak
        rate = (peak["output_events_per_s"] or 0) * opts.rate_fraction
        if rate > 0 and opts.fixed_s > 0:
            result["phases"]["fixed"] = _run_phase(Phase("fixed", rate), pool, producer, watcher, opts.fixed_s,
                                                   opts, rest, target, cps, sampler, out)
        produced = producer.produced
        result["exactly_once"] = exactly_once(watcher.counts[:produced])
        result["exactly_once"]["undecodable_outputs"] = watcher.undecodable
        result["arrival_clock"] = sorted({2: "LogAppendTime", 1: "CreateTime"}.get(k, str(k))
                                         for k in producer.timestamp_types)
        result["delivery_failures"] = producer.failed
        poller.stop()
        result["state"] = _state_figures(cps, baseline, pool, produced)
        result["checkpoints_failed"] = cps.failed
    finally:
        watcher.stop()
        sampler.stop()
        poller.stop()
    return result


def _wait_first_checkpoint(cps: CheckpointLog, rest, job_id: str, timeout_s: float = 30) -> dict | None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        cps.poll(rest, job_id)
        if cps.latest():
            return cps.latest()
        time.sleep(0.5)
    return None


def _run_phase(phase: Phase, pool, producer, watcher, duration_s, opts, rest, target, cps, sampler, out) -> dict:
    what = "peak (bounded backlog)" if phase.target_rate is None else f"fixed {phase.target_rate:,.0f} ev/s"
    out(f"[bench] {target.name}: {what} for {duration_s:g} s")
    counters0 = target.scorer_seen
    committed: dict = {}

    def committed_at_warmup_end():   # the source's committed offsets when the measured window opens
        time.sleep(opts.warmup_s)
        committed["t0"] = (time.time(), group_offset_total(producer.bootstrap, target.source_group, target.events_topic))

    th = threading.Thread(target=committed_at_warmup_end, daemon=True)
    th.start()
    spy = _maybe_profile(phase, target, opts, duration_s, out)
    drive(phase, pool, producer, watcher, duration_s, opts)
    in1 = (time.time(), group_offset_total(producer.bootstrap, target.source_group, target.events_topic))
    th.join(15)
    t0, t1 = phase.start + opts.warmup_s, phase.end
    output_rate = window_rate(watcher.samples, t0, t1)
    in0 = committed.get("t0")
    input_rate = ((in1[1] - in0[1]) / (in1[0] - in0[0])) if in0 and in0[1] is not None and in1[1] is not None \
        and in1[0] > in0[0] else None
    if phase.pool_exhausted:
        out(f"[bench] {target.name} {phase.name}: the pool of {len(pool):,} events ran out; raise --max-events")
    drained = wait_drained(watcher, phase.last_seq, opts.drain_timeout_s)
    t_drained = time.time()
    counters1 = scorer_counters_reaching(rest, target.job_id, phase.last_seq) \
        if target.name == "job" and opts.scorer_metrics else {}
    target.scorer_seen = counters1
    seqs = slice(phase.first_seq, phase.last_seq)
    measured = _after_warmup(producer.arrival_ms, seqs, phase.start + opts.warmup_s)
    figures = {
        "target_rate": round(phase.target_rate, 1) if phase.target_rate else None,
        "duration_s": round(phase.end - phase.start, 2),
        "events_produced": phase.last_seq - phase.first_seq,
        "pool_exhausted": phase.pool_exhausted,
        "produced_events_per_s": round((phase.last_seq - phase.first_seq) / max(1e-9, phase.end - phase.start), 1),
        "output_events_per_s": round(output_rate, 1) if output_rate else None,
        "input_committed_events_per_s": round(input_rate, 1) if input_rate else None,
        "drained": drained, "drain_s": round(t_drained - phase.end, 2),
        "latency_ms": latency_summary(producer.arrival_ms[measured], watcher.received_ms[measured]),
        "checkpoints": checkpoint_summary(cps.between(phase.start, t_drained)),
        "resources": sampler.summary(t0, t1),
    }
    if spy is not None:
        figures["profile"] = _finish_profile(spy, watcher)
    if target.name == "job":
        figures["avg_inference_batch"] = avg_batch(counters0, counters1)
        figures["scorer_counters"] = {"before": counters0, "after": counters1}
    out(f"[bench] {target.name} {phase.name}: out {figures['output_events_per_s']} ev/s, in "
        f"{figures['input_committed_events_per_s']} ev/s, p50/p99 {figures['latency_ms']['p50']}/"
        f"{figures['latency_ms']['p99']} ms, drained={drained}")
    return figures


def _maybe_profile(phase: Phase, target: Target, opts: BenchOptions, duration_s: float, out):
    """In the job's peak phase with --profile-s: py-spy the TaskManager after the warm-up (a thread)."""
    if not (opts.profile_s > 0 and target.name == "job" and phase.target_rate is None):
        return None
    pid = target.taskmanager_pid
    seconds = min(opts.profile_s, max(1.0, duration_s - opts.warmup_s))
    spy: dict = {"seconds": seconds}

    def record():
        time.sleep(opts.warmup_s)
        spy["t0"] = time.time()
        spy["file"] = Path(os.environ.get("TMPDIR", "/tmp")) / f"{target.job_id}-py-spy.txt"
        spy["proc"] = start_py_spy(pid, seconds, spy["file"]) if pid else None
        if spy["proc"] is None:
            out("[bench] --profile-s: py-spy not found (pip install py-spy into the venv) or no TaskManager pid")
            return
        spy["proc"].wait(seconds + 60)
        spy["t1"] = time.time()

    spy["thread"] = threading.Thread(target=record, daemon=True)
    spy["thread"].start()
    return spy


def _finish_profile(spy: dict, watcher: OutputWatcher) -> dict | None:
    spy["thread"].join(spy["seconds"] + 90)
    path = spy.get("file")
    if not path or not path.exists() or "t1" not in spy:
        return None
    result = profile_breakdown(path.read_text().splitlines())
    rate = window_rate(watcher.samples, spy["t0"], spy["t1"])
    result.update(seconds=round(spy["t1"] - spy["t0"], 1), tool="py-spy record --nonblocking --rate 100",
                  output_events_per_s=round(rate, 1) if rate else None,
                  python_ms_per_event_upper_bound=round(10.0 * result["python_samples"] / (rate * (spy["t1"] - spy["t0"])), 3)
                  if rate else None,
                  note="share of samples with Python frames, by leaf-most category; 'upper bound' counts a "
                       "runnable-but-descheduled thread as busy (py-spy's active heuristic)")
    return result


def _after_warmup(arrival_ms: np.ndarray, seqs: slice, t_from: float) -> np.ndarray:
    """Indices of the phase's events that reached Kafka after the warm-up."""
    idx = np.arange(seqs.start, seqs.stop)
    return idx[arrival_ms[idx] >= int(t_from * 1000)]


def _state_figures(cps: CheckpointLog, baseline: dict | None, pool: LoadPool, produced: int) -> dict:
    latest = cps.latest()
    users = int(len(np.unique(pool.user_index[:produced]))) if produced else 0
    if not latest or not users:
        return {"active_users": users}
    base = (baseline or {}).get("state_size") or 0
    return {"active_users": users, "events_per_active_user": round(produced / users, 1),
            "checkpoint_state_bytes": latest["state_size"],
            "baseline_state_bytes": base,
            "bytes_per_active_user": round(latest["state_size"] / users, 1),
            "bytes_per_active_user_over_baseline": round((latest["state_size"] - base) / users, 1),
            "how": "state_size of the latest completed checkpoint (REST /jobs/<id>/checkpoints; RocksDB SST "
                   "files as checkpointed, all operators) / distinct users produced so far; 'over_baseline' "
                   "subtracts the first checkpoint taken before any load; the figure grows with events_per_active_user "
                   "until each user's 50-event window is full"}


# =============================================================================================
# Model ceiling
# =============================================================================================

def model_feeds(cfg: IntentFlowConfig, base_events: Sequence[dict], rows: int, device: str = "cpu"):
    """``rows`` real model inputs: windows ending at successive events of the real users."""
    from udfs.decode import parse_event
    from udfs.model import IntentModel
    from udfs.scoring import IntentEngine
    from udfs.state import UserState

    model = IntentModel(cfg.model.resolved_path(), device, 1, expected_window=cfg.scoring.sequence_length)
    engine = IntentEngine(model, cfg.scoring)
    states: dict[str, UserState] = {}
    for ev in base_events:
        engine.add(states.setdefault(ev["user_id"], UserState()), parse_event(ev))
    sts = list(states.values())
    arrays = [st.window_array() for st in sts]
    h = np.zeros((len(sts), model.hidden), dtype=np.float32)
    parts, have, r = [], 0, 0
    while have < rows:
        idx = [i for i, st in enumerate(sts) if len(st.pending) > r]
        if not idx:
            r = 0
            continue
        feeds, _ = engine._feeds(sts, arrays, idx, r, h)  # the job's own feature building
        parts.append(feeds)
        have += len(idx)
        r += 1
    feeds = {k: np.concatenate([p[k] for p in parts])[:rows] for k in parts[0]}
    return model, feeds


def model_ceiling(cfg: IntentFlowConfig, base_events: Sequence[dict], device: str, batch_sizes: Sequence[int],
                  min_s: float = 1.0) -> dict:
    """Sequences/s of the ONNX model alone (one intra-op thread) per batch size."""
    model, feeds = model_feeds(cfg, base_events, max(batch_sizes), device)
    rows = []
    for b in batch_sizes:
        part = {k: np.ascontiguousarray(v[:b]) for k, v in feeds.items()}
        model.run(part)
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < min_s:
            model.run(part)
            calls += 1
        elapsed = time.perf_counter() - started
        rows.append({"batch": b, "calls": calls, "ms_per_call": round(1000 * elapsed / calls, 3),
                     "sequences_per_s": round(b * calls / elapsed, 1)})
    best = max(rows, key=lambda r: r["sequences_per_s"])
    return {"provider": model.provider, "intra_op_threads": 1, "device_requested": device, "batches": rows,
            "best_sequences_per_s": best["sequences_per_s"], "best_batch": best["batch"]}


def python_ceiling(cfg: IntentFlowConfig, pool: LoadPool, seconds: float = 20.0, batch: int = 128,
                   device: str = "cpu") -> dict:
    """Events/s of the job's own Python work per record, without PyFlink, on the pool's records.

    Per record what the two Python operators do: Avro decode + validation, the user's state read
    and written in its stored (pickled) form, the duplicate check, appending as pending; every
    ``batch`` events one batched ``IntentEngine.score`` of the waiting users, then routing, Avro
    encoding of the outputs and the settled state written back. A dict stands in for RocksDB and
    there are no timers, JNI calls or row conversions: the gap between this and the job is what
    the PyFlink record bridge costs.
    """
    import pickle

    from schemas import EVENTS_SUBJECT, SchemaStore
    from udfs.decode import DeadLetters, parse_event
    from udfs.model import IntentModel
    from udfs.scoring import IntentEngine, IntentRouter, publish, score_users
    from udfs.state import UserState

    store = SchemaStore()
    decode = store.decoder(EVENTS_SUBJECT).decode
    model = IntentModel(cfg.model.resolved_path(), device, cfg.model.intra_op_threads,
                        expected_window=cfg.scoring.sequence_length)
    engine, router = IntentEngine(model, cfg.scoring), IntentRouter(cfg.scoring, store, model.version)
    dead_letters, window = DeadLetters(store), model.window
    stored: dict[str, bytes] = {}
    dumps, loads, proto = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
    waiting: dict[str, UserState] = {}
    pending = events = outputs = batches = 0
    t_decode = t_state = t_score = t_publish = 0.0
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds

    def flush() -> None:
        nonlocal outputs, batches, t_score, t_publish
        t0 = clock()
        users = list(waiting)
        scored = score_users(engine, [waiting[u] for u in users], users)
        t1 = clock()
        for user in users:
            outputs += sum(1 for _ in publish(user, scored[user], router, dead_letters, "bench", window))
            stored[user] = dumps(scored[user][0].to_value(), proto)
        waiting.clear()
        batches += 1
        t_score, t_publish = t_score + t1 - t0, t_publish + clock() - t1

    for offset, value in enumerate(pool.values):
        if events % 1024 == 0 and clock() >= deadline:
            break
        t0 = clock()
        ev = parse_event(decode(value), 0, offset)
        t1 = clock()
        st = waiting.get(ev.user_id)
        if st is None:
            raw = stored.get(ev.user_id)
            st = UserState.from_value(loads(raw)) if raw is not None else UserState()
        events += 1
        if not st.seen(ev.event_id):
            engine.add(st, ev)
            stored[ev.user_id] = dumps(st.to_value(), proto)   # pending, before the batch (as the job)
            waiting[ev.user_id] = st
            pending += 1
        t_decode, t_state = t_decode + t1 - t0, t_state + clock() - t1
        if pending >= batch:
            flush()
            pending = 0
    if waiting:
        flush()
    elapsed = clock() - started
    per_event = {name: round(1e6 * t / max(events, 1), 1) for name, t in (
        ("decode_validate", t_decode), ("state_pickle_append", t_state), ("score_batch", t_score),
        ("route_encode_settle", t_publish))}
    return {"events": events, "outputs": outputs, "batches": batches, "batch_events": batch,
            "seconds": round(elapsed, 2), "events_per_s": round(events / elapsed, 1) if elapsed else None,
            "us_per_event": per_event, "provider": model.provider,
            "how": "the job's Python work per record (decode, pickled state read/write, dedupe, batched "
                   "score, route + encode) in one process, a dict for RocksDB, no PyFlink"}


def sequences_per_s_at(model: dict, batch: float | None) -> float | None:
    """The model ceiling at the batch size the job actually used (nearest measured size at or below)."""
    if not model or not batch:
        return None
    rows = [r for r in model["batches"] if r["batch"] <= batch] or model["batches"][:1]
    return rows[-1]["sequences_per_s"]


# =============================================================================================
# Document
# =============================================================================================

def machine_description(rest=None) -> dict:
    from importlib import metadata

    def version(*names):
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return None

    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")), None)
    mem_kb = next((int(line.split()[1]) for line in _read_lines("/proc/meminfo") if line.startswith("MemTotal:")), 0)
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20).stderr.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        java = None
    flink = None
    if rest is not None:
        try:
            flink = rest.flink_version()
        except Exception:  # noqa: BLE001
            pass
    return {"cpu_model": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1),
            "os": platform.platform(), "python": platform.python_version(), "java": java,
            "flink_cluster": flink, "apache_flink": version("apache-flink"),
            "onnxruntime": version("onnxruntime-gpu", "onnxruntime"), "confluent_kafka": version("confluent-kafka"),
            "fastavro": version("fastavro"), "numpy": version("numpy"), "loadavg_start": os.getloadavg()}


def _read_lines(path: str) -> list[str]:
    try:
        with open(path) as fh:
            return fh.readlines()
    except OSError:
        return []


def build_document(run: str, machine: dict, cfg: IntentFlowConfig, opts: BenchOptions, pool: LoadPool | None,
                   targets: dict, model: dict | None, started: float, finished: float,
                   python: dict | None = None) -> dict:
    """The one JSON document of a run: what ran where, every figure, and the ratios to the ceilings."""
    job = targets.get("job", {})
    engine = targets.get("engine", {})
    jpeak = job.get("phases", {}).get("peak", {}).get("output_events_per_s")
    epeak = engine.get("phases", {}).get("peak", {}).get("output_events_per_s")
    jbatch = job.get("phases", {}).get("peak", {}).get("avg_inference_batch")
    return {
        "kind": "intentflow-bench", "version": 1, "run": run, "label": opts.label, "note": opts.note,
        "started_utc": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(finished - started, 1),
        "machine": machine,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
        "config": cfg.to_dict(),
        "load": None if pool is None else {
            "dataset": opts.dataset, "users": pool.users, "base_users": pool.base_users, "clones": pool.clones,
            "events_in_pool": len(pool), "encode_s": round(pool.encode_s, 1)},
        "targets": targets,
        "model_ceiling": model,
        "python_ceiling": python,
        "ratios": {
            "job_to_engine_ceiling": ratio(jpeak, epeak),
            "job_to_model_ceiling_best": ratio(jpeak, (model or {}).get("best_sequences_per_s")),
            "job_to_model_ceiling_at_job_batch": ratio(jpeak, sequences_per_s_at(model or {}, jbatch)),
            "job_to_python_ceiling": ratio(jpeak, (python or {}).get("events_per_s")),
        },
        "targets_from_issue": {"events_per_s_min": 30_000, "p99_ms_max_at_half_peak": 250,
                               "state_bytes_per_user_max": 2048},
    }


def format_table(doc: dict) -> str:
    """A short human-readable table of the document's figures."""
    lines = [f"IntentFlow bench {doc['run']} {doc['label'] or ''}".rstrip(),
             f"machine: {doc['machine']['cpu_model']}, {doc['machine']['cores']} cores, {doc['machine']['ram_gib']} GiB, "
             f"load avg at start {tuple(round(x, 2) for x in doc['machine']['loadavg_start'])}",
             f"{'target/phase':<16}{'out ev/s':>10}{'in ev/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
             f"{'batch':>7}{'ckpt p50':>9}{'TM cpu%':>8}{'TM MiB':>8}"]
    for name, t in doc["targets"].items():
        for phase, f in t.get("phases", {}).items():
            lat, res = f["latency_ms"], f.get("resources", {})
            tm = res.get("taskmanager", {})
            lines.append(f"{name + '/' + phase:<16}{_fmt(f['output_events_per_s']):>10}"
                         f"{_fmt(f['input_committed_events_per_s']):>10}{_fmt(lat['p50']):>9}{_fmt(lat['p95']):>9}"
                         f"{_fmt(lat['p99']):>9}{_fmt(f.get('avg_inference_batch')):>7}"
                         f"{_fmt(f['checkpoints']['duration_ms_p50']):>9}{_fmt(tm.get('cpu_pct')):>8}"
                         f"{_fmt(tm.get('rss_mib_max')):>8}")
        eo, st = t.get("exactly_once", {}), t.get("state", {})
        lines.append(f"  {name}: exactly one output per input: {eo.get('inputs')} in, {eo.get('missing')} missing, "
                     f"{eo.get('duplicated')} duplicated; state {_fmt(st.get('bytes_per_active_user'))} B/user "
                     f"({_fmt(st.get('bytes_per_active_user_over_baseline'))} over baseline) for "
                     f"{st.get('active_users')} users")
    if doc.get("model_ceiling"):
        m = doc["model_ceiling"]
        lines.append(f"model ceiling ({m['provider']}, 1 thread): " + ", ".join(
            f"b{r['batch']}={r['sequences_per_s']:,.0f}/s" for r in m["batches"]))
    if doc.get("python_ceiling"):
        p = doc["python_ceiling"]
        lines.append(f"Python-path ceiling (no PyFlink): {p['events_per_s']:,.0f} events/s; us/event " + ", ".join(
            f"{k}={v}" for k, v in p["us_per_event"].items()))
    lines.append("ratios: " + ", ".join(f"{k}={_fmt(v)}" for k, v in doc["ratios"].items()))
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def default_output(run: str, label: str) -> Path:
    return RESULTS_DIR / f"{run}{'-' + label if label else ''}.json"


# =============================================================================================
# The whole run
# =============================================================================================

def run_bench(cfg: IntentFlowConfig, opts: BenchOptions, out: Callable[[str], None] = print) -> dict:
    """Run every measurement once; always cancels the run's jobs and deletes its topics (also on Ctrl-C)."""
    from jobs.flink import FlinkRest, rest_url, stack_env, submit

    started = time.time()
    run = f"bench-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:4]}"
    env = stack_env()
    rest = FlinkRest(rest_url(env))
    jcfg = _isolated(cfg, run)
    machine = machine_description(rest)
    others = [j.get("name", j.get("jid")) for j in rest.jobs() if j.get("state") == "RUNNING"]
    machine["other_jobs_running"] = others
    if others:
        out(f"[bench] WARNING: other jobs are running on this cluster ({', '.join(map(str, others))}): they share "
            f"the TaskManager and the CPUs, so the figures are not representative (intentflow stop cancels the demo's)")
    pids = stack_pids(Path(env.get("INTENTFLOW_RUN_DIR", REPO_ROOT / ".run")))
    out(f"[bench] run {run}: cloning {opts.dataset} to {opts.users:,} users (at most {opts.max_events:,} events)")
    base = load_base_events(opts.dataset)
    pool = build_pool(base, opts.users, run, opts.max_events)
    out(f"[bench] {len(pool):,} events encoded in {pool.encode_s:.1f} s")
    k = jcfg.kafka
    targets = [Target("job", k.events_topic, k.recommendation_topic, k.consumer_group, seq_from_recommendation,
                      lambda: submit(jcfg),
                      topics=[k.events_topic, k.recommendation_topic, k.cart_topic, k.churn_topic, k.dlq_topic,
                              k.forget_topic, k.forgotten_topic])]
    if opts.engine:
        targets.append(Target("engine", f"{run}.engine.events", f"{run}.engine.out", f"{run}-engine",
                              seq_from_engine_output,
                              lambda: submit_engine(jcfg, run, f"{run}.engine.events", f"{run}.engine.out", env),
                              topics=[f"{run}.engine.events", f"{run}.engine.out"]))
    results: dict = {}
    model = python = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for target in targets:
            try:
                results[target.name] = run_target(target, pool, jcfg, opts, rest, pids, out)
            finally:
                _cleanup(rest, target, jcfg.kafka.bootstrap_servers, out)
        if opts.model:
            out(f"[bench] model ceiling, device {opts.device}, batches {list(opts.batch_sizes)}")
            model = model_ceiling(cfg, base, opts.device, opts.batch_sizes, opts.model_min_s)
        if opts.python:
            out(f"[bench] Python-path ceiling ({opts.python_s:.0f} s, no PyFlink, batches as the job's peak)")
            job_batch = results.get("job", {}).get("phases", {}).get("peak", {}).get("avg_inference_batch")
            python = python_ceiling(cfg, pool, opts.python_s, batch=round(job_batch) if job_batch else 128)
    finally:
        signal.signal(signal.SIGTERM, previous)
    machine["loadavg_end"] = os.getloadavg()
    return build_document(run, machine, jcfg, opts, pool, results, model, started, time.time(), python)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _isolated(cfg: IntentFlowConfig, run: str) -> IntentFlowConfig:
    """The job's config with this run's own topics, consumer group, transactional ids and job name."""
    return cfg.with_overrides({
        "kafka.events_topic": f"{run}.events", "kafka.recommendation_topic": f"{run}.recommendation",
        "kafka.cart_topic": f"{run}.cart", "kafka.churn_topic": f"{run}.churn", "kafka.dlq_topic": f"{run}.dlq",
        "kafka.forget_topic": f"{run}.forget", "kafka.forgotten_topic": f"{run}.forgotten",
        "kafka.consumer_group": run, "kafka.transactional_id_prefix": run, "flink.job_name": run,
        "kafka.startup_mode": "earliest-offset"})


def _cleanup(rest, target: Target, bootstrap: str, out) -> None:
    if target.job_id:
        try:
            rest.cancel(target.job_id)
            rest.wait_for_state(target.job_id, ["CANCELED", "FAILED", "FINISHED"], 60)
        except Exception as exc:  # noqa: BLE001 - keep cleaning up
            out(f"[bench] could not cancel {target.job_id}: {exc}")
    delete_topics(bootstrap, target.topics)
    out(f"[bench] {target.name}: job cancelled, topics deleted")


def write_document(doc: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"not JSON serializable: {type(v)}")
