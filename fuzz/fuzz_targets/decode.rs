//! The packet decoder on arbitrary bytes, both protocol versions: it must
//! return a packet, "need more", or an error, and never panic. A decoded
//! packet must encode again without panicking.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqlink::codec::{decode, encode};
use mqlink::Protocol;

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, protocol, 1 << 20) {
            let mut out = BytesMut::new();
            encode(&packet, protocol, &mut out);
        }
    }
});
