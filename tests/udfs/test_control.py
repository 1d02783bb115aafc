"""Forget-user requests: validation, and the confirmation record's contents."""
import pytest

from schemas import FORGET_SUBJECT, FORGOTTEN_SUBJECT, DecodeError
from udfs.control import Confirmations, ForgetRequest, parse_forget

GOOD = {"request_id": "req-1", "user_id": "1000042", "requested_at": 1_764_790_000_000}


def test_a_valid_request_keeps_its_source_coordinates(store):
    raw = store.encoder(FORGET_SUBJECT).encode(GOOD)
    req = parse_forget(store.decoder(FORGET_SUBJECT).decode(raw), partition=2, offset=7)
    assert req == ForgetRequest("1000042", "req-1", 1_764_790_000_000, 2, 7)


@pytest.mark.parametrize("change, reason", [
    ({"user_id": ""}, "missing_user_id"),
    ({"user_id": "   "}, "missing_user_id"),
    ({"user_id": "u" * 129}, "user_id_too_long"),
    ({"request_id": ""}, "bad_request_id"),
    ({"requested_at": 1_764_790_000}, "bad_event_time"),     # seconds, not millis
])
def test_unusable_requests_are_rejected_with_a_reason(change, reason):
    with pytest.raises(DecodeError) as err:
        parse_forget(dict(GOOD, **change))
    assert err.value.reason == reason


def test_confirmation_echoes_the_request(store):
    req = parse_forget(GOOD)
    raw = Confirmations(store).encode(req, had_state=True, events_forgotten=50, pending_scored=2)
    rec = store.decoder(FORGOTTEN_SUBJECT).decode(raw)
    assert (rec["request_id"], rec["user_id"], rec["had_state"], rec["events_forgotten"], rec["pending_scored"]) \
        == ("req-1", "1000042", True, 50, 2)
    assert rec["forgotten_at"] >= rec["requested_at"]
