"""Batched incremental scoring: results do not depend on batching, rounds, or who else is in the batch."""
import csv
import itertools

import numpy as np
import pytest

from jobs.config import ScoringConfig
from udfs.contract import EVENT_TYPES, TYPE_CODE
from udfs.decode import Event
from udfs.scoring import IntentEngine, IntentRouter
from udfs.state import UserState

TAOBAO_TYPES = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}


@pytest.fixture(scope="module")
def users(data_dir):
    """The first 6 users of the real Taobao sample, 40 events each, in time order."""
    rows = csv.reader(open(data_dir / "taobao_userbehavior" / "UserBehavior_sample.csv"))
    out = {}
    for uid, group in itertools.groupby(rows, key=lambda r: r[0]):
        evs = sorted(group, key=lambda r: int(r[4]))[:40]
        out[uid] = [Event(uid, f"{uid}-{i}", TYPE_CODE[TAOBAO_TYPES[r[3]]], r[1], r[2], None, int(r[4]) * 1000, 0, i)
                    for i, r in enumerate(evs)]
        if len(out) == 6:
            return out


def flatten(results):
    return np.array([[s.p_buy_session, s.p_buy_24h, s.p_cart_abandon, s.p_no_return_48h, *s.next_action]
                     for s in results])


def score_one_by_one(engine, events):
    st, out = UserState(), []
    for ev in events:
        engine.add(st, ev)
        out += engine.score([st])[0]
    return out, st


def test_rounds_equal_one_by_one(model, users):
    engine = IntentEngine(model, ScoringConfig())
    events = next(iter(users.values()))
    single, st_single = score_one_by_one(engine, events)
    st = UserState()
    for ev in events:                 # all 40 pending at once: 40 rounds in one call
        engine.add(st, ev)
    batched = engine.score([st])[0]
    assert [s.pending.event_id for s in batched] == [ev.event_id for ev in events]
    assert np.abs(flatten(batched) - flatten(single)).max() <= 1e-5
    assert np.abs(np.frombuffer(st.h, np.float32) - np.frombuffer(st_single.h, np.float32)).max() <= 1e-5
    assert [s.top_categories for s in batched] == [s.top_categories for s in single]


def test_scores_do_not_depend_on_the_rest_of_the_batch(model, users):
    alone = {u: flatten(score_one_by_one(IntentEngine(model, ScoringConfig()), evs)[0]) for u, evs in users.items()}
    for max_batch in (1, 3, 512):
        engine = IntentEngine(model, ScoringConfig(max_batch=max_batch))
        states = {u: UserState() for u in users}
        got = {u: [] for u in users}
        # interleave users and flush at irregular points, like the streaming job does
        for step in range(40):
            for u, evs in users.items():
                if step < len(evs):
                    engine.add(states[u], evs[step])
            if step % (2 + max_batch % 3) == 1 or step == 39:
                for u, res in zip(states, engine.score(list(states.values()))):
                    got[u] += res
        for u in users:
            assert np.abs(flatten(got[u]) - alone[u]).max() <= 1e-5, (u, max_batch)


def test_outputs_are_probabilities(model, users):
    engine = IntentEngine(model, ScoringConfig())
    res = flatten(score_one_by_one(engine, next(iter(users.values())))[0])
    assert ((res >= 0) & (res <= 1)).all()
    assert np.allclose(res[:, 4:].sum(axis=1), 1.0, atol=1e-4)


def test_empty_batch_never_reaches_the_model(model):
    engine = IntentEngine(model, ScoringConfig())
    assert engine.score([UserState(), UserState()]) == [[], []]
    with pytest.raises(ValueError):
        model.run({"h_prev": np.zeros((0, model.hidden), np.float32)})


