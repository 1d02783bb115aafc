"""Schema evolution of the events subject (issue #5): older and newer writers are read correctly.

Every record carries its writer's schema id (Confluent framing); the Decoder looks the writer
schema up by that id and resolves it to the reader's schema. The versions of ``events-value``:

* id 1 ``user_event.avsc``    v1, the current reader.
* id 6 ``user_event.v0.avsc`` an older writer: v1 without the optional ``query``/``session_id``.
* id 7 ``user_event.v2.avsc`` a newer writer: v1 plus optional ``device``/``app_version`` (null defaults).

Both directions are proven with the real codec: a v1 reader reading v2 records (new fields
dropped: forward compatibility) and v2 reading v1/v0 records (defaults filled: backward
compatibility), v1 reading v0, and the default decoder of a store where v2 is the highest id.
The stores here are built in ``tmp_path`` from the shipped ``.avsc`` files plus ids 6 and 7, so
the tests do not depend on whether ``schemas/registry.json`` registers those ids yet.
"""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from schemas import EVENTS_SUBJECT, SCHEMA_DIR, DecodeError, Decoder, SchemaStore
from udfs.decode import parse_event

V1, V0, V2 = 1, 6, 7
EVOLUTION = {
    str(V0): {"subject": EVENTS_SUBJECT, "file": "user_event.v0.avsc"},
    str(V2): {"subject": EVENTS_SUBJECT, "file": "user_event.v2.avsc"},
}
V1_FIELDS = ["event_id", "user_id", "event_type", "item_id", "category_id", "price", "query", "session_id",
             "event_time", "source"]
REMOVED_IN_V0 = ("query", "session_id")
ADDED_IN_V2 = ("device", "app_version")


def make_store(directory, extra: dict | None = None, drop: tuple[str, ...] = ()) -> SchemaStore:
    """A SchemaStore in ``directory``: the shipped schemas + registry, plus ``extra`` ids, minus ``drop``."""
    for avsc in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(avsc, directory / avsc.name)
    registry = json.loads((SCHEMA_DIR / "registry.json").read_text())
    registry["schemas"].update(extra or {})
    for sid in drop:
        registry["schemas"].pop(sid, None)
    registry.pop("latest", None)  # no reader pin (if the shipped registry has one): the highest id is the latest
    (directory / "registry.json").write_text(json.dumps(registry, indent=2))
    return SchemaStore(directory)


@pytest.fixture()
def evo(tmp_path):
    """The store with v0 (id 6) and v2 (id 7) registered; v2 has the highest id, so it is the latest."""
    return make_store(tmp_path, EVOLUTION)


@pytest.fixture(scope="module")
def taobao_first_row(data_dir) -> dict:
    """The first row of the Taobao sample (1,2268318,2520377,pv,1511544070) as a v1 event."""
    path = data_dir / "taobao_userbehavior" / "UserBehavior_sample.csv"
    with path.open(newline="") as fh:
        user, item, category, behavior, ts = next(csv.reader(fh))
    assert (user, item, category, behavior, ts) == ("1", "2268318", "2520377", "pv", "1511544070")
    return dict(event_id="taobao-UserBehavior_sample-1", user_id=user, event_type="view", item_id=item,
                category_id=category, price=None, query=None, session_id=None,
                event_time=int(ts) * 1000, source="taobao")


def written_by(schema_id: int, event: dict) -> dict:
    """What a producer on ``schema_id`` sends for ``event`` (v1 fields; v0 lacks two; v2 adds two)."""
    if schema_id == V0:
        return {k: v for k, v in event.items() if k not in REMOVED_IN_V0}
    if schema_id == V2:
        return dict(event, device="mobile", app_version="2.3.1")
    return dict(event)


def field_names(store: SchemaStore, schema_id: int) -> list[str]:
    return [f["name"] for f in store.get(schema_id).raw["fields"]]


def test_versions_differ_exactly_as_declared(evo):
    assert field_names(evo, V1) == V1_FIELDS
    assert field_names(evo, V0) == [f for f in V1_FIELDS if f not in REMOVED_IN_V0]
    assert field_names(evo, V2) == V1_FIELDS + list(ADDED_IN_V2)
    for sid in (V1, V0, V2):
        assert evo.get(sid).subject == EVENTS_SUBJECT
    # Only optional fields are removed or added: each has a null default, so either side can fill it.
    fields = {f["name"]: f for sid in (V1, V2) for f in evo.get(sid).raw["fields"]}
    for name in REMOVED_IN_V0 + ADDED_IN_V2:
        assert fields[name]["type"][0] == "null" and fields[name]["default"] is None
    # v2 has the highest id of the subject, so the store's rule makes it the latest (reader + default writer).
    assert evo.latest(EVENTS_SUBJECT).schema_id == V2


