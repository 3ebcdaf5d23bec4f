//! MQTT as a pipeline source and sink: one connector, both directions,
//! through the `[connections.NAME]` profiles.

pub mod edge;
pub mod sink;
pub mod source;

use super::{fields_of, Connector, Key, KeyType, Reaches, SinkType, SourceType};

pub use sink::{parse_sink, MqttSinkConfig, MqttSinkRuntime};
pub use source::{parse_source, run_source, BadData, MqttSourceConfig};

pub const CONNECTOR: Connector = Connector {
    name: "mqtt",
    source: Some(SourceType {
        // Laminar's name.
        aliases: &["mqtt_source"],
        status_name: "mqtt_source",
        sql_columns: true,
        keys: &[
            Key::text("connection"),
            Key::of("topics", KeyType::TextOrList).alias(&["topic"]),
            Key::of("qos", KeyType::Qos),
            Key::text("format"),
            Key::of("raw_bytes.include_topic", KeyType::Bool),
            Key::text("avro_schema"),
            Key::text("schema_registry_url"),
            Key::text("sparkplug.host_id"),
            Key::of("sparkplug.rebirth_interval_ms", KeyType::Number),
            Key::text("dead_letter_topic"),
            Key::text("bad_data"),
            Key::of("batch_size", KeyType::Number),
            Key::of("batch_timeout_ms", KeyType::Number),
            Key::of("parallelism", KeyType::Number),
            Key::text("share_group"),
        ],
        fields: fields_of::<MqttSourceConfig>,
        metrics: &[
            "mqlink_source_messages_received_total",
            "mqlink_source_unacknowledged",
            crate::status::SOURCE_DEAD_LETTERED,
        ],
        parse: parse_source,
    }),
    sink: Some(SinkType {
        aliases: &["mqtt_sink"],
        status_name: "mqtt_sink",
        keys: &[
            Key::text("connection"),
            Key::text("topic"),
            Key::of("qos", KeyType::Qos),
            Key::of("retain", KeyType::Bool).alias(&["sink.retain"]),
            Key::text("format"),
            Key::of("parallelism", KeyType::Number),
            Key::text("dead_letter_topic"),
            Key::text("sparkplug.group_id"),
            Key::text("sparkplug.edge_node_id"),
            Key::text("sparkplug.device_id"),
            Key::text("sparkplug.timestamp"),
            Key::of("sparkplug.metrics", KeyType::TextOrList),
        ],
        fields: fields_of::<MqttSinkConfig>,
        metrics: &[crate::status::SINK_IN_FLIGHT],
        parse: parse_sink,
    }),
    reaches: Reaches::Broker,
};
