//! Delivery history and what support staff do with it: search (filters, time window, text, sorts,
//! pages), the attempt detail, re-sending an attempt or an event, recovering failed deliveries (also on
//! a disabled endpoint that accumulated deliveries), and endpoint statistics.
//!
//! Every test runs its own daemon against real receivers on loopback; waits are bounded polls.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Daemon, Method, StatusCode, assert_problem, eventually};
use crate::receiver::{Receiver, verify};

const TENANT: &str = "acme";
const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(25);

async fn daemon() -> Daemon {
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    daemon
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// An endpoint at `url` for `types`, with `max_attempts` quick attempts, plus `extra` fields.
fn endpoint(url: &str, types: &[&str], max_attempts: u32, extra: Value) -> Value {
    let mut spec = json!({
        "url": url,
        "event_types": types,
        "retry": {"max_attempts": max_attempts, "initial_ms": 100, "max_ms": 200},
        "timeout_ms": 1000,
    });
    if let (Value::Object(fields), Value::Object(extra)) = (&mut spec, extra) {
        fields.extend(extra);
    }
    spec
}

async fn attempts(daemon: &Daemon, query: &str) -> Value {
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts?{query}")).await;
    assert_eq!(status, StatusCode::OK, "attempts?{query}: {body}");
    body
}

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().map(|a| a.iter().map(|x| text(&x["id"])).collect()).unwrap_or_default()
}

/// Every page of a listing, following `next_cursor`; the pages' ids in order.
async fn all_pages(daemon: &Daemon, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let q = match &cursor {
            Some(c) => format!("{query}&cursor={c}"),
            None => query.to_owned(),
        };
        let page = attempts(daemon, &q).await;
        out.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
    panic!("more than 100 pages for {query}");
}

async fn delivery_state(daemon: &Daemon, event: &str, endpoint: &str) -> Value {
    let (status, detail) = daemon.get(&format!("/v1/tenants/{TENANT}/events/{event}")).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    detail["deliveries"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["endpoint_id"] == endpoint))
        .cloned()
        .unwrap_or_else(|| panic!("{event} has no delivery at {endpoint}: {detail}"))
}

async fn wait_state(daemon: &Daemon, event: &str, endpoint: &str, state: &str) -> Value {
    eventually(15 * SECOND, POLL, || async {
        let d = delivery_state(daemon, event, endpoint).await;
        (d["state"] == state).then_some(d)
    })
    .await
    .unwrap_or_else(|| panic!("{event} at {endpoint} never became {state}"))
}

