//! The versioned record envelope: `[version: u8] ++ rmp-serde compact encoding`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The record format this binary writes, and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;

/// Encodes a record with its version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_VERSION);
    rmp_serde::encode::write(&mut out, value)?;
    Ok(out)
}

/// Decodes a record, refusing versions this binary does not know. `key` only labels errors.
pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let (&version, body) =
        bytes.split_first().ok_or_else(|| StoreError::UnknownVersion { key: key.to_vec(), version: 0 })?;
    match version {
        1 => rmp_serde::from_slice(body).map_err(|source| StoreError::Decode { key: key.to_vec(), source }),
        _ => Err(StoreError::UnknownVersion { key: key.to_vec(), version }),
    }
}

/// What an idempotency key maps to: the event first stored under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub event_id: u64,
    pub received_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventRecord, LogRecord};
    use proptest::prelude::*;

    fn event(payload: String, routes: Vec<u64>) -> EventRecord {
        EventRecord {
            event_type: "ticket.created".into(),
            channels: vec!["client_1".into()],
            payload,
            received_at: 1,
            idempotency_key: None,
            routes,
        }
    }

    #[test]
    fn a_record_from_a_newer_format_is_refused_not_misread() {
        let mut bytes = encode(&IdempotencyRecord { event_id: 1, received_at: 2 }).unwrap_or_default();
        bytes[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            decode::<IdempotencyRecord>(b"k", &bytes),
            Err(StoreError::UnknownVersion { version, .. }) if version == FORMAT_VERSION + 1
        ));
        assert!(decode::<IdempotencyRecord>(b"k", &[]).is_err());
    }

    #[test]
    fn truncated_and_corrupt_records_are_errors_not_panics() {
        let bytes =
            encode(&LogRecord { events: vec![event("{\"a\":1}".into(), vec![1, 2])] }).unwrap_or_default();
        for cut in 0..bytes.len() {
            assert!(decode::<LogRecord>(b"k", &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct V1 {
        a: u64,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct V1WithNewField {
        a: u64,
        #[serde(default)]
        b: Option<String>,
    }

    #[test]
    fn an_older_record_reads_into_a_struct_with_new_defaulted_fields() {
        let old = encode(&V1 { a: 7 }).unwrap_or_default();
        let new: V1WithNewField = decode(b"k", &old).unwrap_or(V1WithNewField { a: 0, b: Some("x".into()) });
        assert_eq!(new, V1WithNewField { a: 7, b: None });
    }

    proptest! {
        #[test]
        fn log_records_round_trip(payload in ".{0,64}", routes in proptest::collection::vec(any::<u64>(), 0..8)) {
            let rec = LogRecord { events: vec![event(payload, routes)] };
            let bytes = encode(&rec).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: LogRecord = decode(b"k", &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, rec);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<LogRecord>(b"k", &bytes);
        }
    }
}
