//! Runs the real `hookd` binary for a test, the way an operator would: `hookd serve --config FILE`, with a
//! config written into a fresh temp dir, listening on `127.0.0.1:0`.
//!
//! The daemon announces its address with one stdout line, `hookd listening on http://ADDR`; everything
//! else it writes is drained in background tasks so that a full pipe never blocks it. The last lines of its
//! stderr are kept and printed when a test panics while a [`Daemon`] is alive, so a failure shows the
//! daemon's side of the story.
//!
//! Every wait here is bounded: startup (20 s), SIGTERM drain (30 s), each HTTP request (30 s) and every
//! [`eventually`] poll. A test never needs `sleep` to synchronise with the daemon.
// Shared helpers: not every one is used by every capability module yet.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
pub use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The operator token every test daemon is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// How long the daemon may take from spawn to its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd daemon may take to drain and exit (the daemon's own grace is 30 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on any single HTTP request a helper makes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The stdout line the daemon prints once bound, followed by its address.
const LISTENING_PREFIX: &str = "hookd listening on http://";
/// Lines of stdout/stderr kept per daemon for failure reports.
const TAIL_LINES: usize = 200;
/// Set this env var to echo the daemon's output live (prefixed) while tests run.
const ECHO_ENV: &str = "HOOKD_TEST_ECHO";

/// Polls `check` every `poll` until it returns `Some`, or gives up after `timeout` with `None`.
///
/// `check` runs at least once, and once more at the deadline, so a condition that becomes true during the
/// last interval is still seen.
pub async fn eventually<T, F, Fut>(timeout: Duration, poll: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

/// The config and environment a [`Daemon`] starts with; tests adjust it in [`Daemon::start_with`].
pub struct Setup {
    config: toml::Table,
    env: Vec<(String, String)>,
}

impl Setup {
    fn new(data_dir: &Path) -> Setup {
        let config = json!({
            "server": { "listen": "127.0.0.1:0" },
            "storage": { "data_dir": data_dir.to_str().expect("temp dir path is UTF-8"), "durability": "fsync" },
            "auth": { "admin_token": ADMIN_TOKEN },
            "delivery": {
                "allow_http": true,
                // Receivers listen on loopback.
                "allow_private_destinations": true,
                // Short, so tests of slow receivers finish quickly; connect must be at most the total.
                "timeout_ms": 3000,
                "connect_timeout_ms": 1000,
            },
        });
        let config = serde_json::from_value(config).expect("base config is a TOML table");
        Setup { config, env: Vec::new() }
    }

    /// Sets `section.key` (e.g. `"delivery.timeout_ms"`), creating the section if needed.
    pub fn set(&mut self, dotted_key: &str, value: impl Into<toml::Value>) -> &mut Self {
        let (section, key) = split_key(dotted_key);
        let table = self
            .config
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("config section [{section}] is not a table"));
        table.insert(key.to_owned(), value.into());
        self
    }

    /// Removes `section.key`, so the daemon uses its default.
    pub fn remove(&mut self, dotted_key: &str) -> &mut Self {
        let (section, key) = split_key(dotted_key);
        if let Some(table) = self.config.get_mut(section).and_then(toml::Value::as_table_mut) {
            table.remove(key);
        }
        self
    }

    /// Sets an environment variable for the daemon (e.g. `HOOKD_DELIVERY__TIMEOUT_MS`).
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The whole config table, for changes `set` cannot express.
    pub fn config_mut(&mut self) -> &mut toml::Table {
        &mut self.config
    }
}

fn split_key(dotted_key: &str) -> (&str, &str) {
    dotted_key.split_once('.').unwrap_or_else(|| panic!("config key {dotted_key:?} is not `section.key`"))
}

/// The last lines a child wrote to one of its pipes.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        // Sync mutex: held only to push/copy a few strings, never across an await.
        let mut lines = self.0.lock().expect("tail lock");
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("tail lock").iter().cloned().collect()
    }
}

/// Reads `reader` line by line into `tail` until EOF, so the child never blocks on a full pipe.
/// Lines need not be UTF-8.
fn drain(
    mut reader: impl AsyncBufRead + Unpin + Send + 'static,
    name: &'static str,
    tail: Tail,
) -> JoinHandle<()> {
    let echo = std::env::var_os(ECHO_ENV).is_some();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
                    if echo {
                        eprintln!("[hookd {name}] {line}");
                    }
                    tail.push(line);
                }
            }
        }
    })
}

