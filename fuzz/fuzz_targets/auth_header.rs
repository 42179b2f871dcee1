//! The parts of authentication that read attacker-controlled text: the `Authorization` header, the API
//! key's text, allow-list CIDRs and route lookups. Any bytes give an answer, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(token) = hookd::api::auth::bearer(Some(&text)) {
        let _ = hookd::api::auth::key_prefix(token);
        let _ = hookd::api::auth::hash_token(token);
    }
    let _ = hookd::api::auth::key_prefix(&text);
    if let Ok(net) = hookd::api::auth::parse_cidr(&text) {
        let _ = hookd::api::auth::ip_allowed(&[net], std::net::IpAddr::from([127, 0, 0, 1]));
    }
    let _ = hookd::api::auth::requirement(&http::Method::GET, &text);
});
