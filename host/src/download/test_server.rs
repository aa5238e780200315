//! A tiny HTTP server on 127.0.0.1 for the unit tests of everything that downloads: each
//! request gets raw bytes chosen by its path and its number, so lengths, chunking, stalls and
//! failing-then-working servers are exactly what a test says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the server answers one request.
#[derive(Clone)]
pub(crate) enum Answer {
    /// These bytes, then the connection is closed.
    Raw(Vec<u8>),
    /// Headers announcing `length` bytes, then silence until the client gives up.
    Stall { length: u64 },
    /// A 200 with `bytes` sent one at a time, `every` apart, and no length.
    Trickle { bytes: Vec<u8>, every: Duration },
}

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub hits: Arc<AtomicUsize>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Serves until the test's runtime ends; `answer(path, n)` for the n-th request (from 0).
pub(crate) async fn serve(
    answer: impl Fn(&str, usize) -> Answer + Send + Sync + 'static,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or("/").to_string();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                match answer(&path, n) {
                    Answer::Raw(bytes) => {
                        let _ = socket.write_all(&bytes).await;
                    }
                    Answer::Stall { length } => {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
                        let _ = socket.write_all(head.as_bytes()).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Answer::Trickle { bytes, every } => {
                        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
                        let _ = socket.write_all(head.as_bytes()).await;
                        for byte in bytes {
                            tokio::time::sleep(every).await;
                            if socket.write_all(&[byte]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    TestServer { addr, hits }
}

/// A 200 with this body and its length.
pub(crate) fn ok(body: &[u8]) -> Answer {
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    Answer::Raw(bytes)
}

/// An empty answer with this status line and extra header lines (each ending in CRLF).
pub(crate) fn status(line: &str, headers: &str) -> Answer {
    Answer::Raw(format!("HTTP/1.1 {line}\r\n{headers}Content-Length: 0\r\n\r\n").into_bytes())
}

/// A chunked 200 without Content-Length: only counting the bytes can catch its size.
pub(crate) fn chunked(body: &[u8]) -> Answer {
    let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(b"\r\n0\r\n\r\n");
    Answer::Raw(bytes)
}