/// A daemon that did not come up: it exited (or never printed its listening line) instead.
#[derive(Debug)]
pub struct StartFailure {
    /// `None` when it did not exit by itself (it has been killed since).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl StartFailure {
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "it exited ({status}) without printing its listening line")?,
            None => write!(f, "no listening line within {START_TIMEOUT:?}, and no exit (killed)")?,
        }
        write!(f, "\n---- stdout ----\n{}\n---- stderr ----\n{}", self.stdout.join("\n"), self.stderr_text())
    }
}

/// One `hookd serve` process and the tasks draining its output.
struct Process {
    child: Child,
    addr: SocketAddr,
    stdout: Tail,
    stderr: Tail,
    drains: Vec<JoinHandle<()>>,
}

/// A running `hookd serve` child process, its temp dir, and an HTTP client for it.
pub struct Daemon {
    process: Process,
    /// Holds the config file and the data dir; lives across restarts, removed when the `Daemon` drops.
    dir: TempDir,
    env: Vec<(String, String)>,
    client: reqwest::Client,
}

impl Daemon {
    /// Starts a daemon with the base test config.
    pub async fn start() -> Daemon {
        Daemon::start_with(|_| {}).await
    }

    /// Starts a daemon after `tweak` has adjusted the config or environment; panics (with the daemon's
    /// output) if it does not come up.
    pub async fn start_with(tweak: impl FnOnce(&mut Setup)) -> Daemon {
        match Daemon::try_start_with(tweak).await {
            Ok(daemon) => daemon,
            Err(failure) => panic!("hookd did not start: {failure}"),
        }
    }

    /// Like [`Daemon::start_with`], but a daemon that exits instead of listening is an `Err` to inspect
    /// (used for invalid-config tests).
    pub async fn try_start_with(tweak: impl FnOnce(&mut Setup)) -> Result<Daemon, StartFailure> {
        let dir = tempfile::Builder::new().prefix("hookd-test-").tempdir().expect("create temp dir");
        let mut setup = Setup::new(&dir.path().join("data"));
        tweak(&mut setup);
        std::fs::write(config_path(&dir), setup.config.to_string()).expect("write hookd.toml");
        let process = Process::spawn(&dir, &setup.env).await?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build reqwest client");
        Ok(Daemon { process, dir, env: setup.env, client })
    }

    /// Starts the daemon again on the same config file, environment and data dir. A daemon still running
    /// is SIGKILLed first, like a crash; call [`Daemon::terminate`] before for a clean restart.
    /// The address changes.
    pub async fn restart(&mut self) {
        if self.process.child.id().is_some() {
            self.kill().await;
        }
        if let Err(failure) = self.try_restart().await {
            panic!("hookd did not restart: {failure}");
        }
    }

    /// [`Daemon::restart`] that reports a failure to start (the process has exited) instead of
    /// panicking. Change `hookd.toml` at [`Daemon::config_path`] in between to restart differently.
    pub async fn try_restart(&mut self) -> Result<(), StartFailure> {
        if self.process.child.id().is_some() {
            self.kill().await;
        }
        self.process = Process::spawn(&self.dir, &self.env).await?;
        Ok(())
    }

    /// SIGKILLs the daemon (no chance to flush anything) and reaps it.
    /// Returns the earlier exit status if it had already exited.
    pub async fn kill(&mut self) -> ExitStatus {
        let child = &mut self.process.child;
        if child.try_wait().expect("poll hookd's exit status").is_none() {
            child.kill().await.expect("SIGKILL hookd");
        }
        let status = child.wait().await.expect("reap hookd after SIGKILL");
        self.process.finish_drains().await;
        status
    }

