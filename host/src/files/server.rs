//! The HTTP side: routes, the DEA file API's checks in its order (reference dea_ng.md §5.4),
//! then the Go server's serving (§5.5), in one axum server.

use super::content::{FileContent, server_error};
use super::resolve::{Opened, ResolveError, Scope, open_under};
use super::signing::{form_decode_cow, instance_url_path, now, staging_url_path};
use super::tail::Tail;
use super::{DirectoryServerConfig, FileRoot, FileRoots, FilesError, UrlSigner};
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How the server treats URLs and streams; [`ServerSettings::from_config`] for the agent,
/// shorter values in tests.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// How long after its timestamp a URL is accepted.
    pub url_lifetime: Duration,
    /// How long a `tail` stream may go without new bytes.
    pub streaming_timeout: Duration,
    /// How often a tailed file is checked for new bytes.
    pub tail_poll_interval: Duration,
}

impl ServerSettings {
    pub fn from_config(config: &DirectoryServerConfig) -> ServerSettings {
        ServerSettings {
            url_lifetime: config.url_lifetime(),
            streaming_timeout: config.streaming_timeout(),
            tail_poll_interval: Duration::from_millis(50),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings::from_config(&DirectoryServerConfig::default())
    }
}

/// What every request needs: the key, the roots, the settings. One per server, shared by the
/// axum routes and the fast path.
pub(crate) struct Shared {
    signer: Arc<UrlSigner>,
    roots: Arc<dyn FileRoots>,
    settings: ServerSettings,
}

impl Shared {
    pub(crate) fn new(
        signer: Arc<UrlSigner>,
        roots: Arc<dyn FileRoots>,
        settings: ServerSettings,
    ) -> Shared {
        Shared {
            signer,
            roots,
            settings,
        }
    }
}

/// The directory server's routes, ready to serve (or to test without a socket).
pub fn router(
    signer: Arc<UrlSigner>,
    roots: Arc<dyn FileRoots>,
    settings: ServerSettings,
) -> Router {
    routes(Arc::new(Shared::new(signer, roots, settings)))
}

fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/instance_paths/{instance_id}", get(instance_file))
        .route("/staging_tasks/{task_id}/file_path", get(staging_file))
        .with_state(shared)
}

/// A running directory server. Dropping it stops it; [`DirectoryServer::shutdown`] lets
/// requests in flight finish first.
///
/// It runs one single-threaded runtime per core, each accepting on its own `SO_REUSEPORT`
/// socket (nginx's worker model): the kernel spreads connections, and a request never
/// crosses threads. Measured against one work-stealing runtime, this is what keeps small-file
/// throughput near nginx's, and file serving never competes with the agent's own tasks.
pub struct DirectoryServer {
    /// Where it listens (the real port when the configured one was 0).
    pub local_addr: SocketAddr,
    /// `Graceful` stops accepting and lets requests finish; `Abort` drops them.
    stop: tokio::sync::watch::Sender<Stop>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Running,
    Graceful,
    Abort,
}

impl DirectoryServer {
    /// Stops accepting connections, waits up to `grace` for requests in flight (a `tail`
    /// stream lasts until its file goes or its idle timeout), then drops the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(Stop::Graceful);
        let workers = std::mem::take(&mut self.workers);
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        });
        if tokio::time::timeout(grace, joined).await.is_err() {
            let _ = self.stop.send(Stop::Abort);
        }
    }
}

impl Drop for DirectoryServer {
    fn drop(&mut self) {
        let _ = self.stop.send(Stop::Abort);
    }
}

