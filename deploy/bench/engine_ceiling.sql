-- IntentFlow ENGINE CEILING for `intentflow bench`: the job's Kafka -> key by user -> keyed state ->
-- Kafka shape with no Python in the record path. Same input topic layout as the job (raw Kafka key
-- = user id, raw value = Confluent-framed Avro event), same checkpointing, exactly-once Kafka sink.
-- The keyed state is a ROWS OVER window of the user's last ${window} records (the job keeps the last
-- 50 events per user in RocksDB), so every record reads and writes its user's state, and every input
-- record yields exactly one output record. The output value is JSON: the untouched input value
-- (base64, so the bench can read the event_id from it) plus the window's record count.
-- ${...} placeholders are filled by deploy/bench/engine_ceiling.py (string.Template).

CREATE TEMPORARY TABLE bench_source (
  `k`  BYTES,
  `v`  BYTES,
  `pt` AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '${events_topic}',
  'properties.bootstrap.servers' = '${bootstrap}',
  'properties.group.id' = '${group}',
  'properties.isolation.level' = 'read_committed',
  'scan.startup.mode' = 'earliest-offset',
  'key.format' = 'raw', 'key.fields' = 'k',
  'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY'
);

CREATE TEMPORARY TABLE bench_sink (
  `k`                BYTES,
  `v`                BYTES,
  `events_in_window` BIGINT
) WITH (
  'connector' = 'kafka',
  'topic' = '${output_topic}',
  'properties.bootstrap.servers' = '${bootstrap}',
  'key.format' = 'raw', 'key.fields' = 'k',
  'value.format' = 'json', 'value.fields-include' = 'EXCEPT_KEY',
  'sink.delivery-guarantee' = 'exactly-once',
  'sink.transactional-id-prefix' = '${transactional_id_prefix}',
  'properties.transaction.timeout.ms' = '${transaction_timeout_ms}'
);

INSERT INTO bench_sink
SELECT k, v,
       COUNT(*) OVER w AS events_in_window
FROM bench_source
WINDOW w AS (PARTITION BY k ORDER BY pt ROWS BETWEEN ${preceding} PRECEDING AND CURRENT ROW);
