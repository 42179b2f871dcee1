//! Authentication and authorization: `Authorization: Bearer <token>` on every `/v1` route.
//!
//! Two kinds of credential:
//! - the operator's admin token (`auth.admin_token`): global, every scope. Only its SHA-256 is kept;
//! - API keys, `hk_<prefix>_<secret>` (see [`generate_key`]): found in the in-memory key table by their
//!   non-secret prefix, then checked by comparing SHA-256 digests in constant time, so neither the
//!   comparison's timing nor a memory dump or a copy of the store gives a key away.
//!
//! What each route needs is decided in one place, [`ROUTES`]: a method's scope (`GET`/`HEAD` read,
//! `POST`/`PUT`/`PATCH` write, `DELETE` delete), `admin` for admin-class routes, and who may use it at
//! all. A route missing from the table is refused for every credential, the admin token included: a new
//! route cannot go unchecked, it fails closed until someone decides its class.
//!
//! Refusals: 401 when the credential is missing, malformed, unknown, wrong, expired or revoked; 403 when
//! it is valid but lacks a scope, is bound to another tenant than the path's, is tenant-bound on an
//! operator-only route, or is used from an address outside its `allowed_ips`. The [`Principal`] of an
//! accepted request is left in its extensions for the handlers (and, later, the audit log).

use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::{Either, Ready, ready};
use ipnet::IpNet;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tower::{Layer, Service};

use super::AppState;
use super::problem::Problem;
use crate::model::{KeyTenant, Scope};

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

// ---- key text ----

/// Every API key starts with this, so secret scanners (and people) recognize one.
pub const KEY_START: &str = "hk_";
/// Characters of the prefix: 60 random bits, enough to make collisions rare (they are retried anyway).
const PREFIX_LEN: usize = 12;
/// Characters of the secret: 52 × 5 = 260 random bits.
const SECRET_LEN: usize = 52;
/// Lowercase Crockford base32, as in ids: no `_` (the separator), nothing to misread.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A freshly generated key: the text to show once, and what is stored.
pub struct NewKey {
    pub prefix: String,
    pub text: String,
    pub sha256: [u8; 32],
}

/// `n` characters of [`ALPHABET`] from the OS-seeded CSPRNG. 256 is a multiple of 32, so taking each
/// byte modulo 32 keeps every character uniform.
fn random_chars(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| ALPHABET[usize::from(b & 31)] as char).collect()
}

/// A new key `hk_<prefix>_<secret>`: the prefix finds the key (it is shown in listings), the secret
/// proves it; the stored digest covers the whole text, so a secret is only good under its own prefix.
pub fn generate_key() -> NewKey {
    let prefix = random_chars(PREFIX_LEN);
    let text = format!("{KEY_START}{prefix}_{}", random_chars(SECRET_LEN));
    let sha256 = hash_token(&text);
    NewKey { prefix, text, sha256 }
}

/// The prefix of a well-formed key text; `None` for anything else.
pub fn key_prefix(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(KEY_START)?;
    let (prefix, secret) = rest.split_at_checked(PREFIX_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let well_formed = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
    (well_formed(prefix, PREFIX_LEN) && well_formed(secret, SECRET_LEN)).then_some(prefix)
}

// ---- IP allow-lists ----

/// Parses one `allowed_ips` entry: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address
/// (`127.0.0.1`, meaning `/32`). A CIDR with host bits set (`10.1.2.3/8`) is refused rather than guessed at.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    let net: IpNet =
        text.parse().map_err(|_| "must be an IP address or a CIDR like 10.0.0.0/8".to_owned())?;
    if net.trunc() != net {
        return Err(format!("has host bits set; the network is {}", net.trunc()));
    }
    Ok(net)
}

/// Is `ip` inside one of `nets`? An IPv4 client seen through a dual-stack socket (`::ffff:10.1.2.3`)
/// is matched as the IPv4 address it is.
pub fn ip_allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

