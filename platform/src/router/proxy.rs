//! The HTTP side: a hyper server that looks up each request's route, forwards it to a
//! backend with hyper's pooled client, and streams the answer back.
//!
//! What it adds and removes follows gorouter: `X-Forwarded-For/-Proto/-Host`,
//! `X-Request-Start` (ms since the epoch, if the client did not set one) and a fresh
//! `X-Vcap-Request-Id`; hop-by-hop headers go both ways. A backend that refuses the
//! connection is skipped for the next one in turn (the request has not been sent, so this
//! is safe for any method); any failure after that is the client's 502 or 504. Errors are
//! plain text in gorouter's words, with its `X-Cf-RouterError` header. The router adds
//! itself to `Via`, and a request that already names it (a route pointing back at the
//! router) is answered 508 instead of proxied around in a circle.

use super::RouterConfig;
use super::body::{AttemptBody, Replayable};
use super::table::SharedTable;
use super::uri::request_host;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the router answers with: an instance's body, streamed, or its own short message.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
const X_VCAP_REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");
const X_VCAP_TRACE: HeaderName = HeaderName::from_static("x-vcap-trace");
const X_VCAP_ROUTER: HeaderName = HeaderName::from_static("x-vcap-router");
const X_VCAP_BACKEND: HeaderName = HeaderName::from_static("x-vcap-backend");
const X_CF_ROUTER_ERROR: HeaderName = HeaderName::from_static("x-cf-routererror");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// `Proxy-Connection` some clients still send. `Expect` goes too: the router's server side
/// has already answered `100-continue` by reading the body.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// The proxy's state, shared by every connection.
pub struct Proxy {
    table: SharedTable,
    client: Client<HttpConnector, AttemptBody>,
    response_header_timeout: Duration,
    max_tries: usize,
    /// This router's `Via` entry, `1.1 dea-router-<id>`: seeing it on an incoming request
    /// means a route led back here (a registration naming the router itself), which would
    /// otherwise recurse until something runs out.
    via: String,
    /// Requests carrying this in `X-Vcap-Trace` are told who answered (gorouter's trace).
    trace_key: Option<HeaderValue>,
}

impl Proxy {
    pub fn new(table: SharedTable, config: &RouterConfig, id: &str) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Proxy {
            table,
            client,
            response_header_timeout: Duration::from_secs(config.response_header_timeout_secs),
            max_tries: config.max_backend_tries,
            via: format!("1.1 dea-router-{id}"),
            trace_key: config
                .trace_key
                .as_deref()
                .and_then(|key| HeaderValue::from_str(key).ok()),
        }
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        client: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let received = SystemTime::now();
        // An absolute-form target names the host itself (RFC 9112 §3.2.2); else `Host`.
        let raw_host = match request.uri().authority() {
            // Without any `user@` (a host never contains '@').
            Some(authority) => authority.as_str().rsplit('@').next().map(str::to_owned),
            None => request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let Some(raw_host) = raw_host else {
            return plain(
                StatusCode::BAD_REQUEST,
                None,
                "400 Bad Request: Request has no Host header.\n".into(),
            );
        };
        let path = request.uri().path().to_ascii_lowercase();
        let picked = request_host(&raw_host)
            .and_then(|host| self.table.read().pick(&host, &path, self.max_tries));
        let Some(backends) = picked else {
            tracing::debug!(host = %raw_host, "no route");
            return plain(
                StatusCode::NOT_FOUND,
                Some("unknown_route"),
                format!("404 Not Found: Requested route ('{raw_host}') does not exist.\n"),
            );
        };

        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        let traced = self
            .trace_key
            .as_ref()
            .is_some_and(|key| headers.get(X_VCAP_TRACE) == Some(key));
        headers.remove(X_VCAP_TRACE);
        if !add_via(&mut headers, &self.via) {
            tracing::warn!(host = %raw_host, "request came back to this router; a route points here");
            return plain(
                StatusCode::LOOP_DETECTED,
                Some("loop_detected"),
                format!("508 Loop Detected: Route ('{raw_host}') leads back to this router.\n"),
            );
        }
        strip_hop_by_hop(&mut headers);
        let request_id = add_forwarding(&mut headers, client, &raw_host, received);
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let body = Replayable::new(body);

        for backend in backends {
            if body.is_spent() {
                break;
            }
            let Ok(uri) = Uri::try_from(format!("http://{backend}{target}")) else {
                // The target came from a parsed request, so this cannot happen; answer as
                // for a backend failure rather than panic.
                break;
            };
            let mut outgoing = Request::new(body.attempt());
            *outgoing.method_mut() = parts.method.clone();
            *outgoing.uri_mut() = uri;
            *outgoing.version_mut() = Version::HTTP_11;
            *outgoing.headers_mut() = headers.clone();
            let sent =
                tokio::time::timeout(self.response_header_timeout, self.client.request(outgoing))
                    .await;
            match sent {
                Ok(Ok(mut response)) => {
                    strip_hop_by_hop(response.headers_mut());
                    response
                        .headers_mut()
                        .insert(X_VCAP_REQUEST_ID, request_id.clone());
                    if traced {
                        let answered = [
                            (X_VCAP_BACKEND, backend.to_string()),
                            (X_VCAP_ROUTER, self.via.clone()),
                        ];
                        for (name, value) in answered {
                            if let Ok(value) = HeaderValue::from_str(&value) {
                                response.headers_mut().insert(name, value);
                            }
                        }
                    }
                    tracing::debug!(host = %raw_host, %backend, status = %response.status(), "proxied");
                    return response.map(Either::Left);
                }
                Ok(Err(error)) if error.is_connect() => {
                    // Nothing of the request went out: the next backend can take it.
                    tracing::debug!(%backend, error = %chain(&error), "backend refused; trying the next");
                }
                Ok(Err(error)) => {
                    tracing::warn!(host = %raw_host, %backend, error = %chain(&error), "backend failed");
                    return bad_gateway();
                }
                Err(_) => {
                    tracing::warn!(host = %raw_host, %backend, "backend sent no response headers in time");
                    return plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        Some("endpoint_failure"),
                        format!(
                            "504 Gateway Timeout: Registered endpoint did not respond within {} seconds.\n",
                            self.response_header_timeout.as_secs()
                        ),
                    );
                }
            }
        }
        tracing::warn!(host = %raw_host, "no backend accepted the connection");
        bad_gateway()
    }
}

