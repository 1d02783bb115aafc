"""The watermark follows the slowest active partition, not the mixed stream's newest event."""
from udfs.event_time import PartitionClock

HOUR = 3_600_000


def test_a_partition_ahead_does_not_drag_the_clock_along():
    clock = PartitionClock(idle_ms=10_000)
    assert clock.observe(0, 5 * HOUR, now_ms=0) == 5 * HOUR
    assert clock.observe(1, 1 * HOUR, now_ms=1) == 1 * HOUR       # partition 1 lags: the clock waits for it
    assert clock.observe(0, 9 * HOUR, now_ms=2) == 1 * HOUR
    assert clock.observe(1, 7 * HOUR, now_ms=3) == 7 * HOUR


def test_an_idle_partition_stops_holding_the_clock_back_and_rejoins_when_it_delivers():
    clock = PartitionClock(idle_ms=10_000)
    clock.observe(0, 1 * HOUR, now_ms=0)
    assert clock.observe(1, 3 * HOUR, now_ms=5_000) == 1 * HOUR
    assert clock.observe(1, 4 * HOUR, now_ms=10_001) == 4 * HOUR  # partition 0 silent for > 10 s
    assert clock.observe(0, 2 * HOUR, now_ms=10_002) == 2 * HOUR  # back: it holds the clock again


def test_out_of_order_events_within_a_partition_keep_its_newest_time():
    clock = PartitionClock(idle_ms=10_000)
    clock.observe(0, 5 * HOUR, now_ms=0)
    assert clock.observe(0, 4 * HOUR, now_ms=1) == 5 * HOUR
