-- A tumbling window in the Arroyo dialect: per device and minute, the
-- count and the average, minimum and maximum temperature, into
-- PostgreSQL. Run with
--
--   MQTT_URL=tcp://localhost:1883 PG_URL=postgres://postgres@localhost/postgres \
--     mqlink run examples/sql/arroyo-window.sql
--
-- The event time is the reading's own `ts` (epoch milliseconds or an
-- RFC 3339 string in the JSON); a reading may arrive up to 5 seconds out
-- of order. A window is written once the watermark (the latest `ts` seen
-- minus 5 seconds) passes its end. A reading older than the watermark is
-- late: it goes to the dead-letter topic and is counted, not aggregated.
--
-- Acknowledgements follow checkpoints: every checkpoint_interval (and
-- after a pause in the input) mqlink waits until PostgreSQL has committed
-- every window written so far, writes the open windows to
-- state/readings.window (temporary file, fsync, rename), and then
-- acknowledges the readings. After a crash the broker sends the rest
-- again (a persistent session: clean_start = 'false', client_prefix), the
-- state is restored, and a window written again has the same primary key
-- (window_start, device_id): PostgreSQL keeps one row.

CREATE TABLE readings (
    device_id TEXT,
    ts TIMESTAMP,
    temperature DOUBLE,
    WATERMARK FOR ts AS ts - INTERVAL '5 seconds'
) WITH (
    connector = 'mqtt',
    type = 'source',
    url = '${MQTT_URL:-tcp://localhost:1883}',
    client_prefix = 'mqlink-window-example',
    clean_start = 'false',
    topic = 'sensors/+/telemetry',
    qos = 'AtLeastOnce',
    format = 'json',
    dead_letter_topic = 'sensors/late',
    state_dir = 'state',
    checkpoint_interval = '10 s'
);

CREATE TABLE per_minute WITH (
    connector = 'postgres',
    url = '${PG_URL:-postgres://postgres@localhost/postgres}',
    table = 'per_minute',
    create_table = 'true',
    primary_key = 'window_start, device_id'
);

-- `window` reaches the sink as two columns, window_start and window_end.
INSERT INTO per_minute
SELECT
    TUMBLE(INTERVAL '1 minute') AS window,
    device_id,
    COUNT(*) AS readings,
    AVG(temperature) AS avg_temperature,
    MIN(temperature) AS min_temperature,
    MAX(temperature) AS max_temperature
FROM readings
GROUP BY window, device_id
HAVING COUNT(*) >= 3;
