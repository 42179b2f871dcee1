//! Integration tests: access — scoped API keys (`/v1/api-keys`) and what they open, as the contract
//! (`API.md`, Conventions and API keys) describes: 401 for a missing, malformed, unknown, wrong, expired or
//! revoked key; 403 for a missing scope, another tenant's path, an operator-only route, an address outside
//! the key's allow-list; 404 for another tenant's objects under one's own path. Secrets are shown once and
//! never again, in no response and no log line.
//!
//! The tenant-isolation tests walk `hookd::api::auth::ROUTES`, the daemon's route table, which a unit test
//! keeps equal to the router: a tenant route added later is covered here without editing this file.

use std::time::{Duration, SystemTime};

use hookd::api::auth::{Class, ROUTES};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{
    ADMIN_TOKEN, Daemon, RawResponse, StatusCode, assert_422_mentioning, assert_problem, error_fields,
    eventually,
};
use crate::receiver::Receiver;

const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

/// A key as the create (or regenerate) answer gives it.
struct Key {
    id: String,
    text: String,
}

/// Creates a key with the admin token; panics unless 201.
async fn create_key(daemon: &Daemon, body: Value) -> Key {
    let (status, created) = daemon.post("/v1/api-keys", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "create key {body}: {created}");
    key_of(&created)
}

fn key_of(answer: &Value) -> Key {
    let text = answer["key"].as_str().unwrap_or_else(|| panic!("no key in {answer}")).to_owned();
    let id = answer["id"].as_str().unwrap_or_else(|| panic!("no id in {answer}")).to_owned();
    assert!(id.starts_with("key_") && text.starts_with("hk_"), "{answer}");
    Key { id, text }
}

/// Sends a request with `token` as the bearer (and a JSON body, when given).
async fn call(daemon: &Daemon, token: &str, method: Method, path: &str, body: Option<&Value>) -> RawResponse {
    // The activity stream never ends: an accepted one is judged by its head, its body left unread.
    if path.ends_with("/activity") {
        let response = daemon
            .client()
            .request(method.clone(), daemon.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, headers) = (response.status(), response.headers().clone());
        let body =
            if status.is_success() { bytes::Bytes::new() } else { response.bytes().await.expect("body") };
        return RawResponse { status, headers, body };
    }
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    daemon.raw(method, path, &headers, body.map(Value::to_string).unwrap_or_default()).await
}

/// `2026-…Z`, `offset` from now (negative: in the past).
fn time_from_now(offset: Duration, past: bool) -> String {
    let now = SystemTime::now();
    let t = if past { now - offset } else { now + offset };
    humantime::format_rfc3339_millis(t).to_string()
}

/// A route of the table with its placeholders filled.
fn fill(path: &str, tenant: &str, id: &str) -> String {
    path.replace("{tenant}", tenant).replace("{id}", id).replace("{name}", "ticket.created")
}

fn is_refusal(status: StatusCode) -> bool {
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
}

// ---- scopes ----

