"""End to end: a user's state ends by inactivity (event-time TTL) or by a forget request.

Real Taobao events in three phases through one running job (TTL set to one day of event time):

1. the first 1,500 events (195 users, ~10 h of event time);
2. forget requests for two of those users, one for a user never seen, and one malformed request;
3. 300 events of *other* users from more than a day later: the watermark passes every phase-1
   user's last activity + TTL, so each remaining phase-1 user's state expires;
4. 300 later events of phase-1 users coming back.

Phase 4's streamed scores must equal an offline replay that starts those users from empty state —
and differ from one that keeps their history, so the check can fail.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka.admin import AdminClient

from jobs.config import ScoringConfig
from jobs.consumers import read_topic
from jobs.datasets import read_events, resolve_dataset, time_ordered
from jobs.demo import all_topics, create_topics, job_counters, wait_accounted
from jobs.flink import submit
from jobs.forget import await_confirmations, request_forget
from jobs.replay import produce_raw, replay
from schemas import DLQ_SUBJECT, RECOMMENDATION_SUBJECT, SchemaStore
from udfs.decode import parse_event
from udfs.scoring import IntentEngine
from udfs.state import UserState

pytestmark = pytest.mark.e2e
TTL_S = 86_400
FIRST = 1500
LATER = 300


def phases():
    events = time_ordered(read_events(*resolve_dataset("taobao-sample")))
    first = events[:FIRST]
    users = {e["user_id"] for e in first}
    later = [e for e in events if e["event_time"] > first[-1]["event_time"] + (TTL_S + 3600) * 1000]
    clock = [e for e in later if e["user_id"] not in users][:LATER]
    back = [e for e in later if e["user_id"] in users and e["event_time"] > clock[-1]["event_time"]][:LATER]
    return first, users, clock, back


def offline(model, events, history=()):
    """Scores of ``events`` per event id, each user starting from ``history`` (their earlier events) or nothing."""
    engine = IntentEngine(model, ScoringConfig())
    by_user = defaultdict(list)
    for e in [*history, *events]:
        by_user[e["user_id"]].append(parse_event(e))
    wanted = {e["event_id"] for e in events}
    scores = {}
    for evs in by_user.values():
        st = UserState()
        for ev in evs:
            engine.add(st, ev)
        for s in engine.score([st])[0]:
            if s.pending.event_id in wanted:
                scores[s.pending.event_id] = (s.p_buy_session, s.p_buy_24h)
    return scores


@pytest.fixture(scope="module")
def lifecycle(stack, isolated_config):
    cfg = isolated_config("life", f"scoring.user_ttl_s={TTL_S}", "flink.idle_source_timeout_ms=1000")
    create_topics(cfg, partitions=4)
    first, users, clock, back = phases()
    returning = sorted({e["user_id"] for e in back})
    forget = returning[:2]
    job_id = submit(cfg)
    try:
        assert replay(cfg, first, progress=False).delivered == FIRST
        wait_accounted(stack, job_id, FIRST, timeout_s=180)

        requests = {request_forget(cfg, u): u for u in [*forget, "never-seen-user"]}
        produce_raw(cfg.kafka.bootstrap_servers, cfg.kafka.forget_topic, b"bad-request", b"not a request")
        confirmed = await_confirmations(cfg, set(requests), timeout_s=120)

        assert replay(cfg, clock, progress=False).delivered == LATER
        deadline, counters = time.time() + 120, None
        while time.time() < deadline:
            counters = job_counters(stack, job_id)
            if counters.expired >= len(users) - len(forget) and counters.scored >= FIRST + LATER:
                break
            time.sleep(2)
        expired_before_return = counters.expired

        assert replay(cfg, back, progress=False).delivered == LATER
        counters = wait_accounted(stack, job_id, FIRST + 2 * LATER, timeout_s=180)
        deadline = time.time() + 60
        while True:
            recs = read_topic(cfg, cfg.kafka.recommendation_topic, RECOMMENDATION_SUBJECT)
            if len(recs) >= FIRST + 2 * LATER or time.time() > deadline:
                break
            time.sleep(2)
        dlq = read_topic(cfg, cfg.kafka.dlq_topic, DLQ_SUBJECT)
        print(f"\n[lifecycle] users in phase 1: {len(users)}, forgotten: {len(forget)}, expired before "
              f"their return: {expired_before_return}, returning users: {len(returning)}, counters: {counters}")
        yield dict(cfg=cfg, users=users, forget=forget, requests=requests, confirmed=confirmed, first=first,
                   back=back, expired=expired_before_return, counters=counters, recs=recs, dlq=dlq)
    finally:
        stack.cancel(job_id)
        AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers}).delete_topics(all_topics(cfg))


def test_forget_requests_are_confirmed_with_what_was_purged(lifecycle):
    first = lifecycle["first"]
    by_user = {rec["user_id"]: rec for rec in lifecycle["confirmed"].values()}
    for user in lifecycle["forget"]:
        held = sum(e["user_id"] == user for e in first)
        assert by_user[user]["had_state"] is True
        assert by_user[user]["events_forgotten"] == min(held, 50)
    assert by_user["never-seen-user"]["had_state"] is False
    assert by_user["never-seen-user"]["events_forgotten"] == 0


def test_a_malformed_request_is_dead_lettered_not_counted_as_an_event(lifecycle):
    cfg, dlq, counters = lifecycle["cfg"], lifecycle["dlq"], lifecycle["counters"]
    assert [(d["reason"], d["source_topic"], d["raw_key"]) for d in dlq] == \
        [("bad_framing", cfg.kafka.forget_topic, b"bad-request")]
    assert counters.dead_lettered == 0                     # the events' accounting is untouched
    assert counters.events_in == counters.scored == FIRST + 2 * LATER
    assert counters.forgotten == len(lifecycle["requests"])


def test_inactive_users_expire_once_the_watermark_passes_their_ttl(lifecycle):
    # every phase-1 user except the forgotten ones (their state and expiry timer are already gone)
    assert lifecycle["expired"] == len(lifecycle["users"]) - len(lifecycle["forget"])


def test_returning_users_are_scored_from_empty_state(lifecycle, model):
    back, recs = lifecycle["back"], lifecycle["recs"]
    got = {r["event_id"]: (r["p_buy_session"], r["p_buy_24h"]) for r in recs}
    assert len(got) == len(recs) == FIRST + 2 * LATER      # every event scored exactly once
    fresh = offline(model, back)
    assert max(abs(a - b) for e in fresh for a, b in zip(got[e], fresh[e])) <= 1e-4
    # The check can fail: keeping the history would have given other scores.
    history = [e for e in lifecycle["first"] if e["user_id"] in {b["user_id"] for b in back}]
    kept = offline(model, back, history)
    assert max(abs(a - b) for e in kept for a, b in zip(got[e], kept[e])) > 1e-3
    assert Counter(r["user_id"] for r in recs if r["event_id"] in fresh) == Counter(e["user_id"] for e in back)
