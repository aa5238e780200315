//! The router with real parts: a real `nats-server`, real HTTP backends on 127.0.0.1 (small
//! hyper servers that answer with their own id), and the router on 127.0.0.1:0, driven the
//! way agents drive it (`router.register` / `router.unregister` in dea_ng's format).

#[path = "support/jetstream.rs"]
mod nats;

use bytes::Bytes;
use dea_platform::router::{Router, RouterConfig, RouterHandle};
use dea_protocol::RouterStart;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nats::NatsServer;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

type TestBody = BoxBody<Bytes, Infallible>;

/// No test may hang: each runs under this limit.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("test finished within 60 s")
}

fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

// ---- Backends ----

/// A backend instance: answers with its id, and a few paths for the streaming tests.
struct Backend {
    addr: SocketAddr,
    /// `/gate` waits on this after its first chunk.
    gate: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const BIG: usize = 20 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

async fn backend(id: &'static str) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let gate = Arc::new(Notify::new());
    let shared = gate.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let gate = shared.clone();
            let service = hyper::service::service_fn(move |request| {
                let gate = gate.clone();
                async move { Ok::<_, Infallible>(answer(id, gate, request).await) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { addr, gate, task }
}

async fn answer(
    id: &'static str,
    gate: Arc<Notify>,
    request: Request<Incoming>,
) -> Response<TestBody> {
    let body = match request.uri().path() {
        // Every request header, as the backend saw it.
        "/headers" => {
            let headers: BTreeMap<String, String> = request
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect();
            full(serde_json::to_vec(&headers).expect("json"))
        }
        // 20 MB in 64 KB chunks, no Content-Length: chunked all the way.
        "/big" => {
            let chunks = futures_util::stream::repeat_with(|| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; CHUNK])))
            })
            .take(BIG / CHUNK);
            BodyExt::boxed(StreamBody::new(chunks))
        }
        // One chunk, then nothing until the test says it received that chunk: a router that
        // buffered whole responses would never pass it on.
        "/gate" => {
            let chunks = futures_util::stream::unfold(0, move |sent| {
                let gate = gate.clone();
                async move {
                    match sent {
                        0 => Some((Bytes::from_static(b"first;"), 1)),
                        1 => {
                            gate.notified().await;
                            Some((Bytes::from_static(b"second"), 2))
                        }
                        _ => None,
                    }
                }
            })
            .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
            BodyExt::boxed(StreamBody::new(chunks))
        }
        // Answers as soon as the first chunk of the upload is in, then counts the rest: the
        // client only sends the rest after it has this answer's headers.
        "/upload" => {
            let mut incoming = request.into_body();
            let mut first = 0;
            while let Some(Ok(frame)) = incoming.frame().await {
                if let Ok(data) = frame.into_data() {
                    first = data.len();
                    break;
                }
            }
            let counted =
                futures_util::stream::unfold(Some((incoming, first)), |state| async move {
                    let (mut incoming, mut total) = state?;
                    while let Some(Ok(frame)) = incoming.frame().await {
                        if let Ok(data) = frame.into_data() {
                            total += data.len();
                        }
                    }
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(total.to_string()))),
                        None,
                    ))
                });
            BodyExt::boxed(StreamBody::new(counted))
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            full("late")
        }
        _ => full(id),
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("x-backend", http::HeaderValue::from_static(id));
    response
}

/// A loopback port that refuses connections: bound once, then closed.
fn refusing_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

// ---- The router under test, and a client ----

struct Env {
    nats: NatsServer,
    bus: async_nats::Client,
    router: RouterHandle,
    http: Client<HttpConnector, TestBody>,
}

fn config() -> RouterConfig {
    RouterConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        connect_timeout_ms: 1_000,
        ..RouterConfig::default()
    }
}

async fn env(config: RouterConfig) -> Env {
    let server = NatsServer::start().await;
    let (router, bus) = (server.client().await, server.client().await);
    env_on(server, router, bus, config).await
}

