//! Building the request a receiver gets: body, Standard Webhooks headers, signature.
//!
//! Body of one event: `{"id","type","timestamp","channels","data"}`; of a batch: `{"events": [...]}`.
//! The payload's JSON text is spliced in as stored — never parsed and re-serialized on the hot path.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};

use super::sign;
use crate::ids::EventId;
use crate::model::{EventRecord, HttpMethod, PayloadFormat};
use crate::registry::EndpointEntry;

pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Appends one event object to `out`. Written straight into `out` (no string per field): a batch body
/// is hundreds of these.
pub fn write_event_json(out: &mut String, id: u64, ev: &EventRecord) {
    use std::fmt::Write as _;
    out.push_str("{\"id\":\"");
    // Writing to a String cannot fail.
    let _ = write!(out, "{}", EventId(id));
    out.push_str("\",\"type\":");
    push_json_str(out, &ev.event_type);
    out.push_str(",\"timestamp\":\"");
    let _ = write!(out, "{}", crate::time::display_ms(ev.received_at));
    out.push_str("\",\"channels\":[");
    for (i, c) in ev.channels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, c);
    }
    out.push_str("],\"data\":");
    out.push_str(&ev.payload);
    out.push('}');
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The JSON body for these events: one event object, or `{"events": [...]}` for a batch endpoint.
pub fn body(events: &[(u64, &EventRecord)], batch: bool) -> String {
    let size: usize = events.iter().map(|(_, e)| e.payload.len() + e.event_type.len() + 128).sum();
    let mut out = String::with_capacity(size + 16);
    if batch {
        out.push_str("{\"events\":[");
        for (i, (id, ev)) in events.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_event_json(&mut out, *id, ev);
        }
        out.push_str("]}");
    } else if let Some((id, ev)) = events.first() {
        write_event_json(&mut out, *id, ev);
    }
    out
}

/// Headers of a delivery: the endpoint's own first, then the standard ones (which cannot be overridden).
pub fn headers(
    entry: &EndpointEntry,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
    user_agent: &HeaderValue,
    now_ms: u64,
) -> HeaderMap {
    // Room for the standard headers and the `host` the client adds, without the map growing on the way
    // out (with room for 6 it grew on every request).
    let mut h = HeaderMap::with_capacity(entry.record.headers.len() + 8);
    for (k, v) in &entry.record.headers {
        // Validated when the endpoint was saved; a header that no longer parses is skipped, not fatal.
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            h.insert(k, v);
        }
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(USER_AGENT, user_agent.clone());
    if let Ok(v) = HeaderValue::try_from(webhook_id) {
        h.insert(WEBHOOK_ID, v);
    }
    h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    let secrets = entry.signing_secrets(now_ms);
    let signature = sign::signature_header(&secrets, webhook_id, timestamp, body);
    if let Ok(v) = HeaderValue::try_from(signature) {
        h.insert(WEBHOOK_SIGNATURE, v);
    }
    h
}

/// A request as built, before sending: also what the attempt history records.
#[derive(Debug, Clone)]
pub struct Built {
    /// The endpoint's URL, its placeholders filled.
    pub url: String,
    pub body: Bytes,
    pub headers: HeaderMap,
    /// The body came from the endpoint's payload template (so the history cannot rebuild it later).
    pub templated: bool,
}

/// Builds the whole request for these events; `batch` is the delivery's own shape (a batch retried
/// after its endpoint stopped batching is still sent as the batch it was).
///
/// Templates are filled from the event object a receiver would otherwise get (`id`, `type`,
/// `timestamp`, `channels`, `data`), parsed once per request and only for endpoints that have one. A
/// batch never has templates applied to its body (the API refuses batching with templates; a batch
/// made before a template was added goes out in the shape it was made in), and its URL is filled from
/// its first event. A `GET` carries no body: the signature covers the empty body.
pub fn build(
    entry: &EndpointEntry,
    webhook_id: &str,
    events: &[(u64, &EventRecord)],
    batch: bool,
    user_agent: &HeaderValue,
    now_ms: u64,
) -> Built {
    let payload_template = entry.payload_template.as_ref().filter(|_| !batch);
    let event = match (&entry.url_template, payload_template, events.first()) {
        (None, None, _) | (_, _, None) => None,
        (_, _, Some((id, ev))) => {
            let mut text = String::with_capacity(ev.payload.len() + 128);
            write_event_json(&mut text, *id, ev);
            serde_json::from_str::<serde_json::Value>(&text).ok()
        }
    };
    let url = match (&entry.url_template, &event) {
        (Some(t), Some(v)) => t.render(v),
        _ => entry.record.url.clone(),
    };
    let templated = payload_template.is_some() && event.is_some();
    let (body, content_type) = if entry.record.method == HttpMethod::Get {
        (Bytes::new(), None)
    } else {
        let json = match (payload_template, &event) {
            (Some(t), Some(v)) => t.render(v),
            _ => body(events, batch),
        };
        match entry.record.format {
            PayloadFormat::Json => (Bytes::from(json), Some("application/json")),
            PayloadFormat::Form => (Bytes::from(form_body(&json)), Some("application/x-www-form-urlencoded")),
        }
    };
    let timestamp = (now_ms / 1000) as i64;
    let mut headers = headers(entry, webhook_id, timestamp, &body, user_agent, now_ms);
    match content_type {
        Some(ct) => headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct)),
        None => headers.remove(CONTENT_TYPE),
    };
    Built { url, body, headers, templated }
}

