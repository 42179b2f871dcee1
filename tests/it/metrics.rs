//! `/metrics` after real traffic, read by a Prometheus text-format parser (`openmetrics-parser`): every
//! line parses, every family has `# HELP` and `# TYPE`, and the families operators alert on are there
//! with bounded labels.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusType, PrometheusValue};
use serde_json::json;

use crate::harness::{Daemon, StatusCode, eventually};
use crate::receiver::Receiver;

const SECOND: Duration = Duration::from_secs(1);

async fn scrape(daemon: &Daemon) -> String {
    let response = daemon.client().get(daemon.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("metrics text")
}

#[tokio::test]
async fn every_family_is_described_and_typed_and_the_new_families_are_there_after_traffic() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let receiver = Receiver::start().await;
    daemon
        .create_endpoint(
            "acme",
            json!({ "url": receiver.url("/hook"), "batch": { "max_events": 10, "max_wait_ms": 50 } }),
        )
        .await;
    for i in 0..3 {
        daemon.ingest("acme", "ticket.created", json!({ "i": i })).await;
    }
    receiver.wait_for(1, 10 * SECOND).await;
    // An unmatched path and a refusal count too.
    let (status, _) = daemon.get("/v1/no/such/route/7f3a").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unauthorized = daemon.raw(reqwest::Method::GET, "/v1/tenants/acme/events", &[], "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);

    // The log size gauge is refreshed once a second; wait for its first value.
    let text = eventually(10 * SECOND, Duration::from_millis(100), || async {
        let text = scrape(&daemon).await;
        (text.contains("hookd_log_bytes ") && text.contains("hookd_delivery_request_events_count"))
            .then_some(text)
    })
    .await
    .expect("log size and batch sizes within 10 s");

    let exposition = parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("/metrics is not valid text format: {e:?}\n{text}"));
    for (name, family) in &exposition.families {
        assert!(
            text.contains(&format!("\n# HELP {name} ")) || text.starts_with(&format!("# HELP {name} ")),
            "{name} has no # HELP\n{text}"
        );
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no # TYPE\n{text}");
        assert!(!family.help.is_empty(), "{name}: empty help");
        assert!(!matches!(family.family_type, PrometheusType::Unknown), "{name}: untyped");
    }
    // Every sample line belongs to a family the parser saw (nothing was skipped).
    let samples_in_text = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count();
    let parsed: usize = exposition
        .families
        .values()
        .map(|f| {
            f.iter_samples()
                .map(|s| match &s.value {
                    // A histogram sample is its buckets plus _sum and _count lines.
                    PrometheusValue::Histogram(h) => h.buckets.len() + 2,
                    _ => 1,
                })
                .sum::<usize>()
        })
        .sum();
    assert_eq!(parsed, samples_in_text, "the parser skipped lines\n{text}");
    for family in [
        "hookd_http_requests_total",
        "hookd_http_request_seconds",
        "hookd_tenant_events_ingested_total",
        "hookd_delivery_request_events",
        "hookd_log_bytes",
        "hookd_events_ingested_total",
        "hookd_delivery_attempts_total",
        "hookd_queue_depth",
        "hookd_queue_oldest_pending_seconds",
    ] {
        assert!(exposition.families.contains_key(family), "{family} missing from /metrics\n{text}");
    }

    let labelled = |name: &str| -> Vec<(HashMap<String, String>, f64)> {
        exposition.families[name]
            .iter_samples()
            .map(|s| {
                let labels = s
                    .get_labelset()
                    .map(|set| set.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                let value = match &s.value {
                    PrometheusValue::Counter(c) => c.value.as_f64(),
                    PrometheusValue::Gauge(g) | PrometheusValue::Unknown(g) => g.as_f64(),
                    PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
                    PrometheusValue::Summary(s) => s.count.unwrap_or(0) as f64,
                };
                (labels, value)
            })
            .collect()
    };
    let tenant = labelled("hookd_tenant_events_ingested_total");
    assert_eq!(tenant.len(), 1, "{tenant:?}");
    assert_eq!(tenant[0].0.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(tenant[0].1, 3.0, "{tenant:?}");

    // Routes are labelled by their template; unknown paths share one label; refusals are counted.
    let requests = labelled("hookd_http_requests_total");
    let routes: BTreeSet<&str> =
        requests.iter().filter_map(|(l, _)| l.get("route").map(String::as_str)).collect();
    assert!(routes.contains("/v1/tenants/{tenant}/events"), "{routes:?}");
    assert!(routes.contains("unmatched"), "{routes:?}");
    assert!(
        !routes.iter().any(|r| r.contains("acme") || r.contains("7f3a")),
        "a path leaked into a label: {routes:?}"
    );
    let is = |l: &HashMap<String, String>, k: &str, v: &str| l.get(k).map(String::as_str) == Some(v);
    assert!(
        requests.iter().any(|(l, n)| is(l, "route", "/v1/tenants/{tenant}/events")
            && is(l, "method", "GET")
            && is(l, "status_class", "4xx")
            && *n == 1.0),
        "the 401 is counted: {requests:?}"
    );
    let batches = labelled("hookd_delivery_request_events");
    assert!(batches.iter().any(|(_, n)| *n >= 1.0), "batch sizes: {batches:?}");
}

#[tokio::test]
async fn an_endpoint_that_opts_in_gets_its_own_series_within_a_cap() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let receiver = Receiver::start().await;
    let (watched, _) = daemon
        .create_endpoint(
            "acme",
            json!({ "url": receiver.url("/w"), "event_types": ["a.b"], "metrics": true }),
        )
        .await;
    let (quiet, _) =
        daemon.create_endpoint("acme", json!({ "url": receiver.url("/q"), "event_types": ["a.b"] })).await;
    daemon.ingest("acme", "a.b", json!({})).await;
    receiver.wait_for(2, 10 * SECOND).await;
    let text = eventually(10 * SECOND, Duration::from_millis(50), || async {
        let text = scrape(&daemon).await;
        text.contains(&format!("endpoint=\"{watched}\"")).then_some(text)
    })
    .await
    .expect("the opted-in endpoint's series appear");
    assert!(text.contains("hookd_endpoint_attempts_total"), "{text}");
    assert!(text.contains("hookd_endpoint_attempt_seconds"), "{text}");
    assert!(!text.contains(&quiet), "an endpoint that did not opt in has no series");

    // The cap counts across the daemon: 99 more fill it, the next is refused naming the field, and a
    // PATCH cannot sneak past it either.
    for i in 0..99 {
        daemon
            .create_endpoint("acme", json!({ "url": receiver.url(&format!("/m{i}")), "metrics": true }))
            .await;
    }
    let (status, body) = daemon
        .post("/v1/tenants/acme/endpoints", json!({ "url": receiver.url("/over"), "metrics": true }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("metrics"), "{body}");
    let (status, _) =
        daemon.patch(&format!("/v1/tenants/acme/endpoints/{quiet}"), json!({ "metrics": true })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // The watched one may still be patched (it is already counted).
    let (status, _) =
        daemon.patch(&format!("/v1/tenants/acme/endpoints/{watched}"), json!({ "name": "w" })).await;
    assert_eq!(status, StatusCode::OK);
}
