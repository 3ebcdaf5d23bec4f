//! Connection options: brokers, identity, credentials, TLS, protocol,
//! session, last will, windows and reconnect policy.
//!
//! The same names are used by the CLI flags and the pipeline config keys
//! (`broker`, `client_id`, `clean_session`, `session_expiry_interval`, …,
//! after Laminar's MQTT connection).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use crate::secret::Secret;
use crate::topic::{validate_topic_name, TopicError};
use crate::types::{Protocol, QoS};

/// How bytes reach the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// MQTT over TCP (`mqtt://`, `tcp://`).
    Tcp,
    /// MQTT over TLS (`mqtts://`, `ssl://`, `tls://`).
    Tls,
    /// MQTT over WebSocket (`ws://`).
    Ws,
    /// MQTT over WebSocket over TLS (`wss://`).
    Wss,
}

impl Transport {
    /// The port used when the URL gives none: 1883, 8883, 80, 443.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 80,
            Transport::Wss => 443,
        }
    }
    /// Whether the transport is encrypted (`mqtts`, `wss`).
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

/// One broker address: `mqtt://host:1883`, `mqtts://host`, `ws://host:8080/mqtt` …
///
/// Schemes: `mqtt`/`tcp` (1883), `mqtts`/`ssl`/`tls` (8883), `ws` (80),
/// `wss` (443). A bare `host` or `host:port` means `mqtt://`.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// How bytes reach the broker (from the scheme).
    pub transport: Transport,
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port (the transport's default when the URL gives none).
    pub port: u16,
    /// HTTP path for WebSocket transports (default `/mqtt`).
    pub path: String,
}

/// A broker URL that could not be understood; names the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid broker URL {url:?}: {reason}")]
pub struct UrlError {
    /// The URL, with any password replaced by `***`.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for BrokerUrl {
    type Err = UrlError;
    fn from_str(url: &str) -> Result<Self, UrlError> {
        // Never echo credentials: `u:***@host`.
        let err = |reason: &str| UrlError {
            url: crate::secret::redact(url).into_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("mqtt".to_owned(), url),
        };
        let transport = match scheme.as_str() {
            "mqtt" | "tcp" => Transport::Tcp,
            "mqtts" | "ssl" | "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return Err(err("unknown scheme; use mqtt, tcp, mqtts, ssl, ws or wss")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(err(
                "credentials in the URL are not accepted; give username and password separately",
            ));
        }
        let is_ws = matches!(transport, Transport::Ws | Transport::Wss);
        if !is_ws && !path.is_empty() && path != "/" {
            return Err(err(
                "a path (topic) is not part of an MQTT broker URL; give topics with -t / topics",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed '[' in host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err(&format!("port {p:?} is not a number from 1 to 65535")))?,
            None => transport.default_port(),
        };
        Ok(BrokerUrl {
            transport,
            host: host.to_owned(),
            port,
            path: if is_ws && !path.is_empty() {
                path.to_owned()
            } else {
                "/mqtt".to_owned()
            },
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "mqtt",
            Transport::Tls => "mqtts",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}", self.port)?;
        if matches!(self.transport, Transport::Ws | Transport::Wss) {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}
impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// TLS settings. Verification is on unless `insecure` is set explicitly.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsOptions {
    /// PEM file of CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
    /// Skip certificate and host name verification. For tests only.
    pub insecure: bool,
    /// Name sent as SNI and checked against the certificate; the URL's host by default.
    pub server_name: Option<String>,
    /// How the front end spells these settings, for errors and warnings.
    pub keys: TlsKeys,
}

impl TlsOptions {
    /// Reads and parses the CA, certificate and key files as a connection
    /// would, without connecting: for `validate`. Errors name the key.
    pub fn check(&self) -> Result<(), OptionsError> {
        if self.ca_file.is_none() && self.client_cert.is_none() && self.client_key.is_none() {
            return Ok(());
        }
        crate::session::check_tls(self)
    }
}

/// How a front end spells the TLS settings, so that an error or a warning
/// names the key the user wrote (`tls_ca_cert`, `--cafile`, `caCert`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsKeys {
    /// The CA file.
    pub ca_file: &'static str,
    /// The client certificate.
    pub client_cert: &'static str,
    /// The client key.
    pub client_key: &'static str,
    /// Turning verification off, as written (empty: the front end has no
    /// such switch).
    pub insecure: &'static str,
    /// Turning TLS off, as written.
    pub plain: &'static str,
}

