-- A hopping window as Flink's window table-valued function: every minute,
-- the last five minutes of readings per device, into PostgreSQL. Run with
--
--   MQTT_URL=tcp://localhost:1883 PG_URL=postgres://postgres@localhost/postgres \
--     mqlink run examples/sql/flink-tvf-window.sql
--
-- HOP(TABLE t, DESCRIPTOR(time column), slide, size): a reading is in five
-- windows (size / slide). TUMBLE(TABLE t, DESCRIPTOR(ts), size) is the
-- tumbling form; RisingWave's FROM HOP(readings, ts, slide, size) and
-- FROM TUMBLE(readings, ts, size) run the same way. The TVF's rows are
-- grouped by window_start, window_end (required): mqlink runs it as the
-- group window GROUP BY HOP(ts, slide, size).
--
-- The event time is the reading's `ts`; a reading may arrive up to 5
-- seconds out of order, an older one is late (dead-lettered and counted).
-- A window is written once the watermark passes its end. Acknowledgements
-- follow checkpoints (state/readings.window); a window written again after
-- a crash has the same primary key (window_start, device_id): PostgreSQL
-- keeps one row.

CREATE TABLE readings (
    device_id TEXT,
    ts TIMESTAMP,
    temperature DOUBLE,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
    connector = 'mqtt',
    type = 'source',
    url = '${MQTT_URL:-tcp://localhost:1883}',
    client_prefix = 'mqlink-tvf-example',
    clean_start = 'false',
    topic = 'sensors/+/telemetry',
    qos = 'AtLeastOnce',
    format = 'json',
    dead_letter_topic = 'sensors/late',
    state_dir = 'state'
);

CREATE TABLE last_five_minutes WITH (
    connector = 'postgres',
    url = '${PG_URL:-postgres://postgres@localhost/postgres}',
    table = 'last_five_minutes',
    create_table = 'true',
    primary_key = 'window_start, device_id'
);

INSERT INTO last_five_minutes
SELECT
    window_start,
    window_end,
    device_id,
    COUNT(*) AS readings,
    AVG(temperature) AS avg_temperature,
    MAX(temperature) AS max_temperature
FROM TABLE(
    HOP(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)
)
GROUP BY window_start, window_end, device_id
HAVING COUNT(*) >= 3;
