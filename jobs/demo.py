"""The end-to-end run behind README command 1 (and the e2e test): job up, real events in, intents out.

``run_demo`` starts from empty topics so every count it prints belongs to this run: it cancels
a previous IntentFlow job, recreates the topics, submits the job to the local Flink cluster,
replays a real dataset, optionally sends a few deliberately malformed records (to show the
dead-letter path), waits until the job has accounted for every input record, and summarizes
what the downstream consumers can read (``read_committed``).
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient

from jobs.config import REPO_ROOT, IntentFlowConfig
from jobs.flink import FlinkRest, job_vertex, rest_url, running_jobs, stack_env, submit

MALFORMED = (  # (reason the job must give, key, value)
    ("bad_framing", b"demo-bad-1", b"this is not avro"),
    ("empty_value", b"demo-bad-2", b""),
    ("unknown_schema_id", b"demo-bad-3", b"\x00\x00\x00\x03\xe7garbage"),
)
DECODE_VERTEX = "decode-validate"
SCORER_VERTEX = "sequence-state-batched-scoring"


@dataclass
class JobCounters:
    """The job's own accounting, read from the Flink metrics REST API."""
    events_in: int = 0
    decoded: int = 0
    dead_lettered: int = 0
    scored: int = 0
    duplicates: int = 0
    expired: int = 0       # users whose state the inactivity TTL dropped
    forgotten: int = 0     # forget requests carried out
    late: int = 0          # events behind the watermark (scored like any other; counted, not a skip)
    dlq_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def accounted(self) -> int:
        return self.scored + self.duplicates + self.dead_lettered


def all_topics(cfg: IntentFlowConfig) -> list[str]:
    k = cfg.kafka
    return [k.events_topic, k.recommendation_topic, k.cart_topic, k.churn_topic, k.dlq_topic,
            k.forget_topic, k.forgotten_topic]


def recreate_topics(cfg: IntentFlowConfig, partitions: int = 4) -> None:
    """Delete and create the job's topics (empty topics make the run's counts exact)."""
    admin = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    existing = set(admin.list_topics(timeout=30).topics)
    doomed = [t for t in all_topics(cfg) if t in existing]
    for fut in admin.delete_topics(doomed, operation_timeout=30).values() if doomed else ():
        fut.result()
    deadline = time.time() + 60
    while doomed and set(doomed) & set(admin.list_topics(timeout=30).topics) and time.time() < deadline:
        time.sleep(0.5)
    create_topics(cfg, partitions)


def create_topics(cfg: IntentFlowConfig, partitions: int = 4) -> None:
    subprocess.run([sys.executable, str(REPO_ROOT / "deploy" / "topics.py"), "--bootstrap",
                    cfg.kafka.bootstrap_servers, "--partitions", str(partitions), "--wait", "60",
                    "--log-append-time", cfg.kafka.events_topic, *all_topics(cfg)], check=True)


_COUNTER_FIELDS = {"events_in": "events_in", "events_decoded": "decoded", "events_scored": "scored",
                   "skipped_duplicate": "duplicates", "users_expired": "expired", "users_forgotten": "forgotten",
                   "events_late": "late"}


def job_counters(rest: FlinkRest, job_id: str) -> JobCounters:
    """Sum the job's user metrics (Python metric groups are named after the operator)."""
    c = JobCounters()
    for vertex_name in (DECODE_VERTEX, SCORER_VERTEX):
        vid = job_vertex(rest, job_id, vertex_name)
        names = [n for n in rest.metric_names(job_id, vid)
                 if n.rsplit(".", 1)[-1] in _COUNTER_FIELDS or n.rsplit(".", 1)[-1].startswith("dlq_")]
        for name, value in rest.vertex_metrics(job_id, vid, names).items():
            short, v = name.rsplit(".", 1)[-1], int(value)
            if short.startswith("dlq_"):
                c.dead_lettered += v
                c.dlq_by_reason[short[4:]] = c.dlq_by_reason.get(short[4:], 0) + v
            else:
                setattr(c, _COUNTER_FIELDS[short], getattr(c, _COUNTER_FIELDS[short]) + v)
    return c