/// The router on `router_nats`, the test's own messages on `bus`.
async fn env_on(
    server: NatsServer,
    router_nats: async_nats::Client,
    bus: async_nats::Client,
    config: RouterConfig,
) -> Env {
    // `RUST_LOG=warn` shows what the router refused and why; silent otherwise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let router = Router::start(router_nats, config)
        .await
        .expect("router starts");
    Env {
        bus,
        nats: server,
        router,
        http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    }
}

fn registration(uris: &[&str], port: u16) -> Value {
    json!({"dea": "dea-1", "app": "app-guid", "uris": uris, "host": "127.0.0.1", "port": port,
           "tags": {"component": "dea-0"}, "private_instance_id": format!("p{port}")})
}

impl Env {
    async fn publish(&self, subject: &'static str, payload: impl Into<Bytes>) {
        self.bus
            .publish(subject, payload.into())
            .await
            .expect("publish");
        self.bus.flush().await.expect("flush");
    }

    async fn register(&self, uris: &[&str], port: u16) {
        self.publish("router.register", registration(uris, port).to_string())
            .await;
    }

    async fn unregister(&self, uris: &[&str], port: u16) {
        self.publish("router.unregister", registration(uris, port).to_string())
            .await;
    }

    /// The backend ports of `uri` in the router's table.
    fn ports(&self, uri: &str) -> Vec<u16> {
        self.router
            .routes()
            .into_iter()
            .filter(|route| route.uri == uri)
            .flat_map(|route| route.backends.into_iter().map(|b| b.addr.port()))
            .collect()
    }

    /// Waits until `uri` has exactly `ports` (in any order).
    async fn wait_ports(&self, uri: &str, ports: &[u16]) {
        let mut want = ports.to_vec();
        want.sort_unstable();
        for _ in 0..500 {
            let mut have = self.ports(uri);
            have.sort_unstable();
            if have == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{uri} never had backends {want:?}: {:?}",
            self.router.routes()
        );
    }

    async fn send(&self, host: &str, path: &str, body: TestBody) -> Response<Incoming> {
        let request = Request::builder()
            .uri(format!("http://{}{path}", self.router.local_addr()))
            .header(http::header::HOST, host)
            .method(if path == "/upload" { "POST" } else { "GET" })
            .body(body)
            .expect("request");
        self.http.request(request).await.expect("router answers")
    }

    async fn get(&self, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        let response = self.send(host, path, Empty::new().boxed()).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }
}

// ---- Tests ----

#[tokio::test]
async fn requests_go_round_robin_and_follow_unregister() {
    within(async {
        let env = env(config()).await;
        let (a, b) = (backend("a").await, backend("b").await);
        env.register(&["app.example.com"], a.addr.port()).await;
        env.register(&["app.example.com"], b.addr.port()).await;
        env.wait_ports("app.example.com", &[a.addr.port(), b.addr.port()])
            .await;

        let mut seen = Vec::new();
        for _ in 0..6 {
            let (status, headers, body) = env.get("app.example.com", "/").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers["x-backend"], body.as_str());
            seen.push(body);
        }
        for pair in seen.windows(2) {
            assert_ne!(pair[0], pair[1], "alternates: {seen:?}");
        }
        assert_eq!(seen.iter().filter(|id| *id == "a").count(), 3);

        // Hosts are case-insensitive and the request's port does not matter.
        let (status, _, _) = env.get("APP.Example.COM:8080", "/").await;
        assert_eq!(status, StatusCode::OK);

        env.unregister(&["app.example.com"], a.addr.port()).await;
        env.wait_ports("app.example.com", &[b.addr.port()]).await;
        for _ in 0..4 {
            assert_eq!(env.get("app.example.com", "/").await.2, "b");
        }

        // A path route takes its prefix; the rest of the host stays where it was.
        let c = backend("c").await;
        env.register(&["app.example.com/api"], c.addr.port()).await;
        env.wait_ports("app.example.com/api", &[c.addr.port()])
            .await;
        assert_eq!(env.get("app.example.com", "/api/users").await.2, "c");
        assert_eq!(env.get("app.example.com", "/apiary").await.2, "b");
        env.router.shutdown().await;
    })
    .await;
}

