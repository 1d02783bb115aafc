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
* Baselines (logistic regression, gradient-boosted trees) use hand-made aggregates computed by
  ``IntentNet.fusion_features`` from the same raw inputs, fit on the same train users. The logistic
  one is also fused into the graph; fusion weights + calibration are fit on validation users, so
  the test users are touched only for the report (metrics, user-bootstrap CIs, target statement).
* After export the graph itself scores the other datasets (``--transfer``) through the canonical
  mapping of jobs/datasets.py with the same label definitions (models/intent_data.py).
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from udfs import contract  # noqa: E402

from models.intent_data import (BINARY_HEADS, N_TYPES, SESSION_GAP, T_BUY, T_CART, T_FAV,  # noqa: E402
                                T_VIEW, WIN_KEYS, build_arrays, load_canonical, load_taobao, replay_step_model,
                                user_split)
from models import intent_metrics as im  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "taobao_userbehavior" / "UserBehavior_sample.csv"
PAD_SCORE = -1.0e9           # category_scores at padding positions
DEFAULT_VERSION = "gru-attn-fused-2026.12.03-2"


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
        n_fusion_features = 4 * N_TYPES + 25

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
            # fusion with a linear model on hand-made aggregates (fusion_features), all fitted after
            # training: the linear model on train users, the fusion weights on validation users.
            # Defaults make the fused outputs equal to the plain calibrated sequence model.
            nf = self.n_fusion_features
            self.register_buffer("feat_mu", torch.zeros(nf))
            self.register_buffer("feat_sd", torch.ones(nf))
            self.register_buffer("lin_w", torch.zeros(nf, len(BINARY_HEADS)))
            self.register_buffer("lin_b", torch.zeros(len(BINARY_HEADS)))
            self.register_buffer("cal_f", torch.zeros(len(BINARY_HEADS)))   # weight of the linear logit
            self.register_buffer("lin_na_w", torch.zeros(nf, N_TYPES))
            self.register_buffer("lin_na_b", torch.zeros(N_TYPES))
            self.register_buffer("na_f", torch.zeros(1))                     # weight of the linear log-probs
            self.register_buffer("na_b", torch.zeros(N_TYPES))
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

        def fusion_features(self, ev_type, ev_item, ev_cat, ev_dt, ev_price, user_stats):
            """Hand-made aggregates of the window ending at the scored event (its past only) + user_stats:
            the inputs of the linear model fused into the graph and of the sklearn baselines. [B, F]"""
            valid = (ev_type != 0).float()
            dt = ev_dt * valid
            prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1) * valid
            gap = torch.clamp(dt - torch.cat([dt[:, :1], dt[:, :-1]], dim=1), min=0.0) * prev_valid
            brk = (gap > SESSION_GAP).float() * prev_valid
            in_sess = (torch.matmul(brk, self.tri) < 0.5).float() * valid
            onehot = (ev_type.unsqueeze(-1) == self.type_codes).float()        # [B,N,7]
            same_item = (ev_item == ev_item[:, -1:]).float() * valid * (ev_item[:, -1:] != 0).float()
            same_cat = (ev_cat == ev_cat[:, -1:]).float() * valid * (ev_cat[:, -1:] != 0).float()
            age = torch.abs(dt)
            far = torch.full_like(age, 1.0e7)

            def since(mask):
                t = torch.where(mask > 0.5, age, far).amin(1, keepdim=True)
                return torch.log1p(t) * 0.1, (t >= 1.0e7).float()
            since_cart, no_cart = since(onehot[:, :, T_CART - 1])
            since_buy, no_buy = since(onehot[:, :, T_BUY - 1])
            n_win = valid.sum(1, keepdim=True)
            us = torch.clamp(user_stats[:, 0:4], min=0.0)
            has_prev = prev_valid[:, -1:]
            cols = [torch.log1p(onehot.sum(1)), torch.log1p((onehot * in_sess.unsqueeze(-1)).sum(1)),
                    torch.log1p(onehot[:, -10:].sum(1)), onehot[:, -1],
                    torch.log1p(n_win), torch.log1p(in_sess.sum(1, keepdim=True)),
                    torch.log1p((age * in_sess).amax(1, keepdim=True)) * 0.1,
                    torch.log1p(gap[:, -1:]) * 0.1, has_prev,
                    torch.log1p(same_item.sum(1, keepdim=True)), torch.log1p(same_cat.sum(1, keepdim=True)),
                    torch.log1p((same_item * in_sess).sum(1, keepdim=True)),
                    torch.log1p((same_cat * in_sess).sum(1, keepdim=True)),
                    torch.log1p((same_item * onehot[:, :, T_CART - 1]).sum(1, keepdim=True)),
                    torch.log1p((same_item * onehot[:, :, T_BUY - 1]).sum(1, keepdim=True)),
                    torch.log1p((same_item * onehot[:, :, T_FAV - 1]).sum(1, keepdim=True)),
                    since_cart, no_cart, since_buy, no_buy,
                    torch.log1p(us[:, 0:3]), torch.log1p(us[:, 3:4] / 3600.0), torch.log1p(us[:, 0:1] + n_win),
                    self._time_feats(user_stats)]
            return torch.cat(cols, dim=1)

        def fused_logits(self, bin_logits, na_logits, feats):
            """Binary logits and next-action logits after fusing with the linear model (calibration included)."""
            z = (feats - self.feat_mu) / self.feat_sd
            lin = torch.matmul(z, self.lin_w) + self.lin_b
            lin_na = torch.log_softmax(torch.matmul(z, self.lin_na_w) + self.lin_na_b, dim=1)
            return (bin_logits * self.cal_a + lin * self.cal_f + self.cal_b,
                    na_logits / self.cal_t + lin_na * self.na_f + self.na_b)

        def finalize(self, bin_logits, na_logits, ptr, valid_b, feats):
            """Calibrated (fused) probabilities / scores as in the contract."""
            fb, fna = self.fused_logits(bin_logits, na_logits, feats)
            probs = torch.sigmoid(fb)
            na = torch.softmax(fna, dim=1)
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
            feats = self.net.fusion_features(ev_type, ev_item, ev_cat, ev_dt, ev_price, user_stats)
            probs, na, cs = self.net.finalize(*self.net.heads(h_next, ev_type, ev_item, ev_cat, ev_dt,
                                                              ev_price, user_stats), feats)
            return (h_next, probs[:, 0], probs[:, 1], probs[:, 2], probs[:, 3], na, cs)

    return IntentNet, StepModel