// ---- scopes and principals ----

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(0b1111);

    fn bit(scope: Scope) -> u8 {
        match scope {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Delete => 4,
            Scope::Admin => 8,
        }
    }

    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |acc, s| acc | Scopes::bit(*s)))
    }

    pub fn has(self, scope: Scope) -> bool {
        self.0 & Scopes::bit(scope) != 0
    }

    /// Every scope of `other` is in `self`.
    pub fn covers(self, other: Scopes) -> bool {
        other.0 & !self.0 == 0
    }

    /// The scopes of `other` missing from `self`.
    pub fn missing(self, other: Scopes) -> Vec<Scope> {
        [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin]
            .into_iter()
            .filter(|s| other.has(*s) && !self.has(*s))
            .collect()
    }
}

/// Which credential made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    AdminToken,
    ApiKey(u64),
}

/// Who is calling: left in the request's extensions by [`Authenticate`].
#[derive(Debug, Clone)]
pub struct Principal {
    pub credential: Credential,
    pub scopes: Scopes,
    /// `None`: global (the admin token, or a key bound to no tenant).
    pub tenant: Option<KeyTenant>,
    /// The peer address of the connection (no proxy header is trusted); `None` only when the server was
    /// not served with connect info.
    pub client_ip: Option<IpAddr>,
}

impl Principal {
    /// `admin token` or the key's id, for logs and the audit trail.
    pub fn who(&self) -> String {
        match self.credential {
            Credential::AdminToken => "admin token".to_owned(),
            Credential::ApiKey(id) => super::api_keys::key_id_text(id),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Problem> {
        // Only reachable behind `Authenticate`; a route outside it has no principal and gets nothing.
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| Problem::unauthorized("not authenticated"))
    }
}

pub fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}

// ---- the route table ----

/// Who may use a route, beyond the scope of its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/v1/tenants/{tenant}/…`: a tenant-bound key only under its own tenant.
    Tenant,
    /// Readable by every key, tenant-bound ones included (the event catalog).
    Shared,
    /// `admin`, and global keys only: tenants, catalog writes.
    Operator,
    /// `admin`; a tenant-bound key manages its own tenant's keys only (enforced by `api_keys`).
    KeyAdmin,
}

