//! Subscriptions beyond type and channel: payload filters, URL and payload templates, formats, and the
//! event catalog's JSON Schemas — end to end, against the real daemon and real receivers.
//!
//! Who an event goes to is read from the event's detail (routing is decided and stored at ingest), and
//! what each receiver got is read from the receiver; together they say exactly who got what.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, assert_problem, error_fields};
use crate::receiver::{Received, Receiver, verify};

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(10);

async fn daemon() -> Daemon {
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    daemon
}

async fn ingest(daemon: &Daemon, event_type: &str, channels: &[&str], payload: Value) -> String {
    daemon.ingest_on(TENANT, event_type, channels, payload).await.0
}

/// The endpoints an event was routed to, from its detail.
async fn routed_to(daemon: &Daemon, event_id: &str) -> BTreeSet<String> {
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/events/{event_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("no deliveries in {body}"))
        .iter()
        .map(|d| d["endpoint_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Checks the Standard Webhooks signature of a request whatever its body (a GET has none, a form body
/// is not JSON).
fn verify_signature(secret: &str, r: &Received) {
    let webhook = standardwebhooks::Webhook::new(secret).unwrap_or_else(|e| panic!("secret: {e}"));
    webhook.verify(&r.body, &r.headers).unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.uri));
}

#[tokio::test]
async fn each_endpoint_gets_exactly_the_events_its_types_channels_and_filter_select() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let ep = |path: &str, extra: Value| {
        let mut spec = json!({ "url": receiver.url(path) });
        if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra) {
            s.extend(e);
        }
        spec
    };
    let (all, _) = daemon.create_endpoint(TENANT, ep("/all", json!({}))).await;
    let (members13, _) = daemon
        .create_endpoint(
            TENANT,
            ep("/members13", json!({ "filter": "role=MEMBER;addresses(is_main).zip_code=13.*" })),
        )
        .await;
    let (flagged, _) = daemon
        .create_endpoint(
            TENANT,
            ep("/flagged", json!({ "channels": ["client_1"], "filter": "indicators(*).value=true" })),
        )
        .await;
    let (admins, _) = daemon
        .create_endpoint(
            TENANT,
            ep("/admins", json!({ "event_types": ["contact.updated"], "filter": "role=ADMIN|OWNER" })),
        )
        .await;
    let address = |main: bool, zip: &str| json!({ "is_main": main, "zip_code": zip });
    // (type, channels, payload, endpoints that must get it)
    let cases: Vec<(&str, Vec<&str>, Value, Vec<&String>)> = vec![
        (
            "contact.created",
            vec![],
            json!({ "role": "MEMBER", "addresses": [address(false, "75001"), address(true, "13008")] }),
            vec![&all, &members13],
        ),
        (
            // The zip code starting with 13 is not on the main address.
            "contact.created",
            vec![],
            json!({ "role": "MEMBER", "addresses": [address(false, "13008"), address(true, "75001")] }),
            vec![&all],
        ),
        (
            // Anchored: MEMBERSHIP is not MEMBER.
            "contact.created",
            vec![],
            json!({ "role": "MEMBERSHIP", "addresses": [address(true, "13008")] }),
            vec![&all],
        ),
        (
            "contact.updated",
            vec!["client_1"],
            json!({ "role": "OWNER", "indicators": [{ "value": false }, { "value": true }] }),
            vec![&all, &flagged, &admins],
        ),
        (
            // Right payload, wrong channel for `flagged`.
            "contact.updated",
            vec!["client_2"],
            json!({ "role": "ADMIN", "indicators": [{ "value": true }] }),
            vec![&all, &admins],
        ),
        (
            // A filter matches a string on its text, so the string "true" matches `true` too.
            "contact.updated",
            vec!["client_1"],
            json!({ "role": "GUEST", "indicators": [{ "value": "true" }] }),
            vec![&all, &flagged],
        ),
        ("contact.updated", vec!["client_1"], json!({ "role": "GUEST" }), vec![&all]),
    ];
    let mut expected_requests = 0;
    let mut ids = Vec::new();
    for (i, (event_type, channels, mut payload, want)) in cases.into_iter().enumerate() {
        payload["case"] = json!(i);
        let id = ingest(&daemon, event_type, &channels, payload).await;
        let want: BTreeSet<String> = want.into_iter().cloned().collect();
        assert_eq!(routed_to(&daemon, &id).await, want, "case {i}");
        expected_requests += want.len();
        ids.push(id);
    }
    // The receivers got exactly that: each case at each endpoint it was routed to, once.
    let requests = receiver.wait_for(expected_requests, WAIT).await;
    let mut got: BTreeSet<(String, u64)> = BTreeSet::new();
    for r in &requests {
        let case = r.json()["data"]["case"].as_u64().unwrap_or(u64::MAX);
        assert!(got.insert((r.uri.clone(), case)), "{} got case {case} twice", r.uri);
    }
    let path_of = |id: &String| {
        [(&all, "/all"), (&members13, "/members13"), (&flagged, "/flagged"), (&admins, "/admins")]
            .iter()
            .find(|(e, _)| *e == id)
            .map(|(_, p)| p.to_string())
            .unwrap_or_default()
    };
    let mut want_got = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        for ep in routed_to(&daemon, id).await {
            want_got.insert((path_of(&ep), i as u64));
        }
    }
    assert_eq!(got, want_got);

    // A filter changed by PATCH applies to the next event; `null` removes it.
    let path = format!("/v1/tenants/{TENANT}/endpoints/{members13}");
    let (status, body) = daemon.patch(&path, json!({ "filter": "role=GUEST" })).await;
    assert_eq!((status, &body["filter"]), (StatusCode::OK, &json!("role=GUEST")), "{body}");
    let guest = ingest(&daemon, "contact.created", &[], json!({ "role": "GUEST" })).await;
    assert_eq!(routed_to(&daemon, &guest).await, BTreeSet::from([all.clone(), members13.clone()]));
    let (status, body) = daemon.patch(&path, json!({ "filter": null })).await;
    assert_eq!((status, &body["filter"]), (StatusCode::OK, &Value::Null), "{body}");
    let any = ingest(&daemon, "contact.created", &[], json!({ "role": "NOBODY" })).await;
    assert_eq!(routed_to(&daemon, &any).await, BTreeSet::from([all.clone(), members13.clone()]));
}

