//! `mqlink broker`: the embedded broker on its own, for local development
//! and tests, with mosquitto's flags and a config file in mosquitto.conf's
//! syntax (a subset: the keys [`parse_config`] names).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use mqlink::broker::{BrokerConfig, EmbeddedBroker, Passwords};

#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// Port to listen on, on 127.0.0.1 [default: 1883]. A config file's
    /// `listener` chooses another address.
    #[arg(short, long)]
    pub port: Option<u16>,
    /// Config file: `listener PORT [ADDRESS]`, `allow_anonymous true|false`,
    /// `password_file PATH` (mosquitto_passwd's format), `max_connections N`,
    /// `max_queued_messages N`, `max_packet_size BYTES`, `max_inflight_messages N`,
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
    /// `listener`: port and address (all interfaces when no address is given, as Mosquitto).
    pub listener: Option<(u16, Option<String>)>,
    pub broker: BrokerConfig,
}

/// Parses a config file's text; errors name the line and the key.
pub fn parse_config(text: &str, dir: &Path) -> anyhow::Result<FileConfig> {
    let mut c = FileConfig::default();
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
                c.listener = Some((port, addr));
            }
            "allow_anonymous" => {
                c.broker.allow_anonymous = Some(match one()? {
                    "true" => true,
                    "false" => false,
                    v => anyhow::bail!("line {n}: allow_anonymous: {v:?} is not true or false"),
                })
            }
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
            // Not a Mosquitto key: keep-alive 0 is refused (3.1.1) or
            // replaced by 60 s (5) unless this is true.
            "allow_zero_keepalive" => {
                c.broker.allow_zero_keep_alive = match one()? {
                    "true" => true,
                    "false" => false,
                    v => anyhow::bail!("line {n}: allow_zero_keepalive: {v:?} is not true or false"),
                }
            }
            "max_queued_messages" => c.broker.max_queued_messages = number(one()?)?.max(1),
            "max_inflight_messages" => c.broker.max_inflight_messages = number(one()?)?.max(1),
            "max_packet_size" => {
                let v = number(one()?)?;
                c.broker.max_packet_size = u32::try_from(v)
                    .ok()
                    .filter(|v| *v >= 20)
                    .with_context(|| format!("line {n}: max_packet_size: {v} is out of range"))?;
            }
            other => anyhow::bail!("line {n}: unknown key {other:?} (this broker reads listener, allow_anonymous, password_file, max_connections, max_queued_messages, max_inflight_messages, max_packet_size, allow_zero_keepalive)"),
        }
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
    let listen = match (&file.listener, args.port) {
        (_, Some(p)) => format!("127.0.0.1:{p}"),
        (Some((p, Some(a))), None) => format!("{a}:{p}"),
        (Some((p, None)), None) => format!("0.0.0.0:{p}"),
        (None, None) => "127.0.0.1:1883".to_owned(),
    };
    let broker = EmbeddedBroker::start_with(&listen, file.broker)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(address = %broker.local_addr(), "mqlink broker listening.");
    eprintln!("mqlink broker listening on {}", broker.local_addr());
    crate::shutdown_signal().await;
    tracing::info!(
        undelivered = broker.undelivered(),
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
            "# comment\nlistener 1884 0.0.0.0\nallow_anonymous true\nallow_zero_keepalive true\nmax_connections -1\nmax_queued_messages 50\nmax_packet_size 1024\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.listener, Some((1884, Some("0.0.0.0".into()))));
        assert_eq!(c.broker.allow_anonymous, Some(true));
        assert!(c.broker.allow_zero_keep_alive);
        assert_eq!(c.broker.max_connections, usize::MAX);
        assert_eq!(c.broker.max_queued_messages, 50);
        assert_eq!(c.broker.max_packet_size, 1024);
        let err = |t: &str| format!("{:#}", parse_config(t, Path::new(".")).unwrap_err());
        assert!(err("\nbind_address x").contains("line 2: unknown key \"bind_address\""));
        assert!(err("allow_anonymous maybe").contains("line 1: allow_anonymous"));
        assert!(err("max_connections lots").contains("is not a number"));
        assert!(err("password_file /nonexistent").contains("line 1: password_file"));
    }
}
