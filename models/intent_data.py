"""Events -> raw windows, user_stats and labels, plus the user split: numpy only.

Shared by models/train.py (training, baselines, transfer) and tests/models (which recompute
report figures from the committed ONNX in the runtime venv, where there is no pandas or torch).
The label definitions live here once, so every dataset and every predictor uses the same ones.
"""
from __future__ import annotations

import csv
import hashlib
import sys
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from udfs import contract  # noqa: E402

# Official Taobao UserBehavior window: 2017-11-25 00:00 .. 2017-12-04 00:00 China time (UTC+8).
DATA_START = 1511539200
DATA_END = 1512316800
SESSION_GAP = 1800          # 30 minutes
H24 = 86400
H48 = 172800
BEHAVIOR_MAP = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}
T_VIEW = contract.TYPE_CODE["view"]
T_CART = contract.TYPE_CODE["add_to_cart"]
T_FAV = contract.TYPE_CODE["favorite"]
T_BUY = contract.TYPE_CODE["purchase"]
N_TYPES = len(contract.EVENT_TYPES)
BINARY_HEADS = ("p_buy_session", "p_buy_24h", "p_cart_abandon", "p_no_return_48h")
WIN_KEYS = ("ev_type", "ev_item", "ev_cat", "ev_dt", "ev_price", "user_stats")


def crc64(values) -> np.ndarray:
    """zlib.crc32(str(id).encode()) as int64 -- exactly what serving sends (0 for a missing id)."""
    return np.fromiter((zlib.crc32(str(v).encode()) if v not in (None, "") else 0 for v in values),
                       dtype=np.int64, count=len(values))


def user_split(user_id, salt: str = "intentflow-split-v1") -> str:
    b = int.from_bytes(hashlib.sha256(f"{salt}:{user_id}".encode()).digest()[:8], "big") % 100
    return "train" if b < 70 else ("val" if b < 85 else "test")


def _sorted_columns(user, ts, ty, item_h, cat_h, price, file_order) -> dict:
    """Columns in (user, timestamp, file order) order -- each user's events in time order, ties in file order."""
    order = np.lexsort((file_order, ts, user))
    return {"user": user[order], "ts": ts[order], "type": ty[order], "item_h": item_h[order],
            "cat_h": cat_h[order], "price": price[order]}


