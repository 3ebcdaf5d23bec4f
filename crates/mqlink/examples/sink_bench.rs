//! Publishes N JSON records through the library's MqttSink at QoS 1 and
//! waits for every confirmation; used by scripts/bench.sh.
//! Usage: sink_bench HOST PORT TOPIC N [SPOOL_DIR]
use std::time::{Duration, Instant};

use mqlink::sink::{MqttSink, SinkRecord};
use mqlink::{ConnectOptions, QoS};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (host, port, topic, n, spool) = match &args[..] {
        [_, h, p, t, n] => (h, p, t, n, None),
        [_, h, p, t, n, s] => (h, p, t, n, Some(s)),
        _ => return Err("usage: sink_bench HOST PORT TOPIC N [SPOOL_DIR]".into()),
    };
    let n: u64 = n.parse()?;
    let mut builder = MqttSink::builder()
        .connection(ConnectOptions::new(&format!("mqtt://{host}:{port}"))?)
        .topic(topic)
        .qos(QoS::AtLeastOnce);
    if let Some(dir) = spool {
        builder = builder.spool(dir, 1 << 30);
    }
    let sink = builder.start().await?;
    let started = Instant::now();
    for i in 0..n {
        let record = SinkRecord::json(json!({
            "device_id": format!("dev-{:03}", i % 100), "seq": i, "ts": 1_790_000_000_000u64 + i,
            "temperature": 20.5, "humidity": 40.5, "site": "plant-7", "ok": true
        }));
        drop(sink.send(record).await?);
    }
    sink.flush(Duration::from_secs(120)).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sink_bench: {n} records confirmed in {secs:.3} s ({:.0}/s)",
        n as f64 / secs
    );
    Ok(())
}
