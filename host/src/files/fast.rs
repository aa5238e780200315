//! The fast path: plain `GET`s of a file, answered without hyper, large bodies by `sendfile(2)`.
//!
//! Why it exists: hyper cannot hand a file to the kernel, so a large body went from the page
//! cache into user space and back out, 64 KiB at a time through the blocking pool (twice the
//! CPU of nginx per 1 MiB request); and for small files hyper's and axum's per-request work
//! (header maps, routing, extractors, a response built as a `HeaderMap`) was a fifth of the
//! CPU a request costs. Here a request is parsed in place by `httparse` (hyper's own parser),
//! checked by [`check`] (the very function the axum handlers run), and answered with one
//! write, or a head sent with `MSG_MORE` and the body by `sendfile` from the checked
//! descriptor.
//!
//! What it takes, and nothing else: an HTTP/1.1 `GET` in origin form for one of the two
//! routes with an id of `[A-Za-z0-9_-]` and a query of plain URI characters, without a body
//! (no `Transfer-Encoding`, no `Content-Length`), `Expect` or `Upgrade`, with at most one
//! `Connection` that is `keep-alive` or `close`, whose checks end in a regular file to be
//! answered 200 or 206. At the first request that
//! is anything else — a refusal, a listing, `tail`, a 304 or 416, `HEAD`, HTTP/1.0, whatever
//! httparse refuses — the connection goes, with every byte read so far, to hyper and the axum
//! routes for good (`conn.rs`), which answer that request from scratch. So every answer but a
//! file's 200 and 206 is still hyper's, and those two are written here as hyper writes them
//! (`tests/integration/files.rs` compares the bytes of both).

use super::check::{Kind, Params, Shared, Stop, check};
use super::content::{self, Range, content_type};
use rustix::net::SendFlags;
use std::fs::File;
use std::io;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// The longest request head read here; a longer one is hyper's (it takes up to ~400 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// How much is read from the socket at a time.
const READ_SIZE: usize = 4096;
/// Header slots for httparse; a request with more is hyper's (it takes 100).
const MAX_HEADERS: usize = 32;
/// Bodies longer than this go by `sendfile`; shorter ones are read behind the head and sent
/// with it in one write, which costs fewer syscalls than a head and a `sendfile`.
pub(crate) const SENDFILE_MIN: u64 = 16 * 1024;
/// The most one `sendfile` call sends. The socket's free space bounds it anyway; this also
/// bounds how long a read of a file not in the page cache can hold this worker's thread.
const SENDFILE_CHUNK: usize = 256 * 1024;

/// How the fast path left a connection.
pub(crate) enum End {
    /// Finished: the client closed it, a write failed, or the server is stopping.
    Closed,
    /// A request the fast path does not take: hyper gets the connection, these bytes first.
    HandOver(Vec<u8>),
}

/// Serves requests on `stream` until it closes, the server stops, or a request is hyper's.
pub(crate) async fn serve(
    stream: &mut TcpStream,
    shared: &Shared,
    stopped: &mut watch::Receiver<Stop>,
) -> End {
    let mut input: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let settings = &shared.settings;
    // The whole head must be here by then: counted from when the connection opened or the
    // last answer went, so a client that trickles bytes cannot push it back.
    let mut head_deadline = Instant::now() + settings.header_timeout;
    loop {
        // Pipelined requests are already here: answer them before reading again.
        if !input.is_empty() {
            match next_request(shared, &input) {
                Next::Partial => {}
                Next::HandOver => return End::HandOver(input),
                Next::Reply(reply, consumed) => {
                    input.drain(..consumed);
                    let close = reply.closes();
                    if let Err(e) = reply.send(stream, settings.send_timeout).await {
                        tracing::debug!("directory server connection ended: {e}");
                        return End::Closed;
                    }
                    if close {
                        // As hyper: the answer said `connection: close`; what else the
                        // client sent is not answered.
                        let _ = stream.shutdown().await;
                        return End::Closed;
                    }
                    head_deadline = Instant::now() + settings.header_timeout;
                    continue;
                }
            }
        }
        if input.len() >= MAX_HEAD {
            return End::HandOver(input);
        }
        input.reserve(READ_SIZE);
        // Stopping closes a connection only between requests, as hyper's graceful shutdown.
        let idle = input.is_empty();
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut input) => read,
            _ = stopped.wait_for(|s| *s != Stop::Running), if idle => return End::Closed,
            () = tokio::time::sleep_until(head_deadline) => {
                tracing::debug!(idle, "directory server: no complete request head in time");
                return End::Closed;
            }
        };
        match read {
            Ok(0) if input.is_empty() => return End::Closed,
            // A head cut short: hyper says what it says about those.
            Ok(0) => return End::HandOver(input),
            Ok(_) => {}
            Err(_) => return End::Closed,
        }
    }
}

