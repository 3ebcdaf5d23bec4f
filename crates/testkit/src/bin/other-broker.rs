//! Runs a broker of another make as the interop tests do (testkit's
//! recipe: its own directory, free port, one user), for `scripts/bench.sh`.
//! Prints `port user password` once it accepts MQTT connections and runs
//! until its standard input closes; then the broker is killed.
//!
//! usage: other-broker rabbitmq|nats|rumqttd|aedes|ejabberd|amqtt

use std::io::Write;
use std::process::ExitCode;

use testkit::{Make, OtherBroker};

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(make) = Make::ALL
        .into_iter()
        .find(|m| m.to_string().eq_ignore_ascii_case(&name))
    else {
        eprintln!("usage: other-broker rabbitmq|nats|rumqttd|aedes|ejabberd|amqtt (got {name:?})");
        return ExitCode::from(2);
    };
    let broker = match OtherBroker::start(make) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    println!("{} {} {}", broker.port, broker.user, broker.password);
    let _ = std::io::stdout().flush();
    // Until the caller closes our stdin (or exits): dropping kills the broker.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    drop(broker);
    ExitCode::SUCCESS
}