    /// Sends SIGTERM and waits (at most [`STOP_TIMEOUT`]) for the daemon to drain and exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let child = &mut self.process.child;
        let pid = child.id().expect("hookd has already exited");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run `kill -TERM`");
        assert!(sent.success(), "`kill -TERM {pid}` failed: {sent}");
        let status = tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("hookd did not exit within {STOP_TIMEOUT:?} of SIGTERM"))
            .expect("wait for hookd");
        self.process.finish_drains().await;
        status
    }

    /// The exit status if the daemon has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.process.child.try_wait().expect("poll hookd's exit status")
    }

    /// The address the daemon listens on (changes on restart).
    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// `http://ADDR{path}`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        assert!(path.starts_with('/'), "path {path:?} must start with /");
        format!("http://{}{path}", self.process.addr)
    }

    /// The data dir the base config sets (the same across restarts; a test that overrides
    /// `storage.data_dir` knows its own).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The config file the daemon was started with.
    pub fn config_path(&self) -> PathBuf {
        config_path(&self.dir)
    }

    /// The last lines of the daemon's stderr (its logs).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.process.stderr.lines()
    }

    /// The last lines of the daemon's stdout.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.process.stdout.lines()
    }

    /// The HTTP client the helpers use (no proxy, [`REQUEST_TIMEOUT`]).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a request with the admin token and an optional JSON body; returns the status and the body
    /// as JSON (`Null` when empty, a JSON string holding the text when it is not JSON).
    pub async fn request_json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = self.url(path);
        let mut request = self.client.request(method.clone(), &url).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response =
            request.send().await.unwrap_or_else(|e| panic!("{method} {url} failed: {e} (body: {body:?})"));
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
        (status, body_json(&bytes))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request_json(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request_json(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request_json(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request_json(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.request_json(Method::DELETE, path, None).await
    }

    /// A JSON request (or none) with the admin token, keeping the response's headers and raw body.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> RawResponse {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        self.raw(method, path, &headers, body.map(Value::to_string).unwrap_or_default()).await
    }

    /// A request exactly as given: no auth, no content type unless in `headers`, the body bytes as is.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> RawResponse {
        let url = self.url(path);
        let mut request = self.client.request(method.clone(), &url).body(body.into());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
        RawResponse { status, headers, body }
    }

    /// Creates tenant `id` (named after itself); panics unless 201.
    pub async fn create_tenant(&self, id: &str) {
        let (status, body) = self.post("/v1/tenants", json!({ "id": id, "name": id })).await;
        assert_eq!(status, StatusCode::CREATED, "create tenant {id}: {body}");
    }

    /// Creates an endpoint from `spec`; panics unless 201. Returns its `(id, secret)`.
    pub async fn create_endpoint(&self, tenant: &str, spec: Value) -> (String, String) {
        let (status, body) = self.post(&format!("/v1/tenants/{tenant}/endpoints"), spec.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "create endpoint {spec} in {tenant}: {body}");
        (str_field(&body, "id"), str_field(&body, "secret"))
    }

    /// Ingests one event on `channels`; panics unless 202. Returns its id and `received_at`.
    pub async fn ingest_on(
        &self,
        tenant: &str,
        event_type: &str,
        channels: &[&str],
        payload: Value,
    ) -> (String, String) {
        let (status, body) = self
            .post(
                &format!("/v1/tenants/{tenant}/events"),
                json!({ "type": event_type, "channels": channels, "payload": payload }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "ingest {event_type} on {channels:?}: {body}");
        (str_field(&body, "id"), str_field(&body, "received_at"))
    }

    /// Ingests one event; panics unless 202. Returns the event id.
    pub async fn ingest(&self, tenant: &str, event_type: &str, payload: Value) -> String {
        let (status, body) = self
            .post(&format!("/v1/tenants/{tenant}/events"), json!({ "type": event_type, "payload": payload }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "ingest {event_type} into {tenant}: {body}");
        str_field(&body, "id")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.process.stderr.lines();
            eprintln!(
                "---- hookd at {} (data dir {}): last {} stderr lines ----\n{}\n---- end of hookd stderr ----",
                self.process.addr,
                self.data_dir().display(),
                lines.len(),
                lines.join("\n")
            );
        }
        // `kill_on_drop` would too; an error means it has already exited.
        let _ = self.process.child.start_kill();
    }
}

impl Process {
    /// Spawns `hookd serve --config DIR/hookd.toml` and waits for its listening line.
    async fn spawn(dir: &TempDir, env: &[(String, String)]) -> Result<Process, StartFailure> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookd"));
        command
            .arg("serve")
            .arg("--config")
            .arg(config_path(dir))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("NO_COLOR", "1");
        // The developer's own HOOKD_* settings must not leak into tests.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HOOKD_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = command.spawn().expect("spawn the hookd binary");

        let stdout_tail = Tail::default();
        let stderr_tail = Tail::default();
        let stderr_drain = drain(
            BufReader::new(child.stderr.take().expect("stderr is piped")),
            "stderr",
            stderr_tail.clone(),
        );
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let listening =
            tokio::time::timeout(START_TIMEOUT, read_listening_line(&mut stdout, &stdout_tail)).await;
        let addr = match listening {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                // Stdout closed: it is exiting; collect how it ended.
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let status = match status {
                    Ok(status) => Some(status.expect("wait for hookd")),
                    Err(_) => None,
                };
                return Err(failed(child, status, stderr_drain, &stdout_tail, &stderr_tail).await);
            }
            Err(_) => return Err(failed(child, None, stderr_drain, &stdout_tail, &stderr_tail).await),
        };

        let stdout_drain = drain(stdout, "stdout", stdout_tail.clone());
        Ok(Process {
            child,
            addr,
            stdout: stdout_tail,
            stderr: stderr_tail,
            drains: vec![stdout_drain, stderr_drain],
        })
    }

    /// Lets the output drains reach EOF so the tails hold the daemon's last words.
    async fn finish_drains(&mut self) {
        for drain in self.drains.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
    }
}

