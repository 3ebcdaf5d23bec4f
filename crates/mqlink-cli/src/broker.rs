//! `mqlink broker`: the embedded broker on its own, for local development
//! and tests, with mosquitto's flags and a config file in mosquitto.conf's
//! syntax (a subset: the keys [`parse_config`] names).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use mqlink::broker::{BrokerConfig, EmbeddedBroker, Listener, ListenerTls, Passwords};

#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// Port to listen on, on 127.0.0.1 [default: 1883]. A config file's
    /// `listener` chooses another address.
    #[arg(short, long)]
    pub port: Option<u16>,
    /// Config file: `listener PORT [ADDRESS]` (several allowed; `certfile`,
    /// `keyfile`, `cafile`, `require_certificate` after one make it TLS),
    /// `allow_anonymous true|false`,
    /// `password_file PATH` (mosquitto_passwd's format), `max_connections N`,
    /// `max_queued_messages N`, `max_queued_bytes BYTES`, `max_packet_size BYTES`, `max_inflight_messages N`,
    /// `allow_zero_keepalive true|false`,
    /// one a line, `#` comments.
    #[arg(short, long, value_name = "CONFIG")]
    pub config: Option<PathBuf>,
    /// Log every connection and disconnection.
    #[arg(short, long)]
    pub verbose: bool,
}

/// What a config file sets.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// `listener` lines: port, address (all interfaces when none is given,
    /// as Mosquitto) and the TLS keys that followed it.
    pub listeners: Vec<FileListener>,
    pub broker: BrokerConfig,
}

#[derive(Debug, Default, PartialEq)]
pub struct FileListener {
    pub port: u16,
    pub address: Option<String>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub require_certificate: bool,
}

impl FileListener {
    fn listener(&self, line: usize) -> anyhow::Result<Listener> {
        let address = format!(
            "{}:{}",
            self.address.as_deref().unwrap_or("0.0.0.0"),
            self.port
        );
        let tls = match (&self.certfile, &self.keyfile) {
            (Some(certfile), Some(keyfile)) => Some(ListenerTls {
                certfile: certfile.clone(),
                keyfile: keyfile.clone(),
                cafile: self.cafile.clone(),
                require_certificate: self.require_certificate,
            }),
            (None, None) if self.cafile.is_none() && !self.require_certificate => None,
            _ => anyhow::bail!(
                "line {line}: listener {}: a TLS listener needs both certfile and keyfile",
                self.port
            ),
        };
        Ok(Listener { address, tls })
    }
}

/// The listener the TLS keys on line `n` belong to: the last one declared.
fn current<'a>(c: &'a mut FileConfig, n: usize, key: &str) -> anyhow::Result<&'a mut FileListener> {
    c.listeners.last_mut().with_context(|| {
        format!("line {n}: {key} belongs to a listener: put it after the `listener` line it is for")
    })
}

/// Parses a config file's text; errors name the line and the key.
pub fn parse_config(text: &str, dir: &Path) -> anyhow::Result<FileConfig> {
    let mut c = FileConfig::default();
    // Where each listener was declared, for its errors.
    let mut declared = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let one = || -> anyhow::Result<&str> {
            match args[..] {
                [v] => Ok(v),
                _ => anyhow::bail!("line {n}: {key} takes one value"),
            }
        };
        let number = |v: &str| -> anyhow::Result<usize> {
            v.parse()
                .with_context(|| format!("line {n}: {key}: {v:?} is not a number"))
        };
        let boolean = |v: &str| -> anyhow::Result<bool> {
            match v {
                "true" => Ok(true),
                "false" => Ok(false),
                v => anyhow::bail!("line {n}: {key}: {v:?} is not true or false"),
            }
        };

        match key {
            "listener" => {
                let (port, addr) = match args[..] {
                    [p] => (p, None),
                    [p, a] => (p, Some(a.to_owned())),
                    _ => anyhow::bail!("line {n}: listener takes a port and an optional address"),
                };
                let port = port
                    .parse()
                    .with_context(|| format!("line {n}: listener: {port:?} is not a port"))?;
                c.listeners.push(FileListener {
                    port,
                    address: addr,
                    ..Default::default()
                });
                declared.push(n);
            }
            "certfile" => current(&mut c, n, key)?.certfile = Some(dir.join(one()?)),
            "keyfile" => current(&mut c, n, key)?.keyfile = Some(dir.join(one()?)),
            "cafile" => current(&mut c, n, key)?.cafile = Some(dir.join(one()?)),
            "require_certificate" => {
                let v = boolean(one()?)?;
                current(&mut c, n, key)?.require_certificate = v;
            }
            "allow_anonymous" => c.broker.allow_anonymous = Some(boolean(one()?)?),
            "password_file" => {
                let path = dir.join(one()?);
                let p = Passwords::load(&path).with_context(|| format!("line {n}: password_file"))?;
                c.broker.passwords = Some(Arc::new(p));
            }
            "max_connections" => {
                // Mosquitto's -1: no limit.
                c.broker.max_connections = match one()? {
                    "-1" => usize::MAX,
                    v => number(v)?,
                }
            }
            // Not a Mosquitto key: with `false`, keep-alive 0 is refused
            // (3.1.1) or replaced by 60 s (5); allowed by default, as
            // Mosquitto 2.0 with its defaults allows it.
            "allow_zero_keepalive" => c.broker.allow_zero_keep_alive = boolean(one()?)?,
            // Mosquitto's 0: no limit.
            "max_queued_messages" => {
                c.broker.max_queued_messages = match number(one()?)? {
                    0 => usize::MAX,
                    v => v,
                }
            }
            // Mosquitto's 0: no limit.
            "max_queued_bytes" => {
                c.broker.max_queued_bytes = match number(one()?)? {
                    0 => usize::MAX,
                    v => v,
                }
            }
            "max_inflight_messages" => c.broker.max_inflight_messages = number(one()?)?.max(1),
            "max_packet_size" => {
                let v = number(one()?)?;
                c.broker.max_packet_size = u32::try_from(v)
                    .ok()
                    .filter(|v| *v >= 20)
                    .with_context(|| format!("line {n}: max_packet_size: {v} is out of range"))?;
            }
            other => anyhow::bail!("line {n}: unknown key {other:?} (this broker reads listener, certfile, keyfile, cafile, require_certificate, allow_anonymous, password_file, max_connections, max_queued_messages, max_queued_bytes, max_inflight_messages, max_packet_size, allow_zero_keepalive)"),
        }
    }
    for (l, n) in c.listeners.iter().zip(declared) {
        l.listener(n)?;
    }
    Ok(c)
}

