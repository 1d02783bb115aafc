"""Replay producer: canonical events -> Avro records on the events topic, in event-time order.

Records are keyed by ``user_id`` (utf-8), so one user's events share a partition and stay in
order for the job's keyed state. Values are Confluent-framed Avro with the latest events schema
id. The producer is idempotent with ``acks=all``, so broker retries neither lose nor duplicate
records. Kafka record timestamps are left to the producer (CreateTime = send time): event time
travels in the payload, and the record timestamp measures pipeline latency.

Pacing: as fast as possible (default), ``speedup`` (event time runs ``speedup`` times faster
than the wall clock: 60 = one hour of events per minute) or ``rate`` (events per second). Both
compute a due time per event and wait only when ahead of it by more than a few milliseconds, so
per-event cost stays a subtraction and a comparison and a slow stretch is caught up at full speed.
"""
from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from confluent_kafka import KafkaException, Producer

from jobs.config import IntentFlowConfig
from jobs.datasets import ReadStats, read_events, time_ordered
from schemas import EVENTS_SUBJECT, SchemaStore

WAIT_GRANULARITY_S = 0.005   # do not wait for less than this: sleeping is coarse anyway
POLL_EVERY = 1000            # serve delivery callbacks every N produced records
FLUSH_TIMEOUT_S = 90


@dataclass
class ReplaySummary:
    read: int = 0              # source rows read (replay_file) or events taken from the iterable (replay)
    produced: int = 0          # records handed to the producer
    delivered: int = 0         # acknowledged by the broker
    failed: int = 0            # delivery errors (see errors)
    skipped: Counter = field(default_factory=Counter)   # by reason: source rows + encode errors
    errors: Counter = field(default_factory=Counter)    # delivery error name -> count
    wall_s: float = 0.0
    topic: str = ""
    interrupted: bool = False

    @property
    def events_per_s(self) -> float:
        return self.delivered / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {"topic": self.topic, "read": self.read, "produced": self.produced, "delivered": self.delivered,
                "failed": self.failed, "skipped": dict(self.skipped), "errors": dict(self.errors),
                "wall_s": round(self.wall_s, 3), "events_per_s": round(self.events_per_s, 1),
                "interrupted": self.interrupted}

    def __str__(self) -> str:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items()))
        return (f"replay -> {self.topic}: read {self.read}, produced {self.produced}, delivered {self.delivered}, "
                f"failed {self.failed}{f' ({errors})' if errors else ''}; skipped: {skipped}; "
                f"{self.wall_s:.2f} s, {self.events_per_s:,.0f} events/s{' (interrupted)' if self.interrupted else ''}")


def producer_config(cfg: IntentFlowConfig, **extra) -> dict:
    """The replay producer's librdkafka settings; ``extra`` (librdkafka names) overrides them."""
    conf = {
        "bootstrap.servers": cfg.kafka.bootstrap_servers,
        "client.id": "intentflow-replay",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 20,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 60_000,   # an unreachable broker fails the replay in a minute, not five
    }
    conf.update(extra)
    return conf


def replay(
    cfg: IntentFlowConfig,
    events: Iterable[dict],
    *,
    topic: str | None = None,
    speedup: float | None = None,
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    total: int | None = None,
    producer_conf: dict | None = None,
) -> ReplaySummary:
    """Produce ``events`` (already in event-time order) and wait for every delivery report."""
    if speedup is not None and rate is not None:
        raise ValueError("give speedup or rate, not both")
    if (speedup is not None and speedup <= 0) or (rate is not None and rate <= 0):
        raise ValueError("speedup and rate must be > 0")
    from tqdm import tqdm

    topic = topic or cfg.kafka.events_topic
    summary = ReplaySummary(topic=topic)
    encode = SchemaStore().encoder(EVENTS_SUBJECT).encode
    producer = Producer(producer_conf or producer_config(cfg))

    def on_delivery(err, _msg):
        if err is None:
            summary.delivered += 1
        else:
            summary.failed += 1
            summary.errors[err.name()] += 1

    if limit is not None:
        events = itertools.islice(events, limit)
        total = min(total, limit) if total is not None else limit
    # Due time of an event in seconds after the first one: None = as fast as possible.
    ms_per_s = speedup * 1000.0 if speedup else None
    bar = tqdm(total=total, unit="ev", disable=not progress, mininterval=0.5, smoothing=0.1)
    start = time.monotonic()
    first_ms = None
    since_poll = 0
    try:
        for i, event in enumerate(events):
            summary.read = i + 1
            if ms_per_s is not None:
                if first_ms is None:
                    first_ms = event["event_time"]
                due = (event["event_time"] - first_ms) / ms_per_s
            else:
                due = i / rate if rate else None
            if due is not None:
                ahead = due - (time.monotonic() - start)
                if ahead > WAIT_GRANULARITY_S:
                    producer.poll(0)
                    time.sleep(ahead)
            try:
                value = encode(event)
            except Exception as exc:  # a record the schema rejects; canonical input is not pre-checked for all of it
                summary.skipped[f"encode_error:{type(exc).__name__}"] += 1
                continue
            key = event["user_id"].encode()
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.05)
            summary.produced += 1
            since_poll += 1
            if since_poll >= POLL_EVERY:
                producer.poll(0)
                bar.update(since_poll)
                since_poll = 0
        bar.update(since_poll)
    except KeyboardInterrupt:   # Ctrl-C stops producing; what was produced is still flushed and counted
        summary.interrupted = True
    try:
        remaining = producer.flush(FLUSH_TIMEOUT_S)   # > message.timeout.ms: every record gets its report
        if remaining:
            summary.errors["not_flushed"] += remaining
            summary.failed += remaining
    finally:
        bar.close()
        summary.wall_s = time.monotonic() - start
    return summary


def replay_file(cfg: IntentFlowConfig, path, fmt: str, **kwargs) -> ReplaySummary:
    """Read a dataset file, put it in event-time order and replay it; source skips join the summary."""
    stats = ReadStats()
    events = time_ordered(read_events(path, fmt, stats))
    summary = replay(cfg, events, total=len(events), **kwargs)
    summary.read = stats.rows_read
    summary.skipped.update(stats.skipped)
    return summary


def produce_raw(bootstrap: str, topic: str, key: bytes | str | None, value: bytes | None, timeout_s: float = 30) -> None:
    """Produce one record as given (e.g. undecodable bytes for DLQ tests); raise if not delivered."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    result: list = []
    producer.produce(topic, value, key.encode() if isinstance(key, str) else key,
                     on_delivery=lambda err, msg: result.append(err))
    if producer.flush(timeout_s) or not result:
        raise KafkaException(f"record to {topic} not delivered within {timeout_s}s")
    if result[0] is not None:
        raise KafkaException(result[0])
