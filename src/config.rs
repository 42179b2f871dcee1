//! Typed daemon configuration: embedded defaults → optional TOML file → `HOOKD_<SECTION>__<KEY>` environment
//! overrides → cross-field validation. `config.example.toml` documents every key.
//!
//! Invariants:
//! - [`Config::default()`] is the only place defaults live, and it is also the schema: serialized to TOML,
//!   its sections and keys are the only ones accepted (a typo is an error, never silently ignored), and the
//!   TOML type of each default value decides how an env var's raw string is read. A string key stays a string
//!   even when it looks numeric, so `HOOKD_AUTH__ADMIN_TOKEN=12345` is the token `"12345"`.
//! - Overrides are applied and type-checked one key at a time, so every [`ConfigError`] is one line naming
//!   where the value came from (file and line, or env var), the key and what is wrong; `main` prints it and
//!   exits 64.
//! - A `Config` returned by [`Config::load`] has passed [`Config::validate`].
//! - Sizes ([`ByteSize`]) and durations ([`HumanDuration`]) are written for humans (`"10GiB"`, `"5d"`) and
//!   serialize back to that notation, so the output of [`Config::to_redacted_toml`] is itself a valid config.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::store::seal::MIN_MASTER_KEY_LEN;

/// Env overrides are `HOOKD_<SECTION>__<KEY>`; `HOOKD_` vars without the separator (e.g. `HOOKD_LOG`) are not
/// config keys and are left to whoever reads them.
const ENV_PREFIX: &str = "HOOKD_";
const ENV_SEPARATOR: &str = "__";
/// What Debug and `to_redacted_toml` show instead of a secret that is set.
const REDACTED: &str = "<redacted>";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const DAY: u64 = 24 * 60 * 60;

/// The whole daemon configuration; see `config.example.toml` for every key and its default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and shutdown: what an operator changes per deployment.
    pub server: ServerConfig,
    /// The on-disk event log: where it lives, how durable an acknowledgement is, and how big it may grow.
    pub storage: StorageConfig,
    /// Bootstrap credentials, which exist before any API key can be created.
    pub auth: AuthConfig,
    /// Global delivery policy and the defaults of per-endpoint settings.
    pub delivery: DeliveryConfig,
    /// Ingest request limits, which bound the memory a single client can make hookd buffer.
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The HTTP API listener (ingest, management, and `/metrics` unless `metrics_listen` is set).
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
    /// A separate `/metrics` listener, so scrapes can stay on a private interface while the API is exposed.
    /// `None` (TOML `""`) serves `/metrics` on `listen`.
    #[serde(with = "optional_socket_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long SIGTERM waits for in-flight requests and delivery attempts, so a stuck receiver cannot block
    /// a restart forever while a normal one is not cut off mid-attempt.
    pub shutdown_grace: HumanDuration,
    /// Time a client has to send a request's headers, and the most a kept-alive connection may sit idle:
    /// a client trickling bytes (slow loris) cannot hold a connection longer.
    pub header_read_timeout: HumanDuration,
    /// Time a client has to send a request's whole body once its headers are in, however it trickles
    /// it: a stalled or byte-a-second body is answered `408` and its connection closed, so it cannot hold
    /// a connection slot, or a SIGTERM, for longer.
    pub body_read_timeout: HumanDuration,
    /// Open client connections at most; past it new connections are closed at once, so a flood cannot
    /// exhaust file descriptors that the store and outbound deliveries need.
    pub max_connections: u32,
    /// Open activity streams (`GET /v1/tenants/{tenant}/activity`) at most, all tenants together; past it
    /// 503. Each holds a connection, a task and a small buffer for as long as its reader stays.
    pub max_activity_streams: u32,
}

impl DeliveryConfig {
    /// `private_destination_allowlist`, parsed: a bare address is its own /32 or /128.
    pub fn private_allowlist(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.private_destination_allowlist
            .split([',', ' '])
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an IP address or CIDR (e.g. 10.20.0.0/16)"))
            })
            .collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            shutdown_grace: HumanDuration::from_secs(30),
            header_read_timeout: HumanDuration::from_secs(10),
            body_read_timeout: HumanDuration::from_secs(30),
            max_connections: 10_000,
            max_activity_streams: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the database (event log, queues, attempt history); created at first start.
    pub data_dir: PathBuf,
    /// When an ingested event counts as durable, i.e. when it gets its 202.
    pub durability: Durability,
    /// Disk cap of the event log: beyond it ingest answers 503 with `Retry-After` instead of filling the
    /// disk.
    pub max_log_bytes: ByteSize,
    /// Free space to keep on the data dir's filesystem: below it ingest answers 503 too, so that a disk
    /// shared with other files fills up without hookd failing mid-write. `0` turns the check off.
    pub min_free_bytes: ByteSize,
    /// How long events and their attempt history are kept, which bounds disk use and idempotency-key memory.
    pub retention: HumanDuration,
    /// Page cache of the database: memory traded for fewer disk reads on history queries and log catch-up.
    pub cache_bytes: ByteSize,
    /// The disk ballast: a file of this many allocated bytes in the data dir, released when the disk
    /// fills so that deliveries' bookkeeping still has room; also the free space ingest leaves for it.
    /// At most 1/16 of the filesystem. `0`: neither (not recommended). See `store::space`.
    pub ballast_bytes: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./hookd-data"),
            durability: Durability::Fsync,
            max_log_bytes: ByteSize::gib(10),
            min_free_bytes: ByteSize::gib(1),
            retention: HumanDuration::from_secs(30 * DAY),
            cache_bytes: ByteSize::mib(64),
            ballast_bytes: ByteSize::mib(256),
        }
    }
}

/// When an ingest is acknowledged. TOML: `"fsync"` | `"os"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Durability {
    /// fsync before the 202: the event survives kill -9 and power loss (group commit amortizes the cost).
    Fsync,
    /// 202 once the OS has the write: survives kill -9 but not power loss; for disposable data and
    /// benchmarks.
    Os,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fsync => "fsync",
            Self::Os => "os",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Durability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Durability {
    /// Hand-written so the error quotes the value and lists the choices as a user types them.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        match raw.as_str() {
            "fsync" => Ok(Self::Fsync),
            "os" => Ok(Self::Os),
            _ => Err(de::Error::custom(format!("unknown variant {raw:?}, expected \"fsync\" or \"os\""))),
        }
    }
}