/// A listening socket with `SO_REUSEPORT`, so every worker can bind the same address.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds `config.listen:config.port` and serves [`router`] there on worker threads.
///
/// Each connection starts on the fast path (`fast.rs`), which answers plain GETs of files
/// itself; at the first request it does not take, the connection goes to hyper and these
/// routes for good (`conn.rs`).
///
/// `config.enabled` is the caller's business: this always serves. The caller also writes the
/// key file ([`super::write_key_file`]) so the operator CLI can sign URLs for this server.
pub async fn serve(
    config: &DirectoryServerConfig,
    signer: Arc<UrlSigner>,
    roots: Arc<dyn FileRoots>,
) -> Result<DirectoryServer, FilesError> {
    let addr = format!("{}:{}", config.listen, config.port);
    let bind_error = |source| FilesError::Bind {
        addr: addr.clone(),
        source,
    };
    let wanted = tokio::net::lookup_host((config.listen.as_str(), config.port))
        .await
        .map_err(bind_error)?
        .next()
        .ok_or_else(|| bind_error(std::io::Error::other("no address")))?;
    // The first socket fixes the port (when 0 asked for any); the others share it.
    let first = reuseport_listener(wanted).map_err(bind_error)?;
    let local_addr = first.local_addr()?;
    let count = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(reuseport_listener(local_addr).map_err(bind_error)?);
    }
    let shared = Arc::new(Shared::new(
        signer,
        roots,
        ServerSettings::from_config(config),
    ));
    let app = routes(shared.clone());
    let (stop, stopped) = tokio::sync::watch::channel(Stop::Running);
    let mut workers = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let app = app.clone();
        let shared = shared.clone();
        let mut stopped = stopped.clone();
        let worker = std::thread::Builder::new()
            .name(format!("dea-files-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!("directory server worker: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        tracing::error!("directory server worker could not adopt its socket");
                        return;
                    };
                    let server = super::conn::accept_loop(listener, shared, app, stopped.clone());
                    tokio::select! {
                        () = server => {}
                        // Leaving block_on drops the runtime and every connection with it.
                        _ = stopped.wait_for(|s| *s == Stop::Abort) => {}
                    }
                });
            })?;
        workers.push(worker);
    }
    tracing::info!(%local_addr, workers = count, "directory server listening");
    Ok(DirectoryServer {
        local_addr,
        stop,
        workers,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Instance,
    StagingTask,
}

async fn instance_file(
    State(shared): State<Arc<Shared>>,
    Path(instance_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    handle(&shared, Kind::Instance, &instance_id, query, &headers).await
}

async fn staging_file(
    State(shared): State<Arc<Shared>>,
    Path(task_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    handle(&shared, Kind::StagingTask, &task_id, query, &headers).await
}

/// The query parameters, form-decoded (`+` is a space), the last of a repeated key winning as
/// in Rack. Values borrow from the query unless they had to be decoded.
#[derive(Default)]
pub(crate) struct Params<'q> {
    hmac: Option<Cow<'q, [u8]>>,
    path: Option<Cow<'q, [u8]>>,
    timestamp: Option<Cow<'q, [u8]>>,
    pub(crate) tail: bool,
    tail_offset: Option<Cow<'q, [u8]>>,
}

impl<'q> Params<'q> {
    pub(crate) fn parse(query: &'q str) -> Params<'q> {
        let mut params = Params::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = form_decode_cow(value);
            match form_decode_cow(key).as_ref() {
                b"hmac" => params.hmac = Some(value),
                b"path" => params.path = Some(value),
                b"timestamp" => params.timestamp = Some(value),
                b"tail" => params.tail = true,
                b"tail_offset" => params.tail_offset = Some(value),
                _ => {}
            }
        }
        params
    }
}

/// Why a request gets no file: each variant is one of the DEA's answers
/// ([`Refusal::into_response`]), decided by [`check`] in the DEA's order.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Required parameters missing (Grape's message, e.g. `hmac is missing, path is missing`).
    Missing(String),
    InvalidTimestamp,
    InvalidHmac,
    Expired,
    Unknown(Kind),
    Unavailable(Kind),
    NotAccessible,
    NotFound,
    Io(std::io::Error),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Missing(message) => json_error(StatusCode::BAD_REQUEST, &message),
            Refusal::InvalidTimestamp => {
                json_error(StatusCode::BAD_REQUEST, "timestamp is invalid")
            }
            Refusal::InvalidHmac => json_error(StatusCode::UNAUTHORIZED, "Invalid HMAC"),
            Refusal::Expired => json_error(StatusCode::BAD_REQUEST, "Url expired"),
            Refusal::Unknown(Kind::Instance) => {
                json_error(StatusCode::NOT_FOUND, "Unknown instance")
            }
            Refusal::Unknown(Kind::StagingTask) => {
                json_error(StatusCode::NOT_FOUND, "Unknown staging task")
            }
            Refusal::Unavailable(Kind::Instance) => {
                json_error(StatusCode::SERVICE_UNAVAILABLE, "Instance unavailable")
            }
            Refusal::Unavailable(Kind::StagingTask) => {
                json_error(StatusCode::SERVICE_UNAVAILABLE, "Staging task unavailable")
            }
            Refusal::NotAccessible => json_error(StatusCode::FORBIDDEN, "Not accessible"),
            // The Go server's answer; the Ruby file API alone said 404 `{"error":"Entity not
            // found"}`, but clients only ever saw the Go server's 400.
            Refusal::NotFound => entity_not_found(),
            Refusal::Io(e) => server_error(&e.to_string()),
        }
    }
}

