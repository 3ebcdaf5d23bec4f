//! `mqlink run FILE` and `mqlink validate FILE`: the arguments, the live
//! status on a terminal (or periodic log lines), and the exit code. The
//! pipeline itself is `mqlink_pipeline::run`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use mqlink_pipeline::spec::INSTANCE_ENV;
use mqlink_pipeline::status::Registry;
use mqlink_pipeline::RunOptions;

use crate::cli::usage;

/// `mqlink run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline file: TOML, or YAML when it ends in .yaml or .yml; a
    /// YAML file with top-level `resources:` of `Cybus::` types is a Cybus
    /// Connectware service commissioning file; SQL statements when it ends
    /// in .sql.
    pub file: PathBuf,
    #[command(flatten)]
    pub cybus: CybusArgs,
    /// This process's name among several running the same file (e.g. the
    /// pod's or host's name): `-NAME` ends every MQTT client id and the
    /// state goes to `<state_dir>/NAME`; windowed SQL queries in a share
    /// group then write partial rows per instance (see docs/guides/scaling.md).
    #[arg(long, value_name = "NAME", env = "MQLINK_INSTANCE")]
    pub instance: Option<String>,
    /// No live status, no periodic status lines, no summary; errors only.
    #[arg(short, long)]
    pub quiet: bool,
    /// Log format on stderr: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Stop (draining, as on SIGTERM) once every finite source is done and
    /// nothing moved for SECS seconds: for demos, tests and benchmarks.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub until_idle: Option<f64>,
    /// Serve /metrics, /health, /ready, /status and /query (`mqlink query`)
    /// on this address, e.g. 127.0.0.1:9464, or `off` [default: the file's
    /// http.listen, else 127.0.0.1:9464 or, when taken, a free loopback port].
    #[arg(long, value_name = "ADDR", value_parser = socket_address)]
    pub http_listen: Option<String>,
}

fn socket_address(s: &str) -> Result<String, String> {
    if s == "off" {
        return Ok(String::new());
    }
    s.parse::<std::net::SocketAddr>()
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9464, or off"))
}

/// A number of seconds between 0 and a day: no absurd value reaches a timer.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// `mqlink validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The pipeline file to check (nothing is connected to).
    pub file: PathBuf,
    #[command(flatten)]
    pub cybus: CybusArgs,
    /// This process's name among several running the same file (e.g. the
    /// pod's or host's name): `-NAME` ends every MQTT client id and the
    /// state goes to `<state_dir>/NAME`; windowed SQL queries in a share
    /// group then write partial rows per instance (see docs/guides/scaling.md).
    #[arg(long, value_name = "NAME", env = "MQLINK_INSTANCE")]
    pub instance: Option<String>,
}

/// What a Cybus commissioning file needs from the command line.
#[derive(Args, Debug)]
pub struct CybusArgs {
    /// A parameter of a commissioning file (repeatable); also read from
    /// MQLINK_PARAM_<name>. Later ones win.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = param)]
    pub params: Vec<(String, String)>,
    /// Where the embedded broker listens — Connectware's internal broker
    /// for commissioning files (loopback only) [default: embedded_broker.listen,
    /// else 127.0.0.1 on a free port].
    #[arg(long, value_name = "ADDR", value_parser = loopback)]
    pub embedded_broker: Option<String>,
    /// Refuse a commissioning file's resources mqlink does not run
    /// (Cybus::User, Cybus::Container, …) instead of skipping them with a
    /// warning.
    #[arg(long)]
    pub strict: bool,
}

fn param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

fn loopback(s: &str) -> Result<String, String> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Ok(s.to_string()),
        Ok(_) => Err(format!("{s:?} is not a loopback address: the embedded broker takes any client without a password")),
        Err(_) => Err(format!("{s:?} is not an address like 127.0.0.1:1883")),
    }
}

