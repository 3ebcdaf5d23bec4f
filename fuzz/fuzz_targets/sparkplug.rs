//! The Sparkplug B decoder and host state on arbitrary bytes, on every
//! message type: rows or an error, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mqlink::format::sparkplug::Host;

const TOPICS: &[&str] = &[
    "spBv1.0/g/NBIRTH/e",
    "spBv1.0/g/NDATA/e",
    "spBv1.0/g/DBIRTH/e/d",
    "spBv1.0/g/DDATA/e/d",
    "spBv1.0/g/NDEATH/e",
    "spBv1.0/g/DDEATH/e/d",
];

fuzz_target!(|data: &[u8]| {
    // One host across inputs: state built by earlier births is exercised.
    static HOST: OnceLock<Host> = OnceLock::new();
    let host = HOST.get_or_init(Host::default);
    let Some((&first, payload)) = data.split_first() else {
        return;
    };
    if let Ok(v) = host.decode(TOPICS[first as usize % TOPICS.len()], payload) {
        let mut out = Vec::new();
        v.write_json(&mut out);
    }
    let _ = host.take_requests();
});
