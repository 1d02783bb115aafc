"""Batched, incremental scoring of users' pending events, and routing of the scores to topics.

This module is the single scoring path: the Flink operator (:mod:`udfs.sequence`) and the
offline ``intentflow score`` command both call :meth:`IntentEngine.score`, so the same events
give the same scores wherever they are computed.

Incremental: a user's ``h`` is carried in state, so scoring an event costs one recurrent step
over a window of N raw events, not a re-run of the whole history. A batch holds the pending
events of many users; a user with k pending events takes part in k consecutive rounds (the
r-th round scores every user's r-th pending event, carrying ``h`` from the round before).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from jobs.config import ScoringConfig
from schemas import (CART_SUBJECT, CHURN_SUBJECT, RECOMMENDATION_SUBJECT, SchemaStore)
from udfs import contract
from udfs.model import IntentModel
from udfs.state import Pending, UserState

SECONDS_PER_DAY = 86_400
_PURCHASE_LABELS = ("browsing", "considering", "ready_to_buy")
_CART_LABELS = ("likely_purchase", "at_risk")
_CHURN_LABELS = ("engaged", "at_risk")
_ADD_TO_CART = contract.TYPE_CODE["add_to_cart"]


class Scored(NamedTuple):
    """The model's answer for one event."""
    pending: Pending
    p_buy_session: float
    p_buy_24h: float
    p_cart_abandon: float
    p_no_return_48h: float
    next_action: tuple[float, ...]       # aligned with contract.EVENT_TYPES
    top_categories: tuple[str, ...]