def test_routing_rules(model, store, users):
    cfg = ScoringConfig()
    engine, router = IntentEngine(model, cfg), IntentRouter(cfg, store, model.version)
    cart_events = churn_records = recs = 0
    for u, evs in users.items():
        st = UserState()
        for ev in evs:
            engine.add(st, ev)
        for s in engine.score([st])[0]:
            routed = router.route(u, st, s, now_ms=0)
            recs += 1
            cart_events += routed.cart is not None
            churn_records += routed.churn is not None
    n_cart = sum(ev.type_code == TYPE_CODE["add_to_cart"] for evs in users.values() for ev in evs)
    assert recs == sum(map(len, users.values())) and cart_events == n_cart
    assert len(users) <= churn_records <= recs          # one per user at least, then only on flips
    rec = store.decoder("intent.recommendation-value").decode(routed.recommendation)
    assert set(rec["next_action"]) == set(EVENT_TYPES) and rec["model_version"] == model.version


class FailsForUser:
    """Fault injection around the real model: any call whose batch holds ``marker`` as an
    events_total (user_stats[0]) raises, like an ONNX Runtime/provider error would."""

    def __init__(self, model, marker_events_total):
        self.model, self.marker = model, marker_events_total
        self.window, self.hidden, self.calls = model.window, model.hidden, 0

    def run(self, feeds):
        self.calls += 1
        if (feeds["user_stats"][:, 0] == self.marker).any():
            raise RuntimeError("injected ONNX Runtime failure")
        return self.model.run(feeds)


def test_a_failing_user_is_dead_lettered_and_the_rest_of_its_batch_is_scored(model, store, users):
    from udfs.decode import DeadLetters
    from udfs.scoring import publish, score_users
    from schemas import DLQ_SUBJECT

    cfg = ScoringConfig()
    ids = list(users)
    states = [UserState() for _ in ids]
    for st, uid in zip(states, ids):
        for ev in users[uid][:3]:
            st.append(ev.event_id, ev.type_code, ev.item_id, ev.category_id, ev.event_time, ev.price, 50, 0, 7)
    # The poison: one user whose user_stats[0] (events before its window) is 10,002 in every round;
    # everyone else's is 0.
    poison = ids[2]
    states[2].pending = [p._replace(events_total=10_003 + i) for i, p in enumerate(states[2].pending)]
    failing = FailsForUser(model, marker_events_total=10_002)
    engine = IntentEngine(failing, cfg)
    outcome = score_users(engine, states, ids)
    assert isinstance(outcome[poison][1], RuntimeError)
    assert all(len(outcome[u][1]) == 3 for u in ids if u != poison)      # the others: scored normally
    reference = IntentEngine(model, cfg)
    clean = [UserState() for _ in ids]
    for st, uid in zip(clean, ids):
        for ev in users[uid][:3]:
            reference.add(st, ev)
    expected = reference.score([clean[0]])[0]
    assert np.allclose(flatten(outcome[ids[0]][1]), flatten(expected), atol=1e-6)

    router, dead = IntentRouter(cfg, store, model.version), DeadLetters(store)
    records = list(publish(poison, outcome[poison], router, dead, "events", 50))
    assert [kind for kind, _, _ in records] == ["dlq"] * 3
    letter = store.decoder(DLQ_SUBJECT).decode(records[0][2])
    assert letter["reason"] == "inference" and "injected ONNX Runtime failure" in letter["detail"]
    assert (letter["source_topic"], letter["source_offset"]) == ("events", 7)
    assert states[2].pending == []                  # settled: never retried forever


def test_state_from_a_model_with_another_hidden_size_restarts_its_recurrent_part(model, users):
    engine = IntentEngine(model, ScoringConfig())
    uid = next(iter(users))
    fresh, restored = UserState(), UserState()
    restored.h = b"\x01" * 4 * (model.hidden * 2)      # written by a wider model before an upgrade
    for st in (fresh, restored):
        engine.add(st, users[uid][0])
    a, b = engine.score([fresh])[0], engine.score([restored])[0]
    assert np.allclose(flatten(a), flatten(b), atol=1e-6)