def test_wire_format_carries_the_writers_id(evo, taobao_first_row):
    for sid in (V1, V0, V2):
        raw = evo.encoder(EVENTS_SUBJECT, sid).encode(written_by(sid, taobao_first_row))
        assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == sid


# (writer id, reader id) -> the fields the reader must see, beyond the v1 values of the event.
MATRIX = [
    # same version: the fast path, no resolution
    (V1, V1, {}),
    (V2, V2, {"device": "mobile", "app_version": "2.3.1"}),
    # backward: newer reader, older writer -> defaults filled
    (V1, V2, {"device": None, "app_version": None}),
    (V0, V2, {"device": None, "app_version": None}),
    (V0, V1, {}),
    # forward: older reader, newer writer -> the added fields are dropped
    (V2, V1, {}),
]


@pytest.mark.parametrize("writer, reader, extra", MATRIX, ids=[f"w{w}-r{r}" for w, r, _ in MATRIX])
def test_writer_schema_is_resolved_to_the_reader(evo, taobao_first_row, writer, reader, extra):
    raw = evo.encoder(EVENTS_SUBJECT, writer).encode(written_by(writer, taobao_first_row))
    record = Decoder(evo, evo.get(reader)).decode(raw)
    expected = dict(taobao_first_row, **extra)
    if writer == V0:  # never sent: the reader fills the v1 defaults
        assert record["query"] is None and record["session_id"] is None
    assert record == expected
    assert set(record) == set(field_names(evo, reader))  # exactly the reader's fields (defaults come last)


def test_non_default_values_survive_every_direction(evo):
    """Set values in the shared fields (price, query, session_id) are kept whichever side is newer."""
    event = dict(event_id="rees46-x-2", user_id="541312140", event_type="search", item_id=None,
                 category_id="2103807459595387724", price=35.79, query="running shoes",
                 session_id="72d76fde-8bb3-4e00-8c23-a032dfed738c", event_time=1569888000000, source="web-2.3")
    v2_raw = evo.encoder(EVENTS_SUBJECT, V2).encode(dict(event, device="desktop", app_version=None))
    v1_raw = evo.encoder(EVENTS_SUBJECT, V1).encode(event)
    assert Decoder(evo, evo.get(V1)).decode(v2_raw) == event
    assert Decoder(evo, evo.get(V2)).decode(v2_raw) == dict(event, device="desktop", app_version=None)
    assert Decoder(evo, evo.get(V2)).decode(v1_raw) == dict(event, device=None, app_version=None)
    v0_raw = evo.encoder(EVENTS_SUBJECT, V0).encode(written_by(V0, event))
    assert Decoder(evo, evo.get(V1)).decode(v0_raw) == dict(event, query=None, session_id=None)


def test_default_decoder_reads_every_version(evo, taobao_first_row):
    """The job's decoder (``store.decoder`` = latest = v2) takes records from all three writers."""
    decoder = evo.decoder(EVENTS_SUBJECT)
    assert decoder.reader.schema_id == V2
    out = {sid: decoder.decode(evo.encoder(EVENTS_SUBJECT, sid).encode(written_by(sid, taobao_first_row)))
           for sid in (V1, V0, V2)}
    assert out[V1] == out[V0] == dict(taobao_first_row, device=None, app_version=None)
    assert out[V2] == dict(taobao_first_row, device="mobile", app_version="2.3.1")
    # The default encoder writes the latest version; a v1-shaped dict gets the new fields' defaults.
    raw = evo.encoder(EVENTS_SUBJECT).encode(taobao_first_row)
    assert int.from_bytes(raw[1:5], "big") == V2
    assert decoder.decode(raw) == dict(taobao_first_row, device=None, app_version=None)


