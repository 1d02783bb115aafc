"""The committed ONNX intent model fits udfs/contract.py and behaves as a streaming step model.

Needs only onnxruntime + numpy (no torch): expected outputs were computed by models/train.py with
the torch *full-sequence* forward and saved to models/testdata/step_check.npz at export time.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from udfs import contract  # noqa: E402

ort = pytest.importorskip("onnxruntime")

MODEL = REPO / "models" / "intent_model.onnx"
STEP_CHECK = REPO / "models" / "testdata" / "step_check.npz"
IN_NAMES = [s.name for s in contract.INPUTS]
OUT_NAMES = [s.name for s in contract.OUTPUTS]
PROB_NAMES = ["p_buy_session", "p_buy_24h", "p_cart_abandon", "p_no_return_48h"]
ORT_TYPE = {"float32": "tensor(float)", "int64": "tensor(int64)"}


@pytest.fixture(scope="module")
def sess():
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def meta(sess):
    return sess.get_modelmeta().custom_metadata_map


@pytest.fixture(scope="module")
def dims(meta):
    return dict(contract.DIMS_FIXED, window=int(meta[contract.META_WINDOW]), hidden=int(meta[contract.META_HIDDEN]))


@pytest.fixture(scope="module")
def check():
    d = np.load(STEP_CHECK)
    return {k: d[k] for k in d.files}


def run(sess, feeds):
    return dict(zip(OUT_NAMES, sess.run(OUT_NAMES, feeds)))


def h_prev_rows(check):
    """h_prev for every stored step: zeros at a user's first event, else the previous expected h_next."""
    h = np.zeros_like(check["out_h_next"])
    off = check["offsets"]
    for a, b in zip(off[:-1], off[1:]):
        h[a + 1:b] = check["out_h_next"][a:b - 1]
    return h


def feeds_for(check, rows, h):
    f = {"h_prev": np.ascontiguousarray(h[rows])}
    for s in contract.INPUTS[1:]:
        f[s.name] = np.ascontiguousarray(check["in_" + s.name][rows])
    return f


def test_file_small():
    assert MODEL.stat().st_size < 5 * 1024 * 1024


def test_metadata(meta, dims):
    assert meta[contract.META_CONTRACT] == contract.CONTRACT_VERSION
    assert meta[contract.META_VERSION]
    assert dims["window"] == 50
    assert 32 <= dims["hidden"] <= 64


@pytest.mark.parametrize("kind", ["input", "output"])
def test_names_dtypes_shapes(sess, dims, kind):
    specs = contract.INPUTS if kind == "input" else contract.OUTPUTS
    actual = sess.get_inputs() if kind == "input" else sess.get_outputs()
    assert [a.name for a in actual] == [s.name for s in specs]
    for spec, a in zip(specs, actual):
        assert a.type == ORT_TYPE[spec.dtype], spec.name
        assert len(a.shape) == len(spec.shape), spec.name
        for got, sym in zip(a.shape, spec.shape):
            if sym == "batch":
                assert not isinstance(got, int), f"{spec.name}: batch axis must be dynamic, got {got}"
            elif isinstance(got, int):
                assert got == dims[sym], (spec.name, sym, got)


def test_runtime_loader_accepts_model():
    from udfs.model import IntentModel
    m = IntentModel(MODEL, device="cpu", expected_window=50)
    assert m.window == 50 and m.version


def test_step_by_step_matches_full_sequence(sess, check):
    """Replay each stored user event by event, carrying h_next -> h_prev, vs torch's sequence forward."""
    off = check["offsets"]
    assert len(off) >= 3 and off[-1] > 100
    worst = {k: 0.0 for k in OUT_NAMES}
    for a, b in zip(off[:-1], off[1:]):
        h = np.zeros((1, check["out_h_next"].shape[1]), np.float32)
        for r in range(a, b):
            feeds = feeds_for(check, [r], check["out_h_next"])
            feeds["h_prev"] = h
            out = run(sess, feeds)
            for k in OUT_NAMES:
                worst[k] = max(worst[k], float(np.max(np.abs(out[k] - check["out_" + k][r:r + 1]))))
            h = out["h_next"]
    assert max(worst.values()) <= 1e-4, worst