/// Every `/v1` route (method, matched path) and its class. `HEAD` is served by `GET` routes.
/// The operations routes (`/healthz`, `/readyz`, `/openapi.json`, `/metrics`) are outside `/v1` and
/// outside [`Authenticate`]: they take no token and are not listed here.
/// `tests::the_table_lists_exactly_the_routes_of_the_router` keeps this and `api::router` in step.
pub const ROUTES: &[(&str, &str, Class)] = &[
    ("POST", "/v1/tenants", Class::Operator),
    ("GET", "/v1/tenants", Class::Operator),
    ("GET", "/v1/tenants/{tenant}", Class::Operator),
    ("PATCH", "/v1/tenants/{tenant}", Class::Operator),
    ("DELETE", "/v1/tenants/{tenant}", Class::Operator),
    ("GET", "/v1/event-types", Class::Shared),
    ("GET", "/v1/event-types/{name}", Class::Shared),
    ("PUT", "/v1/event-types/{name}", Class::Operator),
    ("DELETE", "/v1/event-types/{name}", Class::Operator),
    ("POST", "/v1/tenants/{tenant}/events", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/events", Class::Tenant),
    ("POST", "/v1/tenants/{tenant}/events/batch", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/events/{id}", Class::Tenant),
    ("POST", "/v1/tenants/{tenant}/endpoints", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/endpoints", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/endpoints/{id}", Class::Tenant),
    ("PATCH", "/v1/tenants/{tenant}/endpoints/{id}", Class::Tenant),
    ("DELETE", "/v1/tenants/{tenant}/endpoints/{id}", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/endpoints/{id}/secret", Class::Tenant),
    ("POST", "/v1/tenants/{tenant}/endpoints/{id}/secret/rotate", Class::Tenant),
    ("POST", "/v1/tenants/{tenant}/endpoints/{id}/test", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/attempts", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/attempts/{id}", Class::Tenant),
    ("POST", "/v1/tenants/{tenant}/attempts/{id}/resend", Class::Tenant),
    ("POST", "/v1/tenants/{tenant}/events/{id}/resend", Class::Tenant),
    ("POST", "/v1/tenants/{tenant}/endpoints/{id}/recover", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/endpoints/{id}/stats", Class::Tenant),
    ("GET", "/v1/tenants/{tenant}/activity", Class::Tenant),
    ("POST", "/v1/api-keys", Class::KeyAdmin),
    ("GET", "/v1/api-keys", Class::KeyAdmin),
    ("GET", "/v1/api-keys/{id}", Class::KeyAdmin),
    ("PATCH", "/v1/api-keys/{id}", Class::KeyAdmin),
    ("DELETE", "/v1/api-keys/{id}", Class::KeyAdmin),
    ("POST", "/v1/api-keys/{id}/regenerate", Class::KeyAdmin),
    // A tenant-bound key reads its own tenant's entries only (enforced by `audit::list`).
    ("GET", "/v1/audit", Class::KeyAdmin),
];

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub scope: Scope,
    pub admin: bool,
    pub class: Class,
}

/// The requirement of `method` on the route `path` (as matched, with `{placeholders}`); `None` — refuse —
/// when the route is not in [`ROUTES`] or the method carries no scope.
pub fn requirement(method: &Method, path: &str) -> Option<Requirement> {
    let (listed, scope) = match *method {
        Method::GET | Method::HEAD => (Method::GET, Scope::Read),
        Method::POST => (Method::POST, Scope::Write),
        Method::PUT => (Method::PUT, Scope::Write),
        Method::PATCH => (Method::PATCH, Scope::Write),
        Method::DELETE => (Method::DELETE, Scope::Delete),
        _ => return None,
    };
    let &(_, _, class) = ROUTES.iter().find(|(m, p, _)| *m == listed.as_str() && *p == path)?;
    Some(Requirement { scope, admin: matches!(class, Class::Operator | Class::KeyAdmin), class })
}

// ---- the middleware ----

/// Authenticates the bearer token, authorizes the route, and leaves the [`Principal`] in the request;
/// a refusal is answered here and the route's handler never runs. Applied to every `/v1` route with
/// `route_layer`, so that the matched route (and its `{tenant}`) is known.
///
/// A tower layer rather than `axum::middleware::from_fn`: every request passes here, and `from_fn`
/// boxes the inner service's future and clones the boxed inner service per request.
#[derive(Clone)]
pub struct Authenticate {
    state: AppState,
}

impl Authenticate {
    pub fn new(state: AppState) -> Authenticate {
        Authenticate { state }
    }
}

impl<S> Layer<S> for Authenticate {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated { state: self.state.clone(), inner }
    }
}

/// A service wrapped by [`Authenticate`].
#[derive(Clone)]
pub struct Authenticated<S> {
    state: AppState,
    inner: S,
}

impl<S> Service<Request> for Authenticated<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        match admit(&self.state, &mut parts) {
            Ok(principal) => {
                parts.extensions.insert(principal);
                Either::Right(self.inner.call(Request::from_parts(parts, body)))
            }
            Err(refusal) => Either::Left(ready(Ok(refusal.into_response()))),
        }
    }
}

/// The principal of an admitted request, or the refusal to answer instead.
fn admit(state: &AppState, parts: &mut Parts) -> Result<Principal, Problem> {
    let client_ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_canonical());
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let Some(token) = bearer(header) else {
        return Err(Problem::unauthorized("missing bearer token (Authorization: Bearer <token>)"));
    };
    let principal = identify(state, token, client_ip)?;

    let matched = parts.extensions.get::<MatchedPath>().cloned();
    let path = matched.as_ref().map_or("", MatchedPath::as_str);
    let Some(need) = requirement(&parts.method, path) else {
        tracing::error!(method = %parts.method, route = %path, "route missing from the access table; refused");
        return Err(forbidden("this route has no access rule and is refused"));
    };
    let path_tenant = match need.class {
        Class::Tenant => Some(path_tenant(parts, state)?),
        _ => None,
    };
    authorize(state, &principal, need, path_tenant.as_deref())?;
    Ok(principal)
}

/// The `{tenant}` of the matched route, percent-decoded as the handlers' extractors see it.
fn path_tenant(parts: &mut Parts, state: &AppState) -> Result<String, Problem> {
    // The extractor only reads what routing left in the request: it is ready at its first poll. Were
    // that ever to change, the request is refused rather than waited for.
    let params = RawPathParams::from_request_parts(parts, state)
        .now_or_never()
        .ok_or_else(|| forbidden("the route's tenant could not be read; refused"))?
        .map_err(|e| Problem::bad_request(format!("invalid path: {}", e.body_text())))?;
    let tenant = params.iter().find(|(k, _)| *k == "tenant").map(|(_, v)| v.to_owned());
    tenant.ok_or_else(|| forbidden("this route has no tenant and is refused"))
}

