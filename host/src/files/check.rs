//! What every request to the directory server goes through, whichever way it is answered
//! (the axum routes or the fast path): the shared key, roots and settings, the query's
//! parameters, and the DEA's checks in their order, each refusal typed with its answer.

use super::content::server_error;
use super::resolve::{Opened, ResolveError, Scope, open_under};
use super::signing::{form_decode_cow, instance_url_path, now, staging_url_path};
use super::{DirectoryServerConfig, FileRoot, FileRoots, UrlSigner};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;
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
    /// How long a client may take to send a request head (or stay idle between requests).
    pub header_timeout: Duration,
    /// How long an answer may make no progress because the client does not read.
    pub send_timeout: Duration,
    /// Connections served at once, all workers together.
    pub max_connections: usize,
}

impl ServerSettings {
    pub fn from_config(config: &DirectoryServerConfig) -> ServerSettings {
        ServerSettings {
            url_lifetime: config.url_lifetime(),
            streaming_timeout: config.streaming_timeout(),
            tail_poll_interval: Duration::from_millis(50),
            header_timeout: config.header_timeout(),
            send_timeout: config.send_timeout(),
            max_connections: config.max_connections(),
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
    pub(super) signer: Arc<UrlSigner>,
    pub(super) roots: Arc<dyn FileRoots>,
    pub(super) settings: ServerSettings,
    /// One permit per connection being served, all workers together.
    pub(super) connections: Arc<tokio::sync::Semaphore>,
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
            connections: Arc::new(tokio::sync::Semaphore::new(settings.max_connections)),
            settings,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Running,
    Graceful,
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Instance,
    StagingTask,
}

/// The query parameters, form-decoded (`+` is a space), the last of a repeated key winning as
/// in Rack. Values borrow from the query unless they had to be decoded.
#[derive(Default)]
pub(crate) struct Params<'q> {
    hmac: Option<Cow<'q, [u8]>>,
    path: Option<Cow<'q, [u8]>>,
    timestamp: Option<Cow<'q, [u8]>>,
    pub(crate) tail: bool,
    pub(super) tail_offset: Option<Cow<'q, [u8]>>,
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

/// The DEA file API's error shape: `{"error":"…"}`.
pub(super) fn json_error(status: StatusCode, message: &str) -> Response {
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
pub(super) fn entity_not_found() -> Response {
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