/// A request, the scopes it needs, and its status when they are held.
type Case = (Method, String, Option<Value>, Vec<&'static str>, StatusCode);

#[tokio::test]
async fn each_scope_opens_exactly_the_routes_that_need_it() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = daemon.create_endpoint("acme", json!({"url": receiver.url("/")})).await;
    let all = ["read", "write", "delete", "admin"];
    // Every non-empty set of scopes, as a global key.
    let mut keys = Vec::new();
    for mask in 1u8..16 {
        let scopes: Vec<&str> =
            all.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, s)| *s).collect();
        let key = create_key(&daemon, json!({"name": format!("{scopes:?}"), "scopes": scopes})).await;
        keys.push((scopes, key));
    }
    let patch_path = format!("/v1/tenants/acme/endpoints/{endpoint}");
    // (method, path, body, scopes it needs, status when allowed)
    let routes: Vec<Case> = vec![
        (Method::GET, "/v1/tenants/acme/endpoints".into(), None, vec!["read"], StatusCode::OK),
        (Method::HEAD, "/v1/tenants/acme/events".into(), None, vec!["read"], StatusCode::OK),
        (
            Method::POST,
            "/v1/tenants/acme/events".into(),
            Some(json!({"type": "ticket.created", "payload": {}})),
            vec!["write"],
            StatusCode::ACCEPTED,
        ),
        (Method::PATCH, patch_path, Some(json!({"name": "renamed"})), vec!["write"], StatusCode::OK),
        (
            Method::DELETE,
            "/v1/tenants/acme/endpoints/ep_0000000000001".into(),
            None,
            vec!["delete"],
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, "/v1/tenants".into(), None, vec!["read", "admin"], StatusCode::OK),
        (Method::GET, "/v1/tenants/acme".into(), None, vec!["read", "admin"], StatusCode::OK),
        (
            Method::PATCH,
            "/v1/tenants/nobody".into(),
            Some(json!({"name": "x"})),
            vec!["write", "admin"],
            StatusCode::NOT_FOUND,
        ),
        (Method::DELETE, "/v1/tenants/nobody".into(), None, vec!["delete", "admin"], StatusCode::NOT_FOUND),
        (Method::GET, "/v1/event-types".into(), None, vec!["read"], StatusCode::OK),
        (Method::GET, "/v1/event-types/no.such".into(), None, vec!["read"], StatusCode::NOT_FOUND),
        (
            Method::PUT,
            "/v1/event-types/ticket.created".into(),
            Some(json!({})),
            vec!["write", "admin"],
            StatusCode::OK,
        ),
        (
            Method::DELETE,
            "/v1/event-types/no.such".into(),
            None,
            vec!["delete", "admin"],
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, "/v1/api-keys".into(), None, vec!["read", "admin"], StatusCode::OK),
        (
            Method::POST,
            "/v1/api-keys".into(),
            Some(json!({"name": "x", "scopes": ["admin"]})),
            vec!["write", "admin"],
            StatusCode::CREATED,
        ),
    ];
    // The catalog entry exists, so a PUT replaces it (200) whoever is first.
    let (status, _) = daemon.put("/v1/event-types/ticket.created", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut new_tenants = 0;
    for (scopes, key) in &keys {
        for (method, path, body, needs, allowed) in &routes {
            let response = call(&daemon, &key.text, method.clone(), path, body.as_ref()).await;
            if needs.iter().all(|n| scopes.contains(n)) {
                assert_eq!(response.status, *allowed, "{scopes:?} {method} {path}: {}", response.text());
            } else if method == Method::HEAD {
                assert_eq!(response.status, StatusCode::FORBIDDEN, "{scopes:?} {method} {path}");
            } else {
                let problem = assert_problem(&response, StatusCode::FORBIDDEN, "");
                let missing = needs.iter().find(|n| !scopes.contains(n)).expect("a missing scope");
                assert!(problem["detail"].as_str().is_some_and(|d| d.contains(missing)), "{problem}");
            }
        }
        // Tenant creation, once per key that may.
        let response = call(
            &daemon,
            &key.text,
            Method::POST,
            "/v1/tenants",
            Some(&json!({"id": format!("t{new_tenants}")})),
        )
        .await;
        if scopes.contains(&"write") && scopes.contains(&"admin") {
            assert_eq!(response.status, StatusCode::CREATED, "{scopes:?}: {}", response.text());
            new_tenants += 1;
        } else {
            assert_problem(&response, StatusCode::FORBIDDEN, "");
        }
    }
    assert_eq!(new_tenants, 4);
    // The admin token still opens everything.
    let (status, _) = daemon.get("/v1/tenants/acme").await;
    assert_eq!(status, StatusCode::OK);
}

// ---- the states of a key ----

#[tokio::test]
async fn only_a_valid_live_key_authenticates_and_every_refusal_is_401_problem_json() {
    let daemon = Daemon::start().await;
    let key = create_key(&daemon, json!({"name": "ci", "scopes": ["read", "admin"]})).await;
    let ok = |r: &RawResponse| assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    ok(&call(&daemon, &key.text, Method::GET, "/v1/tenants", None).await);

    let (head, secret) = key.text.split_at(key.text.rfind('_').expect("separator") + 1);
    let flipped = format!("{head}{}{}", if secret.starts_with('0') { "1" } else { "0" }, &secret[1..]);
    let other_prefix = format!("hk_000000000000_{secret}");
    let refused = [
        ("wrong secret", flipped.as_str()),
        ("unknown prefix", other_prefix.as_str()),
        ("malformed", "hk_nope"),
        ("truncated", &key.text[..key.text.len() - 1]),
        ("upper case", &key.text.to_uppercase()),
        ("the admin token with a suffix", &format!("{ADMIN_TOKEN}x")),
    ];
    for (what, token) in refused {
        let response = call(&daemon, token, Method::GET, "/v1/tenants", None).await;
        assert_problem(&response, StatusCode::UNAUTHORIZED, "");
        assert!(!response.text().contains(secret), "{what}: the answer repeats the secret");
    }
    for headers in [vec![], vec![("authorization", "Basic Zm9vOmJhcg==")], vec![("authorization", "Bearer ")]]
    {
        let response = daemon.raw(Method::GET, "/v1/tenants", &headers, "").await;
        assert_problem(&response, StatusCode::UNAUTHORIZED, "");
    }
    ok(&call(&daemon, &key.text, Method::GET, "/v1/tenants", None).await);
}

