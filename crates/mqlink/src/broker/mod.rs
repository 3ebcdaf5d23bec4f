//! An MQTT broker inside the process, for first runs, local development
//! and tests (`broker = "embedded"` in a pipeline file, or `mqlink broker`).
//!
//! It speaks MQTT 3.1.1 and 5 over TCP with the library's own codec. See
//! docs/design/embedded-broker.md for what it implements and its limits.
//!
//! # Layout
//! - [`mod@self`]: [`EmbeddedBroker`] (the accept loop, the connection cap) and [`BrokerConfig`].
//! - `connection`: one client connection: CONNECT, packets, deliveries, keep-alive.
//! - `session`: what a client id keeps across connections: queue, in-flight deliveries, QoS 2 state.
//! - `router`: sessions by client id, subscriptions and retained messages; routing a publish.
//! - `tree`: the subscription and retained-message topic trees.
//! - `wire`: CONNECT and CONNACK through the codec (its decoder is the only one), the will as kept.
//! - `auth`: password files (mosquitto_passwd's format).
//! - `budget`: the byte budget for incomplete packets across connections.
//! - `shown`: client strings escaped and truncated for log lines.
//!
//! # Flow control and limits
//! A publish is acknowledged once it is queued for every online matching
//! session, or dropped for it. A session's queue holds `max_queued_messages`
//! and `max_queued_bytes`; beyond them QoS 0 is dropped for that session
//! (counted) and a QoS 1/2 message that does not fit disconnects its
//! subscriber, so one slow client never holds up the others (as
//! Mosquitto). Subscribers named by `hold_publishers_for` (a pipeline's
//! own) make publishers wait instead — no acknowledgement, nothing read —
//! and are disconnected after `slow_subscriber_timeout` without progress.
//! A connection buffers what it sends out (256 KiB of deliveries at a
//! time) and at most one packet of `max_packet_size`, whose bytes beyond
//! 64 KiB are charged to `max_incomplete_bytes` across all connections.
//! Subscriptions of all sessions are counted against `max_subscription_bytes`.
//! Topic names and filters have at most 200 levels (the trees recurse per level).

mod auth;
mod budget;
mod connection;
mod router;
mod session;
mod shown;
#[cfg(feature = "tls")]
mod tls;
mod tree;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

pub use auth::{PasswordFileError, Passwords};
use router::Router;

