//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
//!
//! An endpoint has one secret, two while it is being rotated: the header then carries one `v1,` signature
//! per secret, separated by spaces, and a receiver accepts the delivery if any of them verifies.
//!
//! Invariants: a [`Secret`] always holds 24..=64 key bytes (so it fits in one SHA-256 block, see
//! [`keyed_mac`]); the key never appears in `Debug` output. Signing is on the hot path of every attempt, so
//! the signed message is fed to the MAC in parts instead of being built as one string.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::digest::{Key, KeyInit};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix that marks a Standard Webhooks symmetric secret.
const PREFIX: &str = "whsec_";
/// Shortest key accepted: 192 bits, what other Standard Webhooks implementations generate at the least.
const MIN_KEY_BYTES: usize = 24;
/// Longest key accepted: one SHA-256 block; longer keys would be hashed by HMAC and gain nothing.
const MAX_KEY_BYTES: usize = 64;
/// Length of a generated key: 256 bits.
const GENERATED_KEY_BYTES: usize = 32;

/// An endpoint's signing secret.
#[derive(Clone)]
pub struct Secret {
    /// The raw key, kept to print it back as `whsec_…`.
    key: Box<[u8]>,
    /// The HMAC state after absorbing the key: cloning it per signature saves the key schedule.
    mac: HmacSha256,
}

/// Why a `whsec_…` string is not a usable secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret must start with \"whsec_\"")]
    MissingPrefix,
    #[error("a webhook secret must be standard base64 after \"whsec_\"")]
    Base64(#[source] base64::DecodeError),
    #[error("a webhook secret must decode to {MIN_KEY_BYTES}..={MAX_KEY_BYTES} bytes, not {0}")]
    Length(usize),
}