#[tokio::test]
async fn an_expiring_key_works_until_its_time_and_a_past_time_is_refused_at_creation() {
    let daemon = Daemon::start().await;
    let expires_at = time_from_now(2 * SECOND, false);
    let key =
        create_key(&daemon, json!({"name": "short", "scopes": ["read"], "expires_at": expires_at})).await;
    let (_, view) = daemon.get(&format!("/v1/api-keys/{}", key.id)).await;
    assert_eq!(view["state"], "active", "{view}");
    let response = call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let expired = eventually(10 * SECOND, POLL, || async {
        let response = call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await;
        (response.status == StatusCode::UNAUTHORIZED).then_some(response)
    })
    .await
    .expect("the key still works 10 s after it expired");
    let problem = assert_problem(&expired, StatusCode::UNAUTHORIZED, "");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("expired")), "{problem}");
    let (_, view) = daemon.get(&format!("/v1/api-keys/{}", key.id)).await;
    assert_eq!(view["state"], "expired", "{view}");
    let response = daemon.send(Method::POST, &format!("/v1/api-keys/{}/regenerate", key.id), None).await;
    assert_problem(&response, StatusCode::CONFLICT, "");

    for past in [time_from_now(SECOND, true), "2020-01-01T00:00:00Z".to_owned()] {
        let body = json!({"name": "late", "scopes": ["read"], "expires_at": past});
        assert_problem(
            &daemon.send(Method::POST, "/v1/api-keys", Some(&body)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "expires_at",
        );
    }
}

