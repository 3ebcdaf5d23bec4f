-- The Arroyo dialect: a table with its broker (url, topic, type), a sink
-- table, and INSERT INTO with the query between them. Run with
--
--   MQTT_URL=tcp://localhost:1883 mqlink run examples/sql/arroyo.sql
--
-- Readings above 25 °C go to out/hot.jsonl, converted and labelled; a
-- reading is acknowledged to the broker once its line is written (or at
-- once when the WHERE drops it).

CREATE TABLE readings (
    device_id TEXT,
    seq BIGINT,
    temperature DOUBLE,
    topic TEXT METADATA FROM 'topic'
) WITH (
    connector = 'mqtt',
    type = 'source',
    url = '${MQTT_URL:-tcp://localhost:1883}',
    topic = 'sensors/+/telemetry',
    qos = 'AtLeastOnce',
    format = 'json'
);

CREATE TABLE hot WITH (
    connector = 'file',
    path = 'out/hot.jsonl'
);

INSERT INTO hot
SELECT
    device_id,
    seq,
    SPLIT_PART(topic, '/', 2) AS room,
    temperature * 9 / 5 + 32 AS fahrenheit,
    CASE WHEN temperature > 35 THEN 'critical' ELSE 'high' END AS level,
    upper(device_id) || '-' || CAST(seq AS TEXT) AS tag
FROM readings
WHERE temperature > 25;
