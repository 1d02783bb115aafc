"""Reference consumers of the intent topics: what a downstream service does with the scores.

Each consumer reads one output topic with ``isolation.level=read_committed`` (the job writes
transactionally, so only records of committed checkpoints are seen), decodes with the schema
store and acts: here by printing the action instead of sending the email or placing the call.

Offsets are committed at least once: ``enable.auto.commit`` stays on but
``enable.auto.offset.store`` is off, and a record's offset is stored only after its action ran,
so a crash repeats an action rather than skipping one.

The decision functions (:func:`cart_action`, :func:`churn_action`,
:func:`recommendation_action`) are pure: record dict in, action text or None out.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from jobs.config import IntentFlowConfig
from schemas import (CART_SUBJECT, CHURN_SUBJECT, DLQ_SUBJECT, RECOMMENDATION_SUBJECT, DecodeError,
                     SchemaStore)

SAMPLES_PER_TOPIC = 3


# --- decisions (pure) -------------------------------------------------------------------------

def cart_action(record: dict) -> str | None:
    """A coupon for a cart the model expects to be abandoned."""
    if record.get("label") != "at_risk":
        return None
    item = record.get("item_id") or "?"
    return f"send coupon to user {record['user_id']} for item {item} (risk {record['p_cart_abandon']:.2f})"


def churn_action(record: dict) -> str | None:
    """A retention call when a user flips to at_risk."""
    if record.get("label") != "at_risk":
        return None
    return f"retention call: user {record['user_id']} (p={record['p_no_return_48h']:.2f})"


def recommendation_action(record: dict) -> str | None:
    """Every score re-ranks the user's recommendations: intent, most likely next action, categories."""
    next_action = record.get("next_action") or {}
    if next_action:
        action, p = max(next_action.items(), key=lambda kv: kv[1])
        nxt = f"{action} ({p:.2f})"
    else:
        nxt = "?"
    cats = ", ".join(record.get("top_categories") or [])
    return f"re-rank for user {record['user_id']}: intent={record['label']}, next={nxt}, categories=[{cats}]"


# --- consumers ---------------------------------------------------------------------------------

def consumer_config(cfg: IntentFlowConfig, group_id: str, **extra) -> dict:
    """Plain librdkafka settings for a reference consumer; ``extra`` (librdkafka names) overrides."""
    conf = {
        "bootstrap.servers": cfg.kafka.bootstrap_servers,
        "group.id": group_id,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
    }
    conf.update(extra)
    return conf


def consume(conf: dict, topic: str, subject: str, act: Callable[[dict], str | None], *,
            max_messages: int | None = None, timeout_s: float | None = None, from_beginning: bool = False,
            out: Callable[[str], None] = print) -> Counter:
    """Read ``topic``, decode, act; stop after ``max_messages`` records or ``timeout_s`` without one.

    Returns counts: ``records``, ``actions``, ``undecodable``.
    """
    decode = SchemaStore().decoder(subject).decode
    counts: Counter = Counter()
    consumer = Consumer(conf)

    def rewind(c, partitions):
        for p in partitions:
            p.offset = OFFSET_BEGINNING
        c.assign(partitions)

    consumer.subscribe([topic], on_assign=rewind) if from_beginning else consumer.subscribe([topic])
    last = time.monotonic()
    try:
        while max_messages is None or counts["records"] < max_messages:
            msg = consumer.poll(0.5)
            if msg is None:
                if timeout_s is not None and time.monotonic() - last >= timeout_s:
                    break
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    out(f"consumer error: {msg.error()}")
                continue
            last = time.monotonic()
            counts["records"] += 1
            try:
                action = act(decode(msg.value()))
            except DecodeError as exc:
                counts["undecodable"] += 1
                out(f"skip undecodable record {msg.topic()}[{msg.partition()}]@{msg.offset()}: {exc.reason}")
                action = None
            if action:
                counts["actions"] += 1
                out(action)
            consumer.store_offsets(msg)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()   # commits the stored offsets
    return counts


