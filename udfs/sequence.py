"""The keyed scorer: each user's sequence state in RocksDB, scored in fault-tolerant dynamic batches.

How batching stays fault tolerant: every event is written to the user's keyed state as
*pending* and a processing-time timer is registered for the batch's deadline, both before
``process_element`` returns. When the first timer of a deadline fires, one batched model call
scores every user waiting for that deadline; each user's own timer then emits that user's
records and clears ``pending``. State and timers are part of every checkpoint, so a crash at any
point either replays the event from Kafka or finds it pending in state and scores it when its
timer fires after restore; the in-memory batch is only a cache. Nothing waits in a Python list
that a checkpoint depends on.

The deadline adapts to load like Triton's dynamic batcher (preferred batch, max queue delay):
light traffic is flushed after ``min_wait_ms``; heavier traffic waits just long enough to
gather a preferred batch, never more than ``max_wait_ms``.
"""
from __future__ import annotations

import logging
import time

from jobs.config import IntentFlowConfig
from schemas import SchemaStore
from udfs.decode import DeadLetters, Event
from udfs.model import IntentModel
from udfs.scoring import IntentEngine, IntentRouter, publish, score_users
from udfs.control import Confirmations, ForgetRequest
from udfs.state import UserState

log = logging.getLogger(__name__)
PREFERRED_BATCH = 64   # ONNX Runtime on one CPU thread is most efficient at 32..128 rows


class BatchClock:
    """Chooses batch deadlines from the observed arrival rate (pure; unit-tested)."""

    def __init__(self, min_wait_ms: int, max_wait_ms: int, preferred: int = PREFERRED_BATCH):
        self.min_wait, self.max_wait, self.preferred = min_wait_ms, max_wait_ms, preferred
        self.deadline = 0
        self.rate = 0.0           # events per ms, exponentially smoothed
        self._opened_at = 0
        self._arrivals = 0
        self.wait_ms = min_wait_ms

    def deadline_for(self, now: int) -> int:
        """The deadline of the batch an event arriving at ``now`` (ms) joins."""
        self._arrivals += 1
        if now < self.deadline:
            return self.deadline
        if self._opened_at:
            elapsed = max(1, now - self._opened_at)
            self.rate = 0.7 * self.rate + 0.3 * (self._arrivals - 1) / elapsed
        self._opened_at, self._arrivals = now, 1
        wait = self.min_wait
        if self.rate * self.min_wait < self.preferred <= self.rate * self.max_wait:
            wait = int(self.preferred / self.rate)
        self.wait_ms = wait
        self.deadline = now + wait
        return self.deadline