impl TlsKeys {
    /// The library's own field names.
    pub const LIBRARY: TlsKeys = TlsKeys {
        ca_file: "ca_file",
        client_cert: "client_cert",
        client_key: "client_key",
        insecure: "insecure = true",
        plain: "an mqtt:// URL",
    };
    /// `mqlink pub`/`sub` (mosquitto's flags).
    pub const CLI: TlsKeys = TlsKeys {
        ca_file: "--cafile",
        client_cert: "--cert",
        client_key: "--key",
        insecure: "--insecure",
        plain: "no --cafile/--tls and the plain port (-p 1883)",
    };
    /// Pipeline files and SQL.
    pub const PIPELINE: TlsKeys = TlsKeys {
        ca_file: "tls_ca_cert",
        client_cert: "tls_client_cert",
        client_key: "tls_client_key",
        insecure: "tls_verify = false",
        plain: "an mqtt:// broker URL",
    };
    /// Cybus commissioning files.
    pub const CYBUS: TlsKeys = TlsKeys {
        ca_file: "caCert",
        client_cert: "clientCert",
        client_key: "clientPrivateKey",
        insecure: "trustAllCertificates: true",
        plain: "scheme: mqtt",
    };
    /// Quix's `MQTTSink` and the Python client.
    pub const PYTHON: TlsKeys = TlsKeys {
        ca_file: "ca_file",
        client_cert: "cert_file",
        client_key: "key_file",
        insecure: "tls_insecure=True",
        plain: "tls_enabled=False (or an mqtt:// URL)",
    };
    /// `mqlink airbyte` configurations.
    pub const AIRBYTE: TlsKeys = TlsKeys {
        ca_file: "ca_file",
        client_cert: "client_cert",
        client_key: "client_key",
        insecure: "",
        plain: "use_tls: false",
    };
}

impl Default for TlsKeys {
    fn default() -> Self {
        TlsKeys::LIBRARY
    }
}

/// The message the broker publishes when this client disappears.
#[derive(Clone, Debug, PartialEq)]
pub struct LastWill {
    /// Topic of the will message (a topic name, no wildcards).
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Whether the broker retains it.
    pub retain: bool,
}

/// The will's payload of each connection (see
/// [`ConnectOptions::will_payload`]): called by the session before every
/// CONNECT it sends.
#[derive(Clone)]
pub struct WillPayload(pub std::sync::Arc<dyn Fn() -> Bytes + Send + Sync>);

impl fmt::Debug for WillPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WillPayload(..)")
    }
}

/// How retries are paced — the one backoff of mqlink, for the session's
/// reconnects, the MQTT sink's retried publishes, a pipeline sink's retried
/// writes and schema registry fetches: `initial_interval`, then times
/// `multiplier` each attempt up to `max_interval`, each delay varied by
/// ±`jitter`; `max_attempts` in a row, then give up (0 = never). Jet's
/// `RetryStrategies` are [`fixed`](Self::fixed),
/// [`exponential`](Self::exponential) and
/// [`indefinitely`](Self::indefinitely).
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial_interval: Duration,
    /// Factor by which each delay grows (at least 1.0).
    pub multiplier: f64,
    /// The longest delay.
    pub max_interval: Duration,
    /// Attempts in a row before giving up; 0 = forever.
    pub max_attempts: u32,
    /// Fraction (0.0..=1.0) by which each delay is randomly varied.
    pub jitter: f64,
}

