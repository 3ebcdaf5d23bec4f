//! # mqlink
//!
//! MQTT source and sink connectors that never lose a message they were
//! handed and never acknowledge one they have not delivered.
//!
//! # Quick start
//!
//! Everything runs inside a Tokio runtime (outside one, starting returns
//! [`Error::NoRuntime`]); logs go through `tracing`, so install a subscriber
//! (`tracing_subscriber::fmt::init()`) to see them. The examples run
//! against the [embedded broker](broker) so that `cargo test --doc` runs them.
//!
//! **Subscribe, and acknowledge once the message is safe.** Acknowledgements
//! (PUBACK/PUBREC) leave in arrival order, so a record you never acknowledge
//! holds back the acknowledgements of every later one:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let broker = mqlink::broker::EmbeddedBroker::start("127.0.0.1:0").await?;
//! # let url = format!("mqtt://{}", broker.local_addr());
//! use mqlink::{MqttSource, QoS};
//!
//! let mut source = MqttSource::builder()
//!     .broker(&url)
//!     .client_id("ingest")
//!     .keep_session() // what arrives while we are away waits for us
//!     .topic("sensors/+/telemetry", QoS::AtLeastOnce)
//!     .start()
//!     .await?;
//! # mqlink::MqttSink::builder().broker(&url).topic("sensors/d1/telemetry").start().await?
//! #     .send(mqlink::SinkRecord::json(serde_json::json!({"t": 21.5}))).await?.await?;
//! if let Some(mut record) = source.next().await {
//!     println!("{:?}: {:?}", record.topic, record.value); // store it first…
//!     record.ack(); // …then acknowledge
//! }
//! # Ok(()) }
//! ```
//!
//! **Publish 10,000 records, every one confirmed by the broker:**
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let broker = mqlink::broker::EmbeddedBroker::start("127.0.0.1:0").await?;
//! # let url = format!("mqtt://{}", broker.local_addr());
//! use mqlink::{MqttSink, QoS, SinkRecord};
//! use serde_json::json;
//!
//! let sink = MqttSink::builder()
//!     .broker(&url)
//!     .topic("readings/{device}") // a template over the record's fields
//!     .qos(QoS::AtLeastOnce)
//!     .start()
//!     .await?;
//! for i in 0..10_000 {
//!     // Many in flight at once; each handle completes on its PUBACK.
//!     let _handle = sink.send(SinkRecord::json(json!({"device": "d1", "i": i}))).await?;
//! }
//! sink.flush(std::time::Duration::from_secs(30)).await?; // every PUBACK is in
//! # Ok(()) }
//! ```
//!
//! **A bridge that acknowledges upstream only after the far broker confirmed.**
//! [`MqttSink::forward`] pipelines the sends and acknowledges each record
//! upstream once the far broker confirmed it; the PUBACKs upstream still
//! leave in arrival order (`examples/bridge.rs` is this program with arguments):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let broker = mqlink::broker::EmbeddedBroker::start("127.0.0.1:0").await?;
//! # let (near, far) = (format!("mqtt://{}", broker.local_addr()), format!("mqtt://{}", broker.local_addr()));
//! use mqlink::{MqttSink, MqttSource, QoS};
//!
//! let mut upstream = MqttSource::builder()
//!     .broker(&near)
//!     .client_id("bridge-in")
//!     .keep_session() // what is not acknowledged yet is sent again after a restart
//!     .topic("site-a/#", QoS::AtLeastOnce)
//!     .start()
//!     .await?;
//! let downstream = MqttSink::builder().broker(&far).topic("central/{stream}").start().await?;
//! # let p = MqttSink::builder().broker(&near).topic("site-a/x").start().await?;
//! # for i in 0..3 { p.send(mqlink::SinkRecord::json(serde_json::json!(i))).await?.await?; }
//! # let mut n = 0;
//! while let Some(mut record) = upstream.next().await {
//!     // Acknowledged on site-a once central confirmed it; many in flight.
//!     let _confirmed = downstream.forward(&mut record).await?;
//! #   n += 1; if n == 3 { break }
//! }
//! # downstream.flush(std::time::Duration::from_secs(10)).await?;
//! # assert_eq!(upstream.metrics().get("mqlink_source_unacknowledged"), Some(0));
//! # Ok(()) }
//! ```
//!
//! [`MqttSource`] is also a [`Stream`](futures_core::Stream) of records (and
//! [`MqttSource::batches`] one of batches). A sink's messages can be made per
//! record by a function of yours ([`SinkBuilder::message_fn`](sink::SinkBuilder::message_fn),
//! Jet's `messageFn`), and so can its retries
//! ([`SinkBuilder::retry_fn`](sink::SinkBuilder::retry_fn)); the session's
//! reconnects follow a [`Backoff`] (`.reconnect(…)` on either builder).
//!
//! # Layout
//! - `codec` (feature `codec`): MQTT 3.1.1 and 5 packets, encoded and
//!   decoded without I/O, for tests, fuzzing and protocol tools.
//! - [`topic`]: topic name and filter validation, matching, shared subscriptions.
//! - [`options`]: connection options (brokers, TLS, session), and
//!   [`Backoff`], the one pacing of retries.
//! - [`session`]: the session layer: a driver task per connection, confirmed
//!   publishes, ordered acknowledgements, reconnects.
//! - [`format`](mod@format): payload formats (raw bytes, JSON with a typed schema, Avro).
//! - [`source`]: subscriptions as a stream of decoded, acknowledgeable records.
//! - [`sink`]: records published with the broker's confirmation, topic
//!   templates; [`sink::Confirmations`] counts and flushes any publisher's.
//! - [`dead_letter`]: building and publishing dead letters.
//! - [`broker`] (feature `broker`, on by default): an embedded MQTT broker
//!   for first runs and development.
//! - [`error`]: typed errors for every layer.
//! - [`secret`]: a string that is never printed.

#![warn(missing_docs)]

#[cfg(feature = "broker")]
pub mod broker;
// The wire-level layer, named after the MQTT specification's sections;
// public only for tests, fuzzing and protocol tools.
#[cfg(feature = "codec")]
#[allow(missing_docs)]
pub mod codec;
#[cfg(not(feature = "codec"))]
#[allow(dead_code, unreachable_pub)]
mod codec;
pub mod dead_letter;
pub mod error;
pub mod format;
pub mod options;
pub mod secret;
mod seglog;
pub mod session;
pub mod sink;
pub mod source;
pub mod topic;
mod types;

pub use codec::ByteStr;
pub use error::{ConnectError, Error, PublishError, Refusal, SubscribeError};
#[allow(deprecated)]
pub use options::ReconnectPolicy;
pub use options::{
    Backoff, BrokerUrl, ConnectOptions, LastWill, TlsKeys, TlsOptions, Transport, WillPayload,
};
pub use secret::Secret;
pub use session::{
    AckHandle, Client, Confirmed, Delivery, Incoming, Message, PublishProperties, PublishToken,
    Status, SubscribeOptions, SubscribeToken, Subscription,
};
pub use sink::{DeliveryHandle, MqttSink, SinkRecord};
pub use source::{MqttSource, Record};
pub use types::{Protocol, QoS};

/// The README's Rust programs, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The library guide's Rust programs, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guides/hazelcast-jet.md")]
struct LibraryGuideDoctests;
