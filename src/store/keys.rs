//! Key encoding for the trees (see the table in the module above).

pub const TENANT: u8 = b't';
pub const ENDPOINT: u8 = b'e';
pub const EVENT_TYPE: u8 = b'y';
pub const META: u8 = b'm';
pub const API_KEY: u8 = b'k';
pub const LOG: u8 = b'L';
pub const IDEMPOTENCY: u8 = b'I';
pub const LOG_META: u8 = b'M';
pub const CURSOR: u8 = b'C';
pub const DELIVERY: u8 = b'D';
pub const QUEUE: u8 = b'Q';
pub const ATTEMPT: u8 = b'A';
pub const ATTEMPT_BY_ENDPOINT: u8 = b'a';
pub const BATCH_OF: u8 = b'b';
pub const ATTEMPT_BY_WEBHOOK: u8 = b'v';
pub const FAILED_ATTEMPT: u8 = b'x';
pub const LATE_ATTEMPT: u8 = b'l';
pub const WEBHOOK_RUN: u8 = b'w';
pub const BATCH_RANGE: u8 = b'B';
pub const ENDPOINT_STATS: u8 = b'S';
pub const AUDIT: u8 = b'U';

/// `prefix ++ name`.
pub fn named(prefix: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(prefix);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `prefix ++ a`.
pub fn one(prefix: u8, a: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k
}

/// `prefix ++ a ++ b`.
pub fn two(prefix: u8, a: u64, b: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..17].copy_from_slice(&b.to_be_bytes());
    k
}

/// `prefix ++ a ++ b ++ c`.
pub fn three(prefix: u8, a: u64, b: u64, c: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = prefix;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..17].copy_from_slice(&b.to_be_bytes());
    k[17..25].copy_from_slice(&c.to_be_bytes());
    k
}

/// `prefix ++ tenant`: the range of one tenant's records.
pub fn tenant_prefix(prefix: u8, tenant: u64) -> [u8; 9] {
    one(prefix, tenant)
}

/// `prefix ++ tenant ++ name` (idempotency keys).
pub fn tenant_named(prefix: u8, tenant: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + name.len());
    k.extend_from_slice(&one(prefix, tenant));
    k.extend_from_slice(name.as_bytes());
    k
}

/// The big-endian u64 at the end of a key (0 when the key is shorter than 8 bytes).
pub fn trailing_u64(key: &[u8]) -> u64 {
    key.len().checked_sub(8).map_or(0, |start| u64_at(key, start))
}

/// The big-endian u64 at `start` (0 when out of range).
pub fn u64_at(key: &[u8], start: usize) -> u64 {
    key.get(start..start + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_sort_like_their_numbers(a: u64, b: u64, c: u64, d: u64) {
            prop_assert_eq!((a, b).cmp(&(c, d)), two(LOG, a, b).cmp(&two(LOG, c, d)));
            prop_assert_eq!(trailing_u64(&two(LOG, a, b)), b);
            prop_assert_eq!(u64_at(&three(QUEUE, a, b, c), 9), b);
        }
    }
}