/// The DEA file API's checks, in its order: parameters, timestamp shape, HMAC, expiry, the
/// instance or task, then the path, opened beneath the root. The fast path and the axum
/// handlers both run exactly this, so they refuse and serve the same requests.
///
/// Opening, fstat and reading a small file run on the async worker: they hit the page cache
/// in practice, and a hop to the blocking pool costs more than the work itself (it halved
/// throughput in bench/files.sh).
pub(crate) fn check(
    shared: &Shared,
    kind: Kind,
    id: &str,
    params: &Params<'_>,
) -> Result<Opened, Refusal> {
    // Grape's parameter validation came before the handler: all three are required and the
    // timestamp is an integer.
    let (Some(hmac), Some(path), Some(timestamp)) = (&params.hmac, &params.path, &params.timestamp)
    else {
        let missing: Vec<String> = [
            ("hmac", params.hmac.is_none()),
            ("timestamp", params.timestamp.is_none()),
            ("path", params.path.is_none()),
        ]
        .iter()
        .filter(|(_, missing)| *missing)
        .map(|(name, _)| format!("{name} is missing"))
        .collect();
        return Err(Refusal::Missing(missing.join(", ")));
    };
    let Some(timestamp_value) = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return Err(Refusal::InvalidTimestamp);
    };

    let url_path = match kind {
        Kind::Instance => instance_url_path(id),
        Kind::StagingTask => staging_url_path(id),
    };
    if !shared.signer.verify_bytes(&url_path, path, timestamp, hmac) {
        tracing::debug!(%url_path, "file request with an invalid HMAC");
        return Err(Refusal::InvalidHmac);
    }
    // Future timestamps are fine, as in the DEA.
    let age = i128::from(now()) - i128::from(timestamp_value);
    if age > i128::from(shared.settings.url_lifetime.as_secs()) {
        return Err(Refusal::Expired);
    }

    let (root, scope) = match kind {
        Kind::Instance => (shared.roots.instance(id), Scope::Instance),
        Kind::StagingTask => (shared.roots.staging_task(id), Scope::Staging),
    };
    let root = match root {
        FileRoot::Dir(root) => root,
        FileRoot::Unknown => return Err(Refusal::Unknown(kind)),
        FileRoot::Unavailable => return Err(Refusal::Unavailable(kind)),
    };
    open_under(&root, path, scope).map_err(|e| match e {
        ResolveError::NotAccessible => {
            tracing::debug!(
                %url_path,
                path = %String::from_utf8_lossy(path),
                "file request refused: not accessible"
            );
            Refusal::NotAccessible
        }
        ResolveError::NotFound => Refusal::NotFound,
        ResolveError::Io(e) => Refusal::Io(e),
    })
}

async fn handle(
    shared: &Shared,
    kind: Kind,
    id: &str,
    query: Option<String>,
    request: &HeaderMap,
) -> Response {
    let params = Params::parse(query.as_deref().unwrap_or(""));
    let opened = match check(shared, kind, id, &params) {
        Ok(opened) => opened,
        Err(refusal) => return refusal.into_response(),
    };
    // What can take long — listing a directory, streaming a large file — goes to the
    // blocking pool.
    if opened.metadata.is_dir() {
        let listing = tokio::task::spawn_blocking(move || super::listing::list(&opened.file)).await;
        return match listing {
            Ok(Ok(text)) => (
                [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
                text,
            )
                .into_response(),
            Ok(Err(e)) => server_error(&e.to_string()),
            Err(e) => server_error(&e.to_string()),
        };
    }
    if params.tail {
        return tail_response(shared, opened, params.tail_offset.as_deref());
    }
    let Opened {
        file,
        metadata,
        host_path,
    } = opened;
    match FileContent::load(file, &metadata) {
        Ok(content) => content.respond(&host_path, request).await,
        Err(e) => server_error(&e.to_string()),
    }
}

/// `tail`: a chunked stream from `tail_offset` (default: the end) as the file grows.
fn tail_response(shared: &Shared, opened: Opened, offset: Option<&[u8]>) -> Response {
    let size = opened.metadata.len();
    let start = match offset {
        None | Some(b"") => size,
        Some(offset) => match parse_offset(offset) {
            Some(offset) => offset,
            None => return server_error("Tail offset must be a positive integer."),
        },
    };
    let tail = Tail::new(
        opened.file,
        opened.host_path,
        start,
        size,
        shared.settings.streaming_timeout,
        shared.settings.tail_poll_interval,
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        tail.into_body(),
    )
        .into_response()
}

/// A non-negative integer, digits only.
fn parse_offset(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The DEA file API's error shape: `{"error":"…"}`.
fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// The Go server's answer when the path does not exist.
fn entity_not_found() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (
                header::HeaderName::from_static("x-cascade"),
                HeaderValue::from_static("pass"),
            ),
        ],
        "Entity not found.\n",
    )
        .into_response()
}