#[tokio::test]
async fn a_get_endpoint_receives_its_url_filled_from_the_event_and_signed() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let url = format!("{}?type=${{type}}&event=${{id}}", receiver.url("/contacts/${data.contact_number}"));
    let (endpoint, secret) = daemon.create_endpoint(TENANT, json!({ "url": url, "method": "GET" })).await;
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/endpoints/{endpoint}")).await;
    assert_eq!((status, body["url"].as_str()), (StatusCode::OK, Some(url.as_str())), "{body}");

    let id = ingest(&daemon, "contact.updated", &[], json!({ "contact_number": "A 1/x", "n": 1 })).await;
    let got = receiver.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.method, Method::GET);
    assert_eq!(r.uri, format!("/contacts/A%201%2Fx?type=contact.updated&event={id}"));
    assert!(r.body.is_empty(), "a GET carries no body: {:?}", r.body);
    assert_eq!(r.header("webhook-id"), Some(id.as_str()));
    assert_eq!(r.header("content-type"), None);
    verify_signature(&secret, r);

    // A missing value renders empty; the delivery still goes out.
    ingest(&daemon, "contact.updated", &[], json!({ "other": true })).await;
    let got = receiver.wait_for(2, WAIT).await;
    assert!(got[1].uri.starts_with("/contacts/?type=contact.updated&event=evt_"), "{}", got[1].uri);
}