/// How an [`EmbeddedBroker`] behaves; `Default` is what a pipeline gets.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Connections at once; more are closed at accept [default: 1024].
    pub max_connections: usize,
    /// Largest packet accepted and advertised in CONNACK [default: 16 MiB].
    pub max_packet_size: u32,
    /// Bytes of packets not yet fully received, across all connections
    /// (beyond 64 KiB each); a connection whose packet would take more is
    /// closed (MQTT 5: DISCONNECT 0x97) [default: 256 MiB].
    pub max_incomplete_bytes: usize,
    /// Subscriptions of all sessions, in bytes: each is counted as 512
    /// bytes and twice its filter; a new one beyond this is refused
    /// (SUBACK 0x97 on MQTT 5, 0x80 on 3.1.1) [default: 256 MiB].
    pub max_subscription_bytes: usize,
    /// Messages a session queues beyond those in flight [default: 10,000].
    pub max_queued_messages: usize,
    /// Bytes (topics and payloads) a session queues beyond those in
    /// flight; one message is always let into an empty queue [default: 64 MiB].
    pub max_queued_bytes: usize,
    /// Subscribers whose full queue holds their publishers back; every
    /// other one has QoS 0 dropped for it (counted) and is disconnected
    /// by a QoS 1/2 message that does not fit [default: none].
    pub hold_publishers_for: HoldPublishers,
    /// Deliveries in flight to one MQTT 3.1.1 client (MQTT 5 clients:
    /// their receive maximum, up to this) [default: 1000].
    pub max_inflight_messages: usize,
    /// Receive Maximum advertised to MQTT 5 clients: QoS 2 messages a
    /// client may have sent and not released (PUBREL); one more is
    /// DISCONNECT 0x93 [default: 1000].
    pub receive_maximum: u16,
    /// A connection must send CONNECT within this [default: 10 s].
    pub connect_timeout: Duration,
    /// Whether a client may ask for keep-alive 0 (no timeout), as Mosquitto
    /// 2.0 with its defaults allows. If not, MQTT 5 clients are given
    /// `server_keep_alive` and MQTT 3.1.1 clients are refused (CONNACK
    /// 0x02), as Mosquitto does with a `max_keepalive` [default: true].
    pub allow_zero_keep_alive: bool,
    /// Keep-alive (seconds) given to MQTT 5 clients that ask for 0 [default: 60].
    pub server_keep_alive: u16,
    /// Topic aliases a client may set (client → broker) [default: 64].
    pub topic_alias_maximum: u16,
    /// A subscriber that holds publishers back (`hold_publishers_for`) and
    /// takes nothing from its full queue for this long is disconnected [default: 60 s].
    pub slow_subscriber_timeout: Duration,
    /// Whether clients without a user name are let in [default: yes without
    /// a password file, no with one]. A non-loopback listener without a
    /// password file is refused unless this is `Some(true)`.
    pub allow_anonymous: Option<bool>,
    /// Users and passwords; `None`: no authentication.
    pub passwords: Option<Arc<Passwords>>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_connections: 1024,
            max_packet_size: 16 << 20,
            max_incomplete_bytes: 256 << 20,
            max_subscription_bytes: 256 << 20,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 << 20,
            hold_publishers_for: HoldPublishers::None,
            max_inflight_messages: 1000,
            receive_maximum: 1000,
            connect_timeout: Duration::from_secs(10),
            allow_zero_keep_alive: true,
            server_keep_alive: 60,
            topic_alias_maximum: 64,
            slow_subscriber_timeout: Duration::from_secs(60),
            allow_anonymous: None,
            passwords: None,
        }
    }
}

/// Which subscribers make publishers wait when their queue is full
/// (see [`BrokerConfig::hold_publishers_for`]).
#[derive(Clone, Default)]
pub enum HoldPublishers {
    /// None (as Mosquitto): one slow subscriber never holds anyone up.
    #[default]
    None,
    /// Every subscriber: nothing is dropped, a stalled subscriber stalls
    /// its publishers until `slow_subscriber_timeout`.
    All,
    /// Subscribers whose client id this accepts (a pipeline's own sources).
    Matching(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl HoldPublishers {
    fn holds(&self, client_id: &str) -> bool {
        match self {
            HoldPublishers::None => false,
            HoldPublishers::All => true,
            HoldPublishers::Matching(f) => f(client_id),
        }
    }
}

impl std::fmt::Debug for HoldPublishers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HoldPublishers::None => "None",
            HoldPublishers::All => "All",
            HoldPublishers::Matching(_) => "Matching(..)",
        })
    }
}

impl BrokerConfig {
    /// Whether a CONNECT's credentials are let in.
    fn authenticate(&self, user: Option<&str>, password: Option<&[u8]>) -> bool {
        match (user, &self.passwords) {
            (None, p) => self.allow_anonymous.unwrap_or(p.is_none()),
            (Some(_), None) => true,
            (Some(u), Some(p)) => p.check(u, password.unwrap_or_default()),
        }
    }
}

/// One address the broker listens on, in plain TCP or TLS.
#[derive(Clone, Debug)]
pub struct Listener {
    /// `HOST:PORT`; port 0 picks a free one.
    pub address: String,
    /// TLS certificate and key files; `None`: plain TCP.
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// A plain TCP listener.
    pub fn tcp(address: impl Into<String>) -> Listener {
        Listener {
            address: address.into(),
            tls: None,
        }
    }
}