/// The session's reconnect policy: the old name of [`Backoff`].
#[deprecated(since = "0.2.0", note = "use Backoff")]
pub type ReconnectPolicy = Backoff;

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_interval: Duration::from_millis(500),
            multiplier: 2.0,
            max_interval: Duration::from_secs(30),
            max_attempts: 0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// `attempts` retries (0: forever), `interval` apart.
    pub const fn fixed(interval: Duration, attempts: u32) -> Self {
        Backoff::exponential(interval, 1.0, interval, attempts)
    }

    /// `attempts` retries (0: forever), the wait growing from `initial` by
    /// `multiplier` to `max`, without jitter.
    pub const fn exponential(
        initial: Duration,
        multiplier: f64,
        max: Duration,
        attempts: u32,
    ) -> Self {
        Backoff {
            initial_interval: initial,
            multiplier,
            max_interval: max,
            max_attempts: attempts,
            jitter: 0.0,
        }
    }

    /// Retries forever, `interval` apart.
    pub const fn indefinitely(interval: Duration) -> Self {
        Backoff::fixed(interval, 0)
    }

    /// The wait before retry `attempt` (1-based), or `None` once
    /// `max_attempts` retries were made.
    pub fn retry_delay(&self, attempt: u32) -> Option<Duration> {
        (!self.exhausted(attempt)).then(|| self.delay(attempt))
    }

    /// Whether attempt `attempt` (1-based) is past `max_attempts`.
    pub fn exhausted(&self, attempt: u32) -> bool {
        self.max_attempts > 0 && attempt > self.max_attempts
    }

    /// The delay before attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial_interval.as_secs_f64()
            * self
                .multiplier
                .max(1.0)
                .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = base.min(self.max_interval.as_secs_f64());
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + j * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// Everything needed to open and keep an MQTT session.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Brokers tried in turn (failover); at least one.
    pub brokers: Vec<BrokerUrl>,
    /// Client identifier; generated (`mqlink-…`) when absent. Required
    /// for a persistent session. One per process: a broker closes the
    /// older connection of an id when another connects, and a session taken
    /// over again and again ends with [`ConnectError::ClientIdInUse`](crate::ConnectError::ClientIdInUse).
    pub client_id: Option<String>,
    /// User name for the broker's authentication.
    pub username: Option<String>,
    /// Password for the broker's authentication (never printed).
    pub password: Option<Secret>,
    /// TLS settings for `mqtts://` and `wss://` brokers.
    pub tls: TlsOptions,
    /// MQTT 3.1.1 or 5 (see [`protocol_fallback`](Self::protocol_fallback)).
    pub protocol: Protocol,
    /// The protocol was not written ([`ConnectOptions::protocol_or_default`]):
    /// MQTT 5 is tried first and, when the broker refuses it (CONNACK
    /// "unsupported protocol version", a hang-up, or no CONNACK within
    /// `connect_timeout`) while it answers a 3.1.1 CONNECT, the session
    /// speaks 3.1.1 from then on (logged once). After the first connection
    /// the protocol stays what it was.
    pub protocol_fallback: bool,
    /// Keep-alive interval; zero disables it.
    pub keep_alive: Duration,
    /// Time allowed for TCP, TLS, WebSocket and CONNACK together.
    pub connect_timeout: Duration,
    /// `true`: start a new session on every connect. `false`: keep the
    /// broker's session (queued messages, subscriptions) across connects.
    pub clean_session: bool,
    /// MQTT 5 session expiry in seconds. With `clean_session = false` it
    /// defaults to "never" (4294967295), as mosquitto_sub -c does.
    pub session_expiry_interval: Option<u32>,
    /// The message the broker publishes when this client disappears.
    pub last_will: Option<LastWill>,
    /// Makes `last_will`'s payload anew for each CONNECT (a Sparkplug edge
    /// node's NDEATH counts its connections in `bdSeq`) [default: none:
    /// every connection registers `last_will` as it is].
    pub will_payload: Option<WillPayload>,
    /// Unconfirmed outgoing QoS 1/2 publishes at most (1..=65000).
    pub max_inflight: u16,
    /// Largest packet this client sends or accepts, in bytes.
    pub max_packet_size: u32,
    /// MQTT 5 receive maximum announced to the broker (incoming QoS 1/2 window).
    pub receive_maximum: u16,
    /// Incoming deliveries buffered for the application before the
    /// network driver stops reading (TCP back-pressure).
    pub incoming_buffer: usize,
    /// Bytes of incoming messages (payload and topic) handed towards the
    /// application and not taken by it yet, at most, before the network
    /// driver stops reading (TCP back-pressure) [default: 8 MiB]. Memory
    /// then follows bytes, not only `incoming_buffer`'s count. Reading
    /// goes on while this client's own publishes await acknowledgements
    /// (the application may wait for those first); the broker's window
    /// bounds QoS 1/2 messages then.
    pub incoming_bytes: usize,
    /// How reconnects are paced, and when they give up.
    pub reconnect: Backoff,
    /// A publish above the broker's maximum QoS (MQTT 5 CONNACK) is sent
    /// at that maximum instead of failing with
    /// [`PublishError::QosNotSupported`](crate::PublishError::QosNotSupported).
    pub downgrade_qos: bool,
}