#[tokio::test]
async fn a_payload_template_shapes_the_body_that_is_signed_sent_and_kept_in_the_history() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    // The first try fails, so the delivery has attempts in the history.
    receiver.set_sequence([500]);
    let template = r#"{"contact": "${data.contact_number}", "n": ${data.count}, "tags": ${data.tags}, "kind": "sms:${type}", "none": ${data.missing}}"#;
    let spec = json!({
        "url": receiver.url("/sms/${data.contact_number}"),
        "payload_template": template,
        "retry": { "max_attempts": 3, "initial_ms": 100, "max_ms": 200 },
    });
    let (endpoint, secret) = daemon.create_endpoint(TENANT, spec).await;
    let payload = json!({ "contact_number": "+33 6 \"12\"", "count": 3, "tags": ["a", "b"] });
    let id = ingest(&daemon, "contact.updated", &[], payload).await;
    let got = receiver.wait_for(2, WAIT).await;
    let body = verify(&secret, &got[1]).unwrap_or_else(|e| panic!("{e}"));
    let expected = json!({
        "contact": "+33 6 \"12\"", "n": 3, "tags": ["a", "b"], "kind": "sms:contact.updated", "none": null,
    });
    assert_eq!(body, expected);
    assert_eq!(got[1].uri, "/sms/%2B33%206%20%2212%22");
    assert_eq!(got[1].header("webhook-id"), Some(id.as_str()));

    // The history shows the URL and body as sent, for both attempts.
    let (status, list) =
        daemon.get(&format!("/v1/tenants/{TENANT}/attempts?endpoint_id={endpoint}&event_id={id}")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let attempts = list["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{list}");
    for a in &attempts {
        let attempt_id = a["id"].as_str().unwrap_or_default();
        let (_, detail) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts/{attempt_id}")).await;
        assert_eq!(detail["url"], receiver.url("/sms/%2B33%206%20%2212%22"), "{detail}");
        let sent: Value = serde_json::from_str(detail["request_body"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("request_body: {e}: {detail}"));
        assert_eq!(sent, expected);
    }

    // Changing the template later does not rewrite what the history says was sent.
    let path = format!("/v1/tenants/{TENANT}/endpoints/{endpoint}");
    let (status, _) = daemon.patch(&path, json!({ "payload_template": "{\"v\": 2}" })).await;
    assert_eq!(status, StatusCode::OK);
    let first = attempts[0]["id"].as_str().unwrap_or_default();
    let (_, detail) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts/{first}")).await;
    assert!(detail["request_body"].as_str().unwrap_or_default().contains("sms:contact.updated"), "{detail}");
}

#[tokio::test]
async fn a_form_endpoint_gets_its_rendered_payload_form_encoded() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let spec = json!({
        "url": receiver.url("/erp"),
        "format": "form",
        "payload_template": "{\"who\": \"${data.name}\"}",
    });
    let (_, secret) = daemon.create_endpoint(TENANT, spec).await;
    ingest(&daemon, "contact.updated", &[], json!({ "name": "Zoé & co" })).await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("content-type"), Some("application/x-www-form-urlencoded"));
    verify_signature(&secret, &got[0]);
    let body = String::from_utf8_lossy(&got[0].body).into_owned();
    let encoded = body.strip_prefix("payload=").unwrap_or_else(|| panic!("not payload=…: {body}"));
    assert!(!encoded.contains(['&', '=', ' ', '+']), "{body}");
    let json = percent_encoding::percent_decode_str(encoded).decode_utf8_lossy();
    let payload: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(payload, json!({ "who": "Zoé & co" }));
}