/// A TLS listener's files, as Mosquitto's listener keys name them.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    /// PEM certificate (chain) the broker presents.
    pub certfile: PathBuf,
    /// PEM private key of `certfile`.
    pub keyfile: PathBuf,
    /// PEM CA certificates client certificates are checked against.
    pub cafile: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `cafile`.
    pub require_certificate: bool,
}

/// A running embedded broker; stops (with every connection) when dropped.
pub struct EmbeddedBroker {
    addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    router: Arc<Router>,
}

impl EmbeddedBroker {
    /// Listens on `listen` (`127.0.0.1:0` picks a free port) with the
    /// default [`BrokerConfig`].
    pub async fn start(listen: &str) -> io::Result<EmbeddedBroker> {
        EmbeddedBroker::start_with(listen, BrokerConfig::default()).await
    }

    /// Listens on `listen` (plain TCP) with `config`. See [`EmbeddedBroker::start_listeners`].
    pub async fn start_with(listen: &str, config: BrokerConfig) -> io::Result<EmbeddedBroker> {
        EmbeddedBroker::start_listeners(&[Listener::tcp(listen)], config).await
    }

    /// Listens on every listener with `config`; the connection cap counts
    /// all of them. A listener that is not on a loopback address and has
    /// neither a password file nor required client certificates is refused
    /// unless `allow_anonymous` is `Some(true)` (then a warning is logged).
    /// A TLS listener's files are read here: errors name the key and file.
    pub async fn start_listeners(
        listeners: &[Listener],
        config: BrokerConfig,
    ) -> io::Result<EmbeddedBroker> {
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the embedded broker needs a listener",
            ));
        }
        let router = Arc::new(Router::new(config));
        let permits = Arc::new(Semaphore::new(
            router.config.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let mut broker = EmbeddedBroker {
            addrs: Vec::new(),
            tasks: Vec::new(),
            router: router.clone(),
        };
        for l in listeners {
            let acceptor = match &l.tls {
                None => None,
                #[cfg(feature = "tls")]
                Some(files) => Some(tls::acceptor(files)?),
                #[cfg(not(feature = "tls"))]
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "this mqlink was built without TLS (cargo feature `tls`)",
                    ))
                }
            };
            let listener = TcpListener::bind(&l.address).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.address))
            })?;
            let addr = listener.local_addr()?;
            let certified = l.tls.as_ref().is_some_and(|t| t.require_certificate);
            if !addr.ip().is_loopback() && router.config.passwords.is_none() && !certified {
                if router.config.allow_anonymous != Some(true) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("the embedded broker would listen on {addr}, beyond this machine, without authentication: give it a password file, listen on 127.0.0.1, or allow anonymous clients explicitly"),
                    ));
                }
                tracing::warn!(%addr, "Embedded broker: listening beyond this machine WITHOUT AUTHENTICATION (allow_anonymous): anyone who can reach it can read and publish everything.");
            }
            broker.addrs.push(addr);
            broker.tasks.push(tokio::spawn(accept_loop(
                listener,
                acceptor,
                router.clone(),
                permits.clone(),
            )));
        }
        Ok(broker)
    }

    /// The first listener's address (the port chosen for `…:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listener's address, in the order they were given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Messages the broker accepted (acknowledged to their publishers) and
    /// has not delivered yet: queued for a session, or sent and not
    /// acknowledged by the subscriber. A pipeline drains this to zero
    /// before its sources stop, so nothing it was handed is lost.
    pub fn undelivered(&self) -> usize {
        self.monitor().undelivered()
    }

    /// Sessions, subscriptions and retained messages the broker holds.
    pub fn stats(&self) -> BrokerStats {
        self.monitor().stats()
    }

    /// A view of the broker's state that health pages keep (cloneable;
    /// it does not keep the broker running).
    pub fn monitor(&self) -> BrokerMonitor {
        BrokerMonitor(self.router.clone())
    }
}

/// What a running broker holds, read without stopping it (see
/// [`EmbeddedBroker::monitor`]).
#[derive(Clone)]
pub struct BrokerMonitor(Arc<Router>);