# ----------------------------------------------------------------------------------------------
# training helpers
# ----------------------------------------------------------------------------------------------

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


def fusion_feature_names() -> list[str]:
    """Column names of IntentNet.fusion_features, in order (for the report)."""
    t = contract.EVENT_TYPES
    return ([f"log1p_count_{x}_window" for x in t] + [f"log1p_count_{x}_session" for x in t]
            + [f"log1p_count_{x}_last10" for x in t] + [f"is_{x}" for x in t]
            + ["log1p_window_len", "log1p_session_len", "log1p_session_duration_s", "log1p_gap_prev_s", "has_prev",
               "log1p_same_item_window", "log1p_same_cat_window", "log1p_same_item_session", "log1p_same_cat_session",
               "log1p_same_item_carts", "log1p_same_item_buys", "log1p_same_item_favs",
               "log1p_since_last_cart_s", "no_cart_in_window", "log1p_since_last_buy_s", "no_buy_in_window",
               "log1p_events_before_window", "log1p_purchases_total", "log1p_carts_total", "log1p_hours_since_first",
               "log1p_events_total", "sin_hour", "cos_hour", "sin_weekday", "cos_weekday"])


def compute_features(net, D, chunk=4096) -> np.ndarray:
    """fusion_features for every event (the same torch code the graph runs), float64."""
    import torch
    E = len(D["timestamp"])
    out = np.zeros((E, net.n_fusion_features), np.float64)
    with torch.no_grad():
        for i in range(0, E, chunk):
            out[i:i + chunk] = net.fusion_features(*batch_tensors(D, np.arange(i, min(E, i + chunk)))).numpy()
    return out


