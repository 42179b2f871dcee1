//! Endpoint signing secrets sealed at rest with `auth.master_key`, so that a copy of the data directory
//! (a backup, a stolen disk) does not give away the secrets receivers verify deliveries with.
//!
//! - Cipher: XChaCha20-Poly1305 (the `chacha20poly1305` crate), a random 192-bit nonce per sealing (no
//!   counter to keep), the endpoint's id as associated data, so a sealed secret copied onto another
//!   endpoint's record does not open.
//! - Key: SHA-256 of a domain-separation label and the configured master key. The master key is meant
//!   to be random (`openssl rand -base64 32`); config refuses one shorter than
//!   [`MIN_MASTER_KEY_LEN`] characters.
//! - Stored form: `sealed:v1:` + base64 of nonce ‖ ciphertext ‖ tag. Anything else is a plaintext
//!   secret, as written by a hookd without a master key; it is sealed on the next write of its
//!   endpoint, and [`crate::store::Store::seal_plaintext_secrets`] seals them all at start.
//! - A sealed secret with no master key configured, or with another one, is an error at start: hookd
//!   cannot sign with a secret it cannot read, and guessing would sign with the wrong one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

/// Shortest master key accepted: about 190 bits as base64, far from guessable.
pub const MIN_MASTER_KEY_LEN: usize = 32;

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;

/// The key that seals secrets; the master key itself is not kept.
#[derive(Clone)]
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Why a stored secret could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "endpoint {endpoint}'s signing secret is sealed, and no auth.master_key is configured: set the master key this data dir was written with"
    )]
    NoKey { endpoint: u64 },
    #[error(
        "endpoint {endpoint}'s signing secret does not open with the configured auth.master_key (another key, or a damaged record)"
    )]
    WrongKey { endpoint: u64 },
}

impl MasterKey {
    /// The key derived from `auth.master_key`; `None` when it is empty (secrets are then stored as
    /// they are, and hookd says so at start).
    pub fn from_config(master_key: &str) -> Option<MasterKey> {
        if master_key.is_empty() {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"hookd endpoint-secret sealing key v1\0");
        h.update(master_key.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        Some(MasterKey { cipher: XChaCha20Poly1305::new(Key::from_slice(&key)) })
    }

    /// Seals `secret` for endpoint `endpoint`.
    pub fn seal(&self, endpoint: u64, secret: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = endpoint.to_be_bytes();
        let payload = Payload { msg: secret.as_bytes(), aad: &aad };
        // Encryption fails only for messages over 256 GiB.
        let sealed = self.cipher.encrypt(XNonce::from_slice(&nonce), payload).unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(raw))
    }

    fn open_sealed(&self, endpoint: u64, body: &str) -> Result<String, SealError> {
        let wrong = || SealError::WrongKey { endpoint };
        let raw = STANDARD.decode(body).map_err(|_| wrong())?;
        let (nonce, sealed) = raw.split_at_checked(NONCE_LEN).ok_or_else(wrong)?;
        let aad = endpoint.to_be_bytes();
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
            .map_err(|_| wrong())?;
        String::from_utf8(plain).map_err(|_| wrong())
    }
}

/// Is this stored text a sealed secret?
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The secret as stored: sealed when there is a key, as is otherwise.
pub fn seal(key: Option<&MasterKey>, endpoint: u64, secret: &str) -> String {
    match key {
        Some(k) if !is_sealed(secret) => k.seal(endpoint, secret),
        _ => secret.to_owned(),
    }
}

/// The secret from its stored text.
pub fn open(key: Option<&MasterKey>, endpoint: u64, stored: &str) -> Result<String, SealError> {
    match (stored.strip_prefix(PREFIX), key) {
        (None, _) => Ok(stored.to_owned()),
        (Some(body), Some(k)) => k.open_sealed(endpoint, body),
        (Some(_), None) => Err(SealError::NoKey { endpoint }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> MasterKey {
        MasterKey::from_config(text).unwrap_or_else(|| panic!("no key"))
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_endpoint_only() {
        let k = key("k".repeat(32).as_str());
        let stored = seal(Some(&k), 7, SECRET);
        assert!(is_sealed(&stored) && !stored.contains(SECRET), "{stored}");
        assert_eq!(open(Some(&k), 7, &stored).ok().as_deref(), Some(SECRET));
        // Another endpoint's record, another key, no key, a damaged text: refused.
        assert!(matches!(open(Some(&k), 8, &stored), Err(SealError::WrongKey { endpoint: 8 })));
        assert!(open(Some(&key("x".repeat(32).as_str())), 7, &stored).is_err());
        assert!(matches!(open(None, 7, &stored), Err(SealError::NoKey { .. })));
        let mut damaged = stored.clone();
        damaged.pop();
        damaged.push('A');
        assert!(open(Some(&k), 7, &damaged).is_err());
        assert!(open(Some(&k), 7, "sealed:v1:!!").is_err());
        assert!(open(Some(&k), 7, "sealed:v1:").is_err());
    }

    #[test]
    fn each_sealing_differs_and_plaintext_passes_through() {
        let k = key("m".repeat(40).as_str());
        assert_ne!(seal(Some(&k), 1, SECRET), seal(Some(&k), 1, SECRET));
        assert_eq!(seal(None, 1, SECRET), SECRET);
        assert_eq!(open(Some(&k), 1, SECRET).ok().as_deref(), Some(SECRET));
        assert_eq!(open(None, 1, SECRET).ok().as_deref(), Some(SECRET));
        // Sealing what is already sealed leaves it as it is.
        let once = seal(Some(&k), 1, SECRET);
        assert_eq!(seal(Some(&k), 1, &once), once);
        assert!(MasterKey::from_config("").is_none());
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }
}
