"""The committed evaluation report belongs to the committed model, and its figures can be recomputed.

Runs in the runtime venv (onnxruntime + numpy): the test users' events are rebuilt from the real
Taobao sample with models/intent_data.py (the same code train.py uses), scored through the
committed ONNX step graph, and the report's test metrics are recomputed from those outputs.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models import intent_data as idata  # noqa: E402
from models import intent_metrics as im  # noqa: E402
from udfs import contract  # noqa: E402

ort = pytest.importorskip("onnxruntime")

REPORT = REPO / "models" / "eval" / "report.json"
CARD = REPO / "models" / "MODEL_CARD.md"
AUC_TOL = 2e-3   # ONNX float32 step replay vs torch sequence forward in float64 post-processing


@pytest.fixture(scope="module")
def report():
    return json.loads(REPORT.read_text())


@pytest.fixture(scope="module")
def taobao(data_dir, report):
    path = data_dir / "taobao_userbehavior" / "UserBehavior_sample.csv"
    cols, _ = idata.load_taobao(path)
    D = idata.build_arrays(cols, int(report["config"]["window"]))
    split = np.array([idata.user_split(int(u), report["config"]["split_salt"]) for u in D["user_ids"]])
    return D, split


@pytest.fixture(scope="module")
def scored(model_path, report, taobao):
    """Every test-user event scored by the committed graph, one step per event, h carried per user."""
    D, split = taobao
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return idata.replay_step_model(sess, D, np.flatnonzero(split == "test"), int(report["config"]["hidden"]))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_describes_committed_model(model_path, report):
    assert report["export"]["onnx_sha256"] == sha256(model_path)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map[contract.META_VERSION] == report["model_version"]
    assert report["export"]["step_check_ok"] is True


def test_split_is_the_reported_one(report, taobao):
    D, split = taobao
    test_ids = sorted(int(u) for u in D["user_ids"][split == "test"])
    assert test_ids == report["split_test_user_ids"]
    assert hashlib.sha256(",".join(map(str, test_ids)).encode()).hexdigest() == report["test_metrics"]["test_users_sha256"]
    for s in ("train", "val", "test"):
        assert int((split == s).sum()) == report["split"][s]["users"]


@pytest.mark.parametrize("head", idata.BINARY_HEADS)
def test_test_auc_recomputed_from_onnx(report, taobao, scored, head):
    D, split = taobao
    m = D["m_" + head] & (split == "test")[D["user_of"]]
    y, p = D["y_" + head][m], scored[head][m]
    assert np.all(np.isfinite(p))
    rep = report["test_metrics"]["binary"][head]
    assert int(m.sum()) == rep["n"] and int(y.sum()) == rep["positives"]
    auc = im.roc_auc(y, p)
    assert abs(auc - rep["roc_auc"]) <= AUC_TOL, (head, auc, rep["roc_auc"])
    seq_only = report["test_metrics"]["binary_by_predictor"][head]["sequence_only"]["roc_auc"]
    if abs(rep["roc_auc"] - seq_only) > 5 * AUC_TOL:   # the graph is the fused model, not the sequence model alone
        assert abs(auc - seq_only) > 2 * AUC_TOL


def test_next_action_macro_f1_recomputed_from_onnx(report, taobao, scored):
    D, split = taobao
    ev_split = split[D["user_of"]]
    na = report["test_metrics"]["next_action"]
    present = [contract.TYPE_CODE[t] for t in na["labels_scored"]]
    htr = D["has_next"] & (ev_split == "train")
    prior = np.array([max(np.mean(D["next_type"][htr] == c), 1e-6) for c in range(1, idata.N_TYPES + 1)])
    hn = D["has_next"] & (ev_split == "test")
    y, p = D["next_type"][hn], scored["next_action"][hn]
    seen = np.isin(np.arange(1, idata.N_TYPES + 1), present)
    balanced = np.where(seen, p / prior, -1.0).argmax(1) + 1
    assert abs(im.macro_f1(y, balanced, present) - na["model_prior_corrected_argmax"]["macro_f1"]) <= 5e-3
    assert abs(im.macro_f1(y, p.argmax(1) + 1, present) - na["model_argmax"]["macro_f1"]) <= 5e-3
    rule = na["model_decision_rule"]
    assert rule == max(na["model_decision_rule_val_macro_f1"], key=na["model_decision_rule_val_macro_f1"].get)
    chosen = na["model_argmax" if rule == "argmax" else "model_prior_corrected_argmax"]["macro_f1"]
    assert report["test_metrics"]["targets"]["next_action"]["point"]["model"] == pytest.approx(chosen)


def test_baselines_on_same_split(report):
    tm = report["test_metrics"]
    assert len(report["baselines"]["features"]) >= 30
    for head in idata.BINARY_HEADS:
        by = tm["binary_by_predictor"][head]
        assert by["n"] == tm["binary"][head]["n"]
        assert by["test_users_sha256"] == tm["test_users_sha256"]
        for k in ("logistic", "hgb"):
            assert 0.5 < by[k]["roc_auc"] < 1.0, (head, k)
    assert tm["next_action"]["test_users_sha256"] == tm["test_users_sha256"]
    for k in ("logistic_argmax", "logistic_prior_corrected", "hgb_argmax", "hgb_prior_corrected"):
        assert 0.0 < tm["next_action"][k]["macro_f1"] < 1.0


@pytest.mark.parametrize("head", idata.BINARY_HEADS + ("next_action",))
def test_target_statement_is_consistent(report, head):
    t = report["test_metrics"]["targets"][head]
    base = [k for k in t["point"] if k not in ("model", "model_other_rule", "sequence_only", "linear_part_of_model")]
    assert t["strongest_baseline"] == max(base, key=lambda k: t["point"][k])
    assert t["gain"] == pytest.approx(t["point"]["model"] - t["point"][t["strongest_baseline"]])
    assert t["met"] == (t["gain"] >= t["required_gain"])
    lo, hi = t["gain_ci95"]
    assert lo <= t["gain"] <= hi
    assert t["met_at_ci_lower_bound"] == (lo >= t["required_gain"])
    for k, (a, b) in t["ci95"].items():
        assert a <= t["point"][k] <= b, k
    # resampled: the test users with at least one labelled event for this head (carts: fewer users)
    assert 0 < t["bootstrap"]["users"] <= report["split"]["test"]["users"] and t["bootstrap"]["reps"] >= 1000
    if head != "next_action":
        assert t["point"]["model"] == pytest.approx(report["test_metrics"]["binary"][head]["roc_auc"])


def test_transfer_reported(report):
    for name in ("rees46", "jdata"):
        tr = report["transfer"][name]
        assert tr["events"] > 1000 and tr["users"] > 100
        for head, e in tr["heads"].items():
            assert ("roc_auc" in e) != ("not_defined" in e), (name, head)
            if "roc_auc" in e:
                assert 0.0 <= e["roc_auc"] <= 1.0 and e["positives"] > 0
        assert tr["span_hours"] < 24 and tr["heads"]["p_buy_24h"]["n"] == 0


def test_model_card_figures_come_from_report(report):
    card = CARD.read_text()
    assert f"`{report['model_version']}`" in card
    for head in idata.BINARY_HEADS:
        t = report["test_metrics"]["targets"][head]
        assert f"{t['point']['model']:.4f} [{t['ci95']['model'][0]:.4f}, {t['ci95']['model'][1]:.4f}]" in card, head
    assert (REPO / "models" / "eval" / "metrics.md").read_text() in card


def test_metric_helpers_match_definitions():
    """Weighted AUC / macro-F1 equal the pairwise and repeated-row definitions (ties, weights)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300).astype(float)
    s = np.round(rng.normal(size=300) + y * 0.5, 1)          # rounding creates ties
    w = rng.integers(0, 4, 300).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    wp, wn = w[y == 1], w[y == 0]
    pair = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    brute = float((wp[:, None] * wn[None, :] * pair).sum() / (wp.sum() * wn.sum()))
    assert im.roc_auc(y, s, w) == pytest.approx(brute, abs=1e-12)
    yc, pc = rng.integers(1, 4, 300), rng.integers(1, 4, 300)
    rep = np.repeat(np.arange(300), w.astype(int))
    assert im.macro_f1(yc, pc, [1, 2, 3], w) == pytest.approx(im.macro_f1(yc[rep], pc[rep], [1, 2, 3]))