/// The pipeline of a file, with the command line's parameters and the
/// process's instance name.
fn load(
    file: &std::path::Path,
    cybus: &CybusArgs,
    instance: Option<&str>,
) -> anyhow::Result<mqlink_pipeline::Pipeline> {
    // An empty MQLINK_INSTANCE is no instance.
    let instance = instance.filter(|i| !i.is_empty());
    let mut p = load_file(file, cybus, instance)?;
    if let Some(i) = instance {
        p.set_instance(i).map_err(|e| usage(e.to_string()))?;
    }
    Ok(p)
}

fn load_file(
    file: &std::path::Path,
    cybus: &CybusArgs,
    instance: Option<&str>,
) -> anyhow::Result<mqlink_pipeline::Pipeline> {
    // `--instance` is `${MQLINK_INSTANCE}` to the file, as the variable is.
    let env = |k: &str| match (k, instance) {
        (INSTANCE_ENV, Some(i)) => Some(i.to_string()),
        (k, _) => std::env::var(k).ok(),
    };
    if let Some(p) = load_sql(file, &env) {
        if let Some((name, _)) = cybus.params.first() {
            return Err(usage(format!("--param {name}: parameters belong to Cybus commissioning files; a .sql file takes ${{VAR}} from the environment")));
        }
        let mut p = p?;
        p.state_dir_next_to(file);
        if let Some(l) = &cybus.embedded_broker {
            p.embedded_broker.listen = Some(l.clone());
        }
        return Ok(p);
    }
    let mut p =
        mqlink_pipeline::load_cybus_with(file, &cybus.params, cybus.strict, &env).map_err(|e| {
            // Errors name the file, once.
            if e.path == file.display().to_string() {
                usage(e.to_string())
            } else {
                usage(format!("{}: {e}", file.display()))
            }
        })?;
    if let Some(l) = &cybus.embedded_broker {
        p.embedded_broker.listen = Some(l.clone());
    }
    Ok(p)
}

/// A `.sql` file is SQL statements (feature `sql`); others TOML or YAML.
fn load_sql(
    file: &std::path::Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Option<anyhow::Result<mqlink_pipeline::Pipeline>> {
    if file.extension()? != "sql" {
        return None;
    }
    #[cfg(feature = "sql")]
    let r = mqlink_sql::load_with(file, env).map_err(|e| usage(format!("{}: {e}", file.display())));
    #[cfg(not(feature = "sql"))]
    let r = {
        let _ = env;
        Err(usage(format!(
            "{}: SQL pipelines need mqlink built with the sql feature (cargo build --release -p mqlink-cli --features sql)",
            file.display()
        )))
    };
    Some(r)
}

pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let p = load(&args.file, &args.cybus, args.instance.as_deref())?;
    // A closed stdout (`| head -1`) is an error here, quiet in main.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: valid: {} connection(s), {} source(s), {} sink(s)",
        args.file.display(),
        p.connections.len(),
        p.sources.len(),
        p.sinks.len()
    )?;
    for (path, id) in p.client_ids() {
        writeln!(out, "  {path}: MQTT client id {id}")?;
    }
    out.flush()?;
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut p = load(&args.file, &args.cybus, args.instance.as_deref())?;
    let http = p
        .http
        .take()
        .unwrap_or_else(mqlink_pipeline::spec::HttpConfig::loopback_default);
    p.http = Some(match &args.http_listen {
        Some(listen) => mqlink_pipeline::spec::HttpConfig {
            listen: listen.clone(),
            fallback: false,
            ..http
        },
        None => http,
    });
    let display = Display::new(&args, p.run.status_interval);
    let tick_every = display.every;
    let mut live = display.clone_handle();
    let opts = RunOptions {
        until_idle: args.until_idle.map(Duration::from_secs_f64),
        on_tick: Some(Box::new(move |r: &Registry| live.show(r))),
        tick_every,
        // /query over the system tables, evaluated by DataFusion (and the
        // source tables' recent rows, kept only when /query is served).
        #[cfg(feature = "sql")]
        query: p
            .http
            .as_ref()
            .is_some_and(|h| !h.listen.is_empty())
            .then(mqlink_sql::query::handler),
        #[cfg(not(feature = "sql"))]
        query: None,
    };
    let report = mqlink_pipeline::run(p, opts, crate::shutdown_signal()).await?;
    display.clear();
    if !args.quiet {
        let mut err = std::io::stderr().lock();
        let why = match &report.stop {
            mqlink_pipeline::Stop::Shutdown => "signal received".to_string(),
            mqlink_pipeline::Stop::SourcesDone => "every source is done".to_string(),
            mqlink_pipeline::Stop::Idle => "idle".to_string(),
            mqlink_pipeline::Stop::Failed(e) => format!("failed: {e}"),
        };
        let _ = writeln!(
            err,
            "mqlink run: stopped ({why}) after {:.1} s",
            report.elapsed.as_secs_f64()
        );
        for line in &report.lines {
            let _ = writeln!(err, "  {line}");
        }
        if let Some(secs) = report.busy_seconds {
            let _ = writeln!(
                err,
                "  {} records acknowledged in {secs:.3} s from the first record to the last acknowledgement ({:.0} records/s)",
                report.acknowledged,
                report.acknowledged as f64 / secs.max(1e-9)
            );
        }
        if report.buffered > 0 {
            let _ = writeln!(
                err,
                "  {} messages wait in the local buffers (acknowledged to the broker, on disk); the next start delivers them first",
                report.buffered
            );
        }
        if report.skipped > 0 {
            let _ = writeln!(
                err,
                "  {} records were skipped — a sink could never write them (no dead_letter_topic), or their rule failed (reasons logged): acknowledged, not written",
                report.skipped
            );
        }
    }
    match report.problem() {
        Some(p) => anyhow::bail!("{p}"),
        None => Ok(()),
    }
}

