"""IntentFlow's one typed configuration object.

Loaded in one place (:func:`load_config`) from, in increasing priority: the defaults below, a
TOML file (``--config`` or ``$INTENTFLOW_CONFIG``), ``INTENTFLOW__SECTION__KEY`` environment
variables, and ``--set section.key=value`` overrides. It is then passed down explicitly: the job
pickles it into its operators, the tools hand it to their helpers. Nothing reads settings from
module globals.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "events"
    recommendation_topic: str = "intent.recommendation"
    cart_topic: str = "intent.cart"
    churn_topic: str = "intent.churn"
    dlq_topic: str = "events.dlq"
    forget_topic: str = "users.forget"          # privacy requests: purge one user's state
    forgotten_topic: str = "users.forgotten"    # their confirmations
    consumer_group: str = "intentflow-job"
    # Where a job without a savepoint starts reading: earliest | latest | group-offsets.
    startup_mode: str = "group-offsets"
    # exactly-once: outputs become readable (read_committed) when the checkpoint that covers them
    # completes, so latency >= checkpoint interval. at-least-once: readable at once; after a failure
    # records since the last checkpoint are written again (consumers dedupe by event_id).
    delivery_guarantee: str = "exactly-once"
    # Flink's transactional sinks: must stay below the broker's transaction.max.timeout.ms (900000).
    transaction_timeout_ms: int = 600_000
    # Unique per deployment; each sink appends its own suffix.
    transactional_id_prefix: str = "intentflow"

    def __post_init__(self):
        if self.delivery_guarantee not in ("exactly-once", "at-least-once"):
            raise ValueError(f"kafka.delivery_guarantee must be exactly-once or at-least-once, "
                             f"not {self.delivery_guarantee!r}")


@dataclass(frozen=True)
class ScoringConfig:
    sequence_length: int = 50          # events kept per user (must match the model's window)
    max_batch: int = 512               # most sequences in one ONNX Runtime call
    max_wait_ms: int = 50              # longest an event waits for its batch to fill (Triton's max queue delay)
    min_wait_ms: int = 5               # shortest batch window, used when traffic is light
    # A user's state is dropped after this much event time without an event (0 = keep forever).
    user_ttl_s: int = 7 * 86_400
    session_gap_s: int = 1800          # 30-minute inactivity splits sessions (same as the labels)
    top_categories: int = 3
    ready_to_buy_threshold: float = 0.5   # p_buy_session at/above -> label ready_to_buy
    considering_threshold: float = 0.15   # p_buy_session at/above -> considering
    cart_at_risk_threshold: float = 0.8   # p_cart_abandon at/above -> at_risk (coupon candidate)
    churn_at_risk_threshold: float = 0.5  # p_no_return_48h at/above -> at_risk


@dataclass(frozen=True)
class ModelConfig:
    path: str = "models/intent_model.onnx"   # relative paths resolve against the repo root
    device: str = "auto"                      # auto | cpu | cuda
    intra_op_threads: int = 1

    def resolved_path(self) -> Path:
        p = Path(self.path)
        return p if p.is_absolute() else REPO_ROOT / p


@dataclass(frozen=True)
class FlinkConfig:
    job_name: str = "intentflow"
    parallelism: int = 1
    execution_mode: str = "thread"        # python.execution-mode for the Python operators
    checkpoint_interval_ms: int = 1000
    min_pause_between_checkpoints_ms: int = 200
    max_out_of_orderness_ms: int = 5_000  # event-time watermark lag
    idle_source_timeout_ms: int = 10_000  # idle partitions stop holding the watermark back
    connector_jar: str = ""               # flink-sql-connector-kafka jar; default from $INTENTFLOW_CONNECTOR_JAR


@dataclass(frozen=True)
class IntentFlowConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flink: FlinkConfig = field(default_factory=FlinkConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The full config as TOML (what ``intentflow run`` hands to the job it submits)."""
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                if isinstance(value, bool):
                    text = "true" if value else "false"
                elif isinstance(value, (int, float)):
                    text = repr(value)
                else:
                    text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
                lines.append(f"{key} = {text}")
            lines.append("")
        return "\n".join(lines)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "IntentFlowConfig":
        """Return a copy with ``{"section.key": value}`` applied (values coerced to the field type)."""
        sections: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if not key or section not in {f.name for f in fields(self)}:
                raise KeyError(f"unknown config key {dotted!r} (expected section.key)")
            sections.setdefault(section, {})[key] = value
        changed = {}
        for section, values in sections.items():
            current = getattr(self, section)
            types = {f.name: f.type for f in fields(current)}
            unknown = set(values) - set(types)
            if unknown:
                raise KeyError(f"unknown config key(s) in [{section}]: {sorted(unknown)}")
            changed[section] = replace(current, **{k: _coerce(getattr(current, k), v) for k, v in values.items()})
        return replace(self, **changed)


def _coerce(current: Any, value: Any) -> Any:
    if not isinstance(value, str) or isinstance(current, str):
        return type(current)(value) if not isinstance(current, bool) else bool(value)
    if isinstance(current, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return type(current)(value)


def _flatten(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for section, values in doc.items():
        if not isinstance(values, Mapping):
            raise KeyError(f"config file: top-level key {section!r} must be a [section]")
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    return out


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> IntentFlowConfig:
    """Build the config: defaults < TOML file < INTENTFLOW__SECTION__KEY env < ``section.key=value`` overrides."""
    environ = os.environ if environ is None else environ
    cfg = IntentFlowConfig()
    path = path or environ.get("INTENTFLOW_CONFIG")
    if path:
        cfg = cfg.with_overrides(_flatten(tomllib.loads(Path(path).read_text())))
    env_values = {
        k[len("INTENTFLOW__"):].lower().replace("__", "."): v
        for k, v in environ.items() if k.startswith("INTENTFLOW__")
    }
    if env_values:
        cfg = cfg.with_overrides(env_values)
    cli = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise KeyError(f"override {item!r} must look like section.key=value")
        cli[key.strip()] = value
    if cli:
        cfg = cfg.with_overrides(cli)
    if not cfg.flink.connector_jar and environ.get("INTENTFLOW_CONNECTOR_JAR"):
        cfg = replace(cfg, flink=replace(cfg.flink, connector_jar=environ["INTENTFLOW_CONNECTOR_JAR"]))
    if not cfg.kafka.bootstrap_servers:
        raise ValueError("kafka.bootstrap_servers is empty")
    return cfg
