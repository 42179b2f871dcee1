//! Integration tests: admin — tenants, endpoints and the event catalog, as the contract (`API.md`)
//! describes them: create/read/list/update/delete, every refusal named (status, `application/problem+json`,
//! the field), JSON Merge Patch, secrets shown only where they must be, one tenant never seeing another's
//! objects, and configuration changes reaching the dispatchers at once.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{
    ADMIN_TOKEN, Daemon, RawResponse, StatusCode, assert_422_mentioning, assert_problem, error_fields,
    eventually,
};
use crate::receiver::{Receiver, verify};

const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);
/// A valid Standard Webhooks secret (24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another one (32 bytes).
const OTHER_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3ItaG9va2QtdGVzdHMh";

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

async fn daemon_with_tenant(tenant: &str) -> Daemon {
    let daemon = Daemon::start().await;
    daemon.create_tenant(tenant).await;
    daemon
}

/// Sends `body` as is with the admin token and a JSON content type, keeping the response headers.
async fn send_raw(daemon: &Daemon, method: Method, path: &str, body: impl Into<bytes::Bytes>) -> RawResponse {
    let auth = bearer();
    daemon
        .raw(method, path, &[("authorization", auth.as_str()), ("content-type", "application/json")], body)
        .await
}

/// Sends a JSON body (or none) with the admin token, keeping the response headers.
async fn send(daemon: &Daemon, method: Method, path: &str, body: Option<Value>) -> RawResponse {
    daemon.send(method, path, body.as_ref()).await
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("no string {key:?} in {value}"))
}

fn ids_of(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {page}"))
        .iter()
        .map(|item| item["id"].as_str().or(item["name"].as_str()).expect("id or name").to_owned())
        .collect()
}

/// Walks a list from `first_path` (which has a query) page by page; returns every id and the page sizes.
async fn walk(daemon: &Daemon, first_path: &str) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    let mut path = first_path.to_owned();
    for _ in 0..50 {
        let (status, page) = daemon.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        let page_ids = ids_of(&page);
        sizes.push(page_ids.len());
        ids.extend(page_ids);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{first_path}&cursor={cursor}"),
            None => return (ids, sizes),
        }
    }
    panic!("{first_path}: the pages never end");
}

/// Does `value` hold a member named `secret` anywhere?
fn has_secret_member(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == "secret" || has_secret_member(v)),
        Value::Array(items) => items.iter().any(has_secret_member),
        _ => false,
    }
}

fn is_rfc3339_utc(text: &str) -> bool {
    text.ends_with('Z') && humantime::parse_rfc3339(text).is_ok()
}

// ---- tenants ----

