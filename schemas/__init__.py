"""Avro schemas (the ``.avsc`` files beside this module) and their Confluent wire-format codec.

Producers, the Flink job, the consumers and the tests all read the schemas from here, so a
field exists in exactly one place. Every Kafka value is framed the Confluent way
(``0x00`` + 4-byte big-endian schema id + Avro binary); ids resolve through the local schema
store ``registry.json`` (a stand-in for a schema registry: ids are immutable, a new version
gets a new id), so a reader always decodes with the writer's schema and resolves it to its own.
A subject's latest schema (its reader, and the default writer) is its highest id, unless
``registry.json`` pins it in ``"latest": {subject: id}`` (e.g. a newer writer version registered
before the readers move to it).
"""
from __future__ import annotations

import copy
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fastavro
from fastavro import schemaless_reader, schemaless_writer

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = 0
HEADER = struct.Struct(">bI")

EVENTS_SUBJECT = "events-value"
RECOMMENDATION_SUBJECT = "intent.recommendation-value"
CART_SUBJECT = "intent.cart-value"
CHURN_SUBJECT = "intent.churn-value"
DLQ_SUBJECT = "events.dlq-value"
FORGET_SUBJECT = "users.forget-value"
FORGOTTEN_SUBJECT = "users.forgotten-value"


class DecodeError(ValueError):
    """A value that cannot be decoded; ``reason`` is a stable dead-letter reason code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _strip_logical_types(schema: Any) -> Any:
    """Return a copy of a schema without logicalType annotations.

    Reading timestamp-millis as a plain long skips a datetime allocation per field; the job works
    in epoch millis anyway. Resolution between writer and reader is unaffected (both are longs).
    """
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    return schema


@dataclass(frozen=True)
class SchemaEntry:
    schema_id: int
    subject: str
    file: str
    raw: dict
    parsed: Any          # fastavro-parsed, logical types kept (for writing)
    parsed_plain: Any    # fastavro-parsed, logical types stripped (for fast reading)


class SchemaStore:
    """The local schema store: id -> schema, subject -> latest id (the highest, or the pinned one)."""

    def __init__(self, directory: Path | str = SCHEMA_DIR, registry_file: str = "registry.json"):
        self.directory = Path(directory)
        registry = json.loads((self.directory / registry_file).read_text())
        self._by_id: dict[int, SchemaEntry] = {}
        self._latest: dict[str, int] = {}
        for sid, meta in sorted(registry["schemas"].items(), key=lambda kv: int(kv[0])):
            raw = json.loads((self.directory / meta["file"]).read_text())
            entry = SchemaEntry(
                schema_id=int(sid), subject=meta["subject"], file=meta["file"], raw=raw,
                parsed=fastavro.parse_schema(copy.deepcopy(raw)),
                parsed_plain=fastavro.parse_schema(_strip_logical_types(raw)),
            )
            self._by_id[entry.schema_id] = entry
            self._latest[entry.subject] = entry.schema_id  # ids ascend, so the last one wins
        for subject, sid in registry.get("latest", {}).items():  # explicit pins override the highest id
            pinned = self._by_id.get(int(sid))
            if pinned is None or pinned.subject != subject:
                raise ValueError(f"{registry_file}: latest[{subject!r}] = {sid} is not a schema id of that subject")
            self._latest[subject] = pinned.schema_id

    def get(self, schema_id: int) -> SchemaEntry:
        return self._by_id[schema_id]

    def latest(self, subject: str) -> SchemaEntry:
        return self._by_id[self._latest[subject]]

    def ids(self) -> list[int]:
        return sorted(self._by_id)

    def encoder(self, subject: str, schema_id: int | None = None) -> "Encoder":
        entry = self.get(schema_id) if schema_id is not None else self.latest(subject)
        return Encoder(entry)

    def decoder(self, subject: str) -> "Decoder":
        return Decoder(self, self.latest(subject))


class Encoder:
    """Record dict -> Confluent-framed Avro bytes, for one schema id."""

    def __init__(self, entry: SchemaEntry):
        self.entry = entry
        self._header = HEADER.pack(MAGIC, entry.schema_id)
        self._schema = entry.parsed

    def encode(self, record: dict) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        schemaless_writer(buf, self._schema, record)
        return buf.getvalue()


class Decoder:
    """Confluent-framed Avro bytes -> record dict in the reader's (latest) schema.

    Raises :class:`DecodeError` with a reason code: ``empty_value``, ``bad_framing``,
    ``unknown_schema_id``, ``invalid_utf8``, ``unknown_event_type`` (an enum symbol the reader
    does not know), ``schema_mismatch`` (writer cannot be resolved to the reader) or
    ``bad_avro`` (truncated, garbage or trailing bytes).
    """

    def __init__(self, store: SchemaStore, reader: SchemaEntry):
        self.reader = reader
        self._reader_schema = reader.parsed_plain
        self._writers: dict[int, tuple[Any, Any]] = {}
        for sid in store.ids():
            entry = store.get(sid)
            if entry.subject == reader.subject:
                # Same id: read without resolution (the fast path). Other ids: resolve to the reader.
                self._writers[sid] = (entry.parsed_plain, None if sid == reader.schema_id else self._reader_schema)

    def decode(self, value: bytes | None) -> dict:
        if not value:
            raise DecodeError("empty_value", "null or empty Kafka value")
        if len(value) < 5 or value[0] != MAGIC:
            raise DecodeError("bad_framing", f"expected 0x00 + 4-byte schema id, got {bytes(value[:5]).hex()}")
        schema_id = int.from_bytes(value[1:5], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            raise DecodeError("unknown_schema_id", f"schema id {schema_id} is not in the schema store for {self.reader.subject}")
        buf = io.BytesIO(value)
        buf.seek(5)
        try:
            record = schemaless_reader(buf, writer[0], writer[1])
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_utf8", str(exc)[:200]) from None
        except fastavro.read.SchemaResolutionError as exc:
            text = str(exc)
            reason = "unknown_event_type" if "enum" in text.lower() or "symbol" in text.lower() else "schema_mismatch"
            raise DecodeError(reason, text[:200]) from None
        except Exception as exc:  # EOFError, struct.error, IndexError, ... on garbage
            raise DecodeError("bad_avro", f"{type(exc).__name__}: {exc}"[:200]) from None
        if buf.tell() != len(value):
            raise DecodeError("bad_avro", f"{len(value) - buf.tell()} trailing bytes after the record")
        return record