/// Debug redacts both secrets, so a logged or panicking config never leaks them.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The operator's first Bearer token (global, admin scope), needed to create any other API key. Empty:
    /// one is generated and printed once at first start, so a fresh install is never open.
    pub admin_token: String,
    /// Key that encrypts endpoint signing secrets at rest, so a copy of the data directory alone does not
    /// reveal them. Empty: none configured.
    pub master_key: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("admin_token", &Redacted(&self.admin_token))
            .field("master_key", &Redacted(&self.master_key))
            .finish()
    }
}

/// Shows whether a secret is set, never its value.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { REDACTED })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Allow `http://` endpoint URLs. Off so payloads and signatures do not travel in clear text by accident.
    pub allow_http: bool,
    /// Allow private, loopback and link-local destinations. Off so tenants cannot use hookd to reach internal
    /// services (SSRF); turn on for tests and single-tenant deployments inside a private network.
    pub allow_private_destinations: bool,
    /// Networks deliveries may reach even though the SSRF guard forbids them (a receiver on the LAN):
    /// CIDRs or addresses separated by commas or spaces, `""` for none. Narrower than
    /// `allow_private_destinations`, which opens everything.
    pub private_destination_allowlist: String,
    /// Default limit for a whole attempt in milliseconds; bounds how long a slow receiver holds a delivery
    /// slot.
    pub timeout_ms: u64,
    /// Limit for TCP + TLS connect in milliseconds, so an unreachable host fails fast instead of using the
    /// whole `timeout_ms`.
    pub connect_timeout_ms: u64,
    /// How much of a receiver's response body is read and kept in attempt history; the rest is dropped, so a
    /// misbehaving receiver cannot exhaust memory or disk.
    pub max_response_body_bytes: ByteSize,
    /// An endpoint failing without a single success for this long is disabled, so a dead receiver stops
    /// consuming retries and queue space.
    pub disable_after: HumanDuration,
    /// Default number of concurrent requests per endpoint (an endpoint may set its own); protects receivers.
    pub max_in_flight: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private_destinations: false,
            private_destination_allowlist: String::new(),
            timeout_ms: 15_000,
            connect_timeout_ms: 5_000,
            max_response_body_bytes: ByteSize::kib(64),
            disable_after: HumanDuration::from_secs(5 * DAY),
            max_in_flight: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest single-event ingest body; a bigger one gets 413 before it is buffered.
    pub max_event_bytes: ByteSize,
    /// Largest batch ingest body; a bigger one gets 413 before it is buffered.
    pub max_batch_bytes: ByteSize,
    /// Most events in one batch, which is committed all-or-nothing in a single write.
    pub max_batch_events: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_event_bytes: ByteSize::mib(1), max_batch_bytes: ByteSize::mib(16), max_batch_events: 1000 }
    }
}

impl Config {
    /// Embedded defaults -> optional TOML file -> env overrides -> validation.
    ///
    /// `env` is normally `std::env::vars()`; it is a parameter so tests never touch the process environment.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let schema = schema()?;
        let mut overrides = match path {
            Some(path) => file_overrides(path, &schema)?,
            None => Vec::new(),
        };
        overrides.extend(env_overrides(env, &schema)?);
        Config::apply(schema, overrides)
    }

    /// Applies overrides in order over the embedded defaults, then validates.
    fn apply(schema: toml::Table, overrides: Vec<Override>) -> Result<Config, ConfigError> {
        let mut merged = schema;
        let mut config = Config::default();
        let mut origins = BTreeMap::new();
        for Override { origin, section, key, value, line } in overrides {
            let full_key = format!("{section}.{key}");
            if let Some(toml::Value::Table(table)) = merged.get_mut(&section) {
                table.insert(key, value);
            }
            // Everything before this override already deserialized, so a failure here is this key's fault.
            config =
                merged.clone().try_into().map_err(|error: toml::de::Error| ConfigError::InvalidValue {
                    origin: origin.clone(),
                    key: full_key.clone(),
                    message: error.message().to_owned(),
                    line,
                })?;
            origins.insert(full_key, origin);
        }
        config.check(&origins)?;
        Ok(config)
    }

    /// [`Config::load`] of a file's text (named `path` in errors) without the environment: for tools and
    /// the fuzzer, which must not read files.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let schema = schema()?;
        let overrides = text_overrides(path, text, &schema)?;
        Config::apply(schema, overrides)
    }

    /// Cross-field rules that types cannot express. [`Config::load`] already applies them; this is for
    /// configs built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&BTreeMap::new())
    }

    /// The effective config as TOML, with admin_token/master_key shown as "<redacted>" when set (for `hookd
    /// check-config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [&mut shown.auth.admin_token, &mut shown.auth.master_key] {
            if !secret.is_empty() {
                *secret = REDACTED.to_owned();
            }
        }
        toml::to_string(&shown)
            .unwrap_or_else(|error| format!("# cannot render the config as TOML: {error}\n"))
    }

    fn check(&self, origins: &BTreeMap<String, Origin>) -> Result<(), ConfigError> {
        let Some(Violation { key, related, message }) = self.violation() else {
            return Ok(());
        };
        // Blame whichever source set one of the keys involved; a rule between two defaults cannot fail.
        let origin = origins.get(key).or_else(|| related.and_then(|related| origins.get(related))).cloned();
        Err(ConfigError::Invalid { origin, key, message })
    }

    fn violation(&self) -> Option<Violation> {
        let (server, storage, delivery, limits) = (&self.server, &self.storage, &self.delivery, &self.limits);
        let violation = |key, related, message: String| Some(Violation { key, related, message });
        let header_timeout = server.header_read_timeout.0;
        if header_timeout < Duration::from_millis(100) || header_timeout > Duration::from_secs(300) {
            let message = format!("must be between 100ms and 5m, got {}", server.header_read_timeout);
            return violation("server.header_read_timeout", None, message);
        }
        let body_timeout = server.body_read_timeout.0;
        if body_timeout < Duration::from_millis(100) || body_timeout > Duration::from_secs(600) {
            let message = format!("must be between 100ms and 10m, got {}", server.body_read_timeout);
            return violation("server.body_read_timeout", None, message);
        }
        if !(1..=1_000_000).contains(&server.max_connections) {
            let message = format!("must be between 1 and 1000000, got {}", server.max_connections);
            return violation("server.max_connections", None, message);
        }
        if !(1..=10_000).contains(&server.max_activity_streams) {
            let message = format!("must be between 1 and 10000, got {}", server.max_activity_streams);
            return violation("server.max_activity_streams", None, message);
        }
        if storage.data_dir.as_os_str().is_empty() {
            return violation("storage.data_dir", None, "must not be empty".to_owned());
        }
        if storage.retention.0 < std::time::Duration::from_secs(1) {
            return violation("storage.retention", None, "must be at least 1s".to_owned());
        }
        if storage.cache_bytes.0 < MIB {
            return violation(
                "storage.cache_bytes",
                None,
                format!("must be at least 1MiB, got {}", storage.cache_bytes),
            );
        }
        // The range endpoints may set for themselves: an endpoint that inherits the default must be
        // one a create would accept.
        if !(100..=120_000).contains(&delivery.timeout_ms) {
            let message = format!("must be between 100 and 120000, got {}", delivery.timeout_ms);
            return violation("delivery.timeout_ms", None, message);
        }
        if let Err(message) = delivery.private_allowlist() {
            return violation("delivery.private_destination_allowlist", None, message);
        }
        let master_key = &self.auth.master_key;
        if !master_key.is_empty() && master_key.chars().count() < MIN_MASTER_KEY_LEN {
            let message = format!(
                "must be empty or at least {MIN_MASTER_KEY_LEN} characters (generate one with `openssl rand -base64 32`)"
            );
            return violation("auth.master_key", None, message);
        }
        if delivery.connect_timeout_ms == 0 {
            return violation("delivery.connect_timeout_ms", None, "must be greater than 0".to_owned());
        }
        if delivery.connect_timeout_ms > delivery.timeout_ms {
            let message = format!(
                "must be <= delivery.timeout_ms ({}), got {}",
                delivery.timeout_ms, delivery.connect_timeout_ms
            );
            return violation("delivery.connect_timeout_ms", Some("delivery.timeout_ms"), message);
        }
        if delivery.max_response_body_bytes.0 > 16 * MIB {
            let message = format!("must be at most 16MiB, got {}", delivery.max_response_body_bytes);
            return violation("delivery.max_response_body_bytes", None, message);
        }
        if !(1..=1024).contains(&delivery.max_in_flight) {
            let message = format!("must be between 1 and 1024, got {}", delivery.max_in_flight);
            return violation("delivery.max_in_flight", None, message);
        }
        if limits.max_batch_bytes.0 < limits.max_event_bytes.0 {
            let message = format!(
                "must be >= limits.max_event_bytes ({}), got {}",
                limits.max_event_bytes, limits.max_batch_bytes
            );
            return violation("limits.max_batch_bytes", Some("limits.max_event_bytes"), message);
        }
        if !(1..=10_000).contains(&limits.max_batch_events) {
            let message = format!("must be between 1 and 10000, got {}", limits.max_batch_events);
            return violation("limits.max_batch_events", None, message);
        }
        // Port 0 asks the OS for a free port, so two `:0` listeners do not collide.
        if server.metrics_listen == Some(server.listen) && server.listen.port() != 0 {
            let message = format!(
                "must differ from server.listen ({}); use \"\" to serve /metrics on the main listener",
                server.listen
            );
            return violation("server.metrics_listen", Some("server.listen"), message);
        }
        None
    }
}