#[tokio::test]
async fn the_history_is_searched_by_endpoint_event_status_window_and_text_and_sorted_in_pages() {
    let daemon = daemon().await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_status(503);
    failing.set_body("upstream quota exceeded");
    let (good, _) = daemon.create_endpoint(TENANT, endpoint(&ok.url("/ok"), &[], 1, json!({}))).await;
    let (bad, _) =
        daemon.create_endpoint(TENANT, endpoint(&failing.url("/bad"), &["order.paid"], 2, json!({}))).await;
    let first = daemon.ingest(TENANT, "order.created", json!({"n": 1})).await;
    let paid = daemon.ingest(TENANT, "order.paid", json!({"n": 2})).await;
    wait_state(&daemon, &paid, &bad, "failed").await;
    ok.wait_for(2, 10 * SECOND).await;
    let window_start = eventually(5 * SECOND, POLL, || async {
        let page = attempts(&daemon, &format!("endpoint_id={good}")).await;
        (page["data"].as_array().map_or(0, Vec::len) == 2).then(|| text(&page["data"][0]["sent_at"]))
    })
    .await
    .expect("both events reached the good endpoint");
    let later = daemon.ingest(TENANT, "order.created", json!({"n": 3})).await;
    wait_state(&daemon, &later, &good, "succeeded").await;
    let all = eventually(5 * SECOND, POLL, || async {
        let page = attempts(&daemon, "").await;
        (page["data"].as_array().map_or(0, Vec::len) == 5).then_some(page)
    })
    .await
    .expect("3 good + 2 failed attempts");

    // Newest first by default; sent_at ascending is the exact reverse.
    let newest_first = ids(&all);
    let mut oldest_first = ids(&attempts(&daemon, "sort=sent_at").await);
    oldest_first.reverse();
    assert_eq!(newest_first, oldest_first);

    // Filters.
    let failed = attempts(&daemon, "status=failed").await;
    assert_eq!(failed["data"].as_array().map(Vec::len), Some(2), "{failed}");
    assert!(failed["data"].as_array().into_iter().flatten().all(|a| a["endpoint_id"] == bad.as_str()));
    let by_event = attempts(&daemon, &format!("event_id={paid}")).await;
    let endpoints: BTreeSet<String> =
        by_event["data"].as_array().into_iter().flatten().map(|a| text(&a["endpoint_id"])).collect();
    assert_eq!(by_event["data"].as_array().map(Vec::len), Some(3), "1 good + 2 failed: {by_event}");
    assert_eq!(endpoints, BTreeSet::from([good.clone(), bad.clone()]));
    let by_event_and_status = attempts(&daemon, &format!("event_id={paid}&status=succeeded")).await;
    assert_eq!(by_event_and_status["data"][0]["endpoint_id"], good.as_str());
    assert_eq!(by_event_and_status["data"].as_array().map(Vec::len), Some(1));
    let since = attempts(&daemon, &format!("endpoint_id={good}&since={window_start}")).await;
    let since_events: Vec<String> =
        since["data"].as_array().into_iter().flatten().map(|a| text(&a["event_ids"][0])).collect();
    // (first and paid may share a millisecond with window_start, so only `later` is certain here.)
    assert!(since_events.contains(&later), "{since}");
    let until = attempts(&daemon, &format!("endpoint_id={good}&until={window_start}")).await;
    let until_events: Vec<String> =
        until["data"].as_array().into_iter().flatten().map(|a| text(&a["event_ids"][0])).collect();
    assert!(until_events.contains(&first) && !until_events.contains(&later), "{until}");
    let text_hits = attempts(&daemon, "q=QUOTA").await;
    assert_eq!(ids(&text_hits), ids(&failed), "the text is searched case-insensitively in response bodies");
    let status_hits = attempts(&daemon, "q=503").await;
    assert_eq!(ids(&status_hits), ids(&failed));

    // Sorted by status code, paged two at a time: every attempt once, in order.
    for (sort, descending) in [("status_code", false), ("-status_code", true), ("duration_ms", false)] {
        let pages = all_pages(&daemon, &format!("sort={sort}&limit=2")).await;
        let seen: Vec<String> = pages.iter().map(|a| text(&a["id"])).collect();
        assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 5, "{sort}: {seen:?}");
        let key = if sort.ends_with("status_code") { "status_code" } else { "duration_ms" };
        let values: Vec<u64> = pages.iter().map(|a| a[key].as_u64().unwrap_or(0)).collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        if descending {
            sorted.reverse();
        }
        assert_eq!(values, sorted, "{sort}");
    }
    let time_pages = all_pages(&daemon, "limit=2").await;
    assert_eq!(time_pages.iter().map(|a| text(&a["id"])).collect::<Vec<_>>(), newest_first);

    // The detail adds what was sent; credentials in the endpoint's headers are not kept.
    let detail_id = &newest_first[0];
    let (status, detail) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts/{detail_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(detail["request_headers"]["webhook-signature"].as_str().is_some_and(|s| s.starts_with("v1,")));
    assert!(detail["request_body"].as_str().is_some_and(|b| b.contains("\"n\":3")), "{detail}");

    // A first-try success names its attempt on the event.
    let d = delivery_state(&daemon, &later, &good).await;
    assert_eq!(d["attempts"], 1);
    assert!(d["last_attempt_id"].as_str().is_some_and(|a| a.starts_with("att_")), "{d}");
}

