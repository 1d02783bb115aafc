"""End to end: partitions that carry no data do not hold the event-time watermark back, and
late events follow the documented policy (scored like any other, counted as ``events_late``).

The job runs with parallelism 2 on a 4-partition topic; the Kafka source gives partitions 0 and 2
to one reader and 1 and 3 to the other. Real events go to partitions 0 and 2 only, so one reader
(and its watermark assigner) never sees a record. With ``with_idleness`` that input is marked idle
and the scorer's event-time clock (its output watermark, in both subtasks) follows the active
reader, whose clock is per partition: the slower partition's newest event time − out-of-orderness
− 1 ms (up to the faster one's, if the slower went idle first).
"""
from __future__ import annotations

import time
import zlib

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from jobs.consumers import read_topic
from jobs.datasets import read_events, resolve_dataset, time_ordered
from jobs.demo import SCORER_VERTEX, all_topics, create_topics, wait_accounted
from jobs.flink import job_vertex, submit
from schemas import EVENTS_SUBJECT, RECOMMENDATION_SUBJECT, SchemaStore

pytestmark = pytest.mark.e2e
EVENTS = 800
OUT_OF_ORDERNESS_MS = 5000


def produce_to(cfg, events, partitions) -> int:
    """Keyed like the replay (a user always lands on the same partition), but only on ``partitions``."""
    encode = SchemaStore().encoder(EVENTS_SUBJECT).encode
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "acks": "all", "enable.idempotence": True})
    delivered = []
    for e in events:
        part = partitions[zlib.crc32(e["user_id"].encode()) % len(partitions)]
        producer.produce(cfg.kafka.events_topic, encode(e), e["user_id"].encode(), partition=part,
                         on_delivery=lambda err, _m: delivered.append(err is None))
        producer.poll(0)
    producer.flush(60)
    return sum(delivered)


def test_idle_partitions_do_not_stall_the_watermark(stack, isolated_config):
    cfg = isolated_config("idle", "flink.parallelism=2", "flink.idle_source_timeout_ms=2000",
                          f"flink.max_out_of_orderness_ms={OUT_OF_ORDERNESS_MS}")
    create_topics(cfg, partitions=4)
    events = time_ordered(read_events(*resolve_dataset("taobao-sample")))[:EVENTS]
    job_id = submit(cfg)
    try:
        assert produce_to(cfg, events, [0, 2]) == EVENTS
        counters = wait_accounted(stack, job_id, EVENTS, timeout_s=240)
        assert counters.scored == EVENTS
        # The watermark follows the slower of the two partitions with data (per-partition event time,
        # udfs/event_time.py); the faster one's newest event is reachable only if the slower went idle first.
        newest = {}
        for e in events:
            part = (0, 2)[zlib.crc32(e["user_id"].encode()) % 2]
            newest[part] = max(newest.get(part, 0), e["event_time"])
        lowest = min(newest.values()) - OUT_OF_ORDERNESS_MS - 1
        highest = max(newest.values()) - OUT_OF_ORDERNESS_MS - 1
        vid = job_vertex(stack, job_id, SCORER_VERTEX)
        deadline, seen = time.time() + 90, ()
        while time.time() < deadline:
            seen = stack.operator_watermark(job_id, vid, SCORER_VERTEX)   # (min, max) over the 2 subtasks
            if seen and seen[0] == seen[1] and lowest <= seen[0] <= highest:
                break
            time.sleep(2)
        print(f"\n[idle] scorer event-time clock (min, max over subtasks) {seen}, expected in [{lowest}, {highest}] "
              f"(newest event time of the slower / faster partition with data - {OUT_OF_ORDERNESS_MS} ms - 1)")
        assert seen[0] == seen[1] and lowest <= seen[0] <= highest
    finally:
        stack.cancel(job_id)
        AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers}).delete_topics(all_topics(cfg))


def test_late_events_are_scored_and_counted(stack, isolated_config):
    """Events far behind the watermark are still scored (one recommendation each), never dropped,
    and the scorer's ``events_late`` counter counts exactly them."""
    cfg = isolated_config("late", "flink.idle_source_timeout_ms=2000", f"flink.max_out_of_orderness_ms={OUT_OF_ORDERNESS_MS}")
    create_topics(cfg, partitions=1)
    on_time = time_ordered(read_events(*resolve_dataset("taobao-sample")))[:400]
    watermark = max(e["event_time"] for e in on_time) - OUT_OF_ORDERNESS_MS - 1
    late = [dict(e, event_id=f"{e['event_id']}-late") for e in on_time if e["event_time"] < watermark - 60_000][:20]
    assert len(late) == 20
    job_id = submit(cfg)
    try:
        assert produce_to(cfg, on_time, [0]) == len(on_time)
        first = wait_accounted(stack, job_id, len(on_time), timeout_s=240)
        assert (first.scored, first.late) == (len(on_time), 0)
        vid = job_vertex(stack, job_id, SCORER_VERTEX)
        deadline = time.time() + 90
        while stack.operator_watermark(job_id, vid, SCORER_VERTEX) != (watermark, watermark):
            assert time.time() < deadline, "the scorer's watermark did not reach the on-time events"
            time.sleep(2)
        assert produce_to(cfg, late, [0]) == len(late)
        total = len(on_time) + len(late)
        counters = wait_accounted(stack, job_id, total, timeout_s=120)
        print(f"\n[late] {counters}")
        assert (counters.events_in, counters.scored, counters.late, counters.dead_lettered) == (total, total, 20, 0)
        deadline, recs = time.time() + 60, []
        while time.time() < deadline:      # readable once the checkpoint after them commits
            recs = read_topic(cfg, cfg.kafka.recommendation_topic, RECOMMENDATION_SUBJECT)
            if len(recs) >= total:
                break
            time.sleep(2)
        assert {r["event_id"] for r in recs} >= {e["event_id"] for e in late} and len(recs) == total
    finally:
        stack.cancel(job_id)
        AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers}).delete_topics(all_topics(cfg))
