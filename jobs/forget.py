"""Privacy requests: ask the running job to forget a user, and wait for its confirmation.

The job purges the user's sequence state and confirms on ``kafka.forgotten_topic`` in the same
checkpoint transaction (see :mod:`udfs.control`); a read_committed reader therefore sees the
confirmation only once the deletion is durable.
"""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from jobs.config import IntentFlowConfig
from jobs.replay import produce_raw
from schemas import FORGET_SUBJECT, FORGOTTEN_SUBJECT, SchemaStore


def request_forget(cfg: IntentFlowConfig, user_id: str, request_id: str | None = None) -> str:
    """Produce one ForgetUser request (keyed by user); returns its request id."""
    request_id = request_id or uuid.uuid4().hex
    value = SchemaStore().encoder(FORGET_SUBJECT).encode(
        {"request_id": request_id, "user_id": user_id, "requested_at": int(time.time() * 1000)})
    produce_raw(cfg.kafka.bootstrap_servers, cfg.kafka.forget_topic, user_id, value)
    return request_id


def await_confirmations(cfg: IntentFlowConfig, request_ids: set[str], timeout_s: float = 120) -> dict[str, dict]:
    """Read ``kafka.forgotten_topic`` (read_committed, from the beginning) until every request is confirmed."""
    c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"forget-{uuid.uuid4().hex[:8]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    topic = cfg.kafka.forgotten_topic
    decode = SchemaStore().decoder(FORGOTTEN_SUBJECT).decode
    found: dict[str, dict] = {}
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline = time.monotonic() + timeout_s
        while set(request_ids) - set(found) and time.monotonic() < deadline:
            for m in c.consume(100, timeout=1.0):
                if not m.error():
                    rec = decode(m.value())
                    if rec["request_id"] in request_ids:
                        found[rec["request_id"]] = rec
    finally:
        c.close()
    missing = set(request_ids) - set(found)
    if missing:
        raise TimeoutError(f"{len(missing)} forget request(s) not confirmed within {timeout_s}s: {sorted(missing)[:5]}")
    return found
