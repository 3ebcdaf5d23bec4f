//! The `mqlink` command: parses arguments, sets up logging, runs a
//! subcommand, and maps errors to exit codes (1 runtime, 2 usage).

mod airbyte;
mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
}

/// Completes on SIGINT or SIGTERM.
pub(crate) fn shutdown_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let debug = match &cli.command {
        Command::Pub(a) => a.conn.debug,
        Command::Sub(a) => a.conn.debug,
        Command::Airbyte(_) => false,
    };
    // Airbyte reads stdout as protocol messages: logs must not go there (they go to stderr).
    let is_airbyte = matches!(cli.command, Command::Airbyte(_));
    let filter = if debug {
        EnvFilter::new("mqlink=debug,mqlink_cli=debug")
    } else {
        EnvFilter::try_from_env("MQLINK_LOG").unwrap_or_else(|_| EnvFilter::new("warn"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Pub(a) => cli::publish::run(a).await,
            Command::Sub(a) => cli::sub::run(a).await,
            Command::Airbyte(c) => airbyte::run(c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !is_airbyte {
                eprintln!("mqlink: {e:#}");
            }
            if e.downcast_ref::<cli::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
