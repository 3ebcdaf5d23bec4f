//! Dead letters: a message that could not be processed, published to a
//! dead-letter topic with where it came from and why. The one place that
//! builds and publishes them, for the source's undecodable payloads and
//! exhausted retries and for a pipeline's refused records.
//!
//! The original is acknowledged only once the broker confirmed its dead
//! letter; callers get the confirmation (or the error) to decide that.
//!
//! On MQTT 5 a dead letter is the original payload with the user
//! properties `mqlink_original_topic` and `mqlink_error`; on 3.1.1 it is a
//! JSON envelope `{"original_topic", "error", "payload",
//! "payload_encoding": "utf8" | "base64"}`.

use base64::Engine;
use bytes::Bytes;

use crate::error::PublishError;
use crate::session::{Client, Confirmed, Message, PublishToken};
use crate::types::{Protocol, QoS};
use crate::PublishProperties;

/// One message to dead-letter.
#[derive(Clone, Debug)]
pub struct DeadLetter<'a> {
    /// The topic it came from (or was meant for).
    pub from: &'a str,
    /// Its payload, unchanged.
    pub payload: Bytes,
    /// Why it is dead-lettered.
    pub reason: &'a str,
    /// Its QoS: the dead letter goes at least at this one.
    pub qos: QoS,
    /// Its MQTT 5 properties, kept on the dead letter.
    pub properties: Option<&'a PublishProperties>,
}

impl<'a> DeadLetter<'a> {
    /// A letter for `payload` from topic `from`, failed for `reason`.
    pub fn new(from: &'a str, payload: Bytes, reason: &'a str) -> Self {
        DeadLetter {
            from,
            payload,
            reason,
            qos: QoS::AtMostOnce,
            properties: None,
        }
    }
}

/// A dead letter that did not reach the broker: its original must stay
/// unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterError {
    /// The session did not take it (stopped, or the message is invalid).
    #[error("dead letter to {topic:?} not published: {error}")]
    NotPublished {
        /// The dead-letter topic.
        topic: String,
        /// Why.
        error: PublishError,
    },
    /// The broker did not confirm it.
    #[error("dead letter to {topic:?} not confirmed: {error}")]
    NotConfirmed {
        /// The dead-letter topic.
        topic: String,
        /// Why.
        error: PublishError,
    },
}

/// Where dead letters go: a topic, the client that publishes there, and the
/// lowest QoS they are sent at (at least 1: a dead letter is confirmed).
#[derive(Clone, Debug)]
pub struct DeadLetters {
    /// The dead-letter topic.
    pub topic: String,
    /// The session that publishes them.
    pub client: Client,
    /// The lowest QoS of a dead letter.
    pub qos: QoS,
}

impl DeadLetters {
    /// Dead letters to `topic` through `client`, at QoS 1 or the letter's.
    pub fn new(topic: impl Into<String>, client: Client) -> Self {
        DeadLetters {
            topic: topic.into(),
            client,
            qos: QoS::AtLeastOnce,
        }
    }

    /// The message of `letter`, for this destination's protocol.
    pub fn message(&self, letter: &DeadLetter<'_>) -> Message {
        let v5 = self.client.protocol() == Protocol::V5;
        message(letter, &self.topic, self.qos, v5)
    }

    /// Publishes `letter` without waiting for the broker: the token
    /// completes on its confirmation.
    pub async fn send(&self, letter: &DeadLetter<'_>) -> Result<PublishToken, DeadLetterError> {
        self.client
            .publish(self.message(letter))
            .await
            .map_err(|error| DeadLetterError::NotPublished {
                topic: self.topic.clone(),
                error,
            })
    }

    /// Publishes `letter` and waits for the broker's confirmation.
    pub async fn publish(&self, letter: &DeadLetter<'_>) -> Result<Confirmed, DeadLetterError> {
        let token = self.send(letter).await?;
        self.confirmation(token).await
    }

    /// The confirmation of a letter [`send`](Self::send) returned `token` for.
    pub async fn confirmation(&self, token: PublishToken) -> Result<Confirmed, DeadLetterError> {
        token.await.map_err(|error| DeadLetterError::NotConfirmed {
            topic: self.topic.clone(),
            error,
        })
    }

    /// Publishes every letter (pipelined), then waits for their
    /// confirmations in order. The first that is not published or not
    /// confirmed is the error, with how many before it were confirmed.
    pub async fn publish_all(
        &self,
        letters: &[DeadLetter<'_>],
    ) -> Result<(), (usize, DeadLetterError)> {
        let mut tokens = Vec::with_capacity(letters.len());
        for letter in letters {
            tokens.push(self.send(letter).await.map_err(|e| (0, e))?);
        }
        for (i, token) in tokens.into_iter().enumerate() {
            self.confirmation(token).await.map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

/// The dead letter of `letter` on topic `dlq`, at `qos` or the letter's
/// if higher (at least 1): on MQTT 5 the payload with the letter's
/// properties and two user properties, on 3.1.1 a JSON envelope.
pub fn message(letter: &DeadLetter<'_>, dlq: &str, qos: QoS, v5: bool) -> Message {
    let qos = qos.max(letter.qos).max(QoS::AtLeastOnce);
    let payload = &letter.payload;
    if v5 {
        let mut props = letter.properties.cloned().unwrap_or_default();
        props.subscription_identifiers.clear();
        props.topic_alias = None;
        props
            .user_properties
            .push(("mqlink_original_topic".into(), letter.from.to_owned()));
        props
            .user_properties
            .push(("mqlink_error".into(), letter.reason.to_owned()));
        Message::new(dlq, payload.clone(), qos).properties(props)
    } else {
        let (text, encoding) = match std::str::from_utf8(payload) {
            Ok(s) => (s.to_owned(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(payload),
                "base64",
            ),
        };
        let envelope = serde_json::json!({
            "original_topic": letter.from,
            "error": letter.reason,
            "payload": text,
            "payload_encoding": encoding,
        });
        Message::new(dlq, envelope.to_string(), qos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_its_origin_on_either_protocol() {
        let props = PublishProperties {
            content_type: Some("application/x".into()),
            topic_alias: Some(3),
            ..Default::default()
        };
        let letter = DeadLetter {
            qos: QoS::ExactlyOnce,
            properties: Some(&props),
            ..DeadLetter::new("in/a", Bytes::from_static(b"\xff\x00"), "bad")
        };
        let m = message(&letter, "dlq", QoS::AtMostOnce, true);
        assert_eq!((m.topic.as_str(), m.qos), ("dlq", QoS::ExactlyOnce));
        let p = m.properties.unwrap();
        assert_eq!(
            (p.content_type.as_deref(), p.topic_alias),
            (Some("application/x"), None)
        );
        assert_eq!(
            p.user_properties,
            [
                ("mqlink_original_topic".into(), "in/a".into()),
                ("mqlink_error".into(), "bad".into())
            ]
        );
        let plain = DeadLetter::new("in/b", Bytes::from_static(b"\xff"), "worse");
        let m = message(&plain, "dlq", QoS::AtMostOnce, false);
        assert_eq!(m.qos, QoS::AtLeastOnce);
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"original_topic": "in/b", "error": "worse",
                "payload": "/w==", "payload_encoding": "base64"})
        );
    }
}
