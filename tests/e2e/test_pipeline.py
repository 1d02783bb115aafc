"""End to end on the real stack: real Taobao events through Kafka, the Flink cluster and the model.

Asserts exact counts on every output topic and the DLQ, the accounting invariant
(events in = scored + dead-lettered + skipped duplicates), and that every streamed score equals
the offline replay of the same events through the same engine (|Δ| ≤ 1e-4).
"""
from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka.admin import AdminClient

from jobs.config import ScoringConfig
from jobs.consumers import read_topic
from jobs.datasets import read_events, resolve_dataset, time_ordered
from jobs.demo import all_topics, create_topics, wait_accounted
from jobs.flink import submit
from jobs.replay import produce_raw, replay
from schemas import (CART_SUBJECT, CHURN_SUBJECT, DLQ_SUBJECT, RECOMMENDATION_SUBJECT, SchemaStore)
from udfs.decode import parse_event
from udfs.model import IntentModel
from udfs.scoring import IntentEngine, IntentRouter
from udfs.state import UserState

pytestmark = pytest.mark.e2e
SLICE = 3000          # the first 3,000 events (event-time order) of the real Taobao sample
RESENT = 25           # the last 25 of them are sent twice: duplicates, skipped and counted
EXTRA = [             # (writer schema id, event): older (v0) and newer (v2) writers of the events subject,
                      # and a v1 event whose user id is beyond 64 bits (ids stay strings end to end)
    (1, dict(event_id="big-id-1", user_id="184467440737095516161234567890", event_type="view", item_id="2268318",
             category_id="2520377", price=None, query=None, session_id=None, event_time=1511544072000,
             source="app-2.0")),
    (6, dict(event_id="evo-v0", user_id="evo-user-v0", event_type="add_to_cart", item_id="2268318",
             category_id="2520377", price=None, event_time=1511544070000, source="app-1.0")),
    (7, dict(event_id="evo-v2", user_id="evo-user-v2", event_type="view", item_id="2268318", category_id="2520377",
             price=12.5, query=None, session_id="s-1", event_time=1511544071000, source="app-3.0",
             device="ios", app_version="3.0.1")),
]


def _invalid(reason: str, n: int, **change) -> tuple[str, bytes, bytes]:
    """Well-framed Avro of the current schema whose content the job must refuse."""
    event = dict(event_id=f"invalid-{n}", user_id=f"invalid-user-{n}", event_type="view", item_id="1",
                 category_id="2", price=None, query=None, session_id=None, event_time=1511544073000, source="e2e")
    event.update(change)
    value = SchemaStore().encoder("events-value").encode(event)
    if reason == "invalid_utf8":
        value = value.replace(b"ZQZQ", b"\xff\xfe\xff\xfe")
    return reason, f"bad-{n}".encode(), value


MALFORMED = [         # (expected reason, key, value): every reason a producer can cause, through the real job
    ("bad_framing", b"bad-1", b"definitely not avro"),
    ("empty_value", b"bad-2", None),
    ("empty_value", b"bad-3", b""),
    ("unknown_schema_id", b"bad-4", b"\x00\x00\x00\x07\xd0\x02\x04"),
    ("bad_avro", b"bad-5", b"\x00\x00\x00\x00\x01\xff\xff\xff\xff\xff"),
    _invalid("missing_user_id", 6, user_id=""),
    _invalid("user_id_too_long", 7, user_id="u" * 129),
    _invalid("missing_event_id", 8, event_id=""),
    _invalid("field_too_long", 9, query="q" * 2049),
    _invalid("invalid_utf8", 10, user_id="user-ZQZQ"),
    _invalid("bad_event_time", 11, event_time=0),
    _invalid("bad_event_time", 12, event_time=-5),
    _invalid("bad_event_time", 13, event_time=1511544073),            # seconds, declared millis
    _invalid("bad_event_time", 14, event_time=1511544073000000),      # micros
    _invalid("bad_price", 15, price=float("nan")),
]


def read_all(cfg, topic: str, subject: str, store: SchemaStore) -> list[dict]:
    return read_topic(cfg, topic, subject)


@pytest.fixture(scope="module")
def run(stack, isolated_config):
    cfg = isolated_config("e2e")
    create_topics(cfg, partitions=4)
    path, fmt = resolve_dataset("taobao-sample")
    events = time_ordered(read_events(path, fmt))[:SLICE]
    job_id = submit(cfg)
    try:
        sent = replay(cfg, events, progress=False)
        assert sent.delivered == SLICE and sent.failed == 0
        again = replay(cfg, events[-RESENT:], progress=False)
        assert again.delivered == RESENT
        store = SchemaStore()
        for schema_id, event in EXTRA:
            produce_raw(cfg.kafka.bootstrap_servers, cfg.kafka.events_topic, event["user_id"],
                        store.encoder("events-value", schema_id).encode(event))
        for _, key, value in MALFORMED:
            produce_raw(cfg.kafka.bootstrap_servers, cfg.kafka.events_topic, key, value)
        counters = wait_accounted(stack, job_id, SLICE + len(EXTRA) + RESENT + len(MALFORMED), timeout_s=300)
        events = events + [e for _, e in EXTRA]
        # Wait for the checkpoint that commits the last transactions, then read everything.
        deadline = time.time() + 60
        while True:
            outputs = {name: read_all(cfg, topic, subject, store) for name, topic, subject in (
                ("recommendation", cfg.kafka.recommendation_topic, RECOMMENDATION_SUBJECT),
                ("cart", cfg.kafka.cart_topic, CART_SUBJECT),
                ("churn", cfg.kafka.churn_topic, CHURN_SUBJECT),
                ("dlq", cfg.kafka.dlq_topic, DLQ_SUBJECT))}
            if len(outputs["recommendation"]) >= SLICE + len(EXTRA) or time.time() > deadline:
                break
            time.sleep(2)
        yield cfg, stack, job_id, events, counters, outputs
    finally:
        stack.cancel(job_id)
        AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers}).delete_topics(all_topics(cfg))


