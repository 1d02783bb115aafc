"""Event time per Kafka partition, as Flink's per-partition watermarks would see it.

The job decodes Avro in Python, after the SQL Kafka source, so its watermark strategy sees the
partitions interleaved in fetch-sized chunks. Taking the newest event time of that mixed stream would
let the watermark run as far ahead as one partition's fetch is ahead of another's: hours or days
of event time when history is replayed fast. Events of the lagging partitions would then count as
late and users on them could be expired by the inactivity TTL before their next event arrives.

:class:`PartitionClock` gives the timestamp assigner the newest event time of the *slowest active*
partition instead (the minimum over partitions of each partition's newest event time), which is what
a per-partition watermark strategy in the source computes. A partition that delivered nothing for
``idle_ms`` of wall-clock time stops holding it back (Flink's idleness), and comes back in when it
delivers again; the watermark generator downstream never lets the watermark go back.
"""
from __future__ import annotations


class PartitionClock:
    """Newest event time of the slowest active partition this reader has seen (pure; unit-tested)."""

    __slots__ = ("idle_ms", "newest", "seen_at")

    def __init__(self, idle_ms: int):
        self.idle_ms = idle_ms
        self.newest: dict[int, int] = {}     # partition -> newest event time (ms)
        self.seen_at: dict[int, int] = {}    # partition -> wall clock of its last record (ms)

    def observe(self, partition: int, event_time: int, now_ms: int) -> int:
        """Record one event; return the event time the watermark may follow."""
        newest = self.newest.get(partition)
        if newest is None or event_time > newest:
            self.newest[partition] = event_time
        self.seen_at[partition] = now_ms
        if len(self.newest) == 1:
            return self.newest[partition]
        cutoff = now_ms - self.idle_ms
        seen_at = self.seen_at
        return min(t for p, t in self.newest.items() if seen_at[p] >= cutoff)
