"""``intentflow bench``: the pure parts (cloning, encoding, parsing, maths, the JSON document) and one
short run on the real stack that checks every input event got exactly one recommendation record."""
from __future__ import annotations

import base64
import importlib.util
import json
import re
from collections import defaultdict

import numpy as np
import pytest

from jobs import bench
from jobs.config import REPO_ROOT, load_config
from schemas import EVENTS_SUBJECT, RECOMMENDATION_SUBJECT

USERS = 1500          # > 2 clones of the 651 users of the Taobao sample: whole clones and a part clone


@pytest.fixture(scope="module")
def base_events(data_dir):
    return bench.load_base_events("taobao-sample")


@pytest.fixture(scope="module")
def cloned(base_events):
    return list(bench.cloned_events(base_events, USERS, "bench-t"))


def shape(events):
    """What makes a user's sequence real: types, items, categories and the gaps between events."""
    times = [e["event_time"] for e in events]
    return ([(e["event_type"], e["item_id"], e["category_id"]) for e in events],
            [b - a for a, b in zip(times, times[1:])])


def by_user(events):
    out = defaultdict(list)
    for e in events:
        out[e["user_id"]].append(e)
    return out


def test_clone_plan_takes_whole_clones_first():
    plan = bench.clone_plan(["b", "a", "c"], 7)
    assert plan == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c"), (2, "a")]
    with pytest.raises(ValueError):
        bench.clone_plan(["a"], 0)


def test_cloning_keeps_each_users_sequence_shape(base_events, cloned):
    originals = by_user(base_events)
    clones = by_user(cloned)
    assert len(clones) == USERS
    for user_id, events in clones.items():
        original, _, clone = user_id.rpartition("-c")
        assert shape(events) == shape(originals[original]), user_id
        shift = events[0]["event_time"] - originals[original][0]["event_time"]
        assert shift == bench.clone_shift_ms(int(clone))


def test_cloning_yields_unique_ids_and_users_in_event_time_order(base_events, cloned):
    ids = [e["event_id"] for e in cloned]
    assert len(set(ids)) == len(ids)
    assert [bench.seq_of_event_id(i.encode()) for i in ids] == list(range(len(ids)))
    times = [e["event_time"] for e in cloned]
    assert times == sorted(times)
    part = USERS - 2 * 651
    assert sum(1 for u in by_user(cloned) if u.endswith("-c2")) == part


def test_laps_continue_each_users_history(base_events):
    one = sum(1 for _ in bench.cloned_events(base_events, 700, "r"))
    two = list(bench.cloned_events(base_events, 700, "r", laps=2))
    assert len(two) == 2 * one
    assert len({e["event_id"] for e in two}) == len(two)
    assert two[one]["event_time"] > two[one - 1]["event_time"]


def test_pool_bytes_equal_the_events_encoder(store, base_events, cloned):
    pool = bench.build_pool(base_events, USERS, "bench-t", 20_000)
    encode = store.encoder(EVENTS_SUBJECT).encode
    for seq in range(0, len(pool), 997):
        ev = {k: v for k, v in cloned[seq].items()}
        assert pool.values[seq] == encode(ev)
        assert pool.keys[seq] == ev["user_id"].encode()
        assert bench.seq_from_event(pool.values[seq]) == seq
        assert store.decoder(EVENTS_SUBJECT).decode(pool.values[seq])["event_id"] == ev["event_id"]
    assert len(set(pool.user_index.tolist())) <= USERS


def test_avro_varints_roundtrip():
    for n in (0, 1, -1, 63, 64, -65, 300, 2**40, -(2**40)):
        raw = bench.avro_long(n) + b"x"
        # a string of length n >= 0 is its varint + bytes
        if n >= 0 and n < 200:
            s = bench.avro_string("a" * n)
            assert bench.avro_string_at(s, 0) == (b"a" * n, len(s))
        assert raw.endswith(b"x")


