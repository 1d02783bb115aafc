"""Control requests that act on one user's state: today "forget user X" (privacy requests).

Requests arrive on ``kafka.forget_topic`` (``schemas/forget_user.avsc``), are validated by
:func:`parse_forget` (bad ones go to the DLQ like bad events, counted as ``control_dlq_<reason>``),
keyed by user and handled by the scorer, which owns the state: it first scores and publishes any
event of that user still waiting for its batch (so no accepted event is lost), then clears the
state and confirms on ``kafka.forgotten_topic`` (``schemas/user_forgotten.avsc``). The
confirmation is written by an exactly-once sink, so it becomes readable with the checkpoint that
also makes the deletion durable.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from schemas import FORGET_SUBJECT, FORGOTTEN_SUBJECT, DecodeError, SchemaStore
from udfs.decode import MAX_ID, MAX_USER_ID, MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS


class ForgetRequest(NamedTuple):
    """A validated request (field order = Row order)."""
    user_id: str
    request_id: str
    requested_at: int    # ms
    partition: int
    offset: int


FORGET_FIELDS = ForgetRequest._fields


def parse_forget(record: dict, partition: int = -1, offset: int = -1) -> ForgetRequest:
    """Validate a decoded ForgetUser record; raise DecodeError(reason) if it cannot be carried out."""
    user_id = record["user_id"]
    if not user_id or not user_id.strip():
        raise DecodeError("missing_user_id", "user_id is empty")
    if len(user_id) > MAX_USER_ID:
        raise DecodeError("user_id_too_long", f"user_id has {len(user_id)} chars (max {MAX_USER_ID})")
    request_id = record["request_id"]
    if not request_id or len(request_id) > MAX_ID:
        raise DecodeError("bad_request_id", f"request_id must have 1..{MAX_ID} chars")
    at = record["requested_at"]
    if not MIN_EVENT_TIME_MS <= at < MAX_EVENT_TIME_MS:
        raise DecodeError("bad_event_time", f"requested_at={at} is not epoch millis in 2000..2100")
    return ForgetRequest(user_id, request_id, at, partition, offset)


class Confirmations:
    """Builds Avro UserForgotten records."""

    def __init__(self, store: SchemaStore):
        self._encode = store.encoder(FORGOTTEN_SUBJECT).encode

    def encode(self, req: ForgetRequest, had_state: bool, events_forgotten: int, pending_scored: int) -> bytes:
        return self._encode({
            "request_id": req.request_id, "user_id": req.user_id, "requested_at": req.requested_at,
            "forgotten_at": int(time.time() * 1000), "had_state": had_state,
            "events_forgotten": events_forgotten, "pending_scored": pending_scored,
        })


def make_control_decode_function(dlq_tag):
    from udfs.decode import DECODE_REASONS, make_decode_function
    return make_decode_function(dlq_tag, FORGET_SUBJECT, parse_forget, FORGET_FIELDS,
                                counter_prefix="control", dlq_prefix="control_dlq_",
                                reasons=(*DECODE_REASONS, "bad_request_id"))