/// Kills a daemon that did not come up (if still running) and reports what it wrote.
async fn failed(
    mut child: Child,
    status: Option<ExitStatus>,
    stderr_drain: JoinHandle<()>,
    stdout: &Tail,
    stderr: &Tail,
) -> StartFailure {
    if status.is_none() {
        child.kill().await.expect("kill hookd that never listened");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), stderr_drain).await;
    StartFailure { status, stdout: stdout.lines(), stderr: stderr.lines() }
}

/// Reads stdout lines into `tail` until `hookd listening on http://ADDR`; `None` at EOF.
async fn read_listening_line(stdout: &mut (impl AsyncBufRead + Unpin), tail: &Tail) -> Option<SocketAddr> {
    let echo = std::env::var_os(ECHO_ENV).is_some();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if matches!(stdout.read_until(b'\n', &mut buf).await, Ok(0) | Err(_)) {
            return None;
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
        if echo {
            eprintln!("[hookd stdout] {line}");
        }
        let addr = line.strip_prefix(LISTENING_PREFIX).map(|rest| {
            rest.trim_end_matches('/').parse::<SocketAddr>().unwrap_or_else(|e| {
                panic!("hookd printed a listening line with a bad address: {line:?}: {e}")
            })
        });
        tail.push(line);
        if addr.is_some() {
            return addr;
        }
    }
}

/// A response from [`Daemon::raw`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// The body as JSON (see [`Daemon::request_json`] for non-JSON bodies).
    pub fn json(&self) -> Value {
        body_json(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn config_path(dir: &TempDir) -> PathBuf {
    dir.path().join("hookd.toml")
}

fn body_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn str_field(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("response has no string field {field:?}: {body}"))
        .to_owned()
}

// ---- assertions on problem+json responses, shared by the test modules ----

pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["field"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Asserts a problem response: the status, `application/problem+json`, the `status` member, and (unless
/// `field` is empty) that `errors[].field` names `field`. Returns the problem.
#[track_caller]
pub fn assert_problem(response: &RawResponse, status: StatusCode, field: &str) -> Value {
    assert_eq!(response.status, status, "{}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type:?} for {}",
        response.text()
    );
    let problem = response.json();
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    if !field.is_empty() {
        assert!(error_fields(&problem).iter().any(|f| f == field), "no error names {field:?}: {problem}");
    }
    problem
}

/// Asserts a 422 naming `field`, as an error's field or — for a missing or unknown field, which the body
/// as a whole is blamed for — in an error's message.
#[track_caller]
pub fn assert_422_mentioning(response: &RawResponse, field: &str) {
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "");
    let named = problem["errors"].as_array().is_some_and(|errors| {
        errors.iter().any(|e| {
            e["field"] == field || e["message"].as_str().is_some_and(|m| m.contains(&format!("`{field}`")))
        })
    });
    assert!(named, "no error names {field:?}: {problem}");
}
