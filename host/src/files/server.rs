//! The HTTP side: routes, the DEA file API's checks in its order (reference dea_ng.md §5.4),
//! then the Go server's serving (§5.5), in one axum server.

use super::check::{Kind, Params, ServerSettings, Shared, Stop, check};
use super::content::{FileContent, server_error};
use super::resolve::Opened;
use super::tail::Tail;
use super::{DirectoryServerConfig, FileRoots, FilesError, UrlSigner};
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