#[tokio::test]
async fn a_tenant_is_created_with_201_and_read_back() {
    let daemon = Daemon::start().await;
    let response =
        send(&daemon, Method::POST, "/v1/tenants", Some(json!({"id": "acme", "name": "Acme Corp"}))).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text());
    let created = response.json();
    assert_eq!((created["id"].as_str(), created["name"].as_str()), (Some("acme"), Some("Acme Corp")));
    assert!(is_rfc3339_utc(str_of(&created, "created_at")), "{created}");
    let (status, read) = daemon.get("/v1/tenants/acme").await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read, created);
    // Without a name, the id is the name.
    let (status, created) = daemon.post("/v1/tenants", json!({"id": "globex"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "globex");
    assert_problem(&send(&daemon, Method::GET, "/v1/tenants/nobody", None).await, StatusCode::NOT_FOUND, "");
}

#[tokio::test]
async fn a_duplicate_tenant_id_is_409_and_leaves_the_first_unchanged() {
    let daemon = Daemon::start().await;
    let (status, _) = daemon.post("/v1/tenants", json!({"id": "acme", "name": "First"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let response =
        send(&daemon, Method::POST, "/v1/tenants", Some(json!({"id": "acme", "name": "Second"}))).await;
    assert_problem(&response, StatusCode::CONFLICT, "");
    let (_, read) = daemon.get("/v1/tenants/acme").await;
    assert_eq!(read["name"], "First");
}

#[tokio::test]
async fn a_bad_tenant_id_is_422_naming_id() {
    let daemon = Daemon::start().await;
    let too_long = "t".repeat(65);
    for id in ["", "a b", too_long.as_str(), "-acme", ".acme", "acme/x", "äcme", "acme?"] {
        let response = send(&daemon, Method::POST, "/v1/tenants", Some(json!({"id": id}))).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "id");
    }
    let response = send(&daemon, Method::POST, "/v1/tenants", Some(json!({"id": 7}))).await;
    assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "id");
    assert_422_mentioning(
        &send(&daemon, Method::POST, "/v1/tenants", Some(json!({"name": "x"}))).await,
        "id",
    );
    let response =
        send(&daemon, Method::POST, "/v1/tenants", Some(json!({"id": "ok", "plan": "gold"}))).await;
    assert_422_mentioning(&response, "plan");
    let (_, list) = daemon.get("/v1/tenants").await;
    assert_eq!(list["data"], json!([]), "a refused tenant was created");
    // The limits themselves are fine.
    daemon.create_tenant(&"t".repeat(64)).await;
    daemon.create_tenant("A.b_c-9").await;
}

#[tokio::test]
async fn tenants_are_listed_by_id_in_pages() {
    let daemon = Daemon::start().await;
    let ids = ["delta", "alpha", "golf", "charlie", "foxtrot", "bravo", "echo"];
    for id in ids {
        daemon.create_tenant(id).await;
    }
    let (walked, sizes) = walk(&daemon, "/v1/tenants?limit=3").await;
    let mut sorted: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    assert_eq!(walked, sorted);
    assert_eq!(sizes, [3, 3, 1]);
    for limit in ["0", "251", "x"] {
        let response = send(&daemon, Method::GET, &format!("/v1/tenants?limit={limit}"), None).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "limit");
    }
}

#[tokio::test]
async fn patching_a_tenant_changes_its_name_and_nothing_else() {
    let daemon = daemon_with_tenant("acme").await;
    let (_, before) = daemon.get("/v1/tenants/acme").await;
    let (status, patched) = daemon.patch("/v1/tenants/acme", json!({"name": "Acme Corp"})).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], "Acme Corp");
    assert_eq!((&patched["id"], &patched["created_at"]), (&before["id"], &before["created_at"]));
    let (_, read) = daemon.get("/v1/tenants/acme").await;
    assert_eq!(read, patched);

    let response = send(&daemon, Method::PATCH, "/v1/tenants/acme", Some(json!({"id": "other"}))).await;
    assert_422_mentioning(&response, "id");
    let response =
        send(&daemon, Method::PATCH, "/v1/tenants/acme", Some(json!({"name": "n".repeat(257)}))).await;
    assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "name");
    let response = send(&daemon, Method::PATCH, "/v1/tenants/nobody", Some(json!({"name": "x"}))).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    let (_, read) = daemon.get("/v1/tenants/acme").await;
    assert_eq!(read, patched, "a refused PATCH changed the tenant");
}