/// Options that cannot work; each names the option and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionsError {
    /// A broker URL that cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// No broker URL at all.
    #[error("no broker given")]
    NoBroker,
    /// `clean_session = false` without a client id.
    #[error("client_id is required when clean_session is false (a persistent session is found again by its client id)")]
    PersistentSessionNeedsClientId,
    /// A client id over MQTT's limit (its first 40 characters).
    #[error("client_id {0:?} is longer than 65535 bytes")]
    ClientIdTooLong(String),
    /// The last will's topic is not a valid topic name.
    #[error("last will topic: {0}")]
    WillTopic(TopicError),
    /// A string or binary field over MQTT's 65535 bytes.
    #[error("{what} is {len} bytes; MQTT allows at most 65535")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// `max_inflight` outside 1..=65000.
    #[error("max_inflight {0} is out of range 1..=65000")]
    MaxInflight(u32),
    /// `receive_maximum` of 0.
    #[error("receive_maximum must be at least 1")]
    ReceiveMaximum,
    /// A session expiry on MQTT 3.1.1.
    #[error("session_expiry_interval needs MQTT 5 (protocol = \"5\")")]
    SessionExpiryNeedsV5,
    /// `max_packet_size` outside 64..=268435460.
    #[error("max_packet_size {0} is out of range 64..=268435460")]
    MaxPacketSize(u32),
    /// A reconnect multiplier below 1.0 (or NaN).
    #[error("reconnect multiplier {0} must be at least 1.0")]
    Multiplier(String),
    /// A TLS file that cannot be read or used.
    #[error("{what} {path:?} cannot be used: {reason}")]
    TlsFile {
        /// Which option, as the user wrote it ([`TlsKeys`]).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A client certificate without its key, or the other way round.
    #[error("{0} and {1} go together; {1} is missing")]
    TlsPair(&'static str, &'static str),
    /// A TLS broker URL in a build without the `tls` feature.
    #[error("TLS support was not compiled in (feature \"tls\")")]
    TlsNotCompiled,
    /// A WebSocket broker URL in a build without the `ws` feature.
    #[error("WebSocket support was not compiled in (feature \"ws\")")]
    WsNotCompiled,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            brokers: Vec::new(),
            client_id: None,
            username: None,
            password: None,
            tls: TlsOptions::default(),
            protocol: Protocol::V311,
            protocol_fallback: false,
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            clean_session: true,
            session_expiry_interval: None,
            last_will: None,
            will_payload: None,
            max_inflight: 1000,
            max_packet_size: 268_435_460,
            receive_maximum: 1000,
            incoming_buffer: 1024,
            incoming_bytes: 8 << 20,
            reconnect: Backoff::default(),
            downgrade_qos: false,
        }
    }
}

impl ConnectOptions {
    /// Options for one broker URL, everything else default.
    pub fn new(broker: &str) -> Result<Self, OptionsError> {
        Ok(ConnectOptions {
            brokers: vec![broker.parse()?],
            ..Default::default()
        })
    }

    /// Starts a builder in the style of Jet's `MqttSources.builder()`.
    pub fn builder() -> ConnectOptionsBuilder {
        ConnectOptionsBuilder::default()
    }

    /// The protocol as the user wrote it, or — `None` — the default of
    /// pipelines, Cybus, Airbyte and Python: MQTT 5 where the broker speaks
    /// it, else 3.1.1 ([`protocol_fallback`](Self::protocol_fallback)). MQTT 5
    /// because its Receive Maximum sets the broker's window: on 3.1.1 the
    /// broker's own limit applies (Mosquitto: 20 unacknowledged messages,
    /// then a queue of 1,000, then drops), which a sink that confirms in
    /// batches cannot keep up with (docs/guides/broker-limits.md).
    pub fn protocol_or_default(&mut self, written: Option<Protocol>) {
        self.protocol = written.unwrap_or(Protocol::V5);
        self.protocol_fallback = written.is_none();
    }