/// `payload=<json>`, form-urlencoded: every byte but RFC 3986's unreserved characters is percent-encoded
/// (so spaces are `%20`, which every form decoder reads).
pub fn form_body(json: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(8 + json.len() * 3 / 2);
    out.push_str("payload=");
    for &b in json.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// Most of a body the history keeps when it must keep one (see [`Built::templated`]): records stay
/// small, and a support engineer needs the start of a body, not megabytes of it.
pub const MAX_RECORDED_BODY: usize = 16 * 1024;

/// A templated body as the history keeps it: lossy UTF-8, cut at [`MAX_RECORDED_BODY`] bytes (on a
/// character boundary) with a marker saying so.
pub fn recorded_body(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > MAX_RECORDED_BODY {
        let mut cut = MAX_RECORDED_BODY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("…[truncated]");
    }
    text
}

/// Headers as recorded in the history. The signature is kept (it is not a secret and helps support
/// staff debug verification failures); a header that carries a credential — the endpoint's own
/// `Authorization: Bearer …`, an API key, a cookie — is kept as `[redacted]`, so the history never holds
/// one.
pub fn recorded_headers(h: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(h.len());
    for (k, v) in h {
        let value = if is_sensitive(k.as_str()) {
            REDACTED.to_owned()
        } else {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        };
        out.push((k.as_str().to_owned(), value));
    }
    out
}

pub const REDACTED: &str = "[redacted]";

/// Header names (lower-case, as `http` keeps them) whose values are credentials.
pub fn is_sensitive(name: &str) -> bool {
    // The headers of nearly every request and response, known to carry no credential, are answered
    // without the substring searches (profiled: those were ~3 % of a single-event drain's CPU).
    !COMMON_HEADERS.contains(&name) && matches_credential_rule(name)
}

/// Header names on nearly every request and response that carry no credential.
const COMMON_HEADERS: [&str; 12] = [
    "content-type",
    "content-length",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "date",
    "server",
    "connection",
    "keep-alive",
    "cache-control",
    "content-encoding",
];

fn matches_credential_rule(name: &str) -> bool {
    const EXACT: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "set-cookie"];
    const PARTS: [&str; 6] = ["token", "secret", "password", "api-key", "apikey", "auth"];
    EXACT.contains(&name) || PARTS.iter().any(|p| name.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_headers_are_redacted_and_the_signature_is_kept() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer s3cr3t"),
            ("x-api-key", "k"),
            ("x-auth-token", "t"),
            ("webhook-signature", "v1,abc"),
            ("x-env", "prod"),
        ] {
            h.insert(http::HeaderName::from_static(k), http::HeaderValue::from_static(v));
        }
        let rec: std::collections::HashMap<String, String> = recorded_headers(&h).into_iter().collect();
        assert_eq!(rec["authorization"], REDACTED);
        assert_eq!(rec["x-api-key"], REDACTED);
        assert_eq!(rec["x-auth-token"], REDACTED);
        assert_eq!(rec["webhook-signature"], "v1,abc");
        assert_eq!(rec["x-env"], "prod");
        // The fast path answers as the rule would.
        for name in COMMON_HEADERS {
            assert!(!matches_credential_rule(name), "{name}");
        }
    }

    fn ev(payload: &str) -> EventRecord {
        EventRecord {
            event_type: "ticket.created".into(),
            channels: vec!["client_\"42".into()],
            payload: payload.into(),
            received_at: 1_795_371_202_536,
            idempotency_key: None,
            routes: vec![],
        }
    }

    #[test]
    fn a_single_event_body_has_the_documented_shape() {
        let e = ev(r#"{"n":1,"s":"é"}"#);
        let b = body(&[(5, &e)], false);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
        assert_eq!(v["id"], EventId(5).to_string());
        assert_eq!(v["type"], "ticket.created");
        assert_eq!(v["timestamp"], "2026-11-22T18:13:22.536Z");
        assert_eq!(v["channels"][0], "client_\"42");
        assert_eq!(v["data"]["s"], "é");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é\u{2028}😀\\\"end");
        for s in [all.as_str(), "", "plain", "\"", "a\u{1}b"] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(Some(out), serde_json::to_string(s).ok(), "{s:?}");
        }
    }

    #[test]
    fn a_form_body_percent_encodes_the_json() {
        assert_eq!(form_body(r#"{"a":"x y/é"}"#), "payload=%7B%22a%22%3A%22x%20y%2F%C3%A9%22%7D");
    }

    #[test]
    fn a_batch_body_lists_events_oldest_first() {
        let (a, b) = (ev("{\"n\":1}"), ev("{\"n\":2}"));
        let v: serde_json::Value = serde_json::from_str(&body(&[(1, &a), (2, &b)], true)).unwrap_or_default();
        assert_eq!(v["events"][0]["data"]["n"], 1);
        assert_eq!(v["events"][1]["data"]["n"], 2);
    }
}
