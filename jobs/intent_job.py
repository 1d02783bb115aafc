"""The IntentFlow Flink job: Kafka events -> per-user sequence state -> batched ONNX scoring -> Kafka.

Submit to a cluster with ``intentflow run`` (which calls ``flink run -py jobs/intent_job.py``)::

    events ─ decode+validate ─┬─ watermarks ─┐
                              │              ├ key by user ─ sequence state + batched scoring ─┬─ intent.recommendation
    users.forget ─ decode ─┬──┼─ watermarks ─┘     (TTL, forget, dedupe, fault-tolerant batches) ├─ intent.cart
                           │  │                                                                 ├─ intent.churn
                           │  │                                                                 ├─ users.forgotten
                           └──┴─ bad records ──────────────────────────── events.dlq ◄─ failed batches

Kafka I/O uses the SQL connector (raw bytes + topic/partition/offset metadata in, keyed raw bytes
out with exactly-once transactions); everything in between is DataStream API in Python.
"""
from __future__ import annotations

import argparse
import time

from jobs.config import IntentFlowConfig, load_config

BYTES_ROW = ("k", "v")
# The consumer hands out one partition's fetched records until they are used up: with the default
# 1 MiB per partition a backlog is read ~10k records of one partition at a time, the partitions'
# event times drift apart by hours to days, and the idleness timeout can mistake a partition that
# merely waits its turn for an idle one. 64 KiB (~600 events) keeps the partitions interleaved.
FETCH_BYTES_PER_PARTITION = 65_536


def build_pipeline(env, t_env, cfg: IntentFlowConfig) -> None:
    """The whole topology, top to bottom. Every operator has a stable uid (savepoint-compatible)."""
    from pyflink.common import Duration, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import OutputTag

    from udfs.control import FORGET_FIELDS, make_control_decode_function
    from udfs.decode import EVENT_FIELDS, make_decode_function
    from udfs.event_time import PartitionClock
    from udfs.sequence import make_scorer_function

    kv_type = Types.ROW_NAMED(list(BYTES_ROW), [Types.PRIMITIVE_ARRAY(Types.BYTE())] * 2)
    event_type = Types.ROW_NAMED(list(EVENT_FIELDS), [
        Types.STRING(), Types.STRING(), Types.INT(), Types.STRING(), Types.STRING(), Types.DOUBLE(),
        Types.LONG(), Types.INT(), Types.LONG()])
    forget_type = Types.ROW_NAMED(list(FORGET_FIELDS), [
        Types.STRING(), Types.STRING(), Types.LONG(), Types.INT(), Types.LONG()])
    decode_dlq, control_dlq, score_dlq = (OutputTag(n, kv_type) for n in ("decode-dlq", "control-dlq", "score-dlq"))
    cart, churn, forgotten = (OutputTag(n, kv_type) for n in ("cart", "churn", "forgotten"))
    idle = Duration.of_millis(cfg.flink.idle_source_timeout_ms)

    class EventTime(TimestampAssigner):
        """The slowest active partition's newest event time (udfs/event_time.py): the watermark
        follows each Kafka partition, as a per-partition strategy in the source would."""
        def __init__(self, idle_ms: int):
            self.clock = PartitionClock(idle_ms)   # shipped empty: each subtask gets its own copy

        def extract_timestamp(self, value, record_timestamp):
            return self.clock.observe(value.partition, value.event_time, int(time.time() * 1000))

    class NeverAdvances(TimestampAssigner):
        """Control requests must not move event time (a replay's clock is not the wall clock):
        their input is idle, or holds the watermark still, never ahead."""
        def extract_timestamp(self, value, record_timestamp):
            return 0

    _create_kafka_tables(t_env, cfg)
    events = (t_env.to_data_stream(t_env.from_path("events_source"))
              .process(make_decode_function(decode_dlq), output_type=event_type)
              .name("decode-validate").uid("decode-validate"))
    requests = (t_env.to_data_stream(t_env.from_path("forget_source"))
                .process(make_control_decode_function(control_dlq), output_type=forget_type)
                .name("decode-forget-requests").uid("decode-forget-requests"))
    scored = (events
              .assign_timestamps_and_watermarks(
                  WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(cfg.flink.max_out_of_orderness_ms))
                  .with_idleness(idle).with_timestamp_assigner(EventTime(cfg.flink.idle_source_timeout_ms)))
              .name("event-time-watermarks").uid("event-time-watermarks")
              .connect(requests
                       .assign_timestamps_and_watermarks(
                           WatermarkStrategy.for_monotonous_timestamps()
                           .with_idleness(idle).with_timestamp_assigner(NeverAdvances()))
                       .name("forget-request-watermarks").uid("forget-request-watermarks"))
              .key_by(lambda e: e.user_id, lambda r: r.user_id, key_type=Types.STRING())
              .process(make_scorer_function(cfg, cart, churn, score_dlq, forgotten), output_type=kv_type)
              .name("sequence-state-batched-scoring").uid("sequence-state-batched-scoring"))
    dead_letters = (events.get_side_output(decode_dlq)
                    .union(requests.get_side_output(control_dlq), scored.get_side_output(score_dlq)))

    sinks = t_env.create_statement_set()
    sinks.add_insert("recommendation_sink", t_env.from_data_stream(scored))
    sinks.add_insert("cart_sink", t_env.from_data_stream(scored.get_side_output(cart)))
    sinks.add_insert("churn_sink", t_env.from_data_stream(scored.get_side_output(churn)))
    sinks.add_insert("forgotten_sink", t_env.from_data_stream(scored.get_side_output(forgotten)))
    sinks.add_insert("dlq_sink", t_env.from_data_stream(dead_letters))
    sinks.attach_as_datastream()


