//! # mqlink
//!
//! MQTT source and sink connectors that never lose a message they were
//! handed and never acknowledge one they have not delivered.
//!
//! # Layout
//! - [`codec`]: MQTT 3.1.1 and 5 packets, encoded and decoded without I/O.
//! - [`topic`]: topic name and filter validation, matching, shared subscriptions.
//! - [`options`]: connection options (brokers, TLS, session, reconnect policy).
//! - [`session`]: the session layer: a driver task per connection, confirmed
//!   publishes, ordered acknowledgements, reconnects.
//! - [`format`]: payload formats (raw bytes, JSON with a typed schema).
//! - [`source`]: subscriptions as a stream of decoded, acknowledgeable records.
//! - [`sink`]: records published with the broker's confirmation, topic templates.
//! - [`broker`]: an embedded MQTT broker for first runs and development.
//! - [`error`]: typed errors for every layer.
//! - [`secret`]: a string that is never printed.

#[cfg(feature = "broker")]
pub mod broker;
pub mod codec;
pub mod error;
pub mod format;
pub mod options;
pub mod secret;
pub mod session;
pub mod sink;
pub mod source;
pub mod topic;
mod types;

pub use error::{ConnectError, Error, PublishError, Refusal, SubscribeError};
pub use options::{
    Backoff, BrokerUrl, ConnectOptions, LastWill, ReconnectPolicy, TlsOptions, Transport,
};
pub use secret::Secret;
pub use session::{
    AckHandle, Client, Confirmed, Delivery, Incoming, Message, PublishProperties, PublishToken,
    Status, SubscribeOptions, SubscribeToken, Subscription,
};
pub use types::{Protocol, QoS};