def wait_accounted(rest: FlinkRest, job_id: str, expected_in: int, timeout_s: float = 600,
                   progress=None) -> JobCounters:
    """Wait until the job has read ``expected_in`` records and scored/dead-lettered/skipped each."""
    deadline = time.time() + timeout_s
    counters = JobCounters()
    while time.time() < deadline:
        try:
            counters = job_counters(rest, job_id)
        except (KeyError, OSError):
            pass
        if progress:
            progress(counters)
        if counters.events_in >= expected_in and counters.accounted >= counters.events_in:
            return counters
        time.sleep(1.0)
    raise TimeoutError(f"job {job_id} accounted for {counters.accounted} of {expected_in} records "
                       f"within {timeout_s}s ({counters})")


def cancel_previous(rest: FlinkRest, cfg: IntentFlowConfig) -> None:
    for job in running_jobs(rest, cfg.flink.job_name):
        rest.cancel(job["jid"])
        rest.wait_for_state(job["jid"], ["CANCELED", "FAILED", "FINISHED"], 60)


def send_malformed(cfg: IntentFlowConfig) -> int:
    from jobs.replay import produce_raw
    for _, key, value in MALFORMED:
        produce_raw(cfg.kafka.bootstrap_servers, cfg.kafka.events_topic, key, value)
    return len(MALFORMED)


def run_demo(cfg: IntentFlowConfig, dataset: str = "taobao-sample", limit: int | None = None,
             malformed: bool = True, out=print) -> dict:
    """Run the whole pipeline once on a real dataset and return what was measured."""
    from jobs.consumers import summarize
    from jobs.datasets import resolve_dataset
    from jobs.replay import replay_file

    rest = FlinkRest(rest_url(stack_env()))
    started = time.time()
    cancel_previous(rest, cfg)
    out(f"[demo] recreating topics {', '.join(all_topics(cfg))}")
    recreate_topics(cfg)
    out("[demo] submitting the job to the Flink cluster (flink run -d -py jobs/intent_job.py)")
    job_id = submit(cfg)
    out(f"[demo] job {job_id} RUNNING — watch it at {rest.url}/#/job/running/{job_id}/overview")
    path, fmt = resolve_dataset(dataset)
    out(f"[demo] replaying {path.name} ({fmt}) to '{cfg.kafka.events_topic}'")
    replay_started = time.time()
    summary = replay_file(cfg, path, fmt, limit=limit, progress=sys.stderr.isatty())
    out(f"[demo] {summary}")
    bad = send_malformed(cfg) if malformed else 0
    if bad:
        out(f"[demo] sent {bad} deliberately malformed records (to show the dead-letter path)")
    expected = summary.delivered + bad
    last = [0.0]

    def progress(c: JobCounters) -> None:
        if time.time() - last[0] >= 5:
            last[0] = time.time()
            out(f"[demo] job: {c.events_in}/{expected} read, {c.scored} scored, {c.dead_lettered} dead-lettered")

    counters = wait_accounted(rest, job_id, expected, progress=progress)
    processing_s = time.time() - replay_started
    # Outputs become readable when the checkpoint that covers them commits its transactions.
    result = summarize(cfg, timeout_s=60)
    deadline = time.time() + 60
    while result["topics"][cfg.kafka.recommendation_topic]["count"] < counters.scored and time.time() < deadline:
        time.sleep(1)
        result = summarize(cfg, timeout_s=60)
    report = {
        "job_id": job_id, "dataset": dataset, "events_produced": summary.delivered, "malformed_sent": bad,
        "events_in": counters.events_in, "scored": counters.scored, "dead_lettered": counters.dead_lettered,
        "duplicates_skipped": counters.duplicates, "dlq_by_reason": counters.dlq_by_reason,
        "records_per_topic": {t: e["count"] for t, e in result["topics"].items()},
        "events_per_s": round(counters.events_in / processing_s, 1), "wall_s": round(time.time() - started, 1),
        "web_ui": rest.url, "summary": result,
    }
    return report
