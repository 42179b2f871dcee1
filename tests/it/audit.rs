//! The audit trail: every authenticated write (not event ingest) is recorded with who, what, when, from
//! where and how it ended; `GET /v1/audit` lists it, and never shows a secret.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, assert_problem};

/// The whole trail, newest first, with the admin token.
async fn trail(daemon: &Daemon, query: &str) -> Vec<Value> {
    let (status, body) = daemon.get(&format!("/v1/audit{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().cloned().unwrap_or_default()
}

fn summary(entries: &[Value]) -> Vec<(String, String, u64)> {
    entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("method"), s("route"), e["status"].as_u64().unwrap_or_default())
        })
        .collect()
}

/// Sends `body` with `token` as the bearer.
async fn send_as(daemon: &Daemon, token: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let response = daemon.raw(method, path, &headers, body.map(|b| b.to_string()).unwrap_or_default()).await;
    let text = response.text();
    serde_json::from_str(&text).unwrap_or(json!({ "status": response.status.as_u16(), "text": text }))
}

#[tokio::test]
async fn every_authenticated_write_is_in_the_trail_and_no_secret_is() {
    let mut daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let (endpoint, secret) =
        daemon.create_endpoint("acme", json!({ "url": "http://127.0.0.1:9/hook", "enabled": false })).await;
    let path = format!("/v1/tenants/acme/endpoints/{endpoint}");
    let (status, _) = daemon.patch(&path, json!({ "name": "renamed" })).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = daemon.patch(&path, json!({ "timeout_ms": 1 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = daemon.put("/v1/event-types/ticket.created", json!({ "description": "d" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, key) = daemon
        .post(
            "/v1/api-keys",
            json!({ "name": "erp", "tenant": "acme", "scopes": ["read", "write", "admin"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key_text = key["key"].as_str().expect("key text").to_owned();
    let key_id = key["id"].as_str().expect("key id").to_owned();
    // Not audited: event ingest, reads, and requests without a valid token.
    daemon.ingest("acme", "ticket.created", json!({ "n": 1 })).await;
    let batch = json!({ "events": [{ "type": "ticket.created", "payload": { "n": 2 } }] });
    let (status, body) = daemon.post("/v1/tenants/acme/events/batch", batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    daemon.get("/v1/tenants/acme/endpoints").await;
    let anonymous = daemon.raw(Method::DELETE, &path, &[], "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // The key acts too; then the endpoint goes.
    let created = send_as(
        &daemon,
        &key_text,
        Method::POST,
        "/v1/tenants/acme/endpoints",
        Some(json!({ "url": "http://127.0.0.1:9/other" })),
    )
    .await;
    let other = created["id"].as_str().expect("created by the key").to_owned();
    let (status, _) = daemon.delete(&path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let entries = trail(&daemon, "").await;
    let expect = |m: &str, r: &str, s: u64| (m.to_owned(), r.to_owned(), s);
    assert_eq!(
        summary(&entries),
        [
            expect("DELETE", "/v1/tenants/{tenant}/endpoints/{id}", 204),
            expect("POST", "/v1/tenants/{tenant}/endpoints", 201),
            expect("POST", "/v1/api-keys", 201),
            expect("PUT", "/v1/event-types/{name}", 201),
            expect("PATCH", "/v1/tenants/{tenant}/endpoints/{id}", 422),
            expect("PATCH", "/v1/tenants/{tenant}/endpoints/{id}", 200),
            expect("POST", "/v1/tenants/{tenant}/endpoints", 201),
            expect("POST", "/v1/tenants", 201),
        ]
    );
    let by_key = &entries[1];
    assert_eq!(by_key["actor"], key_id.as_str(), "{by_key}");
    assert_eq!(by_key["target"], other.as_str(), "{by_key}");
    assert_eq!(by_key["tenant"], "acme");
    assert_eq!(by_key["path"], "/v1/tenants/acme/endpoints", "the path as sent, prefix included");
    let first_create = &entries[6];
    assert_eq!(first_create["actor"], "admin token");
    assert_eq!(first_create["client_ip"], "127.0.0.1");
    assert_eq!(first_create["target"], endpoint.as_str(), "the created id is the target");
    assert_eq!(entries[3]["target"], "ticket.created");
    assert_eq!(entries[7]["target"], "acme");
    assert!(entries.iter().all(|e| e["id"].as_str().is_some_and(|i| i.starts_with("aud_"))));

    let text = Value::Array(entries).to_string();
    for secret_text in [secret.as_str(), secret.trim_start_matches("whsec_"), key_text.as_str()] {
        assert!(!text.contains(secret_text), "the trail shows a secret");
    }

    // Filters, paging, and a restart.
    daemon.restart().await;
    let mine = trail(&daemon, &format!("?actor={key_id}")).await;
    assert_eq!(summary(&mine), [expect("POST", "/v1/tenants/{tenant}/endpoints", 201)]);
    let page = daemon.get("/v1/audit?limit=3").await.1;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(3));
    let cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
    let rest = trail(&daemon, &format!("?cursor={cursor}")).await;
    assert_eq!(rest.len(), 5);
    let later = trail(&daemon, "?since=2100-01-01T00:00:00Z").await;
    assert!(later.is_empty());
    let earlier = trail(&daemon, "?until=2000-01-01T00:00:00Z").await;
    assert!(earlier.is_empty());
}

#[tokio::test]
async fn a_tenant_key_reads_only_its_tenants_trail_and_bad_queries_are_422() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    daemon.create_tenant("globex").await;
    daemon.create_endpoint("globex", json!({ "url": "http://127.0.0.1:9/g" })).await;
    let mut keys = Vec::new();
    for scopes in [json!(["read", "write", "admin"]), json!(["read", "write"])] {
        let (status, key) =
            daemon.post("/v1/api-keys", json!({ "name": "k", "tenant": "acme", "scopes": scopes })).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        keys.push(key["key"].as_str().expect("key").to_owned());
    }
    let (admin_key, plain_key) = (&keys[0], &keys[1]);
    send_as(
        &daemon,
        admin_key,
        Method::POST,
        "/v1/tenants/acme/endpoints",
        Some(json!({ "url": "http://127.0.0.1:9/a" })),
    )
    .await;

    let own = send_as(&daemon, admin_key, Method::GET, "/v1/audit", None).await;
    let tenants: Vec<&str> =
        own["data"].as_array().expect("a list").iter().filter_map(|e| e["tenant"].as_str()).collect();
    assert!(!tenants.is_empty() && tenants.iter().all(|t| *t == "acme"), "{own}");
    let other = send_as(&daemon, admin_key, Method::GET, "/v1/audit?tenant=globex", None).await;
    assert_eq!(other["status"], 403, "{other}");
    let no_admin = send_as(&daemon, plain_key, Method::GET, "/v1/audit", None).await;
    assert_eq!(no_admin["status"], 403, "{no_admin}");

    for (query, field) in [("?since=yesterday", "since"), ("?cursor=nope", "cursor"), ("?limit=0", "limit")] {
        let response = daemon.send(Method::GET, &format!("/v1/audit{query}"), None).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    // An unknown parameter is refused too, not ignored (a typo must not widen the listing).
    let response = daemon.send(Method::GET, "/v1/audit?colour=red", None).await;
    assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "colour");
}