    /// Checks the options without touching the network.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.brokers.is_empty() {
            return Err(OptionsError::NoBroker);
        }
        if !self.clean_session && self.client_id.as_deref().is_none_or(str::is_empty) {
            return Err(OptionsError::PersistentSessionNeedsClientId);
        }
        if let Some(id) = &self.client_id {
            if id.len() > 65_535 {
                return Err(OptionsError::ClientIdTooLong(id.chars().take(40).collect()));
            }
        }
        if let Some(w) = &self.last_will {
            validate_topic_name(&w.topic).map_err(OptionsError::WillTopic)?;
        }
        let fields = [
            (
                "last will payload",
                self.last_will.as_ref().map(|w| &w.payload[..]),
            ),
            ("username", self.username.as_deref().map(str::as_bytes)),
            // Only the length of the secret is read.
            (
                "password",
                self.password.as_ref().map(|p| p.expose().as_bytes()),
            ),
        ];
        for (what, v) in fields {
            let len = v.map_or(0, <[u8]>::len);
            if len > crate::codec::MAX_FIELD_LENGTH {
                return Err(OptionsError::TooLong { what, len });
            }
        }
        if self.max_inflight == 0 || self.max_inflight > 65_000 {
            return Err(OptionsError::MaxInflight(self.max_inflight as u32));
        }
        if self.receive_maximum == 0 {
            return Err(OptionsError::ReceiveMaximum);
        }
        if self.session_expiry_interval.is_some() && self.protocol != Protocol::V5 {
            return Err(OptionsError::SessionExpiryNeedsV5);
        }
        if !(64..=268_435_460).contains(&self.max_packet_size) {
            return Err(OptionsError::MaxPacketSize(self.max_packet_size));
        }
        if self.reconnect.multiplier < 1.0 || self.reconnect.multiplier.is_nan() {
            return Err(OptionsError::Multiplier(
                self.reconnect.multiplier.to_string(),
            ));
        }
        match (&self.tls.client_cert, &self.tls.client_key) {
            (Some(_), None) => {
                let k = self.tls.keys;
                return Err(OptionsError::TlsPair(k.client_cert, k.client_key));
            }
            (None, Some(_)) => {
                let k = self.tls.keys;
                return Err(OptionsError::TlsPair(k.client_key, k.client_cert));
            }
            _ => {}
        }
        for b in &self.brokers {
            if b.transport.is_tls() && !cfg!(feature = "tls") {
                return Err(OptionsError::TlsNotCompiled);
            }
            if matches!(b.transport, Transport::Ws | Transport::Wss) && !cfg!(feature = "ws") {
                return Err(OptionsError::WsNotCompiled);
            }
        }
        Ok(())
    }

    /// The client id to use: the configured one, or a generated one.
    pub(crate) fn resolve_client_id(&self) -> String {
        match &self.client_id {
            Some(id) => id.clone(),
            None => {
                let suffix: String = (0..12).map(|_| fastrand::alphanumeric()).collect();
                format!("mqlink-{suffix}")
            }
        }
    }

    /// Session expiry to send: explicit, or "never" for a v5 persistent session.
    pub(crate) fn effective_session_expiry(&self) -> Option<u32> {
        match (
            self.protocol,
            self.session_expiry_interval,
            self.clean_session,
        ) {
            (Protocol::V5, Some(e), _) => Some(e),
            (Protocol::V5, None, false) => Some(u32::MAX),
            _ => None,
        }
    }
}

/// Chained setters that cannot fail; problems surface in [`build`](Self::build).
#[derive(Default)]
pub struct ConnectOptionsBuilder {
    opts: ConnectOptions,
    errors: Vec<OptionsError>,
}

