//! The client against real servers on 127.0.0.1:0. Every request carries a timeout, so no test can hang.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn settings() -> ClientSettings {
    ClientSettings {
        connect_timeout: Duration::from_secs(2),
        max_response_body_bytes: 64 * 1024,
        allow_http: true,
        allow_private_destinations: true,
        private_allowlist: Vec::new(),
        user_agent: "hookd/test".into(),
    }
}

fn client(settings: ClientSettings) -> HttpClient {
    HttpClient::new(settings).unwrap()
}

fn request(method: Method, url: impl Into<String>, body: &'static [u8]) -> OutboundRequest {
    OutboundRequest {
        method,
        url: url.into(),
        headers: HeaderMap::new(),
        body: Bytes::from_static(body),
        timeout: Duration::from_secs(5),
        verify_tls: true,
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Reads one HTTP/1.1 request head and its `content-length` body, so that closing the socket afterwards
/// does not reset the connection under unread bytes. `None` when the client closed the connection.
async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

async fn respond(stream: &mut (impl AsyncWrite + Unpin), response: &[u8]) {
    stream.write_all(response).await.unwrap();
    stream.shutdown().await.unwrap();
}

/// A server that reads each request and then waits `stall` before writing `head`, then stalls again
/// before the body.
async fn serve_stalling(head_after: Duration, body_after: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                read_request(&mut stream).await.unwrap();
                tokio::time::sleep(head_after).await;
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n").await.unwrap();
                tokio::time::sleep(body_after).await;
                respond(&mut stream, b"late").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_post_gets_the_status_and_body_and_carries_user_agent_and_length() {
    let app = Router::new().route(
        "/hook",
        post(|headers: HeaderMap, body: Bytes| async move {
            let seen = format!(
                "{}|{}|{}",
                headers[USER_AGENT].to_str().unwrap(),
                headers[CONTENT_LENGTH].to_str().unwrap(),
                String::from_utf8_lossy(&body)
            );
            (StatusCode::ACCEPTED, [("x-receiver", "yes")], seen)
        }),
    );
    let addr = serve(app).await;
    let client = client(settings());

    let response = client.send(request(Method::POST, format!("http://{addr}/hook"), b"hello")).await.unwrap();
    assert_eq!(response.status, StatusCode::ACCEPTED);
    assert_eq!(response.headers["x-receiver"], "yes");
    assert_eq!(response.body, "hookd/test|5|hello");
    assert!(!response.truncated);

    // The caller's own user agent and a wrong content-length: the first wins, the second is corrected.
    let mut req = request(Method::POST, format!("http://{addr}/hook"), b"hi");
    req.headers.insert(USER_AGENT, HeaderValue::from_static("custom/1"));
    req.headers.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
    let response = client.clone().send(req).await.unwrap();
    assert_eq!(response.body, "custom/1|2|hi");
}

#[tokio::test]
async fn a_body_past_the_cap_is_cut_and_flagged() {
    let app = Router::new()
        .route("/big", get(|| async { vec![b'x'; 1 << 20] }))
        .route("/exact", get(|| async { vec![b'y'; 1000] }));
    let addr = serve(app).await;
    let client = client(ClientSettings { max_response_body_bytes: 1000, ..settings() });

    let response = client.send(request(Method::GET, format!("http://{addr}/big"), b"")).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body.len(), 1000);
    assert!(response.truncated);

    // The next request works (on a fresh connection), and a body of exactly the cap is whole.
    let response = client.send(request(Method::GET, format!("http://{addr}/exact"), b"")).await.unwrap();
    assert_eq!(response.body.len(), 1000);
    assert!(!response.truncated);
}

/// A keep-alive HTTP/1.1 server that counts connections: `/big` answers 100 kB, anything else 2 bytes.
async fn serve_counting_connections() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while let Some(req) = read_request(&mut stream).await {
                    let body =
                        if req.starts_with(b"GET /big ") { vec![b'z'; 100_000] } else { b"ok".to_vec() };
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    // The client hangs up on a body it cut short: a write error ends this connection.
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn connections_are_pooled_but_not_after_a_truncated_body() {
    let (addr, connections) = serve_counting_connections().await;
    let client = client(ClientSettings { max_response_body_bytes: 1000, ..settings() });
    let get = |path: &str| request(Method::GET, format!("http://{addr}{path}"), b"");

    for _ in 0..3 {
        assert_eq!(client.send(get("/small")).await.unwrap().body, "ok");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "sequential requests share one pooled connection");

    let response = client.send(get("/big")).await.unwrap();
    assert!(response.truncated);
    assert_eq!(client.send(get("/small")).await.unwrap().body, "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "the cut-short connection was not reused");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_budget() {
    let addr = serve_stalling(Duration::from_secs(30), Duration::ZERO).await;
    let client = client(settings());
    let mut req = request(Method::POST, format!("http://{addr}/"), b"x");
    req.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = client.send(req).await.unwrap_err();
    assert!(matches!(err, SendError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_body_that_never_ends_times_out_too() {
    let addr = serve_stalling(Duration::ZERO, Duration::from_secs(30)).await;
    let client = client(settings());
    let mut req = request(Method::POST, format!("http://{addr}/"), b"x");
    req.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = client.send(req).await.unwrap_err();
    assert!(matches!(err, SendError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err =
        client(settings()).send(request(Method::POST, format!("http://{addr}/"), b"x")).await.unwrap_err();
    assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    assert_eq!(err.class(), "connect");
    // The cause is kept, down to the I/O error.
    let refused = causes(&err)
        .any(|c| c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused));
    assert!(refused, "{err:?}");
}

#[tokio::test]
async fn a_redirect_comes_back_as_is() {
    let followed = Arc::new(AtomicUsize::new(0));
    let counter = followed.clone();
    let app = Router::new()
        .route("/from", post(|| async { (StatusCode::FOUND, [(http::header::LOCATION, "/to")]) }))
        .route(
            "/to",
            post(move || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "followed"
            }),
        );
    let addr = serve(app).await;
    let response =
        client(settings()).send(request(Method::POST, format!("http://{addr}/from"), b"x")).await.unwrap();
    assert_eq!(response.status, StatusCode::FOUND);
    assert_eq!(response.headers[http::header::LOCATION], "/to");
    assert_eq!(followed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn plain_http_and_other_schemes_are_refused_unless_allowed() {
    let strict = client(ClientSettings { allow_http: false, ..settings() });
    let err = strict.send(request(Method::POST, "http://127.0.0.1:9/", b"x")).await.unwrap_err();
    assert!(matches!(&err, SendError::SchemeNotAllowed(s) if s == "http"), "{err:?}");
    let err = client(settings()).send(request(Method::POST, "ftp://example.com/", b"x")).await.unwrap_err();
    assert!(matches!(&err, SendError::SchemeNotAllowed(s) if s == "ftp"), "{err:?}");
}

#[tokio::test]
async fn malformed_urls_are_invalid() {
    let client = client(settings());
    for url in ["", "not a url", "/relative/path", "example.com/hook", "http://"] {
        let err = client.send(request(Method::POST, url, b"x")).await.unwrap_err();
        assert!(matches!(err, SendError::InvalidUrl(_)), "{url:?}: {err:?}");
        assert_eq!(err.class(), "invalid_url");
    }
}

#[tokio::test]
async fn loopback_is_blocked_unless_private_destinations_are_allowed() {
    let app = Router::new().route("/", post(|| async { "reached" }));
    let addr = serve(app).await;
    let port = addr.port();
    let guarded = client(ClientSettings { allow_private_destinations: false, ..settings() });

    // An IP literal is checked before the request.
    let err =
        guarded.send(request(Method::POST, format!("http://127.0.0.1:{port}/"), b"x")).await.unwrap_err();
    match &err {
        SendError::Blocked { host, addr } => {
            assert_eq!(host, "127.0.0.1");
            assert!(addr.is_loopback());
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert_eq!(err.class(), "blocked");
    for url in [
        format!("http://[::1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let err = guarded.send(request(Method::POST, url.clone(), b"x")).await.unwrap_err();
        assert!(matches!(err, SendError::Blocked { .. }), "{url}: {err:?}");
    }

    // A name is checked after resolution, by the connector's resolver.
    let err =
        guarded.send(request(Method::POST, format!("http://localhost:{port}/"), b"x")).await.unwrap_err();
    match &err {
        SendError::Blocked { host, addr } => {
            assert_eq!(host, "localhost");
            assert!(addr.is_loopback());
        }
        other => panic!("expected Blocked, got {other:?}"),
    }

    let open = client(settings());
    for url in [format!("http://127.0.0.1:{port}/"), format!("http://localhost:{port}/")] {
        let response = open.send(request(Method::POST, url, b"x")).await.unwrap();
        assert_eq!(response.body, "reached");
    }
}

/// A fresh self-signed certificate for `localhost`, as a rustls server config offering `alpn`.
fn self_signed_config(alpn: &[u8]) -> rustls::ServerConfig {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// A TLS server with a self-signed certificate, answering every HTTP/1.1 request with 200.
async fn serve_self_signed_tls() -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self_signed_config(b"http/1.1")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate aborts the handshake: not an error here.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                read_request(&mut tls).await.unwrap();
                respond(&mut tls, b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecret")
                    .await;
            });
        }
    });
    addr
}

/// A TLS server that only speaks HTTP/2, answering with the protocol version it saw. (hyper's server half
/// is compiled in for axum.)
async fn serve_h2_only() -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self_signed_config(b"h2")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(version))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let addr = serve_h2_only().await;
    let mut req = request(Method::POST, format!("https://localhost:{}/", addr.port()), b"x");
    req.verify_tls = false;
    let response = client(settings()).send(req).await.unwrap();
    assert_eq!(response.body, "HTTP/2.0");
}

#[tokio::test]
async fn a_self_signed_certificate_fails_verification_unless_verification_is_off() {
    let addr = serve_self_signed_tls().await;
    let url = format!("https://localhost:{}/", addr.port());
    let client = client(ClientSettings { allow_http: false, ..settings() });

    let err = client.send(request(Method::POST, url.clone(), b"x")).await.unwrap_err();
    assert!(matches!(err, SendError::Tls(_)), "{err:?}");
    assert_eq!(err.class(), "tls");
    let cert_error = causes(&err)
        .any(|c| matches!(c.downcast_ref::<rustls::Error>(), Some(rustls::Error::InvalidCertificate(_))));
    assert!(cert_error, "{err:?}");

    let mut req = request(Method::POST, url, b"x");
    req.verify_tls = false;
    let response = client.send(req).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, "secret");
}

#[test]
fn an_invalid_user_agent_fails_the_build() {
    let err = HttpClient::new(ClientSettings { user_agent: "bad\nagent".into(), ..settings() }).unwrap_err();
    assert!(matches!(err, ClientBuildError::UserAgent(..)), "{err:?}");
}

#[test]
fn every_error_has_a_class() {
    let cases = [
        (SendError::InvalidUrl(UrlError::NotAbsolute), "invalid_url"),
        (SendError::SchemeNotAllowed("ftp".into()), "scheme"),
        (SendError::Blocked { host: "h".into(), addr: [10, 0, 0, 1].into() }, "blocked"),
        (SendError::Dns(io::Error::other("x").into()), "dns"),
        (SendError::Connect(io::Error::other("x").into()), "connect"),
        (SendError::Tls(io::Error::other("x").into()), "tls"),
        (SendError::Timeout, "timeout"),
        (SendError::Protocol(io::Error::other("x").into()), "protocol"),
    ];
    for (err, class) in cases {
        assert_eq!(err.class(), class);
    }
}

#[test]
fn the_cause_walk_looks_inside_io_errors() {
    // hyper-rustls wraps a rustls::Error in an io::Error in an io::Error.
    let inner = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
    let err: BoxError = Box::new(io::Error::other(inner));
    assert!(matches!(send_error(err, true), SendError::Tls(_)));

    let err: BoxError = Box::new(io::Error::new(io::ErrorKind::TimedOut, "connect timeout"));
    assert!(matches!(send_error(err, true), SendError::Timeout));

    let blocked = ResolveError::Blocked { host: "evil.example".into(), addr: [169, 254, 169, 254].into() };
    let err: BoxError = Box::new(io::Error::other(blocked));
    assert!(matches!(send_error(err, true), SendError::Blocked { host, .. } if host == "evil.example"));

    let lookup = ResolveError::NoAddress { host: "void.example".into() };
    assert!(matches!(send_error(Box::new(lookup), true), SendError::Dns(_)));

    let err: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionReset));
    assert!(matches!(send_error(err, false), SendError::Protocol(_)));
}