class IntentEngine:
    """Turns users' pending events into :class:`Scored` results with as few model calls as possible."""

    def __init__(self, model: IntentModel, cfg: ScoringConfig):
        self.model = model
        self.cfg = cfg
        self.window = model.window
        self.hidden = model.hidden
        self.top_k = cfg.top_categories
        self._zeros_h = np.zeros(self.hidden, dtype=np.float32)
        self._category_names: dict[int, str] = {}   # crc32 -> category id, shared by all users

    def add(self, st: UserState, event) -> None:
        """Append a decoded event (udfs.decode.EVENT_FIELDS order) to the user's state as pending."""
        st.append(event.event_id, event.type_code, event.item_id, event.category_id, event.event_time,
                  event.price, self.window, event.partition, event.offset)

    def score(self, states: Sequence[UserState]) -> list[list[Scored]]:
        """Score every pending event of every state (oldest first) and settle the states.

        Returns one list of results per state, in pending order. An exception leaves the states
        untouched (the caller dead-letters their pending events).
        """
        n = len(states)
        h = np.stack([self._h(st) for st in states])
        arrays = [st.window_array() for st in states]
        cats = [a["cat"] for a in arrays]
        results: list[list[Scored]] = [[] for _ in range(n)]
        rounds = max((len(st.pending) for st in states), default=0)
        for r in range(rounds):
            rows = [i for i in range(n) if len(states[i].pending) > r]
            feeds, spans = self._feeds(states, arrays, rows, r, h)
            out = self._run_chunked(feeds)
            h[rows] = out["h_next"]
            # Columns to Python once per round, not one NumPy scalar per field and row.
            buy_session, buy_24h = out["p_buy_session"].tolist(), out["p_buy_24h"].tolist()
            cart_abandon, no_return = out["p_cart_abandon"].tolist(), out["p_no_return_48h"].tolist()
            next_action = out["next_action"].tolist()
            ranked = np.argsort(-out["category_scores"], axis=1, kind="stable").tolist()
            for j, i in enumerate(rows):
                st, (start, end) = states[i], spans[j]
                results[i].append(Scored(
                    st.pending[r], buy_session[j], buy_24h[j], cart_abandon[j], no_return[j],
                    tuple(next_action[j]),
                    self._top_categories(st, cats[i], start, end, ranked[j]),
                ))
        for i, st in enumerate(states):
            if st.pending:
                st.settle(h[i].tobytes(), self.window)
        return results

    def _h(self, st: UserState) -> np.ndarray:
        """The user's recurrent state; empty (new user) or from a model with another hidden size
        (state restored across a model upgrade) starts from zeros, keeping the event window."""
        if len(st.h) == 4 * self.hidden:
            return np.frombuffer(st.h, dtype=np.float32)
        return self._zeros_h

    def _feeds(self, states, arrays, rows, r, h):
        N, R = self.window, len(rows)
        ev_type = np.zeros((R, N), np.int64)
        ev_item = np.zeros((R, N), np.int64)
        ev_cat = np.zeros((R, N), np.int64)
        ev_dt = np.zeros((R, N), np.float32)
        ev_price = np.full((R, N), contract.MISSING_PRICE, np.float32)
        stats = np.zeros((R, len(contract.USER_STATS)), np.float32)
        spans = []
        for j, i in enumerate(rows):
            st, arr = states[i], arrays[i]
            p = st.pending[r]
            end = len(arr) - len(st.pending) + r + 1     # one past the scored event
            start = max(0, end - N)
            recs = arr[start:end]
            m = end - start
            ts = recs["ts"]
            ev_type[j, N - m:] = recs["type"]
            ev_item[j, N - m:] = recs["item"]
            ev_cat[j, N - m:] = recs["cat"]
            ev_dt[j, N - m:] = (ts - ts[-1]) / 1000.0
            ev_price[j, N - m:] = recs["price"]
            now_s = p.event_time / 1000.0
            stats[j] = (p.events_total - m, p.purchases_total, p.carts_total,
                        (p.event_time - st.first_ts) / 1000.0,
                        (now_s % SECONDS_PER_DAY) / 3600.0,
                        (int(now_s // SECONDS_PER_DAY) + 3) % 7)   # 1970-01-01 was a Thursday
            spans.append((start, end))
        feeds = {"h_prev": h[rows], "ev_type": ev_type, "ev_item": ev_item, "ev_cat": ev_cat,
                 "ev_dt": ev_dt, "ev_price": ev_price, "user_stats": stats}
        return feeds, spans

    def _run_chunked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = feeds["h_prev"].shape[0]
        step = self.cfg.max_batch
        if size <= step:
            return self.model.run(feeds)
        parts = [self.model.run({k: v[s:s + step] for k, v in feeds.items()}) for s in range(0, size, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _top_categories(self, st: UserState, cats: np.ndarray, start: int, end: int,
                        ranked: list[int]) -> tuple[str, ...]:
        """Best distinct categories of the window ``cats[start:end]`` by the model's pointer score.

        ``ranked`` is the row's positions by descending score (ties: earlier position first); the
        window is right-aligned, so position ``p`` is event ``end - N + p``. Category names come
        from an engine-wide crc -> name cache, checked against the user's own categories (a crc32
        collision between two names falls back to the user's own map).
        """
        offset = end - self.window
        picked: list[str] = []
        seen: set[int] = set()
        names, own = self._category_names, None
        for pos in ranked:
            at = offset + pos
            if at < start:
                continue                 # left padding of a short window
            c = int(cats[at])
            if c == 0 or c in seen:
                continue
            seen.add(c)
            name = names.get(c)
            if name is None or name not in st.cats:
                own = own or st.category_names()
                name = own.get(c)
                if name is None:
                    continue
                if len(names) < 262_144:   # bounded: ids beyond it are looked up per user
                    names[c] = name
            picked.append(name)
            if len(picked) == self.top_k:
                break
        return tuple(picked)


Outcome = tuple[UserState, "list[Scored] | Exception"]


def score_users(engine: IntentEngine, states: Sequence[UserState], users: Sequence[str],
                on_error=None) -> dict[str, Outcome]:
    """Score a batch; if the batch call fails, retry each user alone so one user's bad input
    costs only that user's events (dead-lettered by :func:`publish`), not the whole batch."""
    try:
        return {u: (st, r) for u, st, r in zip(users, states, engine.score(states))}
    except Exception as exc:
        if on_error:
            on_error(exc, len(states))
        if len(states) == 1:
            return {users[0]: (states[0], exc)}
    return {u: score_users(engine, [st], [u], on_error)[u] for u, st in zip(users, states)}


def publish(user: str, outcome: Outcome, router: "IntentRouter", dead_letters, source_topic: str,
            window: int, now_ms: int | None = None):
    """The output records of one user's outcome, as ``(topic_kind, key, value)``.

    ``topic_kind`` is recommendation | cart | churn | dlq. A failed outcome dead-letters each
    pending event with reason ``inference`` and settles the state, so nothing stays pending.
    """
    st, results = outcome
    key = user.encode()
    if isinstance(results, Exception):
        detail = f"{type(results).__name__}: {results}"
        for p in st.pending:
            yield "dlq", key, dead_letters.encode("inference", f"event_id={p.event_id}: {detail}", source_topic,
                                                  p.partition, p.offset, p.event_time, key, None)
        st.settle(st.h, window)
        return
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    for scored in results:
        routed = router.route(user, st, scored, now_ms)
        yield "recommendation", key, routed.recommendation
        if routed.cart is not None:
            yield "cart", key, routed.cart
        if routed.churn is not None:
            yield "churn", key, routed.churn


@dataclass(frozen=True)
class Routed:
    """Encoded output records for one scored event (None where the topic gets nothing)."""
    key: bytes
    recommendation: bytes
    cart: bytes | None
    churn: bytes | None


class IntentRouter:
    """Which scores go to which topic, as Avro records (see README "What goes where").

    - recommendation: every scored event;
    - cart: every scored add_to_cart event (the abandonment risk of that item);
    - churn: the first score of a user, then each time the churn label flips.
    """

    def __init__(self, cfg: ScoringConfig, store: SchemaStore, model_version: str):
        self.cfg = cfg
        self.model_version = model_version
        self._rec = store.encoder(RECOMMENDATION_SUBJECT).encode
        self._cart = store.encoder(CART_SUBJECT).encode
        self._churn = store.encoder(CHURN_SUBJECT).encode

    def purchase_label(self, p: float) -> str:
        if p >= self.cfg.ready_to_buy_threshold:
            return "ready_to_buy"
        return "considering" if p >= self.cfg.considering_threshold else "browsing"

    def route(self, user_id: str, st: UserState, s: Scored, now_ms: int | None = None) -> Routed:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        p = s.pending
        common = {"user_id": user_id, "event_id": p.event_id, "event_time": p.event_time,
                  "scored_at": now_ms, "model_version": self.model_version}
        rec = self._rec(dict(common, p_buy_session=s.p_buy_session, p_buy_24h=s.p_buy_24h,
                             next_action=dict(zip(contract.EVENT_TYPES, s.next_action)),
                             top_categories=list(s.top_categories),
                             label=self.purchase_label(s.p_buy_session)))
        cart = None
        if p.type_code == _ADD_TO_CART:
            cart = self._cart(dict(common, item_id=p.item_id, p_cart_abandon=s.p_cart_abandon,
                                   label=_CART_LABELS[s.p_cart_abandon >= self.cfg.cart_at_risk_threshold]))
        churn = None
        label = 1 + (s.p_no_return_48h >= self.cfg.churn_at_risk_threshold)
        if label != st.churn_label:
            st.churn_label = label
            churn = self._churn(dict(common, p_no_return_48h=s.p_no_return_48h, label=_CHURN_LABELS[label - 1]))
        return Routed(user_id.encode(), rec, cart, churn)