def _create_kafka_tables(t_env, cfg: IntentFlowConfig) -> None:
    k = cfg.kafka
    for table, topic, group in (("events_source", k.events_topic, k.consumer_group),
                                ("forget_source", k.forget_topic, f"{k.consumer_group}-forget")):
        t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {table} (
          `k` BYTES,
          `v` BYTES,
          `topic` STRING METADATA VIRTUAL,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{topic}',
          'properties.bootstrap.servers' = '{k.bootstrap_servers}',
          'properties.group.id' = '{group}',
          'properties.isolation.level' = 'read_committed',
          'scan.startup.mode' = '{k.startup_mode}',
          'properties.auto.offset.reset' = 'earliest',
          'properties.max.partition.fetch.bytes' = '{FETCH_BYTES_PER_PARTITION}',
          'key.format' = 'raw', 'key.fields' = 'k',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY'
        )""")
    for table, topic in (("recommendation_sink", k.recommendation_topic), ("cart_sink", k.cart_topic),
                         ("churn_sink", k.churn_topic), ("forgotten_sink", k.forgotten_topic),
                         ("dlq_sink", k.dlq_topic)):
        t_env.execute_sql(f"""
            CREATE TEMPORARY TABLE {table} (`k` BYTES, `v` BYTES) WITH (
              'connector' = 'kafka',
              'topic' = '{topic}',
              'properties.bootstrap.servers' = '{k.bootstrap_servers}',
              'key.format' = 'raw', 'key.fields' = 'k',
              'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY',
              'sink.delivery-guarantee' = '{k.delivery_guarantee}',
              'sink.transactional-id-prefix' = '{k.transactional_id_prefix}-{table}',
              'properties.transaction.timeout.ms' = '{k.transaction_timeout_ms}'
            )""")


def create_environment(cfg: IntentFlowConfig):
    """Stream + table environments with the job-level settings (checkpointing, Python mode, uids)."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    conf.set_string("python.execution-mode", cfg.flink.execution_mode)
    conf.set_string("execution.checkpointing.interval", f"{cfg.flink.checkpoint_interval_ms} ms")
    conf.set_string("execution.checkpointing.min-pause", f"{cfg.flink.min_pause_between_checkpoints_ms} ms")
    conf.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    conf.set_string("pipeline.name", cfg.flink.job_name)
    # Table-created operators (Kafka source/sinks) get deterministic uids too, so savepoints map.
    conf.set_string("table.exec.uid.generation", "ALWAYS")
    if cfg.flink.connector_jar:
        conf.set_string("pipeline.jars", f"file://{cfg.flink.connector_jar}")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.flink.parallelism)
    t_env = StreamTableEnvironment.create(env)
    return env, t_env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="IntentFlow PyFlink job")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    # Fail before submission if the model is missing or does not fit the contract.
    from udfs.model import IntentModel
    IntentModel(cfg.model.resolved_path(), "cpu", expected_window=cfg.scoring.sequence_length)
    env, t_env = create_environment(cfg)
    build_pipeline(env, t_env, cfg)
    env.execute(cfg.flink.job_name)  # with `flink run -d` this returns once the job is submitted


if __name__ == "__main__":
    main()