/// A broken cross-field rule: the key reported, and the other key of the rule, if any.
struct Violation {
    key: &'static str,
    related: Option<&'static str>,
    message: String,
}

/// Where a config value came from, as named in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env(name) => write!(f, "env {name}"),
        }
    }
}

/// Why a config could not be loaded. Display is one line that names the file or env var, the key and the
/// problem, ready to print before exiting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: {}", path.display(), read_problem(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "config file {}: invalid TOML at line {line}, column {column}: {}",
        path.display(),
        source.message()
    )]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Boxed: the TOML error is large and would otherwise make every `Result` of this module large.
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{origin}: unknown section [{section}], expected one of: {expected}{}", at_line(*line))]
    UnknownSection { origin: Origin, section: String, expected: String, line: Option<usize> },
    #[error("{origin}: unknown key {key}, expected one of: {expected}{}", at_line(*line))]
    UnknownKey { origin: Origin, key: String, expected: String, line: Option<usize> },
    /// A value of the wrong type or format; `key` is `section.key`.
    #[error("{origin}: {key}: {message}{}", at_line(*line))]
    InvalidValue { origin: Origin, key: String, message: String, line: Option<usize> },
    /// A broken cross-field rule; `origin` is `None` when every key involved has its default.
    #[error("{}: {key}: {message}", origin.as_ref().map_or_else(|| "config".to_owned(), Origin::to_string))]
    Invalid { origin: Option<Origin>, key: &'static str, message: String },
    /// The embedded defaults could not be turned into the TOML schema: a bug in hookd, not in the config.
    #[error("cannot render the built-in default config as TOML: {0}")]
    Defaults(#[source] toml::ser::Error),
}

fn read_problem(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_owned(),
        std::io::ErrorKind::InvalidData => "not valid UTF-8".to_owned(),
        kind => format!("cannot read: {kind}"),
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!(" (line {line})")).unwrap_or_default()
}

/// One key set by the file or the environment, already converted to a TOML value.
struct Override {
    origin: Origin,
    section: String,
    key: String,
    value: toml::Value,
    line: Option<usize>,
}

/// The default config as TOML: the accepted sections and keys, and the type of each.
fn schema() -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(Config::default()).map_err(ConfigError::Defaults)
}

/// The section table of the schema, or the error for an unknown section.
fn schema_section<'a>(
    schema: &'a toml::Table,
    section: &str,
    origin: &Origin,
    line: Option<usize>,
) -> Result<&'a toml::Table, ConfigError> {
    schema.get(section).and_then(toml::Value::as_table).ok_or_else(|| ConfigError::UnknownSection {
        origin: origin.clone(),
        section: section.to_owned(),
        expected: list_keys(schema),
        line,
    })
}

fn unknown_key(
    section: &str,
    key: &str,
    known: &toml::Table,
    origin: &Origin,
    line: Option<usize>,
) -> ConfigError {
    ConfigError::UnknownKey {
        origin: origin.clone(),
        key: format!("{section}.{key}"),
        expected: list_keys(known),
        line,
    }
}

fn list_keys(table: &toml::Table) -> String {
    table.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn file_overrides(path: &Path, schema: &toml::Table) -> Result<Vec<Override>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    text_overrides(path, &text, schema)
}