/// Accepts connections until `stop` says so (or its sender is gone), then lets the open
/// ones finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    request_header_timeout: Duration,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(request_header_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            () = super::stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(client, request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%client, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; leaving them");
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends this router to `Via` (RFC 9110 §7.6.3); `false` if it is there already.
fn add_via(headers: &mut HeaderMap, via: &str) -> bool {
    let prior: Vec<&str> = headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if prior
        .iter()
        .flat_map(|value| value.split(','))
        .any(|entry| entry.trim() == via)
    {
        return false;
    }
    let value = if prior.is_empty() {
        via.to_owned()
    } else {
        format!("{}, {via}", prior.join(", "))
    };
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(header::VIA, value);
    }
    true
}

/// Adds what the instance should know about the original request; returns the request id.
fn add_forwarding(
    headers: &mut HeaderMap,
    client: SocketAddr,
    raw_host: &str,
    received: SystemTime,
) -> HeaderValue {
    // The client may have come through other proxies: append, as Go's ReverseProxy did.
    let client_ip = client.ip().to_canonical().to_string();
    let prior: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let forwarded_for = if prior.is_empty() {
        client_ip
    } else {
        format!("{}, {client_ip}", prior.join(", "))
    };
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Ok(host) = HeaderValue::try_from(raw_host) {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        // `Connection: host` may have just removed it; the instance still wants it.
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host);
        }
    }
    if !headers.contains_key(&X_REQUEST_START) {
        let millis = received
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        if let Ok(value) = HeaderValue::try_from(millis.to_string()) {
            headers.insert(X_REQUEST_START, value);
        }
    }
    // Always the router's own id: a client-chosen one could collide with another request's
    // in the logs the id exists to join.
    let id = HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    headers.insert(X_VCAP_REQUEST_ID, id.clone());
    id
}

fn bad_gateway() -> Response<ProxyBody> {
    plain(
        StatusCode::BAD_GATEWAY,
        Some("endpoint_failure"),
        "502 Bad Gateway: Registered endpoint failed to handle the request.\n".into(),
    )
}

/// A short plain-text answer from the router itself.
fn plain(
    status: StatusCode,
    router_error: Option<&'static str>,
    text: String,
) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(kind) = router_error {
        headers.insert(X_CF_ROUTER_ERROR, HeaderValue::from_static(kind));
    }
    response
}

/// An error with its causes, for one log line (hyper's outer errors say little alone).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-kept", "2"),
            ("content-length", "3"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn via_is_appended_and_a_second_visit_is_a_loop() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VIA, HeaderValue::from_static("1.0 fred"));
        assert!(add_via(&mut headers, "1.1 dea-router-x"));
        assert_eq!(headers[header::VIA], "1.0 fred, 1.1 dea-router-x");
        assert!(!add_via(&mut headers, "1.1 dea-router-x"));
        assert!(
            add_via(&mut headers, "1.1 dea-router-y"),
            "another router is no loop"
        );
    }

    #[test]
    fn forwarding_headers_append_and_keep_what_the_client_set() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(X_VCAP_REQUEST_ID, HeaderValue::from_static("forged"));
        let client = SocketAddr::from(([192, 0, 2, 1], 4000));
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let id = add_forwarding(&mut headers, client, "App.example.com:8080", at);
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9, 192.0.2.1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "App.example.com:8080");
        assert_eq!(headers[header::HOST], "App.example.com:8080");
        assert_eq!(headers[&X_REQUEST_START], "1700000000123");
        assert_ne!(headers[&X_VCAP_REQUEST_ID], "forged");
        assert_eq!(headers[&X_VCAP_REQUEST_ID], id);

        let mut fresh = HeaderMap::new();
        let v6 = "[::ffff:192.0.2.7]:1".parse().expect("address");
        add_forwarding(&mut fresh, v6, "a.b", at);
        assert_eq!(fresh[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(fresh[&X_FORWARDED_PROTO], "http");
    }
}
