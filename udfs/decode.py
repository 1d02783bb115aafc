"""Decode + validate raw Kafka records into events; everything unusable becomes a dead letter.

:func:`parse_event` is the pure policy (tested directly); :class:`DecodeEvents` is the Flink
operator around it: good events go downstream as a typed Row, bad ones to the DLQ side output
with a reason code, and every outcome is counted (``events_in``, ``dlq_<reason>``) in the Flink
web UI, so events in = events decoded + dead-lettered.
"""
from __future__ import annotations

import math
import time
from typing import NamedTuple

from schemas import DLQ_SUBJECT, EVENTS_SUBJECT, DecodeError, SchemaStore
from udfs.contract import TYPE_CODE

# Valid event-time range: 2000-01-01 .. 2100-01-01 in epoch millis. Values outside it are zero,
# negative, or in another unit than declared (seconds look like 1970, micro/nanoseconds like 2500+).
MIN_EVENT_TIME_MS = 946_684_800_000
MAX_EVENT_TIME_MS = 4_102_444_800_000
MAX_USER_ID = 128
MAX_ID = 256
MAX_QUERY = 2048
DETAIL_MAX = 300
# Every reason the decoder and parse_event can give: their counters exist (at 0) from the start, so a
# dashboard shows every dlq_<reason> before it first happens.
DECODE_REASONS = ("empty_value", "bad_framing", "unknown_schema_id", "bad_avro", "invalid_utf8",
                  "unknown_event_type", "schema_mismatch", "decode_error", "missing_user_id", "user_id_too_long",
                  "missing_event_id", "field_too_long", "bad_event_time", "bad_price")


class Event(NamedTuple):
    """A decoded, valid event as it travels to the keyed scorer (field order = Row order)."""
    user_id: str
    event_id: str
    type_code: int
    item_id: str | None
    category_id: str | None
    price: float | None
    event_time: int
    partition: int
    offset: int


EVENT_FIELDS = Event._fields


def parse_event(record: dict, partition: int = -1, offset: int = -1) -> Event:
    """Validate a decoded Avro record; raise DecodeError(reason) if the job must not score it."""
    user_id = record["user_id"]
    if not user_id or not user_id.strip():
        raise DecodeError("missing_user_id", "user_id is empty")
    if len(user_id) > MAX_USER_ID:
        raise DecodeError("user_id_too_long", f"user_id has {len(user_id)} chars (max {MAX_USER_ID})")
    event_id = record["event_id"]
    if not event_id:
        raise DecodeError("missing_event_id", "event_id is empty")
    for name, limit in (("event_id", MAX_ID), ("item_id", MAX_ID), ("category_id", MAX_ID),
                        ("session_id", MAX_ID), ("query", MAX_QUERY), ("source", MAX_ID)):
        value = record.get(name)
        if value is not None and len(value) > limit:
            raise DecodeError("field_too_long", f"{name} has {len(value)} chars (max {limit})")
    ts = record["event_time"]
    if not MIN_EVENT_TIME_MS <= ts < MAX_EVENT_TIME_MS:
        raise DecodeError("bad_event_time", f"event_time={ts} is not epoch millis in 2000..2100")
    price = record.get("price")
    if price is not None and (not math.isfinite(price) or price < 0):
        raise DecodeError("bad_price", f"price={price}")
    type_code = TYPE_CODE.get(record["event_type"])
    if type_code is None:  # a newer writer's enum symbol (fastavro passes it through unresolved), or contract drift
        raise DecodeError("unknown_event_type", f"event_type={record['event_type']!r}")
    return Event(user_id, event_id, type_code, record.get("item_id") or None,
                 record.get("category_id") or None, price, ts, partition, offset)


class DeadLetters:
    """Builds Avro DeadLetter records (schemas/dead_letter.avsc)."""

    def __init__(self, store: SchemaStore):
        self._encode = store.encoder(DLQ_SUBJECT).encode

    def encode(self, reason: str, detail: str, topic: str, partition: int, offset: int, kafka_ts: int,
               key: bytes | None, value: bytes | None) -> bytes:
        return self._encode({
            "reason": reason, "detail": detail[:DETAIL_MAX], "source_topic": topic or "",
            "source_partition": int(partition if partition is not None else -1),
            "source_offset": int(offset if offset is not None else -1),
            "source_timestamp": int(kafka_ts or 0), "dead_lettered_at": int(time.time() * 1000),
            "raw_key": None if key is None else bytes(key), "raw_value": None if value is None else bytes(value),
        })


def kafka_ts_ms(value) -> int:
    """Kafka record timestamp from the SQL source in epoch ms.

    TIMESTAMP_LTZ arrives as a ``datetime`` in process mode and as a ``java.time.Instant`` proxy
    in thread mode; read only on the dead-letter path, so the JNI call costs nothing per event.
    """
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    for getter in ("timestamp", "toEpochMilli", "getTime"):   # datetime, java.time.Instant, java.sql.Timestamp
        if hasattr(value, getter):
            result = getattr(value, getter)()
            return int(result * 1000) if getter == "timestamp" else int(result)
    return int(value.toInstant().toEpochMilli())


def make_decode_function(dlq_tag, subject: str = EVENTS_SUBJECT, parse=parse_event, fields=EVENT_FIELDS,
                         counter_prefix: str = "events", dlq_prefix: str = "dlq_", reasons=DECODE_REASONS):
    """The Flink ProcessFunction, built lazily so this module imports without PyFlink.

    The defaults decode user events; :mod:`udfs.control` reuses it for control requests with
    its own parser, Row fields and counter names (so control records never count as events).
    """
    from pyflink.common import Row
    from pyflink.datastream import ProcessFunction

    out_row = Row(*fields)  # a named Row factory: downstream can read fields by name

    class DecodeRecords(ProcessFunction):
        """Raw Kafka record -> typed row; failures -> DLQ side output with a reason and a counter."""

        def open(self, runtime_context):
            store = SchemaStore()
            self.decoder = store.decoder(subject)
            self.dead_letters = DeadLetters(store)
            self.metrics = runtime_context.get_metrics_group()
            self.records_in = self.metrics.counter(f"{counter_prefix}_in")
            self.decoded = self.metrics.counter(f"{counter_prefix}_decoded")
            self.dlq_counters = {r: self.metrics.counter(f"{dlq_prefix}{r}") for r in reasons}

        def process_element(self, raw, ctx):
            self.records_in.inc()
            try:
                parsed = parse(self.decoder.decode(raw.v), raw.partition, raw.offset)
            except DecodeError as err:
                yield dlq_tag, self._dead_letter(raw, err.reason, err.detail)
                return
            except Exception as exc:  # a bug or an input we did not foresee: never kill the job for it
                yield dlq_tag, self._dead_letter(raw, "decode_error", f"{type(exc).__name__}: {exc}")
                return
            self.decoded.inc()
            yield out_row(*parsed)

        def _dead_letter(self, raw, reason: str, detail: str):
            counter = self.dlq_counters.get(reason)
            if counter is None:
                counter = self.dlq_counters[reason] = self.metrics.counter(f"{dlq_prefix}{reason}")
            counter.inc()
            try:
                ts = kafka_ts_ms(raw.ts)
            except Exception:
                ts = 0
            value = self.dead_letters.encode(reason, detail, raw.topic, raw.partition, raw.offset, ts, raw.k, raw.v)
            return Row(k=raw.k, v=value)

    return DecodeRecords()