def test_parse_event_accepts_every_version_identically(evo, taobao_first_row):
    """The job-side validation ignores unknown fields and reads missing optional ones as None."""
    events = set()
    for writer in (V1, V0, V2):
        raw = evo.encoder(EVENTS_SUBJECT, writer).encode(written_by(writer, taobao_first_row))
        for reader in (V1, V2):
            events.add(parse_event(Decoder(evo, evo.get(reader)).decode(raw), partition=3, offset=42))
        events.add(parse_event(evo.decoder(EVENTS_SUBJECT).decode(raw), partition=3, offset=42))
    assert len(events) == 1
    (event,) = events
    assert (event.user_id, event.event_id, event.item_id, event.category_id, event.price, event.event_time,
            event.partition, event.offset) == ("1", "taobao-UserBehavior_sample-1", "2268318", "2520377",
                                               None, 1511544070000, 3, 42)


def test_writer_without_a_required_field_is_a_schema_mismatch(tmp_path, taobao_first_row):
    """A writer lacking a field the reader requires (``source``, no default) cannot be resolved."""
    bad = json.loads((SCHEMA_DIR / "user_event.avsc").read_text())
    bad["fields"] = [f for f in bad["fields"] if f["name"] != "source"]
    bad["doc"] = "test only: v1 without the required `source`"
    (tmp_path / "user_event.bad.avsc").write_text(json.dumps(bad))
    store = make_store(tmp_path, dict(EVOLUTION, **{"99": {"subject": EVENTS_SUBJECT, "file": "user_event.bad.avsc"}}))
    raw = store.encoder(EVENTS_SUBJECT, 99).encode({k: v for k, v in taobao_first_row.items() if k != "source"})
    for reader in (V1, V2):
        with pytest.raises(DecodeError) as err:
            Decoder(store, store.get(reader)).decode(raw)
        assert err.value.reason == "schema_mismatch"
        assert "source" in err.value.detail


def test_a_store_without_the_writers_id_dead_letters_it(tmp_path, taobao_first_row):
    """A reader whose store predates v2 cannot fetch the writer schema: unknown_schema_id, not garbage."""
    (tmp_path / "old").mkdir()
    (tmp_path / "newer").mkdir()
    old = make_store(tmp_path / "old", drop=(str(V0), str(V2)))
    newer = make_store(tmp_path / "newer", EVOLUTION)
    v2_raw = newer.encoder(EVENTS_SUBJECT, V2).encode(written_by(V2, taobao_first_row))
    assert V2 not in old.ids()
    with pytest.raises(DecodeError) as err:
        old.decoder(EVENTS_SUBJECT).decode(v2_raw)
    assert err.value.reason == "unknown_schema_id"


def test_shipped_store_decodes_every_registered_event_version(store, taobao_first_row):
    """Whatever ``schemas/registry.json`` registers for the events subject, its decoder reads it."""
    decoder = store.decoder(EVENTS_SUBJECT)
    reader_fields = field_names(store, decoder.reader.schema_id)
    for sid in store.ids():
        if store.get(sid).subject != EVENTS_SUBJECT:
            continue
        written = {k: v for k, v in written_by(V2, taobao_first_row).items() if k in field_names(store, sid)}
        record = decoder.decode(store.encoder(EVENTS_SUBJECT, sid).encode(written))
        assert set(record) == set(reader_fields)
        assert parse_event(record).user_id == "1"


def test_a_newer_writers_event_type_unknown_to_the_reader_is_unknown_event_type(tmp_path, taobao_first_row):
    """A newer app adds an event type (enum symbol): its other types still decode; the new one is
    dead-lettered as unknown_event_type (the reader's enum has no default to fall back to)."""
    newer = json.loads((SCHEMA_DIR / "user_event.avsc").read_text())
    event_type = next(f for f in newer["fields"] if f["name"] == "event_type")
    event_type["type"]["symbols"] = [*event_type["type"]["symbols"], "share"]
    newer["doc"] = "test only: v1 plus the event type `share`"
    (tmp_path / "user_event.share.avsc").write_text(json.dumps(newer))
    store = make_store(tmp_path, dict(EVOLUTION, **{"98": {"subject": EVENTS_SUBJECT, "file": "user_event.share.avsc"}}))
    encode, decoder = store.encoder(EVENTS_SUBJECT, 98).encode, store.decoder(EVENTS_SUBJECT)
    assert decoder.decode(encode(taobao_first_row))["event_type"] == taobao_first_row["event_type"]
    # fastavro hands an unknown symbol through as a string instead of failing resolution, so the
    # decoder and parse_event must both hold the line: whichever does, the reason is the same.
    with pytest.raises(DecodeError) as err:
        parse_event(decoder.decode(encode(dict(taobao_first_row, event_type="share"))))
    assert err.value.reason == "unknown_event_type"
