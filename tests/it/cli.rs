//! The offline admin commands: `hookd create-api-key` (the first key of a fresh install) and
//! `hookd inspect`, run on a stopped daemon's data dir; both refuse to run beside a live daemon.

use std::path::Path;
use std::process::Output;

use reqwest::Method;
use serde_json::json;

use crate::harness::{Daemon, StatusCode};

fn hookd(args: &[&str], config: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("HOOKD_LOG")
        .output()
        .expect("run hookd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn an_api_key_created_offline_works_once_the_daemon_runs() {
    let mut daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let config = daemon.config_path();

    // Beside a running daemon: refused, nothing half-done.
    let busy = hookd(&["create-api-key", "--name", "ops", "--scope", "read"], &config);
    assert_eq!(busy.status.code(), Some(1), "{}", text(&busy.stderr));
    assert!(text(&busy.stderr).contains("stop the running hookd"), "{}", text(&busy.stderr));

    daemon.terminate().await;
    let args = ["create-api-key", "--name", "ops", "--scope", "read", "--scope", "write", "--tenant", "acme"];
    let created = hookd(&args, &config);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let stdout = text(&created.stdout);
    let key = stdout.lines().find(|l| l.starts_with("hk_")).unwrap_or_else(|| panic!("no key in {stdout}"));
    let inspected = hookd(&["inspect"], &config);
    assert!(inspected.status.success(), "{}", text(&inspected.stderr));
    let report = text(&inspected.stdout);
    assert!(report.contains("tenants       1") && report.contains("API keys      1 (1 usable)"), "{report}");

    // Bad input: a usage error, or a clear refusal.
    let bad_scope = hookd(&["create-api-key", "--name", "x", "--scope", "root"], &config);
    assert_eq!(bad_scope.status.code(), Some(2), "{}", text(&bad_scope.stderr));
    let no_tenant = hookd(&["create-api-key", "--name", "x", "--scope", "read", "--tenant", "nope"], &config);
    assert_eq!(no_tenant.status.code(), Some(1));
    assert!(text(&no_tenant.stderr).contains("no tenant"), "{}", text(&no_tenant.stderr));

    daemon.restart().await;
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    let own = daemon.raw(Method::GET, "/v1/tenants/acme/endpoints", &headers, "").await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
    let operator = daemon.raw(Method::GET, "/v1/tenants", &headers, "").await;
    assert_eq!(operator.status, StatusCode::FORBIDDEN, "{}", operator.text());
    let (_, trail) = daemon.get("/v1/audit").await;
    assert_eq!(trail["data"][0]["actor"], "hookd create-api-key (offline)", "{trail}");
    assert_eq!(trail["data"][0]["tenant"], "acme");
    let (_, keys) = daemon.get("/v1/api-keys").await;
    assert_eq!(keys["data"][0]["scopes"], json!(["read", "write"]), "{keys}");
}
