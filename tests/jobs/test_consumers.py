"""Reference consumers: the pure decisions and settings (no broker)."""
from __future__ import annotations

from collections import Counter

from jobs.cli import build_parser, print_summary
from jobs.config import load_config
from jobs.consumers import cart_action, churn_action, consumer_config, recommendation_action
from schemas import CART_SUBJECT, CHURN_SUBJECT, RECOMMENDATION_SUBJECT

BASE = {"event_id": "e1", "event_time": 1511658000000, "scored_at": 1511658000100, "model_version": "m1"}


def roundtrip(store, subject, record):
    """Decisions see records as the decoder returns them (floats widened from Avro float)."""
    return store.decoder(subject).decode(store.encoder(subject).encode(record))


def test_cart_coupon_only_when_at_risk(store):
    at_risk = roundtrip(store, CART_SUBJECT, {**BASE, "user_id": "1", "item_id": "2268318",
                                              "p_cart_abandon": 0.912, "label": "at_risk"})
    assert cart_action(at_risk) == "send coupon to user 1 for item 2268318 (risk 0.91)"
    assert cart_action({**at_risk, "label": "likely_purchase"}) is None
    assert cart_action({**at_risk, "item_id": None}) == "send coupon to user 1 for item ? (risk 0.91)"


def test_churn_call_only_when_at_risk(store):
    rec = roundtrip(store, CHURN_SUBJECT, {**BASE, "user_id": "u7", "p_no_return_48h": 0.73, "label": "at_risk"})
    assert churn_action(rec) == "retention call: user u7 (p=0.73)"
    assert churn_action({**rec, "label": "engaged"}) is None


def test_recommendation_rerank_names_most_likely_next_action(store):
    rec = roundtrip(store, RECOMMENDATION_SUBJECT, {
        **BASE, "user_id": "42", "p_buy_session": 0.6, "p_buy_24h": 0.7, "label": "ready_to_buy",
        "next_action": {"view": 0.3, "purchase": 0.55, "add_to_cart": 0.15}, "top_categories": ["4", "8"]})
    assert recommendation_action(rec) == "re-rank for user 42: intent=ready_to_buy, next=purchase (0.55), categories=[4, 8]"
    assert recommendation_action({**rec, "next_action": {}, "top_categories": []}) == \
        "re-rank for user 42: intent=ready_to_buy, next=?, categories=[]"


def test_consumer_config_reads_committed_and_commits_after_acting():
    cfg = load_config(overrides=["kafka.bootstrap_servers=h:1"], environ={})
    conf = consumer_config(cfg, "g", **{"auto.offset.reset": "latest"})
    assert conf["bootstrap.servers"] == "h:1" and conf["group.id"] == "g"
    assert conf["isolation.level"] == "read_committed"
    assert conf["enable.auto.commit"] is True and conf["enable.auto.offset.store"] is False
    assert conf["auto.offset.reset"] == "latest"


def test_consume_arguments():
    args = build_parser().parse_args(["consume", "cart", "--max-messages", "5", "--timeout", "2", "--from-beginning"])
    assert (args.which, args.max_messages, args.timeout, args.from_beginning) == ("cart", 5, 2.0, True)


def test_print_summary():
    result = {
        "topics": {
            "intent.cart": {"count": 3, "undecodable": 1, "labels": Counter({"at_risk": 2}), "samples": [{"a": b"\x01"}]},
            "events.dlq": {"count": 0, "undecodable": 0, "labels": Counter(), "samples": []},
        },
        "missing": ["events.dlq"], "complete": False, "dlq_reasons": {},
    }
    lines: list[str] = []
    print_summary(result, out=lines.append)
    assert lines == ["intent.cart: 3 records, 1 undecodable [at_risk=2]", '    {"a": "01"}',
                     "events.dlq: (topic missing)",
                     "(summary incomplete: timed out before the end of every partition)"]
