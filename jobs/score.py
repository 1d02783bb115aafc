"""``intentflow score``: score a dataset file offline, through the streaming job's own scoring path.

No Kafka, no Flink: the file is read with :func:`jobs.datasets.read_events`, put in event-time
order (:func:`jobs.datasets.time_ordered`, ties in file order), and every event goes through
what the job does to it:

* :func:`udfs.decode.parse_event` validates it; an event it rejects is not scored and is counted
  under its reason code (the job dead-letters it);
* an event whose id is among the user's last N ids (:meth:`UserState.seen`) is a duplicate,
  skipped and counted (the job's ``skipped_duplicate``);
* :meth:`IntentEngine.add` appends it to the user's :class:`UserState` as pending and
  :meth:`IntentEngine.score` scores it, carrying the user's recurrent state.

Batching: events are grouped per user (time order kept). Each round adds up to ``per_round``
(default: the model window, the most the job ever keeps pending) of every active user's next
events and calls ``engine.score`` once for all those users; the engine scores them in
``per_round`` batched model calls. Results do not depend on batch composition
(tests/udfs/test_scoring.py), so a user's lines are the same scored alone or among others.

Output: one JSON line per scored event, **in the time-ordered input order** (event time, ties in
file order), with ``user_id``, ``ts`` (event time in Unix seconds: an int when whole, else a
float), ``item_id``, ``event_type``, the four probabilities, ``next_action`` (event type ->
probability, all of :data:`udfs.contract.EVENT_TYPES`), ``top_categories`` (best first) and
``model_version``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from jobs.config import IntentFlowConfig
from jobs.datasets import ReadStats, read_events, time_ordered
from schemas import DecodeError
from udfs import contract
from udfs.decode import parse_event
from udfs.model import IntentModel
from udfs.scoring import IntentEngine, Scored
from udfs.state import UserState

OUTPUT_FIELDS = ("user_id", "ts", "item_id", "event_type", "p_buy_session", "p_buy_24h", "p_cart_abandon",
                 "p_no_return_48h", "next_action", "top_categories", "model_version")


@dataclass
class ScoreSummary:
    """What one ``score`` run did: events in = scored + rejected + duplicates."""

    rows_read: int = 0                                   # source rows (ReadStats.rows_read)
    source_skipped: Counter = field(default_factory=Counter)  # rows the reader could not turn into events
    events: int = 0                                      # events read (in time order)
    scored: int = 0                                      # lines written
    rejected: Counter = field(default_factory=Counter)   # parse_event reason -> count (the job's DLQ)
    duplicates: int = 0                                  # skipped as duplicate event ids
    users: int = 0
    model_version: str = ""
    model_calls: int = 0                                 # engine.score calls
    wall_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {"rows_read": self.rows_read, "source_skipped": dict(self.source_skipped), "events": self.events,
                "scored": self.scored, "rejected": dict(self.rejected), "duplicates": self.duplicates,
                "users": self.users, "model_version": self.model_version, "score_calls": self.model_calls,
                "wall_s": round(self.wall_s, 3), "events_per_s": round(self.events_per_s, 1)}

    def __str__(self) -> str:
        src = ", ".join(f"{k}={v}" for k, v in sorted(self.source_skipped.items())) or "none"
        rej = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        return (f"score: read {self.rows_read} rows -> {self.events} events (source skipped: {src}); "
                f"scored {self.scored}, rejected {sum(self.rejected.values())} ({rej}), "
                f"duplicates skipped {self.duplicates}; {self.users} users, model {self.model_version}; "
                f"{self.wall_s:.2f} s, {self.events_per_s:,.0f} events/s")


def seconds(event_time_ms: int) -> int | float:
    """Event time in Unix seconds: an int when the millis are a whole second, else a float."""
    whole, rest = divmod(event_time_ms, 1000)
    return int(whole) if rest == 0 else event_time_ms / 1000


def output_line(event: dict, s: Scored, model_version: str) -> dict:
    return {"user_id": event["user_id"], "ts": seconds(event["event_time"]), "item_id": event.get("item_id"),
            "event_type": event["event_type"], "p_buy_session": s.p_buy_session, "p_buy_24h": s.p_buy_24h,
            "p_cart_abandon": s.p_cart_abandon, "p_no_return_48h": s.p_no_return_48h,
            "next_action": dict(zip(contract.EVENT_TYPES, s.next_action)),
            "top_categories": list(s.top_categories), "model_version": model_version}


def score_events(engine: IntentEngine, events: list[dict], summary: ScoreSummary | None = None,
                 per_round: int | None = None) -> list[dict | None]:
    """Score time-ordered canonical events; returns one output dict per event (None: not scored)."""
    summary = ScoreSummary() if summary is None else summary
    per_round = per_round or engine.window
    version = engine.model.version
    summary.model_version = version
    summary.events += len(events)
    by_user: dict[str, list] = {}
    for i, record in enumerate(events):
        try:
            ev = parse_event(record)
        except DecodeError as err:
            summary.rejected[err.reason] += 1
            continue
        except Exception as exc:  # like the job's decode_error: never abort the run for one record
            summary.rejected[f"decode_error:{type(exc).__name__}"] += 1
            continue
        by_user.setdefault(ev.user_id, []).append((i, ev))
    summary.users += len(by_user)

    out: list[dict | None] = [None] * len(events)
    states = {u: UserState() for u in by_user}
    cursor = dict.fromkeys(by_user, 0)
    active = list(by_user)
    while active:
        batch_users, batch_idx = [], []
        for u in active:
            st, evs, pos = states[u], by_user[u], cursor[u]
            added = []
            while pos < len(evs) and len(added) < per_round:
                i, ev = evs[pos]
                pos += 1
                if st.seen(ev.event_id):
                    summary.duplicates += 1
                    continue
                engine.add(st, ev)
                added.append(i)
            cursor[u] = pos
            if added:
                batch_users.append(u)
                batch_idx.append(added)
        if batch_users:
            results = engine.score([states[u] for u in batch_users])
            summary.model_calls += 1
            for idx, res in zip(batch_idx, results):
                assert len(idx) == len(res)
                for i, s in zip(idx, res):
                    out[i] = output_line(events[i], s, version)
                summary.scored += len(res)
        active = [u for u in active if cursor[u] < len(by_user[u])]
    return out


def load_engine(cfg: IntentFlowConfig, model: IntentModel | None = None) -> IntentEngine:
    """The job's model + engine from the config (or around an already loaded model)."""
    if model is None:
        model = IntentModel(cfg.model.resolved_path(), cfg.model.device, cfg.model.intra_op_threads,
                            expected_window=cfg.scoring.sequence_length)
    return IntentEngine(model, cfg.scoring)