/// The live status: redrawn every second on a terminal, a log line per
/// component every `status_interval` otherwise, nothing with `--quiet`.
struct Display {
    mode: Mode,
    every: Duration,
    /// Lines drawn last on the terminal (to clear them).
    drawn: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The part of [`Display`] the run calls each tick.
struct Live {
    mode: Mode,
    prev: Vec<u64>,
    at: Instant,
    drawn: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(PartialEq, Clone, Copy)]
enum Mode {
    Quiet,
    Terminal,
    Log,
}

impl Display {
    fn new(args: &RunArgs, status_interval: f64) -> Display {
        let mode = if args.quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && args.log_format == "text" {
            Mode::Terminal
        } else {
            Mode::Log
        };
        let every = match mode {
            Mode::Log => Duration::from_secs_f64(status_interval),
            _ => Duration::from_millis(1000),
        };
        Display {
            mode,
            every,
            drawn: Default::default(),
        }
    }

    fn clone_handle(&self) -> Live {
        Live {
            mode: self.mode,
            prev: Vec::new(),
            at: Instant::now(),
            drawn: self.drawn.clone(),
        }
    }

    fn clear(&self) {
        let drawn = self.drawn.load(std::sync::atomic::Ordering::Relaxed);
        if self.mode == Mode::Terminal && drawn > 0 {
            let _ = write!(std::io::stderr(), "\x1b[{drawn}A\x1b[J");
        }
    }
}

impl Live {
    fn show(&mut self, r: &Registry) {
        if self.mode == Mode::Quiet {
            return;
        }
        let secs = self.at.elapsed().as_secs_f64();
        self.at = Instant::now();
        let lines = r.lines(&mut self.prev, secs);
        match self.mode {
            Mode::Terminal => {
                let mut err = std::io::stderr().lock();
                let drawn = self.drawn.load(std::sync::atomic::Ordering::Relaxed);
                if drawn > 0 {
                    let _ = write!(err, "\x1b[{drawn}A\x1b[J");
                }
                for l in &lines {
                    let _ = writeln!(err, "{l}");
                }
                self.drawn
                    .store(lines.len(), std::sync::atomic::Ordering::Relaxed);
            }
            _ => {
                for l in &lines {
                    tracing::info!("status: {l}");
                }
            }
        }
    }
}