enum Next {
    /// The head is not complete yet.
    Partial,
    HandOver,
    /// The answer, and how many input bytes the request took.
    Reply(Reply, usize),
}

fn next_request(shared: &Shared, input: &[u8]) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(input) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) => return Next::Partial,
        Err(_) => return Next::HandOver,
    };
    match FileRequest::from_head(&request).and_then(|asked| asked.reply(shared)) {
        Some(reply) => Next::Reply(reply, consumed),
        None => Next::HandOver,
    }
}

/// A request head the fast path takes, with the headers that shape the answer.
#[derive(Debug, PartialEq, Eq)]
struct FileRequest<'a> {
    kind: Kind,
    id: &'a str,
    query: &'a str,
    /// The first `Range` (`Some(None)` when it is not visible ASCII, which hyper's `to_str`
    /// refuses and the axum handler then ignores).
    range: Option<Option<&'a str>>,
    if_modified_since: Option<Option<&'a str>>,
    if_none_match: bool,
    /// `Connection: close`: the answer says so and the connection ends after it.
    close: bool,
}

impl<'a> FileRequest<'a> {
    fn from_head(request: &httparse::Request<'_, 'a>) -> Option<FileRequest<'a>> {
        if request.method != Some("GET") || request.version != Some(1) {
            return None;
        }
        let (path, query) = request.path?.split_once('?')?;
        if !query.bytes().all(is_query_byte) {
            return None;
        }
        let (kind, id) = route(path)?;
        let mut asked = FileRequest {
            kind,
            id,
            query,
            range: None,
            if_modified_since: None,
            if_none_match: false,
            close: false,
        };
        let mut connection_headers = 0;
        for header in request.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("range") {
                asked.range.get_or_insert(visible_ascii(header.value));
            } else if name.eq_ignore_ascii_case("if-modified-since") {
                asked
                    .if_modified_since
                    .get_or_insert(visible_ascii(header.value));
            } else if name.eq_ignore_ascii_case("if-none-match") {
                asked.if_none_match = true;
            } else if name.eq_ignore_ascii_case("connection") {
                // One token, as clients send it; lists and repeats are hyper's to read.
                connection_headers += 1;
                let value = visible_ascii(header.value).map(str::trim);
                match value {
                    Some(v) if v.eq_ignore_ascii_case("close") => asked.close = true,
                    Some(v) if v.eq_ignore_ascii_case("keep-alive") => {}
                    _ => return None,
                }
                if connection_headers > 1 {
                    return None;
                }
            } else if ["content-length", "transfer-encoding", "expect", "upgrade"]
                .iter()
                .any(|hyper_s| name.eq_ignore_ascii_case(hyper_s))
            {
                // A body to read, a connection to close or to upgrade: hyper's business.
                return None;
            }
        }
        Some(asked)
    }

    /// Runs the checks and prepares the answer; `None` for anything that is not a regular
    /// file's 200 or 206 (hyper then answers it).
    fn reply(&self, shared: &Shared) -> Option<Reply> {
        let params = Params::parse(self.query);
        if params.tail {
            return None;
        }
        let opened = check(shared, self.kind, self.id, &params).ok()?;
        if !opened.metadata.is_file() {
            return None;
        }
        let size = opened.metadata.len();
        let modified = content::last_modified(opened.metadata.modified().ok());
        if let Some((_, secs)) = modified
            && content::not_modified(self.if_modified_since.flatten(), self.if_none_match, secs)
        {
            return None;
        }
        let range = content::range_of(self.range.flatten(), size);
        let (start, length) = match range {
            Range::Full => (0, size),
            Range::Partial { start, end } => (start, end - start + 1),
            Range::Unsatisfiable => return None,
        };

        let small = length <= SENDFILE_MIN;
        let body_capacity = if small { length } else { 0 };
        let mut out = Vec::with_capacity(256 + usize::try_from(body_capacity).ok()?);
        // The order and spelling of `content::FileContent::respond` and hyper: status line,
        // the handler's headers in insertion order, `content-length`, then hyper's `date`.
        // (Writing to a Vec cannot fail.)
        out.extend_from_slice(match range {
            Range::Partial { .. } => b"HTTP/1.1 206 Partial Content\r\n",
            _ => b"HTTP/1.1 200 OK\r\n",
        });
        let _ = write!(
            out,
            "content-type: {}\r\naccept-ranges: bytes\r\nx-content-type-options: nosniff\r\n",
            content_type(&opened.host_path)
        );
        if let Some((time, _)) = modified {
            let _ = write!(out, "last-modified: {}\r\n", httpdate::HttpDate::from(time));
        }
        if let Range::Partial { start, end } = range {
            let _ = write!(out, "content-range: bytes {start}-{end}/{size}\r\n");
        }
        let _ = write!(out, "content-length: {length}\r\n");
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"date: ");
        push_date(&mut out);
        out.extend_from_slice(b"\r\n\r\n");

        if !small {
            return Some(Reply::Sendfile {
                head: out,
                file: opened.file,
                offset: start,
                length,
                close: self.close,
            });
        }
        // Exactly the promised bytes. A file that shrank since its fstat is answered by hyper
        // from scratch (as it would have been), which then sees its new size.
        let head_len = out.len();
        out.resize(head_len + usize::try_from(length).ok()?, 0);
        opened
            .file
            .read_exact_at(&mut out[head_len..], start)
            .ok()?;
        Some(Reply::Buffer {
            bytes: out,
            close: self.close,
        })
    }
}