def test_job_runs_with_named_operators(run):
    _, rest, job_id, *_ = run
    job = rest.job(job_id)
    assert job["state"] == "RUNNING"
    names = " | ".join(v["name"] for v in job["vertices"])
    for op in ("decode-validate", "event-time-watermarks", "sequence-state-batched-scoring"):
        assert op in names, names


def test_accounting_invariant(run):
    _, _, _, _, counters, outputs = run
    assert counters.events_in == SLICE + len(EXTRA) + RESENT + len(MALFORMED)
    assert counters.scored == SLICE + len(EXTRA)
    assert counters.duplicates == RESENT
    assert counters.dead_lettered == len(MALFORMED)
    # one web-UI counter per reason (dlq_<reason> on decode-validate), each with its exact count
    assert {r: n for r, n in counters.dlq_by_reason.items() if n} == Counter(r for r, _, _ in MALFORMED)
    assert counters.events_in == counters.scored + counters.dead_lettered + counters.duplicates


def test_dead_letters_have_reasons_and_raw_bytes(run):
    cfg, *_, outputs = run
    dlq = outputs["dlq"]
    assert Counter(d["reason"] for d in dlq) == Counter(reason for reason, _, _ in MALFORMED)
    by_key = {d["raw_key"]: d for d in dlq}
    for reason, key, value in MALFORMED:
        d = by_key[key]
        assert d["reason"] == reason and d["raw_value"] == value
        assert d["source_topic"] == cfg.kafka.events_topic and d["source_offset"] >= 0
        assert 0 <= d["source_partition"] < 4 and d["detail"]


def test_exact_counts_per_topic(run):
    _, _, _, events, _, outputs = run
    assert len(outputs["recommendation"]) == SLICE + len(EXTRA)
    assert len({r["event_id"] for r in outputs["recommendation"]}) == SLICE + len(EXTRA)  # each exactly once
    n_cart = sum(e["event_type"] == "add_to_cart" for e in events)
    assert len(outputs["cart"]) == n_cart
    assert all(r["_key"] == r["user_id"].encode() for r in outputs["recommendation"])


def test_user_id_beyond_64_bits_is_kept_exactly(run):
    *_, outputs = run
    big = [r for r in outputs["recommendation"] if r["event_id"] == "big-id-1"]
    assert len(big) == 1
    assert big[0]["user_id"] == "184467440737095516161234567890"
    assert big[0]["_key"] == b"184467440737095516161234567890"


def test_older_and_newer_writer_schemas_are_scored(run):
    """Records written with schema v0 (fields removed) and v2 (fields added) decode with the writer's schema."""
    *_, outputs = run
    got = {r["event_id"]: r for r in outputs["recommendation"]}
    assert {"evo-v0", "evo-v2"} <= set(got)
    assert {r["event_id"] for r in outputs["cart"]} >= {"evo-v0"}


def test_streamed_scores_equal_offline_replay(run, model):
    """The same events through the same engine offline give the same scores and the same routing."""
    _, _, _, events, _, outputs = run
    cfg = ScoringConfig()
    engine, router = IntentEngine(model, cfg), IntentRouter(cfg, SchemaStore(), model.version)
    expected, churn_expected = {}, 0
    by_user = defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append(parse_event(e))
    for user, evs in by_user.items():
        st = UserState()
        for ev in evs:
            engine.add(st, ev)
        for s in engine.score([st])[0]:
            expected[s.pending.event_id] = s
            churn_expected += router.route(user, st, s, now_ms=0).churn is not None
    got = {r["event_id"]: r for r in outputs["recommendation"]}
    assert set(got) == set(expected)
    worst = max(max(abs(got[i]["p_buy_session"] - s.p_buy_session), abs(got[i]["p_buy_24h"] - s.p_buy_24h))
                for i, s in expected.items())
    assert worst <= 1e-4
    carts = {r["event_id"]: r for r in outputs["cart"]}
    assert max(abs(carts[i]["p_cart_abandon"] - expected[i].p_cart_abandon) for i in carts) <= 1e-4
    assert len(outputs["churn"]) == churn_expected
    assert all(got[i]["top_categories"] == list(s.top_categories) for i, s in itertools.islice(expected.items(), 500))
