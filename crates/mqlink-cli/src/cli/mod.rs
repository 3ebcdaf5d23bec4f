//! Command-line parsing shared by `pub` and `sub`: the connection flags
//! mosquitto_pub and mosquitto_sub users already type.

pub mod format;
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

/// An outcome with mosquitto's exit code (27 for `-W`, the CONNACK code
/// for a refused connection); `message` (if any) goes to stderr as it is.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: Option<String>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.code)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}
impl std::error::Error for Exit {}

/// mosquitto's exit code for `-W` running out.
pub const EXIT_TIMED_OUT: u8 = 27;

/// The CONNACK code a refusal came with, as mosquitto_pub/sub exit with it.
pub fn connack_code(refusal: &mqlink::Refusal, protocol: Protocol) -> u8 {
    use mqlink::Refusal as R;
    let v5 = protocol == Protocol::V5;
    match (refusal, v5) {
        (R::UnsupportedProtocol, false) => 1,
        (R::ClientIdRejected, false) => 2,
        (R::ServerUnavailable, false) => 3,
        (R::BadCredentials, false) => 4,
        (R::NotAuthorized, false) => 5,
        (R::UnsupportedProtocol, true) => 0x84,
        (R::ClientIdRejected, true) => 0x85,
        (R::BadCredentials, true) => 0x86,
        (R::NotAuthorized, true) => 0x87,
        (R::ServerUnavailable, true) => 0x88,
        (R::Banned, true) => 0x8a,
        (R::QuotaExceeded, true) => 0x97,
        (R::Other(c), _) => *c,
        (_, false) => 1,
    }
}

/// Maps a failed start to mosquitto's exit code: a refused CONNECT exits
/// with its CONNACK code, anything else stays an error (exit 1).
pub fn start_error(e: mqlink::Error, protocol: Protocol, quiet: bool) -> anyhow::Error {
    if let mqlink::Error::Connect(mqlink::ConnectError::Refused { refusal, .. }) = &e {
        return anyhow::Error::new(Exit {
            code: connack_code(refusal, protocol),
            message: (!quiet).then(|| format!("Connection error: {e}")),
        });
    }
    quiet_error(anyhow::Error::new(e), quiet)
}

/// With `--quiet`, an error keeps its exit code but prints nothing.
pub fn quiet_error(e: anyhow::Error, quiet: bool) -> anyhow::Error {
    if !quiet || e.downcast_ref::<Usage>().is_some() {
        return e;
    }
    if let Some(x) = e.downcast_ref::<Exit>() {
        return anyhow::Error::new(Exit {
            code: x.code,
            message: None,
        });
    }
    anyhow::Error::new(Exit {
        code: 1,
        message: None,
    })
}

/// `-x`: seconds, or -1 / 4294967295 / ∞ for never, as mosquitto takes it.
fn parse_session_expiry(s: &str) -> Result<u32, String> {
    if s == "∞" {
        return Ok(u32::MAX);
    }
    match s.parse::<i64>() {
        Ok(-1) => Ok(u32::MAX),
        Ok(v) if (0..=u32::MAX as i64).contains(&v) => Ok(v as u32),
        _ => Err(format!(
            "{s:?} is not a session expiry from 0 to 4294967295 seconds, or -1 (never)"
        )),
    }
}

/// A `-L` URL taken apart: mosquitto's `mqtt(s)://[user[:pass]@]host[:port]/topic`.
struct UrlParts {
    broker: String,
    username: Option<String>,
    password: Option<String>,
    topic: Option<String>,
}