/// `/instance_paths/<id>` or `/staging_tasks/<id>/file_path`, ids that need no decoding and
/// that axum's router would match the same way.
fn route(path: &str) -> Option<(Kind, &str)> {
    let (kind, id) = if let Some(id) = path.strip_prefix("/instance_paths/") {
        (Kind::Instance, id)
    } else {
        let rest = path.strip_prefix("/staging_tasks/")?;
        (Kind::StagingTask, rest.strip_suffix("/file_path")?)
    };
    let plain = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then_some((kind, id))
}

/// RFC 3986 query characters (unreserved, sub-delims, `:@/?`, and `%` for escapes): all that
/// hyper's URI parser also takes. Anything else is left to hyper.
fn is_query_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b)
}

/// What `HeaderValue::to_str` takes: visible ASCII and tabs.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Appends the HTTP date of now, formatted once a second per worker thread (as hyper does).
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached_secs, text)| {
        if *cached_secs != secs {
            *cached_secs = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// An answer ready to go.
enum Reply {
    /// Head and body, in one buffer.
    Buffer { bytes: Vec<u8>, close: bool },
    /// The head, then `length` bytes of `file` from `offset`.
    Sendfile {
        head: Vec<u8>,
        file: File,
        offset: u64,
        length: u64,
        close: bool,
    },
}

impl Reply {
    /// Whether the connection ends after this answer.
    fn closes(&self) -> bool {
        match self {
            Reply::Buffer { close, .. } | Reply::Sendfile { close, .. } => *close,
        }
    }

    /// Sends the answer; `stall` is how long any one wait for room in the socket may last.
    async fn send(self, stream: &mut TcpStream, stall: Duration) -> io::Result<()> {
        match self {
            Reply::Buffer { bytes, .. } => {
                send_all(stream, &bytes, SendFlags::empty(), stall).await
            }
            Reply::Sendfile {
                head,
                file,
                offset,
                length,
                ..
            } => {
                let stream: &TcpStream = stream;
                // MSG_MORE keeps the head back until the body's first bytes join it.
                send_all(stream, &head, SendFlags::MORE, stall).await?;
                let how = Transfer::Sendfile;
                send_body(stream, &file, offset, length, how, stall).await
            }
        }
    }
}

/// How a body goes from the file to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// By the kernel, page cache to socket.
    Sendfile,
    /// Read here and written back: for a file system that cannot `sendfile`.
    ReadWrite,
}

/// Writes all of `bytes`, waiting for room in the socket at most `stall` each time.
async fn send_all(
    stream: &TcpStream,
    bytes: &[u8],
    flags: SendFlags,
    stall: Duration,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let write = stream.async_io(Interest::WRITABLE, || {
            rustix::net::send(stream, &bytes[sent..], flags).map_err(io::Error::from)
        });
        sent += within(stall, write).await?;
    }
    Ok(())
}

