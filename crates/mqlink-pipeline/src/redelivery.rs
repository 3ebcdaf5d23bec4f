//! The broker's redelivery of messages a stage with state already counted.
//!
//! A window's checkpoint writes its state and only then acknowledges the
//! epoch's messages. A crash between the two, or a connection lost before
//! the PUBACKs reached the broker, makes the broker send those messages
//! again, with their original packet ids and the DUP flag (MQTT 3.1.1 and
//! 5.0, §4.4), onto a state that already holds them. So the stage keeps,
//! and writes with its state, the identity of every message of its epoch:
//! a hash of the receiving client, packet id, topic and payload. A
//! message with DUP set
//! whose identity is in the committed epoch or the current one is
//! acknowledged with the current epoch and not counted again.
//!
//! What this cannot tell apart: a broker that reuses, for a new message
//! with the same topic and payload, a packet id the committed epoch had,
//! and then redelivers that new message after a crash before the next
//! checkpoint. Brokers that number packets in sequence (Mosquitto, EMQX,
//! RabbitMQ, mqlink's broker) reach an id again only 65,535 messages later.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use crate::batch::Item;

/// Message identities: FNV-1a of client, packet id, topic and payload, hashed
/// once (the set takes them as they are).
type Ids = HashSet<u64, BuildHasherDefault<Prehashed>>;

/// The bytes of one identity in [`Redeliveries::epoch_bytes`].
const ID_BYTES: usize = 8;

/// The identities of the committed epoch and of the current one.
#[derive(Debug, Default)]
pub struct Redeliveries {
    committed: Ids,
    current: Ids,
}

impl Redeliveries {
    /// The state restored from [`epoch_bytes`](Self::epoch_bytes) of the
    /// last checkpoint.
    pub fn restore(bytes: &[u8]) -> Result<Redeliveries, String> {
        if !bytes.len().is_multiple_of(ID_BYTES) {
            return Err(format!(
                "the redelivery log has {} bytes, not a multiple of {ID_BYTES}",
                bytes.len()
            ));
        }
        let committed = bytes
            .chunks_exact(ID_BYTES)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(Redeliveries {
            committed,
            ..Redeliveries::default()
        })
    }

    /// False for the broker's redelivery of a message already counted
    /// (the caller drops it; its acknowledgement goes with the epoch).
    /// Every message with a packet id joins the current epoch.
    pub fn admit(&mut self, item: &Item) -> bool {
        let Some(o) = item.origin else {
            return true;
        };
        let topic = item.topic.as_ref().map_or("", |t| t.as_str());
        // NUL: a separator no topic holds.
        let id = fnv1a(&[
            &o.client.to_le_bytes(),
            &o.packet_id.to_le_bytes(),
            topic.as_bytes(),
            &[0],
            &item.payload,
        ]);
        let seen = o.dup && (self.current.contains(&id) || self.committed.contains(&id));
        self.current.insert(id);
        !seen
    }

    /// The current epoch's identities, to be written with the state.
    pub fn epoch_bytes(&self) -> Vec<u8> {
        self.current
            .iter()
            .flat_map(|id| id.to_le_bytes())
            .collect()
    }

    /// The state holding [`epoch_bytes`](Self::epoch_bytes) is durable:
    /// the current epoch is the committed one now.
    pub fn committed(&mut self) {
        self.committed = std::mem::take(&mut self.current);
    }
}

/// FNV-1a (64 bits) of `parts` in a row: stable across builds and
/// releases, for what state files keep (identities, checksums).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|part| part.iter())
        .fold(0xcbf2_9ce4_8422_2325, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Origin;
    use mqlink::format::Value;

    fn item(pkid: u16, dup: bool, payload: &str) -> Item {
        Item {
            topic: Some("t/1".into()),
            payload: payload.to_owned().into(),
            value: Value::Null,
            origin: Some(Origin {
                client: 0,
                packet_id: pkid,
                dup,
                position: None,
            }),
        }
    }

    #[test]
    fn a_redelivery_of_the_committed_epoch_is_recognised_after_a_restore() {
        let mut r = Redeliveries::default();
        assert!(r.admit(&item(1, false, "a")));
        assert!(r.admit(&item(2, false, "b")));
        let bytes = r.epoch_bytes();
        r.committed();

        let mut r = Redeliveries::restore(&bytes).unwrap();
        // The broker resends both (their PUBACKs never arrived), then new ones.
        let admitted = [
            r.admit(&item(1, true, "a")),
            r.admit(&item(2, true, "b")),
            r.admit(&item(3, false, "c")),
            // A resend of a message the state does not hold is counted.
            r.admit(&item(4, true, "d")),
        ];
        assert_eq!(admitted, [false, false, true, true]);
        assert_eq!(admitted.iter().filter(|a| !**a).count(), 2);
        // Skipped ones stay in the epoch: a second crash recognises them too.
        let again = Redeliveries::restore(&r.epoch_bytes()).unwrap();
        assert_eq!(again.committed.len(), 4);
    }

    #[test]
    fn only_a_resend_of_the_same_message_is_skipped() {
        let mut r = Redeliveries::default();
        assert!(r.admit(&item(7, false, "a")));
        r.committed();
        // Same id without DUP: a new message that reuses the packet id.
        assert!(r.admit(&item(7, false, "a")));
        // DUP, same id, another payload: another message.
        assert!(r.admit(&item(7, true, "b")));
        // The same packet id and message from another client of a shared
        // subscription: another message (ids are per session).
        let mut other = item(7, true, "a");
        other.origin.as_mut().unwrap().client = 1;
        assert!(r.admit(&other));
        // Within one epoch (a reconnect before the checkpoint).
        assert!(r.admit(&item(8, false, "x")));
        assert!(!r.admit(&item(8, true, "x")));
        // Records not from MQTT (or QoS 0) are always counted.
        let mut plain = item(0, true, "x");
        plain.origin = None;
        assert!(r.admit(&plain));
        assert!(r.admit(&plain));
    }

    #[test]
    fn a_damaged_log_is_refused() {
        assert!(Redeliveries::restore(&[1, 2, 3]).is_err());
        assert!(Redeliveries::restore(&[]).unwrap().committed.is_empty());
    }
}
