"""Dataset adapters: public shopper-behaviour files -> canonical ``UserEvent`` dicts.

Every adapter yields dicts with exactly the fields of ``schemas/user_event.avsc`` (ids as
strings, ``event_time`` as int epoch millis, ``price`` float or None), so the replay producer
can encode them without further checks. A row that cannot become an event is never dropped
silently: it is counted in :class:`ReadStats` under a reason code.

``event_id`` is ``f"{source}-{file_stem}-{line}"`` with ``line`` the 1-based physical line of the
file (a header is line 1), so replaying a file twice produces the same ids and the job's
de-duplication sees them as the same events; ``sed -n <line>p`` finds the row.

Source-specific decisions (see each folder's SOURCE.md):

* taobao: headerless ``user_id,item_id,category_id,behavior_type,timestamp`` (seconds, UTC).
  pv/cart/fav/buy -> view/add_to_cart/favorite/purchase. Rows outside the dataset's official
  window (2017-11-25 .. 2017-12-03 China time; 30 noise rows in the sample, back to 2017-09) are
  skipped as ``outside_window``: replayed in event-time order they would open the stream months
  early and stall a paced replay.
* rees46: header; ``event_time`` "YYYY-MM-DD HH:MM:SS UTC"; cart -> add_to_cart; the 19-digit
  category_id stays a string; user_session -> session_id; exact duplicate rows are kept.
* jdata: header; ``user_id`` is float-formatted ("266079.0" -> "266079"); ``time`` is China
  local time (UTC+8). Types 1 browse -> view, 2 add_to_cart, 3 remove_from_cart,
  4 order -> purchase, 5 follow -> favorite. Type 6 (click) is a logging artefact that mostly
  shadows a browse row for the same user/sku/second, sometimes logged before it. Policy: a
  click becomes a ``view`` only when that user/sku/second has no browse row and no earlier kept
  click; otherwise it is skipped as ``jdata_click_with_browse`` / ``jdata_click_repeat``.
  The files are in time order, so rows are buffered one second at a time to see both orders.
* canonical: JSON lines of canonical event dicts (``event_time`` in ms). Missing optional
  fields become null; a missing ``event_id`` gets the deterministic id, a missing ``source``
  becomes "canonical".
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Iterator

from jobs.config import REPO_ROOT

FORMATS = ("taobao", "rees46", "jdata", "canonical")
EVENT_TYPES = frozenset(("view", "search", "add_to_cart", "remove_from_cart", "favorite", "purchase", "review"))

# name -> (path relative to the data dir, format)
DATASETS = {
    "taobao": ("taobao_userbehavior/UserBehavior_timeslice_20171126.csv", "taobao"),
    "taobao-sample": ("taobao_userbehavior/UserBehavior_sample.csv", "taobao"),
    "rees46": ("rees46_multicategory/2019-Oct_head.csv", "rees46"),
    "jdata": ("jdata_2016/JData_Action_201602_head.csv", "jdata"),
    "jdata-201603": ("jdata_2016/JData_Action_201603_head.csv", "jdata"),
}

TAOBAO_TYPES = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}
# Official UserBehavior window: 2017-11-25 00:00 .. 2017-12-04 00:00 China time (UTC+8), seconds.
TAOBAO_WINDOW_S = (1511539200, 1512316800)
REES46_TYPES = {"view": "view", "cart": "add_to_cart", "purchase": "purchase", "remove_from_cart": "remove_from_cart"}
JDATA_TYPES = {"1": "view", "2": "add_to_cart", "3": "remove_from_cart", "4": "purchase", "5": "favorite", "6": "view"}
CHINA_TZ = timezone(timedelta(hours=8))


@dataclass
class ReadStats:
    """What one read did: rows seen, events yielded, rows skipped by reason."""

    rows_read: int = 0
    events: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"rows_read": self.rows_read, "events": self.events, "skipped": dict(self.skipped)}


def data_dir() -> Path:
    """The shared data folder: ``$INTENTFLOW_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("INTENTFLOW_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def resolve_dataset(name: str) -> tuple[Path, str]:
    """Named dataset -> (absolute path, format)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    rel, fmt = DATASETS[name]
    return data_dir() / rel, fmt


def read_events(path: str | os.PathLike, fmt: str, stats: ReadStats | None = None) -> Iterator[dict]:
    """Yield canonical events from ``path`` in file order; counts go into ``stats`` as it reads."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    path = Path(path)
    stats = ReadStats() if stats is None else stats
    reader = {"taobao": _taobao, "rees46": _rees46, "jdata": _jdata, "canonical": _canonical}[fmt]
    with open(path, newline="", encoding="utf-8") as fh:
        for event in reader(fh, path.stem, stats):
            stats.events += 1
            yield event


def time_ordered(events: Iterable[dict]) -> list[dict]:
    """Events sorted by event_time; stable, so ties keep file order (Python's sort is stable)."""
    return sorted(events, key=itemgetter("event_time"))


def _event(event_id, user_id, event_type, item_id, category_id, price, session_id, event_time, source) -> dict:
    # Field order = Avro field order; query is null for every file source.
    return {"event_id": event_id, "user_id": user_id, "event_type": event_type, "item_id": item_id,
            "category_id": category_id, "price": price, "query": None, "session_id": session_id,
            "event_time": event_time, "source": source}


def _taobao(fh, stem: str, stats: ReadStats) -> Iterator[dict]:
    prefix = f"taobao-{stem}-"
    lo, hi = TAOBAO_WINDOW_S
    for line, row in enumerate(csv.reader(fh), 1):
        stats.rows_read += 1
        try:
            user, item, cat, behavior, ts = row
            seconds = int(ts)
        except ValueError:
            stats.skipped["malformed"] += 1
            continue
        etype = TAOBAO_TYPES.get(behavior)
        if etype is None:
            stats.skipped["unknown_event_type"] += 1
        elif not user:
            stats.skipped["missing_user_id"] += 1
        elif not lo <= seconds < hi:
            stats.skipped["outside_window"] += 1
        else:
            yield _event(prefix + str(line), user, etype, item or None, cat or None, None, None,
                         seconds * 1000, "taobao")


def _columns(header: list[str], names: tuple[str, ...]) -> tuple[int, ...]:
    missing = [n for n in names if n not in header]
    if missing:
        raise ValueError(f"header {header} lacks columns {missing}")
    return tuple(header.index(n) for n in names)


def _rees46(fh, stem: str, stats: ReadStats) -> Iterator[dict]:
    prefix = f"rees46-{stem}-"
    rows = csv.reader(fh)
    i_time, i_type, i_item, i_cat, i_price, i_user, i_sess = _columns(
        next(rows), ("event_time", "event_type", "product_id", "category_id", "price", "user_id", "user_session"))
    last_text, last_ms = None, 0  # rows are time-ordered: one parse per distinct second
    for line, row in enumerate(rows, 2):
        stats.rows_read += 1
        try:
            text = row[i_time]
            if text != last_text:
                last_ms = int(datetime.fromisoformat(text.removesuffix(" UTC")).replace(tzinfo=timezone.utc).timestamp()) * 1000
                last_text = text
            price = float(row[i_price]) if row[i_price] else None
            user, etype = row[i_user], REES46_TYPES.get(row[i_type])
            item, cat, sess = row[i_item], row[i_cat], row[i_sess]
        except (ValueError, IndexError):
            stats.skipped["malformed"] += 1
            continue
        if etype is None:
            stats.skipped["unknown_event_type"] += 1
        elif not user:
            stats.skipped["missing_user_id"] += 1
        else:
            yield _event(prefix + str(line), user, etype, item or None, cat or None, price, sess or None,
                         last_ms, "rees46")


def _jdata(fh, stem: str, stats: ReadStats) -> Iterator[dict]:
    prefix = f"jdata-{stem}-"
    rows = csv.reader(fh)
    i_user, i_sku, i_time, i_type, i_cate = _columns(next(rows), ("user_id", "sku_id", "time", "type", "cate"))
    group: list[tuple] = []   # (line, user, sku, type, cate) of the current second
    group_time, group_ms = None, 0
    for line, row in enumerate(rows, 2):
        stats.rows_read += 1
        try:
            user, sku, text, code, cate = row[i_user], row[i_sku], row[i_time], row[i_type], row[i_cate]
            ms = group_ms if text == group_time else \
                int(datetime.fromisoformat(text).replace(tzinfo=CHINA_TZ).timestamp()) * 1000
        except (ValueError, IndexError):
            stats.skipped["malformed"] += 1
            continue
        if text != group_time:
            yield from _jdata_second(group, group_ms, prefix, stats)
            group, group_time, group_ms = [], text, ms
        if code not in JDATA_TYPES:
            stats.skipped["unknown_event_type"] += 1
        elif not user:
            stats.skipped["missing_user_id"] += 1
        else:
            group.append((line, user.removesuffix(".0"), sku, code, cate))
    yield from _jdata_second(group, group_ms, prefix, stats)


def _jdata_second(group: list[tuple], ms: int, prefix: str, stats: ReadStats) -> Iterator[dict]:
    """Emit one second of JData rows, applying the click (type 6) policy from the module doc."""
    browsed = {(u, s) for _, u, s, code, _ in group if code == "1"}
    clicked: set = set()
    for line, user, sku, code, cate in group:
        if code == "6":
            key = (user, sku)
            if key in browsed:
                stats.skipped["jdata_click_with_browse"] += 1
                continue
            if key in clicked:
                stats.skipped["jdata_click_repeat"] += 1
                continue
            clicked.add(key)
        yield _event(prefix + str(line), user, JDATA_TYPES[code], sku or None, cate or None, None, None, ms, "jdata")


def _opt_str(value) -> str | None:
    return None if value is None else str(value)


def _canonical(fh, stem: str, stats: ReadStats) -> Iterator[dict]:
    prefix = f"canonical-{stem}-"
    for line, text in enumerate(fh, 1):
        if not text.strip():
            continue  # blank lines are not rows
        stats.rows_read += 1
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            stats.skipped["bad_json"] += 1
            continue
        if d.get("event_type") not in EVENT_TYPES:
            stats.skipped["unknown_event_type"] += 1
            continue
        if d.get("user_id") in (None, ""):
            stats.skipped["missing_user_id"] += 1
            continue
        try:
            event_time = d["event_time"]
            if isinstance(event_time, bool) or not isinstance(event_time, (int, float)):
                raise TypeError
            price = d.get("price")
            price = None if price is None else float(price)
        except (KeyError, TypeError, ValueError):
            stats.skipped["malformed"] += 1
            continue
        event = _event(_opt_str(d.get("event_id")) or prefix + str(line), str(d["user_id"]), d["event_type"],
                       _opt_str(d.get("item_id")), _opt_str(d.get("category_id")), price,
                       _opt_str(d.get("session_id")), int(event_time), _opt_str(d.get("source")) or "canonical")
        event["query"] = _opt_str(d.get("query"))
        yield event