impl std::fmt::Debug for BrokerMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BrokerMonitor").field(&self.stats()).finish()
    }
}

impl BrokerMonitor {
    /// See [`EmbeddedBroker::undelivered`].
    pub fn undelivered(&self) -> usize {
        self.0.sessions().iter().map(|s| s.undelivered()).sum()
    }

    /// See [`EmbeddedBroker::stats`].
    pub fn stats(&self) -> BrokerStats {
        let (sessions, subscriptions, retained, subscription_bytes) = self.0.counts();
        let counters = &self.0.counters;
        BrokerStats {
            sessions,
            subscriptions,
            retained,
            subscription_bytes,
            incomplete_bytes: self.0.incomplete.used(),
            dropped_messages: counters.dropped.load(Ordering::Relaxed),
            slow_disconnects: counters.slow_disconnects.load(Ordering::Relaxed),
        }
    }

    /// Online sessions that hold publishers back and whose queue is full
    /// (`max_queued_messages`, `max_queued_bytes`): their publishers wait.
    /// Each with how long it has taken nothing.
    pub fn full_queues(&self) -> Vec<FullQueue> {
        let now = std::time::Instant::now();
        let mut full: Vec<FullQueue> = self
            .0
            .sessions()
            .iter()
            .filter_map(|s| {
                let st = s.lock();
                (st.owner.is_some() && !st.closed && st.limits.hold && st.is_full()).then(|| {
                    FullQueue {
                        client_id: s.client_id.clone(),
                        queued: st.queued(),
                        idle: now.duration_since(st.last_taken),
                    }
                })
            })
            .collect();
        full.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        full
    }
}

/// An online subscriber whose queue is full (see [`BrokerMonitor::full_queues`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullQueue {
    /// The subscriber's client id.
    pub client_id: String,
    /// Messages queued for it (the limit).
    pub queued: usize,
    /// How long since it last took a message from its queue.
    pub idle: Duration,
}

/// What [`EmbeddedBroker::stats`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerStats {
    /// Sessions, connected or kept.
    pub sessions: usize,
    /// Subscriptions of all sessions.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// What the subscriptions are counted as against `max_subscription_bytes`.
    pub subscription_bytes: usize,
    /// Bytes of incomplete packets charged to `max_incomplete_bytes` now.
    pub incomplete_bytes: usize,
    /// Messages not queued for a subscriber because its queue was full, ever.
    pub dropped_messages: u64,
    /// Subscribers disconnected because a QoS 1/2 message did not fit their queue, ever.
    pub slow_disconnects: u64,
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(feature = "tls")]
type Acceptor = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
type Acceptor = std::convert::Infallible;

/// Accepts connections up to the cap; on accept errors (the file
/// descriptor limit) backs off instead of spinning.
async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<Acceptor>,
    router: Arc<Router>,
    permits: Arc<Semaphore>,
) {
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (sock, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                tracing::warn!(error = %e, backoff = ?backoff, "Embedded broker: accept failed; waiting before the next.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = router.config.max_connections, "Embedded broker: connection limit reached; closed.");
            continue;
        };
        let _ = sock.set_nodelay(true);
        let id = router.key();
        let router = router.clone();
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let _permit = permit;
            let served = match acceptor {
                None => connection::serve(sock, router, id).await,
                #[cfg(feature = "tls")]
                Some(acceptor) => {
                    // The handshake counts against the CONNECT timeout.
                    match tokio::time::timeout(router.config.connect_timeout, acceptor.accept(sock))
                        .await
                    {
                        Ok(Ok(tls)) => connection::serve(tls, router, id).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no TLS handshake within the connect timeout",
                        )),
                    }
                }
                #[cfg(not(feature = "tls"))]
                Some(never) => match never {},
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "Embedded broker: connection ended.");
            }
        });
    }
}

#[cfg(test)]
mod tests;