def read_topic(cfg: IntentFlowConfig, topic: str, subject: str, timeout_s: float = 30.0) -> list[dict]:
    """Every committed record of ``topic`` (read_committed, beginning to the end offsets), decoded,
    with the record key under ``_key``. For checks and tests that need a topic's whole content."""
    from confluent_kafka import TopicPartition

    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"{topic}-reader",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=timeout_s).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        ends = {p.partition: c.get_watermark_offsets(p, timeout=timeout_s)[1] for p in parts}
        c.assign(parts)
        decode = SchemaStore().decoder(subject).decode
        out, done = [], {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for m in c.consume(500, timeout=1.0):
                if m.error():
                    continue
                out.append(decode(m.value()) | {"_key": m.key()})
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
            positions = c.position([TopicPartition(topic, p) for p in ends])
            done |= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
        return out
    finally:
        c.close()


def cart_consumer(cfg: IntentFlowConfig, **kwargs) -> Counter:
    """Coupons for carts at risk of abandonment."""
    return consume(consumer_config(cfg, "intentflow-cart-coupons"), cfg.kafka.cart_topic, CART_SUBJECT,
                   cart_action, **kwargs)


def churn_consumer(cfg: IntentFlowConfig, **kwargs) -> Counter:
    """Retention calls for users at risk of not returning."""
    return consume(consumer_config(cfg, "intentflow-retention"), cfg.kafka.churn_topic, CHURN_SUBJECT,
                   churn_action, **kwargs)


def recommendation_consumer(cfg: IntentFlowConfig, **kwargs) -> Counter:
    """Re-ranks recommendations on every score."""
    return consume(consumer_config(cfg, "intentflow-recommender"), cfg.kafka.recommendation_topic,
                   RECOMMENDATION_SUBJECT, recommendation_action, **kwargs)


CONSUMERS = {"recommendation": recommendation_consumer, "cart": cart_consumer, "churn": churn_consumer}


# --- summary -----------------------------------------------------------------------------------

def summarize(cfg: IntentFlowConfig, timeout_s: float = 30.0) -> dict:
    """Read the three intent topics and the DLQ from the beginning to their (committed) end.

    Uses manual assignment (no group, no commits) and partition EOF, which under read_committed
    is signalled at the last stable offset. Returns per topic: ``count``, ``undecodable``,
    ``labels`` (label -> count; DLQ: reason -> count), ``samples`` (a few decoded records);
    ``dlq_reasons`` (reason -> count); ``missing`` lists topics that do not exist; ``complete`` is
    False when ``timeout_s`` ran out before every partition reached its end.
    """
    store = SchemaStore()
    subjects = {cfg.kafka.recommendation_topic: RECOMMENDATION_SUBJECT, cfg.kafka.cart_topic: CART_SUBJECT,
                cfg.kafka.churn_topic: CHURN_SUBJECT, cfg.kafka.dlq_topic: DLQ_SUBJECT}
    decoders = {t: store.decoder(s).decode for t, s in subjects.items()}
    consumer = Consumer(consumer_config(cfg, "intentflow-summary", **{
        "enable.auto.commit": False, "enable.partition.eof": True}))
    result = {"topics": {t: {"count": 0, "undecodable": 0, "labels": Counter(), "samples": []} for t in subjects},
              "missing": [], "complete": True}
    try:
        metadata = consumer.list_topics(timeout=min(10.0, timeout_s))
        assignment = []
        for t in subjects:
            tm = metadata.topics.get(t)
            if tm is None or tm.error is not None:
                result["missing"].append(t)
                continue
            assignment += [TopicPartition(t, p, OFFSET_BEGINNING) for p in tm.partitions]
        consumer.assign(assignment)
        pending = {(tp.topic, tp.partition) for tp in assignment}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic(), msg.partition()))
                continue
            entry = result["topics"][msg.topic()]
            entry["count"] += 1
            try:
                record = decoders[msg.topic()](msg.value())
            except DecodeError:
                entry["undecodable"] += 1
                continue
            entry["labels"][record.get("label", record.get("reason"))] += 1
            if len(entry["samples"]) < SAMPLES_PER_TOPIC:
                entry["samples"].append(record)
        result["complete"] = not pending
        result["dlq_reasons"] = dict(result["topics"][cfg.kafka.dlq_topic]["labels"])
    finally:
        consumer.close()
    return result
