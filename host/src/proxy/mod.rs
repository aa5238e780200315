//! The fetch proxy: how unmodified classic buildpacks download through the fetch service.
//!
//! Inside a classic buildpack's container `http_proxy`/`https_proxy` point at a listener the
//! host bound in the container's own network namespace (see [`crate::netns`]). Plain HTTP
//! requests arrive with absolute URLs; HTTPS arrives as `CONNECT host:port`, which the proxy
//! answers by terminating TLS with a certificate for that host from its own CA (trusted only
//! inside the container), reading the request, and treating it as `https://host/path`. Either
//! way the URL goes through [`FetchService`]: mirror rewrite, allowlist, cache, logging. Only
//! GET and HEAD are served; nothing is ever forwarded as-is.
//!
//! What arrives here is shaped by an untrusted buildpack: the URL built from CONNECT plus the
//! origin-form path is a string like any other and is parsed and normalised by the fetch
//! service before a rule sees it; a CONNECT host must be a DNS name or an IP literal before a
//! certificate is issued for it; and one proxy serves at most [`MAX_CONNECTIONS`] connections
//! (intercepted TLS tunnels included) at a time, the rest waiting in the listen backlog.

pub mod ca;

use crate::fetch::{FetchError, FetchGrant, FetchService};
use crate::phase::StagingLog;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use ca::CertificateAuthority;

type Body = BoxBody<Bytes, std::io::Error>;

/// Connections one proxy serves at once; further ones wait until one closes.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection's share of [`MAX_CONNECTIONS`], held until the connection and any TLS tunnel
/// it was upgraded to are done.
type Permit = Arc<OwnedSemaphorePermit>;

/// What one container's proxy serves on behalf of.
#[derive(Clone)]
pub struct ProxyContext {
    pub fetch: Arc<FetchService>,
    pub ca: Arc<CertificateAuthority>,
    pub grant: FetchGrant,
    pub log: StagingLog,
}

/// Serves proxy connections on `listener` until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, ctx: ProxyContext) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting, so the kernel's backlog holds the excess.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let permit: Permit = Arc::new(permit);
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("fetch proxy accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let permit = permit.clone();
                async move { Ok::<_, Infallible>(handle(req, ctx, None, permit).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// One request: a CONNECT to intercept, or a GET for a URL.
async fn handle(
    req: Request<Incoming>,
    ctx: ProxyContext,
    tls_host: Option<String>,
    permit: Permit,
) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect(req, ctx, permit);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("dea fetch proxy: only GET and HEAD, not {}", req.method()),
        );
    }
    let url = match &tls_host {
        // Inside an intercepted TLS connection the request line is origin-form.
        Some(authority) => {
            let host = authority.strip_suffix(":443").unwrap_or(authority);
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            format!("https://{host}{path}")
        }
        None if req.uri().scheme().is_some() => req.uri().to_string(),
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                "dea fetch proxy: expected an absolute URL".into(),
            );
        }
    };
    let head_only = req.method() == Method::HEAD;
    match ctx.fetch.fetch(&url, None, &ctx.grant).await {
        Ok(fetched) => {
            ctx.log.detail(&fetched.log_line(&url));
            let body: Body = if head_only {
                Empty::new().map_err(|never| match never {}).boxed()
            } else {
                match tokio::fs::File::open(&fetched.blob).await {
                    Ok(file) => {
                        let stream = tokio_util::io::ReaderStream::new(file);
                        let frames =
                            futures_util::StreamExt::map(stream, |chunk| chunk.map(Frame::data));
                        BodyExt::boxed(StreamBody::new(frames))
                    }
                    Err(e) => {
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("dea fetch proxy: cached copy of {url}: {e}"),
                        );
                    }
                }
            };
            let mut response = Response::new(body);
            if let Ok(len) = fetched.size.to_string().parse() {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, len);
            }
            response
        }
        Err(error) => {
            ctx.log.warning(&format!("fetch failed: {error}"));
            let status = match &error {
                FetchError::NotDeclared { .. }
                | FetchError::Denied { .. }
                | FetchError::Offline { .. }
                | FetchError::Unpinned { .. } => StatusCode::FORBIDDEN,
                FetchError::Status { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                FetchError::BadUrl { .. } => StatusCode::BAD_REQUEST,
                FetchError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_GATEWAY,
            };
            text(status, format!("dea fetch proxy: {error}"))
        }
    }
}

/// Answers CONNECT, then terminates TLS as the requested host and serves what comes in.
fn connect(req: Request<Incoming>, ctx: ProxyContext, permit: Permit) -> Response<Body> {
    let Some(authority) = req.uri().authority().map(|a| a.to_string()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "dea fetch proxy: CONNECT without host".into(),
        );
    };
    let host = req.uri().host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    // The name becomes a certificate and then part of a URL: only a DNS name or an IP
    // literal (no `user@`), checked before anything is issued.
    if authority.contains('@') || !crate::fetch::url_rules::valid_host(&host) {
        let shown = crate::fetch::url_rules::sanitize(&authority);
        ctx.log.warning(&format!(
            "fetch proxy: refused CONNECT to {shown}: not a valid host"
        ));
        return text(
            StatusCode::BAD_REQUEST,
            format!("dea fetch proxy: CONNECT {shown}: not a DNS name or IP address"),
        );
    }
    let config = match ctx.ca.server_config(&host) {
        Ok(config) => config,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("dea fetch proxy: {e}")),
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!("proxy upgrade failed: {e}");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match acceptor.accept(TokioIo::new(upgraded)).await {
            Ok(tls) => tls,
            Err(e) => {
                ctx.log.warning(&format!(
                    "TLS with the fetch proxy failed for {authority}: {e}"
                ));
                return;
            }
        };
        let service = hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            let authority = authority.clone();
            let permit = permit.clone();
            async move { Ok::<_, Infallible>(handle(req, ctx, Some(authority), permit).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
    });
    Response::new(Empty::new().map_err(|never| match never {}).boxed())
}
