//! Micro-benchmarks of the hot path's pure pieces and of the durable append.
//!
//! `cargo bench --bench micro` (add `-- --quick` for a fast pass). Numbers go into the closing notes with
//! the machine's conditions; nothing here asserts a time.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hookd::config::Durability;
use hookd::deliver::request;
use hookd::deliver::sign::{Secret, sign};
use hookd::filter::Filter;
use hookd::ids::IdGen;
use hookd::model::{AttemptRecord, EndpointRecord, EventRecord, HttpMethod, LogRecord, Trigger};
use hookd::registry::Registry;
use hookd::route::Payload;
use hookd::store::{
    AttemptOutcomeWrite, Committer, DeliveryChange, PreparedEvent, Store, StoreSettings, records,
};
use hookd::template::{PayloadTemplate, UrlTemplate};

fn payload_500() -> String {
    let mut p = String::from(r#"{"ticket":{"id":"T-1","customer":"client_42","lines":["#);
    while p.len() < 480 {
        p.push_str(r#"{"sku":"A-1","qty":1},"#);
    }
    p.push_str(r#"{"sku":"Z","qty":0}]}}"#);
    p
}

fn event() -> EventRecord {
    EventRecord {
        event_type: "ticket.created".into(),
        channels: vec!["client_42".into()],
        payload: payload_500(),
        received_at: 1_795_371_202_536,
        idempotency_key: None,
        routes: vec![1, 2, 3],
    }
}

fn endpoint(id: u64, types: Vec<String>, channels: Vec<String>) -> EndpointRecord {
    let secret = Secret::generate().to_whsec();
    EndpointRecord::with_defaults(id, 1, "https://example.com/hook".into(), secret, types, channels)
}

fn signing(c: &mut Criterion) {
    let secret = Secret::generate();
    let body = payload_500();
    let mut g = c.benchmark_group("sign");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hmac_sha256_500B", |b| {
        b.iter(|| sign(black_box(&secret), "evt_6c3j9sk5jzr00", 1_795_384_859, black_box(body.as_bytes())))
    });
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let rec = LogRecord { events: vec![event()] };
    let bytes = records::encode(&rec).unwrap_or_default();
    let batch = LogRecord { events: (0..100).map(|_| event()).collect() };
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_event_500B", |b| b.iter(|| records::encode(black_box(&rec))));
    g.bench_function("decode_event_500B", |b| {
        b.iter(|| records::decode::<LogRecord>(b"k", black_box(&bytes)))
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("encode_100_events", |b| b.iter(|| records::encode(black_box(&batch))));
    g.finish();
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    let ev = event();
    g.bench_function("body_single_event", |b| b.iter(|| request::body(black_box(&[(7, &ev)]), false)));
    g.finish();
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for n in [1u64, 100, 10_000] {
        let mut reg = Registry::default();
        for i in 0..n {
            // A realistic mix: a tenth subscribe to every type, the rest to one of 50 types and a channel.
            let (types, channels) = if i % 10 == 0 {
                (vec![], vec![])
            } else {
                (vec![format!("type_{}.created", i % 50)], vec![format!("client_{}", i % 1000)])
            };
            reg.put_endpoint(endpoint(i + 1, types, channels));
        }
        let channels = vec!["client_7".to_owned()];
        let payload = Payload::new("{}");
        g.bench_with_input(BenchmarkId::new("endpoints", n), &reg, |b, reg| {
            b.iter(|| reg.route(1, black_box("type_7.created"), black_box(&channels), &payload))
        });
        // The same tenant with a payload filter on every endpoint: the event's payload is parsed once
        // (a fresh `Payload` per event, as ingest does) and each matching endpoint's filter evaluated.
        let mut filtered = Registry::default();
        for e in reg.tenant_endpoints(1) {
            let mut rec = e.record.clone();
            rec.filter = Some(if rec.id % 2 == 0 {
                "role=MEMBER;addresses(is_main).zip_code=13.*".into()
            } else {
                "indicators(*).value=true".into()
            });
            filtered.put_endpoint(rec);
        }
        let text = contact_payload();
        g.bench_with_input(BenchmarkId::new("filtered_endpoints", n), &filtered, |b, reg| {
            b.iter(|| {
                let payload = Payload::new(black_box(&text));
                reg.route(1, black_box("type_7.created"), black_box(&channels), &payload)
            })
        });
        // What routing's index costs a config write: the registry is copied, one endpoint changes.
        let changed = endpoint(n / 2 + 1, vec!["type_3.created".into()], vec!["client_3".into()]);
        g.bench_with_input(BenchmarkId::new("write_one_of", n), &reg, |b, reg| {
            b.iter(|| {
                let mut next = reg.clone();
                next.put_endpoint(black_box(changed.clone()));
                next
            })
        });
    }
    g.finish();
}

/// A contact as a ticketing platform sends it, ~500 bytes.
fn contact_payload() -> String {
    serde_json::json!({
        "contact_number": "C-0042-7781", "role": "MEMBER", "first_name": "Zoé", "last_name": "Martin",
        "email": "zoe.martin@example.com", "phone": "+33 6 12 34 56 78",
        "addresses": [
            {"is_main": false, "street": "1 rue de Rivoli", "zip_code": "75001", "city": "Paris"},
            {"is_main": true, "street": "12 quai du Port", "zip_code": "13002", "city": "Marseille"},
        ],
        "indicators": [{"name": "newsletter", "value": false}, {"name": "vip", "value": true}],
        "updated_at": "2026-11-23T10:00:00Z",
    })
    .to_string()
}

fn filters_and_templates(c: &mut Criterion) {
    let text = contact_payload();
    let Ok(data) = serde_json::from_str::<serde_json::Value>(&text) else { panic!("payload") };
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_payload_500B", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&text)))
    });
    for (name, text) in [
        ("eq", "role=MEMBER"),
        ("flagged_element", "role=MEMBER;addresses(is_main).zip_code=13.*"),
        ("any_element", "indicators(*).value=true"),
    ] {
        let Ok(filter) = Filter::parse(text) else { panic!("filter {text}") };
        g.bench_function(BenchmarkId::new("match", name), |b| b.iter(|| filter.matches(black_box(&data))));
    }
    g.finish();
    let event = serde_json::json!({
        "id": "evt_0123456789abc", "type": "contact.updated", "timestamp": "2026-11-23T10:00:00Z",
        "channels": ["client_42"], "data": data,
    });
    let mut g = c.benchmark_group("template");
    g.throughput(Throughput::Elements(1));
    let Ok(url) = UrlTemplate::parse("https://erp.example.com/contacts/${data.contact_number}?t=${type}")
    else {
        panic!("url template")
    };
    g.bench_function("render_url", |b| b.iter(|| url.render(black_box(&event))));
    let Ok(body) = PayloadTemplate::parse(
        r#"{"to": "${data.phone}", "text": "Hello ${data.first_name}, your contact ${data.contact_number} changed", "addresses": ${data.addresses}}"#,
    ) else {
        panic!("payload template")
    };
    g.bench_function("render_payload", |b| b.iter(|| body.render(black_box(&event))));
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let mut g = c.benchmark_group("append");
    for (name, durability) in [("os", Durability::Os), ("fsync", Durability::Fsync)] {
        let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
        let store = match Store::open(&StoreSettings {
            data_dir: dir.path().to_path_buf(),
            durability,
            cache_bytes: 64 << 20,
            master_key: None,
        }) {
            Ok(s) => s,
            Err(e) => panic!("store: {e}"),
        };
        let (committer, _thread) = match Committer::spawn(store, Arc::new(IdGen::new(0)), Box::new(|_| {})) {
            Ok(c) => c,
            Err(e) => panic!("committer: {e}"),
        };
        let prepared = PreparedEvent {
            event_type: "ticket.created".into(),
            channels: vec!["client_42".into()],
            payload: payload_500(),
            idempotency_key: None,
            routes: vec![1],
        };
        // 64 concurrent single-event appends share group commits, as 64 connections would.
        g.throughput(Throughput::Elements(64));
        g.bench_function(BenchmarkId::new("64_concurrent_single", name), |b| {
            b.to_async(&rt).iter(|| {
                let committer = committer.clone();
                let prepared = prepared.clone();
                async move {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..64 {
                        let (c, p) = (committer.clone(), prepared.clone());
                        set.spawn(async move { c.commit(1, vec![p]).await });
                    }
                    while set.join_next().await.is_some() {}
                }
            })
        });
        g.throughput(Throughput::Elements(100));
        g.bench_function(BenchmarkId::new("batch_of_100", name), |b| {
            b.to_async(&rt).iter(|| {
                let committer = committer.clone();
                let batch = vec![prepared.clone(); 100];
                async move { committer.commit(1, batch).await }
            })
        });
    }
    g.finish();
}

/// Recording finished attempts: a dispatcher's group of 64 first-try successes (with its cursor), as a
/// draining endpoint records them, into a history that grows as the benchmark runs.
fn history(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { panic!("tempdir") };
    let store = match Store::open(&StoreSettings {
        data_dir: dir.path().to_path_buf(),
        durability: Durability::Fsync,
        cache_bytes: 64 << 20,
        master_key: None,
    }) {
        Ok(s) => s,
        Err(e) => panic!("store: {e}"),
    };
    let header = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let attempt = |event: u64| AttemptRecord {
        endpoint_id: 9,
        webhook_id: event,
        batch: false,
        events: vec![event],
        url: "https://example.com/hooks/tickets".into(),
        method: HttpMethod::Post,
        sent_at: hookd::time::now_ms(), // sent just now: not a late attempt
        succeeded: true,
        status_code: Some(204),
        request_headers: vec![
            header("content-type", "application/json"),
            header("user-agent", "hookd/0.1"),
            header("webhook-id", "evt_0123456789abc"),
            header("webhook-timestamp", "1795371202"),
            header("webhook-signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
        ],
        response_headers: vec![header("date", "Mon, 23 Nov 2026 09:00:00 GMT"), header("server", "rx")],
        response_body: String::new(),
        response_truncated: false,
        error_class: None,
        error: None,
        duration_ms: 1,
        attempt_number: 1,
        trigger: Trigger::Scheduled,
        request_body: None,
    };
    let ids = IdGen::new(0);
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(64));
    g.bench_function("record_64_attempts", |b| {
        b.iter(|| {
            let first = ids.next_block(64);
            let attempts: Vec<AttemptRecord> = (first..first + 64).map(|id| attempt(id - 1_000)).collect();
            let writes: Vec<AttemptOutcomeWrite<'_>> = attempts
                .iter()
                .enumerate()
                .map(|(i, a)| AttemptOutcomeWrite {
                    tenant: 1,
                    endpoint: 9,
                    attempt_id: first + i as u64,
                    attempt: a,
                    delivery: &DeliveryChange::Unchanged,
                    cursor: (i == 63).then_some(a.webhook_id),
                })
                .collect();
            if let Err(e) = store.write_attempt_outcomes(black_box(&writes)) {
                panic!("record: {e}");
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_one_attempt", |b| {
        let last = ids.last();
        let mut n = 0u64;
        b.iter(|| {
            n = (n + 7919) % 10_000;
            black_box(store.attempt(1, last - n).ok().flatten())
        })
    });
    g.finish();
}

fn ingest_parsing(c: &mut Criterion) {
    let event =
        format!(r#"{{"type":"ticket.created","channels":["client_42"],"payload":{}}}"#, payload_500());
    let batch = format!(r#"{{"events":[{}]}}"#, vec![event.as_str(); 100].join(","));
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_single_500B", |b| {
        b.iter(|| hookd::ingest::parse_single(black_box(event.as_bytes()), None).is_ok())
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_batch_of_100", |b| {
        b.iter(|| hookd::ingest::parse_batch(black_box(batch.as_bytes()), 1000).is_ok())
    });
    // Parsed, validated and routed (one matching endpoint): what a batch costs before the committer.
    let mut reg = Registry::default();
    reg.put_endpoint(endpoint(1, vec!["ticket.created".into()], vec![]));
    g.bench_function("parse_and_prepare_batch_of_100", |b| {
        b.iter(|| {
            hookd::ingest::parse_batch(black_box(batch.as_bytes()), 1000)
                .and_then(|parsed| hookd::ingest::prepare_batch(&reg, 1, parsed))
                .is_ok()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = signing, encoding, routing, filters_and_templates, group_commit, history, ingest_parsing
}
criterion_main!(benches);