def write_lines(lines: Iterable[dict | None], fh) -> int:
    n = 0
    for line in lines:
        if line is not None:
            fh.write(json.dumps(line, separators=(",", ":")))
            fh.write("\n")
            n += 1
    return n


def score_file(cfg: IntentFlowConfig, path: str | os.PathLike, fmt: str, output: str | os.PathLike,
               *, model: IntentModel | None = None, limit: int | None = None,
               per_round: int | None = None) -> ScoreSummary:
    """Read ``path`` (format ``fmt``), score every event, write JSON lines to ``output`` ("-" = stdout)."""
    started = time.perf_counter()
    engine = load_engine(cfg, model)
    stats = ReadStats()
    events = time_ordered(read_events(path, fmt, stats))
    if limit is not None:
        events = events[:limit]
    summary = ScoreSummary(rows_read=stats.rows_read, source_skipped=Counter(stats.skipped))
    lines = score_events(engine, events, summary, per_round)
    if str(output) == "-":
        write_lines(lines, sys.stdout)
        sys.stdout.flush()
    else:
        with open(output, "w", encoding="utf-8") as fh:
            write_lines(lines, fh)
    summary.wall_s = time.perf_counter() - started
    return summary


def iter_output(path: str | os.PathLike) -> Iterator[dict]:
    """Read a ``score`` output file back (for tests and downstream tools)."""
    with open(path, encoding="utf-8") as fh:
        for text in fh:
            if text.strip():
                yield json.loads(text)