#[tokio::test]
async fn malformed_filters_templates_and_shapes_are_422_naming_field_and_position() {
    let daemon = daemon().await;
    let base = "http://127.0.0.1:9/";
    // (spec fields, field named, position when the error has one)
    let cases: Vec<(Value, &str, Option<u64>)> = vec![
        (json!({ "url": "http://127.0.0.1:9/?data={contactNumber}" }), "url", Some(26)),
        (json!({ "url": "http://127.0.0.1:9/?data=${contact id}" }), "url", None),
        (json!({ "url": "http://127.0.0.1:9/x/${data.id" }), "url", Some(22)),
        (json!({ "url": "http://127.0.0.1:9/${}" }), "url", Some(20)),
        (json!({ "url": "http://${data.host}/x" }), "url", None),
        (json!({ "url": base, "method": "GET" }), "url", None),
        (
            json!({ "url": "http://127.0.0.1:9/${id}", "method": "GET", "payload_template": "{}" }),
            "payload_template",
            None,
        ),
        (
            json!({ "url": "http://127.0.0.1:9/${id}", "batch": { "max_events": 10, "max_wait_ms": 10 } }),
            "batch",
            None,
        ),
        (
            json!({ "url": base, "payload_template": "{}", "batch": { "max_events": 10, "max_wait_ms": 10 } }),
            "batch",
            None,
        ),
        (json!({ "url": base, "filter": "role" }), "filter", Some(5)),
        (json!({ "url": base, "filter": "a=1;;b=2" }), "filter", Some(5)),
        (json!({ "url": base, "filter": "a(=1" }), "filter", None),
        (json!({ "url": base, "filter": "role=(unclosed" }), "filter", Some(6)),
        (json!({ "url": base, "filter": "" }), "filter", None),
        (json!({ "url": base, "payload_template": "{\"a\": }" }), "payload_template", Some(7)),
        (json!({ "url": base, "payload_template": "{\"a\": \"${x y}\"}" }), "payload_template", None),
        (json!({ "url": base, "payload_template": "x".repeat(70_000) }), "payload_template", None),
        (json!({ "url": base, "filter": 7 }), "filter", None),
    ];
    let path = format!("/v1/tenants/{TENANT}/endpoints");
    for (spec, field, position) in cases {
        let response = daemon.send(Method::POST, &path, Some(&spec)).await;
        let problem = assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
        if let Some(position) = position {
            let error = problem["errors"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["field"] == field))
                .cloned()
                .unwrap_or_default();
            assert_eq!(error["position"], json!(position), "{spec}: {problem}");
            assert!(
                error["message"].as_str().unwrap_or_default().contains(&position.to_string()),
                "{problem}"
            );
        }
    }
    let (_, list) = daemon.get(&path).await;
    assert_eq!(list["data"], json!([]), "a refused endpoint was created");

    // A PATCH that would store a bad filter changes nothing.
    let (id, _) = daemon.create_endpoint(TENANT, json!({ "url": base, "filter": "role=A" })).await;
    let (status, body) = daemon.patch(&format!("{path}/{id}"), json!({ "filter": "role(" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_fields(&body), ["filter"]);
    let (_, current) = daemon.get(&format!("{path}/{id}")).await;
    assert_eq!(current["filter"], "role=A");
}

#[tokio::test]
async fn payloads_are_checked_against_their_types_schema() {
    let mut daemon = daemon().await;
    let schema = json!({
        "type": "object",
        "required": ["ticket_id", "seats"],
        "properties": {
            "ticket_id": { "type": "string", "pattern": "^T[0-9]+$" },
            "seats": { "type": "array", "items": { "type": "integer", "minimum": 1 } },
        },
    });
    let example = json!({ "ticket_id": "T1", "seats": [4] });
    let (status, body) = daemon
        .put(
            "/v1/event-types/ticket.created",
            json!({ "description": "A ticket was sold", "schema": schema, "example": example }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["schema"], schema);

    let events = format!("/v1/tenants/{TENANT}/events");
    let good = json!({ "type": "ticket.created", "payload": { "ticket_id": "T12", "seats": [1, 2] } });
    let bad = json!({ "type": "ticket.created", "payload": { "ticket_id": "X", "seats": [1, 0] } });
    let (status, body) = daemon.post(&events, good.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, problem) = daemon.post(&events, bad.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let mut fields = error_fields(&problem);
    fields.sort();
    assert_eq!(fields, ["payload/seats/1", "payload/ticket_id"], "{problem}");
    // Other types are not checked.
    let (status, _) = daemon.post(&events, json!({ "type": "ticket.voided", "payload": { "x": 1 } })).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // A batch with one bad event is refused whole, naming it.
    let (_, before) = daemon.get(&events).await;
    let batch = json!({ "events": [good.clone(), good.clone(), bad.clone()] });
    let (status, problem) = daemon.post(&format!("{events}/batch"), batch).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(error_fields(&problem).iter().all(|f| f.starts_with("events[2].payload/")), "{problem}");
    let (_, after) = daemon.get(&events).await;
    assert_eq!(before["data"], after["data"], "a refused batch stored events");

    // Bad schemas, and examples their own schema refuses, are refused.
    for (spec, field) in [
        (json!({ "schema": { "type": "nonsense" } }), "schema"),
        (json!({ "schema": { "$ref": "https://example.com/s.json" } }), "schema"),
        (json!({ "schema": [1] }), "schema"),
        (json!({ "schema": schema, "example": { "ticket_id": 5, "seats": [] } }), "example/ticket_id"),
    ] {
        let response = daemon.send(Method::PUT, "/v1/event-types/ticket.other", Some(&spec)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }

    // Deprecated types are still accepted, and flagged in the catalog; the schema survives a restart.
    let (status, _) =
        daemon.put("/v1/event-types/ticket.created", json!({ "schema": schema, "deprecated": true })).await;
    assert_eq!(status, StatusCode::OK);
    daemon.restart().await;
    let (_, listed) = daemon.get("/v1/event-types").await;
    assert_eq!(listed["data"][0]["deprecated"], true, "{listed}");
    let (status, _) = daemon.post(&events, good).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = daemon.post(&events, bad.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Without a schema (replaced, then deleted) nothing is checked.
    let (status, _) = daemon.put("/v1/event-types/ticket.created", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = daemon.post(&events, bad.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = daemon.delete("/v1/event-types/ticket.created").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}
