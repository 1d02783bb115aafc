"""Dataset adapters against the real files: counts from each SOURCE.md, exact first rows, types."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from jobs.datasets import (DATASETS, FORMATS, ReadStats, read_events, resolve_dataset, time_ordered)
from schemas import EVENTS_SUBJECT

TAOBAO = "taobao_userbehavior"


def load(path, fmt):
    stats = ReadStats()
    return list(read_events(path, fmt, stats)), stats


def types(events):
    return Counter(e["event_type"] for e in events)


def test_taobao_sample_first_row_and_counts(data_dir, store):
    events, stats = load(data_dir / TAOBAO / "UserBehavior_sample.csv", "taobao")
    assert events[0] == {
        "event_id": "taobao-UserBehavior_sample-1", "user_id": "1", "event_type": "view",
        "item_id": "2268318", "category_id": "2520377", "price": None, "query": None, "session_id": None,
        "event_time": 1511544070000, "source": "taobao",
    }
    assert [f["name"] for f in store.latest(EVENTS_SUBJECT).raw["fields"]] == list(events[0])
    # 68,661 rows; the 30 rows before the official window (all pv) are skipped and counted.
    assert stats.rows_read == 68_661 and stats.events == len(events) == 68_631
    assert stats.skipped == {"outside_window": 30}
    assert types(events) == {"view": 61_547 - 30, "add_to_cart": 3_735, "favorite": 1_914, "purchase": 1_465}
    assert len({e["user_id"] for e in events}) == 651


def test_taobao_timeslice(data_dir):
    events, stats = load(data_dir / TAOBAO / "UserBehavior_timeslice_20171126.csv", "taobao")
    assert stats.rows_read == stats.events == 96_145 and not stats.skipped
    assert types(events) == {"view": 85_752, "add_to_cart": 5_290, "favorite": 2_959, "purchase": 2_144}
    assert len({e["user_id"] for e in events}) == 58_715
    assert events[0]["event_time"] == 1511658000000            # 2017-11-26 01:00:00 UTC
    assert events[-1]["event_time"] == 1511664909000           # 02:55:09 UTC
    assert events[-1]["event_id"] == "taobao-UserBehavior_timeslice_20171126-96145"
    assert time_ordered(events) == events                       # already strictly non-decreasing


def test_rees46(data_dir):
    events, stats = load(data_dir / "rees46_multicategory" / "2019-Oct_head.csv", "rees46")
    assert stats.rows_read == stats.events == 17_434 and not stats.skipped
    assert types(events) == {"view": 17_055, "add_to_cart": 165, "purchase": 214}
    assert len({e["user_id"] for e in events}) == 4_504
    assert len({e["session_id"] for e in events}) == 5_066
    assert events[0] == {
        "event_id": "rees46-2019-Oct_head-2", "user_id": "541312140", "event_type": "view",
        "item_id": "44600062", "category_id": "2103807459595387724", "price": 35.79, "query": None,
        "session_id": "72d76fde-8bb3-4e00-8c23-a032dfed738c", "event_time": 1569888000000, "source": "rees46",
    }
    assert events[-1]["event_time"] == 1569898200000            # 2019-10-01 02:50:00 UTC
    assert all(isinstance(e["price"], float) for e in events)


@pytest.mark.parametrize("name, users, browse, clicks, clicks_kept, with_browse, repeat, other", [
    ("JData_Action_201602_head.csv", 1_030, 12_023, 17_240, 3_156, 11_991, 2_093,
     {"add_to_cart": 443, "remove_from_cart": 175, "purchase": 38, "favorite": 80}),
    ("JData_Action_201603_head.csv", 929, 11_403, 17_515, 3_541, 11_835, 2_139,
     {"add_to_cart": 681, "remove_from_cart": 210, "purchase": 126, "favorite": 64}),
])
def test_jdata_counts_and_click_policy(data_dir, name, users, browse, clicks, clicks_kept, with_browse, repeat,
                                       other):
    events, stats = load(data_dir / "jdata_2016" / name, "jdata")
    assert stats.rows_read == 29_999
    # A type-6 click is skipped when its user/sku/second has a browse row or an earlier kept click;
    # clicks_kept = user/sku/seconds with clicks but no browse (counted independently of the adapter).
    assert stats.skipped == {"jdata_click_with_browse": with_browse, "jdata_click_repeat": repeat}
    assert with_browse + repeat + clicks_kept == clicks
    assert stats.events == len(events) == 29_999 - with_browse - repeat
    assert types(events) == {"view": browse + clicks_kept, **other}
    assert len({e["user_id"] for e in events}) == users
    assert all(e["user_id"].isdigit() for e in events)            # "266079.0" -> "266079"


def test_jdata_first_row_is_china_time(data_dir):
    events, _ = load(data_dir / "jdata_2016" / "JData_Action_201602_head.csv", "jdata")
    first = events[0]
    assert (first["event_id"], first["user_id"], first["item_id"], first["category_id"], first["event_type"]) == \
        ("jdata-JData_Action_201602_head-2", "266079", "138778", "8", "view")
    assert first["event_time"] == 1454255942000                # 2016-01-31 23:59:02 +08:00 = 15:59:02 UTC
    # Line 3 is the type-6 click on the same user/sku one second later: no browse then, so it is a view.
    assert events[1]["event_id"] == "jdata-JData_Action_201602_head-3" and events[1]["event_type"] == "view"


def test_jdata_click_policy_both_orders(tmp_path):
    f = tmp_path / "j.csv"
    f.write_text("user_id,sku_id,time,model_id,type,cate,brand\n"
                 "1.0,10,2016-02-01 00:00:00,0,6,4,1\n"     # click logged before its browse: skipped
                 "1.0,10,2016-02-01 00:00:00,,1,4,1\n"      # browse: view
                 "1.0,11,2016-02-01 00:00:00,0,6,4,1\n"     # click alone: view
                 "1.0,11,2016-02-01 00:00:00,0,6,4,1\n"     # same click again: skipped
                 "1.0,11,2016-02-01 00:00:01,0,6,4,1\n"     # next second: view
                 "2.0,10,2016-02-01 00:00:01,,9,4,1\n"      # unknown type
                 "2.0,10,not a time,,1,4,1\n")              # malformed
    events, stats = load(f, "jdata")
    assert [(e["event_id"][-1], e["item_id"]) for e in events] == [("3", "10"), ("4", "11"), ("6", "11")]
    assert stats.skipped == {"jdata_click_with_browse": 1, "jdata_click_repeat": 1,
                             "unknown_event_type": 1, "malformed": 1}
    assert stats.rows_read == 7 and stats.events == 3


def test_time_ordered_is_stable(data_dir):
    events, _ = load(data_dir / TAOBAO / "UserBehavior_sample.csv", "taobao")
    ordered = time_ordered(events)
    assert ordered != events and sorted(e["event_id"] for e in ordered) == sorted(e["event_id"] for e in events)
    line = {e["event_id"]: i for i, e in enumerate(events)}
    ties = 0
    for a, b in zip(ordered, ordered[1:]):
        assert a["event_time"] <= b["event_time"]
        if a["event_time"] == b["event_time"]:
            ties += 1
            assert line[a["event_id"]] < line[b["event_id"]]
    assert ties > 100


def test_all_named_datasets_encode_and_read_fast(store):
    encode, decode = store.encoder(EVENTS_SUBJECT).encode, store.decoder(EVENTS_SUBJECT).decode
    for name in DATASETS:
        path, fmt = resolve_dataset(name)
        start = time.perf_counter()
        events = time_ordered(read_events(path, fmt))
        assert time.perf_counter() - start < 2.0, name        # 96k rows take ~0.2 s
        assert events == time_ordered(read_events(path, fmt))  # deterministic, ids included
        assert len({e["event_id"] for e in events}) == len(events)
        for e in events[:500] + events[-500:]:
            assert isinstance(e["user_id"], str) and isinstance(e["event_time"], int)
            assert decode(encode(e)) == e


def test_resolve_dataset_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("INTENTFLOW_DATA", str(tmp_path))
    assert resolve_dataset("taobao-sample") == (tmp_path / TAOBAO / "UserBehavior_sample.csv", "taobao")
    with pytest.raises(KeyError):
        resolve_dataset("nope")
    with pytest.raises(ValueError):
        next(read_events(tmp_path / "x", "csv"))
    assert set(FORMATS) == {"taobao", "rees46", "jdata", "canonical"}


def test_taobao_bad_rows_are_counted(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("1,2,3,pv,1511544070\n1,2,3,click,1511544070\n1,2,3\n,2,3,pv,1511544070\n1,2,3,buy,abc\n")
    events, stats = load(f, "taobao")
    assert len(events) == 1 and stats.rows_read == 5
    assert stats.skipped == {"unknown_event_type": 1, "malformed": 2, "missing_user_id": 1}


def test_canonical_jsonl(tmp_path):
    f = tmp_path / "c.jsonl"
    rows = [
        {"user_id": 42, "event_type": "search", "query": "red shoes", "event_time": 1700000000000},
        {"event_id": "x-1", "user_id": "7", "event_type": "purchase", "item_id": 5, "price": "9.5",
         "event_time": 1700000000001, "source": "web-2.3"},
        {"user_id": "7", "event_type": "teleport", "event_time": 1},
        {"event_type": "view", "event_time": 1},
        {"user_id": "7", "event_type": "view", "event_time": "yesterday"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n\n")
    events, stats = load(f, "canonical")
    assert events == [
        {"event_id": "canonical-c-1", "user_id": "42", "event_type": "search", "item_id": None, "category_id": None,
         "price": None, "query": "red shoes", "session_id": None, "event_time": 1700000000000, "source": "canonical"},
        {"event_id": "x-1", "user_id": "7", "event_type": "purchase", "item_id": "5", "category_id": None,
         "price": 9.5, "query": None, "session_id": None, "event_time": 1700000000001, "source": "web-2.3"},
    ]
    assert stats.rows_read == 6
    assert stats.skipped == {"unknown_event_type": 1, "missing_user_id": 1, "malformed": 1, "bad_json": 1}


def test_cli_replay_arguments():
    from jobs.cli import build_parser

    args = build_parser().parse_args(["replay", "--dataset", "taobao", "--speedup", "60", "--limit", "10",
                                      "--set", "kafka.bootstrap_servers=h:1"])
    assert (args.dataset, args.speedup, args.rate, args.limit, args.set) == ("taobao", 60.0, None, 10,
                                                                              ["kafka.bootstrap_servers=h:1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "--dataset", "taobao", "--speedup", "60", "--rate", "5"])
