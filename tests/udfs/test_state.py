"""Per-user state: bounded to N events, oldest first, pending bookkeeping and duplicate ids."""
import pickle

from udfs.state import EVENT_RECORD, UserState, crc

N = 50


def fill(st, n, start=0, type_code=1):
    for i in range(start, start + n):
        st.append(f"e{i}", type_code, f"item{i % 7}", f"cat{i % 60}", 1_511_544_070_000 + i * 1000, None, N)


def test_window_is_bounded_and_ordered_after_settle():
    st = UserState()
    fill(st, 120)
    assert len(st.pending) == 120                       # nothing trimmed while pending
    st.settle(b"\x00" * 128, N)
    arr = st.window_array()
    assert len(arr) == N and st.pending == []
    assert arr["ts"].tolist() == sorted(arr["ts"].tolist())
    assert arr["ts"][-1] == 1_511_544_070_000 + 119 * 1000  # the newest event is last
    assert len(st.cats) <= N and all(crc(c) in set(arr["cat"].tolist()) for c in st.cats)


def test_counters_and_pending_snapshots():
    st = UserState()
    st.append("a", 3, "i1", "c", 1_000_000_000_000, 5.0, N)   # add_to_cart
    st.append("b", 6, "i1", "c", 1_000_000_001_000, 5.0, N)   # purchase
    assert (st.events_total, st.carts_total, st.purchases_total) == (2, 1, 1)
    assert [(p.events_total, p.carts_total, p.purchases_total) for p in st.pending] == [(1, 1, 0), (2, 1, 1)]
    assert st.first_ts == 1_000_000_000_000


def test_duplicate_ids_within_the_last_n():
    st = UserState()
    fill(st, N + 10)
    assert st.seen("e59") and st.seen("e10")
    assert not st.seen("e9")          # fell out of the bounded id window
    assert not st.seen("never")


def test_stored_form_round_trips_and_is_small():
    st = UserState()
    fill(st, 80)
    st.settle(b"\x01" * 4 * 64, N)
    back = UserState.from_value(pickle.loads(pickle.dumps(st.to_value())))
    assert back.to_value() == st.to_value()
    # 50 events * 21 B + h (64 floats) + ids + category names: well under the 2 KB budget
    assert len(st.window) == N * EVENT_RECORD.size
    assert st.stored_size() < 2048, st.stored_size()


def test_last_active_is_the_latest_event_time_even_when_events_arrive_late():
    st = UserState()
    st.append("a", 1, "i", "c", 1_000_000_005_000, None, N)
    st.append("b", 1, "i", "c", 1_000_000_001_000, None, N)   # late: event time goes back
    assert st.last_active == 1_000_000_005_000


def test_expired_only_after_ttl_of_inactivity_and_never_with_pending_events():
    st = UserState()
    st.append("a", 1, "i", "c", 1_000_000_000_000, None, N)
    ttl = 3_600_000
    assert not st.expired(1_000_000_000_000 + 2 * ttl, ttl)       # still pending: must be scored first
    st.settle(b"\x00" * 128, N)
    assert not st.expired(1_000_000_000_000 + ttl - 1, ttl)
    assert st.expired(1_000_000_000_000 + ttl, ttl)


def test_version_1_state_from_an_older_savepoint_is_read():
    st = UserState()
    fill(st, 60)
    st.settle(b"\x02" * 128, N)
    v1 = (1,) + st.to_value()[1:11]          # the stored form before expiry fields existed
    back = UserState.from_value(v1)
    assert back.window == st.window and back.h == st.h and back.recent_ids == st.recent_ids
    assert back.last_active == 1_511_544_070_000 + 59 * 1000    # newest event in the window
    assert back.expiry_at == 0                                   # armed by the next event