/// Raw `GET /` for `host` with extra header lines; the response head, lowercased.
async fn raw_get(router: std::net::SocketAddr, host: &str, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(router)
        .await
        .expect("connect");
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn traced_requests_learn_which_backend_answered() {
    within(async {
        let env = env(RouterConfig {
            trace_key: Some("s3cret".into()),
            ..config()
        })
        .await;
        let (a, b) = (backend("a").await, backend("b").await);
        env.register(&["app.example.com"], a.addr.port()).await;
        env.register(&["app.example.com"], b.addr.port()).await;
        env.wait_ports("app.example.com", &[a.addr.port(), b.addr.port()])
            .await;
        let addr = env.router.local_addr();
        let mut backends = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let head = raw_get(addr, "app.example.com", "X-Vcap-Trace: s3cret\r\n").await;
            let backend = head
                .lines()
                .find_map(|l| l.strip_prefix("x-vcap-backend: "))
                .expect("traced: the backend is named")
                .to_string();
            assert!(head.contains("x-vcap-router: 1.1 dea-router-"), "{head}");
            backends.insert(backend);
        }
        let expected: std::collections::BTreeSet<String> = [a.addr, b.addr]
            .iter()
            .map(|addr| addr.to_string())
            .collect();
        assert_eq!(backends, expected);
        // A wrong key, or none, learns nothing.
        for extra in ["X-Vcap-Trace: guess\r\n", ""] {
            let head = raw_get(addr, "app.example.com", extra).await;
            assert!(!head.contains("x-vcap-backend"), "{head}");
        }
        env.router.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn refused_backends_are_skipped_and_all_refusing_is_a_502() {
    within(async {
        let env = env(config()).await;
        let live = backend("live").await;
        let dead = refusing_port();
        env.register(&["retry.example.com"], live.addr.port()).await;
        env.register(&["retry.example.com"], dead).await;
        env.wait_ports("retry.example.com", &[live.addr.port(), dead])
            .await;
        for _ in 0..6 {
            let (status, _, body) = env.get("retry.example.com", "/").await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "live"));
        }
        // An upload is retried too: the refused attempt read nothing of its body.
        for _ in 0..2 {
            let response = env
                .send("retry.example.com", "/upload", full(vec![b'u'; 100_000]))
                .await;
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(body, "100000");
        }

        let (dead1, dead2) = (refusing_port(), refusing_port());
        env.register(&["dead.example.com"], dead1).await;
        env.register(&["dead.example.com"], dead2).await;
        env.wait_ports("dead.example.com", &[dead1, dead2]).await;
        let (status, headers, body) = env.get("dead.example.com", "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body,
            "502 Bad Gateway: Registered endpoint failed to handle the request.\n"
        );
        assert_eq!(headers["x-cf-routererror"], "endpoint_failure");
    })
    .await;
}

#[tokio::test]
async fn unknown_hosts_get_gorouters_404() {
    within(async {
        let env = env(config()).await;
        let (status, headers, body) = env.get("nowhere.example.com", "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            "404 Not Found: Requested route ('nowhere.example.com') does not exist.\n"
        );
        assert_eq!(headers["x-cf-routererror"], "unknown_route");
    })
    .await;
}

#[tokio::test]
async fn backends_see_forwarding_headers_and_no_hop_by_hop_ones() {
    within(async {
        let env = env(config()).await;
        let a = backend("a").await;
        env.register(&["app.example.com"], a.addr.port()).await;
        env.wait_ports("app.example.com", &[a.addr.port()]).await;
        let request = Request::builder()
            .uri(format!("http://{}/headers", env.router.local_addr()))
            .header("host", "app.example.com")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "for the router only")
            .header("x-vcap-request-id", "forged")
            .header("x-kept", "yes")
            .body(Empty::new().boxed())
            .expect("request");
        let before = now_ms();
        let response = env.http.request(request).await.expect("answer");
        let id = response.headers()["x-vcap-request-id"].clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let seen: BTreeMap<String, String> = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(seen["host"], "app.example.com");
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen["x-forwarded-proto"], "http");
        assert_eq!(seen["x-forwarded-host"], "app.example.com");
        assert_eq!(seen["x-kept"], "yes");
        let start: u128 = seen["x-request-start"].parse().expect("ms since the epoch");
        assert!(start >= before && start <= now_ms(), "{start}");
        let request_id = &seen["x-vcap-request-id"];
        assert_ne!(request_id, "forged");
        assert_eq!(request_id.len(), 36, "a uuid: {request_id}");
        assert_eq!(id, request_id.as_str(), "the client gets the same id back");
        assert!(!seen.contains_key("x-private"), "{seen:?}");
    })
    .await;
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
}

