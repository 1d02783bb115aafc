"""Per-user state: the compact record IntentFlow keeps in RocksDB for every user.

One ValueState per user holds a tuple (see :meth:`UserState.to_value`): the model's recurrent
state ``h``, the last N events packed at 21 bytes each, the distinct category strings of those
events (to name top categories), running counters, the events not yet scored (``pending``) and
short hashes of recent event ids (duplicate detection), and the bookkeeping of its inactivity
expiry (the latest event time seen and the event-time timer armed for it). A 50-event window with
a 64-float ``h`` is ~1.5 KB. Appending an event is a bytes concatenation; the window becomes a NumPy array only
when a batch is built.
"""
from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np

STATE_VERSION = 2   # v1 (no expiry fields) is still read: savepoints taken before v2 restore

# type code, crc32(item), crc32(category), event time (ms), price (-1 = unknown)
EVENT_RECORD = struct.Struct("<BIIqf")
WINDOW_DTYPE = np.dtype([("type", "u1"), ("item", "<u4"), ("cat", "<u4"), ("ts", "<i8"), ("price", "<f4")])
assert WINDOW_DTYPE.itemsize == EVENT_RECORD.size == 21
ID_HASH = struct.Struct("<I")


def crc(value: str | None) -> int:
    """Stable 32-bit hash of an id (0 means "none"); the model buckets it itself."""
    return zlib.crc32(value.encode()) if value else 0


class Pending(NamedTuple):
    """An event whose score has not been emitted yet (everything its output record needs)."""
    event_id: str
    event_time: int      # ms
    item_id: str | None
    type_code: int
    purchases_total: int  # counters as of this event (the model's user_stats)
    carts_total: int
    events_total: int
    partition: int       # source coordinates, for a dead letter if inference fails
    offset: int


class UserState:
    """Mutable in-memory view of one user's state; ``to_value``/``from_value`` is the stored form."""

    __slots__ = ("h", "window", "cats", "events_total", "purchases_total", "carts_total",
                 "first_ts", "churn_label", "pending", "recent_ids", "last_active", "expiry_at")

    def __init__(self):
        self.h: bytes = b""                # float32[hidden] after the last scored event; b"" = new user
        self.window: bytes = b""           # EVENT_RECORD * n, oldest first (n <= N + len(pending))
        self.cats: tuple[str, ...] = ()    # distinct category ids appearing in the window
        self.events_total = 0
        self.purchases_total = 0
        self.carts_total = 0
        self.first_ts = 0
        self.churn_label = 0               # 0 = never emitted, else 1 + index into the churn enum
        self.pending: list[Pending] = []
        self.recent_ids: bytes = b""       # crc32 of the last N event ids, for duplicate detection
        self.last_active = 0               # latest event time seen (ms): inactivity is measured from it
        self.expiry_at = 0                 # event time (ms) of the armed expiry timer; 0 = none armed

    # -- stored form ---------------------------------------------------------------------------
    def to_value(self) -> tuple:
        return (STATE_VERSION, self.h, self.window, self.cats, self.events_total, self.purchases_total,
                self.carts_total, self.first_ts, self.churn_label, tuple(self.pending), self.recent_ids,
                self.last_active, self.expiry_at)

    @classmethod
    def from_value(cls, value: tuple | None) -> "UserState | None":
        if value is None:
            return None
        if value[0] not in (1, STATE_VERSION):
            raise ValueError(f"unsupported user-state version {value[0]}")
        st = cls.__new__(cls)
        (_, st.h, st.window, st.cats, st.events_total, st.purchases_total, st.carts_total,
         st.first_ts, st.churn_label, pending, st.recent_ids) = value[:11]
        if value[0] == 1:   # written before expiry existed: active as of its newest event, no timer yet
            st.last_active = int(st.window_array()["ts"].max()) if st.window else st.first_ts
            st.expiry_at = 0
        else:
            st.last_active, st.expiry_at = value[11], value[12]
        st.pending = [Pending(*p) for p in pending]
        return st

    # -- updates ---------------------------------------------------------------------------------
    def seen(self, event_id: str) -> bool:
        """True if this event id is among the user's last N ids (a duplicate delivery)."""
        needle, ids = ID_HASH.pack(crc(event_id)), self.recent_ids
        at = ids.find(needle)
        while at != -1:
            if at % 4 == 0:
                return True
            at = ids.find(needle, at + 1)
        return False

    def append(self, event_id: str, type_code: int, item_id: str | None, category_id: str | None,
               event_time: int, price: float | None, window: int, partition: int = -1, offset: int = -1) -> None:
        """Add one event to the window and mark it pending (scored by the next batch)."""
        self.window += EVENT_RECORD.pack(type_code, crc(item_id), crc(category_id), event_time,
                                         -1.0 if price is None else price)
        if category_id and category_id not in self.cats:
            self.cats += (category_id,)
        self.events_total += 1
        if type_code == 6:     # purchase
            self.purchases_total += 1
        elif type_code == 3:   # add_to_cart
            self.carts_total += 1
        if not self.first_ts:
            self.first_ts = event_time
        if event_time > self.last_active:
            self.last_active = event_time
        self.recent_ids = (self.recent_ids + ID_HASH.pack(crc(event_id)))[-4 * window:]
        self.pending.append(Pending(event_id, event_time, item_id, type_code, self.purchases_total,
                                    self.carts_total, self.events_total, partition, offset))

    def settle(self, h_next: bytes, window: int) -> None:
        """After the pending events are scored: keep h, trim the window to N, forget pending."""
        self.h = h_next
        self.pending = []
        keep = window * EVENT_RECORD.size
        if len(self.window) > keep:
            self.window = self.window[-keep:]
        if len(self.cats) > window:
            in_window = set(self.window_array()["cat"].tolist())
            self.cats = tuple(c for c in self.cats if crc(c) in in_window)

    def expired(self, now: int, ttl_ms: int) -> bool:
        """True when nothing happened for ``ttl_ms`` of event time and no event waits to be scored."""
        return not self.pending and self.last_active + ttl_ms <= now

    def window_events(self) -> int:
        return len(self.window) // EVENT_RECORD.size

    def window_array(self) -> np.ndarray:
        return np.frombuffer(self.window, dtype=WINDOW_DTYPE)

    def category_names(self) -> dict[int, str]:
        return {crc(c): c for c in self.cats}

    def stored_size(self) -> int:
        """Bytes of the pickled stored form (what RocksDB holds for this user, before compression)."""
        import pickle
        return len(pickle.dumps(self.to_value(), protocol=pickle.HIGHEST_PROTOCOL))
