//! MQTT as a pipeline source and sink.

pub mod sink;
pub mod source;

pub use sink::{parse_sink, MqttSinkConfig, MqttSinkRuntime};
pub use source::{parse_source, run_source, BadData, MqttSourceConfig};