/// `io`, or a `TimedOut` error once it has waited `stall`: a client that stops reading
/// holds its connection (and a file descriptor) that long, not for ever.
async fn within<T>(stall: Duration, io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(stall, io).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for send_timeout",
        )),
    }
}

/// Sends exactly `length` bytes of `file` from `offset`, or fails: never more, whatever the
/// file does meanwhile, and an error when it shrank below that (the connection must then end,
/// as the response cannot be completed).
async fn send_body(
    stream: &TcpStream,
    file: &File,
    mut offset: u64,
    length: u64,
    mut how: Transfer,
    stall: Duration,
) -> io::Result<()> {
    let mut left = length;
    let mut buffer = Vec::new();
    while left > 0 {
        let chunk = usize::try_from(left).map_or(SENDFILE_CHUNK, |l| l.min(SENDFILE_CHUNK));
        let sent = match how {
            // `count` caps what is sent at the length promised, however the file grows.
            Transfer::Sendfile => {
                let write = stream.async_io(Interest::WRITABLE, || {
                    rustix::fs::sendfile(stream, file, Some(&mut offset), chunk)
                        .map_err(io::Error::from)
                });
                let sent = within(stall, write).await;
                match sent {
                    Ok(sent) => sent,
                    // Nothing was sent by the failed call; the rest goes the slow way.
                    Err(e) if unsupported(&e) => {
                        tracing::debug!("sendfile unsupported here ({e}); copying instead");
                        how = Transfer::ReadWrite;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            Transfer::ReadWrite => {
                buffer.resize(chunk.min(COPY_CHUNK), 0);
                let read = file.read_at(&mut buffer, offset)?;
                send_all(stream, &buffer[..read], SendFlags::empty(), stall).await?;
                offset += read as u64;
                read
            }
        };
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being sent",
            ));
        }
        left -= sent as u64;
        // Other connections of this worker get their turn between chunks.
        tokio::task::consume_budget().await;
    }
    Ok(())
}

/// Read size when a body cannot go by `sendfile`.
const COPY_CHUNK: usize = 64 * 1024;

