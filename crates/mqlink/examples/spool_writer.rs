//! Sends records `{"seq": i}` through a sink with the crash-safe spool and
//! prints `spooled i` once `send` returned (the record is on disk). With
//! N = 0 it only publishes what the spool holds and waits for the broker.
//! Used by the SIGKILL test in tests/sink.rs.
//! Usage: spool_writer BROKER_URL TOPIC SPOOL_DIR N
use std::io::Write;
use std::time::Duration;

use mqlink::sink::{MqttSink, SinkRecord};
use mqlink::{ConnectOptions, QoS};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 1 {
        // `cargo test` runs examples built without a harness once, bare.
        eprintln!("usage: spool_writer BROKER_URL TOPIC SPOOL_DIR N (nothing to do)");
        return Ok(());
    }
    let [_, url, topic, dir, n] = &args[..] else {
        return Err("usage: spool_writer BROKER_URL TOPIC SPOOL_DIR N".into());
    };
    let mut opts = ConnectOptions::new(url)?;
    opts.reconnect.initial_interval = Duration::from_millis(50);
    opts.reconnect.max_interval = Duration::from_millis(300);
    let sink = MqttSink::builder()
        .connection(opts)
        .topic(topic)
        .qos(QoS::AtLeastOnce)
        .spool(dir, 1 << 30)
        .start()
        .await?;
    let mut out = std::io::stdout().lock();
    for i in 0..n.parse::<u64>()? {
        drop(
            sink.send(SinkRecord::json(serde_json::json!({ "seq": i })))
                .await?,
        );
        writeln!(out, "spooled {i}")?;
        if i % 100 == 0 {
            out.flush()?;
        }
    }
    out.flush()?;
    sink.flush(Duration::from_secs(60)).await?;
    writeln!(out, "confirmed")?;
    Ok(())
}
