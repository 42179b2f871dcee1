//! Authentication: `Authorization: Bearer <token>`.
//!
//! For now the only credential is the operator's admin token (global, every scope). Only its SHA-256 is
//! kept in memory, and a presented token is hashed and compared in constant time, so neither the
//! comparison's timing nor a memory dump gives the token away.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::AppState;
use super::problem::Problem;

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` header; `None` when absent or of another scheme.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

pub async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, Problem> {
    let header = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let Some(token) = bearer(header) else {
        return Err(Problem::unauthorized("missing bearer token (Authorization: Bearer <token>)"));
    };
    if !digests_equal(&hash_token(token), &state.admin_token_hash) {
        return Err(Problem::unauthorized("invalid token"));
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_nothing_else_is() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn digests_compare_by_value() {
        assert!(digests_equal(&hash_token("a"), &hash_token("a")));
        assert!(!digests_equal(&hash_token("a"), &hash_token("b")));
    }
}
