//! The outbound HTTP client: hyper 1 + rustls, pooled, SSRF-guarded, bounded in time and in memory.
//!
//! Invariants, each a defence against a hostile or broken receiver:
//! - Only `https://` unless `allow_http`; never a redirect followed (a 3xx comes back as a [`Response`]).
//! - Never a connection to a forbidden address (see [`ssrf`]) unless `allow_private_destinations`: names are
//!   filtered by the connector's resolver, after resolution and at connect time; IP literals, which the
//!   connector does not resolve, are checked in [`HttpClient::send`].
//! - Every request ends within its `timeout`: connect + TLS + request + response head + body, all of it.
//! - At most `max_response_body_bytes` of a response body are read; an HTTP/1.1 connection whose body was
//!   cut short is closed, not pooled (over HTTP/2 only that stream is reset).
//! - Errors keep their cause (`#[source]`); [`SendError`] is what the retry policy branches on.
//!
//! Two pools are built once and shared by every clone: one that verifies certificates against the webpki
//! roots, one for endpoints that turned verification off. Both speak HTTP/1.1 and HTTP/2 (ALPN).

mod ssrf;
#[cfg(test)]
mod tests;

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use ssrf::GuardedResolver;
pub use ssrf::{DestinationPolicy, ResolveError, is_forbidden_destination};

/// An error of any type, kept as the cause of a [`SendError`].
pub type BoxError = Box<dyn StdError + Send + Sync>;

type Pool = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// How long an idle pooled connection is kept: receivers commonly close theirs after 60–120 s.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive, so a pooled connection whose peer vanished is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Bound on one TCP connect (split among the addresses of a host), within the request's own timeout.
    pub connect_timeout: Duration,
    /// Bytes of a response body kept for the attempt history; the rest is not read.
    pub max_response_body_bytes: usize,
    /// Allow `http://` endpoints (local development); otherwise only `https://`.
    pub allow_http: bool,
    /// Turn the SSRF guard off (tests, local development, receivers on a private network).
    pub allow_private_destinations: bool,
    /// Networks deliveries may reach although the SSRF guard forbids them (a receiver on the LAN).
    pub private_allowlist: Vec<ipnet::IpNet>,
    /// Sent when the request has no `user-agent` of its own.
    pub user_agent: String,
}

/// The outbound client. Cheap to clone: clones share the connection pools.
#[derive(Clone)]
pub struct HttpClient {
    shared: Arc<Shared>,
}

struct Shared {
    /// For `verify_tls: true`: certificates checked against the webpki (Mozilla) roots.
    verifying: Pool,
    /// For `verify_tls: false`: any certificate accepted. A separate pool so that a connection opened
    /// without verification is never reused by a request that asked for it.
    non_verifying: Pool,
    settings: ClientSettings,
    /// Where deliveries may connect; shared with both pools' resolvers.
    policy: Arc<DestinationPolicy>,
    user_agent: HeaderValue,
}

/// One request to send.
pub struct OutboundRequest {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The whole exchange: connect, TLS, request, response head and body.
    pub timeout: Duration,
    /// `false` accepts any certificate (an endpoint setting for self-signed receivers).
    pub verify_tls: bool,
}