#[tokio::test]
async fn deleting_a_tenant_removes_it_and_its_endpoints() {
    let daemon = daemon_with_tenant("acme").await;
    let old_receiver = Receiver::start().await;
    let (old_endpoint, _) = daemon.create_endpoint("acme", json!({"url": old_receiver.url("/")})).await;

    let response = send(&daemon, Method::DELETE, "/v1/tenants/acme", None).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{}", response.text());
    assert_problem(&send(&daemon, Method::GET, "/v1/tenants/acme", None).await, StatusCode::NOT_FOUND, "");
    assert_problem(&send(&daemon, Method::DELETE, "/v1/tenants/acme", None).await, StatusCode::NOT_FOUND, "");
    let response = send(&daemon, Method::GET, "/v1/tenants/acme/endpoints", None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    let (_, list) = daemon.get("/v1/tenants").await;
    assert_eq!(list["data"], json!([]));

    // The same id again: a new tenant, without the old one's endpoints.
    daemon.create_tenant("acme").await;
    let (_, endpoints) = daemon.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(endpoints["data"], json!([]));
    let path = format!("/v1/tenants/acme/endpoints/{old_endpoint}");
    assert_problem(&send(&daemon, Method::GET, &path, None).await, StatusCode::NOT_FOUND, "");
    let new_receiver = Receiver::start().await;
    daemon.create_endpoint("acme", json!({"url": new_receiver.url("/")})).await;
    let id = daemon.ingest("acme", "ticket.created", json!({})).await;
    let delivered = new_receiver.wait_for(1, 10 * SECOND).await;
    assert_eq!(delivered[0].webhook_id(), id);
    assert_eq!(old_receiver.count(), 0, "the deleted tenant's endpoint still gets events");
}

#[tokio::test]
async fn a_recreated_tenant_sees_none_of_the_old_tenants_events() {
    let daemon = daemon_with_tenant("acme").await;
    let (status, old) = daemon
        .post(
            "/v1/tenants/acme/events",
            json!({"type": "a", "payload": {"old": true}, "idempotency_key": "k-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{old}");
    let old_id = str_of(&old, "id").to_owned();
    let (status, _) = daemon.delete("/v1/tenants/acme").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    daemon.create_tenant("acme").await;

    let (_, events) = daemon.get("/v1/tenants/acme/events").await;
    assert_eq!(events["data"], json!([]), "{events}");
    let response = send(&daemon, Method::GET, &format!("/v1/tenants/acme/events/{old_id}"), None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    // The old tenant's idempotency keys are gone with it.
    let response = send(
        &daemon,
        Method::POST,
        "/v1/tenants/acme/events",
        Some(json!({"type": "a", "payload": {"new": true}, "idempotency_key": "k-1"})),
    )
    .await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    assert_eq!(response.header("idempotent-replayed"), None);
    assert_ne!(response.json()["id"], old_id);
}

// ---- endpoints ----

#[tokio::test]
async fn a_created_endpoint_returns_201_with_the_secret_that_signs_its_deliveries() {
    let daemon = daemon_with_tenant("acme").await;
    let receiver = Receiver::start().await;
    let response = send(
        &daemon,
        Method::POST,
        "/v1/tenants/acme/endpoints",
        Some(json!({"name": "ERP sync", "url": receiver.url("/hooks"), "headers": {"X-Env": "prod"}})),
    )
    .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text());
    let created = response.json();
    assert!(str_of(&created, "id").starts_with("ep_"), "{created}");
    assert_eq!(created["name"], "ERP sync");
    assert_eq!(created["enabled"], true);
    let secret = str_of(&created, "secret").to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() > 30, "{secret}");

    let id = daemon.ingest("acme", "ticket.created", json!({"n": 1})).await;
    let delivered = receiver.wait_for(1, 10 * SECOND).await;
    let body =
        verify(&secret, &delivered[0]).unwrap_or_else(|e| panic!("not signed with the secret shown: {e}"));
    assert_eq!(body["id"], id);
    assert_eq!(body["data"], json!({"n": 1}));
    assert_eq!(delivered[0].header("x-env"), Some("prod"));
    assert!(verify(SECRET, &delivered[0]).is_err(), "also verifies with an unrelated secret");
}

#[tokio::test]
async fn a_given_valid_secret_is_kept_and_signs() {
    let daemon = daemon_with_tenant("acme").await;
    let receiver = Receiver::start().await;
    let (id, secret) =
        daemon.create_endpoint("acme", json!({"url": receiver.url("/"), "secret": SECRET})).await;
    assert_eq!(secret, SECRET);
    let (status, shown) = daemon.get(&format!("/v1/tenants/acme/endpoints/{id}/secret")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown, json!({"key": SECRET}));
    daemon.ingest("acme", "a", json!({})).await;
    let delivered = receiver.wait_for(1, 10 * SECOND).await;
    verify(SECRET, &delivered[0]).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn get_list_and_patch_never_show_the_secret_but_the_secret_route_does() {
    let daemon = daemon_with_tenant("acme").await;
    let (id, secret) = daemon.create_endpoint("acme", json!({"url": "https://example.com/hook"})).await;
    let path = format!("/v1/tenants/acme/endpoints/{id}");
    for response in [
        send(&daemon, Method::GET, &path, None).await,
        send(&daemon, Method::GET, "/v1/tenants/acme/endpoints", None).await,
        send(&daemon, Method::GET, "/v1/tenants/acme/endpoints?q=example", None).await,
        send(&daemon, Method::PATCH, &path, Some(json!({"name": "renamed"}))).await,
    ] {
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert!(!has_secret_member(&response.json()), "{}", response.text());
        assert!(!response.text().contains(&secret["whsec_".len()..]), "the key leaked: {}", response.text());
    }
    let (status, shown) = daemon.get(&format!("{path}/secret")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["key"], secret);
    // A PATCH that names a secret replaces it, and still does not show it.
    let response = send(&daemon, Method::PATCH, &path, Some(json!({"secret": OTHER_SECRET}))).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert!(!has_secret_member(&response.json()), "{}", response.text());
    let (_, shown) = daemon.get(&format!("{path}/secret")).await;
    assert_eq!(shown["key"], OTHER_SECRET);
}

#[tokio::test]
async fn endpoint_urls_are_refused_naming_url_when_http_and_private_destinations_are_not_allowed() {
    let daemon = Daemon::start_with(|setup| {
        setup.set("delivery.allow_http", false);
        setup.set("delivery.allow_private_destinations", false);
    })
    .await;
    daemon.create_tenant("acme").await;
    for url in [
        "http://example.com/hooks",
        "https://127.0.0.1/hooks",
        "https://10.1.2.3/",
        "https://192.168.1.10:8443/x",
        "https://169.254.169.254/latest/meta-data",
        "https://0.0.0.0/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[fe80::1]/",
        "https://localhost/",
        "https://user:password@example.com/",
        "https://token@example.com/",
        "https://example.com/hooks/{id}",
        "https://${data.host}/hooks",
        "ftp://example.com/",
        "example.com/hooks",
        "not a url",
        "",
    ] {
        let response =
            send(&daemon, Method::POST, "/v1/tenants/acme/endpoints", Some(json!({"url": url}))).await;
        let problem = assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "url");
        assert_eq!(error_fields(&problem), ["url"], "{url}: {problem}");
    }
    let (_, list) = daemon.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(list["data"], json!([]), "a refused endpoint was created");
    // A public https URL is fine (it is not resolved at creation).
    daemon.create_endpoint("acme", json!({"url": "https://erp.example.com/hooks"})).await;
}

#[tokio::test]
async fn invalid_endpoint_fields_are_422_naming_each() {
    let daemon = daemon_with_tenant("acme").await;
    let url = "https://example.com/hook";
    let cases = [
        (json!({"event_types": ["Bad.Type"]}), "event_types[0]"),
        (json!({"event_types": ["ticket.created", "a..b"]}), "event_types[1]"),
        (json!({"channels": ["no way"]}), "channels[0]"),
        (json!({"headers": {"webhook-id": "mine"}}), "headers.webhook-id"),
        (json!({"headers": {"Webhook-Signature": "v1,x"}}), "headers.Webhook-Signature"),
        (json!({"headers": {"content-type": "text/plain"}}), "headers.content-type"),
        (json!({"headers": {"X Bad": "x"}}), "headers.X Bad"),
        (json!({"secret": "nope"}), "secret"),
        (json!({"secret": "whsec_!!!not-base64"}), "secret"),
        (json!({"secret": "whsec_c2hvcnQ="}), "secret"),
        (json!({"retry": {"max_attempts": 0, "initial_ms": 1000, "max_ms": 2000}}), "retry.max_attempts"),
        (json!({"retry": {"max_attempts": 3, "initial_ms": 1000, "max_ms": 500}}), "retry.max_ms"),
        (json!({"timeout_ms": 5}), "timeout_ms"),
        (json!({"rate_limit": {"per_second": 0, "burst": 1}}), "rate_limit.per_second"),
        (json!({"max_in_flight": 0}), "max_in_flight"),
        (json!({"method": "GET"}), "url"),
        (json!({"method": "DELETE"}), "method"),
        (json!({"format": "xml"}), "format"),
        (json!({"batch": {"max_events": 0, "max_wait_ms": 100}}), "batch.max_events"),
        (json!({"name": "n".repeat(257)}), "name"),
    ];
    for (extra, field) in cases {
        let mut spec = json!({"url": url});
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        let response = send(&daemon, Method::POST, "/v1/tenants/acme/endpoints", Some(spec.clone())).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    // Every invalid field at once is named at once.
    let spec = json!({"url": "ftp://x", "timeout_ms": 5, "max_in_flight": 0, "channels": ["ok", "no way"]});
    let response = send(&daemon, Method::POST, "/v1/tenants/acme/endpoints", Some(spec)).await;
    let problem = assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "url");
    for field in ["timeout_ms", "max_in_flight", "channels[1]"] {
        assert!(error_fields(&problem).iter().any(|f| f == field), "{field} missing: {problem}");
    }
    let response =
        send(&daemon, Method::POST, "/v1/tenants/acme/endpoints", Some(json!({"url": url, "filters": "x"})))
            .await;
    assert_422_mentioning(&response, "filters");
    let response =
        send(&daemon, Method::POST, "/v1/tenants/acme/endpoints", Some(json!({"name": "no url"}))).await;
    assert_422_mentioning(&response, "url");
    let (_, list) = daemon.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(list["data"], json!([]), "a refused endpoint was created");
}

#[tokio::test]
async fn patch_is_a_json_merge_patch() {
    let daemon = daemon_with_tenant("acme").await;
    let receiver = Receiver::start().await;
    let (id, _) = daemon
        .create_endpoint(
            "acme",
            json!({"name": "ERP", "description": "sync", "url": receiver.url("/a"), "event_types": ["ticket.created"],
                   "rate_limit": {"per_second": 5, "burst": 5}, "headers": {"X-Env": "prod", "X-Team": "ops"},
                   "retry": {"max_attempts": 5, "initial_ms": 1000, "max_ms": 60000}}),
        )
        .await;
    let path = format!("/v1/tenants/acme/endpoints/{id}");
    let (_, created) = daemon.get(&path).await;

    let (status, patched) = daemon
        .patch(&path, json!({"url": receiver.url("/b"), "event_types": ["ticket.updated", "ticket.created"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["url"], receiver.url("/b"));
    assert_eq!(patched["event_types"], json!(["ticket.created", "ticket.updated"]));
    for untouched in ["id", "name", "description", "rate_limit", "headers", "retry", "created_at", "enabled"]
    {
        assert_eq!(patched[untouched], created[untouched], "{untouched} changed: {patched}");
    }

    // `null` removes; objects merge member by member.
    let (status, patched) = daemon
        .patch(
            &path,
            json!({"rate_limit": null, "headers": {"X-Env": null, "X-New": "1"}, "retry": {"max_attempts": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["rate_limit"], Value::Null);
    assert_eq!(patched["headers"], json!({"X-New": "1", "X-Team": "ops"}));
    assert_eq!(patched["retry"], json!({"max_attempts": 3, "initial_ms": 1000, "max_ms": 60000}));
    assert_eq!(patched["name"], "ERP");
    let (_, read) = daemon.get(&path).await;
    assert_eq!(read, patched);

    // An empty patch changes nothing.
    let (status, same) = daemon.patch(&path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["url"], patched["url"]);
}

#[tokio::test]
async fn an_invalid_patch_is_refused_and_leaves_the_endpoint_unchanged() {
    let daemon = daemon_with_tenant("acme").await;
    let (id, secret) = daemon
        .create_endpoint(
            "acme",
            json!({"name": "keep", "url": "https://example.com/hook", "event_types": ["a"]}),
        )
        .await;
    let path = format!("/v1/tenants/acme/endpoints/{id}");
    let (_, before) = daemon.get(&path).await;
    for (patch, field) in [
        (json!({"name": "changed", "url": "ftp://example.com/"}), "url"),
        (json!({"name": "changed", "timeout_ms": 5}), "timeout_ms"),
        (json!({"name": "changed", "event_types": ["Bad"]}), "event_types[0]"),
        (json!({"name": "changed", "secret": "nope"}), "secret"),
        (json!({"name": "changed", "batch": {"max_events": 5000, "max_wait_ms": 10}}), "batch.max_events"),
        (json!({"name": "changed", "max_in_flight": 0}), "max_in_flight"),
        (json!({"name": "changed", "headers": {"webhook-id": "x"}}), "headers.webhook-id"),
    ] {
        let response = send(&daemon, Method::PATCH, &path, Some(patch)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let response = send(&daemon, Method::PATCH, &path, Some(json!({"name": "changed", "bogus": 1}))).await;
    assert_422_mentioning(&response, "bogus");
    for (body, status) in [
        ("[1]", StatusCode::UNPROCESSABLE_ENTITY),
        ("\"x\"", StatusCode::UNPROCESSABLE_ENTITY),
        ("{", StatusCode::BAD_REQUEST),
    ] {
        let response = send_raw(&daemon, Method::PATCH, &path, body).await;
        assert_problem(&response, status, "");
    }
    let (_, after) = daemon.get(&path).await;
    assert_eq!(after, before, "a refused PATCH changed the endpoint");
    let (_, shown) = daemon.get(&format!("{path}/secret")).await;
    assert_eq!(shown["key"], secret);
}

#[tokio::test]
async fn deleting_an_endpoint_is_204_then_404() {
    let daemon = daemon_with_tenant("acme").await;
    let (id, _) = daemon.create_endpoint("acme", json!({"url": "https://example.com/hook"})).await;
    let (kept, _) = daemon.create_endpoint("acme", json!({"url": "https://example.com/kept"})).await;
    let path = format!("/v1/tenants/acme/endpoints/{id}");
    let response = send(&daemon, Method::DELETE, &path, None).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{}", response.text());
    assert!(response.body.is_empty());
    assert_problem(&send(&daemon, Method::GET, &path, None).await, StatusCode::NOT_FOUND, "");
    assert_problem(&send(&daemon, Method::DELETE, &path, None).await, StatusCode::NOT_FOUND, "");
    assert_problem(
        &send(&daemon, Method::PATCH, &path, Some(json!({"name": "x"}))).await,
        StatusCode::NOT_FOUND,
        "",
    );
    assert_problem(
        &send(&daemon, Method::GET, &format!("{path}/secret"), None).await,
        StatusCode::NOT_FOUND,
        "",
    );
    let (_, list) = daemon.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(ids_of(&list), [kept]);
    for missing in ["ep_nonsense", "ep_0000000000001", "evt_0000000000001"] {
        let path = format!("/v1/tenants/acme/endpoints/{missing}");
        assert_problem(&send(&daemon, Method::GET, &path, None).await, StatusCode::NOT_FOUND, "");
    }
}

#[tokio::test]
async fn endpoint_lists_sort_search_and_page() {
    let daemon = daemon_with_tenant("acme").await;
    let names = ["charlie", "alpha", "echo", "bravo", "delta"];
    let mut by_name = std::collections::BTreeMap::new();
    let mut created = Vec::new();
    for name in names {
        let (id, _) = daemon
            .create_endpoint("acme", json!({"name": name, "url": format!("https://{name}.example.com/hook")}))
            .await;
        by_name.insert(name, id.clone());
        created.push(id);
    }
    let (special, _) = daemon
        .create_endpoint("acme", json!({"name": "zulu", "url": "https://hooks.example.org/Special-Path"}))
        .await;
    created.push(special.clone());
    let ids = |names: &[&str]| -> Vec<String> { names.iter().map(|n| by_name[n].clone()).collect() };

    let (_, page) = daemon.get("/v1/tenants/acme/endpoints?sort=name").await;
    let mut expected = ids(&["alpha", "bravo", "charlie", "delta", "echo"]);
    expected.push(special.clone());
    assert_eq!(ids_of(&page), expected);
    let (_, page) = daemon.get("/v1/tenants/acme/endpoints?sort=-name").await;
    expected.reverse();
    assert_eq!(ids_of(&page), expected);
    let (_, page) = daemon.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(ids_of(&page), created, "by creation by default");

    let (_, page) = daemon.get("/v1/tenants/acme/endpoints?q=ALP").await;
    assert_eq!(ids_of(&page), ids(&["alpha"]), "q matches the name, ignoring case");
    let (_, page) = daemon.get("/v1/tenants/acme/endpoints?q=special-path").await;
    assert_eq!(ids_of(&page), [special.as_str()], "q matches the url");
    let (_, page) = daemon.get("/v1/tenants/acme/endpoints?q=nowhere").await;
    assert_eq!(page["data"], json!([]));

    let (walked, sizes) = walk(&daemon, "/v1/tenants/acme/endpoints?limit=4&sort=-name").await;
    assert_eq!(walked, expected);
    assert_eq!(sizes, [4, 2]);
    let (walked, sizes) = walk(&daemon, "/v1/tenants/acme/endpoints?limit=2").await;
    assert_eq!(walked, created);
    assert_eq!(sizes, [2, 2, 2]);

    for sort in ["bogus", "-bogus", "secret", "--name", ""] {
        let response =
            send(&daemon, Method::GET, &format!("/v1/tenants/acme/endpoints?sort={sort}"), None).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "sort");
    }
    for (query, field) in [("limit=0", "limit"), ("limit=251", "limit"), ("cursor=x", "cursor")] {
        let response = send(&daemon, Method::GET, &format!("/v1/tenants/acme/endpoints?{query}"), None).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
}

// ---- tenant isolation ----

#[tokio::test]
async fn another_tenants_endpoint_is_404_under_this_tenants_path() {
    let daemon = daemon_with_tenant("acme").await;
    daemon.create_tenant("globex").await;
    let (id, _) =
        daemon.create_endpoint("acme", json!({"name": "acme's", "url": "https://example.com/hook"})).await;
    let foreign = format!("/v1/tenants/globex/endpoints/{id}");
    assert_problem(&send(&daemon, Method::GET, &foreign, None).await, StatusCode::NOT_FOUND, "");
    assert_problem(
        &send(&daemon, Method::GET, &format!("{foreign}/secret"), None).await,
        StatusCode::NOT_FOUND,
        "",
    );
    let response = send(&daemon, Method::PATCH, &foreign, Some(json!({"name": "hijacked"}))).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    assert_problem(&send(&daemon, Method::DELETE, &foreign, None).await, StatusCode::NOT_FOUND, "");
    let (_, list) = daemon.get("/v1/tenants/globex/endpoints").await;
    assert_eq!(list["data"], json!([]));
    let (status, own) = daemon.get(&format!("/v1/tenants/acme/endpoints/{id}")).await;
    assert_eq!(status, StatusCode::OK, "the other tenant's DELETE removed it: {own}");
    assert_eq!(own["name"], "acme's", "the other tenant's PATCH changed it");
}

#[tokio::test]
async fn another_tenants_events_and_attempts_are_invisible() {
    let daemon = daemon_with_tenant("acme").await;
    daemon.create_tenant("globex").await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = daemon.create_endpoint("acme", json!({"url": receiver.url("/")})).await;
    let event = daemon.ingest("acme", "ticket.created", json!({"private": "acme"})).await;
    receiver.wait_for(1, 10 * SECOND).await;
    let attempt = eventually(10 * SECOND, POLL, || async {
        let (_, page) = daemon.get(&format!("/v1/tenants/acme/attempts?event_id={event}")).await;
        page["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await
    .expect("acme's attempt was never listed");

    let foreign = [
        format!("/v1/tenants/globex/events/{event}"),
        format!("/v1/tenants/globex/attempts/{attempt}"),
        format!("/v1/tenants/globex/attempts?endpoint_id={endpoint}"),
    ];
    for path in &foreign {
        let response = send(&daemon, Method::GET, path, None).await;
        assert_problem(&response, StatusCode::NOT_FOUND, "");
        assert!(!response.text().contains("acme"), "{path}: {}", response.text());
    }
    for path in [
        "/v1/tenants/globex/events",
        "/v1/tenants/globex/attempts",
        format!("/v1/tenants/globex/attempts?event_id={event}").as_str(),
    ] {
        let (status, page) = daemon.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["data"], json!([]), "{path}");
    }
    // Still all there for their owner.
    let (status, _) = daemon.get(&format!("/v1/tenants/acme/attempts/{attempt}")).await;
    assert_eq!(status, StatusCode::OK);
}

// ---- the event catalog ----

#[tokio::test]
async fn an_event_type_is_created_with_201_and_replaced_with_200() {
    let daemon = Daemon::start().await;
    let spec = json!({"description": "A ticket was opened", "example": {"ticket": {"id": 1}}});
    let response = send(&daemon, Method::PUT, "/v1/event-types/ticket.created", Some(spec)).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text());
    let created = response.json();
    assert_eq!(created["name"], "ticket.created");
    assert_eq!(created["description"], "A ticket was opened");
    assert_eq!(created["example"], json!({"ticket": {"id": 1}}));
    assert_eq!(created["deprecated"], false);

    let spec = json!({"description": "Replaced", "deprecated": true});
    let response = send(&daemon, Method::PUT, "/v1/event-types/ticket.created", Some(spec)).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let replaced = response.json();
    assert_eq!(replaced["description"], "Replaced");
    assert_eq!(replaced["deprecated"], true);
    assert_eq!(replaced["example"], Value::Null, "PUT replaces the whole entry");
    assert_eq!(replaced["created_at"], created["created_at"]);
    let (status, read) = daemon.get("/v1/event-types/ticket.created").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, replaced);
}

#[tokio::test]
async fn event_types_are_listed_read_and_deleted() {
    let daemon = Daemon::start().await;
    for name in ["ticket.updated", "round.completed", "ticket.created"] {
        let (status, body) =
            daemon.put(&format!("/v1/event-types/{name}"), json!({"description": name})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (all, sizes) = walk(&daemon, "/v1/event-types?limit=2").await;
    assert_eq!(all, ["round.completed", "ticket.created", "ticket.updated"]);
    assert_eq!(sizes, [2, 1]);

    let response = send(&daemon, Method::DELETE, "/v1/event-types/ticket.updated", None).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{}", response.text());
    let response = send(&daemon, Method::GET, "/v1/event-types/ticket.updated", None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    let response = send(&daemon, Method::DELETE, "/v1/event-types/ticket.updated", None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    let (_, list) = daemon.get("/v1/event-types").await;
    assert_eq!(ids_of(&list), ["round.completed", "ticket.created"]);
}

#[tokio::test]
async fn invalid_event_types_are_422_and_store_nothing() {
    let daemon = Daemon::start().await;
    for name in ["Ticket.Created", "a..b", "ticket-created", "a.", "a".repeat(129).as_str()] {
        let response = send(&daemon, Method::PUT, &format!("/v1/event-types/{name}"), Some(json!({}))).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "");
    }
    for (spec, field) in [
        (json!({"example": [1]}), "example"),
        (json!({"example": "{}"}), "example"),
        (json!({"example": 1}), "example"),
        (json!({"description": "d".repeat(4097)}), "description"),
        (json!({"description": 7}), "description"),
        (json!({"deprecated": "yes"}), "deprecated"),
    ] {
        let response = send(&daemon, Method::PUT, "/v1/event-types/ticket.created", Some(spec)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let response =
        send(&daemon, Method::PUT, "/v1/event-types/ticket.created", Some(json!({"colour": "red"}))).await;
    assert_422_mentioning(&response, "colour");
    let (_, list) = daemon.get("/v1/event-types").await;
    assert_eq!(list["data"], json!([]), "a refused event type was stored");
    // The longest description is fine.
    let (status, body) =
        daemon.put("/v1/event-types/ticket.created", json!({"description": "d".repeat(4096)})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

// ---- changes reach the dispatchers ----

#[tokio::test]
async fn an_endpoint_url_change_reaches_its_dispatcher_at_once() {
    let daemon = daemon_with_tenant("acme").await;
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let (id, _) = daemon.create_endpoint("acme", json!({"url": first.url("/one")})).await;
    let before = daemon.ingest("acme", "a", json!({"n": 1})).await;
    assert_eq!(first.wait_for(1, 10 * SECOND).await[0].webhook_id(), before);

    let (status, patched) =
        daemon.patch(&format!("/v1/tenants/acme/endpoints/{id}"), json!({"url": second.url("/two")})).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let after = daemon.ingest("acme", "a", json!({"n": 2})).await;
    let delivered = second.wait_for(1, 10 * SECOND).await;
    assert_eq!((delivered[0].webhook_id(), delivered[0].uri.as_str()), (after.as_str(), "/two"));
    assert_eq!(first.count(), 1, "the old URL still got a delivery");
}

#[tokio::test]
async fn a_disabled_endpoint_keeps_its_events_and_delivers_them_when_enabled_again() {
    let daemon = daemon_with_tenant("acme").await;
    let receiver = Receiver::start().await;
    let (id, _) = daemon.create_endpoint("acme", json!({"url": receiver.url("/")})).await;
    let path = format!("/v1/tenants/acme/endpoints/{id}");
    let (status, patched) = daemon.patch(&path, json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["enabled"], false);

    let mut ids = HashSet::new();
    for n in 0..3 {
        ids.insert(daemon.ingest("acme", "a", json!({"n": n})).await);
    }
    // Proving that nothing arrives takes waiting; 1.5 s is several dispatcher ticks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.count(), 0, "a disabled endpoint got deliveries");
    for id in &ids {
        let (_, event) = daemon.get(&format!("/v1/tenants/acme/events/{id}")).await;
        assert_eq!(event["deliveries"][0]["state"], "pending", "{event}");
    }

    let (status, patched) = daemon.patch(&path, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let delivered = receiver.wait_for(3, 10 * SECOND).await;
    let delivered: HashSet<String> = delivered.iter().map(|r| r.webhook_id().to_owned()).collect();
    assert_eq!(delivered, ids);
}

// ---- bugs ----

#[tokio::test]
async fn a_json_array_body_creates_no_tenant() {
    let daemon = Daemon::start().await;
    let response = send_raw(&daemon, Method::POST, "/v1/tenants", r#"["acme","Acme"]"#).await;
    assert!(response.status.is_client_error(), "{}", response.text());
    assert_problem(&response, response.status, "");
    let (_, list) = daemon.get("/v1/tenants").await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn a_body_with_data_after_the_json_value_creates_no_tenant() {
    let daemon = Daemon::start().await;
    let response = send_raw(&daemon, Method::POST, "/v1/tenants", r#"{"id":"acme"} nonsense"#).await;
    assert_problem(&response, StatusCode::BAD_REQUEST, "");
    let (_, list) = daemon.get("/v1/tenants").await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn path_and_query_rejections_are_problem_json() {
    let daemon = daemon_with_tenant("acme").await;
    for (method, path) in [
        (Method::GET, "/v1/tenants/acme/endpoints?sort=name&sort=url"),
        (Method::GET, "/v1/tenants?limit=1&limit=2"),
        (Method::DELETE, "/v1/tenants/%FF"),
        (Method::GET, "/v1/event-types/%FF"),
    ] {
        let response = send(&daemon, method, path, None).await;
        assert!(response.status.is_client_error(), "{path}: {}", response.text());
        assert_problem(&response, response.status, "");
    }
}

#[tokio::test]
async fn every_list_refuses_an_unknown_parameter_and_takes_its_own_with_a_page() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    daemon.create_endpoint("acme", json!({ "url": "http://127.0.0.1:9/hook", "enabled": false })).await;
    daemon.ingest("acme", "order.created", json!({ "n": 1 })).await;
    let lists = [
        ("/v1/tenants", "limit=1"),
        ("/v1/event-types", "limit=1"),
        ("/v1/tenants/acme/events", "limit=1&type=order.created"),
        ("/v1/tenants/acme/endpoints", "limit=1&q=127.0.0.1"),
        ("/v1/tenants/acme/attempts", "limit=1&status=failed"),
        ("/v1/api-keys", "limit=1&tenant=acme"),
        ("/v1/audit", "limit=1&tenant=acme"),
    ];
    for (list, own) in lists {
        let (status, body) = daemon.get(&format!("{list}?{own}")).await;
        assert_eq!(status, StatusCode::OK, "{list}?{own}: {body}");
        assert!(body["data"].is_array(), "{list}?{own}: {body}");
        // A misspelt filter (`types` for `type`) must not quietly list everything.
        let response = daemon.send(Method::GET, &format!("{list}?{own}&types=order.created"), None).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "types");
    }
    // The filters still filter alongside a page.
    let (_, events) = daemon.get("/v1/tenants/acme/events?limit=5&type=order.created").await;
    assert_eq!(events["data"].as_array().map(Vec::len), Some(1), "{events}");
    let (_, none) = daemon.get("/v1/tenants/acme/events?limit=5&type=order.cancelled").await;
    assert_eq!(none["data"].as_array().map(Vec::len), Some(0), "{none}");
}
