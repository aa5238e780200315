//! Serving one regular file the way Go's `http.ServeContent` does for the DEA's directory
//! server (reference dea_ng.md §5.5): `Last-Modified` and `If-Modified-Since`, a single byte
//! range, a content type from the extension.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::io::SeekFrom;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Files up to this size are read in the same blocking call that opens them and sent from
/// memory: one hop to the blocking pool per request instead of one per read. Larger files are
/// streamed and never held in memory whole.
pub(crate) const SMALL_FILE: u64 = 64 * 1024;

/// Read size for streamed files.
const CHUNK: usize = 64 * 1024;

/// What is known about a file before its response is built.
pub(crate) struct FileContent {
    pub body: Source,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

pub(crate) enum Source {
    /// The whole file, read already.
    Memory(Bytes),
    /// The open file, to stream from.
    File(std::fs::File),
}

impl FileContent {
    /// Reads small files into memory; keeps large ones open for streaming.
    pub(crate) fn load(file: std::fs::File, metadata: &std::fs::Metadata) -> std::io::Result<Self> {
        use std::io::Read;
        let size = metadata.len();
        let modified = metadata.modified().ok();
        if size > SMALL_FILE {
            return Ok(FileContent {
                body: Source::File(file),
                size,
                modified,
            });
        }
        // `size` bytes at most: the file may be growing, and its length was taken from fstat.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(size).read_to_end(&mut bytes)?;
        let size = bytes.len() as u64;
        Ok(FileContent {
            body: Source::Memory(Bytes::from(bytes)),
            size,
            modified,
        })
    }

    /// The response to a GET (or HEAD) with `request` headers.
    pub(crate) async fn respond(self, path: &Path, request: &HeaderMap) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(path)),
        );
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        // App files are served from the directory server's own origin; never let a browser
        // guess a more dangerous type than the extension gives.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Some((time, secs)) = last_modified(self.modified) {
            if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(time)) {
                headers.insert(header::LAST_MODIFIED, value);
            }
            if not_modified_since(request, secs) {
                return (StatusCode::NOT_MODIFIED, headers).into_response();
            }
        }

        let (status, start, length) = match requested_range(request, self.size) {
            Range::Full => (StatusCode::OK, 0, self.size),
            Range::Partial { start, end } => {
                let value = format!("bytes {start}-{end}/{}", self.size);
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            Range::Unsatisfiable => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", self.size)) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
                return (StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response();
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        let body = match self.body {
            Source::Memory(bytes) => {
                // start + length <= size == bytes.len(), checked by `requested_range`.
                let start = usize::try_from(start).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(length).unwrap_or(0));
                Body::from(bytes.slice(start.min(bytes.len())..end.min(bytes.len())))
            }
            Source::File(file) => {
                let mut file = tokio::fs::File::from_std(file);
                if let Err(e) = file.seek(SeekFrom::Start(start)).await {
                    return server_error(&e.to_string());
                }
                let reader = file.take(length);
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, CHUNK))
            }
        };
        (status, headers, body).into_response()
    }
}

fn unix_secs(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The modification time to send as `Last-Modified`, with its second; none at or before the
/// epoch, which Go ignores.
pub(crate) fn last_modified(modified: Option<SystemTime>) -> Option<(SystemTime, u64)> {
    modified
        .and_then(|time| Some((time, unix_secs(time)?)))
        .filter(|&(_, secs)| secs > 0)
}

/// `If-Modified-Since` at or after the file's modification second, and no `If-None-Match`
/// (which would take precedence; this server sends no ETags).
fn not_modified_since(request: &HeaderMap, modified_secs: u64) -> bool {
    not_modified(
        request
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok()),
        request.contains_key(header::IF_NONE_MATCH),
        modified_secs,
    )
}