impl Secret {
    /// A fresh 256-bit secret from the operating system's generator (via `rand`'s thread RNG, which is
    /// seeded from it and cryptographically secure).
    pub fn generate() -> Secret {
        let mut key = [0u8; GENERATED_KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        Secret::from_key(&key)
    }

    /// Parses `whsec_<standard base64>` of 24..=64 bytes.
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        let encoded = s.strip_prefix(PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD.decode(encoded).map_err(SecretError::Base64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret::from_key(&key))
    }

    /// The secret as shown to a tenant: `whsec_<base64>`.
    pub fn to_whsec(&self) -> String {
        let mut out = String::with_capacity(PREFIX.len() + self.key.len().div_ceil(3) * 4);
        out.push_str(PREFIX);
        STANDARD.encode_string(&self.key, &mut out);
        out
    }

    /// Callers guarantee `key.len() <= MAX_KEY_BYTES`.
    fn from_key(key: &[u8]) -> Secret {
        Secret { key: key.into(), mac: keyed_mac(key) }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// HMAC-SHA256 keyed with `key`, which must be at most one block (64 bytes) long.
///
/// RFC 2104 pads a key shorter than the block with zeros, so keying with the zero-padded block is the same
/// MAC as keying with the key itself, and this constructor is infallible (no `InvalidLength` to unwrap).
fn keyed_mac(key: &[u8]) -> HmacSha256 {
    debug_assert!(key.len() <= MAX_KEY_BYTES);
    let mut block = Key::<HmacSha256>::default();
    let len = key.len().min(block.len());
    block[..len].copy_from_slice(&key[..len]);
    <HmacSha256 as KeyInit>::new(&block)
}

/// `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`.
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(SIGNATURE_LEN);
    push_signature(&mut out, secret, msg_id, timestamp, body);
    out
}

/// The `webhook-signature` header value: one `v1,` signature per secret, separated by spaces.
pub fn signature_header(secrets: &[&Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(secrets.len() * (SIGNATURE_LEN + 1));
    for (i, secret) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_signature(&mut out, secret, msg_id, timestamp, body);
    }
    out
}

/// `"v1,"` plus the base64 of a 32-byte tag.
const SIGNATURE_LEN: usize = 3 + 44;

fn push_signature(out: &mut String, secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) {
    let mut mac = secret.mac.clone();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(Decimal::new(timestamp).as_bytes());
    mac.update(b".");
    mac.update(body);
    out.push_str("v1,");
    STANDARD.encode_string(mac.finalize().into_bytes(), out);
}

/// An `i64` in decimal, formatted on the stack.
struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(v: i64) -> Decimal {
        // 19 digits for |i64::MIN| plus the sign.
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        let mut n = v.unsigned_abs();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if v < 0 {
            start -= 1;
            buf[start] = b'-';
        }
        Decimal { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The published test vector of the Standard Webhooks reference libraries:
    // standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py (`test_sign_function`)
    // and libraries/javascript/src/webhook.test.ts ("sign function works").
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_PAYLOAD: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn now() -> i64 {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        since_epoch.as_secs() as i64
    }

    fn verify_with_reference(
        whsec: &str,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
        header: &str,
    ) -> Result<(), standardwebhooks::WebhookError> {
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", msg_id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        standardwebhooks::Webhook::new(whsec)?.verify(body, &headers)
    }

    #[test]
    fn the_published_test_vector_signs_to_the_published_signature() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(sign(&secret, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD.as_bytes()), SPEC_SIGNATURE);
        assert_eq!(
            signature_header(&[&secret], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD.as_bytes()),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn a_secret_prints_back_as_it_was_parsed() {
        assert_eq!(Secret::parse(SPEC_SECRET).unwrap().to_whsec(), SPEC_SECRET);
        let generated = Secret::generate();
        let reparsed = Secret::parse(&generated.to_whsec()).unwrap();
        assert_eq!(reparsed.key, generated.key);
        assert_eq!(generated.key.len(), 32);
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(Secret::generate().key, Secret::generate().key);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        let printed = format!("{secret:?}");
        assert_eq!(printed, "Secret(<redacted>)");
    }

    #[test]
    fn bad_secrets_are_rejected_with_the_reason() {
        // No prefix (other libraries accept a bare key; our API always speaks whsec_).
        assert!(matches!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(SecretError::MissingPrefix)));
        assert!(matches!(Secret::parse(""), Err(SecretError::MissingPrefix)));
        assert!(matches!(
            Secret::parse("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        ));
        // Not base64, URL-safe alphabet, missing padding, whitespace.
        assert!(matches!(Secret::parse("whsec_not base64!"), Err(SecretError::Base64(_))));
        let url_safe = format!("whsec_{}", "-_".repeat(16));
        assert!(matches!(Secret::parse(&url_safe), Err(SecretError::Base64(_))));
        let unpadded = format!("whsec_{}", STANDARD.encode([7u8; 25]).trim_end_matches('='));
        assert!(matches!(Secret::parse(&unpadded), Err(SecretError::Base64(_))));
        // Too short, too long, empty.
        assert!(matches!(Secret::parse("whsec_"), Err(SecretError::Length(0))));
        let short = format!("whsec_{}", STANDARD.encode([1u8; 23]));
        assert!(matches!(Secret::parse(&short), Err(SecretError::Length(23))));
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        assert!(matches!(Secret::parse(&long), Err(SecretError::Length(65))));
        // The bounds themselves are fine.
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 24]))).is_ok());
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 64]))).is_ok());
    }

    #[test]
    fn a_rotation_header_carries_one_signature_per_secret_and_each_verifies() {
        let old = Secret::generate();
        let new = Secret::generate();
        let ts = now();
        let body = br#"{"id":"evt_1"}"#;
        let header = signature_header(&[&old, &new], "msg_1", ts, body);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [sign(&old, "msg_1", ts, body), sign(&new, "msg_1", ts, body)]);
        for secret in [&old, &new] {
            verify_with_reference(&secret.to_whsec(), "msg_1", ts, body, &header).unwrap();
        }
        let stranger = Secret::generate();
        assert!(verify_with_reference(&stranger.to_whsec(), "msg_1", ts, body, &header).is_err());
        assert_eq!(signature_header(&[], "msg_1", ts, body), "");
    }

    proptest! {
        #[test]
        fn signatures_verify_with_the_independent_implementation(
            key in proptest::collection::vec(any::<u8>(), MIN_KEY_BYTES..=MAX_KEY_BYTES),
            msg_id in "[a-zA-Z0-9_]{1,40}",
            skew in -200i64..200,
            // The reference implementation only signs UTF-8 bodies; ours are JSON or form-encoded anyway.
            body in ".{0,512}",
        ) {
            let body = body.into_bytes();
            let whsec = format!("whsec_{}", STANDARD.encode(&key));
            let secret = Secret::parse(&whsec).unwrap();
            // The reference verifier insists on a timestamp within 5 minutes of now.
            let ts = now() + skew;
            let header = sign(&secret, &msg_id, ts, &body);
            prop_assert!(verify_with_reference(&whsec, &msg_id, ts, &body, &header).is_ok());
            // Any other body fails.
            let mut tampered = body.clone();
            tampered.push(b'x');
            prop_assert!(verify_with_reference(&whsec, &msg_id, ts, &tampered, &header).is_err());
        }

        #[test]
        fn signing_in_parts_equals_signing_the_joined_message(
            key in proptest::collection::vec(any::<u8>(), MIN_KEY_BYTES..=MAX_KEY_BYTES),
            msg_id in ".{0,40}",
            ts in any::<i64>(),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let secret = Secret::from_key(&key);
            let mut joined = format!("{msg_id}.{ts}.").into_bytes();
            joined.extend_from_slice(&body);
            let mut mac = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
            mac.update(&joined);
            let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
            prop_assert_eq!(sign(&secret, &msg_id, ts, &body), expected);
        }

        #[test]
        fn decimal_formats_like_display(v in any::<i64>()) {
            let (ours, std) = (Decimal::new(v), v.to_string());
            prop_assert_eq!(ours.as_bytes(), std.as_bytes());
        }
    }

    #[test]
    fn decimal_handles_the_extremes() {
        for v in [0, -1, 9, 10, i64::MIN, i64::MAX] {
            assert_eq!(Decimal::new(v).as_bytes(), v.to_string().as_bytes());
        }
    }
}
