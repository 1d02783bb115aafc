"""Dynamic batch deadlines: fast when traffic is light, longer (bounded) when a batch can fill."""
from udfs.sequence import BatchClock


def test_light_traffic_uses_min_wait():
    clock = BatchClock(min_wait_ms=5, max_wait_ms=50, preferred=64)
    assert clock.deadline_for(1000) == 1005
    assert clock.deadline_for(1003) == 1005      # joins the open batch
    assert clock.deadline_for(2000) == 2005      # 2 events/second: never worth waiting


def test_medium_traffic_waits_for_a_preferred_batch_but_not_past_max_wait():
    clock = BatchClock(min_wait_ms=5, max_wait_ms=50, preferred=64)
    now = 0
    for _ in range(200):                          # 4 events per ms
        clock.deadline_for(now)
        now += 0.25
    waits = []
    for _ in range(400):
        before = clock.deadline
        d = clock.deadline_for(now)
        if d != before:
            waits.append(d - now)
        now += 0.25
    assert all(5 <= w <= 50 for w in waits)
    assert max(waits) > 5                         # it did wait longer than the minimum


def test_heavy_traffic_falls_back_to_min_wait():
    clock = BatchClock(min_wait_ms=5, max_wait_ms=50, preferred=64)
    now = 0.0
    for _ in range(5000):                         # 100 events per ms: a 5 ms window already holds 500
        clock.deadline_for(now)
        now += 0.01
    assert clock.wait_ms == 5