/// [`not_modified_since`] from the values themselves: the first `If-Modified-Since` (if it is
/// visible ASCII) and whether any `If-None-Match` came.
pub(crate) fn not_modified(
    if_modified_since: Option<&str>,
    if_none_match: bool,
    modified_secs: u64,
) -> bool {
    if if_none_match {
        return false;
    }
    if_modified_since
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(unix_secs)
        .is_some_and(|since| modified_secs <= since)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Range {
    Full,
    /// Inclusive byte positions.
    Partial {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// The one range a `Range: bytes=…` header asks for. Other units and several ranges are
/// answered with the whole file, which HTTP allows (Go would send multipart/byteranges; no DEA
/// client asks for several). A malformed or unsatisfiable `bytes` range is a 416, as in Go.
///
/// The range itself is parsed and clamped to the file by `http-range-header` (RFC 9110
/// §14.1.2: a suffix or last position past the end selects up to the last byte). It is
/// stricter than Go where RFC 9110 is (whitespace inside a range, `bytes=0 - 9`, is malformed
/// here) and more lenient where it is (a position beyond u64, only digits, is past the end).
fn requested_range(request: &HeaderMap, size: u64) -> Range {
    range_of(
        request.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    )
}

/// [`requested_range`] from the first `Range` value itself (if it is visible ASCII).
pub(crate) fn range_of(value: Option<&str>, size: u64) -> Range {
    let Some(value) = value.map(str::trim) else {
        return Range::Full;
    };
    // The crate takes the unit in any case; Go and this server answer only `bytes=`, and
    // anything else with the whole file.
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    // An empty file has no byte to point at; the crate would answer a suffix range there
    // with no range at all.
    if size == 0 {
        return Range::Unsatisfiable;
    }
    let ranges = http_range_header::parse_range_header(value).and_then(|r| r.validate(size));
    match ranges.as_deref() {
        Ok([range]) => Range::Partial {
            start: *range.start(),
            end: *range.end(),
        },
        _ => Range::Unsatisfiable,
    }
}

/// The content type for a file name: text for logs and other plain text the DEA's users read,
/// a few common web types, else bytes.
pub(crate) fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some(
            "log" | "txt" | "text" | "out" | "err" | "yml" | "yaml" | "md" | "sh" | "conf" | "cfg"
            | "ini" | "properties" | "rb" | "py" | "java" | "go" | "rs" | "c" | "h" | "toml"
            | "csv",
        ) => "text/plain; charset=utf-8",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "text/xml; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz" | "tgz") => "application/gzip",
        Some("tar") => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// The Go server's 500: `Can't serve request due to error: …`, no newline.
pub(crate) fn server_error(message: &str) -> Response {
    tracing::warn!("file request failed: {message}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        format!("Can't serve request due to error: {message}"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Range {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).expect("header"));
        requested_range(&headers, size)
    }

    #[test]
    fn single_byte_ranges() {
        assert_eq!(range("bytes=0-9", 100), Range::Partial { start: 0, end: 9 });
        assert_eq!(
            range("bytes=90-", 100),
            Range::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            range("bytes=-10", 100),
            Range::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            range("bytes=-1000", 100),
            Range::Partial { start: 0, end: 99 }
        );
        assert_eq!(
            range("bytes=50-1000", 100),
            Range::Partial { start: 50, end: 99 }
        );
        assert_eq!(range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=9-5", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=x-1", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=+1-2", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=0-0", 0), Range::Unsatisfiable);
        assert_eq!(range("bytes=-1", 0), Range::Unsatisfiable);
        assert_eq!(range("bytes=", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=5", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=1-2-3", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=0 - 9", 100), Range::Unsatisfiable);
        assert_eq!(
            range("bytes= 0-9", 100),
            Range::Partial { start: 0, end: 9 }
        );
        assert_eq!(range("bytes=007-", 10), Range::Partial { start: 7, end: 9 });
        assert_eq!(range("Bytes=0-1", 100), Range::Full);
        // A last position too big for u64 is still past the end (Go's parser refuses it).
        assert_eq!(
            range("bytes=0-99999999999999999999", 100),
            Range::Partial { start: 0, end: 99 }
        );
        assert_eq!(range("bytes=0-1,5-6", 100), Range::Full);
        assert_eq!(range("items=0-1", 100), Range::Full);
        assert_eq!(requested_range(&HeaderMap::new(), 100), Range::Full);
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type(Path::new("logs/staging_task.log")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a/README.TXT")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("droplet")),
            "application/octet-stream"
        );
        assert_eq!(content_type(Path::new("x.json")), "application/json");
    }
}