fn split_url(url: &str) -> UrlParts {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let is_ws =
        scheme.is_some_and(|s| s.eq_ignore_ascii_case("ws") || s.eq_ignore_ascii_case("wss"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (creds, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match creds {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
            None => (Some(c.to_owned()), None),
        },
        None => (None, None),
    };
    let prefix = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    // A WebSocket URL's path is the HTTP path; an MQTT URL's is a topic.
    let (broker, topic) = if is_ws {
        (
            format!(
                "{prefix}{host}{}",
                path.map(|p| format!("/{p}")).unwrap_or_default()
            ),
            None,
        )
    } else {
        (
            format!("{prefix}{host}"),
            path.filter(|p| !p.is_empty()).map(str::to_owned),
        )
    };
    UrlParts {
        broker,
        username,
        password,
        topic,
    }
}

/// CA certificates of a directory (`--capath`), gathered into one PEM file.
fn capath_bundle(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| usage(format!("--capath: cannot read {}: {e}", dir.display())))?;
    let mut pem = String::new();
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if text.contains("-----BEGIN CERTIFICATE-----") {
                pem.push_str(&text);
                pem.push('\n');
            }
        }
    }
    if pem.is_empty() {
        return Err(usage(format!(
            "--capath: no PEM certificates in {}",
            dir.display()
        )));
    }
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&pem, &mut hasher);
    let file = std::env::temp_dir().join(format!(
        "mqlink-capath-{:016x}.pem",
        std::hash::Hasher::finish(&hasher)
    ));
    std::fs::write(&file, pem)
        .map_err(|e| anyhow::anyhow!("--capath: cannot write {}: {e}", file.display()))?;
    Ok(file)
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
    #[arg(short = 'i', long = "id", conflicts_with = "id_prefix")]
    pub id: Option<String>,
    /// Client id: this prefix followed by the process id.
    #[arg(short = 'I', long = "id-prefix")]
    pub id_prefix: Option<String>,
    /// Persistent session: keep subscriptions and queued messages while away.
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// MQTT 5 session expiry interval in seconds; -1 or ∞ for never
    /// [default with -c: never]. Ignored with MQTT 3.1.1, as mosquitto does.
    #[arg(short = 'x', long = "session-expiry-interval", value_name = "SECONDS", value_parser = parse_session_expiry, allow_hyphen_values = true)]
    pub session_expiry: Option<u32>,
    /// MQTT version: 31, 311, 5, mqttv31, mqttv311 or mqttv5.
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
    #[arg(long = "tls", alias = "tls-use-os-certs")]
    pub tls: bool,
    /// A directory of CA certificates (PEM) to verify the broker with; enables TLS.
    #[arg(long = "capath")]
    pub capath: Option<PathBuf>,
    /// Local address to connect from (accepted for mosquitto compatibility;
    /// mqlink lets the system choose).
    #[arg(short = 'A', value_name = "ADDRESS")]
    pub bind_address: Option<String>,
    /// Disable Nagle's algorithm (mqlink always does).
    #[arg(long = "nodelay")]
    pub nodelay: bool,
    /// Connect through a Unix socket (not supported by mqlink).
    #[arg(long = "unix", value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Print no error messages (exit codes still tell what happened).
    #[arg(long = "quiet")]
    pub quiet: bool,
    /// MQTT 5 property as mosquitto takes it: `-D COMMAND NAME VALUE [VALUE]`
    /// (`publish …` for pub; `connect session-expiry-interval|receive-maximum|maximum-packet-size`).
    #[arg(short = 'D', long = "property", num_args = 3..=4, value_names = ["COMMAND", "NAME", "VALUE"], action = ArgAction::Append)]
    pub property: Vec<String>,
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
    /// Debug: the packets sent and received, on stdout as mosquitto prints
    /// them, and the library's debug log on stderr.
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// `-D` words, flattened by clap: each property is 3 words, a user property 4.
pub struct Property<'a> {
    pub command: &'a str,
    pub name: &'a str,
    pub value: &'a str,
    pub value2: Option<&'a str>,
}

pub fn properties(words: &[String]) -> anyhow::Result<Vec<Property<'_>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let name = words.get(i + 1).map(String::as_str).unwrap_or("");
        let value = words
            .get(i + 2)
            .ok_or_else(|| usage(format!("-D {} {name}: a value is missing", words[i])))?;
        let pair = name == "user-property";
        let value2 = if pair {
            Some(
                words
                    .get(i + 3)
                    .ok_or_else(|| usage(format!("-D {} {name}: a value is missing", words[i])))?
                    .as_str(),
            )
        } else {
            None
        };
        out.push(Property {
            command: &words[i],
            name,
            value,
            value2,
        });
        i += if pair { 4 } else { 3 };
    }
    Ok(out)
}

impl ConnArgs {
    /// Topics given in `-L` URLs (mosquitto's `mqtt://host/topic`).
    pub fn url_topics(&self) -> Vec<String> {
        self.url.iter().filter_map(|u| split_url(u).topic).collect()
    }

