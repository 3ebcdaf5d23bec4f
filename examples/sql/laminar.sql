-- The SQL of Laminar's MQTT source documentation, as it is written there
-- (docs/reference/sql.md says what each statement becomes). Only the broker's
-- address and the password come from the environment:
--
--   MQTT_BROKER=tcp://localhost:1883 MQTT_PASSWORD=secret mqlink run examples/sql/laminar.sql
--
-- Nothing here names a sink, so every table and view that nothing reads
-- (iot_telemetry, mqtt_raw, temperature_alerts) is printed to standard
-- output as JSON lines; a message is acknowledged once its line is written.

CREATE CONNECTION mqtt_connection FROM mqtt_source
WITH (
    broker = '${MQTT_BROKER:-tcp://localhost:1883}',
    username = 'iot_reader',
    password = '${MQTT_PASSWORD}',
    clean_session = true
);

CREATE TABLE iot_telemetry (
    device_id TEXT,
    timestamp TIMESTAMP,
    temperature FLOAT,
    humidity FLOAT,
    location TEXT
) WITH (
    connector = 'mqtt_source',
    connection = 'mqtt_connection',
    topics = '["sensors/+/telemetry", "devices/+/status"]',
    qos = 1,
    format = 'json'
);

CREATE TABLE mqtt_raw (
    topic TEXT,
    payload BYTEA,
    timestamp TIMESTAMP
) WITH (
    connector = 'mqtt_source',
    connection = 'mqtt_connection',
    topics = '["data/binary"]',
    format = 'raw_bytes',
    'raw_bytes.include_topic' = 'true'
);

CREATE TABLE sensor_data (
    sensor_id TEXT,
    reading_time TIMESTAMP,
    temperature FLOAT,
    humidity FLOAT,
    pressure FLOAT
) WITH (
    connector = 'mqtt_source',
    connection = 'mqtt_connection',
    topics = '["sensors/+/readings"]',
    format = 'json'
);

-- Alert on anomalies
CREATE VIEW temperature_alerts AS
SELECT 
    sensor_id,
    temperature,
    reading_time
FROM sensor_data
WHERE temperature > 40.0 OR temperature < -10.0;
