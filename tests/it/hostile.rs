//! Hostile bodies on every write route of the management API (ingest has its own suite in `ingest`):
//! random bytes, a valid body cut short, deep nesting, huge strings, wrong JSON types, invalid UTF-8.
//! Every one gets a 4xx problem, nothing is half-written, and the daemon stays healthy.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode};

/// A hostile variant of `valid`, a valid body for the route.
fn hostile(rng: &mut StdRng, valid: &Value, kind: usize) -> Vec<u8> {
    let text = valid.to_string();
    match kind {
        0 => {
            let mut bytes = vec![0u8; rng.random_range(0..2000)];
            rng.fill_bytes(&mut bytes);
            bytes
        }
        1 => text.as_bytes()[..rng.random_range(0..text.len())].to_vec(),
        2 => {
            let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
            let field = valid.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
            format!("{{\"{field}\":{deep}}}").into_bytes()
        }
        3 | 4 => {
            // Each field of the valid body replaced in turn by a huge string or by a wrong type.
            let Some(object) = valid.as_object() else { return b"[]".to_vec() };
            let keys: Vec<&String> = object.keys().collect();
            let field = keys[rng.random_range(0..keys.len())].clone();
            let mut body = valid.clone();
            body[&field] = if kind == 3 {
                json!("h".repeat(rng.random_range(5_000..300_000)))
            } else {
                let wrong = [json!(7), json!(true), json!([[1]]), json!({ "x": {} }), json!(-1.5)];
                let mut value = wrong[rng.random_range(0..wrong.len())].clone();
                // A number where a number is expected could be valid: make it an object instead.
                if object[&field].is_number() && value.is_number() {
                    value = json!({ "n": 1 });
                }
                value
            };
            body.to_string().into_bytes()
        }
        _ => [&b"{\""[..], &[0xff, 0xfe], &b"\":1}"[..]].concat(),
    }
}

#[tokio::test]
async fn hostile_bodies_on_every_management_write_route_get_4xx_and_change_nothing() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    // Ingested before the endpoint exists: routed nowhere, so nothing is delivered during the test.
    let event = daemon.ingest("acme", "a.b", json!({})).await;
    let (endpoint, _) = daemon.create_endpoint("acme", json!({ "url": "http://127.0.0.1:9/hook" })).await;
    let (status, key) = daemon.post("/v1/api-keys", json!({ "name": "k", "scopes": ["read"] })).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key_id = key["id"].as_str().expect("key id").to_owned();
    let routes: Vec<(Method, String, Value)> = vec![
        (Method::POST, "/v1/tenants".into(), json!({ "id": "globex", "name": "Globex" })),
        (Method::PATCH, "/v1/tenants/acme".into(), json!({ "name": "Acme" })),
        (
            Method::POST,
            "/v1/tenants/acme/endpoints".into(),
            json!({ "url": "http://127.0.0.1:9/x", "event_types": ["a.b"], "channels": ["c"], "filter": "a=1" }),
        ),
        (
            Method::PATCH,
            format!("/v1/tenants/acme/endpoints/{endpoint}"),
            json!({ "name": "n", "rate_limit": { "per_second": 5, "burst": 5 } }),
        ),
        (
            Method::POST,
            format!("/v1/tenants/acme/endpoints/{endpoint}/secret/rotate"),
            json!({ "grace_seconds": 5 }),
        ),
        (
            Method::PUT,
            "/v1/event-types/a.b".into(),
            json!({ "description": "d", "schema": { "type": "object" } }),
        ),
        (
            Method::POST,
            "/v1/api-keys".into(),
            json!({ "name": "n", "scopes": ["read"], "allowed_ips": ["10.0.0.0/8"] }),
        ),
        (Method::PATCH, format!("/v1/api-keys/{key_id}"), json!({ "name": "n" })),
        (
            Method::POST,
            format!("/v1/tenants/acme/endpoints/{endpoint}/recover"),
            json!({ "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z" }),
        ),
        (Method::POST, format!("/v1/tenants/acme/events/{event}/resend"), json!({ "endpoint_id": endpoint })),
    ];
    let (_, endpoints_before) = daemon.get("/v1/tenants/acme/endpoints").await;
    let (_, secret_before) = daemon.get(&format!("/v1/tenants/acme/endpoints/{endpoint}/secret")).await;
    let seed = 0x0bad_b0d1;
    let mut rng = StdRng::seed_from_u64(seed);
    for (method, path, valid) in &routes {
        for i in 0..24 {
            let body = hostile(&mut rng, valid, i % 6);
            let shown = String::from_utf8_lossy(&body[..body.len().min(100)]).into_owned();
            let auth = format!("Bearer {}", crate::harness::ADMIN_TOKEN);
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            let response = daemon.raw(method.clone(), path, &headers, body).await;
            assert!(
                response.status.is_client_error(),
                "{method} {path} body {i} (seed {seed:#x}) {shown:?}: {} {}",
                response.status,
                response.text()
            );
            let content_type = response.header("content-type").unwrap_or_default();
            assert!(content_type.starts_with("application/problem+json"), "{method} {path}: {content_type}");
        }
    }
    let (status, _) = daemon.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    // Nothing was created or changed.
    let (_, tenants) = daemon.get("/v1/tenants").await;
    assert_eq!(tenants["data"].as_array().map(Vec::len), Some(1), "{tenants}");
    let (_, types) = daemon.get("/v1/event-types").await;
    assert_eq!(types["data"], json!([]), "{types}");
    let (_, keys) = daemon.get("/v1/api-keys").await;
    assert_eq!(keys["data"].as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys["data"][0]["name"], "k");
    assert_eq!(daemon.get("/v1/tenants/acme/endpoints").await.1, endpoints_before);
    assert_eq!(daemon.get(&format!("/v1/tenants/acme/endpoints/{endpoint}/secret")).await.1, secret_before);
}
