//! Command-line parsing shared by `pub` and `sub`: the connection flags
//! mosquitto_pub and mosquitto_sub users already type.

pub mod output;
pub mod publish;
pub mod sub;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgAction, Args};
use mqlink::options::Transport;
use mqlink::{BrokerUrl, ConnectOptions, LastWill, Protocol, QoS, Secret, TlsOptions};

/// A usage error: exit code 2, with the message naming the value.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(msg.into()))
}

fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse()
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

/// Seconds, at most about 31 years: every timer stays representable.
fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=1e9).contains(v))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds from 0 to 1000000000"))
}

/// Keep-alive: 16 bits of seconds on the wire.
fn parse_keepalive(s: &str) -> Result<Duration, String> {
    s.parse::<u16>()
        .map(|v| Duration::from_secs(v.into()))
        .map_err(|_| format!("{s:?} is not a keep-alive from 0 to 65535 seconds"))
}

fn parse_multiplier(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (1.0..=100.0).contains(v))
        .ok_or_else(|| format!("{s:?} is not a factor from 1 to 100"))
}

/// Connection flags, as in mosquitto_pub/mosquitto_sub.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Broker host.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    pub host: String,
    /// Broker port [default: 1883, 8883 with TLS].
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Broker URL instead of -h/-p: mqtt://, mqtts://, ws://, wss://host[:port].
    /// Repeat for failover brokers, tried in turn.
    #[arg(short = 'L', long = "url", value_name = "URL")]
    pub url: Vec<String>,
    /// Client id [default: mqlink-<random>]; required with -c.
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// Persistent session: keep subscriptions and queued messages while away.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// MQTT 5 session expiry interval in seconds [default with -c: never].
    #[arg(short = 'x', long = "session-expiry-interval", value_name = "SECONDS")]
    pub session_expiry: Option<u32>,
    /// MQTT version: 311, 5, mqttv311 or mqttv5.
    #[arg(short = 'V', long = "protocol-version", value_parser = parse_protocol, default_value = "311")]
    pub protocol: Protocol,
    /// User name.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password (never printed). Also read from MQLINK_PASSWORD.
    #[arg(
        short = 'P',
        long = "pw",
        env = "MQLINK_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// CA certificates (PEM) to verify the broker with; enables TLS.
    #[arg(long = "cafile")]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; enables TLS.
    #[arg(long = "cert")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "key")]
    pub key: Option<PathBuf>,
    /// Do not verify the broker's certificate or host name (tests only).
    #[arg(long = "insecure")]
    pub insecure: bool,
    /// Use TLS with the system's CA certificates.
    #[arg(long = "tls")]
    pub tls: bool,
    /// Keep-alive interval in seconds.
    #[arg(short = 'k', long = "keepalive", default_value = "60", value_parser = parse_keepalive)]
    pub keepalive: Duration,
    /// Seconds allowed for connecting (TCP, TLS, CONNACK).
    #[arg(long = "connect-timeout", default_value = "10", value_parser = parse_secs)]
    pub connect_timeout: Duration,
    /// Largest MQTT packet sent or accepted, in bytes.
    #[arg(long = "max-packet-size", default_value = "268435460")]
    pub max_packet_size: u32,
    /// Last will topic.
    #[arg(long = "will-topic")]
    pub will_topic: Option<String>,
    /// Last will payload.
    #[arg(long = "will-payload", default_value = "")]
    pub will_payload: String,
    /// Last will QoS.
    #[arg(long = "will-qos", value_parser = parse_qos, default_value = "0")]
    pub will_qos: QoS,
    /// Retain the last will.
    #[arg(long = "will-retain")]
    pub will_retain: bool,
    /// First reconnect delay in seconds.
    #[arg(long = "reconnect-interval", default_value = "0.5", value_parser = parse_secs)]
    pub reconnect_interval: Duration,
    /// Factor by which the reconnect delay grows.
    #[arg(long = "reconnect-backoff", default_value = "2.0", value_parser = parse_multiplier)]
    pub reconnect_backoff: f64,
    /// Longest reconnect delay in seconds.
    #[arg(long = "reconnect-max-interval", default_value = "30", value_parser = parse_secs)]
    pub reconnect_max_interval: Duration,
    /// Reconnect attempts in a row before giving up (0 = forever).
    #[arg(long = "reconnect-max-attempts", default_value = "0")]
    pub reconnect_max_attempts: u32,
    /// Debug logging on stderr.
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

impl ConnArgs {
    /// Builds connection options; errors name the flag and value.
    pub fn options(&self, max_inflight: u16) -> anyhow::Result<ConnectOptions> {
        let tls_wanted = self.tls || self.cafile.is_some() || self.cert.is_some() || self.insecure;
        let brokers: Vec<BrokerUrl> = if self.url.is_empty() {
            let transport = if tls_wanted {
                Transport::Tls
            } else {
                Transport::Tcp
            };
            vec![BrokerUrl {
                transport,
                host: self.host.clone(),
                port: self.port.unwrap_or(transport.default_port()),
                path: "/mqtt".into(),
            }]
        } else {
            self.url
                .iter()
                .map(|u| {
                    u.parse::<BrokerUrl>()
                        .map_err(|e| usage(format!("-L: {e}")))
                })
                .collect::<Result<_, _>>()?
        };
        let last_will = self.will_topic.as_ref().map(|topic| LastWill {
            topic: topic.clone(),
            payload: Bytes::from(self.will_payload.clone()),
            qos: self.will_qos,
            retain: self.will_retain,
        });
        let opts = ConnectOptions {
            brokers,
            client_id: self.id.clone(),
            username: self.username.clone(),
            password: self.password.clone().map(Secret::new),
            tls: TlsOptions {
                ca_file: self.cafile.clone(),
                client_cert: self.cert.clone(),
                client_key: self.key.clone(),
                insecure: self.insecure,
                server_name: None,
            },
            protocol: self.protocol,
            keep_alive: self.keepalive,
            connect_timeout: self.connect_timeout,
            clean_session: !self.persistent,
            session_expiry_interval: self.session_expiry,
            last_will,
            max_inflight,
            max_packet_size: self.max_packet_size,
            reconnect: mqlink::ReconnectPolicy {
                initial_interval: self.reconnect_interval,
                multiplier: self.reconnect_backoff,
                max_interval: self.reconnect_max_interval,
                max_attempts: self.reconnect_max_attempts,
                jitter: 0.2,
            },
            ..ConnectOptions::default()
        };
        opts.validate().map_err(|e| {
            let flag = match e {
                mqlink::options::OptionsError::PersistentSessionNeedsClientId => "-c",
                mqlink::options::OptionsError::SessionExpiryNeedsV5 => "-x",
                mqlink::options::OptionsError::WillTopic(_) => "--will-topic",
                mqlink::options::OptionsError::MaxInflight(_) => "--max-inflight",
                mqlink::options::OptionsError::MaxPacketSize(_) => "--max-packet-size",
                mqlink::options::OptionsError::TlsPair(_) => "--cert/--key",
                _ => "options",
            };
            let hint = if flag == "-c" {
                " (give one with -i)"
            } else {
                ""
            };
            usage(format!("{flag}: {e}{hint}"))
        })?;
        Ok(opts)
    }
}