def test_output_ranges(sess, check):
    rows = np.arange(len(check["out_h_next"]))
    out = run(sess, feeds_for(check, rows, h_prev_rows(check)))
    for k in PROB_NAMES:
        assert out[k].shape == (len(rows),)
        assert np.all((out[k] >= 0) & (out[k] <= 1)), k
    na = out["next_action"]
    assert na.shape == (len(rows), len(contract.EVENT_TYPES))
    assert np.all(na >= 0) and np.allclose(na.sum(1), 1.0, atol=1e-5)
    cs = out["category_scores"]
    valid = check["in_ev_type"] != contract.PAD
    assert np.all(np.isfinite(cs))
    assert np.all(cs[~valid] <= -1e8)
    assert np.all(cs[valid] > -1e6)
    assert np.all(np.isfinite(out["h_next"])) and np.all(np.abs(out["h_next"]) <= 1)


def test_batch_independence(sess, check):
    n = len(check["out_h_next"])
    h = h_prev_rows(check)
    rows = np.arange(n)
    full = run(sess, feeds_for(check, rows, h))
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    shuffled = run(sess, feeds_for(check, perm, h))
    for k in OUT_NAMES:
        assert np.max(np.abs(shuffled[k] - full[k][perm])) <= 1e-5, k
    for size in (1, 2, 7, 64):
        sub = rng.choice(n, size=size, replace=False)
        part = run(sess, feeds_for(check, sub, h))
        for k in OUT_NAMES:
            assert np.max(np.abs(part[k] - full[k][sub])) <= 1e-5, (k, size)


def _single_event_window(dims, hour=13.5, dow=2.0, type_code=contract.TYPE_CODE["view"]):
    N = dims["window"]
    f = {
        "h_prev": np.zeros((1, dims["hidden"]), np.float32),
        "ev_type": np.zeros((1, N), np.int64),
        "ev_item": np.zeros((1, N), np.int64),
        "ev_cat": np.zeros((1, N), np.int64),
        "ev_dt": np.zeros((1, N), np.float32),
        "ev_price": np.full((1, N), contract.MISSING_PRICE, np.float32),
        "user_stats": np.array([[0, 0, 0, 0, hour, dow]], np.float32),
    }
    f["ev_type"][0, -1] = type_code
    f["ev_item"][0, -1] = 2_874_512_349
    f["ev_cat"][0, -1] = 1_234_567_891
    return f


@pytest.mark.parametrize("type_code", [contract.TYPE_CODE[t] for t in contract.EVENT_TYPES])
def test_new_user_single_event(sess, dims, type_code):
    """Brand-new user (h_prev zeros), window all padding but the scored event; any event type."""
    f = _single_event_window(dims, type_code=type_code)
    out = run(sess, f)
    for k in PROB_NAMES:
        assert 0 <= out[k][0] <= 1
    assert abs(out["next_action"].sum() - 1) < 1e-5
    cs = out["category_scores"][0]
    assert np.all(cs[:-1] <= -1e8) and np.isfinite(cs[-1]) and cs[-1] > -1e6
    assert np.all(np.isfinite(out["h_next"]))
    assert np.any(out["h_next"] != 0)


def test_padding_content_is_ignored(sess, dims):
    """Only ev_type == 0 marks padding; whatever else sits in padded slots must not change outputs."""
    clean = _single_event_window(dims)
    noisy = {k: v.copy() for k, v in clean.items()}
    N = dims["window"]
    rng = np.random.default_rng(1)
    noisy["ev_item"][0, :-1] = rng.integers(1, 2**32, N - 1)
    noisy["ev_cat"][0, :-1] = rng.integers(1, 2**32, N - 1)
    noisy["ev_dt"][0, :-1] = -rng.uniform(0, 1e5, N - 1).astype(np.float32)
    noisy["ev_price"][0, :-1] = rng.uniform(0, 100, N - 1).astype(np.float32)
    a, b = run(sess, clean), run(sess, noisy)
    for k in OUT_NAMES:
        assert np.max(np.abs(a[k] - b[k])) <= 1e-6, k


def test_price_known_is_accepted(sess, dims):
    f = _single_event_window(dims)
    f["ev_price"][0, -1] = 19.99
    out = run(sess, f)
    assert all(np.isfinite(out[k]).all() for k in OUT_NAMES)