def load_taobao(path: Path) -> tuple[dict, dict]:
    """UserBehavior csv (no header) -> sorted columns; rows outside the official window dropped."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    n_raw = len(rows)
    ts = np.array([int(r[4]) for r in rows], np.int64)
    keep = (ts >= DATA_START) & (ts < DATA_END)
    rows = [r for r, k in zip(rows, keep) if k]
    unknown = {r[3] for r in rows} - set(BEHAVIOR_MAP)
    if unknown:
        raise ValueError(f"unknown behavior types {unknown}")
    code = {k: contract.TYPE_CODE[v] for k, v in BEHAVIOR_MAP.items()}
    cols = _sorted_columns(np.array([int(r[0]) for r in rows], np.int64), ts[keep],
                           np.array([code[r[3]] for r in rows], np.int64),
                           crc64([str(int(r[1])) for r in rows]), crc64([str(int(r[2])) for r in rows]),
                           np.full(len(rows), contract.MISSING_PRICE, np.float32), np.flatnonzero(keep))
    return cols, {"rows_in_file": n_raw, "rows_outside_window_dropped": int((~keep).sum()), "rows_used": len(rows)}


def load_canonical(events: list[dict]) -> dict:
    """Canonical event dicts (jobs.datasets) -> sorted columns, built the way serving builds windows:
    crc32 of the id strings, price as given (missing -> MISSING_PRICE), event time in seconds."""
    codes: dict[str, int] = {}
    user = np.array([codes.setdefault(e["user_id"], len(codes)) for e in events], np.int64)
    ms = np.array([e["event_time"] for e in events], np.int64)
    ty = np.array([contract.TYPE_CODE[e["event_type"]] for e in events], np.int64)
    price = np.array([contract.MISSING_PRICE if e["price"] is None else e["price"] for e in events], np.float32)
    cols = _sorted_columns(user, ms // 1000, ty, crc64([e["item_id"] for e in events]),
                           crc64([e["category_id"] for e in events]), price, np.arange(len(events)))
    names = np.array(list(codes), dtype=object)
    cols["user_name"] = names[cols["user"]]
    return cols


def build_arrays(cols: dict, N: int, end: int = DATA_END) -> dict:
    """Per-event raw windows, user_stats and labels (+ masks), in user/time order.

    ``end`` is the dataset's end time (seconds): labels whose horizon passes it are censored (mask False).
    """
    users = cols["user"]
    ts_all, ty_all, it_all, ca_all, pr_all = cols["ts"], cols["type"], cols["item_h"], cols["cat_h"], cols["price"]
    E = len(users)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], E]

    A = {k: np.zeros((E, N), dt) for k, dt in (("ev_type", np.int64), ("ev_item", np.int64),
                                              ("ev_cat", np.int64), ("ev_dt", np.float32))}
    A["ev_price"] = np.full((E, N), contract.MISSING_PRICE, np.float32)
    stats = np.zeros((E, len(contract.USER_STATS)), np.float32)
    lab = {h: np.zeros(E, np.float32) for h in BINARY_HEADS}
    msk = {h: np.zeros(E, bool) for h in BINARY_HEADS}
    next_type = np.zeros(E, np.int64)
    next_cat = np.zeros(E, np.int64)
    has_next = np.zeros(E, bool)
    user_of = np.zeros(E, np.int64)
    pos_in_user = np.zeros(E, np.int64)

    for ui, (s, e) in enumerate(zip(starts, ends)):
        L = e - s
        ts, ty, it, ca = ts_all[s:e], ty_all[s:e], it_all[s:e], ca_all[s:e]
        user_of[s:e] = ui
        pos_in_user[s:e] = np.arange(L)

        def win(x, fill):
            p = np.concatenate([np.full(N - 1, fill, x.dtype), x])
            return np.lib.stride_tricks.sliding_window_view(p, N)
        wt = win(ty, 0)
        A["ev_type"][s:e] = wt
        A["ev_item"][s:e] = win(it, 0)
        A["ev_cat"][s:e] = win(ca, 0)
        A["ev_price"][s:e] = np.where(wt != 0, win(pr_all[s:e], np.float32(contract.MISSING_PRICE)),
                                      contract.MISSING_PRICE)
        wts = win(ts, 0)
        A["ev_dt"][s:e] = np.where(wt != 0, (wts - ts[:, None]), 0).astype(np.float32)
        stats[s:e, 0] = np.maximum(0, np.arange(L) + 1 - N)
        stats[s:e, 1] = np.cumsum(ty == T_BUY)
        stats[s:e, 2] = np.cumsum(ty == T_CART)
        stats[s:e, 3] = ts - ts[0]
        stats[s:e, 4] = (ts % 86400) / 3600.0
        stats[s:e, 5] = ((ts // 86400) + 3) % 7        # 1970-01-01 was a Thursday
        brk = np.r_[False, np.diff(ts) > SESSION_GAP]
        sid = np.cumsum(brk)
        sess_last_ts = np.zeros(sid[-1] + 1, np.int64)
        np.maximum.at(sess_last_ts, sid, ts)
        nxt_buy = np.full(L, -1, np.int64)
        nb = -1
        for t in range(L - 1, -1, -1):
            nxt_buy[t] = nb
            if ty[t] == T_BUY:
                nb = t
        hb = nxt_buy >= 0
        nbc = np.where(hb, nxt_buy, 0)
        # p_buy_session: buy later in the same session; censored if the session may run past the end
        lab["p_buy_session"][s:e] = hb & (sid[nbc] == sid)
        msk["p_buy_session"][s:e] = sess_last_ts[sid] + SESSION_GAP < end
        lab["p_buy_24h"][s:e] = hb & (ts[nbc] <= ts + H24)
        msk["p_buy_24h"][s:e] = ts + H24 <= end
        # p_cart_abandon: at add_to_cart, that item not bought (index > t) within 24 h
        for t in np.flatnonzero(ty == T_CART):
            if ts[t] + H24 > end:
                continue
            later = slice(t + 1, e - s)
            bought = np.any((ty[later] == T_BUY) & (it[later] == it[t]) & (ts[later] <= ts[t] + H24))
            lab["p_cart_abandon"][s + t] = 0.0 if bought else 1.0
            msk["p_cart_abandon"][s + t] = True
        nts = np.r_[ts[1:], np.iinfo(np.int64).max]
        lab["p_no_return_48h"][s:e] = (nts - ts) > H48
        msk["p_no_return_48h"][s:e] = ts + H48 <= end
        next_type[s:e - 1] = ty[1:]
        next_cat[s:e - 1] = ca[1:]
        has_next[s:e - 1] = True
    out = dict(A)
    out.update(user_stats=stats, next_type=next_type, next_cat=next_cat, has_next=has_next,
               user_of=user_of, pos_in_user=pos_in_user, user_starts=starts, user_ends=ends,
               user_ids=users[starts], timestamp=ts_all, type=ty_all)
    for h in BINARY_HEADS:
        out["y_" + h] = lab[h]
        out["m_" + h] = msk[h]
    return out


def replay_step_model(sess, D: dict, users, hidden: int) -> dict:
    """Score every event of ``users`` through an ONNX step session, carrying h_next -> h_prev per user
    (all users' k-th events in one batch). Returns {output name: array over D's events} (NaN elsewhere)."""
    names = [s.name for s in contract.OUTPUTS]
    E = len(D["timestamp"])
    out = {n: None for n in names}
    starts, ends = D["user_starts"][users], D["user_ends"][users]
    h = np.zeros((len(users), hidden), np.float32)
    for k in range(int((ends - starts).max())):
        alive = np.flatnonzero(starts + k < ends)
        rows = starts[alive] + k
        feeds = {"h_prev": h[alive]}
        feeds.update({key: D[key][rows] for key in WIN_KEYS})
        res = dict(zip(names, sess.run(names, feeds)))
        for n in names:
            if out[n] is None:
                out[n] = np.full((E,) + res[n].shape[1:], np.nan, np.float32)
            out[n][rows] = res[n]
        h[alive] = res["h_next"]
    return out
