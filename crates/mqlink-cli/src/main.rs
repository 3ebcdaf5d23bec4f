//! The `mqlink` command: parses arguments, sets up logging, runs a
//! subcommand, and maps errors to exit codes (1 runtime, 2 usage).

mod airbyte;
mod broker;
mod cli;
mod pipeline;
mod query;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Parser, Debug)]
#[command(
    name = "mqlink",
    version,
    about = "MQTT source and sink connectors that lose nothing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish messages, as mosquitto_pub; exits 0 only when all were confirmed.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Pub(cli::publish::PubArgs),
    /// Subscribe and print messages, as mosquitto_sub; acknowledges only what was written.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sub(cli::sub::SubArgs),
    /// A drop-in Airbyte destination (destination-mqtt): spec, check, write.
    #[command(subcommand)]
    Airbyte(airbyte::AirbyteCommand),
    /// Run the pipeline of a TOML or YAML file: sources, sinks, end-to-end acknowledgements.
    Run(pipeline::RunArgs),
    /// Check a pipeline file without connecting anywhere; errors name the key.
    Validate(pipeline::ValidateArgs),
    /// Run the embedded MQTT broker on its own (flags as mosquitto's), until SIGINT/SIGTERM.
    Broker(broker::BrokerArgs),
    /// Query a running pipeline's system.connector_status and system.connector_logs (SQL).
    Query(query::QueryArgs),
}

/// Completes on SIGINT or SIGTERM.
pub(crate) fn shutdown_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed here, not when first polled: a signal that comes between
    // this call and the first await (a test's SIGTERM right after
    // "listening") must stop us cleanly, not kill us.
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    Box::pin(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Whether an error is a write to a closed pipe.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // PEM text written to private files is removed whatever way we end
    // short of SIGKILL (a signal ends a run through its normal return).
    let _pem_files = mqlink_pipeline::pem::Cleanup;
    let debug = match &cli.command {
        Command::Pub(a) => a.conn.debug,
        Command::Sub(a) => a.conn.debug,
        Command::Broker(a) => a.verbose,
        Command::Airbyte(_) | Command::Run(_) | Command::Validate(_) | Command::Query(_) => false,
    };
    // Airbyte reads stdout as protocol messages: logs must not go there (they go to stderr).
    let is_airbyte = matches!(cli.command, Command::Airbyte(_));
    // A pipeline is a service: it says what it does (info) unless told otherwise.
    let (default_level, json_logs, quiet) = match &cli.command {
        Command::Pub(a) if a.conn.quiet => ("off", false, true),
        Command::Sub(a) if a.conn.quiet => ("off", false, true),
        Command::Run(a) => (
            if a.quiet { "error" } else { "info" },
            a.log_format == "json",
            a.quiet,
        ),
        Command::Broker(_) => ("info", false, false),
        _ => ("warn", false, false),
    };
    let filter = if debug {
        EnvFilter::new("mqlink=debug,mqlink_cli=debug,mqlink_pipeline=debug")
    } else if quiet {
        EnvFilter::new(default_level)
    } else {
        EnvFilter::try_from_env("MQLINK_LOG").unwrap_or_else(|_| EnvFilter::new(default_level))
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let fmt = if json_logs {
        fmt.json().boxed()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    // A pipeline keeps its recent events for system.connector_logs, with
    // its own filter: --quiet and MQLINK_LOG change the output, not the table.
    let recent = matches!(cli.command, Command::Run(_))
        .then(|| mqlink_pipeline::logs::RecentLogs.with_filter(LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(recent)
        .init();

    // A pipeline decodes, serializes and writes on both cores; pub and sub
    // are one stream each.
    let rt = match &cli.command {
        Command::Run(_) | Command::Broker(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Pub(a) => cli::publish::run(a).await,
            Command::Sub(a) => cli::sub::run(a).await,
            Command::Airbyte(c) => airbyte::run(c).await,
            Command::Run(a) => pipeline::run(a).await,
            Command::Validate(a) => pipeline::validate(a),
            Command::Broker(a) => broker::run(a).await,
            Command::Query(a) => query::run(a).await,
        }
    });
    // The command is over: a task still busy (a component that never
    // yielded) must not hold the exit after a signal.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head -1`): what it wanted was written.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // mosquitto's exit codes (27 timed out, CONNACK codes), its messages.
            if let Some(x) = e.downcast_ref::<cli::Exit>() {
                if let Some(m) = &x.message {
                    let _ = writeln!(std::io::stderr(), "{}", mqlink::secret::redact(m));
                }
                return ExitCode::from(x.code);
            }
            if !is_airbyte {
                let _ = writeln!(
                    std::io::stderr(),
                    "mqlink: {}",
                    mqlink::secret::redact(&format!("{e:#}"))
                );
            }
            if e.downcast_ref::<cli::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