/// The overrides of a config file's text; `path` only names it in errors.
fn text_overrides(path: &Path, text: &str, schema: &toml::Table) -> Result<Vec<Override>, ConfigError> {
    let text = text.to_owned();
    let document = toml::de::DeTable::parse(&text).map_err(|source| {
        let (line, column) = position(&text, source.span().map_or(0, |span| span.start));
        ConfigError::Syntax { path: path.to_owned(), line, column, source: Box::new(source) }
    })?;
    let origin = Origin::File(path.to_owned());
    let mut overrides = Vec::new();
    for (section, table) in document.get_ref() {
        let line = Some(position(&text, section.span().start).0);
        let known = schema_section(schema, section.get_ref(), &origin, line)?;
        let Some(table) = table.get_ref().as_table() else {
            return Err(ConfigError::InvalidValue {
                origin,
                key: section.get_ref().to_string(),
                message: format!("expected a table such as [{}]", section.get_ref()),
                line,
            });
        };
        for (key, value) in table {
            let line = Some(position(&text, key.span().start).0);
            if !known.contains_key(key.get_ref().as_ref()) {
                return Err(unknown_key(section.get_ref(), key.get_ref(), known, &origin, line));
            }
            let value_line = Some(position(&text, value.span().start).0);
            let value = toml::Value::deserialize(toml::de::ValueDeserializer::from(value.clone())).map_err(
                |error| ConfigError::InvalidValue {
                    origin: origin.clone(),
                    key: format!("{}.{}", section.get_ref(), key.get_ref()),
                    message: error.message().to_owned(),
                    line: value_line,
                },
            )?;
            overrides.push(Override {
                origin: origin.clone(),
                section: section.get_ref().to_string(),
                key: key.get_ref().to_string(),
                value,
                line: value_line,
            });
        }
    }
    Ok(overrides)
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
    schema: &toml::Table,
) -> Result<Vec<Override>, ConfigError> {
    // Sorted so that two spellings of one key (`HOOKD_server__listen`, `HOOKD_SERVER__LISTEN`) resolve the
    // same way on every start.
    let mut vars: Vec<_> = env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    let mut overrides = Vec::new();
    for (name, raw) in vars {
        let Some((section, key)) =
            name.strip_prefix(ENV_PREFIX).and_then(|rest| rest.split_once(ENV_SEPARATOR))
        else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let origin = Origin::Env(name.clone());
        let known = schema_section(schema, &section, &origin, None)?;
        let Some(default) = known.get(&key) else {
            return Err(unknown_key(&section, &key, known, &origin, None));
        };
        let value = typed_like(default, &raw).map_err(|message| ConfigError::InvalidValue {
            origin: origin.clone(),
            key: format!("{section}.{key}"),
            message,
            line: None,
        })?;
        overrides.push(Override { origin, section, key, value, line: None });
    }
    Ok(overrides)
}

/// Reads an env var's raw string as the TOML type of the key's default value.
fn typed_like(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match default {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_owned())),
        toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(toml::Value::Boolean(true)),
            "false" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        toml::Value::Integer(_) => raw
            .trim()
            .parse()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        other => Err(format!("a {} cannot be set from the environment", other.type_str())),
    }
}

/// `SocketAddr` with an error message that quotes the value.
mod socket_addr {
    use super::*;

    pub fn serialize<S: Serializer>(addr: &SocketAddr, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(addr)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        parse(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }

    pub(super) fn parse(raw: &str) -> Result<SocketAddr, String> {
        raw.parse().map_err(|_| {
            format!("invalid socket address {raw:?}, expected IP:port such as \"127.0.0.1:8080\"")
        })
    }
}

/// `Option<SocketAddr>` as a TOML string, `""` being `None` (TOML has no null, and the key must exist in the
/// schema for its env override to be known).
mod optional_socket_addr {
    use super::*;

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => serializer.collect_str(addr),
            None => serializer.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
        let raw = String::deserialize(deserializer)?;
        if raw.is_empty() { Ok(None) } else { socket_addr::parse(&raw).map(Some).map_err(de::Error::custom) }
    }
}

/// A number of bytes, written for humans: `"10GiB"`, `"64 MiB"`, `"1MB"`, `"512"`, `"512B"` or a bare TOML
/// integer. Decimal units (KB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB) of 1024;
/// units are case-insensitive. Displays as the shortest exact binary form (`65536` → `"64KiB"`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ByteSize(pub u64);

/// Accepted units and their multipliers.
const SIZE_UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", KIB),
    ("MiB", MIB),
    ("GiB", GIB),
    ("TiB", TIB),
];

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * KIB)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n * MIB)
    }

    pub const fn gib(n: u64) -> Self {
        Self(n * GIB)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if n != 0 && n % size == 0 {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |problem| ParseSizeError { input: s.to_owned(), problem };
        let trimmed = s.trim();
        if trimmed.starts_with('-') {
            return Err(error(SizeProblem::Negative));
        }
        let (digits, rest) =
            trimmed.split_at(trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len()));
        if digits.is_empty() {
            return Err(error(SizeProblem::Malformed));
        }
        if rest.starts_with(['.', ',']) {
            return Err(error(SizeProblem::Fractional));
        }
        let unit = rest.trim_start();
        let multiplier = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|&(_, multiplier)| multiplier)
                .ok_or_else(|| error(SizeProblem::UnknownUnit(unit.to_owned())))?
        };
        // Only digits remain, so the parse can only fail on overflow.
        let n: u64 = digits.parse().map_err(|_| error(SizeProblem::Overflow))?;
        n.checked_mul(multiplier).map(Self).ok_or_else(|| error(SizeProblem::Overflow))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"64MiB\" or a number of bytes")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(n))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
        u64::try_from(n)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("invalid size {n}: must not be negative")))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<ByteSize, E> {
        Err(E::custom(format!("invalid size {n}: {}", SizeProblem::Fractional)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
        s.parse().map_err(E::custom)
    }
}

/// Why a string is not a [`ByteSize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {problem}")]
pub struct ParseSizeError {
    input: String,
    problem: SizeProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SizeProblem {
    #[error("expected a whole number of bytes with an optional unit, such as \"512\" or \"64MiB\"")]
    Malformed,
    #[error("must not be negative")]
    Negative,
    #[error("must be a whole number (use a smaller unit instead of a fraction)")]
    Fractional,
    #[error("unknown unit {0:?}, expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")]
    UnknownUnit(String),
    #[error("larger than the maximum of {} bytes", u64::MAX)]
    Overflow,
}

/// A duration written for humans and parsed by `humantime`: `"500ms"`, `"30s"`, `"1h 30m"`, `"5d"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Self {
        duration.0
    }
}