def test_seq_from_recommendation_and_engine_outputs(store):
    rec = store.encoder(RECOMMENDATION_SUBJECT).encode({
        "user_id": "u-ß-1", "event_id": "bench-x-9-12345", "event_time": 1, "scored_at": 2, "model_version": "m",
        "p_buy_session": 0.1, "p_buy_24h": 0.2, "next_action": {"view": 1.0}, "top_categories": ["c"],
        "label": "browsing"})
    assert bench.seq_from_recommendation(rec) == 12345
    event = b"\x00\x00\x00\x00\x01" + bench.avro_string("run-77") + b"rest"
    out = json.dumps({"v": base64.b64encode(event).decode(), "events_in_window": 3}).encode()
    assert bench.seq_from_engine_output(out) == 77


def test_percentiles_nearest_rank():
    values = list(range(100, 0, -1))
    assert bench.percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert bench.percentiles([7]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert bench.percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert bench.percentiles([1, 2, 3, 4], (25, 75, 100)) == {"p25": 1.0, "p75": 3.0, "p100": 4.0}


def test_latency_summary_uses_only_matched_events():
    arrival = np.array([1000, 1000, 0, 2000])
    received = np.array([1010, 1100, 5000, 0])
    s = bench.latency_summary(arrival, received)
    assert s["events"] == 2 and s["p50"] == 10.0 and s["p99"] == 100.0 and s["max"] == 100.0


def test_window_rate_and_exactly_once():
    samples = [(0.0, 0), (1.0, 100), (2.0, 300), (3.0, 600)]
    assert bench.window_rate(samples, 1.5, 3.0) == pytest.approx(250.0)   # from the sample before t0
    assert bench.window_rate(samples, 10, 11) is None
    assert bench.exactly_once(np.array([1, 1, 0, 2])) == {"inputs": 4, "missing": 1, "duplicated": 1, "outputs": 4}


def test_resource_summary_from_proc_samples():
    samples = [(0.0, {"taskmanager": (10.0, 2**30)}, (0.0, 0.0)),
               (2.0, {"taskmanager": (11.0, 2 * 2**30)}, (300.0, 400.0))]
    s = bench.resource_summary(samples)
    assert s["taskmanager"] == {"cpu_pct": 50.0, "rss_mib_max": 2048.0, "rss_mib_mean": 1536.0}
    assert s["host_busy_pct"] == 75.0
    me = bench.proc_cpu_rss(__import__("os").getpid())
    assert me is not None and me[1] > 0


def test_engine_sql_template_fills_every_placeholder():
    spec = importlib.util.spec_from_file_location("engine_ceiling", REPO_ROOT / "deploy" / "bench" / "engine_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = dict(events_topic="e", output_topic="o", bootstrap="b", group="g", transactional_id_prefix="t",
                 transaction_timeout_ms="1", window="50", preceding="49")
    stmts = mod.statements((REPO_ROOT / "deploy" / "bench" / "engine_ceiling.sql").read_text(), names)
    assert [s.split()[0] for s in stmts] == ["CREATE", "CREATE", "INSERT"]
    assert "ROWS BETWEEN 49 PRECEDING" in stmts[-1]
    assert "exactly-once" in stmts[1] and not any("$" in s for s in stmts)


def test_model_ceiling_on_real_windows(base_events):
    m = bench.model_ceiling(load_config(), base_events[:5000], "cpu", (1, 4), min_s=0.01)
    assert [r["batch"] for r in m["batches"]] == [1, 4]
    assert all(r["sequences_per_s"] > 0 for r in m["batches"])
    assert m["provider"] == "CPUExecutionProvider" and m["intra_op_threads"] == 1
    assert bench.sequences_per_s_at(m, 6) == m["batches"][1]["sequences_per_s"]


def test_python_ceiling_scores_every_record_of_the_pool(base_events):
    """The no-PyFlink ceiling runs the job's own per-record work: one recommendation per event."""
    pool = bench.build_pool(base_events, 300, "bench-py", 3_000)
    p = bench.python_ceiling(load_config(), pool, seconds=60, batch=64)
    assert p["events"] == len(pool) == 3_000
    assert p["outputs"] >= p["events"]                     # + cart and churn records
    assert p["batches"] >= 3_000 // 64
    assert p["events_per_s"] > 0 and set(p["us_per_event"]) == {
        "decode_validate", "state_pickle_append", "score_batch", "route_encode_settle"}


def test_profile_breakdown_uses_the_leaf_most_category():
    lines = [
        "process (ops.py:1);SequenceScorer.on_timer (udfs/sequence.py:125);Session.run (ort.py:395) 60",
        "process (ops.py:1);SequenceScorer.process_element (udfs/sequence.py:118);ValueStateImpl.update (s.py:68);"
        "PickleDataConverter.to_external (c.py:72) 20",
        "process (ops.py:1);DecodeEvents.process_element (udfs/decode.py:127);Decoder.decode (schemas/__init__.py:154) 15",
        "process (ops.py:1) 5",
        " 400",
    ]
    b = bench.profile_breakdown(lines)
    assert b["python_samples"] == 100 and b["samples_without_python_frames"] == 400
    assert b["share_pct"] == {"onnx_session_run": 60.0, "state_write_pickle_jni": 20.0,
                              "avro_decode_validate_input": 15.0, "pyflink_framework_other": 5.0}


def fake_phase(rate):
    return {"output_events_per_s": rate, "input_committed_events_per_s": rate, "avg_inference_batch": 40.0,
            "latency_ms": {"events": 10, "p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, "mean": 1.5},
            "checkpoints": {"completed": 3, "duration_ms_p50": 100, "duration_ms_p99": 200, "duration_ms_max": 200},
            "resources": {"taskmanager": {"cpu_pct": 90.0, "rss_mib_max": 3000.0, "rss_mib_mean": 2900.0}}}


def test_document_shape_and_ratios(tmp_path):
    targets = {"job": {"phases": {"peak": fake_phase(1000.0), "fixed": fake_phase(500.0)},
                       "exactly_once": {"inputs": 5, "missing": 0, "duplicated": 0, "outputs": 5},
                       "state": {"active_users": 5, "bytes_per_active_user": 1500.0}},
               "engine": {"phases": {"peak": fake_phase(4000.0)}}}
    model = {"provider": "CPUExecutionProvider", "batches": [{"batch": 1, "sequences_per_s": 1000.0},
                                                             {"batch": 32, "sequences_per_s": 8000.0}],
             "best_sequences_per_s": 8000.0, "best_batch": 32}
    machine = bench.machine_description()
    opts = bench.BenchOptions(label="unit-test")
    python = {"events_per_s": 2000.0, "us_per_event": {"decode_validate": 10.0}}
    doc = bench.build_document("bench-x", machine, load_config(), opts, None, targets, model, 0.0, 10.0, python)
    assert {"kind", "run", "label", "machine", "options", "config", "load", "targets", "model_ceiling",
            "python_ceiling", "ratios", "targets_from_issue"} <= set(doc)
    assert {"cpu_model", "cores", "ram_gib", "os", "python", "apache_flink", "onnxruntime"} <= set(doc["machine"])
    assert doc["ratios"] == {"job_to_engine_ceiling": 0.25, "job_to_model_ceiling_best": 0.125,
                             "job_to_model_ceiling_at_job_batch": 0.125, "job_to_python_ceiling": 0.5}
    path = bench.write_document(doc, tmp_path / "x.json")
    assert json.loads(path.read_text())["options"]["batch_sizes"] == list(bench.DEFAULT_BATCH_SIZES)
    table = bench.format_table(doc)
    assert "job/peak" in table and "engine/peak" in table and "ratios" in table and "Python-path" in table
    assert re.search(r"unit-test\.json$", str(bench.default_output("bench-x", "unit-test")))


@pytest.mark.e2e
def test_bench_smoke_every_event_gets_exactly_one_recommendation(stack, isolated_config, tmp_path):
    opts = bench.BenchOptions(users=700, max_events=40_000, peak_s=6, fixed_s=4, warmup_s=1, min_backlog=3000,
                              drain_timeout_s=45, engine=False, model=False, scorer_metrics=False, label="smoke")
    doc = bench.run_bench(isolated_config("bench"), opts, out=print)
    job = doc["targets"]["job"]
    eo = job["exactly_once"]
    assert eo["inputs"] > 0 and eo["missing"] == 0 and eo["duplicated"] == 0 and eo["undecodable_outputs"] == 0
    assert job["arrival_clock"] == ["LogAppendTime"]
    assert job["phases"]["peak"]["output_events_per_s"] > 0
    assert job["phases"]["fixed"]["latency_ms"]["p99"] is not None
    bench.write_document(doc, tmp_path / "smoke.json")
