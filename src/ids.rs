//! Identifiers: prefixed, sortable, unique strings (`evt_…`, `ep_…`, `att_…`, `bat_…`).
//!
//! Every generated id is a `u64` from one hybrid clock: `max(previous + 1, unix_micros << 12)`. Ids therefore
//! sort by creation time, stay unique after a restart (the clock is seeded with the largest id in the store,
//! so a clock that went backwards cannot reuse one), and stay unique across a wiped data dir as long as the
//! wall clock moved on — which matters because receivers dedupe on `webhook-id`.
//!
//! The text form is the prefix plus the `u64` in 13 characters of lowercase Crockford base32, most
//! significant bits first, so the strings sort like the numbers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const ENCODED_LEN: usize = 13;

/// Encodes `v` in 13 order-preserving base32 characters.
pub fn encode_u64(v: u64) -> String {
    encoded(&encode_u64_into(v)).to_owned()
}

/// [`encode_u64`] into a stack buffer (read it with [`encoded`]): ids are written on every response.
pub fn encode_u64_into(v: u64) -> [u8; ENCODED_LEN] {
    let mut out = [0u8; ENCODED_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 5 * (ENCODED_LEN - 1 - i);
        // 13 * 5 = 65 bits: the first character carries only the top 4 bits.
        let digit = (v >> shift) & 0x1f;
        *slot = ALPHABET[digit as usize];
    }
    out
}

/// The text of an [`encode_u64_into`] buffer (ASCII from the alphabet, so always valid).
pub fn encoded(buf: &[u8; ENCODED_LEN]) -> &str {
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Decodes what [`encode_u64`] wrote; `None` for anything else (wrong length, letters outside the alphabet,
/// overflow). Accepts upper case too, as Crockford base32 does.
pub fn decode_u64(s: &str) -> Option<u64> {
    if s.len() != ENCODED_LEN {
        return None;
    }
    let mut v: u64 = 0;
    for (i, c) in s.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c.to_ascii_lowercase())? as u64;
        if i == 0 && digit > 0xf {
            return None;
        }
        v = (v << 5) | digit;
    }
    Some(v)
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The text prefix of this kind of id, with its underscore.
            pub const PREFIX: &'static str = $prefix;

            /// Parses the text form; `None` when it is not an id of this kind.
            pub fn parse(s: &str) -> Option<Self> {
                s.strip_prefix($prefix).and_then(decode_u64).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($prefix)?;
                f.write_str(encoded(&encode_u64_into(self.0)))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // Prefix and digits side by side on the stack: one string, no formatting machinery.
                let mut buf = [0u8; $prefix.len() + ENCODED_LEN];
                buf[..$prefix.len()].copy_from_slice($prefix.as_bytes());
                buf[$prefix.len()..].copy_from_slice(&encode_u64_into(self.0));
                s.serialize_str(std::str::from_utf8(&buf).unwrap_or_default())
            }
        }
    };
}

prefixed_id!(
    /// An event in the log.
    EventId,
    "evt_"
);
prefixed_id!(
    /// An endpoint (a subscriber URL with its settings).
    EndpointId,
    "ep_"
);
prefixed_id!(
    /// One HTTP request made to an endpoint.
    AttemptId,
    "att_"
);
prefixed_id!(
    /// A group of events delivered in one request.
    BatchId,
    "bat_"
);
prefixed_id!(
    /// An entry of the audit trail.
    AuditId,
    "aud_"
);

/// The hybrid clock that hands out every id. Cheap to share (`Arc`), lock-free.
#[derive(Debug)]
pub struct IdGen {
    last: AtomicU64,
}

impl IdGen {
    /// A generator whose ids are all greater than `floor` (the largest id already stored).
    pub fn new(floor: u64) -> Self {
        Self { last: AtomicU64::new(floor) }
    }

    /// One new id.
    pub fn next(&self) -> u64 {
        self.next_block(1)
    }

    /// The first of `n` consecutive new ids (`n >= 1`).
    pub fn next_block(&self, n: u64) -> u64 {
        let now = crate::time::now_micros() << 12;
        let n = n.max(1);
        let mut first = 0;
        // fetch_update retries on contention; the closure is pure.
        let _ = self.last.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
            first = now.max(last.saturating_add(1));
            Some(first.saturating_add(n - 1))
        });
        first
    }

    /// The largest id handed out so far.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoding_has_fixed_length_and_prefix() {
        let id = EventId(0x0123_4567_89ab_cdef);
        let s = id.to_string();
        assert!(s.starts_with("evt_"));
        assert_eq!(s.len(), 4 + 13);
        assert_eq!(EventId::parse(&s), Some(id));
        assert_eq!(EndpointId::parse(&s), None, "another kind's prefix is refused");
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(json, format!("\"{s}\""), "serialized as its text form");
    }

    #[test]
    fn garbage_is_not_an_id() {
        for bad in [
            "",
            "evt_",
            "evt_zzzzzzzzzzzzz",
            "evt_0000000000000a",
            "evt_00000000000o0",
            "evt_g000000000000",
            "evt_!!!!!!!!!!!!!",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_are_strictly_increasing_in_blocks() {
        let generator = IdGen::new(0);
        let a = generator.next_block(10);
        let b = generator.next();
        assert!(b >= a + 10);
        let seeded = IdGen::new(u64::MAX / 2);
        assert!(seeded.next() > u64::MAX / 2, "a seed from the store wins over a clock that went back");
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_preserves_order(a: u64, b: u64) {
            prop_assert_eq!(decode_u64(&encode_u64(a)), Some(a));
            prop_assert_eq!(a.cmp(&b), encode_u64(a).cmp(&encode_u64(b)));
        }
    }
}
