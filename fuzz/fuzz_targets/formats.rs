//! The payload decoders (JSON with a typed schema, Avro, the Confluent
//! wire format) on arbitrary bytes: a value or an error, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqlink::format::{AvroSchema, ColumnType, Decoder, Schema};

fn formats() -> &'static [Decoder] {
    static F: OnceLock<Vec<Decoder>> = OnceLock::new();
    F.get_or_init(|| {
        let avro = AvroSchema::parse(
            r#"{"type":"record","name":"T","fields":[
                {"name":"s","type":"string"},{"name":"n","type":["null","long"]},
                {"name":"m","type":{"type":"map","values":{"type":"array","items":"double"}}},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
                {"name":"f","type":{"type":"fixed","name":"F","size":3}},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )
        .unwrap();
        vec![
            Decoder::Json {
                schema: Some(Schema::new([
                    ("a", ColumnType::Text),
                    ("b", ColumnType::BigInt),
                    ("c", ColumnType::Double),
                    ("d", ColumnType::Boolean),
                    ("e", ColumnType::Timestamp),
                    ("f", ColumnType::Json),
                    ("g", ColumnType::Bytea),
                ])),
            },
            Decoder::Json { schema: None },
            Decoder::Avro { schema: Arc::new(avro) },
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    for f in formats() {
        if let Ok(v) = f.decode("t", &payload) {
            let _ = v.to_json();
        }
    }
    let _ = mqlink::format::avro::confluent_split(data);
});
