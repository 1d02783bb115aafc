"""The Confluent-framed Avro codec: round trips, and every kind of undecodable value gets a reason."""
import pytest

from schemas import DLQ_SUBJECT, EVENTS_SUBJECT, DecodeError

EVENT = dict(event_id="taobao-x-1", user_id="1", event_type="view", item_id="2268318", category_id="2520377",
             price=None, query=None, session_id=None, event_time=1511544070000, source="taobao")


def test_event_round_trip(store):
    raw = store.encoder(EVENTS_SUBJECT).encode(EVENT)
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == store.latest(EVENTS_SUBJECT).schema_id
    assert store.decoder(EVENTS_SUBJECT).decode(raw) == EVENT


def test_user_id_beyond_64_bits_stays_exact(store):
    big = "340282366920938463463374607431768211457"  # > 2**128
    raw = store.encoder(EVENTS_SUBJECT).encode(dict(EVENT, user_id=big))
    assert store.decoder(EVENTS_SUBJECT).decode(raw)["user_id"] == big


@pytest.mark.parametrize("value, reason", [
    (None, "empty_value"),
    (b"", "empty_value"),
    (b"hello world", "bad_framing"),
    (b"\x00\x00\x00", "bad_framing"),
    (b"\x00\x00\x00\x03\xe7" + b"\x02a", "unknown_schema_id"),
    (b"\x00\x00\x00\x00\x01" + b"\xff\xff\xff\xff", "bad_avro"),
])
def test_undecodable_values_have_reasons(store, value, reason):
    with pytest.raises(DecodeError) as err:
        store.decoder(EVENTS_SUBJECT).decode(value)
    assert err.value.reason == reason


def test_truncated_and_trailing_bytes_are_bad_avro(store):
    raw = store.encoder(EVENTS_SUBJECT).encode(EVENT)
    dec = store.decoder(EVENTS_SUBJECT)
    for bad in (raw[:-4], raw + b"\x00"):
        with pytest.raises(DecodeError) as err:
            dec.decode(bad)
        assert err.value.reason == "bad_avro"


def test_invalid_utf8_in_a_string(store):
    raw = bytearray(store.encoder(EVENTS_SUBJECT).encode(dict(EVENT, user_id="ab")))
    at = raw.index(b"ab")
    raw[at:at + 2] = b"\xff\xfe"
    with pytest.raises(DecodeError) as err:
        store.decoder(EVENTS_SUBJECT).decode(bytes(raw))
    assert err.value.reason == "invalid_utf8"


def test_unknown_enum_symbol(store):
    raw = bytearray(store.encoder(EVENTS_SUBJECT).encode(EVENT))
    # event_type is the 3rd field: zig-zag varint index; 7 symbols, so index 9 (zig-zag 18) is unknown
    at = 5 + 1 + len(EVENT["event_id"]) + 1 + len(EVENT["user_id"])
    assert raw[at] == 0  # "view" = index 0
    raw[at] = 18
    with pytest.raises(DecodeError) as err:
        store.decoder(EVENTS_SUBJECT).decode(bytes(raw))
    assert err.value.reason in {"unknown_event_type", "bad_avro"}


def test_dead_letter_schema_round_trip(store):
    rec = dict(reason="bad_avro", detail="x", source_topic="events", source_partition=1, source_offset=7,
               source_timestamp=1, dead_lettered_at=2, raw_key=b"k", raw_value=b"\x00garbage")
    assert store.decoder(DLQ_SUBJECT).decode(store.encoder(DLQ_SUBJECT).encode(rec)) == rec