/// The principal a token stands for, or the 401 (or, for an address outside the key's list, 403).
fn identify(state: &AppState, token: &str, client_ip: Option<IpAddr>) -> Result<Principal, Problem> {
    let digest = hash_token(token);
    if digests_equal(&digest, &state.admin_token_hash) {
        return Ok(Principal {
            credential: Credential::AdminToken,
            scopes: Scopes::ALL,
            tenant: None,
            client_ip,
        });
    }
    let Some(prefix) = key_prefix(token) else {
        return Err(Problem::unauthorized("malformed token: neither the admin token nor an API key (hk_…)"));
    };
    let keys = state.keys.snapshot();
    // An unknown prefix and a wrong secret read the same, so neither tells which prefixes exist.
    let Some(entry) = keys.by_prefix(prefix).filter(|e| digests_equal(&digest, &e.record.secret_sha256))
    else {
        return Err(Problem::unauthorized("invalid API key"));
    };
    // Past this point the caller has proven they hold the key, so the key's state may be told.
    let now = crate::time::now_ms();
    let rec = &entry.record;
    if rec.revoked_at.is_some() {
        return Err(Problem::unauthorized("the API key was revoked"));
    }
    if rec.expires_at.is_some_and(|t| t <= now) {
        return Err(Problem::unauthorized("the API key expired"));
    }
    if let Some(t) = &rec.tenant
        && state.registry.snapshot().tenant(&t.id).is_none_or(|live| live.serial != t.serial)
    {
        return Err(Problem::unauthorized("the API key's tenant no longer exists"));
    }
    if !entry.allows(client_ip) {
        return Err(forbidden("the API key may not be used from this address"));
    }
    entry.mark_used(now);
    Ok(Principal {
        credential: Credential::ApiKey(rec.id),
        scopes: Scopes::of(&rec.scopes),
        tenant: rec.tenant.clone(),
        client_ip,
    })
}

fn authorize(
    state: &AppState,
    p: &Principal,
    need: Requirement,
    path_tenant: Option<&str>,
) -> Result<(), Problem> {
    let lacking = |s: Scope| forbidden(format!("the API key lacks the `{}` scope", scope_name(s)));
    if !p.scopes.has(need.scope) {
        return Err(lacking(need.scope));
    }
    if need.admin && !p.scopes.has(Scope::Admin) {
        return Err(lacking(Scope::Admin));
    }
    match (need.class, &p.tenant) {
        (_, None) | (Class::Shared | Class::KeyAdmin, _) => Ok(()),
        (Class::Operator, Some(_)) => {
            Err(forbidden("operator-only route: a tenant-bound API key is refused"))
        }
        (Class::Tenant, Some(bound)) => {
            // By serial: the path's tenant must be the very tenant the key was made for.
            let same = path_tenant
                .and_then(|id| state.registry.snapshot().tenant(id).map(|t| t.serial))
                .is_some_and(|serial| serial == bound.serial);
            if same { Ok(()) } else { Err(forbidden(format!("the API key is bound to tenant {}", bound.id))) }
        }
    }
}

