"""Validation policy: what the job refuses to score, and with which dead-letter reason."""
import pytest

from schemas import DecodeError
from udfs.decode import Event, parse_event

GOOD = dict(event_id="e1", user_id="42", event_type="add_to_cart", item_id="i", category_id="c", price=9.5,
            query=None, session_id=None, event_time=1511544070000, source="test")


def test_good_event():
    ev = parse_event(GOOD, partition=3, offset=99)
    assert ev == Event("42", "e1", 3, "i", "c", 9.5, 1511544070000, 3, 99)


@pytest.mark.parametrize("change, reason", [
    ({"user_id": ""}, "missing_user_id"),
    ({"user_id": "   "}, "missing_user_id"),
    ({"user_id": "u" * 129}, "user_id_too_long"),
    ({"event_id": ""}, "missing_event_id"),
    ({"item_id": "x" * 257}, "field_too_long"),
    ({"query": "q" * 2049}, "field_too_long"),
    ({"event_time": 0}, "bad_event_time"),
    ({"event_time": -5}, "bad_event_time"),
    ({"event_time": 1511544070}, "bad_event_time"),            # seconds, not millis
    ({"event_time": 1511544070000000}, "bad_event_time"),      # microseconds
    ({"price": float("nan")}, "bad_price"),
    ({"price": -1.0}, "bad_price"),
    ({"event_type": "teleport"}, "unknown_event_type"),
])
def test_refused_events(change, reason):
    with pytest.raises(DecodeError) as err:
        parse_event(dict(GOOD, **change))
    assert err.value.reason == reason


def test_empty_optional_ids_become_none():
    ev = parse_event(dict(GOOD, item_id="", category_id=None))
    assert ev.item_id is None and ev.category_id is None


def test_every_reason_the_code_can_give_has_a_counter_from_the_start():
    """DECODE_REASONS pre-registers dlq_<reason> counters: it must list every reason raised."""
    import re
    from pathlib import Path

    from udfs.decode import DECODE_REASONS
    root = Path(__file__).resolve().parents[2]
    patterns = (r'DecodeError\("(\w+)"',                       # raise DecodeError("reason", ...)
                r'reason = "(\w+)" if .* else "(\w+)"',         # the decoder's resolution-error choice
                r'_dead_letter\(raw, "(\w+)"')                  # the operator's catch-all
    raised = set()
    for path in ("schemas/__init__.py", "udfs/decode.py"):
        text = (root / path).read_text()
        for pattern in patterns:
            for found in re.findall(pattern, text):
                raised.update([found] if isinstance(found, str) else found)
    assert {"unknown_event_type", "schema_mismatch", "decode_error"} <= raised   # every pattern matched
    assert raised and raised <= set(DECODE_REASONS), raised - set(DECODE_REASONS)