/// The connection setters of the source and sink builders, written once:
/// each builder has `config.connection` (the whole options) and `connect`
/// (pieces given one by one, applied at `build`).
macro_rules! connection_setters {
    () => {
        fn with_connection(
            mut self,
            f: impl FnOnce(
                crate::options::ConnectOptionsBuilder,
            ) -> crate::options::ConnectOptionsBuilder,
        ) -> Self {
            let b = self
                .connect
                .take()
                .unwrap_or_else(|| self.config.connection.clone().into_builder());
            self.connect = Some(f(b));
            self
        }
        /// The whole connection (replaces pieces given before).
        pub fn connection(mut self, c: crate::ConnectOptions) -> Self {
            self.config.connection = c;
            self.connect = None;
            self
        }
        /// A broker URL (`mqtt://host:1883`, `mqtts://…`, `ws://…`); call again for failover.
        pub fn broker(self, url: &str) -> Self {
            self.with_connection(|b| b.broker(url))
        }
        /// The client identifier (generated when not given; needed by
        /// [`keep_session`](Self::keep_session) and `parallelism > 1`).
        pub fn client_id(self, id: impl Into<String>) -> Self {
            self.with_connection(|b| b.client_id(id))
        }
        /// User name and password (never printed).
        pub fn auth(self, username: impl Into<String>, password: impl Into<crate::Secret>) -> Self {
            self.with_connection(|b| b.auth(username, password))
        }
        /// A persistent session: what arrives while the client is away waits
        /// for it, and QoS 2 stays exactly once across reconnects.
        pub fn keep_session(self) -> Self {
            self.with_connection(|b| b.keep_session())
        }
        /// MQTT 3.1.1 (the default) or 5.
        pub fn protocol(self, p: crate::Protocol) -> Self {
            self.with_connection(|b| b.protocol(p))
        }
        /// TLS settings (CA file, client certificate) for `mqtts://` and `wss://` brokers.
        pub fn tls(self, tls: crate::TlsOptions) -> Self {
            self.with_connection(|b| b.tls(tls))
        }
        /// How reconnects are paced and when they give up (Jet's
        /// `autoReconnect` with a retry strategy); by default forever,
        /// from 0.5 s doubling to 30 s.
        pub fn reconnect(self, policy: crate::Backoff) -> Self {
            self.with_connection(|b| b.reconnect(policy))
        }
    };
}
pub(crate) use connection_setters;

impl ConnectOptions {
    /// A builder that starts from these options.
    pub fn into_builder(self) -> ConnectOptionsBuilder {
        ConnectOptionsBuilder {
            opts: self,
            errors: Vec::new(),
        }
    }
}