#[tokio::test]
async fn router_start_is_announced_and_greet_is_answered() {
    within(async {
        let server = NatsServer::start().await;
        let bus = server.client().await;
        let mut starts = bus.subscribe("router.start").await.expect("subscribe");
        nats::barrier(&bus).await;
        let config = RouterConfig {
            prune_threshold_secs: 90,
            register_interval_secs: 15,
            ..config()
        };
        let router = Router::start(server.client().await, config)
            .await
            .expect("router starts");
        let message = starts.next().await.expect("router.start");
        let start: RouterStart = serde_json::from_slice(&message.payload).expect("RouterStart");
        assert_eq!(start.id, router.id());
        assert_eq!(start.hosts, ["127.0.0.1"]);
        assert_eq!(start.minimum_register_interval_in_seconds, 15);
        assert_eq!(start.prune_threshold_in_seconds, 90);
        let raw: Value = serde_json::from_slice(&message.payload).expect("json");
        assert_eq!(raw["minimumRegisterIntervalInSeconds"], 15, "{raw}");
        assert_eq!(raw["pruneThresholdInSeconds"], 90, "{raw}");

        let reply = bus
            .request("router.greet", Bytes::new())
            .await
            .expect("router.greet answered");
        let greeted: RouterStart = serde_json::from_slice(&reply.payload).expect("RouterStart");
        assert_eq!(greeted, start);
        drop(server);
    })
    .await;
}