impl fmt::Display for HumanDuration {
    /// Days down to nanoseconds (`"90d"`, `"1h 30m"`, `"500ms"`), which humantime parses back exactly. Not
    /// `humantime::format_duration`: its months are 30.44 days, which renders `"90d"` as
    /// `"2months 29days 2h 52m 48s"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), u64::from(self.0.subsec_nanos()));
        if secs == 0 && nanos == 0 {
            return f.write_str("0s");
        }
        let parts = [
            (secs / DAY, "d"),
            (secs / 3600 % 24, "h"),
            (secs / 60 % 60, "m"),
            (secs % 60, "s"),
            (nanos / 1_000_000, "ms"),
            (nanos / 1_000 % 1_000, "us"),
            (nanos % 1_000, "ns"),
        ];
        let mut separator = "";
        for (n, unit) in parts.into_iter().filter(|&(n, _)| n != 0) {
            write!(f, "{separator}{n}{unit}")?;
            separator = " ";
        }
        Ok(())
    }
}

impl FromStr for HumanDuration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|source| ParseDurationError { input: s.to_owned(), source })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(HumanDurationVisitor)
    }
}

struct HumanDurationVisitor;

impl Visitor<'_> for HumanDurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"30s\", \"5d\" or \"1h 30m\"")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
        s.parse().map_err(E::custom)
    }
}