#[tokio::test]
async fn a_revoked_key_is_dead_at_once_and_stays_listed_as_revoked() {
    let daemon = Daemon::start().await;
    let key = create_key(&daemon, json!({"name": "leaked", "scopes": ["read", "write"]})).await;
    let other = create_key(&daemon, json!({"name": "fine", "scopes": ["read"]})).await;
    let path = format!("/v1/api-keys/{}", key.id);
    let response = daemon.send(Method::DELETE, &path, None).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{}", response.text());
    let problem = assert_problem(
        &call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await,
        StatusCode::UNAUTHORIZED,
        "",
    );
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("revoked")), "{problem}");
    let (status, view) = daemon.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "revoked", "{view}");
    assert!(view["revoked_at"].is_string(), "{view}");
    // Revoking again changes nothing; a revoked key cannot be brought back.
    assert_eq!(daemon.send(Method::DELETE, &path, None).await.status, StatusCode::NO_CONTENT);
    let (_, again) = daemon.get(&path).await;
    assert_eq!(again["revoked_at"], view["revoked_at"]);
    assert_problem(
        &daemon.send(Method::POST, &format!("{path}/regenerate"), None).await,
        StatusCode::CONFLICT,
        "",
    );
    let (_, list) = daemon.get("/v1/api-keys").await;
    let states: Vec<(&str, &str)> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|k| (k["name"].as_str().unwrap_or(""), k["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(states, [("leaked", "revoked"), ("fine", "active")]);
    // The other key is untouched; the revocation survives a restart.
    assert_eq!(call(&daemon, &other.text, Method::GET, "/v1/event-types", None).await.status, StatusCode::OK);
    let mut daemon = daemon;
    daemon.restart().await;
    assert_problem(
        &call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await,
        StatusCode::UNAUTHORIZED,
        "",
    );
    assert_eq!(call(&daemon, &other.text, Method::GET, "/v1/event-types", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn regenerate_kills_the_old_secret_and_keeps_the_settings() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let body =
        json!({"name": "erp", "tenant": "acme", "scopes": ["write", "read"], "allowed_ips": ["127.0.0.1"]});
    let old = create_key(&daemon, body).await;
    let (_, before) = daemon.get(&format!("/v1/api-keys/{}", old.id)).await;
    let (status, answer) = daemon.post(&format!("/v1/api-keys/{}/regenerate", old.id), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let new = key_of(&answer);
    assert_eq!(new.id, old.id);
    assert_ne!(new.text, old.text);
    for same in ["name", "tenant", "scopes", "allowed_ips", "expires_at", "created_at", "state"] {
        assert_eq!(answer[same], before[same], "{same}: {answer}");
    }
    assert_ne!(answer["prefix"], before["prefix"]);
    assert!(new.text.starts_with(answer["prefix"].as_str().expect("prefix")), "{answer}");
    let path = "/v1/tenants/acme/endpoints";
    assert_problem(&call(&daemon, &old.text, Method::GET, path, None).await, StatusCode::UNAUTHORIZED, "");
    let response = call(&daemon, &new.text, Method::GET, path, None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let (_, view) = daemon.get(&format!("/v1/api-keys/{}", old.id)).await;
    assert!(view.get("key").is_none(), "{view}");
    // Without a body too.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/v1/api-keys/{}/regenerate", old.id);
    let response = daemon.raw(Method::POST, &path, &[("authorization", auth.as_str())], "").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let endpoints = "/v1/tenants/acme/endpoints";
    assert_problem(
        &call(&daemon, &new.text, Method::GET, endpoints, None).await,
        StatusCode::UNAUTHORIZED,
        "",
    );
}

#[tokio::test]
async fn a_key_of_a_deleted_tenant_opens_nothing_not_even_a_tenant_recreated_under_its_id() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let key = create_key(&daemon, json!({"name": "acme", "tenant": "acme", "scopes": ["read"]})).await;
    assert_eq!(
        call(&daemon, &key.text, Method::GET, "/v1/tenants/acme/events", None).await.status,
        StatusCode::OK
    );
    assert_eq!(daemon.delete("/v1/tenants/acme").await.0, StatusCode::NO_CONTENT);
    daemon.create_tenant("acme").await;
    for path in ["/v1/tenants/acme/events", "/v1/event-types"] {
        assert_problem(
            &call(&daemon, &key.text, Method::GET, path, None).await,
            StatusCode::UNAUTHORIZED,
            "",
        );
    }
}

// ---- tenant isolation ----

#[tokio::test]
async fn a_tenant_bound_key_is_403_on_every_route_of_another_tenant_and_every_operator_route() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    daemon.create_tenant("globex").await;
    let all = json!(["read", "write", "delete", "admin"]);
    let key = create_key(&daemon, json!({"name": "acme", "tenant": "acme", "scopes": all})).await;
    let body = json!({});
    let mut tenant_routes = 0;
    for (method, path, class) in ROUTES {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        match class {
            Class::Tenant => {
                tenant_routes += 1;
                for other in ["globex", "nobody"] {
                    let response =
                        call(&daemon, &key.text, method.clone(), &fill(path, other, "x"), Some(&body)).await;
                    assert_problem(&response, StatusCode::FORBIDDEN, "");
                    assert!(!response.text().contains("globex"), "{method} {path}: {}", response.text());
                }
                // Its own tenant: the handler answers (whatever it says of an id `x` or an empty body).
                let response =
                    call(&daemon, &key.text, method.clone(), &fill(path, "acme", "x"), Some(&body)).await;
                assert!(
                    !is_refusal(response.status),
                    "{method} {path}: {} {}",
                    response.status,
                    response.text()
                );
            }
            Class::Operator => {
                let response =
                    call(&daemon, &key.text, method.clone(), &fill(path, "acme", "x"), Some(&body)).await;
                assert_problem(&response, StatusCode::FORBIDDEN, "");
            }
            Class::Shared if method == Method::GET => {
                let response = call(&daemon, &key.text, method.clone(), &fill(path, "acme", "x"), None).await;
                assert!(!is_refusal(response.status), "{method} {path}: {}", response.text());
            }
            _ => {}
        }
    }
    assert!(tenant_routes >= 10, "the route table lists only {tenant_routes} tenant routes");
    // Nothing of globex changed.
    let (_, globex) = daemon.get("/v1/tenants/globex").await;
    assert_eq!(globex["name"], "globex");
    let (_, events) = daemon.get("/v1/tenants/globex/events").await;
    assert_eq!(events["data"], json!([]));
}

#[tokio::test]
async fn another_tenants_object_ids_under_ones_own_path_are_404() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    daemon.create_tenant("globex").await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = daemon.create_endpoint("globex", json!({"url": receiver.url("/")})).await;
    let event = daemon.ingest("globex", "ticket.created", json!({"private": "globex"})).await;
    receiver.wait_for(1, 10 * SECOND).await;
    let attempt = eventually(10 * SECOND, POLL, || async {
        let (_, page) = daemon.get(&format!("/v1/tenants/globex/attempts?event_id={event}")).await;
        page["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await
    .expect("globex's attempt was never listed");
    let all = json!(["read", "write", "delete", "admin"]);
    let key = create_key(&daemon, json!({"name": "acme", "tenant": "acme", "scopes": all})).await;
    let id_for = |path: &str| {
        if path.contains("/endpoints/{id}") {
            endpoint.clone()
        } else if path.contains("/events/{id}") {
            event.clone()
        } else {
            attempt.clone()
        }
    };
    let mut checked = 0;
    for (method, path, class) in ROUTES {
        if *class != Class::Tenant || !path.contains("{id}") {
            continue;
        }
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let id = id_for(path);
        // A body its handler takes, so that the answer is about the id (rotate refuses unknown fields).
        let body = if method == Method::PATCH {
            json!({"name": "taken over"})
        } else if path.ends_with("/test") {
            json!({"type": "a.b", "payload": {}})
        } else {
            json!({})
        };
        let response = call(&daemon, &key.text, method.clone(), &fill(path, "acme", &id), Some(&body)).await;
        assert_problem(&response, StatusCode::NOT_FOUND, "");
        assert!(!response.text().contains("globex"), "{method} {path}: {}", response.text());
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} routes with ids");
    // Filtering one's own history by another tenant's endpoint: that endpoint is not found either.
    let path = format!("/v1/tenants/acme/attempts?endpoint_id={endpoint}");
    assert_problem(&call(&daemon, &key.text, Method::GET, &path, None).await, StatusCode::NOT_FOUND, "");
    for path in [
        format!("/v1/tenants/acme/attempts?event_id={event}"),
        "/v1/tenants/acme/events".to_owned(),
        "/v1/tenants/acme/endpoints".to_owned(),
    ] {
        let response = call(&daemon, &key.text, Method::GET, &path, None).await;
        assert_eq!(response.status, StatusCode::OK, "{path}: {}", response.text());
        assert_eq!(response.json()["data"], json!([]), "{path}");
    }
    // All of it is still there, unchanged, for its owner.
    let (status, ep) = daemon.get(&format!("/v1/tenants/globex/endpoints/{endpoint}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(ep["name"], "taken over");
    assert_eq!(daemon.get(&format!("/v1/tenants/globex/attempts/{attempt}")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_tenant_bound_admin_key_manages_only_its_own_tenants_keys_and_never_more_than_it_holds() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    daemon.create_tenant("globex").await;
    let all = json!(["read", "write", "delete", "admin"]);
    let global = create_key(&daemon, json!({"name": "ops", "scopes": ["read"]})).await;
    let globex = create_key(&daemon, json!({"name": "globex", "tenant": "globex", "scopes": all})).await;
    let admin = create_key(&daemon, json!({"name": "acme admin", "tenant": "acme", "scopes": all})).await;
    let weak = create_key(
        &daemon,
        json!({"name": "acme weak admin", "tenant": "acme", "scopes": ["read", "write", "admin"]}),
    )
    .await;
    let t = admin.text.as_str();

    // Created keys are bound to acme, whether said or not.
    let body = json!({"name": "ci", "scopes": ["read"]});
    let response = call(&daemon, t, Method::POST, "/v1/api-keys", Some(&body)).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text());
    let ci = key_of(&response.json());
    assert_eq!(response.json()["tenant"], "acme");
    let body = json!({"name": "ci2", "tenant": "acme", "scopes": ["write"]});
    assert_eq!(call(&daemon, t, Method::POST, "/v1/api-keys", Some(&body)).await.status, StatusCode::CREATED);
    // Not for another tenant (existing or not: the answer is the same), not with scopes it lacks.
    for tenant in ["globex", "nobody"] {
        let body = json!({"name": "x", "tenant": tenant, "scopes": ["read"]});
        let response = call(&daemon, t, Method::POST, "/v1/api-keys", Some(&body)).await;
        assert_problem(&response, StatusCode::FORBIDDEN, "");
    }
    let body = json!({"name": "x", "scopes": ["read", "delete"]});
    let response = call(&daemon, &weak.text, Method::POST, "/v1/api-keys", Some(&body)).await;
    let problem = assert_problem(&response, StatusCode::FORBIDDEN, "");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("delete")), "{problem}");

    // It sees acme's keys only.
    let list = call(&daemon, t, Method::GET, "/v1/api-keys", None).await.json();
    let names: Vec<&str> =
        list["data"].as_array().expect("data").iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(names, ["acme admin", "acme weak admin", "ci", "ci2"]);
    let response = call(&daemon, t, Method::GET, "/v1/api-keys?tenant=globex", None).await;
    assert_eq!(response.json()["data"], json!([]));
    for other in [&global, &globex] {
        for (method, suffix, body) in [
            (Method::GET, "", None),
            (Method::PATCH, "", Some(json!({"name": "mine"}))),
            (Method::DELETE, "", None),
            (Method::POST, "/regenerate", None),
        ] {
            let path = format!("/v1/api-keys/{}{suffix}", other.id);
            let response = call(&daemon, t, method, &path, body.as_ref()).await;
            assert_problem(&response, StatusCode::NOT_FOUND, "");
        }
    }
    // A stronger key of its own tenant: visible, but not to be changed (regenerate would hand over its
    // power).
    let path = format!("/v1/api-keys/{}", admin.id);
    assert_eq!(call(&daemon, &weak.text, Method::GET, &path, None).await.status, StatusCode::OK);
    for (method, suffix, body) in
        [(Method::PATCH, "", Some(json!({"name": "mine"}))), (Method::POST, "/regenerate", None)]
    {
        let response = call(&daemon, &weak.text, method, &format!("{path}{suffix}"), body.as_ref()).await;
        let problem = assert_problem(&response, StatusCode::FORBIDDEN, "");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("delete")), "{problem}");
    }
    assert_eq!(call(&daemon, t, Method::GET, "/v1/tenants/acme/events", None).await.status, StatusCode::OK);
    // Its own tenant's keys: rename, regenerate, revoke.
    let path = format!("/v1/api-keys/{}", ci.id);
    let response =
        call(&daemon, &weak.text, Method::PATCH, &path, Some(&json!({"name": "ci renamed"}))).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.json()["name"], "ci renamed");
    let response = call(&daemon, t, Method::POST, &format!("{path}/regenerate"), None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(call(&daemon, t, Method::DELETE, &path, None).await.status, StatusCode::NO_CONTENT);
    let (_, view) = daemon.get(&path).await;
    assert_eq!(view["state"], "revoked");
    // A tenant-bound key without admin manages nothing.
    let reader =
        create_key(&daemon, json!({"name": "r", "tenant": "acme", "scopes": ["read", "write"]})).await;
    let response = call(&daemon, &reader.text, Method::GET, "/v1/api-keys", None).await;
    assert_problem(&response, StatusCode::FORBIDDEN, "");
}

// ---- allow-lists ----

#[tokio::test]
async fn allowed_ips_admit_listed_addresses_only() {
    let daemon = Daemon::start().await;
    let cases = [
        (json!(["127.0.0.1"]), StatusCode::OK),
        (json!(["127.0.0.0/8"]), StatusCode::OK),
        (json!(["2001:db8::/32", "127.0.0.1"]), StatusCode::OK),
        (json!(["10.0.0.0/8"]), StatusCode::FORBIDDEN),
        (json!(["2001:db8::/32", "::1"]), StatusCode::FORBIDDEN),
        (json!([]), StatusCode::OK),
    ];
    for (ips, expected) in cases {
        let body = json!({"name": "ip", "scopes": ["read"], "allowed_ips": ips});
        let (status, created) = daemon.post("/v1/api-keys", body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let key = key_of(&created);
        let response = call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await;
        assert_eq!(response.status, expected, "{ips}: {}", response.text());
        if expected == StatusCode::FORBIDDEN {
            assert_problem(&response, StatusCode::FORBIDDEN, "");
            let (_, view) = daemon.get(&format!("/v1/api-keys/{}", key.id)).await;
            assert_eq!(view["last_used_at"], Value::Null, "a refused address counts as a use: {view}");
        }
    }
    let (_, created) = daemon
        .post(
            "/v1/api-keys",
            json!({"name": "v6", "scopes": ["read"], "allowed_ips": ["2001:db8::/32", "127.0.0.1", "::1"]}),
        )
        .await;
    assert_eq!(created["allowed_ips"], json!(["2001:db8::/32", "127.0.0.1/32", "::1/128"]), "{created}");
}

// ---- last use ----

#[tokio::test]
async fn last_used_at_appears_after_use_and_survives_a_restart() {
    let mut daemon = Daemon::start().await;
    let key = create_key(&daemon, json!({"name": "ci", "scopes": ["read"]})).await;
    let path = format!("/v1/api-keys/{}", key.id);
    let (_, view) = daemon.get(&path).await;
    assert_eq!(view["last_used_at"], Value::Null, "{view}");
    let before = SystemTime::now() - SECOND;
    assert_eq!(call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await.status, StatusCode::OK);
    let (_, view) = daemon.get(&path).await;
    let used = view["last_used_at"].as_str().unwrap_or_else(|| panic!("no last_used_at: {view}")).to_owned();
    let at = humantime::parse_rfc3339(&used).expect("RFC 3339");
    assert!(at >= before && at <= SystemTime::now() + SECOND, "{used}");
    // A wrong secret is not a use of the key.
    let (head, _) = key.text.split_at(key.text.rfind('_').expect("separator") + 1);
    let wrong = format!("{head}{}", "0".repeat(52));
    call(&daemon, &wrong, Method::GET, "/v1/event-types", None).await;
    // Persisted at shutdown: a clean restart shows the same time.
    assert!(daemon.terminate().await.success());
    daemon.restart().await;
    let (_, view) = daemon.get(&path).await;
    assert_eq!(view["last_used_at"], used.as_str(), "{view}");
    assert_eq!(call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await.status, StatusCode::OK);
}

// ---- secrets ----

/// Does `value` hold a member named `key` anywhere?
fn has_member(value: &Value, name: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == name || has_member(v, name)),
        Value::Array(items) => items.iter().any(|v| has_member(v, name)),
        _ => false,
    }
}

#[tokio::test]
async fn the_secret_and_its_hash_appear_only_in_the_creating_answer_never_in_views_or_logs() {
    let mut daemon = Daemon::start_with(|s| {
        s.env("HOOKD_LOG", "debug");
    })
    .await;
    daemon.create_tenant("acme").await;
    let (_, created) = daemon
        .post("/v1/api-keys", json!({"name": "ci", "tenant": "acme", "scopes": ["read", "write"]}))
        .await;
    let key = key_of(&created);
    let (_, regenerated) = daemon.post(&format!("/v1/api-keys/{}/regenerate", key.id), json!({})).await;
    let new = key_of(&regenerated);
    let secrets: Vec<String> = [&key.text, &new.text]
        .iter()
        .flat_map(|text| {
            let digest = Sha256::digest(text.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let decimal = format!("{:?}", digest.as_slice());
            let secret = text.rsplit('_').next().expect("secret").to_owned();
            [text.to_string(), secret, hex, decimal]
        })
        .collect();
    // Use both, the dead one and the live one, with and without success.
    call(&daemon, &key.text, Method::GET, "/v1/tenants/acme/events", None).await;
    call(&daemon, &new.text, Method::GET, "/v1/tenants/acme/events", None).await;
    call(&daemon, &new.text, Method::GET, "/v1/tenants", None).await;
    call(
        &daemon,
        &new.text,
        Method::POST,
        "/v1/tenants/acme/events",
        Some(&json!({"type": "a.b", "payload": {}})),
    )
    .await;

    let mut views =
        vec![daemon.get("/v1/api-keys").await.1, daemon.get(&format!("/v1/api-keys/{}", key.id)).await.1];
    views.push(daemon.patch(&format!("/v1/api-keys/{}", key.id), json!({"name": "renamed"})).await.1);
    for view in &views {
        assert!(!has_member(view, "key") && !has_member(view, "secret"), "{view}");
        let text = view.to_string();
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a view shows {s}: {text}");
        }
    }
    assert!(daemon.terminate().await.success());
    let logs = daemon.stderr_lines().join("\n");
    assert!(logs.contains("API key created"), "the logs are not at debug level?\n{logs}");
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "the logs show {s}:\n{logs}");
    }
}

// ---- bad input ----

#[tokio::test]
async fn bad_input_on_every_api_key_route_is_422_naming_the_field_and_changes_nothing() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let ok = json!({"name": "ok", "scopes": ["read"]});
    let with = |extra: Value| {
        let mut body = ok.clone();
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let too_many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let cases = [
        (with(json!({"name": ""})), "name"),
        (with(json!({"name": "n".repeat(257)})), "name"),
        (with(json!({"name": "bell\u{7}"})), "name"),
        (with(json!({"name": 7})), "name"),
        (with(json!({"scopes": []})), "scopes"),
        (with(json!({"scopes": ["read", "root"]})), "scopes[1]"),
        (with(json!({"scopes": "read"})), "scopes"),
        (with(json!({"expires_at": "tomorrow"})), "expires_at"),
        (with(json!({"expires_at": 1_900_000_000})), "expires_at"),
        (with(json!({"expires_at": "2020-01-01T00:00:00Z"})), "expires_at"),
        (with(json!({"allowed_ips": ["127.0.0.1", "10.0.0.0/33"]})), "allowed_ips[1]"),
        (with(json!({"allowed_ips": ["10.1.2.3/8"]})), "allowed_ips[0]"),
        (with(json!({"allowed_ips": ["localhost"]})), "allowed_ips[0]"),
        (with(json!({"allowed_ips": "10.0.0.0/8"})), "allowed_ips"),
        (with(json!({"allowed_ips": too_many})), "allowed_ips"),
        (with(json!({"tenant": "nobody"})), "tenant"),
        (with(json!({"tenant": 5})), "tenant"),
    ];
    for (body, field) in cases {
        let response = daemon.send(Method::POST, "/v1/api-keys", Some(&body)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    for (body, field) in [
        (json!({"scopes": ["read"]}), "name"),
        (json!({"name": "x"}), "scopes"),
        (with(json!({"role": "x"})), "role"),
    ] {
        assert_422_mentioning(&daemon.send(Method::POST, "/v1/api-keys", Some(&body)).await, field);
    }
    // Several at once, all named.
    let body = json!({"name": "", "scopes": [], "expires_at": "soon", "allowed_ips": ["x"]});
    let problem = assert_problem(
        &daemon.send(Method::POST, "/v1/api-keys", Some(&body)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name",
    );
    for field in ["scopes", "expires_at", "allowed_ips[0]"] {
        assert!(error_fields(&problem).iter().any(|f| f == field), "{field}: {problem}");
    }
    let (_, list) = daemon.get("/v1/api-keys").await;
    assert_eq!(list["data"], json!([]), "a refused key was created");

    for (query, field) in [("limit=0", "limit"), ("limit=251", "limit"), ("cursor=nope", "cursor")] {
        let response = daemon.send(Method::GET, &format!("/v1/api-keys?{query}"), None).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }

    let key = create_key(&daemon, ok.clone()).await;
    let path = format!("/v1/api-keys/{}", key.id);
    let (_, before) = daemon.get(&path).await;
    for (body, field) in [
        (json!({"scopes": ["read", "admin"]}), "scopes"),
        (json!({"tenant": "acme"}), "tenant"),
        (json!({"name": "x", "expires_at": null}), "expires_at"),
        (json!({"name": 5}), "name"),
        (json!({"name": null}), "name"),
        (json!({"name": ""}), "name"),
        (json!([]), "body"),
    ] {
        let response = daemon.send(Method::PATCH, &path, Some(&body)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let (_, after) = daemon.get(&path).await;
    assert_eq!(after, before, "a refused PATCH changed the key");
    let (status, same) = daemon.patch(&path, json!({})).await;
    assert_eq!((status, &same["name"]), (StatusCode::OK, &json!("ok")));

    let response =
        daemon.send(Method::POST, &format!("{path}/regenerate"), Some(&json!({"scopes": ["admin"]}))).await;
    assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "scopes");
    assert_eq!(
        call(&daemon, &key.text, Method::GET, "/v1/event-types", None).await.status,
        StatusCode::OK,
        "a refused regenerate changed the key"
    );

    for id in ["key_0000000000001", "nope", "ep_0000000000001"] {
        let path = format!("/v1/api-keys/{id}");
        for (method, suffix, body) in [
            (Method::GET, "", None),
            (Method::PATCH, "", Some(json!({"name": "x"}))),
            (Method::DELETE, "", None),
            (Method::POST, "/regenerate", None),
        ] {
            let response = daemon.send(method, &format!("{path}{suffix}"), body.as_ref()).await;
            assert_problem(&response, StatusCode::NOT_FOUND, "");
        }
    }
}

#[tokio::test]
async fn keys_are_listed_in_creation_order_in_pages_and_filtered_by_tenant() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let tenant = if i % 2 == 0 { json!("acme") } else { Value::Null };
        ids.push(
            create_key(&daemon, json!({"name": format!("k{i}"), "tenant": tenant, "scopes": ["read"]}))
                .await
                .id,
        );
    }
    let mut walked = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/v1/api-keys?limit=3".to_owned();
    loop {
        let (status, page) = daemon.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().expect("data");
        sizes.push(data.len());
        walked.extend(data.iter().map(|k| k["id"].as_str().expect("id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/api-keys?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(walked, ids);
    assert_eq!(sizes, [3, 3, 1]);
    let (_, page) = daemon.get("/v1/api-keys?tenant=acme").await;
    let acme: Vec<&str> =
        page["data"].as_array().expect("data").iter().filter_map(|k| k["tenant"].as_str()).collect();
    assert_eq!(acme, ["acme"; 4]);
    let (_, first) = daemon.get(&format!("/v1/api-keys/{}", ids[0])).await;
    for field in [
        "id",
        "name",
        "prefix",
        "tenant",
        "scopes",
        "allowed_ips",
        "expires_at",
        "last_used_at",
        "state",
        "created_at",
    ] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    assert!(first["prefix"].as_str().is_some_and(|p| p.starts_with("hk_") && p.len() == 15), "{first}");
}