def make_scorer_function(cfg: IntentFlowConfig, cart_tag, churn_tag, dlq_tag, forgotten_tag):
    """The KeyedCoProcessFunction (input 1: events, input 2: forget requests), built lazily so
    this module imports without PyFlink."""
    from pyflink.common import Row, Types
    from pyflink.datastream import KeyedCoProcessFunction, TimeDomain
    from pyflink.datastream.state import ValueStateDescriptor

    ttl_ms = cfg.scoring.user_ttl_s * 1000
    tags = {"cart": cart_tag, "churn": churn_tag, "dlq": dlq_tag}

    class SequenceScorer(KeyedCoProcessFunction):

        def open(self, runtime_context):
            self.state = runtime_context.get_state(ValueStateDescriptor("user_state", Types.PICKLED_BYTE_ARRAY()))
            model = IntentModel(cfg.model.resolved_path(), cfg.model.device, cfg.model.intra_op_threads,
                                expected_window=cfg.scoring.sequence_length)
            store = SchemaStore()
            self.engine = IntentEngine(model, cfg.scoring)
            self.router = IntentRouter(cfg.scoring, store, model.version)
            self.dead_letters = DeadLetters(store)
            self.confirmations = Confirmations(store)
            self.topic = cfg.kafka.events_topic
            self.window = model.window
            self.clock = BatchClock(cfg.scoring.min_wait_ms, cfg.scoring.max_wait_ms)
            self.waiting: dict[str, UserState] = {}                # users with events pending, by key
            self.ready: dict[str, tuple[UserState, list]] = {}     # scored, not yet emitted
            m = runtime_context.get_metrics_group()
            self.m_scored = m.counter("events_scored")
            self.m_duplicates = m.counter("skipped_duplicate")
            self.m_late = m.counter("events_late")
            self.m_batches = m.counter("batches")
            self.m_inference_dlq = m.counter("dlq_inference")
            self.m_expired = m.counter("users_expired")
            self.m_forgotten = m.counter("users_forgotten")
            self.last_batch = 0
            self.last_batch_ms = 0.0
            m.gauge("last_batch_size", lambda: self.last_batch)
            m.gauge("last_batch_ms_x1000", lambda: int(self.last_batch_ms * 1000))
            m.gauge("batch_wait_ms", lambda: self.clock.wait_ms)
            log.info("IntentFlow scorer: model %s (%s), window %d, user TTL %d s",
                     model.version, model.provider, model.window, cfg.scoring.user_ttl_s)

        def process_element1(self, row, ctx):
            """An event: append it to the user's state as pending; its batch timer scores it."""
            ev = Event._make(row)
            user = ev.user_id
            st, emitted = self._current(user)
            yield from emitted
            if st is None:
                st = UserState()
            if st.seen(ev.event_id):
                self.m_duplicates.inc()
                return
            timers = ctx.timer_service()
            if ev.event_time < timers.current_watermark():
                self.m_late.inc()     # policy: late events are scored like any other (README)
            self.engine.add(st, ev)
            if ttl_ms and not st.expiry_at:
                st.expiry_at = st.last_active + ttl_ms
                timers.register_event_time_timer(st.expiry_at)
            if len(st.pending) >= self.window:
                # A burst from one user: score it now rather than let its state grow.
                self.waiting.pop(user, None)
                yield from self._emit(user, *self._score([st], [user])[user])
                return
            self.state.update(st.to_value())
            if user not in self.waiting:
                # One timer per user and batch: a user already waiting has a timer that has not fired
                # (any firing timer scores every waiting user). Python's clock is Flink's processing
                # time (both wall-clock ms) and saves a JNI call per event.
                self.waiting[user] = st
                timers.register_processing_time_timer(self.clock.deadline_for(int(time.time() * 1000)))

        def process_element2(self, row, ctx):
            """A forget request: publish what is pending, then purge the user's state and confirm."""
            req = ForgetRequest._make(row)
            user = req.user_id
            st, emitted = self._current(user)
            yield from emitted
            self.waiting.pop(user, None)
            pending = 0
            if st is not None and st.pending:
                pending = len(st.pending)
                yield from self._emit(user, *self._score([st], [user])[user])
            if st is not None and st.expiry_at:
                ctx.timer_service().delete_event_time_timer(st.expiry_at)
            self.state.clear()
            self.m_forgotten.inc()
            had_state = st is not None
            events = st.window_events() if had_state else 0
            yield forgotten_tag, Row(k=user.encode(), v=self.confirmations.encode(req, had_state, events, pending))

        def on_timer(self, timestamp, ctx):
            user = ctx.get_current_key()
            if ctx.time_domain() == TimeDomain.EVENT_TIME:
                yield from self._expire(user, timestamp, ctx)
                return
            if user not in self.ready and self.waiting:
                users = list(self.waiting)
                self.ready.update(self._score([self.waiting[u] for u in users], users))
                self.waiting.clear()
            entry = self.ready.pop(user, None)
            if entry is None:
                # Not in memory: restored from a checkpoint, or already emitted (a stale timer).
                st = UserState.from_value(self.state.value())
                if st is None or not st.pending:
                    return
                entry = self._score([st], [user])[user]
            yield from self._emit(user, *entry)

        def _current(self, user):
            """The user's state and any records owed from an earlier batch (emitted first, in order)."""
            st = self.waiting.get(user)
            if st is not None:
                return st, ()
            ready = self.ready.pop(user, None)
            if ready is not None:   # scored in an earlier batch, its timer not yet fired: emit now
                return ready[0], list(self._emit(user, *ready))
            return UserState.from_value(self.state.value()), ()

        def _expire(self, user, timestamp, ctx):
            """Inactivity TTL: drop the state once the watermark passed last activity + TTL."""
            if user in self.waiting or user in self.ready:
                st = None                    # active right now: re-arm below from the live state
                live = self.waiting.get(user) or self.ready[user][0]
            else:
                st = live = UserState.from_value(self.state.value())
            if live is None or live.expiry_at != timestamp:
                return                       # forgotten, or a timer from before a re-arm
            if st is not None and st.expired(timestamp, ttl_ms):
                self.state.clear()
                self.m_expired.inc()
                return
            live.expiry_at = live.last_active + ttl_ms
            if live.expiry_at <= timestamp:  # pending but inactive: look again one TTL later
                live.expiry_at = timestamp + ttl_ms
            ctx.timer_service().register_event_time_timer(live.expiry_at)
            if st is not None:
                self.state.update(st.to_value())
            return
            yield  # a generator, like every other callback

        def _score(self, states, users):
            started = time.perf_counter()
            outcome = score_users(self.engine, states, users, self._inference_failed)
            self.last_batch_ms = (time.perf_counter() - started) * 1000
            self.last_batch = sum(len(st.pending) for st in states)
            self.m_batches.inc()
            return outcome

        @staticmethod
        def _inference_failed(exc, size):
            log.error("inference failed for a batch of %d users (%s: %s)%s", size, type(exc).__name__, exc,
                      "; retrying each user alone" if size > 1 else "")

        def _emit(self, user, st, results):
            """Yield the records of a scored user (dead letters if its scoring failed); persist its state."""
            for kind, key, value in publish(user, (st, results), self.router, self.dead_letters, self.topic,
                                            self.window):
                if kind == "recommendation":
                    yield Row(k=key, v=value)
                else:
                    if kind == "dlq":
                        self.m_inference_dlq.inc()
                    yield tags[kind], Row(k=key, v=value)
            if not isinstance(results, Exception):
                self.m_scored.inc(len(results))
            self.state.update(st.to_value())

    return SequenceScorer()