/// Why a string is not a [`HumanDuration`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid duration {input:?}: {source}")]
pub struct ParseDurationError {
    input: String,
    #[source]
    source: humantime::DurationError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const EXAMPLE: &str = include_str!("../config.example.toml");

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, env(vars))
    }

    /// Loads `text` from a file named `hookd.toml` in a temp dir; returns the result and the file's path.
    fn load_file(text: &str, vars: &[(&str, &str)]) -> (Result<Config, ConfigError>, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hookd.toml");
        std::fs::write(&path, text).expect("write config");
        (Config::load(Some(&path), env(vars)), path)
    }

    fn error_of(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn defaults_equal_loading_with_no_file_and_an_empty_environment() {
        assert_eq!(load_env(&[]).expect("defaults load"), Config::default());
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn the_example_file_parses_to_exactly_the_defaults() {
        let parsed: Config = toml::from_str(EXAMPLE).expect("example parses");
        assert_eq!(parsed, Config::default());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        assert_eq!(Config::load(Some(&path), []).expect("example loads"), Config::default());
    }

    /// `(section, key)` of every `key = value` line of a TOML text, in order; with `documented`, asserts that
    /// each has a comment line right above it.
    fn key_lines(text: &str, documented: bool) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        let mut section = String::new();
        let mut previous = "";
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((key, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                assert!(!documented || previous.starts_with('#'), "{section}.{} has no comment", key.trim());
                keys.push((section.clone(), key.trim().to_owned()));
            }
            previous = line;
        }
        keys
    }

    #[test]
    fn the_example_file_documents_every_key_of_the_default_config() {
        let toml::Value::Table(schema) =
            toml::Value::try_from(Config::default()).expect("defaults serialize")
        else {
            panic!("the default config is not a table");
        };
        let mut expected = BTreeSet::new();
        for (section, table) in &schema {
            let table = table.as_table().expect("every section is a table");
            expected.extend(table.keys().map(|key| (section.clone(), key.clone())));
        }
        let example = key_lines(EXAMPLE, true);
        assert_eq!(example.iter().cloned().collect::<BTreeSet<_>>(), expected);
        // Same order as the structs, which follow the API.md Configuration block.
        let serialized = toml::to_string(&Config::default()).expect("defaults serialize");
        assert_eq!(example, key_lines(&serialized, false));
    }

    #[test]
    fn a_partial_file_overrides_only_the_keys_it_names() {
        let (config, _) = load_file("[storage]\ndurability = \"os\"\nmax_log_bytes = 1048576\n", &[]);
        let config = config.expect("partial file loads");
        let mut expected = Config::default();
        expected.storage.durability = Durability::Os;
        expected.storage.max_log_bytes = ByteSize::mib(1);
        assert_eq!(config, expected);
    }

    #[test]
    fn min_free_bytes_takes_a_size_and_zero_turns_the_check_off() {
        assert_eq!(Config::default().storage.min_free_bytes, ByteSize::gib(1));
        let (config, _) = load_file("[storage]\nmin_free_bytes = \"512MiB\"\n", &[]);
        assert_eq!(config.expect("loads").storage.min_free_bytes, ByteSize::mib(512));
        let config = load_env(&[("HOOKD_STORAGE__MIN_FREE_BYTES", "0")]).expect("loads");
        assert_eq!(config.storage.min_free_bytes, ByteSize(0));
        let (config, _) = load_file("[storage]\nmin_free_bytes = \"lots\"\n", &[]);
        let error = config.expect_err("not a size").to_string();
        assert!(error.contains("storage.min_free_bytes"), "{error}");
    }

    #[test]
    fn env_overrides_a_string_key_even_when_it_looks_numeric() {
        let config =
            load_env(&[("HOOKD_AUTH__ADMIN_TOKEN", "12345"), ("HOOKD_STORAGE__DATA_DIR", "/var/lib/hookd")])
                .expect("loads");
        assert_eq!(config.auth.admin_token, "12345");
        assert_eq!(config.storage.data_dir, PathBuf::from("/var/lib/hookd"));
    }

    #[test]
    fn env_overrides_a_bool_key() {
        let config = load_env(&[
            ("HOOKD_DELIVERY__ALLOW_HTTP", "true"),
            ("HOOKD_DELIVERY__ALLOW_PRIVATE_DESTINATIONS", "TRUE"),
        ])
        .expect("loads");
        assert!(config.delivery.allow_http);
        assert!(config.delivery.allow_private_destinations);
        let (config, _) =
            load_file("[delivery]\nallow_http = true\n", &[("HOOKD_DELIVERY__ALLOW_HTTP", "false")]);
        assert!(!config.expect("loads").delivery.allow_http);
    }

    #[test]
    fn env_overrides_an_integer_key() {
        let config =
            load_env(&[("HOOKD_DELIVERY__TIMEOUT_MS", "20000"), ("HOOKD_LIMITS__MAX_BATCH_EVENTS", " 50 ")])
                .expect("loads");
        assert_eq!(config.delivery.timeout_ms, 20_000);
        assert_eq!(config.limits.max_batch_events, 50);
    }

    #[test]
    fn env_overrides_a_size_key_with_a_unit_or_a_plain_number() {
        let config =
            load_env(&[("HOOKD_STORAGE__MAX_LOG_BYTES", "2 GiB"), ("HOOKD_LIMITS__MAX_EVENT_BYTES", "2048")])
                .expect("loads");
        assert_eq!(config.storage.max_log_bytes, ByteSize::gib(2));
        assert_eq!(config.limits.max_event_bytes, ByteSize::kib(2));
    }

    #[test]
    fn env_overrides_a_duration_key() {
        let config =
            load_env(&[("HOOKD_STORAGE__RETENTION", "7d"), ("HOOKD_SERVER__SHUTDOWN_GRACE", "1m 30s")])
                .expect("loads");
        assert_eq!(config.storage.retention, HumanDuration::from_secs(7 * DAY));
        assert_eq!(config.server.shutdown_grace, HumanDuration::from_secs(90));
    }

    #[test]
    fn env_overrides_a_socket_address_and_an_empty_metrics_listen_means_the_main_listener() {
        let config = load_env(&[
            ("HOOKD_SERVER__LISTEN", "0.0.0.0:9000"),
            ("HOOKD_SERVER__METRICS_LISTEN", "[::1]:9090"),
        ])
        .expect("loads");
        assert_eq!(config.server.listen, SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert_eq!(config.server.metrics_listen, Some("[::1]:9090".parse().expect("addr")));

        let (config, _) = load_file(
            "[server]\nmetrics_listen = \"127.0.0.1:9090\"\n",
            &[("HOOKD_SERVER__METRICS_LISTEN", "")],
        );
        assert_eq!(config.expect("loads").server.metrics_listen, None);
    }

    #[test]
    fn env_section_and_key_are_case_insensitive_and_env_wins_over_the_file() {
        let (config, _) = load_file(
            "[delivery]\ntimeout_ms = 1000\nconnect_timeout_ms = 1000\n",
            &[("HOOKD_delivery__Timeout_Ms", "30000")],
        );
        let config = config.expect("loads");
        assert_eq!(config.delivery.timeout_ms, 30_000);
        assert_eq!(config.delivery.connect_timeout_ms, 1000);
    }

    #[test]
    fn env_vars_without_the_prefix_or_a_double_underscore_are_ignored() {
        let config = load_env(&[
            ("HOOKD_LOG", "debug"),
            ("PATH", "/bin"),
            ("SERVER__LISTEN", "x"),
            ("hookd_server__listen", "x"),
        ])
        .expect("loads");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn an_unknown_env_key_or_section_is_an_error_naming_the_variable() {
        let message = error_of(load_env(&[("HOOKD_STORAGE__DURABILTY", "os")]));
        assert!(
            message.starts_with(
                "env HOOKD_STORAGE__DURABILTY: unknown key storage.durabilty, expected one of: "
            )
        );
        assert!(message.contains("durability"), "{message}");

        let message = error_of(load_env(&[("HOOKD_STROAGE__DURABILITY", "os")]));
        assert_eq!(
            message,
            "env HOOKD_STROAGE__DURABILITY: unknown section [stroage], expected one of: \
             auth, delivery, limits, server, storage"
        );
        let message = error_of(load_env(&[("HOOKD_SERVER__LISTEN__PORT", "1")]));
        assert!(message.contains("unknown key server.listen__port"), "{message}");
    }

    #[test]
    fn a_wrongly_typed_env_value_is_an_error_naming_the_variable_and_key() {
        let cases = [
            ("HOOKD_DELIVERY__ALLOW_HTTP", "yes", "delivery.allow_http: expected true or false, got \"yes\""),
            ("HOOKD_DELIVERY__TIMEOUT_MS", "15s", "delivery.timeout_ms: expected an integer, got \"15s\""),
            (
                "HOOKD_DELIVERY__TIMEOUT_MS",
                "-1",
                "delivery.timeout_ms: invalid value: integer `-1`, expected u64",
            ),
            ("HOOKD_DELIVERY__MAX_IN_FLIGHT", "5000000000", "delivery.max_in_flight: invalid value"),
            ("HOOKD_SERVER__LISTEN", "abc", "server.listen: invalid socket address \"abc\""),
            ("HOOKD_STORAGE__RETENTION", "30x", "storage.retention: invalid duration \"30x\""),
            (
                "HOOKD_STORAGE__MAX_LOG_BYTES",
                "10XB",
                "storage.max_log_bytes: invalid size \"10XB\": unknown unit",
            ),
            ("HOOKD_STORAGE__DURABILITY", "fsnc", "storage.durability: unknown variant \"fsnc\""),
        ];
        for (name, value, expected) in cases {
            let message = error_of(load_env(&[(name, value)]));
            assert!(message.starts_with(&format!("env {name}: {expected}")), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn a_typo_in_a_file_key_or_section_is_an_error_naming_the_file_the_key_and_the_line() {
        let (result, path) = load_file("[storage]\ndata_dir = \"/tmp/x\"\ndurabilty = \"os\"\n", &[]);
        let message = error_of(result);
        let prefix =
            format!("config file {}: unknown key storage.durabilty, expected one of: ", path.display());
        assert!(message.starts_with(&prefix), "{message}");
        assert!(message.ends_with(" (line 3)"), "{message}");

        let (result, path) =
            load_file("[server]\nlisten = \"127.0.0.1:1\"\n\n[metrics]\nenabled = true\n", &[]);
        let message = error_of(result);
        assert!(message.starts_with(&format!("config file {}: unknown section [metrics]", path.display())));
        assert!(message.ends_with(" (line 4)"), "{message}");

        let (result, _) = load_file("listen = \"127.0.0.1:1\"\n", &[]);
        assert!(error_of(result).contains("unknown section [listen]"));
        let (result, _) = load_file("server = 1\n", &[]);
        assert!(error_of(result).contains("server: expected a table such as [server] (line 1)"));
    }

    #[test]
    fn a_wrong_type_or_format_in_the_file_is_an_error_naming_the_key_and_the_line() {
        let cases = [
            (
                "[delivery]\ntimeout_ms = \"fast\"\n",
                "delivery.timeout_ms: invalid type: string \"fast\", expected u64 (line 2)",
            ),
            (
                "[delivery]\n\nallow_http = \"yes\"\n",
                "delivery.allow_http: invalid type: string \"yes\", expected a boolean (line 3)",
            ),
            (
                "[storage]\ndurability = \"fsnc\"\n",
                "storage.durability: unknown variant \"fsnc\", expected \"fsync\" or \"os\" (line 2)",
            ),
            (
                "[storage]\nretention = 30\n",
                "storage.retention: invalid type: integer `30`, expected a duration string",
            ),
            (
                "[storage]\nretention = \"thirty days\"\n",
                "storage.retention: invalid duration \"thirty days\"",
            ),
            (
                "[storage]\nmax_log_bytes = -1\n",
                "storage.max_log_bytes: invalid size -1: must not be negative",
            ),
            (
                "[storage]\nmax_log_bytes = 1.5\n",
                "storage.max_log_bytes: invalid size 1.5: must be a whole number",
            ),
            (
                "[storage]\nmax_log_bytes = \"1.5GiB\"\n",
                "storage.max_log_bytes: invalid size \"1.5GiB\": must be a whole number",
            ),
            (
                "[storage]\nmax_log_bytes = \"-1GiB\"\n",
                "storage.max_log_bytes: invalid size \"-1GiB\": must not be negative",
            ),
            (
                "[storage]\nmax_log_bytes = \"10G\"\n",
                "storage.max_log_bytes: invalid size \"10G\": unknown unit \"G\"",
            ),
            (
                "[storage]\nmax_log_bytes = \"99999999999TiB\"\n",
                "storage.max_log_bytes: invalid size \"99999999999TiB\": larger than",
            ),
            (
                "[server]\nlisten = \"localhost\"\n",
                "server.listen: invalid socket address \"localhost\", expected IP:port",
            ),
        ];
        for (text, expected) in cases {
            let (result, path) = load_file(text, &[]);
            let message = error_of(result);
            assert!(message.starts_with(&format!("config file {}: {expected}", path.display())), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn the_durability_error_reads_like_the_documented_example() {
        let (result, path) = load_file("[storage]\ndurability = \"fsnc\"\n", &[]);
        assert_eq!(
            error_of(result),
            format!(
                "config file {}: storage.durability: unknown variant \"fsnc\", expected \"fsync\" or \"os\" \
                 (line 2)",
                path.display()
            )
        );
    }

    #[test]
    fn a_missing_config_file_is_an_error_naming_the_path() {
        let path = Path::new("/nonexistent/hookd.toml");
        let message = error_of(Config::load(Some(path), []));
        assert_eq!(message, "config file /nonexistent/hookd.toml: file not found");
    }

    #[test]
    fn invalid_toml_is_an_error_naming_the_file_and_the_line() {
        let (result, path) = load_file("[server]\nlisten = \"127.0.0.1:1\"\nshutdown_grace = 30s\n", &[]);
        let message = error_of(result);
        assert!(
            message.starts_with(&format!("config file {}: invalid TOML at line 3, column", path.display()))
        );
        assert!(!message.contains('\n'), "{message}");

        let (result, _) = load_file("[server]\nlisten = \"a\"\nlisten = \"b\"\n", &[]);
        assert!(error_of(result).contains("invalid TOML at line 3"));
    }

    #[test]
    fn every_cross_field_rule_is_enforced_and_names_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("HOOKD_DELIVERY__TIMEOUT_MS", "0")],
                "env HOOKD_DELIVERY__TIMEOUT_MS: delivery.timeout_ms: must be between 100 and 120000, got 0",
            ),
            (
                &[("HOOKD_DELIVERY__TIMEOUT_MS", "300000")],
                "delivery.timeout_ms: must be between 100 and 120000, got 300000",
            ),
            (
                &[("HOOKD_AUTH__MASTER_KEY", "short")],
                "env HOOKD_AUTH__MASTER_KEY: auth.master_key: must be empty or at least 32 characters",
            ),
            (
                &[("HOOKD_DELIVERY__CONNECT_TIMEOUT_MS", "0")],
                "delivery.connect_timeout_ms: must be greater than 0",
            ),
            (
                &[("HOOKD_DELIVERY__CONNECT_TIMEOUT_MS", "20000")],
                "env HOOKD_DELIVERY__CONNECT_TIMEOUT_MS: delivery.connect_timeout_ms: \
                 must be <= delivery.timeout_ms (15000), got 20000",
            ),
            (
                &[("HOOKD_DELIVERY__TIMEOUT_MS", "1000")],
                "env HOOKD_DELIVERY__TIMEOUT_MS: delivery.connect_timeout_ms: \
                 must be <= delivery.timeout_ms (1000), got 5000",
            ),
            (
                &[("HOOKD_LIMITS__MAX_BATCH_BYTES", "512KiB")],
                "limits.max_batch_bytes: must be >= limits.max_event_bytes (1MiB), got 512KiB",
            ),
            (
                &[("HOOKD_LIMITS__MAX_EVENT_BYTES", "32MiB")],
                "env HOOKD_LIMITS__MAX_EVENT_BYTES: limits.max_batch_bytes: must be >=",
            ),
            (
                &[("HOOKD_LIMITS__MAX_BATCH_EVENTS", "0")],
                "limits.max_batch_events: must be between 1 and 10000, got 0",
            ),
            (
                &[("HOOKD_LIMITS__MAX_BATCH_EVENTS", "10001")],
                "limits.max_batch_events: must be between 1 and 10000, got 10001",
            ),
            (
                &[("HOOKD_DELIVERY__MAX_IN_FLIGHT", "0")],
                "delivery.max_in_flight: must be between 1 and 1024, got 0",
            ),
            (
                &[("HOOKD_DELIVERY__MAX_IN_FLIGHT", "1025")],
                "delivery.max_in_flight: must be between 1 and 1024, got 1025",
            ),
            (
                &[("HOOKD_DELIVERY__MAX_RESPONSE_BODY_BYTES", "16777217")],
                "delivery.max_response_body_bytes: must be at most 16MiB, got 16777217",
            ),
            (
                &[("HOOKD_STORAGE__DATA_DIR", "")],
                "env HOOKD_STORAGE__DATA_DIR: storage.data_dir: must not be empty",
            ),
            (
                &[("HOOKD_STORAGE__CACHE_BYTES", "1023KiB")],
                "storage.cache_bytes: must be at least 1MiB, got 1023KiB",
            ),
            (
                &[("HOOKD_SERVER__METRICS_LISTEN", "127.0.0.1:8080")],
                "server.metrics_listen: must differ from server.listen",
            ),
        ];
        for (vars, expected) in cases {
            let message = error_of(load_env(vars));
            assert!(message.contains(expected), "{vars:?}: {message}");
        }

        let mut config = Config::default();
        config.delivery.timeout_ms = 0;
        assert_eq!(
            config.validate().map_err(|e| e.to_string()),
            Err("config: delivery.timeout_ms: must be between 100 and 120000, got 0".to_owned())
        );
    }

    #[test]
    fn values_on_the_boundary_of_each_cross_field_rule_are_accepted() {
        let config = load_env(&[
            ("HOOKD_DELIVERY__TIMEOUT_MS", "100"),
            ("HOOKD_DELIVERY__CONNECT_TIMEOUT_MS", "1"),
            ("HOOKD_AUTH__MASTER_KEY", "k23456789012345678901234567890ab"),
            ("HOOKD_DELIVERY__MAX_IN_FLIGHT", "1024"),
            ("HOOKD_DELIVERY__MAX_RESPONSE_BODY_BYTES", "16MiB"),
            ("HOOKD_LIMITS__MAX_BATCH_EVENTS", "10000"),
            ("HOOKD_LIMITS__MAX_BATCH_BYTES", "1MiB"),
            ("HOOKD_STORAGE__CACHE_BYTES", "1MiB"),
            ("HOOKD_SERVER__LISTEN", "127.0.0.1:0"),
            ("HOOKD_SERVER__METRICS_LISTEN", "127.0.0.1:0"),
        ]);
        config.expect("boundary values are valid");
        load_env(&[
            ("HOOKD_LIMITS__MAX_BATCH_EVENTS", "1"),
            ("HOOKD_DELIVERY__MAX_IN_FLIGHT", "1"),
            ("HOOKD_DELIVERY__TIMEOUT_MS", "120000"),
        ])
        .expect("loads");
    }

    #[test]
    fn debug_never_shows_the_secrets() {
        let config = load_env(&[("HOOKD_AUTH__ADMIN_TOKEN", "tok-secret-1")]).expect("loads");
        let debug = format!("{config:?}");
        assert!(!debug.contains("tok-secret-1"), "{debug}");
        assert!(debug.contains("admin_token: <redacted>"), "{debug}");
        assert!(debug.contains("master_key: <empty>"), "{debug}");
    }

    #[test]
    fn the_redacted_toml_hides_set_secrets_and_loads_back_to_the_same_config_given_them_again() {
        let vars = [
            ("HOOKD_AUTH__MASTER_KEY", "key-secret-2-which-is-long-enough-for-a-key"),
            ("HOOKD_STORAGE__RETENTION", "90d"),
            ("HOOKD_DELIVERY__MAX_RESPONSE_BODY_BYTES", "1000"),
            ("HOOKD_SERVER__METRICS_LISTEN", "127.0.0.1:9090"),
        ];
        let config = load_env(&vars).expect("loads");
        let text = config.to_redacted_toml();
        assert!(!text.contains("key-secret-2-which-is-long-enough-for-a-key"), "{text}");
        assert!(text.contains("master_key = \"<redacted>\""), "{text}");
        assert!(text.contains("admin_token = \"\""), "{text}");
        assert!(text.contains("max_response_body_bytes = \"1000\""), "{text}");
        assert!(text.contains("retention = \"90d\""), "{text}");

        // The secrets come back from the environment, as they would in a deployment.
        let (reloaded, _) = load_file(&text, &vars[..1]);
        assert_eq!(reloaded.expect("redacted output is a valid config"), config);
    }

    #[test]
    fn sizes_parse_in_every_documented_form() {
        let cases = [
            ("10GiB", 10 * GIB),
            ("64MiB", 64 * MIB),
            ("1KiB", 1024),
            ("1 TiB", TIB),
            ("512", 512),
            ("512B", 512),
            ("0", 0),
            ("1KB", 1_000),
            ("2 MB", 2_000_000),
            ("3GB", 3_000_000_000),
            ("4TB", 4_000_000_000_000),
            ("64mib", 64 * MIB),
            (" 7 kib ", 7 * KIB),
            ("18446744073709551615", u64::MAX),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(expected)), "{input}");
        }
    }

    #[test]
    fn sizes_reject_junk_with_a_message_quoting_it() {
        let cases = [
            ("", "expected a whole number"),
            ("MiB", "expected a whole number"),
            ("-5", "must not be negative"),
            ("0.5GiB", "must be a whole number"),
            ("10 XB", "unknown unit \"XB\""),
            ("10 Mi B", "unknown unit \"Mi B\""),
            ("18446744073709551616", "larger than"),
            ("16777216TiB", "larger than"),
        ];
        for (input, expected) in cases {
            let message = input.parse::<ByteSize>().map(|s| s.0).map_err(|e| e.to_string());
            let message = message.expect_err(input);
            assert!(message.starts_with(&format!("invalid size {input:?}: ")), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn sizes_display_in_the_shortest_exact_binary_form() {
        let cases = [
            (0, "0"),
            (512, "512"),
            (1000, "1000"),
            (65_536, "64KiB"),
            (1536, "1536"),
            (3072, "3KiB"),
            (10 * GIB, "10GiB"),
            (3 * TIB, "3TiB"),
            (MIB + 1, "1048577"),
        ];
        for (n, expected) in cases {
            assert_eq!(ByteSize(n).to_string(), expected);
        }
    }

    #[test]
    fn durations_parse_humantime_strings_and_display_in_the_same_notation() {
        let cases = [
            ("30s", Duration::from_secs(30), "30s"),
            ("5d", Duration::from_secs(5 * DAY), "5d"),
            ("90days", Duration::from_secs(90 * DAY), "90d"),
            ("24h", Duration::from_secs(DAY), "1d"),
            ("1h 30m", Duration::from_secs(5400), "1h 30m"),
            ("500ms", Duration::from_millis(500), "500ms"),
            ("1s 2ms 3us 4ns", Duration::new(1, 2_003_004), "1s 2ms 3us 4ns"),
            ("0s", Duration::ZERO, "0s"),
        ];
        for (input, duration, shown) in cases {
            let parsed: HumanDuration = input.parse().expect(input);
            assert_eq!(parsed, HumanDuration(duration), "{input}");
            assert_eq!(parsed.to_string(), shown);
        }
        assert!("".parse::<HumanDuration>().is_err());
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
    }

    proptest! {
        #[test]
        fn any_size_displays_as_a_string_that_parses_back_to_it(n in any::<u64>()) {
            prop_assert_eq!(ByteSize(n).to_string().parse::<ByteSize>(), Ok(ByteSize(n)));
        }

        #[test]
        fn a_multiple_of_a_binary_unit_displays_and_parses_back(n in 0u64..1 << 20, unit in 0u32..5) {
            let size = ByteSize(n << (10 * unit));
            prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }

        #[test]
        fn any_duration_displays_as_a_string_that_parses_back_to_it(
            secs in 0u64..1 << 40,
            nanos in 0u32..1_000_000_000,
        ) {
            let duration = HumanDuration(Duration::new(secs, nanos));
            let parsed = duration.to_string().parse::<HumanDuration>().map_err(|e| e.to_string());
            prop_assert_eq!(parsed, Ok(duration));
        }
    }
}