pub fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Read => "read",
        Scope::Write => "write",
        Scope::Delete => "delete",
        Scope::Admin => "admin",
    }
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

    #[test]
    fn generated_keys_parse_back_to_their_prefix_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(a.text.len(), KEY_START.len() + PREFIX_LEN + 1 + SECRET_LEN);
        assert_eq!(key_prefix(&a.text), Some(a.prefix.as_str()));
        assert_eq!(a.sha256, hash_token(&a.text));
        assert_ne!(a.text, b.text);
        assert_ne!(a.prefix, b.prefix);
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        let good = generate_key().text;
        let (head, secret) = good.split_at(KEY_START.len() + PREFIX_LEN + 1);
        for bad in [
            String::new(),
            "hk_".to_owned(),
            "test-admin-token".to_owned(),
            format!("HK_{}", &good[3..]),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            format!("{head}{}", secret.replace(|_: char| true, "i")),
            good.replacen('_', "-", 2),
            format!("{}_{}", &head[..head.len() - 2], secret),
            "hk_admin_0123456789abcdef".to_owned(),
            format!("{good} "),
            good.replace('0', "é"),
        ] {
            if bad != good {
                assert_eq!(key_prefix(&bad), None, "{bad:?}");
            }
        }
    }

    #[test]
    fn cidrs_and_addresses_parse_and_match() {
        let nets: Vec<IpNet> =
            ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"].iter().map(|t| parse_cidr(t).unwrap()).collect();
        assert_eq!(nets[2].to_string(), "127.0.0.1/32");
        for ok in
            ["10.1.2.3", "10.255.255.255", "2001:db8::1", "2001:db8:ffff::9", "127.0.0.1", "::ffff:10.0.0.1"]
        {
            assert!(ip_allowed(&nets, ok.parse().unwrap()), "{ok}");
        }
        for no in ["11.0.0.1", "127.0.0.2", "2001:db9::1", "::1", "::ffff:11.0.0.1"] {
            assert!(!ip_allowed(&nets, no.parse().unwrap()), "{no}");
        }
        assert!(!ip_allowed(&[], "127.0.0.1".parse().unwrap()), "an empty list matches nothing");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_cidr("::ffff:10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        for bad in ["", "10.0.0.0/33", "10.1.2.3/8", "2001:db8::1/32", "10.0.0", "localhost", "10.0.0.0/8 "] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn methods_map_to_scopes_and_unlisted_routes_or_methods_are_refused() {
        let need = |m: Method, p: &str| requirement(&m, p);
        let r = need(Method::HEAD, "/v1/tenants/{tenant}/events").unwrap();
        assert_eq!((r.scope, r.admin, r.class), (Scope::Read, false, Class::Tenant));
        let r = need(Method::POST, "/v1/tenants/{tenant}/events").unwrap();
        assert_eq!(r.scope, Scope::Write);
        let r = need(Method::DELETE, "/v1/tenants/{tenant}").unwrap();
        assert_eq!((r.scope, r.admin, r.class), (Scope::Delete, true, Class::Operator));
        let r = need(Method::PUT, "/v1/event-types/{name}").unwrap();
        assert_eq!((r.scope, r.admin, r.class), (Scope::Write, true, Class::Operator));
        let r = need(Method::GET, "/v1/event-types/{name}").unwrap();
        assert_eq!((r.scope, r.admin, r.class), (Scope::Read, false, Class::Shared));
        let r = need(Method::PATCH, "/v1/api-keys/{id}").unwrap();
        assert_eq!((r.scope, r.admin, r.class), (Scope::Write, true, Class::KeyAdmin));
        assert_eq!(need(Method::OPTIONS, "/v1/tenants"), None);
        assert_eq!(need(Method::PUT, "/v1/tenants"), None);
        assert_eq!(need(Method::GET, "/v1/something-new"), None);
        assert_eq!(need(Method::GET, ""), None);
    }

    #[test]
    fn the_table_is_consistent() {
        for (i, (m, p, class)) in ROUTES.iter().enumerate() {
            assert!(["GET", "POST", "PUT", "PATCH", "DELETE"].contains(m), "{m} {p}");
            assert!(ROUTES[..i].iter().all(|(m2, p2, _)| (m2, p2) != (m, p)), "{m} {p} is listed twice");
            // Tenant routes are exactly those under a tenant's path, so the tenant check always has a tenant.
            let under_tenant = p.starts_with("/v1/tenants/{tenant}/");
            assert_eq!(*class == Class::Tenant, under_tenant, "{m} {p}");
        }
    }

    #[test]
    fn scope_sets() {
        let rw = Scopes::of(&[Scope::Read, Scope::Write]);
        assert!(rw.has(Scope::Read) && rw.has(Scope::Write) && !rw.has(Scope::Admin));
        assert!(Scopes::ALL.covers(rw) && rw.covers(rw) && !rw.covers(Scopes::ALL));
        assert_eq!(
            rw.missing(Scopes::of(&[Scope::Delete, Scope::Read, Scope::Admin])),
            [Scope::Delete, Scope::Admin]
        );
    }
}
