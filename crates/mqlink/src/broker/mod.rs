//! An MQTT broker inside the process, for first runs, local development
//! and tests (`broker = "embedded"` in a pipeline file, or `mqlink broker`).
//!
//! It speaks MQTT 3.1.1 and 5 over TCP with the library's own codec. See
//! docs/embedded-broker.md for what it implements and its limits.
//!
//! # Layout
//! - [`mod@self`]: [`EmbeddedBroker`] (the accept loop, the connection cap) and [`BrokerConfig`].
//! - `connection`: one client connection: CONNECT, packets, deliveries, keep-alive.
//! - `session`: what a client id keeps across connections: queue, in-flight deliveries, QoS 2 state.
//! - `router`: sessions by client id, subscriptions and retained messages; routing a publish.
//! - `tree`: the subscription and retained-message topic trees.
//! - `wire`: CONNECT and CONNACK as a broker reads and writes them.
//! - `auth`: password files (mosquitto_passwd's format).
//!
//! # Flow control and limits
//! A publish is acknowledged once it is queued for every online matching
//! session. While a subscriber's queue (`max_queued_messages`) is full, the
//! publisher gets no acknowledgement and is not read from (back-pressure:
//! nothing is lost because a subscriber is slow). A subscriber that has
//! taken nothing from its full queue for `slow_subscriber_timeout` (it
//! stopped reading, or stopped acknowledging) is disconnected, so one bad
//! client cannot stall the others; its persistent session then queues up
//! to the same limit and drops beyond it, as Mosquitto's
//! `max_queued_messages` does. A connection buffers at most one packet of
//! `max_packet_size` plus what it sends out (256 KiB of deliveries at a time).

mod auth;
mod connection;
mod router;
mod session;
mod tree;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Messages a session queues beyond those in flight [default: 10,000].
    pub max_queued_messages: usize,
    /// Deliveries in flight to one MQTT 3.1.1 client (MQTT 5 clients:
    /// their receive maximum, up to this) [default: 1000].
    pub max_inflight_messages: usize,
    /// Receive Maximum advertised to MQTT 5 clients: QoS 2 messages a
    /// client may have sent and not released (PUBREL); one more is
    /// DISCONNECT 0x93 [default: 1000].
    pub receive_maximum: u16,
    /// A connection must send CONNECT within this [default: 10 s].
    pub connect_timeout: Duration,
    /// Whether a client may ask for keep-alive 0 (no timeout). If not,
    /// MQTT 5 clients are given `server_keep_alive` and MQTT 3.1.1 clients
    /// are refused (CONNACK 0x02), as Mosquitto does [default: false].
    pub allow_zero_keep_alive: bool,
    /// Keep-alive (seconds) given to MQTT 5 clients that ask for 0 [default: 60].
    pub server_keep_alive: u16,
    /// Topic aliases a client may set (client → broker) [default: 64].
    pub topic_alias_maximum: u16,
    /// A subscriber that takes nothing from its full queue for this long
    /// is disconnected [default: 60 s].
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
            max_queued_messages: 10_000,
            max_inflight_messages: 1000,
            receive_maximum: 1000,
            connect_timeout: Duration::from_secs(10),
            allow_zero_keep_alive: false,
            server_keep_alive: 60,
            topic_alias_maximum: 64,
            slow_subscriber_timeout: Duration::from_secs(60),
            allow_anonymous: None,
            passwords: None,
        }
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

/// A running embedded broker; stops (with every connection) when dropped.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
    router: Arc<Router>,
}

impl EmbeddedBroker {
    /// Listens on `listen` (`127.0.0.1:0` picks a free port) with the
    /// default [`BrokerConfig`].
    pub async fn start(listen: &str) -> io::Result<EmbeddedBroker> {
        EmbeddedBroker::start_with(listen, BrokerConfig::default()).await
    }

    /// Listens on `listen` with `config`. A listener that is not on a
    /// loopback address and has no password file is refused unless
    /// `allow_anonymous` is `Some(true)` (then a warning is logged).
    pub async fn start_with(listen: &str, config: BrokerConfig) -> io::Result<EmbeddedBroker> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && config.passwords.is_none() {
            if config.allow_anonymous != Some(true) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("the embedded broker would listen on {addr}, beyond this machine, without authentication: give it a password file, listen on 127.0.0.1, or allow anonymous clients explicitly"),
                ));
            }
            tracing::warn!(%addr, "Embedded broker: listening beyond this machine WITHOUT AUTHENTICATION (allow_anonymous): anyone who can reach it can read and publish everything.");
        }
        let router = Arc::new(Router::new(config));
        let task = tokio::spawn(accept_loop(listener, router.clone()));
        Ok(EmbeddedBroker { addr, task, router })
    }

    /// The address it listens on (the port chosen for `…:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages the broker accepted (acknowledged to their publishers) and
    /// has not delivered yet: queued for a session, or sent and not
    /// acknowledged by the subscriber. A pipeline drains this to zero
    /// before its sources stop, so nothing it was handed is lost.
    pub fn undelivered(&self) -> usize {
        self.router.sessions().iter().map(|s| s.undelivered()).sum()
    }

    /// Sessions, subscriptions and retained messages the broker holds.
    pub fn stats(&self) -> BrokerStats {
        let (sessions, subscriptions, retained) = self.router.counts();
        BrokerStats {
            sessions,
            subscriptions,
            retained,
        }
    }
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
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections up to the cap; on accept errors (the file
/// descriptor limit) backs off instead of spinning.
async fn accept_loop(listener: TcpListener, router: Arc<Router>) {
    let permits = Arc::new(Semaphore::new(
        router.config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let next_id = AtomicU64::new(0);
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
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection::serve(sock, router, id).await {
                tracing::debug!(%peer, error = %e, "Embedded broker: connection ended.");
            }
        });
    }
}

#[cfg(test)]
mod tests;