/// `sendfile` refused for this file or socket, not failed: copying will do.
fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|code| {
        matches!(
            rustix::io::Errno::from_raw_os_error(code),
            rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `FileRequest::from_head` made of a head, owned.
    #[derive(Debug, PartialEq, Eq)]
    struct Taken {
        kind: Kind,
        id: String,
        query: String,
        range: Option<Option<String>>,
        if_none_match: bool,
        close: bool,
    }

    fn head(text: &str) -> Option<Taken> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(matches!(
            request.parse(text.as_bytes()),
            Ok(httparse::Status::Complete(_))
        ));
        FileRequest::from_head(&request).map(|asked| Taken {
            kind: asked.kind,
            id: asked.id.to_string(),
            query: asked.query.to_string(),
            range: asked.range.map(|r| r.map(str::to_string)),
            if_none_match: asked.if_none_match,
            close: asked.close,
        })
    }

    #[test]
    fn takes_only_plain_gets_of_the_two_routes() {
        let taken = head("GET /instance_paths/a-b_1?path=x&hmac=y HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            taken,
            Some(Taken {
                kind: Kind::Instance,
                id: "a-b_1".into(),
                query: "path=x&hmac=y".into(),
                range: None,
                if_none_match: false,
                close: false,
            })
        );
        for (connection, close) in [("close", true), ("Keep-Alive", false), (" CLOSE ", true)] {
            let asked = head(&format!(
                "GET /instance_paths/a?p HTTP/1.1\r\nConnection: {connection}\r\n\r\n"
            ));
            assert_eq!(asked.map(|t| t.close), Some(close), "{connection}");
        }
        let staging = head("GET /staging_tasks/t1/file_path?path=%2Ftmp HTTP/1.1\r\n\r\n");
        assert_eq!(
            staging.map(|t| (t.kind, t.id)),
            Some((Kind::StagingTask, "t1".into()))
        );
        let ranged = head(
            "GET /instance_paths/a?p HTTP/1.1\r\nRange: bytes=1-2\r\nrange: bytes=3-4\r\nIf-None-Match: x\r\n\r\n",
        );
        assert_eq!(
            ranged.map(|t| (t.range, t.if_none_match)),
            Some((Some(Some("bytes=1-2".into())), true))
        );
        for hypers in [
            "HEAD /instance_paths/a?p HTTP/1.1\r\n\r\n",
            "POST /instance_paths/a?p HTTP/1.1\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.0\r\n\r\n",
            "GET /instance_paths/a HTTP/1.1\r\n\r\n",
            "GET http://h/instance_paths/a?p HTTP/1.1\r\n\r\n",
            "GET /instance_paths/a/?p HTTP/1.1\r\n\r\n",
            "GET /instance_paths/?p HTTP/1.1\r\n\r\n",
            "GET /instance_paths/..?p HTTP/1.1\r\n\r\n",
            "GET /instance_paths/a%62?p HTTP/1.1\r\n\r\n",
            "GET /instance_paths/a?p\"x HTTP/1.1\r\n\r\n",
            "GET /instance_paths/a?p{} HTTP/1.1\r\n\r\n",
            "GET /staging_tasks/t1/file_path/?p HTTP/1.1\r\n\r\n",
            "GET /staging_tasks/t1/other?p HTTP/1.1\r\n\r\n",
            "GET /other/a?p HTTP/1.1\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.1\r\nConnection: close, keep-alive\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.1\r\nConnection: Upgrade\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /instance_paths/a?p HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
        ] {
            assert_eq!(head(hypers), None, "{hypers}");
        }
    }

    struct OneHome(std::path::PathBuf);

    impl crate::files::FileRoots for OneHome {
        fn instance(&self, instance_id: &str) -> crate::files::FileRoot {
            match instance_id {
                "i" => crate::files::FileRoot::Dir(self.0.clone()),
                _ => crate::files::FileRoot::Unknown,
            }
        }
        fn staging_task(&self, _task_id: &str) -> crate::files::FileRoot {
            crate::files::FileRoot::Unknown
        }
    }

    fn get(signer: &crate::files::UrlSigner, path: &str, more: &str) -> Vec<u8> {
        let url = signer.instance_url("", "i", path);
        format!("GET {url} HTTP/1.1\r\nHost: h\r\n{more}\r\n").into_bytes()
    }

    #[test]
    fn answers_files_and_leaves_everything_else_to_hyper() {
        use crate::files::check::ServerSettings;
        use std::sync::Arc;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("small.txt"), "0123456789").expect("write");
        let big: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
        std::fs::write(dir.path().join("big.bin"), &big).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let signer = Arc::new(crate::files::UrlSigner::new("k"));
        let shared = Shared::new(
            signer.clone(),
            Arc::new(OneHome(dir.path().to_path_buf())),
            ServerSettings::default(),
        );

        let request = get(&signer, "small.txt", "Range: bytes=2-4\r\n");
        let Next::Reply(Reply::Buffer { bytes, .. }, consumed) = next_request(&shared, &request)
        else {
            panic!("a small file is answered from a buffer");
        };
        assert_eq!(consumed, request.len());
        let text = String::from_utf8(bytes).expect("text");
        assert!(
            text.starts_with(
                "HTTP/1.1 206 Partial Content\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 accept-ranges: bytes\r\nx-content-type-options: nosniff\r\nlast-modified: "
            ),
            "{text}"
        );
        assert!(
            text.contains("\r\ncontent-range: bytes 2-4/10\r\ncontent-length: 3\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n234"), "{text}");

        // Pipelined: the first request only is taken, the rest stays.
        let mut two = get(&signer, "big.bin", "");
        let first = two.len();
        two.extend_from_slice(&get(&signer, "small.txt", ""));
        match next_request(&shared, &two) {
            Next::Reply(
                Reply::Sendfile {
                    head,
                    offset: 0,
                    length: 40_000,
                    ..
                },
                consumed,
            ) => {
                assert_eq!(consumed, first);
                let head = String::from_utf8(head).expect("text");
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                assert!(head.contains("\r\ncontent-length: 40000\r\n"), "{head}");
            }
            _ => panic!("a large file is sent by sendfile"),
        }
        // What decides is the length of the body, not of the file.
        assert!(matches!(
            next_request(&shared, &get(&signer, "big.bin", "Range: bytes=-20000\r\n")),
            Next::Reply(
                Reply::Sendfile {
                    offset: 20_000,
                    length: 20_000,
                    ..
                },
                _
            )
        ));
        let Next::Reply(Reply::Buffer { bytes, .. }, _) =
            next_request(&shared, &get(&signer, "big.bin", "Range: bytes=-100\r\n"))
        else {
            panic!("a short range is answered from a buffer");
        };
        assert!(bytes.ends_with(&big[39_900..]));

        let request = get(&signer, "small.txt", "");
        assert!(matches!(
            next_request(&shared, &request[..request.len() - 2]),
            Next::Partial
        ));
        let mut head_request = get(&signer, "small.txt", "");
        head_request.splice(0..3, *b"HEAD");
        let bad_hmac = String::from_utf8(get(&signer, "small.txt", ""))
            .expect("text")
            .replacen("hmac=", "hmac=0", 1)
            .into_bytes();
        let mut tail = get(&signer, "small.txt", "");
        let at = tail.iter().position(|&b| b == b' ').expect("space") + 1;
        let at = at + tail[at..].iter().position(|&b| b == b' ').expect("space");
        tail.splice(at..at, *b"&tail");
        for (what, request) in [
            ("HEAD", head_request),
            ("a refusal", bad_hmac),
            ("tail", tail),
            ("a directory", get(&signer, "sub", "")),
            ("a missing file", get(&signer, "nope", "")),
            ("a 416", get(&signer, "small.txt", "Range: bytes=10-\r\n")),
            (
                "a 304",
                get(
                    &signer,
                    "small.txt",
                    "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n",
                ),
            ),
            ("garbage", b"GET / HTTP/1.1\r\n\x01\r\n\r\n".to_vec()),
        ] {
            assert!(
                matches!(next_request(&shared, &request), Next::HandOver),
                "{what}"
            );
        }
    }

    /// What `send_body` puts on a socket for `length` bytes of `file` from `offset`, and
    /// whether it succeeded.
    async fn sent(file: &File, offset: u64, length: u64, how: Transfer) -> (Vec<u8>, bool) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let reader = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.expect("connect");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            got
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let stall = Duration::from_secs(5);
        let ok = send_body(&stream, file, offset, length, how, stall)
            .await
            .is_ok();
        drop(stream);
        (reader.await.expect("reader"), ok)
    }

    #[tokio::test]
    async fn bodies_are_exactly_the_asked_bytes_by_either_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("body");
        let content: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let file = File::open(&path).expect("open");
        for how in [Transfer::Sendfile, Transfer::ReadWrite] {
            for (offset, length) in [(0, 600_000), (1, 300_000), (262_143, 70_000), (599_999, 1)] {
                let (got, ok) = sent(&file, offset, length, how).await;
                assert!(ok, "{how:?} {offset} {length}");
                let (start, end) = (offset as usize, (offset + length) as usize);
                assert!(got == content[start..end], "{how:?} {offset} {length}");
            }
            // Asked for more than there is: what there is, then an error.
            let (got, ok) = sent(&file, 500_000, 200_000, how).await;
            assert!(!ok, "{how:?}");
            assert!(got == content[500_000..], "{how:?}");
        }
    }

    #[test]
    fn header_values_that_are_not_visible_ascii_count_as_unreadable() {
        assert_eq!(visible_ascii(b"bytes=0-1"), Some("bytes=0-1"));
        assert_eq!(visible_ascii(b"a\tb"), Some("a\tb"));
        assert_eq!(visible_ascii("bytes=0-1é".as_bytes()), None);
        assert_eq!(visible_ascii(b"a\x7fb"), None);
    }

    #[test]
    fn dates_are_http_dates_of_now() {
        let mut out = Vec::new();
        push_date(&mut out);
        let text = String::from_utf8(out).expect("ascii");
        let date = httpdate::parse_http_date(&text).expect("an HTTP date");
        let age = SystemTime::now()
            .duration_since(date)
            .unwrap_or_default()
            .as_secs();
        assert!(age <= 1, "{text}");
    }
}