impl ConnectOptionsBuilder {
    /// Adds a broker; call again for failover brokers.
    pub fn broker(mut self, url: &str) -> Self {
        match url.parse() {
            Ok(b) => self.opts.brokers.push(b),
            Err(e) => self.errors.push(OptionsError::Url(e)),
        }
        self
    }
    /// The client identifier; generated when not given.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.opts.client_id = Some(id.into());
        self
    }
    /// User name and password (never printed).
    pub fn auth(mut self, username: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.opts.username = Some(username.into());
        self.opts.password = Some(password.into());
        self
    }
    /// See [`ConnectOptions::tls`].
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.opts.tls = tls;
        self
    }
    /// See [`ConnectOptions::protocol`].
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.opts.protocol_or_default(Some(p));
        self
    }
    /// See [`ConnectOptions::keep_alive`].
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.opts.keep_alive = d;
        self
    }
    /// See [`ConnectOptions::connect_timeout`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.opts.connect_timeout = d;
        self
    }
    /// A persistent session (`clean_session = false`), as Jet's `keepSession()`.
    pub fn keep_session(mut self) -> Self {
        self.opts.clean_session = false;
        self
    }
    /// See [`ConnectOptions::clean_session`].
    pub fn clean_session(mut self, clean: bool) -> Self {
        self.opts.clean_session = clean;
        self
    }
    /// See [`ConnectOptions::session_expiry_interval`].
    pub fn session_expiry_interval(mut self, secs: u32) -> Self {
        self.opts.session_expiry_interval = Some(secs);
        self
    }
    /// See [`ConnectOptions::last_will`].
    pub fn last_will(mut self, will: LastWill) -> Self {
        self.opts.last_will = Some(will);
        self
    }
    /// See [`ConnectOptions::max_inflight`].
    pub fn max_inflight(mut self, n: u16) -> Self {
        self.opts.max_inflight = n;
        self
    }
    /// See [`ConnectOptions::max_packet_size`].
    pub fn max_packet_size(mut self, n: u32) -> Self {
        self.opts.max_packet_size = n;
        self
    }
    /// See [`ConnectOptions::receive_maximum`].
    pub fn receive_maximum(mut self, n: u16) -> Self {
        self.opts.receive_maximum = n;
        self
    }
    /// See [`ConnectOptions::reconnect`].
    pub fn reconnect(mut self, policy: Backoff) -> Self {
        self.opts.reconnect = policy;
        self
    }
    /// Publish above the broker's maximum QoS at that maximum instead of failing.
    pub fn downgrade_qos(mut self, yes: bool) -> Self {
        self.opts.downgrade_qos = yes;
        self
    }
    /// The options, or the first problem found.
    pub fn build(mut self) -> Result<ConnectOptions, OptionsError> {
        if !self.errors.is_empty() {
            return Err(self.errors.remove(0));
        }
        self.opts.validate()?;
        Ok(self.opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_default_ports() {
        for (url, t, host, port) in [
            ("mqtt://h", Transport::Tcp, "h", 1883),
            ("tcp://h:1", Transport::Tcp, "h", 1),
            ("mqtts://h", Transport::Tls, "h", 8883),
            ("ssl://h:9", Transport::Tls, "h", 9),
            ("ws://h", Transport::Ws, "h", 80),
            ("wss://h", Transport::Wss, "h", 443),
            ("h:7", Transport::Tcp, "h", 7),
            ("localhost", Transport::Tcp, "localhost", 1883),
            ("mqtt://[::1]:5", Transport::Tcp, "::1", 5),
            ("MQTT://h/", Transport::Tcp, "h", 1883),
        ] {
            let b: BrokerUrl = url.parse().unwrap();
            assert_eq!(
                (b.transport, b.host.as_str(), b.port),
                (t, host, port),
                "{url}"
            );
        }
        let ws: BrokerUrl = "ws://h:8080/ws".parse().unwrap();
        assert_eq!(ws.path, "/ws");
        assert_eq!(ws.to_string(), "ws://h:8080/ws");
    }

    #[test]
    fn bad_urls_name_the_url() {
        for bad in [
            "http://h",
            "mqtt://h:x",
            "mqtt://h:0",
            "mqtt://",
            "mqtt://h/topic",
            "mqtt://u:p@h",
        ] {
            let e = bad.parse::<BrokerUrl>().unwrap_err();
            // Named, with any password redacted.
            let shown = crate::secret::redact(bad);
            assert_eq!(e.url, shown);
            assert!(e.to_string().contains(&*shown), "{e}");
            assert!(!e.to_string().contains("u:p@"), "{e}");
        }
        // The password in a URL must not be echoed back either.
        let e = "mqtt://u:p@h".parse::<BrokerUrl>().unwrap_err();
        assert!(e.reason.contains("credentials"));
    }

    #[test]
    fn validation() {
        let mut o = ConnectOptions::new("mqtt://h").unwrap();
        assert_eq!(o.validate(), Ok(()));
        o.clean_session = false;
        assert_eq!(
            o.validate(),
            Err(OptionsError::PersistentSessionNeedsClientId)
        );
        o.client_id = Some("c".into());
        assert_eq!(o.validate(), Ok(()));
        assert_eq!(o.effective_session_expiry(), None);
        o.protocol = Protocol::V5;
        assert_eq!(o.effective_session_expiry(), Some(u32::MAX));
        o.session_expiry_interval = Some(10);
        assert_eq!(o.effective_session_expiry(), Some(10));
        o.protocol = Protocol::V311;
        assert_eq!(o.validate(), Err(OptionsError::SessionExpiryNeedsV5));
        let e = ConnectOptions::builder()
            .broker("mqtt://h")
            .last_will(LastWill {
                topic: "a/+".into(),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
            })
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("\"a/+\""), "{e}");
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let p = Backoff {
            initial_interval: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_millis(500),
            max_attempts: 0,
            jitter: 0.0,
        };
        let d: Vec<u128> = (1..=5).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
        let j = Backoff { jitter: 0.5, ..p };
        for _ in 0..100 {
            let ms = j.delay(1).as_millis();
            assert!((50..=150).contains(&ms), "{ms}");
        }
    }

    #[test]
    fn retry_strategies_are_backoffs() {
        let ms = Duration::from_millis;
        let f = Backoff::fixed(ms(10), 2);
        assert_eq!(
            (f.retry_delay(1), f.retry_delay(2), f.retry_delay(3)),
            (Some(ms(10)), Some(ms(10)), None)
        );
        let e = Backoff::exponential(ms(10), 2.0, ms(25), 5);
        let d: Vec<_> = (1..=6).map(|n| e.retry_delay(n)).collect();
        let capped = Some(ms(25));
        assert_eq!(
            d,
            [Some(ms(10)), Some(ms(20)), capped, capped, capped, None]
        );
        assert_eq!(
            Backoff::indefinitely(ms(5)).retry_delay(1_000_000),
            Some(ms(5))
        );
    }

    #[test]
    fn password_never_in_debug() {
        let o = ConnectOptions::builder()
            .broker("mqtt://h")
            .auth("user", "s3cr3t-pw")
            .build()
            .unwrap();
        assert!(!format!("{o:?}").contains("s3cr3t-pw"));
    }
}
