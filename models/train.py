#!/usr/bin/env python
"""Train the IntentFlow intent model (GRU + window attention + multi-task heads) and export the
ONNX *step* graph defined by :mod:`udfs.contract`.

One command reproduces everything (data -> labels -> split -> training -> calibration -> test
metrics + plots -> ONNX export -> step-vs-sequence verification -> testdata)::

    python models/train.py --data /work/shared/data/taobao_userbehavior/UserBehavior_sample.csv --out models/

Run it with the training venv (models/.work/venv-train: torch, onnx==1.22.0, onnxruntime, numpy,
pandas, scikit-learn, matplotlib, tqdm), never with the runtime venv.

Design
------
* Training runs ``nn.GRU`` over each user's whole (time-ordered) history; the GRU input at step t
  is ``IntentNet.event_input`` computed from the raw window ending at event t. The heads
  (``IntentNet.heads``) see h_t, the raw window and user_stats.
* The exported graph is ``StepModel``: the same ``event_input``, one GRU cell written out with
  the *same* ``nn.GRU`` weights, the same ``heads``. Feeding a user's events one at a time and
  carrying ``h_next -> h_prev`` therefore reproduces the sequence forward (checked at export
  time and again by tests/models/test_contract.py against models/testdata/step_check.npz).
* All feature engineering is torch code inside the graph; serving sends only raw arrays.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from udfs import contract  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "taobao_userbehavior" / "UserBehavior_sample.csv"

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
PAD_SCORE = -1.0e9           # category_scores at padding positions
DEFAULT_VERSION = "gru-attn-2026.12.03-1"


@dataclass
class Config:
    window: int = 50
    hidden: int = 32
    type_dim: int = 8
    cat_buckets: int = 4096
    cat_dim: int = 8
    item_buckets: int = 8192
    item_dim: int = 0          # hashed item embedding off: items hardly recur across users (overfits)
    pos_dim: int = 32
    agg_dim: int = 32
    trunk_dim: int = 64
    dropout: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 1e-3
    epochs: int = 30
    patience: int = 5
    ptr_epochs: int = 12       # stage 2: pointer branch only, early-stopped on validation category loss
    ptr_lr: float = 2e-3
    batch_users: int = 16
    seed: int = 20171125
    threads: int = 2
    split_salt: str = "intentflow-split-v1"


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def crc64(values) -> np.ndarray:
    """zlib.crc32(str(id).encode()) as int64 -- exactly what serving sends."""
    return np.fromiter((zlib.crc32(str(v).encode()) for v in values), dtype=np.int64, count=len(values))


def load_events(path: Path):
    import pandas as pd
    df = pd.read_csv(path, header=None, names=["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
                     dtype={"user_id": "int64", "item_id": "int64", "category_id": "int64",
                            "behavior_type": "str", "timestamp": "int64"})
    n_raw = len(df)
    df["file_order"] = np.arange(n_raw)
    keep = (df.timestamp >= DATA_START) & (df.timestamp < DATA_END)
    n_out = int((~keep).sum())
    df = df[keep]
    unknown = set(df.behavior_type.unique()) - set(BEHAVIOR_MAP)
    if unknown:
        raise ValueError(f"unknown behavior types {unknown}")
    df["type"] = df.behavior_type.map({k: contract.TYPE_CODE[v] for k, v in BEHAVIOR_MAP.items()}).astype(np.int64)
    df = df.sort_values(["user_id", "timestamp", "file_order"], kind="stable").reset_index(drop=True)
    df["item_h"] = crc64(df.item_id.to_numpy())
    df["cat_h"] = crc64(df.category_id.to_numpy())
    return df, {"rows_in_file": n_raw, "rows_outside_window_dropped": n_out, "rows_used": len(df)}


def user_split(user_id: int, salt: str) -> str:
    b = int.from_bytes(hashlib.sha256(f"{salt}:{user_id}".encode()).digest()[:8], "big") % 100
    return "train" if b < 70 else ("val" if b < 85 else "test")


def build_arrays(df, N: int) -> dict:
    """Per-event raw windows, user_stats and labels (+ masks), in user/time order."""
    users = df.user_id.to_numpy()
    ts_all = df.timestamp.to_numpy()
    ty_all = df.type.to_numpy()
    it_all = df.item_h.to_numpy()
    ca_all = df.cat_h.to_numpy()
    E = len(df)
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
        # windows: left-padded sliding views
        def win(x, fill):
            p = np.concatenate([np.full(N - 1, fill, x.dtype), x])
            return np.lib.stride_tricks.sliding_window_view(p, N)
        wt = win(ty, 0)
        A["ev_type"][s:e] = wt
        A["ev_item"][s:e] = win(it, 0)
        A["ev_cat"][s:e] = win(ca, 0)
        wts = win(ts, 0)
        A["ev_dt"][s:e] = np.where(wt != 0, (wts - ts[:, None]), 0).astype(np.float32)
        # user_stats
        stats[s:e, 0] = np.maximum(0, np.arange(L) + 1 - N)
        stats[s:e, 1] = np.cumsum(ty == T_BUY)
        stats[s:e, 2] = np.cumsum(ty == T_CART)
        stats[s:e, 3] = ts - ts[0]
        stats[s:e, 4] = (ts % 86400) / 3600.0
        stats[s:e, 5] = ((ts // 86400) + 3) % 7        # 1970-01-01 was a Thursday
        # sessions
        brk = np.r_[False, np.diff(ts) > SESSION_GAP]
        sid = np.cumsum(brk)
        sess_last_ts = np.zeros(sid[-1] + 1, np.int64)
        np.maximum.at(sess_last_ts, sid, ts)
        # next purchase strictly after t (index order)
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
        msk["p_buy_session"][s:e] = sess_last_ts[sid] + SESSION_GAP < DATA_END
        # p_buy_24h
        lab["p_buy_24h"][s:e] = hb & (ts[nbc] <= ts + H24)
        msk["p_buy_24h"][s:e] = ts + H24 <= DATA_END
        # p_cart_abandon: at add_to_cart, that item not bought (index > t) within 24 h
        for t in np.flatnonzero(ty == T_CART):
            if ts[t] + H24 > DATA_END:
                continue
            later = slice(t + 1, e - s)
            bought = np.any((ty[later] == T_BUY) & (it[later] == it[t]) & (ts[later] <= ts[t] + H24))
            lab["p_cart_abandon"][s + t] = 0.0 if bought else 1.0
            msk["p_cart_abandon"][s + t] = True
        # p_no_return_48h
        nts = np.r_[ts[1:], np.iinfo(np.int64).max]
        lab["p_no_return_48h"][s:e] = (nts - ts) > H48
        msk["p_no_return_48h"][s:e] = ts + H48 <= DATA_END
        # next event
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


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------
def make_model(cfg: Config):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    N, H = cfg.window, cfg.hidden
    L10 = 1.0 / 10.0
    TWO_PI = 2.0 * math.pi

    class IntentNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.type_emb = nn.Embedding(N_TYPES + 1, cfg.type_dim)
            self.cat_emb = nn.Embedding(cfg.cat_buckets, cfg.cat_dim)
            self.item_emb = nn.Embedding(cfg.item_buckets, cfg.item_dim) if cfg.item_dim > 0 else None
            emb = cfg.type_dim + cfg.cat_dim + cfg.item_dim
            self.n_x_num = 11
            self.gru = nn.GRU(emb + self.n_x_num, H, batch_first=True)
            self.n_pos_num = 15
            self.pos_proj = nn.Linear(emb + self.n_pos_num, cfg.pos_dim)
            self.att_q = nn.Linear(H, cfg.pos_dim)
            self.att_k = nn.Linear(cfg.pos_dim, cfg.pos_dim)
            self.att_v = nn.Linear(cfg.pos_dim, cfg.pos_dim)
            self.n_agg = 2 * N_TYPES + 4 + 8
            self.agg_mlp = nn.Sequential(nn.Linear(self.n_agg, cfg.agg_dim), nn.ReLU())
            self.trunk = nn.Sequential(nn.Linear(H + cfg.pos_dim + cfg.agg_dim, cfg.trunk_dim), nn.ReLU(),
                                       nn.Dropout(cfg.dropout))
            self.bin_head = nn.Linear(cfg.trunk_dim, len(BINARY_HEADS))
            self.na_head = nn.Linear(cfg.trunk_dim, N_TYPES)
            # pointer branch has its own position encoder so it can be fine-tuned alone (stage 2)
            self.ptr_pos = nn.Linear(emb + self.n_pos_num, cfg.pos_dim)
            self.ptr_q = nn.Linear(cfg.trunk_dim, cfg.pos_dim)
            self.ptr_k = nn.Linear(cfg.pos_dim, cfg.pos_dim)
            self.ptr_b = nn.Linear(cfg.pos_dim, 1)
            # calibration (fitted on validation, folded into the graph)
            self.register_buffer("cal_a", torch.ones(len(BINARY_HEADS)))
            self.register_buffer("cal_b", torch.zeros(len(BINARY_HEADS)))
            self.register_buffer("cal_t", torch.ones(1))
            # upper-triangular: (brk @ tri)[j] = sum_{k>j} brk[k]  (reverse cumsum, ONNX-friendly MatMul)
            self.register_buffer("tri", torch.triu(torch.ones(N, N), diagonal=1).t().contiguous())
            self.register_buffer("later", torch.triu(torch.ones(N, N), diagonal=1))  # [j,k]=1 if k>j
            self.register_buffer("type_codes", torch.arange(1, N_TYPES + 1, dtype=torch.int64))
            self.register_buffer("rel_pos", torch.arange(N, dtype=torch.float32) / N)

        # -- shared pieces --------------------------------------------------------------------
        def _embed(self, ty, it, ca):
            parts = [self.type_emb(ty), self.cat_emb(torch.remainder(ca, cfg.cat_buckets))]
            if self.item_emb is not None:
                parts.append(self.item_emb(torch.remainder(it, cfg.item_buckets)))
            return torch.cat(parts, dim=-1)

        @staticmethod
        def _time_feats(user_stats):
            hr = user_stats[:, 4:5] * (TWO_PI / 24.0)
            dw = user_stats[:, 5:6] * (TWO_PI / 7.0)
            return torch.cat([torch.sin(hr), torch.cos(hr), torch.sin(dw), torch.cos(dw)], dim=1)

        def event_input(self, ev_type, ev_item, ev_cat, ev_dt, ev_price, user_stats):
            """GRU input for the scored (last) event of each window: [B, emb + 11]."""
            ty, it, ca = ev_type[:, -1], ev_item[:, -1], ev_cat[:, -1]
            has_prev = (ev_type[:, -2] != 0).float()
            gap = torch.clamp(ev_dt[:, -1] - ev_dt[:, -2], min=0.0) * has_prev
            price = ev_price[:, -1]
            p_miss = (price < 0).float()
            num = torch.stack([
                torch.log1p(gap) * L10,
                has_prev,
                (gap > SESSION_GAP).float() * has_prev,
                torch.log1p(torch.clamp(price, min=0.0)) * L10 * (1 - p_miss),
                p_miss,
                (it == ev_item[:, -2]).float() * has_prev,
                (ca == ev_cat[:, -2]).float() * has_prev,
            ], dim=1)
            num = torch.cat([num, self._time_feats(user_stats)], dim=1)
            return torch.cat([self._embed(ty, it, ca), num], dim=1)

        def heads(self, h, ev_type, ev_item, ev_cat, ev_dt, ev_price, user_stats):
            """Logits from the new state h [B,H] and the raw window. Returns (bin_logits, na_logits, ptr)."""
            valid_b = ev_type != 0
            valid = valid_b.float()                                          # [B,N]
            dt = ev_dt * valid
            age = torch.log1p(torch.abs(dt)) * L10
            prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1) * valid
            gap = torch.clamp(dt - torch.cat([dt[:, :1], dt[:, :-1]], dim=1), min=0.0) * prev_valid
            brk = (gap > SESSION_GAP).float() * prev_valid
            later_breaks = torch.matmul(brk, self.tri)
            in_sess = (later_breaks < 0.5).float() * valid
            same_item = (ev_item == ev_item[:, -1:]).float() * valid * (ev_item[:, -1:] != 0).float()
            same_cat = (ev_cat == ev_cat[:, -1:]).float() * valid * (ev_cat[:, -1:] != 0).float()
            p_miss = (ev_price < 0).float()
            lprice = torch.log1p(torch.clamp(ev_price, min=0.0)) * L10 * (1 - p_miss) * valid
            # pairwise same-category / same-item structure inside the window
            vv = valid.unsqueeze(1) * valid.unsqueeze(2)                       # [B,N,N]
            cat_eq = (ev_cat.unsqueeze(2) == ev_cat.unsqueeze(1)).float() * vv
            item_eq = (ev_item.unsqueeze(2) == ev_item.unsqueeze(1)).float() * vv
            cat_cnt = cat_eq.sum(2)
            cat_ses = (cat_eq * in_sess.unsqueeze(1)).sum(2)
            cat_latest = ((cat_eq * self.later).sum(2) < 0.5).float() * valid
            item_cnt = item_eq.sum(2)
            pos_num = torch.stack([valid, age, torch.log1p(gap) * L10, prev_valid, brk, in_sess, same_item,
                                   same_cat, lprice, p_miss * valid,
                                   self.rel_pos.unsqueeze(0).expand_as(valid) * valid,
                                   torch.log1p(cat_cnt), torch.log1p(cat_ses), cat_latest, torch.log1p(item_cnt)],
                                  dim=-1)
            emb = self._embed(ev_type, ev_item, ev_cat) * valid.unsqueeze(-1)
            pos_in = torch.cat([emb, pos_num], dim=-1)
            pos = torch.relu(self.pos_proj(pos_in))                             # [B,N,P]
            ppos = torch.relu(self.ptr_pos(pos_in))
            # attention from h
            q = self.att_q(h).unsqueeze(1)                                     # [B,1,P]
            k = self.att_k(pos)
            att = (q * k).sum(-1) / math.sqrt(cfg.pos_dim)
            att = torch.where(valid_b, att, torch.full_like(att, -1e9))
            w = torch.softmax(att, dim=1)
            ctx = (w.unsqueeze(-1) * self.att_v(pos)).sum(1)                   # [B,P]
            # aggregates
            onehot = (ev_type.unsqueeze(-1) == self.type_codes).float()        # [B,N,7]
            cnt_win = onehot.sum(1)
            cnt_ses = (onehot * in_sess.unsqueeze(-1)).sum(1)
            n_win = valid.sum(1, keepdim=True)
            n_ses = in_sess.sum(1, keepdim=True)
            ses_dur = (torch.abs(dt) * in_sess).amax(1, keepdim=True)
            n_same_item = same_item.sum(1, keepdim=True)
            us = user_stats
            agg = torch.cat([torch.log1p(cnt_win), torch.log1p(cnt_ses), torch.log1p(n_win), torch.log1p(n_ses),
                             torch.log1p(ses_dur) * L10, torch.log1p(n_same_item),
                             torch.log1p(torch.clamp(us[:, 0:3], min=0.0)),
                             torch.log1p(torch.clamp(us[:, 3:4], min=0.0) / 3600.0),
                             self._time_feats(us)], dim=1)
            a = self.agg_mlp(agg)
            z = self.trunk(torch.cat([h, ctx, a], dim=1))
            bin_logits = self.bin_head(z)
            na_logits = self.na_head(z)
            pq = self.ptr_q(z).unsqueeze(1)
            ptr = (pq * self.ptr_k(ppos)).sum(-1) / math.sqrt(cfg.pos_dim) + self.ptr_b(ppos).squeeze(-1)
            return bin_logits, na_logits, ptr, valid_b

        def finalize(self, bin_logits, na_logits, ptr, valid_b):
            """Calibrated probabilities / scores as in the contract."""
            probs = torch.sigmoid(bin_logits * self.cal_a + self.cal_b)
            na = torch.softmax(na_logits / self.cal_t, dim=1)
            cs = torch.where(valid_b, ptr, torch.full_like(ptr, PAD_SCORE))
            return probs, na, cs

        def gru_cell(self, x, h):
            """One GRU step with nn.GRU's weights (PyTorch gate order r, z, n)."""
            gi = torch.matmul(x, self.gru.weight_ih_l0.t()) + self.gru.bias_ih_l0
            gh = torch.matmul(h, self.gru.weight_hh_l0.t()) + self.gru.bias_hh_l0
            i_r, i_z, i_n = gi[:, :H], gi[:, H:2 * H], gi[:, 2 * H:]
            h_r, h_z, h_n = gh[:, :H], gh[:, H:2 * H], gh[:, 2 * H:]
            r = torch.sigmoid(i_r + h_r)
            zg = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            return (1.0 - zg) * n + zg * h

    class StepModel(nn.Module):
        """The exported graph: inputs/outputs exactly as udfs/contract.py."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, h_prev, ev_type, ev_item, ev_cat, ev_dt, ev_price, user_stats):
            x = self.net.event_input(ev_type, ev_item, ev_cat, ev_dt, ev_price, user_stats)
            h_next = self.net.gru_cell(x, h_prev)
            probs, na, cs = self.net.finalize(*self.net.heads(h_next, ev_type, ev_item, ev_cat, ev_dt,
                                                              ev_price, user_stats))
            return (h_next, probs[:, 0], probs[:, 1], probs[:, 2], probs[:, 3], na, cs)

    return IntentNet, StepModel


# ----------------------------------------------------------------------------------------------
# training helpers
# ----------------------------------------------------------------------------------------------
WIN_KEYS = ("ev_type", "ev_item", "ev_cat", "ev_dt", "ev_price", "user_stats")


def batch_tensors(D, idx):
    import torch
    return [torch.from_numpy(D[k][idx]) for k in WIN_KEYS]


def seq_forward(net, D, user_list):
    """Full-sequence forward for a list of user indices. Returns (event index array, logits...)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    starts, ends = D["user_starts"], D["user_ends"]
    idx = np.concatenate([np.arange(starts[u], ends[u]) for u in user_list])
    lens = np.array([ends[u] - starts[u] for u in user_list])
    W = batch_tensors(D, idx)
    x = net.event_input(*W)                                                  # [E_b, Din]
    B, T = len(user_list), int(lens.max())
    rows = np.repeat(np.arange(B), lens)
    cols = np.concatenate([np.arange(n) for n in lens])
    rows_t, cols_t = torch.from_numpy(rows), torch.from_numpy(cols)
    xp = x.new_zeros((B, T, x.shape[1]))
    xp[rows_t, cols_t] = x
    packed = pack_padded_sequence(xp, torch.from_numpy(lens), batch_first=True, enforce_sorted=False)
    out, _ = net.gru(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    h = out[rows_t, cols_t]                                                  # [E_b, H]
    bin_logits, na_logits, ptr, valid_b = net.heads(h, *W)
    return idx, h, bin_logits, na_logits, ptr, valid_b


def losses(D, idx, bin_logits, na_logits, ptr, valid_b):
    import torch
    import torch.nn.functional as F
    parts = {}
    for j, hname in enumerate(BINARY_HEADS):
        m = torch.from_numpy(D["m_" + hname][idx])
        if m.any():
            y = torch.from_numpy(D["y_" + hname][idx])
            parts[hname] = F.binary_cross_entropy_with_logits(bin_logits[m, j], y[m])
    hn = torch.from_numpy(D["has_next"][idx])
    if hn.any():
        parts["next_action"] = F.cross_entropy(na_logits[hn], torch.from_numpy(D["next_type"][idx])[hn] - 1)
        # category loss aligned with serving's aggregation: a category's score is the max over its
        # window positions; softmax over the distinct categories in the window (one representative
        # position each: its latest occurrence); target = the next event's category when present.
        cats = torch.from_numpy(D["ev_cat"][idx])
        eq = (cats.unsqueeze(2) == cats.unsqueeze(1)) & valid_b.unsqueeze(1) & valid_b.unsqueeze(2)
        s_m = torch.where(valid_b, ptr, torch.full_like(ptr, -1e9))
        catmax = torch.where(eq, s_m.unsqueeze(1), torch.full_like(eq, -1e9, dtype=ptr.dtype)).amax(2)
        n = cats.shape[1]
        later = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        rep = valid_b & ~(eq & later).any(2)
        tgt = rep & (cats == torch.from_numpy(D["next_cat"][idx]).unsqueeze(1))
        ok = tgt.any(1) & hn
        if ok.any():
            logits = torch.where(rep, catmax, torch.full_like(catmax, -1e9))[ok]
            parts["category"] = F.cross_entropy(logits, tgt[ok].float().argmax(1))
    return parts


def predict(net, D, users, batch_users=32):
    """Uncalibrated logits for all events of `users` (sequence forward), in event order."""
    import torch
    net.eval()
    n = len(D["timestamp"])
    out = {"h": np.zeros((n, net.gru.hidden_size), np.float32), "bin": np.zeros((n, len(BINARY_HEADS)), np.float32),
           "na": np.zeros((n, N_TYPES), np.float32), "ptr": np.zeros((n, D["ev_type"].shape[1]), np.float32)}
    sel = np.zeros(n, bool)
    with torch.no_grad():
        for i in range(0, len(users), batch_users):
            idx, h, b, na, p, _ = seq_forward(net, D, users[i:i + batch_users])
            out["h"][idx], out["bin"][idx], out["na"][idx], out["ptr"][idx] = h.numpy(), b.numpy(), na.numpy(), p.numpy()
            sel[idx] = True
    out["sel"] = sel
    return out


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def top_categories(scores, cats, valid, k=3):
    """Serving's aggregation: max score per distinct category among valid positions, best first."""
    order = np.argsort(-scores, kind="stable")
    out = []
    for j in order:
        if not valid[j]:
            continue
        c = cats[j]
        if c not in out:
            out.append(c)
            if len(out) == k:
                break
    return out


def ece(y, p, bins=10):
    edges = np.linspace(0, 1, bins + 1)
    b = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    tot = 0.0
    for i in range(bins):
        m = b == i
        if m.any():
            tot += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(tot / len(y))


def metrics_markdown(report) -> str:
    """The test-metrics tables of the model card, rendered from report.json."""
    m = report["test_metrics"]
    sp = report["split"]
    lines = [f"Model `{report['model_version']}`, test users: {sp['test']['users']} "
             f"({sp['test']['events']} events); train {sp['train']['users']} users, val {sp['val']['users']} users.", "",
             "| head | n (test) | positives | base rate | ROC-AUC | PR-AUC | Brier (base-rate Brier) | ECE |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for h in BINARY_HEADS:
        e = m["binary"][h]
        if "roc_auc" in e:
            lines.append(f"| {h} | {e['n']} | {e['positives']} | {e['base_rate']:.4f} | {e['roc_auc']:.3f} | "
                         f"{e['pr_auc']:.3f} | {e['brier']:.4f} ({e['brier_base_rate']:.4f}) | {e['ece']:.4f} |")
        else:
            lines.append(f"| {h} | {e['n']} | {e['positives']} | {e['base_rate']} | n/a | n/a | n/a | n/a |")
    na = m["next_action"]
    lines += ["", f"Next action (n={na['n']}, classes scored: {', '.join(na['labels_scored'])}):", "",
              "| predictor | accuracy | macro-F1 |", "|---|---:|---:|"]
    for key, label in (("model_argmax", "model, argmax"),
                       ("model_prior_corrected_argmax", "model, argmax of p / train prior"),
                       ("markov_first_order", "first-order Markov rule (fit on train)"),
                       ("majority_class", "always `view`")):
        lines.append(f"| {label} | {na[key]['accuracy']:.4f} | {na[key]['macro_f1']:.4f} |")
    lines.append(f"\nNext-action log loss: model {na['log_loss']:.4f} vs train prior {na['log_loss_train_prior']:.4f}.")
    c = m["category"]
    lines += ["", f"Next category (n={c['n']}; next category present in the 50-event window: "
              f"{c['next_cat_in_window_rate']:.3f}):", "",
              "| predictor | hit@3 |", "|---|---:|",
              f"| model (category_scores, max per category) | {c['hit_at_3']:.4f} |",
              f"| most recent 3 distinct categories in window | {c['baseline_recency_hit_at_3']:.4f} |",
              f"| 3 most frequent categories in window | {c['baseline_frequency_hit_at_3']:.4f} |",
              f"| model, only events whose next category is in the window | {c['hit_at_3_given_in_window']:.4f} |"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "models")
    ap.add_argument("--epochs", type=int, default=Config.epochs)
    ap.add_argument("--hidden", type=int, default=Config.hidden)
    ap.add_argument("--seed", type=int, default=Config.seed)
    ap.add_argument("--threads", type=int, default=Config.threads)
    ap.add_argument("--version", default=DEFAULT_VERSION)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override any Config field, e.g. --set dropout=0.2 (repeatable)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    cfg = Config(epochs=args.epochs, hidden=args.hidden, seed=args.seed, threads=args.threads)
    for kv in args.set:
        k, v = kv.split("=", 1)
        if not hasattr(cfg, k):
            ap.error(f"unknown config field {k}")
        setattr(cfg, k, type(getattr(cfg, k))(v))
    t0 = time.time()
    timings = {}
    os.environ.setdefault("PYTHONHASHSEED", "0")
    import torch
    from tqdm import tqdm
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    out_dir = args.out.resolve()
    (out_dir / "eval").mkdir(parents=True, exist_ok=True)
    (out_dir / "testdata").mkdir(parents=True, exist_ok=True)
    N = cfg.window

    # ---- data ------------------------------------------------------------------------------
    print(f"[data] {args.data}")
    df, data_info = load_events(args.data)
    data_info["sha256"] = sha256_file(args.data)
    data_info["path_name"] = args.data.name
    D = build_arrays(df, N)
    n_users = len(D["user_ids"])
    split = np.array([user_split(int(u), cfg.split_salt) for u in D["user_ids"]])
    users = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    ev_split = split[D["user_of"]]
    timings["data_s"] = round(time.time() - t0, 2)
    print(f"[data] {data_info['rows_used']} events, {n_users} users; split users "
          f"{ {s: len(u) for s, u in users.items()} } ({timings['data_s']} s)")

    # ---- base rates --------------------------------------------------------------------------
    def label_stats(mask_split):
        r = {}
        for hname in BINARY_HEADS:
            m = D["m_" + hname] & mask_split
            r[hname] = {"n": int(m.sum()), "positives": int(D["y_" + hname][m].sum()),
                        "rate": float(D["y_" + hname][m].mean()) if m.any() else None}
        hn = D["has_next"] & mask_split
        r["next_action"] = {"n": int(hn.sum()), "dist": {contract.EVENT_TYPES[c - 1]: float(np.mean(D["next_type"][hn] == c))
                                                          for c in range(1, N_TYPES + 1) if np.any(D["next_type"][hn] == c)}}
        incl = (D["ev_cat"][hn] == D["next_cat"][hn][:, None]).any(1)
        r["category"] = {"n": int(hn.sum()), "next_cat_in_window": float(incl.mean())}
        return r

    split_info = {s: {"users": int(len(users[s])), "events": int((ev_split == s).sum()),
                      "labels": label_stats(ev_split == s)} for s in users}

    # ---- model -------------------------------------------------------------------------------
    IntentNet, StepModel = make_model(cfg)
    net = IntentNet()
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    train_users = users["train"]
    # sort-ish batching: shuffle, then bucket by length inside chunks to limit padding
    lens_all = D["user_ends"] - D["user_starts"]

    def val_loss():
        net.eval()
        tot, cnt = {}, {}
        with torch.no_grad():
            vu = users["val"]
            for i in range(0, len(vu), 32):
                idx, h, b, na, p, vb = seq_forward(net, D, vu[i:i + 32])
                for k, v in losses(D, idx, b, na, p, vb).items():
                    tot[k] = tot.get(k, 0.0) + float(v) * len(idx)
                    cnt[k] = cnt.get(k, 0) + len(idx)
        parts = {k: tot[k] / cnt[k] for k in tot}
        return sum(parts.values()), parts

    best, best_state, best_epoch, bad = float("inf"), None, -1, 0
    history = []
    t_train = time.time()
    bar = tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=args.no_progress)
    for epoch in bar:
        net.train()
        perm = rng.permutation(train_users)
        chunks = [perm[i:i + cfg.batch_users * 4] for i in range(0, len(perm), cfg.batch_users * 4)]
        batches = []
        for c in chunks:
            c = c[np.argsort(lens_all[c], kind="stable")]
            batches += [c[i:i + cfg.batch_users] for i in range(0, len(c), cfg.batch_users)]
        order = rng.permutation(len(batches))
        run = {}
        for bi in order:
            idx, h, b, na, p, vb = seq_forward(net, D, batches[bi])
            parts = losses(D, idx, b, na, p, vb)
            loss = sum(parts.values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            for k, v in parts.items():
                run[k] = run.get(k, 0.0) + float(v.detach()) / len(batches)
        vl, vparts = val_loss()
        history.append({"epoch": epoch, "train": {k: round(v, 5) for k, v in run.items()}, "val_total": round(vl, 5),
                        "val": {k: round(v, 5) for k, v in vparts.items()}})
        bar.set_postfix(train=f"{sum(run.values()):.3f}", val=f"{vl:.3f}")
        if vl < best - 1e-4:
            best, best_epoch, bad = vl, epoch, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    net.load_state_dict(best_state)
    timings["train_s"] = round(time.time() - t_train, 2)
    print(f"[train] best epoch {best_epoch} val loss {best:.4f} ({timings['train_s']} s, {n_params} params)")

    # ---- stage 2: fine-tune only the pointer branch (category head keeps improving after the
    # binary heads start to overfit; the other outputs do not depend on these weights) ----------
    t_ptr = time.time()
    ptr_params = [p for n, p in net.named_parameters() if n.startswith("ptr_")]
    for n_, p_ in net.named_parameters():
        p_.requires_grad_(n_.startswith("ptr_"))
    opt2 = torch.optim.AdamW(ptr_params, lr=cfg.ptr_lr, weight_decay=cfg.weight_decay)
    ptr_best = val_loss()[1]["category"]
    ptr_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    ptr_hist, bad, ptr_best_epoch = [round(ptr_best, 5)], 0, -1
    bar = tqdm(range(cfg.ptr_epochs), desc="pointer", unit="epoch", disable=args.no_progress)
    for epoch in bar:
        net.train()
        perm = rng.permutation(train_users)
        for i in range(0, len(perm), cfg.batch_users):
            idx, h, b, na, p, vb = seq_forward(net, D, perm[i:i + cfg.batch_users])
            loss = losses(D, idx, b, na, p, vb)["category"]
            opt2.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ptr_params, 1.0)
            opt2.step()
        vc = val_loss()[1]["category"]
        ptr_hist.append(round(vc, 5))
        bar.set_postfix(val_category=f"{vc:.4f}")
        if vc < ptr_best - 1e-4:
            ptr_best, ptr_best_epoch, bad = vc, epoch, 0
            ptr_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= 3:
                break
    net.load_state_dict(ptr_state)
    for p_ in net.parameters():
        p_.requires_grad_(True)
    timings["pointer_finetune_s"] = round(time.time() - t_ptr, 2)
    print(f"[pointer] val category loss {ptr_hist[0]:.4f} -> {ptr_best:.4f} (best stage-2 epoch {ptr_best_epoch}, "
          f"{timings['pointer_finetune_s']} s)")

    # ---- calibration on validation -------------------------------------------------------------
    from sklearn.linear_model import LogisticRegression
    pv = predict(net, D, users["val"])
    cal_a, cal_b = np.ones(len(BINARY_HEADS)), np.zeros(len(BINARY_HEADS))
    for j, hname in enumerate(BINARY_HEADS):
        m = D["m_" + hname] & pv["sel"]
        y = D["y_" + hname][m]
        if 0 < y.sum() < len(y) and y.sum() >= 5:
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(pv["bin"][m, j:j + 1].astype(np.float64), y)
            if lr.coef_[0, 0] > 0:
                cal_a[j], cal_b[j] = lr.coef_[0, 0], lr.intercept_[0]
    hn = D["has_next"] & pv["sel"]
    z, yv = pv["na"][hn].astype(np.float64), D["next_type"][hn] - 1
    temps = np.exp(np.linspace(np.log(0.5), np.log(3.0), 121))
    nll = [-np.mean(np.log(softmax(z / t)[np.arange(len(yv)), yv] + 1e-12)) for t in temps]
    cal_t = float(temps[int(np.argmin(nll))])
    net.cal_a.copy_(torch.tensor(cal_a, dtype=torch.float32))
    net.cal_b.copy_(torch.tensor(cal_b, dtype=torch.float32))
    net.cal_t.fill_(cal_t)
    calibration = {"method": "Platt per binary head (a*logit+b) and softmax temperature, fit on validation users",
                   "a": dict(zip(BINARY_HEADS, map(float, cal_a))), "b": dict(zip(BINARY_HEADS, map(float, cal_b))),
                   "next_action_temperature": cal_t}

    # ---- test metrics --------------------------------------------------------------------------
    from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss, f1_score,
                                 roc_auc_score)
    pt = predict(net, D, users["test"])
    sel_t = pt["sel"]
    metrics = {"binary": {}, "next_action": {}, "category": {}}
    curves = {}
    for j, hname in enumerate(BINARY_HEADS):
        m = D["m_" + hname] & sel_t
        y = D["y_" + hname][m]
        p = sigmoid(pt["bin"][m, j] * cal_a[j] + cal_b[j])
        p_raw = sigmoid(pt["bin"][m, j])
        ent = {"n": int(m.sum()), "positives": int(y.sum()), "base_rate": float(y.mean()) if len(y) else None}
        if 0 < y.sum() < len(y):
            ent.update(roc_auc=float(roc_auc_score(y, p)), pr_auc=float(average_precision_score(y, p)),
                       brier=float(brier_score_loss(y, p)), brier_base_rate=float(brier_score_loss(y, np.full_like(p, y.mean()))),
                       ece=float(ece(y, p)), ece_uncalibrated=float(ece(y, p_raw)), mean_pred=float(p.mean()))
            curves[hname] = (y, p)
        metrics["binary"][hname] = ent
    # next action
    hn = D["has_next"] & sel_t
    y = D["next_type"][hn]
    pna = softmax(pt["na"][hn] / cal_t)
    pred = pna.argmax(1) + 1
    present = sorted(set(D["next_type"][D["has_next"] & (ev_split == "train")].tolist()))
    # first-order Markov baseline fit on train
    htr = D["has_next"] & (ev_split == "train")
    trans = np.zeros((N_TYPES + 1, N_TYPES + 1))
    np.add.at(trans, (D["type"][htr], D["next_type"][htr]), 1)
    markov_rule = {int(c): int(trans[c].argmax()) if trans[c].sum() > 0 else T_VIEW for c in range(1, N_TYPES + 1)}
    pred_mk = np.array([markov_rule[int(c)] for c in D["type"][hn]])
    # balanced decision rule (argmax of p / train prior) -- reported for macro-F1 only
    prior = np.array([max(np.mean(D["next_type"][htr] == c), 1e-6) for c in range(1, N_TYPES + 1)])
    seen = np.isin(np.arange(1, N_TYPES + 1), present)
    pred_bal = np.where(seen, pna / prior, -1.0).argmax(1) + 1
    nll = float(-np.mean(np.log(pna[np.arange(len(y)), y - 1] + 1e-12)))
    prior_nll = float(-np.mean(np.log(prior[y - 1])))
    metrics["next_action"] = {
        "n": int(hn.sum()), "labels_scored": [contract.EVENT_TYPES[c - 1] for c in present],
        "model_argmax": {"accuracy": float(accuracy_score(y, pred)),
                         "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0))},
        "model_prior_corrected_argmax": {"accuracy": float(accuracy_score(y, pred_bal)),
                                         "macro_f1": float(f1_score(y, pred_bal, labels=present, average="macro", zero_division=0))},
        "markov_first_order": {"rule": {contract.EVENT_TYPES[k - 1]: contract.EVENT_TYPES[v - 1] for k, v in markov_rule.items()
                                        if trans[k].sum() > 0},
                               "accuracy": float(accuracy_score(y, pred_mk)),
                               "macro_f1": float(f1_score(y, pred_mk, labels=present, average="macro", zero_division=0))},
        "majority_class": {"accuracy": float(np.mean(y == T_VIEW)),
                           "macro_f1": float(f1_score(y, np.full_like(y, T_VIEW), labels=present, average="macro", zero_division=0))},
        "log_loss": nll, "log_loss_train_prior": prior_nll,
        "per_class_f1_model_argmax": {contract.EVENT_TYPES[c - 1]: float(v) for c, v in
                                      zip(present, f1_score(y, pred, labels=present, average=None, zero_division=0))},
        "per_class_f1_prior_corrected": {contract.EVENT_TYPES[c - 1]: float(v) for c, v in
                                         zip(present, f1_score(y, pred_bal, labels=present, average=None, zero_division=0))},
    }
    # category hit@3
    ev_idx = np.flatnonzero(hn)
    hits = {"model": 0, "recency": 0, "frequency": 0}
    in_win = 0
    for i in ev_idx:
        cats, valid = D["ev_cat"][i], D["ev_type"][i] != 0
        tgt = D["next_cat"][i]
        in_win += bool(np.any(cats[valid] == tgt))
        cs = np.where(valid, pt["ptr"][i], PAD_SCORE)
        hits["model"] += tgt in top_categories(cs, cats, valid)
        hits["recency"] += tgt in top_categories(np.arange(N, dtype=np.float64), cats, valid)
        vc = cats[valid]
        uniq, cnt = np.unique(vc, return_counts=True)
        freq = dict(zip(uniq.tolist(), cnt.tolist()))
        fs = np.array([freq.get(c, 0) + j / (10.0 * N) for j, c in enumerate(cats)], dtype=np.float64)
        hits["frequency"] += tgt in top_categories(fs, cats, valid)
    n_ev = len(ev_idx)
    metrics["category"] = {"n": n_ev, "next_cat_in_window_rate": in_win / n_ev,
                           "hit_at_3": hits["model"] / n_ev,
                           "hit_at_3_given_in_window": hits["model"] / max(in_win, 1),
                           "baseline_recency_hit_at_3": hits["recency"] / n_ev,
                           "baseline_frequency_hit_at_3": hits["frequency"] / n_ev}
    print(f"[test] " + ", ".join(f"{h}: AUC {metrics['binary'][h].get('roc_auc', float('nan')):.3f} "
                                  f"PR {metrics['binary'][h].get('pr_auc', float('nan')):.3f}" for h in BINARY_HEADS))
    print(f"[test] next_action acc {metrics['next_action']['model_argmax']['accuracy']:.4f} macroF1 "
          f"{metrics['next_action']['model_argmax']['macro_f1']:.4f} (prior-corrected "
          f"{metrics['next_action']['model_prior_corrected_argmax']['macro_f1']:.4f}; markov "
          f"{metrics['next_action']['markov_first_order']['macro_f1']:.4f}); category hit@3 "
          f"{metrics['category']['hit_at_3']:.4f} (recency {metrics['category']['baseline_recency_hit_at_3']:.4f})")

    # ---- plots ---------------------------------------------------------------------------------
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve
    for kind in ("roc", "pr", "calibration"):
        fig, axes = plt.subplots(2, 2, figsize=(9, 8))
        for ax, hname in zip(axes.ravel(), BINARY_HEADS):
            ent = metrics["binary"][hname]
            if hname not in curves:
                ax.set_title(f"{hname}: no positives on test")
                continue
            y, p = curves[hname]
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=f"model AUC={ent['roc_auc']:.3f}")
                ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
                ax.set_xlabel("false positive rate"); ax.set_ylabel("true positive rate")
            elif kind == "pr":
                pr, rc, _ = precision_recall_curve(y, p)
                ax.plot(rc, pr, label=f"model AP={ent['pr_auc']:.3f}")
                ax.axhline(ent["base_rate"], color="k", ls="--", lw=0.8, label=f"base rate {ent['base_rate']:.3f}")
                ax.set_xlabel("recall"); ax.set_ylabel("precision")
            else:
                nb = 10 if y.sum() >= 50 else 5
                fp, mp = calibration_curve(y, p, n_bins=nb, strategy="quantile")
                ax.plot(mp, fp, "o-", label=f"model (ECE {ent['ece']:.3f})")
                lim = max(float(mp.max()), float(fp.max())) * 1.05
                ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="perfect")
                ax.set_xlabel("mean predicted"); ax.set_ylabel("observed rate")
            ax.set_title(f"{hname} (test n={ent['n']}, pos={ent['positives']})")
            ax.legend(loc="best", fontsize=8)
        fig.suptitle(f"IntentFlow {args.version} -- {kind.upper()} on test users")
        fig.tight_layout()
        fig.savefig(out_dir / "eval" / f"{kind}.png", dpi=90)
        plt.close(fig)

    # ---- export --------------------------------------------------------------------------------
    t_exp = time.time()
    net.eval()
    step = StepModel(net).eval()
    onnx_path = out_dir / "intent_model.onnx"
    in_names = [s.name for s in contract.INPUTS]
    out_names = [s.name for s in contract.OUTPUTS]
    ex_idx = np.arange(3)
    example = (torch.zeros(3, cfg.hidden),) + tuple(batch_tensors(D, ex_idx))
    dyn = {n: {0: "batch"} for n in in_names + out_names}
    tmp_path = onnx_path.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(step, example, str(tmp_path), input_names=in_names, output_names=out_names,
                          dynamic_axes=dyn, opset_version=17, dynamo=False, do_constant_folding=True)
    import onnx
    model = onnx.load(str(tmp_path))
    # fixed symbolic names for readability: batch; window/hidden/types/stats concrete
    onnx.helper.set_model_props(model, {contract.META_CONTRACT: contract.CONTRACT_VERSION,
                                        contract.META_VERSION: args.version,
                                        contract.META_WINDOW: str(N),
                                        contract.META_HIDDEN: str(cfg.hidden)})
    model.doc_string = (f"IntentFlow intent model {args.version}: GRU({cfg.hidden}) step + window attention "
                        f"+ multi-task heads; contract udfs/contract.py v{contract.CONTRACT_VERSION}")
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path))
    os.replace(tmp_path, onnx_path)
    timings["export_s"] = round(time.time() - t_exp, 2)

    # ---- verify: ONNX step-by-step vs torch full-sequence ------------------------------------
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    tu = users["test"]
    tl = lens_all[tu]
    # a few test users: shortest, one just above the window, a long one, plus a median one
    picks = []
    for target in (int(tl.min()), N + 10, 150, int(np.median(tl))):
        cand = [u for u in tu[np.argsort(np.abs(tl - target), kind="stable")] if u not in picks]
        picks.append(int(cand[0]))
    with torch.no_grad():
        idx, h_seq, b, na, p, vb = seq_forward(net, D, picks)
        probs_s, na_s, cs_s = net.finalize(b, na, p, vb)
    expected = {"h_next": h_seq.numpy(), "next_action": na_s.numpy(), "category_scores": cs_s.numpy()}
    for j, hname in enumerate(BINARY_HEADS):
        expected[hname] = probs_s[:, j].numpy()
    feeds_all = {k: D[k][idx] for k in WIN_KEYS}
    max_diff = {k: 0.0 for k in out_names}
    offsets = np.r_[0, np.cumsum([lens_all[u] for u in picks])]
    for ui in range(len(picks)):
        h = np.zeros((1, cfg.hidden), np.float32)
        for r in range(offsets[ui], offsets[ui + 1]):
            feeds = {"h_prev": h}
            feeds.update({k: feeds_all[k][r:r + 1] for k in WIN_KEYS})
            outs = dict(zip(out_names, sess.run(out_names, feeds)))
            for k in out_names:
                max_diff[k] = max(max_diff[k], float(np.max(np.abs(outs[k] - expected[k][r:r + 1]))))
            h = outs["h_next"]
    step_ok = all(v <= 1e-4 for v in max_diff.values())
    print(f"[verify] ONNX step-by-step vs torch sequence, max |diff| = {max(max_diff.values()):.2e} "
          f"over {offsets[-1]} steps of {len(picks)} test users -> {'OK' if step_ok else 'FAIL'}")
    np.savez_compressed(out_dir / "testdata" / "step_check.npz", offsets=offsets.astype(np.int64),
                        user_lengths=np.array([lens_all[u] for u in picks], np.int64),
                        **{"in_" + k: v for k, v in feeds_all.items()},
                        **{"out_" + k: v.astype(np.float32) for k, v in expected.items()})
    # ORT step throughput (batch 256, one thread), informative only
    bi = np.flatnonzero(sel_t)[:256]
    feeds = {"h_prev": pt["h"][bi]}
    feeds.update({k: D[k][bi] for k in WIN_KEYS})
    sess.run(out_names, feeds)
    tt = time.time(); reps = 20
    for _ in range(reps):
        sess.run(out_names, feeds)
    steps_per_s = reps * len(bi) / (time.time() - tt)

    # ---- report --------------------------------------------------------------------------------
    timings["total_s"] = round(time.time() - t0, 2)
    report = {
        "model_version": args.version, "contract_version": contract.CONTRACT_VERSION,
        "data": data_info, "config": asdict(cfg), "params": int(n_params),
        "label_definitions": {
            "p_buy_session": "a purchase strictly later (index order) in the same 30-min-gap session; censored "
                             "(dropped) when the session's last event is within 30 min of the data end",
            "p_buy_24h": "a purchase strictly later with timestamp <= t + 24h; dropped when t + 24h > data end",
            "p_cart_abandon": "add_to_cart events only: no later purchase of the same item within 24h; "
                              "dropped when t + 24h > data end",
            "p_no_return_48h": "no later event of the user with timestamp <= t + 48h; dropped when t + 48h > data end",
            "next_action": "type of the user's next event (last event has no label)",
            "category": "category of the next event; hit@3 over top-3 distinct categories by max category_score",
        },
        "split": {"method": f"sha256('{cfg.split_salt}:'+user_id) % 100: <70 train, <85 val, else test",
                  **split_info},
        "calibration": calibration, "test_metrics": metrics,
        "training": {"best_epoch": best_epoch, "best_val_loss": best, "history": history,
                     "pointer_finetune": {"val_category_loss_by_epoch": ptr_hist, "best_epoch": ptr_best_epoch}},
        "export": {"onnx_bytes": onnx_path.stat().st_size, "onnx_sha256": sha256_file(onnx_path),
                   "opset": 17, "step_check_users": [int(D["user_ids"][u]) for u in picks],
                   "step_check_steps": int(offsets[-1]), "step_vs_sequence_max_abs_diff": max_diff,
                   "step_check_ok": step_ok, "ort_cpu_steps_per_s_batch256_1thread": round(steps_per_s)},
        "timings_s": timings,
        "env": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": ort.__version__, "numpy": np.__version__},
    }
    with open(out_dir / "eval" / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    (out_dir / "eval" / "metrics.md").write_text(metrics_markdown(report))
    print(f"[done] {onnx_path} ({report['export']['onnx_bytes']} bytes), report {out_dir / 'eval' / 'report.json'}, "
          f"total {timings['total_s']} s")
    if not step_ok:
        sys.exit("step-by-step ONNX does not match the sequence forward")


if __name__ == "__main__":
    main()