#[tokio::test]
async fn bad_history_queries_are_problems_naming_the_parameter() {
    let daemon = daemon().await;
    let base = format!("/v1/tenants/{TENANT}/attempts");
    for (query, field) in [
        ("sinse=2026-01-01T00:00:00Z", "sinse"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
        ("sort=name", "sort"),
        ("status=pending", "status"),
        ("endpoint_id=nope", "endpoint_id"),
        ("event_id=nope", "event_id"),
        ("limit=0", "limit"),
        ("cursor=garbage", "cursor"),
        ("sort=status_code&cursor=att_0000000000000", "cursor"),
    ] {
        let response = daemon.send(Method::GET, &format!("{base}?{query}"), None).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let long = "x".repeat(201);
    let response = daemon.send(Method::GET, &format!("{base}?q={long}"), None).await;
    assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "q");
    let response = daemon.send(Method::GET, &format!("{base}/att_nope"), None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
}

#[tokio::test]
async fn a_failed_delivery_is_resent_by_attempt_and_by_event_and_settles() {
    let daemon = daemon().await;
    let ok = Receiver::start().await;
    let flaky = Receiver::start().await;
    flaky.set_status(500);
    let (good, _) = daemon.create_endpoint(TENANT, endpoint(&ok.url("/ok"), &[], 1, json!({}))).await;
    let (bad, bad_secret) =
        daemon.create_endpoint(TENANT, endpoint(&flaky.url("/f"), &[], 2, json!({}))).await;
    let event = daemon.ingest(TENANT, "order.created", json!({"n": 1})).await;
    wait_state(&daemon, &event, &bad, "failed").await;
    ok.wait_for(1, 10 * SECOND).await;
    let failed = attempts(&daemon, &format!("endpoint_id={bad}")).await;
    let last_failed = text(&failed["data"][0]["id"]);

    // The receiver is fixed; support re-sends the failed attempt.
    flaky.set_status(200);
    let (status, attempt) =
        daemon.post(&format!("/v1/tenants/{TENANT}/attempts/{last_failed}/resend"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{attempt}");
    assert_eq!(attempt["trigger"], "manual");
    assert_eq!(attempt["status_code"], 200);
    assert_eq!(attempt["attempt_number"], 3);
    let got = flaky.wait_for(3, 5 * SECOND).await;
    assert_eq!(got[2].webhook_id(), event, "a re-send keeps the webhook-id receivers dedupe on");
    verify(&bad_secret, &got[2]).unwrap_or_else(|e| panic!("{e}"));
    let d = delivery_state(&daemon, &event, &bad).await;
    assert_eq!((d["state"].as_str(), d["attempts"].as_u64()), (Some("succeeded"), Some(3)), "{d}");
    assert_eq!(d["last_attempt_id"], attempt["id"]);

    // The event again, to every endpoint it went to.
    let (status, answer) =
        daemon.post(&format!("/v1/tenants/{TENANT}/events/{event}/resend"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let endpoints: BTreeSet<String> =
        answer["data"].as_array().into_iter().flatten().map(|a| text(&a["endpoint_id"])).collect();
    assert_eq!(endpoints, BTreeSet::from([good.clone(), bad.clone()]), "{answer}");
    assert_eq!(ok.wait_for(2, 5 * SECOND).await[1].webhook_id(), event);
    // Or to one of them; no body at all means every endpoint.
    let (status, answer) = daemon
        .post(&format!("/v1/tenants/{TENANT}/events/{event}/resend"), json!({"endpoint_id": good}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"].as_array().map(Vec::len), Some(1));
    let response =
        daemon.send(Method::POST, &format!("/v1/tenants/{TENANT}/events/{event}/resend"), None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let manual = attempts(&daemon, &format!("event_id={event}")).await;
    let manual_count =
        manual["data"].as_array().into_iter().flatten().filter(|a| a["trigger"] == "manual").count();
    assert_eq!(manual_count, 1 + 2 + 1 + 2, "{manual}");

    // Bad inputs.
    let base = format!("/v1/tenants/{TENANT}");
    let other = Receiver::start().await;
    let (unrouted, _) =
        daemon.create_endpoint(TENANT, endpoint(&other.url("/o"), &["never.sent"], 1, json!({}))).await;
    let response = daemon
        .send(Method::POST, &format!("{base}/events/{event}/resend"), Some(&json!({"endpoint_id": unrouted})))
        .await;
    assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "endpoint_id");
    let response = daemon
        .send(Method::POST, &format!("{base}/events/{event}/resend"), Some(&json!({"endpoint": 1})))
        .await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", response.text());
    let response = daemon.send(Method::POST, &format!("{base}/events/evt_nope/resend"), None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    let response = daemon.send(Method::POST, &format!("{base}/attempts/att_nope/resend"), None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    let (status, test) =
        daemon.post(&format!("{base}/endpoints/{good}/test"), json!({"type": "t.t", "payload": {}})).await;
    assert_eq!(status, StatusCode::OK, "{test}");
    let response =
        daemon.send(Method::POST, &format!("{base}/attempts/{}/resend", text(&test["id"])), None).await;
    assert_problem(&response, StatusCode::CONFLICT, "");
    let (status, _) = daemon.patch(&format!("{base}/endpoints/{good}"), json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    let response = daemon
        .send(Method::POST, &format!("{base}/events/{event}/resend"), Some(&json!({"endpoint_id": good})))
        .await;
    assert_problem(&response, StatusCode::CONFLICT, "");
}

#[tokio::test]
async fn recover_requeues_failed_deliveries_and_a_disabled_endpoint_keeps_what_it_accumulated() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let (ep, _) = daemon.create_endpoint(TENANT, endpoint(&receiver.url("/r"), &[], 2, json!({}))).await;
    let (_, since) = daemon.ingest_on(TENANT, "order.created", &[], json!({"n": 0})).await;
    let mut failed = vec![];
    for n in 0..3 {
        failed.push(daemon.ingest(TENANT, "order.created", json!({"n": n})).await);
    }
    for e in &failed {
        wait_state(&daemon, e, &ep, "failed").await;
    }
    // Disabled, it accumulates what comes meanwhile.
    let (status, _) =
        daemon.patch(&format!("/v1/tenants/{TENANT}/endpoints/{ep}"), json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    let mut kept = vec![];
    for n in 10..12 {
        kept.push(daemon.ingest(TENANT, "order.created", json!({"n": n})).await);
    }
    receiver.set_status(200);
    let before = receiver.count();
    let (status, answer) =
        daemon.post(&format!("/v1/tenants/{TENANT}/endpoints/{ep}/recover"), json!({"since": since})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["requeued"], 4, "the first event and the three others failed: {answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), before, "nothing goes to a disabled endpoint");
    for e in &kept {
        assert_eq!(delivery_state(&daemon, e, &ep).await["state"], "pending");
    }

    let (status, _) =
        daemon.patch(&format!("/v1/tenants/{TENANT}/endpoints/{ep}"), json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK);
    for e in failed.iter().chain(&kept) {
        wait_state(&daemon, e, &ep, "succeeded").await;
    }
    let recovered = attempts(&daemon, &format!("endpoint_id={ep}&status=succeeded")).await;
    let triggers: Vec<&str> =
        recovered["data"].as_array().into_iter().flatten().filter_map(|a| a["trigger"].as_str()).collect();
    assert_eq!(triggers.iter().filter(|t| **t == "manual").count(), 4, "{triggers:?}");
    assert_eq!(triggers.iter().filter(|t| **t == "scheduled").count(), 2, "{triggers:?}");
    // Nothing left to recover.
    let (status, answer) =
        daemon.post(&format!("/v1/tenants/{TENANT}/endpoints/{ep}/recover"), json!({"since": since})).await;
    assert_eq!((status, answer["requeued"].as_u64()), (StatusCode::ACCEPTED, Some(0)));

    // Bad inputs.
    let path = format!("/v1/tenants/{TENANT}/endpoints/{ep}/recover");
    for (body, field) in [
        (json!({}), "since"),
        (json!({"since": "yesterday"}), "since"),
        (json!({"since": "2999-01-01T00:00:00Z"}), "since"),
        (json!({"since": since, "until": "2000-01-01T00:00:00Z"}), "until"),
        (json!({"since": since, "extra": 1}), "extra"),
    ] {
        let response = daemon.send(Method::POST, &path, Some(&body)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let response = daemon
        .send(
            Method::POST,
            &format!("/v1/tenants/{TENANT}/endpoints/ep_nope/recover"),
            Some(&json!({"since": since})),
        )
        .await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
}

async fn stats(daemon: &Daemon, endpoint: &str) -> Value {
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/endpoints/{endpoint}/stats")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn endpoint_stats_count_attempts_and_show_the_queue_and_survive_a_restart() {
    let mut daemon = daemon().await;
    let ok = Receiver::start().await;
    let down = Receiver::start().await;
    down.set_status(502);
    let (good, _) = daemon.create_endpoint(TENANT, endpoint(&ok.url("/ok"), &["a.b"], 1, json!({}))).await;
    // Retries far apart: they stay in the queue.
    let slow_retry = json!({"retry": {"max_attempts": 5, "initial_ms": 600_000, "max_ms": 600_000}});
    let (bad, _) = daemon.create_endpoint(TENANT, endpoint(&down.url("/d"), &["c.d"], 5, slow_retry)).await;
    for n in 0..4 {
        daemon.ingest(TENANT, "a.b", json!({"n": n})).await;
    }
    // Delivered before the next event goes in, so that `bad` is the endpoint triggered last (the
    // sort below relies on it; ingested back to back, the two deliveries raced).
    ok.wait_for(4, 10 * SECOND).await;
    let waiting = daemon.ingest(TENANT, "c.d", json!({})).await;
    eventually(10 * SECOND, POLL, || async {
        let d = delivery_state(&daemon, &waiting, &bad).await;
        (d["next_attempt_at"].is_string()).then_some(())
    })
    .await
    .expect("a retry was scheduled");

    let s = stats(&daemon, &good).await;
    assert_eq!(s["state"], "enabled");
    assert_eq!(s["last_hour"]["attempts"], 4, "{s}");
    assert_eq!(s["last_day"]["succeeded"], 4, "{s}");
    assert_eq!(s["last_hour"]["error_rate"], 0.0);
    assert!(s["last_hour"]["latency_p50_ms"].as_u64().is_some() && s["last_success_at"].is_string(), "{s}");
    assert_eq!(s["failing_since"], Value::Null);
    assert_eq!(s["queue_depth"], 0, "{s}");
    let s = stats(&daemon, &bad).await;
    assert_eq!(s["last_hour"]["failed"], 1, "{s}");
    assert_eq!(s["last_hour"]["error_rate"], 1.0);
    assert!(s["failing_since"].is_string(), "{s}");
    assert_eq!((s["retries_waiting"].as_u64(), s["queue_depth"].as_u64()), (Some(1), Some(1)), "{s}");
    assert!(s["next_retry_at"].is_string() && s["oldest_pending_age_ms"].as_u64().is_some(), "{s}");

    // The list shows state and last_triggered_at, and sorts by it.
    let (_, list) = daemon.get(&format!("/v1/tenants/{TENANT}/endpoints?sort=-last_triggered_at")).await;
    let order: Vec<String> = list["data"].as_array().into_iter().flatten().map(|e| text(&e["id"])).collect();
    assert_eq!(order, vec![bad.clone(), good.clone()], "{list}");
    assert!(list["data"][0]["last_triggered_at"].is_string() && list["data"][0]["state"] == "enabled");

    // Persisted at a graceful stop (and every minute: a crash loses at most that).
    assert!(daemon.terminate().await.success());
    daemon.restart().await;
    let s = stats(&daemon, &good).await;
    assert_eq!(s["last_hour"]["attempts"], 4, "counts survive a restart: {s}");
    let response =
        daemon.send(Method::GET, &format!("/v1/tenants/{TENANT}/endpoints/ep_nope/stats"), None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
}
