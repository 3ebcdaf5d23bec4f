//! A bridge on the library: what arrives on one broker is published to
//! another, and acknowledged upstream only once the far broker confirmed
//! it ([`MqttSink::forward`]). Sends are pipelined (many in flight); the
//! acknowledgements follow the confirmations in order, so upstream PUBACKs
//! still leave in arrival order. A publish that fails for good is never
//! acknowledged, nor is anything after it: the near broker sends them again
//! on the next run (the session is kept).
//!
//! ```text
//! cargo run --release --example bridge -- NEAR_URL CLIENT_ID FILTER FAR_URL TOPIC_TEMPLATE [COUNT]
//! cargo run --release --example bridge -- mqtt://localhost:1883 bridge-a 'site-a/#' \
//!     mqtt://central:1883 'central/{stream}' 10000
//! ```
//!
//! With COUNT it stops after COUNT records were confirmed and acknowledged,
//! and prints to stderr how long that took from the first record
//! (`scripts/bench.sh` times it next to `mqlink run`'s bridge).

use std::time::{Duration, Instant};

use mqlink::{MqttSink, MqttSource, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [near, client_id, filter, far, template, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bridge NEAR_URL CLIENT_ID FILTER FAR_URL TOPIC_TEMPLATE [COUNT]");
        std::process::exit(2);
    };
    let count: Option<u64> = rest.first().map(|c| c.parse()).transpose()?;

    let mut upstream = MqttSource::builder()
        .broker(near)
        .client_id(client_id.as_str())
        .keep_session() // unacknowledged messages wait for the next run
        .topic(filter.as_str(), QoS::AtLeastOnce)
        .start()
        .await?;
    let downstream = MqttSink::builder()
        .broker(far)
        .topic(template)
        .start()
        .await?;

    let mut started = None;
    let mut sent = 0u64;
    while Some(sent) != count {
        let Some(mut record) = upstream.next().await else {
            break; // the session ended
        };
        started.get_or_insert_with(Instant::now);
        // Acknowledged upstream once the far broker confirmed it, in order.
        let _confirmed = downstream.forward(&mut record).await?;
        sent += 1;
    }
    // Every confirmation in, so every acknowledgement given.
    downstream.flush(Duration::from_secs(60)).await?;
    let took = started.map_or(Duration::ZERO, |s| s.elapsed());
    eprintln!(
        "bridged {sent} records in {:.3} s ({:.0}/s)",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64().max(1e-9)
    );
    // Acknowledgements given so far go out before the DISCONNECT.
    upstream.close().await;
    downstream.close(Duration::from_secs(10)).await?;
    Ok(())
}