/// Runs the broker until SIGINT or SIGTERM.
pub async fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let mut file = FileConfig::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        file = parse_config(&text, dir).with_context(|| path.display().to_string())?;
    }
    let listeners = match args.port {
        Some(p) => vec![Listener::tcp(format!("127.0.0.1:{p}"))],
        None if file.listeners.is_empty() => vec![Listener::tcp("127.0.0.1:1883")],
        // Checked when the file was read.
        None => file
            .listeners
            .iter()
            .map(|l| l.listener(0))
            .collect::<anyhow::Result<_>>()?,
    };
    let stop = crate::shutdown_signal();
    let broker = EmbeddedBroker::start_listeners(&listeners, file.broker).await?;
    for (l, addr) in listeners.iter().zip(broker.local_addrs()) {
        let kind = if l.tls.is_some() { "TLS" } else { "TCP" };
        tracing::info!(address = %addr, kind, "mqlink broker listening.");
        let _ = writeln!(
            std::io::stderr(),
            "mqlink broker listening on {addr} ({kind})"
        );
    }
    stop.await;
    let stats = broker.stats();
    tracing::info!(
        undelivered = broker.undelivered(),
        dropped_messages = stats.dropped_messages,
        slow_disconnects = stats.slow_disconnects,
        "mqlink broker stopping."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mosquitto_conf_keys_and_names_bad_lines() {
        let c = parse_config(
            "# comment\nlistener 1884 0.0.0.0\nallow_anonymous true\nallow_zero_keepalive false\nmax_connections -1\nmax_queued_messages 50\nmax_queued_bytes 4096\nmax_packet_size 1024\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].port, 1884);
        assert_eq!(c.listeners[0].address.as_deref(), Some("0.0.0.0"));
        assert_eq!(c.broker.allow_anonymous, Some(true));
        assert!(!c.broker.allow_zero_keep_alive);
        assert_eq!(c.broker.max_connections, usize::MAX);
        assert_eq!(c.broker.max_queued_messages, 50);
        assert_eq!(c.broker.max_queued_bytes, 4096);
        assert_eq!(c.broker.max_packet_size, 1024);
        let err = |t: &str| format!("{:#}", parse_config(t, Path::new(".")).unwrap_err());
        assert!(err("\nbind_address x").contains("line 2: unknown key \"bind_address\""));
        assert!(err("allow_anonymous maybe").contains("line 1: allow_anonymous"));
        assert!(err("max_connections lots").contains("is not a number"));
        assert!(err("password_file /nonexistent").contains("line 1: password_file"));
        assert!(err("certfile a.pem").contains("line 1: certfile belongs to a listener"));
        assert!(err("listener 8883\ncertfile a.pem")
            .contains("line 1: listener 8883: a TLS listener needs both certfile and keyfile"));
        assert!(err("listener 1\nrequire_certificate yes").contains("line 2: require_certificate"));
        let unlimited = parse_config("max_queued_messages 0", Path::new(".")).unwrap();
        assert_eq!(unlimited.broker.max_queued_messages, usize::MAX);
        let tls = parse_config(
            "listener 1883 127.0.0.1\nlistener 8883\ncafile ca.crt\ncertfile s.crt\nkeyfile s.key\nrequire_certificate true\n",
            Path::new("/etc/m"),
        )
        .unwrap();
        assert_eq!(tls.listeners.len(), 2);
        assert_eq!(
            tls.listeners[1].certfile,
            Some(PathBuf::from("/etc/m/s.crt"))
        );
        assert!(tls.listeners[1].require_certificate);
        assert!(tls.listeners[0].certfile.is_none());
    }
}