/// What the receiver answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most `max_response_body_bytes` of the body.
    pub body: Bytes,
    /// The body was longer than the cap and was cut.
    pub truncated: bool,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid URL")]
    InvalidUrl(#[source] UrlError),
    #[error("URL scheme {0:?} is not allowed")]
    SchemeNotAllowed(String),
    #[error("{host} is a forbidden destination ({addr})")]
    Blocked { host: String, addr: IpAddr },
    #[error("DNS resolution failed")]
    Dns(#[source] BoxError),
    #[error("could not connect")]
    Connect(#[source] BoxError),
    #[error("TLS failed")]
    Tls(#[source] BoxError),
    #[error("timed out")]
    Timeout,
    #[error("HTTP exchange failed")]
    Protocol(#[source] BoxError),
}

impl SendError {
    /// A stable, low-cardinality name for metrics labels and the attempt history.
    pub fn class(&self) -> &'static str {
        match self {
            SendError::InvalidUrl(_) => "invalid_url",
            SendError::SchemeNotAllowed(_) => "scheme",
            SendError::Blocked { .. } => "blocked",
            SendError::Dns(_) => "dns",
            SendError::Connect(_) => "connect",
            SendError::Tls(_) => "tls",
            SendError::Timeout => "timeout",
            SendError::Protocol(_) => "protocol",
        }
    }
}

/// What is wrong with an endpoint URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL")]
    Parse(#[source] http::uri::InvalidUri),
    #[error("the URL must be absolute, with a scheme and a host")]
    NotAbsolute,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("user agent {0:?} is not a valid header value")]
    UserAgent(String, #[source] http::header::InvalidHeaderValue),
    #[error("TLS configuration failed")]
    Tls(#[source] rustls::Error),
}

impl HttpClient {
    pub fn new(settings: ClientSettings) -> Result<HttpClient, ClientBuildError> {
        let user_agent = HeaderValue::from_str(&settings.user_agent)
            .map_err(|e| ClientBuildError::UserAgent(settings.user_agent.clone(), e))?;
        // The provider is explicit so that nothing depends on a process-wide default being installed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let verifying_tls = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ClientBuildError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let any_certificate = AnyCertificate { algorithms: provider.signature_verification_algorithms };
        let non_verifying_tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ClientBuildError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(any_certificate))
            .with_no_client_auth();
        let policy = Arc::new(DestinationPolicy {
            allow_private: settings.allow_private_destinations,
            allowlist: settings.private_allowlist.clone(),
        });
        Ok(HttpClient {
            shared: Arc::new(Shared {
                verifying: pool(verifying_tls, &settings, policy.clone()),
                non_verifying: pool(non_verifying_tls, &settings, policy.clone()),
                settings,
                policy,
                user_agent,
            }),
        })
    }

    /// Sends one request and reads the response, within `req.timeout`.
    pub async fn send(&self, req: OutboundRequest) -> Result<Response, SendError> {
        let uri = self.check_url(&req.url)?;
        let request = self.build_request(req.method, uri, req.headers, req.body);
        let pool = if req.verify_tls { &self.shared.verifying } else { &self.shared.non_verifying };
        let cap = self.shared.settings.max_response_body_bytes;
        match tokio::time::timeout(req.timeout, exchange(pool, request, cap)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(SendError::Timeout),
        }
    }

    /// Parses the URL and applies the scheme rule and, for IP literals, the SSRF guard.
    fn check_url(&self, url: &str) -> Result<Uri, SendError> {
        let settings = &self.shared.settings;
        let uri: Uri = url.parse().map_err(|e| SendError::InvalidUrl(UrlError::Parse(e)))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if settings.allow_http => {}
            Some(other) => return Err(SendError::SchemeNotAllowed(other.to_owned())),
            None => return Err(SendError::InvalidUrl(UrlError::NotAbsolute)),
        }
        let host = uri.host().ok_or(SendError::InvalidUrl(UrlError::NotAbsolute))?;
        // The connector connects to an IP literal without asking the resolver, so check it here; the
        // bracket stripping matches the connector's own.
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(addr) = bare.parse::<IpAddr>()
            && !self.shared.policy.permits(addr)
        {
            return Err(SendError::Blocked { host: host.to_owned(), addr });
        }
        Ok(uri)
    }

    fn build_request(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> http::Request<Full<Bytes>> {
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, self.shared.user_agent.clone());
        }
        // Always from the body, never the caller's: a wrong length would corrupt the connection.
        headers.remove(TRANSFER_ENCODING);
        let expects_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        if body.is_empty() && !expects_body {
            headers.remove(CONTENT_LENGTH);
        } else {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        request
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").field("settings", &self.shared.settings).finish_non_exhaustive()
    }
}

fn pool(tls: ClientConfig, settings: &ClientSettings, policy: Arc<DestinationPolicy>) -> Pool {
    let mut tcp = HttpConnector::new_with_resolver(GuardedResolver::new(policy));
    // The TLS connector wraps this one, so it must let https:// through.
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(settings.connect_timeout));
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.set_nodelay(true);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

async fn exchange(
    pool: &Pool,
    request: http::Request<Full<Bytes>>,
    cap: usize,
) -> Result<Response, SendError> {
    let response = pool.request(request).await.map_err(|e| {
        let is_connect = e.is_connect();
        send_error(Box::new(e), is_connect)
    })?;
    let (head, body) = response.into_parts();
    let (body, truncated) = read_capped(body, cap).await?;
    Ok(Response { status: head.status, headers: head.headers, body, truncated })
}

/// Reads the body frame by frame up to `cap` bytes. Past the cap the body is dropped unread, which makes
/// hyper close an HTTP/1.1 connection instead of returning it to the pool (and reset an HTTP/2 stream).
async fn read_capped(mut body: Incoming, cap: usize) -> Result<(Bytes, bool), SendError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| send_error(Box::new(e), false))?;
        // Trailers carry nothing the attempt history keeps.
        let Ok(data) = frame.into_data() else { continue };
        let room = cap - buf.len();
        if data.len() > room {
            buf.extend_from_slice(&data[..room]);
            return Ok((buf.freeze(), true));
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), false))
}

/// Maps a hyper / hyper-util error to the variant the retry policy branches on, from its chain of causes:
/// our resolver's verdict, a rustls error, a timed-out I/O, else connect or protocol by where it happened.
fn send_error(err: BoxError, is_connect: bool) -> SendError {
    let mut tls = false;
    let mut timed_out = false;
    let mut resolve = None;
    for cause in causes(&*err) {
        if let Some(e) = cause.downcast_ref::<ResolveError>() {
            resolve = Some(match e {
                ResolveError::Blocked { host, addr } => Some((host.clone(), *addr)),
                ResolveError::Lookup { .. } | ResolveError::NoAddress { .. } => None,
            });
            break;
        }
        tls |= cause.is::<rustls::Error>();
        timed_out |= cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
            || cause.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
    }
    match resolve {
        Some(Some((host, addr))) => SendError::Blocked { host, addr },
        Some(None) => SendError::Dns(err),
        None if tls => SendError::Tls(err),
        None if timed_out => SendError::Timeout,
        None if is_connect => SendError::Connect(err),
        None => SendError::Protocol(err),
    }
}

/// `err` and its causes. `io::Error::source` skips the error an `io::Error` wraps (it returns that error's
/// own source), so the wrapped error is visited explicitly: that is where hyper-rustls puts a
/// `rustls::Error` and where hyper-util puts our resolver's error.
fn causes<'a>(err: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e: &&'a (dyn StdError + 'static)| {
        match e.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        }
    })
}

/// For `verify_tls: false`: accepts any certificate chain, for any name. The handshake signature is
/// still verified, so the peer must hold the private key of the certificate it shows; what is given up is
/// only the proof that the certificate belongs to the host.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