def fit_hgb(X, y, X_val, y_val, seed, multiclass=False):
    """HistGradientBoosting fit on train users; the number of trees is chosen by validation-user log loss."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    clf = HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, max_leaf_nodes=15, min_samples_leaf=40,
                                         l2_regularization=1.0, early_stopping=False, random_state=seed).fit(X, y)
    losses_ = []
    for p in clf.staged_predict_proba(X_val):
        p = np.clip(p, 1e-12, 1)
        if multiclass:
            losses_.append(-np.mean(np.log(p[np.arange(len(y_val)), np.searchsorted(clf.classes_, y_val)])))
        else:
            losses_.append(-np.mean(y_val * np.log(p[:, 1]) + (1 - y_val) * np.log(p[:, 0])))
    return clf, int(np.argmin(losses_))


def staged_at(clf, X, it):
    """predict_proba of a boosted model after iteration ``it`` (0-based)."""
    for i, p in enumerate(clf.staged_predict_proba(X)):
        if i == it:
            return p
    raise ValueError(it)


def fit_baselines(F, Z, D, ev_split, present, seed) -> tuple[dict, dict, dict]:
    """Logistic regression (standardised features) and gradient-boosted trees (raw features), per head,
    fit on train users only. Returns (scores per predictor per head over all events -- gradient-boosted
    scores only for validation/test events, NaN on train --, linear coefficients for the in-graph
    fusion, fit info)."""
    from sklearn.linear_model import LogisticRegression
    E = len(F)
    tr, va = ev_split == "train", ev_split == "val"
    ev = ~tr
    scores = {"logistic": {}, "hgb": {}}
    lin = {"w": np.zeros((F.shape[1], len(BINARY_HEADS))), "b": np.zeros(len(BINARY_HEADS)),
           "na_w": np.zeros((F.shape[1], N_TYPES)), "na_b": np.full(N_TYPES, -50.0)}
    info = {}
    for j, hname in enumerate(BINARY_HEADS):
        m_tr, m_va = D["m_" + hname] & tr, D["m_" + hname] & va
        y_tr = D["y_" + hname][m_tr]
        lr = LogisticRegression(C=1.0, max_iter=3000).fit(Z[m_tr], y_tr)
        lin["w"][:, j], lin["b"][j] = lr.coef_[0], lr.intercept_[0]
        scores["logistic"][hname] = lr.decision_function(Z)
        hgb, it = fit_hgb(F[m_tr], y_tr, F[m_va], D["y_" + hname][m_va], seed)
        scores["hgb"][hname] = np.full(E, np.nan)
        scores["hgb"][hname][ev] = staged_at(hgb, F[ev], it)[:, 1]
        info[hname] = {"train_events": int(m_tr.sum()), "hgb_trees_chosen_on_val": it + 1}
    hn_tr, hn_va = D["has_next"] & tr, D["has_next"] & va
    y_tr = D["next_type"][hn_tr]
    lr = LogisticRegression(C=1.0, max_iter=3000).fit(Z[hn_tr], y_tr)
    cols = np.array(lr.classes_) - 1
    lin["na_w"][:, cols], lin["na_b"][cols] = lr.coef_.T, lr.intercept_
    p_lr = np.zeros((E, N_TYPES))
    p_lr[:, cols] = lr.predict_proba(Z)
    scores["logistic"]["next_action"] = p_lr
    hgb, it = fit_hgb(F[hn_tr], y_tr, F[hn_va], D["next_type"][hn_va], seed, multiclass=True)
    p_h = np.full((E, N_TYPES), np.nan)
    p_h[ev] = 0.0
    p_h[np.ix_(ev, np.array(hgb.classes_) - 1)] = staged_at(hgb, F[ev], it)
    scores["hgb"]["next_action"] = p_h
    info["next_action"] = {"train_events": int(hn_tr.sum()), "classes": [contract.EVENT_TYPES[c - 1] for c in lr.classes_],
                           "hgb_trees_chosen_on_val": it + 1}
    assert set(int(c) for c in lr.classes_) == set(present)
    return scores, lin, info


def log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def fit_fusion(seq_bin, seq_na, lin_bin, lin_na_logp, D, m_val, present) -> dict:
    """Fusion + calibration weights on validation users: per binary head a logistic regression on
    [sequence logit, linear-model logit]; for next action a, f >= 0, per-class bias b minimising
    the NLL of softmax(a * seq_logits + f * linear_log_probs + b) (b only for classes seen in train)."""
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression
    fus = {"a": np.ones(len(BINARY_HEADS)), "f": np.zeros(len(BINARY_HEADS)), "b": np.zeros(len(BINARY_HEADS))}
    for j, hname in enumerate(BINARY_HEADS):
        m = D["m_" + hname] & m_val
        X = np.stack([seq_bin[m, j], lin_bin[m, j]], axis=1).astype(np.float64)
        lr = LogisticRegression(C=1e6, max_iter=2000).fit(X, D["y_" + hname][m])
        fus["a"][j], fus["f"][j], fus["b"][j] = lr.coef_[0, 0], lr.coef_[0, 1], lr.intercept_[0]
    hn = D["has_next"] & m_val
    z, lp, y = seq_na[hn].astype(np.float64), lin_na_logp[hn], D["next_type"][hn] - 1
    cols = np.array(present) - 1

    def nll(theta):
        b = np.zeros(N_TYPES)
        b[cols] = theta[2:]
        return -np.mean(log_softmax(theta[0] * z + theta[1] * lp + b)[np.arange(len(y)), y])
    x0 = np.r_[1.0, 0.0, np.zeros(len(cols))]
    res = minimize(nll, x0, method="L-BFGS-B", bounds=[(0.05, 20.0), (0.0, 5.0)] + [(-10.0, 10.0)] * len(cols))
    fus["na_a"], fus["na_f"] = float(res.x[0]), float(res.x[1])
    fus["na_b"] = np.zeros(N_TYPES)
    fus["na_b"][cols] = res.x[2:]
    fus["val_nll_next_action"] = float(res.fun)
    return fus


def binary_metrics(y, p) -> dict:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
    return {"roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
            "brier": float(brier_score_loss(y, p)), "ece": float(ece(y, p)), "mean_pred": float(p.mean())}


def target_check(user_of, y, preds: dict, model_key, baseline_keys, metric, min_gain, reps, seed, labels=None) -> dict:
    """Model vs the strongest baseline (highest test point estimate) with user-bootstrap 95 % CIs."""
    if metric == "roc_auc":
        groups = {k: im.rank_groups(v) for k, v in preds.items()}
        fns = {k: (lambda w, g=groups[k]: im.roc_auc(y, weights=w, groups=g)) for k in preds}
        point = {k: im.roc_auc(y, groups=groups[k]) for k in preds}
    else:
        fns = {k: (lambda w, pr=v: im.macro_f1(y, pr, labels, w)) for k, v in preds.items()}
        point = {k: im.macro_f1(y, v, labels) for k, v in preds.items()}
    best = max(baseline_keys, key=lambda k: point[k])
    bs = im.user_bootstrap(user_of, fns, reps=reps, seed=seed, diffs=[(model_key, best)])
    diff = point[model_key] - point[best]
    lo = bs["diff_ci95"][f"{model_key} - {best}"][0]
    return {"metric": metric, "required_gain": min_gain, "point": point, "strongest_baseline": best,
            "model": model_key, "gain": diff, "ci95": bs["ci95"], "gain_ci95": bs["diff_ci95"][f"{model_key} - {best}"],
            "met": bool(diff >= min_gain), "met_at_ci_lower_bound": bool(lo >= min_gain),
            "bootstrap": {"reps": bs["reps"], "users": bs["users"], "seed": bs["seed"]}}


def transfer_eval(sess, name, hidden, N, train_prior, present) -> dict:
    """Score one other dataset through the canonical mapping with the exported graph; same labels,
    censored at that dataset's own end (last event time + 1 s)."""
    from jobs.datasets import ReadStats, read_events, resolve_dataset, time_ordered
    path, fmt = resolve_dataset(name)
    stats = ReadStats()
    events = time_ordered(read_events(path, fmt, stats))
    cols = load_canonical(events)
    start, end = int(cols["ts"].min()), int(cols["ts"].max()) + 1
    D = build_arrays(cols, N, end)
    out = replay_step_model(sess, D, np.arange(len(D["user_ids"])), hidden)
    price_known = bool(np.any(cols["price"] >= 0))
    if price_known:   # diagnostic: price weights are untrained (Taobao has no prices); score again without
        out_np = replay_step_model(sess, dict(D, ev_price=np.full_like(D["ev_price"], contract.MISSING_PRICE)),
                                   np.arange(len(D["user_ids"])), hidden)
    span_h = (end - start) / 3600.0
    ent = {"file": str(path.relative_to(path.parents[1])), "format": fmt, "read": stats.as_dict(),
           "events": int(len(cols["ts"])), "users": int(len(D["user_ids"])), "span_hours": round(span_h, 3),
           "end_utc_s": end, "event_types": {contract.EVENT_TYPES[c - 1]: int((cols["type"] == c).sum())
                                             for c in np.unique(cols["type"])},
           "price_known_rate": float(np.mean(cols["price"] >= 0)), "heads": {}}
    horizon_h = {"p_buy_24h": 24, "p_cart_abandon": 24, "p_no_return_48h": 48}
    for hname in BINARY_HEADS:
        m = D["m_" + hname]
        y = D["y_" + hname][m]
        e = {"n": int(m.sum()), "positives": int(y.sum()), "base_rate": float(y.mean()) if m.any() else None}
        if not m.any():
            e["not_defined"] = (f"the data spans {span_h:.2f} h < the {horizon_h[hname]} h horizon: every event's "
                                f"window passes the data end, so every label is censored") if hname in horizon_h else \
                "no event survives censoring"
        elif 0 < y.sum() < len(y):
            e.update(roc_auc=im.roc_auc(y, out[hname][m]), mean_pred=float(np.mean(out[hname][m])))
            if price_known:
                e["roc_auc_price_withheld"] = im.roc_auc(y, out_np[hname][m])
        else:
            e["not_defined"] = "only one class among the labelled events"
        ent["heads"][hname] = e
    hn = D["has_next"]
    y = D["next_type"][hn]
    pna = out["next_action"][hn].astype(np.float64)
    labels = [c for c in sorted(set(y.tolist())) if c in present]
    seen = np.isin(np.arange(1, N_TYPES + 1), present)
    pred_bal = np.where(seen, pna / train_prior, -1.0).argmax(1) + 1
    ent["next_action"] = {"n": int(hn.sum()), "labels_scored": [contract.EVENT_TYPES[c - 1] for c in labels],
                          "dist": {contract.EVENT_TYPES[c - 1]: float(np.mean(y == c)) for c in labels},
                          "model_argmax_macro_f1": im.macro_f1(y, pna.argmax(1) + 1, labels),
                          "model_prior_corrected_macro_f1": im.macro_f1(y, pred_bal, labels),
                          "always_view_macro_f1": im.macro_f1(y, np.full_like(y, T_VIEW), labels),
                          "log_loss": float(-np.mean(np.log(pna[np.arange(len(y)), y - 1] + 1e-12)))}
    return ent


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
    lines += ["", "ROC-AUC on the same test users, every predictor (baselines and the linear part fit on train users "
              "only; fusion weights on validation users):", "",
              "| head | model (fused, shipped) | sequence only | linear part of model | logistic baseline | "
              "gradient-boosted baseline |", "|---|---:|---:|---:|---:|---:|"]
    for h in BINARY_HEADS:
        if h in m["binary_by_predictor"]:
            o = m["binary_by_predictor"][h]
            lines.append(f"| {h} | {m['binary'][h]['roc_auc']:.4f} | {o['sequence_only']['roc_auc']:.4f} | "
                         f"{o['linear_part_of_model']['roc_auc']:.4f} | {o['logistic']['roc_auc']:.4f} | "
                         f"{o['hgb']['roc_auc']:.4f} |")
    t = m["targets"]
    lines += ["", f"Target: model beats the strongest baseline by >= 0.05 (ROC-AUC; next action macro-F1). 95 % CIs: "
              f"bootstrap over test users ({next(iter(t.values()))['bootstrap']['reps']} resamples of "
              f"{next(iter(t.values()))['bootstrap']['users']} users).", "",
              "| head | metric | model [95 % CI] | strongest baseline | baseline [95 % CI] | gain [95 % CI] | "
              "met (point) | met (CI lower bound) |", "|---|---|---|---|---|---|---|---|"]
    for h, e in t.items():
        b = e["strongest_baseline"]
        ci = e["ci95"]
        lines.append(f"| {h} | {e['metric']} | {e['point']['model']:.4f} [{ci['model'][0]:.4f}, {ci['model'][1]:.4f}] | "
                     f"{b} | {e['point'][b]:.4f} [{ci[b][0]:.4f}, {ci[b][1]:.4f}] | {e['gain']:+.4f} "
                     f"[{e['gain_ci95'][0]:+.4f}, {e['gain_ci95'][1]:+.4f}] | {'yes' if e['met'] else 'no'} | "
                     f"{'yes' if e['met_at_ci_lower_bound'] else 'no'} |")
    na = m["next_action"]
    rv = na["model_decision_rule_val_macro_f1"]
    lines += ["", f"Next action: the model's decision rule (`{na['model_decision_rule']}`) was chosen on validation "
              f"users (val macro-F1 argmax {rv['argmax']:.4f}, argmax of p / train prior {rv['prior_corrected']:.4f}); "
              "the strongest baseline is the best of all baseline rows below on test (favours the baselines)."]
    lines += ["", f"Next action (n={na['n']}, classes scored: {', '.join(na['labels_scored'])}):", "",
              "| predictor | accuracy | macro-F1 |", "|---|---:|---:|"]
    for key, label in (("model_argmax", "model, argmax"),
                       ("model_prior_corrected_argmax", "model, argmax of p / train prior"),
                       ("sequence_only_prior_corrected_argmax", "sequence model alone, argmax of p / train prior"),
                       ("logistic_argmax", "logistic baseline, argmax"),
                       ("logistic_prior_corrected", "logistic baseline, argmax of p / train prior"),
                       ("hgb_argmax", "gradient-boosted baseline, argmax"),
                       ("hgb_prior_corrected", "gradient-boosted baseline, argmax of p / train prior"),
                       ("markov_first_order", "first-order Markov rule (fit on train)"),
                       ("majority_class", "always `view`")):
        lines.append(f"| {label} | {na[key]['accuracy']:.4f} | {na[key]['macro_f1']:.4f} |")
    lines.append(f"\nNext-action log loss: model {na['log_loss']:.4f}, sequence only {na['log_loss_sequence_only']:.4f}, "
                 f"logistic {na['log_loss_logistic']:.4f}, gradient-boosted {na['log_loss_hgb']:.4f}, "
                 f"train prior {na['log_loss_train_prior']:.4f}.")
    c = m["category"]
    lines += ["", f"Next category (n={c['n']}; next category present in the 50-event window: "
              f"{c['next_cat_in_window_rate']:.3f}):", "",
              "| predictor | hit@3 |", "|---|---:|",
              f"| model (category_scores, max per category) | {c['hit_at_3']:.4f} |",
              f"| most recent 3 distinct categories in window | {c['baseline_recency_hit_at_3']:.4f} |",
              f"| 3 most frequent categories in window | {c['baseline_frequency_hit_at_3']:.4f} |",
              f"| model, only events whose next category is in the window | {c['hit_at_3_given_in_window']:.4f} |"]
    lines += ["", "Transfer (the shipped graph, no retraining; canonical mapping of `jobs/datasets.py`; same label "
              "definitions, censored at each dataset's own end):", "",
              "| dataset | users | events | span (h) | head | n | positives | base rate | ROC-AUC |",
              "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for name, tr in report.get("transfer", {}).items():
        for h, e in tr["heads"].items():
            auc = f"{e['roc_auc']:.4f}" if "roc_auc" in e else "n/a: " + e.get("not_defined", "")
            if "roc_auc_price_withheld" in e:
                auc += f" (price withheld: {e['roc_auc_price_withheld']:.4f})"
            rate = f"{e['base_rate']:.4f}" if e["base_rate"] is not None else "–"
            lines.append(f"| {name} | {tr['users']} | {tr['events']} | {tr['span_hours']:.2f} | {h} | {e['n']} | "
                         f"{e['positives']} | {rate} | {auc} |")
    lines += ["", "| dataset | next action n | macro-F1 model (argmax of p / train prior) | model argmax | always view | "
              "log loss |", "|---|---:|---:|---:|---:|---:|"]
    for name, tr in report.get("transfer", {}).items():
        na = tr["next_action"]
        lines.append(f"| {name} | {na['n']} | {na['model_prior_corrected_macro_f1']:.4f} | "
                     f"{na['model_argmax_macro_f1']:.4f} | {na['always_view_macro_f1']:.4f} | {na['log_loss']:.4f} |")
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
    ap.add_argument("--transfer", nargs="*", default=["rees46", "jdata", "jdata-201603"],
                    help="jobs.datasets names to score with the exported graph (data dir: $INTENTFLOW_DATA or "
                         "<repo>/../shared/data)")
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
    cols, data_info = load_taobao(args.data)
    data_info["sha256"] = sha256_file(args.data)
    data_info["path_name"] = args.data.name
    D = build_arrays(cols, N)
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

    # ---- calibration of the sequence model alone, on validation (reported as "sequence_only") ----
    from sklearn.linear_model import LogisticRegression
    present = sorted(set(D["next_type"][D["has_next"] & (ev_split == "train")].tolist()))
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

    # ---- baselines on hand-made aggregate features, and their linear model fused into the graph ----
    t_base = time.time()
    feats = compute_features(net, D)
    tr_ev = ev_split == "train"
    mu, sd = feats[tr_ev].mean(0), feats[tr_ev].std(0)
    sd = np.where(sd < 1e-6, 1.0, sd)
    Z = (feats - mu) / sd
    base_scores, lin, base_info = fit_baselines(feats, Z, D, ev_split, present, cfg.seed)
    lin_bin = Z @ lin["w"] + lin["b"]
    lin_na_lp = log_softmax(Z @ lin["na_w"] + lin["na_b"])
    fus = fit_fusion(pv["bin"], pv["na"], lin_bin, lin_na_lp, D, ev_split == "val", present)
    for name, val in (("feat_mu", mu), ("feat_sd", sd), ("lin_w", lin["w"]), ("lin_b", lin["b"]),
                      ("lin_na_w", lin["na_w"]), ("lin_na_b", lin["na_b"]), ("cal_a", fus["a"]), ("cal_f", fus["f"]),
                      ("cal_b", fus["b"]), ("na_b", fus["na_b"])):
        getattr(net, name).copy_(torch.tensor(val, dtype=torch.float32))
    net.cal_t.fill_(1.0 / fus["na_a"])
    net.na_f.fill_(fus["na_f"])
    timings["baselines_fusion_s"] = round(time.time() - t_base, 2)
    calibration = {"method": "fused: per binary head sigmoid(a*seq_logit + f*linear_logit + b); next action "
                             "softmax(seq_logits/T + f*linear_log_probs + b); all fit on validation users",
                   "a": dict(zip(BINARY_HEADS, map(float, fus["a"]))), "f": dict(zip(BINARY_HEADS, map(float, fus["f"]))),
                   "b": dict(zip(BINARY_HEADS, map(float, fus["b"]))), "next_action_temperature": 1.0 / fus["na_a"],
                   "next_action_linear_weight": fus["na_f"],
                   "next_action_bias": {contract.EVENT_TYPES[c - 1]: float(fus["na_b"][c - 1]) for c in present},
                   "next_action_val_nll": fus["val_nll_next_action"],
                   "sequence_only": {"method": "Platt per binary head (a*logit+b) and softmax temperature, "
                                               "fit on validation users",
                                     "a": dict(zip(BINARY_HEADS, map(float, cal_a))),
                                     "b": dict(zip(BINARY_HEADS, map(float, cal_b))), "next_action_temperature": cal_t}}

    # ---- test metrics --------------------------------------------------------------------------
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score
    pt = predict(net, D, users["test"])
    sel_t = pt["sel"]
    fused_bin = pt["bin"] * fus["a"] + lin_bin * fus["f"] + fus["b"]
    fused_na = softmax(pt["na"] / (1.0 / fus["na_a"]) + lin_na_lp * fus["na_f"] + fus["na_b"])
    test_user_ids = sorted(int(u) for u in D["user_ids"][users["test"]])
    test_users_sha = hashlib.sha256(",".join(map(str, test_user_ids)).encode()).hexdigest()
    metrics = {"binary": {}, "next_action": {}, "category": {}, "binary_by_predictor": {}, "targets": {},
               "test_users_sha256": test_users_sha}
    curves = {}
    for j, hname in enumerate(BINARY_HEADS):
        m = D["m_" + hname] & sel_t
        y = D["y_" + hname][m]
        p = sigmoid(fused_bin[m, j])
        p_raw = sigmoid(pt["bin"][m, j])
        ent = {"n": int(m.sum()), "positives": int(y.sum()), "base_rate": float(y.mean()) if len(y) else None}
        if 0 < y.sum() < len(y):
            preds = {"model": p, "sequence_only": sigmoid(pt["bin"][m, j] * cal_a[j] + cal_b[j]),
                     "linear_part_of_model": sigmoid(lin_bin[m, j]),
                     "logistic": sigmoid(base_scores["logistic"][hname][m]), "hgb": base_scores["hgb"][hname][m]}
            ent.update(binary_metrics(y, p), brier_base_rate=float(brier_score_loss(y, np.full_like(p, y.mean()))),
                       ece_uncalibrated=float(ece(y, p_raw)))
            metrics["binary_by_predictor"][hname] = {
                "n": ent["n"], "test_users_sha256": test_users_sha, "base_rate": {"roc_auc": 0.5},
                **{k: binary_metrics(y, v) for k, v in preds.items() if k != "model"}}
            metrics["targets"][hname] = target_check(D["user_of"][m], y, preds, "model", ["logistic", "hgb"],
                                                     "roc_auc", 0.05, reps=1000, seed=cfg.seed)
            curves[hname] = (y, preds)
        metrics["binary"][hname] = ent
    # next action
    hn = D["has_next"] & sel_t
    y = D["next_type"][hn]
    pna = fused_na[hn]
    pred = pna.argmax(1) + 1
    # first-order Markov baseline fit on train
    htr = D["has_next"] & (ev_split == "train")
    trans = np.zeros((N_TYPES + 1, N_TYPES + 1))
    np.add.at(trans, (D["type"][htr], D["next_type"][htr]), 1)
    markov_rule = {int(c): int(trans[c].argmax()) if trans[c].sum() > 0 else T_VIEW for c in range(1, N_TYPES + 1)}
    pred_mk = np.array([markov_rule[int(c)] for c in D["type"][hn]])
    # balanced decision rule (argmax of p / train prior) -- reported for macro-F1 only
    prior = np.array([max(np.mean(D["next_type"][htr] == c), 1e-6) for c in range(1, N_TYPES + 1)])
    seen = np.isin(np.arange(1, N_TYPES + 1), present)

    def balanced(p):
        return np.where(seen, p / prior, -1.0).argmax(1) + 1
    pred_bal = balanced(pna)
    # the model's decision rule (argmax, or argmax of p / train prior) is chosen on validation users
    hv = D["has_next"] & (ev_split == "val")
    pna_val = softmax(pv["na"][hv] / (1.0 / fus["na_a"]) + lin_na_lp[hv] * fus["na_f"] + fus["na_b"])
    yv = D["next_type"][hv]
    rule_val = {"argmax": im.macro_f1(yv, pna_val.argmax(1) + 1, present),
                "prior_corrected": im.macro_f1(yv, balanced(pna_val), present)}
    model_rule = max(rule_val, key=rule_val.get)
    nll = float(-np.mean(np.log(pna[np.arange(len(y)), y - 1] + 1e-12)))
    prior_nll = float(-np.mean(np.log(prior[y - 1])))

    def acc_f1(pr):
        return {"accuracy": float(accuracy_score(y, pr)),
                "macro_f1": float(f1_score(y, pr, labels=present, average="macro", zero_division=0))}
    p_seq = softmax(pt["na"][hn] / cal_t)
    p_lr, p_hgb = base_scores["logistic"]["next_action"][hn], base_scores["hgb"]["next_action"][hn]
    na_preds = {"model": pred if model_rule == "argmax" else pred_bal,
                "model_other_rule": pred_bal if model_rule == "argmax" else pred, "sequence_only": balanced(p_seq),
                "logistic_argmax": p_lr.argmax(1) + 1, "logistic_prior_corrected": balanced(p_lr),
                "hgb_argmax": p_hgb.argmax(1) + 1, "hgb_prior_corrected": balanced(p_hgb),
                "markov_first_order": pred_mk, "majority_class": np.full_like(y, T_VIEW)}
    metrics["next_action"] = {
        "n": int(hn.sum()), "labels_scored": [contract.EVENT_TYPES[c - 1] for c in present],
        "test_users_sha256": test_users_sha,
        "model_decision_rule": model_rule, "model_decision_rule_val_macro_f1": rule_val,
        "model_argmax": acc_f1(pred), "model_prior_corrected_argmax": acc_f1(pred_bal),
        "sequence_only_prior_corrected_argmax": acc_f1(na_preds["sequence_only"]),
        "markov_first_order": {"rule": {contract.EVENT_TYPES[k - 1]: contract.EVENT_TYPES[v - 1] for k, v in markov_rule.items()
                                        if trans[k].sum() > 0}, **acc_f1(pred_mk)},
        "majority_class": acc_f1(na_preds["majority_class"]),
        **{k: acc_f1(na_preds[k]) for k in ("logistic_argmax", "logistic_prior_corrected", "hgb_argmax",
                                            "hgb_prior_corrected")},
        "log_loss": nll, "log_loss_train_prior": prior_nll,
        "log_loss_sequence_only": float(-np.mean(np.log(p_seq[np.arange(len(y)), y - 1] + 1e-12))),
        "log_loss_logistic": float(-np.mean(np.log(p_lr[np.arange(len(y)), y - 1] + 1e-12))),
        "log_loss_hgb": float(-np.mean(np.log(p_hgb[np.arange(len(y)), y - 1] + 1e-12))),
        "per_class_f1_model_argmax": {contract.EVENT_TYPES[c - 1]: float(v) for c, v in
                                      zip(present, f1_score(y, pred, labels=present, average=None, zero_division=0))},
        "per_class_f1_prior_corrected": {contract.EVENT_TYPES[c - 1]: float(v) for c, v in
                                         zip(present, f1_score(y, pred_bal, labels=present, average=None, zero_division=0))},
    }
    metrics["targets"]["next_action"] = target_check(
        D["user_of"][hn], y, na_preds, "model",
        ["logistic_argmax", "logistic_prior_corrected", "hgb_argmax", "hgb_prior_corrected", "markov_first_order",
         "majority_class"], "macro_f1", 0.05, reps=1000, seed=cfg.seed, labels=present)
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
            y, preds = curves[hname]
            p = preds["model"]
            others = metrics["binary_by_predictor"][hname]
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=f"model AUC={ent['roc_auc']:.3f}")
                for k in ("logistic", "hgb"):
                    fpr, tpr, _ = roc_curve(y, preds[k])
                    ax.plot(fpr, tpr, lw=0.9, label=f"{k} baseline AUC={others[k]['roc_auc']:.3f}")
                ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
                ax.set_xlabel("false positive rate"); ax.set_ylabel("true positive rate")
            elif kind == "pr":
                pr, rc, _ = precision_recall_curve(y, p)
                ax.plot(rc, pr, label=f"model AP={ent['pr_auc']:.3f}")
                for k in ("logistic", "hgb"):
                    pr, rc, _ = precision_recall_curve(y, preds[k])
                    ax.plot(rc, pr, lw=0.9, label=f"{k} baseline AP={others[k]['pr_auc']:.3f}")
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
        probs_s, na_s, cs_s = net.finalize(b, na, p, vb, net.fusion_features(*batch_tensors(D, idx)))
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

    # ---- transfer: the exported graph on the other datasets (canonical mapping, same labels) -----
    t_tr = time.time()
    transfer = {}
    for name in args.transfer:
        print(f"[transfer] {name}")
        transfer[name] = transfer_eval(sess, name, cfg.hidden, N, prior, present)
    timings["transfer_s"] = round(time.time() - t_tr, 2)

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
        "split_test_user_ids": test_user_ids,
        "baselines": {"features": fusion_feature_names(),
                      "feature_source": "IntentNet.fusion_features: the raw window ending at the event (its past "
                                        "and itself only) + user_stats, i.e. exactly the graph's inputs",
                      "logistic": "sklearn LogisticRegression(C=1) on features standardised with train-user "
                                  "mean/sd, fit on train users",
                      "hgb": "sklearn HistGradientBoostingClassifier(lr 0.05, 15 leaves, min leaf 40, l2 1), fit on "
                             "train users, number of trees chosen by validation-user log loss",
                      "split": "same user-disjoint split as the model", "fit": base_info},
        "calibration": calibration, "test_metrics": metrics, "transfer": transfer,
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