    /// Builds connection options; errors name the flag and value.
    pub fn options(&self, max_inflight: u16) -> anyhow::Result<ConnectOptions> {
        if self.unix.is_some() {
            return Err(usage(
                "--unix: connecting through a Unix socket is not supported by mqlink; use -h/-p",
            ));
        }
        if let Some(a) = &self.bind_address {
            tracing::warn!(address = %a, "-A is accepted but not applied: mqlink lets the system choose the local address.");
        }
        let cafile = match (&self.cafile, &self.capath) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(dir)) => Some(capath_bundle(dir)?),
            (None, None) => None,
        };
        let tls_wanted = self.tls || cafile.is_some() || self.cert.is_some() || self.insecure;
        let mut username = self.username.clone();
        let mut password = self.password.clone();
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
            let mut brokers = Vec::new();
            for u in &self.url {
                let parts = split_url(u);
                // Credentials in the URL, as mosquitto takes them; -u/-P win.
                if username.is_none() {
                    username = parts.username;
                }
                if password.is_none() {
                    password = parts.password;
                }
                let mut b = parts
                    .broker
                    .parse::<BrokerUrl>()
                    .map_err(|e| usage(format!("-L: {e}")))?;
                // mosquitto: mqtts:// trusts the system's CAs unless told otherwise.
                if b.transport == Transport::Tcp && tls_wanted {
                    b.transport = Transport::Tls;
                }
                brokers.push(b);
            }
            brokers
        };
        let mut session_expiry = self.session_expiry;
        let mut receive_maximum = None;
        let mut max_packet_size = self.max_packet_size;
        for p in properties(&self.property)? {
            let number = |v: &str| {
                v.parse::<u32>().map_err(|_| {
                    usage(format!(
                        "-D {} {}: {v:?} is not a number",
                        p.command, p.name
                    ))
                })
            };
            match (p.command, p.name) {
                ("publish", _) => {} // pub's
                ("connect", "session-expiry-interval") => session_expiry = Some(number(p.value)?),
                ("connect", "receive-maximum") => {
                    receive_maximum = Some(u16::try_from(number(p.value)?).map_err(|_| {
                        usage("-D connect receive-maximum: at most 65535")
                    })?)
                }
                ("connect", "maximum-packet-size") => max_packet_size = number(p.value)?,
                (c, n) => {
                    return Err(usage(format!(
                        "-D {c} {n}: not supported by mqlink (connect session-expiry-interval, receive-maximum, maximum-packet-size and publish properties are)"
                    )))
                }
            }
        }
        if self.protocol != Protocol::V5 {
            // mosquitto ignores -x with MQTT 3.1.1.
            session_expiry = None;
        }
        let client_id = match (&self.id, &self.id_prefix) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(prefix)) => Some(format!("{prefix}{}", std::process::id())),
            (None, None) => None,
        };
        let last_will = self.will_topic.as_ref().map(|topic| LastWill {
            topic: topic.clone(),
            payload: Bytes::from(self.will_payload.clone()),
            qos: self.will_qos,
            retain: self.will_retain,
        });
        let opts = ConnectOptions {
            brokers,
            client_id,
            username,
            password: password.map(Secret::new),
            tls: TlsOptions {
                ca_file: cafile,
                client_cert: self.cert.clone(),
                client_key: self.key.clone(),
                insecure: self.insecure,
                server_name: None,
                keys: mqlink::options::TlsKeys::CLI,
            },
            protocol: self.protocol,
            keep_alive: self.keepalive,
            connect_timeout: self.connect_timeout,
            clean_session: !self.persistent,
            session_expiry_interval: session_expiry,
            last_will,
            max_inflight,
            max_packet_size,
            reconnect: mqlink::Backoff {
                initial_interval: self.reconnect_interval,
                multiplier: self.reconnect_backoff,
                max_interval: self.reconnect_max_interval,
                max_attempts: self.reconnect_max_attempts,
                jitter: 0.2,
            },
            ..ConnectOptions::default()
        };
        let mut opts = opts;
        if let Some(r) = receive_maximum {
            opts.receive_maximum = r;
        }
        opts.validate().map_err(|e| {
            let flag = match e {
                mqlink::options::OptionsError::PersistentSessionNeedsClientId => "-c",
                mqlink::options::OptionsError::SessionExpiryNeedsV5 => "-x",
                mqlink::options::OptionsError::WillTopic(_) => "--will-topic",
                mqlink::options::OptionsError::MaxInflight(_) => "--max-inflight",
                mqlink::options::OptionsError::MaxPacketSize(_) => "--max-packet-size",
                mqlink::options::OptionsError::TlsPair(..) => "--cert/--key",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_mosquitto_takes_them() {
        let u = split_url("mqtt://bob:s3cret@h:1884/a/b/#");
        assert_eq!(u.broker, "mqtt://h:1884");
        assert_eq!(u.username.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.topic.as_deref(), Some("a/b/#"));
        let u = split_url("mqtts://h");
        assert_eq!(
            (u.broker.as_str(), u.username, u.topic),
            ("mqtts://h", None, None)
        );
        // A WebSocket path is the HTTP path, not a topic.
        let u = split_url("ws://h:8080/mqtt");
        assert_eq!((u.broker.as_str(), u.topic), ("ws://h:8080/mqtt", None));
    }

    #[test]
    fn session_expiry_takes_minus_one_and_infinity() {
        assert_eq!(parse_session_expiry("-1"), Ok(u32::MAX));
        assert_eq!(parse_session_expiry("∞"), Ok(u32::MAX));
        assert_eq!(parse_session_expiry("60"), Ok(60));
        assert!(parse_session_expiry("-2").is_err());
        assert!(parse_session_expiry("4294967296").is_err());
    }

    #[test]
    fn refusals_exit_with_their_connack_code() {
        use mqlink::Refusal as R;
        assert_eq!(connack_code(&R::NotAuthorized, Protocol::V311), 5);
        assert_eq!(connack_code(&R::BadCredentials, Protocol::V311), 4);
        assert_eq!(connack_code(&R::NotAuthorized, Protocol::V5), 135);
        assert_eq!(connack_code(&R::Other(0x9f), Protocol::V5), 0x9f);
    }
}