#[tokio::test]
async fn routes_not_reregistered_are_pruned() {
    within(async {
        let env = env(RouterConfig {
            prune_threshold_secs: 1,
            ..config()
        })
        .await;
        let (a, b) = (backend("a").await, backend("b").await);
        env.register(&["stale.example.com"], a.addr.port()).await;
        env.register(&["stale.example.com"], b.addr.port()).await;
        env.wait_ports("stale.example.com", &[a.addr.port(), b.addr.port()])
            .await;
        // b keeps registering, as a live agent does; a falls silent.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
            env.register(&["stale.example.com"], b.addr.port()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(env.ports("stale.example.com"), [b.addr.port()]);
        assert_eq!(env.get("stale.example.com", "/").await.2, "b");
        // Then b stops too: the route goes and the host is unknown again.
        env.wait_ports("stale.example.com", &[]).await;
        assert_eq!(
            env.get("stale.example.com", "/").await.0,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

#[tokio::test]
async fn hostile_messages_are_ignored_and_the_router_keeps_proxying() {
    within(async {
        let env = env(config()).await;
        let a = backend("a").await;
        env.register(&["app.example.com"], a.addr.port()).await;
        env.wait_ports("app.example.com", &[a.addr.port()]).await;

        let thousands: Vec<String> = (0..10_000).map(|i| format!("h{i}.example.com")).collect();
        let many_small: Vec<String> = (0..300).map(|i| format!("s{i}.x")).collect();
        let megabyte = json!({"host": "127.0.0.1", "port": 1, "tags": {},
                              "uris": ["mega.example.com"], "pad": "x".repeat(1_000_000)});
        let hostile: Vec<Vec<u8>> = vec![
            b"garbage \x00\xff".to_vec(),
            b"".to_vec(),
            b"[1,2,3]".to_vec(),
            br#"{"uris": ["evil.example.com"]}"#.to_vec(),
            br#"{"host": "127.0.0.1", "uris": ["evil.example.com"], "tags": {}}"#.to_vec(),
            json!({"host": "127.0.0.1", "port": 0, "uris": ["evil.example.com"], "tags": {}}).to_string().into_bytes(),
            json!({"host": "", "port": 80, "uris": ["evil.example.com"], "tags": {}}).to_string().into_bytes(),
            json!({"host": "127.0.0.1", "port": -1, "uris": ["evil.example.com"], "tags": {}}).to_string().into_bytes(),
            json!({"host": "127.0.0.1", "port": 80, "uris": ["evil.example.com:80", "evil.example.com/a?b", "e vil.com", "*.example.com"], "tags": {}}).to_string().into_bytes(),
            json!({"host": "127.0.0.1", "port": 80, "uris": "app.example.com", "tags": {}}).to_string().into_bytes(),
            json!({"host": "127.0.0.1", "port": 80, "uris": thousands, "tags": {}}).to_string().into_bytes(),
            json!({"host": "127.0.0.1", "port": 80, "uris": many_small, "tags": {}}).to_string().into_bytes(),
            megabyte.to_string().into_bytes(),
        ];
        for payload in &hostile {
            env.publish("router.register", payload.clone()).await;
            env.publish("router.unregister", payload.clone()).await;
        }
        // Messages on one subject arrive in order: once this registration is in, every
        // hostile `router.register` above was seen (and refused, as the table shows).
        let b = backend("b").await;
        env.register(&["sentinel.example.com"], b.addr.port()).await;
        env.wait_ports("sentinel.example.com", &[b.addr.port()]).await;

        let uris: Vec<String> = env.router.routes().into_iter().map(|r| r.uri).collect();
        assert_eq!(uris, ["app.example.com", "sentinel.example.com"]);
        assert_eq!(env.ports("app.example.com"), [a.addr.port()]);
        assert_eq!(env.get("app.example.com", "/").await.2, "a");
        assert_eq!(env.get("sentinel.example.com", "/").await.2, "b");
    })
    .await;
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    within(async {
        let env = env(config()).await;
        let a = backend("a").await;
        env.register(&["big.example.com"], a.addr.port()).await;
        env.wait_ports("big.example.com", &[a.addr.port()]).await;

        // 20 MB through the router, counted frame by frame.
        let mut body = env
            .send("big.example.com", "/big", Empty::new().boxed())
            .await
            .into_body();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("frame").into_data() {
                assert!(data.iter().all(|byte| *byte == b'x'));
                total += data.len();
            }
        }
        assert_eq!(total, BIG);

        // Downstream: the first chunk arrives while the backend is still holding the second.
        let mut body = env
            .send("big.example.com", "/gate", Empty::new().boxed())
            .await
            .into_body();
        let first = body
            .frame()
            .await
            .expect("a frame")
            .expect("data")
            .into_data()
            .expect("data");
        assert_eq!(first, "first;");
        a.gate.notify_one();
        let rest = body.collect().await.expect("rest").to_bytes();
        assert_eq!(rest, "second");

        // Upstream: the backend answers after the first chunk, and only then is the rest sent.
        let (chunks, receiver) = mpsc::channel::<Bytes>(4);
        let upload = StreamBody::new(futures_util::stream::unfold(
            receiver,
            |mut receiver| async move {
                let chunk = receiver.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(chunk)), receiver))
            },
        ));
        chunks
            .send(Bytes::from(vec![b'u'; 1000]))
            .await
            .expect("first chunk");
        let response = env
            .send("big.example.com", "/upload", BodyExt::boxed(upload))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        for _ in 0..10 {
            chunks
                .send(Bytes::from(vec![b'u'; CHUNK]))
                .await
                .expect("chunk");
        }
        drop(chunks);
        let count = response
            .into_body()
            .collect()
            .await
            .expect("count")
            .to_bytes();
        assert_eq!(count, (1000 + 10 * CHUNK).to_string());
    })
    .await;
}

#[tokio::test]
async fn a_backend_without_response_headers_in_time_is_a_504() {
    within(async {
        let env = env(RouterConfig {
            response_header_timeout_secs: 1,
            ..config()
        })
        .await;
        let a = backend("a").await;
        env.register(&["slow.example.com"], a.addr.port()).await;
        env.wait_ports("slow.example.com", &[a.addr.port()]).await;
        let (status, headers, body) = env.get("slow.example.com", "/hang").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(headers["x-cf-routererror"], "endpoint_failure");
        assert!(body.starts_with("504 Gateway Timeout"), "{body}");
    })
    .await;
}

#[tokio::test]
async fn a_route_back_to_the_router_is_a_508_not_a_loop() {
    within(async {
        let env = env(config()).await;
        let own = env.router.local_addr().port();
        env.register(&["loop.example.com"], own).await;
        env.wait_ports("loop.example.com", &[own]).await;
        let (status, headers, body) = env.get("loop.example.com", "/").await;
        assert_eq!(status, StatusCode::LOOP_DETECTED);
        assert_eq!(headers["x-cf-routererror"], "loop_detected");
        assert!(body.starts_with("508 Loop Detected"), "{body}");
    })
    .await;
}

/// While the bus is down nothing can re-register, so nothing is pruned; when it is back the
/// router asks for registrations at once and gives every route a full threshold.
#[tokio::test]
async fn a_nats_outage_suspends_pruning_and_ends_with_router_start() {
    within(async {
        // The test's client comes back within milliseconds of the server, the router's on a
        // fixed 1.5 s beat, so the test is listening again before the router can announce.
        let server = NatsServer::start().await;
        let reconnecting = |every: u64| {
            async_nats::ConnectOptions::new()
                .reconnect_delay_callback(move |_| Duration::from_millis(every))
                .connect(server.url())
        };
        let router_nats = reconnecting(1_500).await.expect("router's client");
        let bus = reconnecting(10).await.expect("test's client");
        let config = RouterConfig {
            prune_threshold_secs: 1,
            ..config()
        };
        let mut env = env_on(server, router_nats, bus, config).await;
        let a = backend("a").await;
        env.register(&["app.example.com"], a.addr.port()).await;
        env.wait_ports("app.example.com", &[a.addr.port()]).await;
        let mut starts = env.bus.subscribe("router.start").await.expect("subscribe");
        nats::barrier(&env.bus).await;

        env.nats.stop();
        // 3.7 s: between two of the router's attempts (every 1.5 s), so it comes back well
        // after the test's client.
        tokio::time::sleep(Duration::from_millis(3_700)).await;
        assert_eq!(
            env.ports("app.example.com"),
            [a.addr.port()],
            "not pruned while down"
        );
        assert_eq!(
            env.get("app.example.com", "/").await.2,
            "a",
            "and still proxied"
        );

        env.nats.restart().await;
        let start = tokio::time::timeout(Duration::from_secs(30), starts.next())
            .await
            .expect("router.start after the outage")
            .expect("subscription open");
        let start: RouterStart = serde_json::from_slice(&start.payload).expect("RouterStart");
        assert_eq!(start.id, env.router.id());
        assert_eq!(
            env.ports("app.example.com"),
            [a.addr.port()],
            "freshened, not pruned"
        );
        // Nobody re-registers: after the fresh threshold it goes as usual.
        env.wait_ports("app.example.com", &[]).await;
    })
    .await;
}
