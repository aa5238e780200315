//! One worker's connections: accepted here, served by the fast path (`fast.rs`) until a
//! request it does not take, then by hyper and the axum routes, as `axum::serve` did.
//!
//! Shutdown keeps `axum::serve`'s graceful behaviour: on [`Stop::Graceful`] no connection is
//! accepted any more, idle ones are closed, requests in flight finish, and the loop returns
//! once every connection is gone. [`Stop::Abort`] is the worker's business (it drops the
//! runtime).

use super::check::{Shared, Stop};
use super::fast;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Accepts and serves connections until the server stops, then waits for them to end.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    app: Router,
    mut stopped: watch::Receiver<Stop>,
) {
    // Every connection holds a receiver; `closed()` tells when the last one is gone.
    let (live, live_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s != Stop::Running) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client gave up before the accept: nothing to do about it.
            Err(e) if is_connection_error(&e) => continue,
            // Out of descriptors or memory: wait a little instead of spinning (axum's way).
            Err(e) => {
                tracing::error!("directory server accept: {e}");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.wait_for(|s| *s != Stop::Running) => break,
                }
                continue;
            }
        };
        // At `max_connections`, this worker holds the connection it just accepted, unread,
        // and accepts no other until a place is free: the rest wait in the listen queue, so
        // descriptors and memory stay bounded (at most one extra per worker) however many
        // connections are opened and left idle. The place is taken after the accept, so a
        // worker waiting for clients never holds one that another worker's clients need.
        let permit = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s != Stop::Running) => break,
            permit = shared.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Heads and small bodies are single writes that should leave at once; large bodies
        // hold their head back with MSG_MORE themselves.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on a directory server connection: {e}");
        }
        let shared = shared.clone();
        let app = app.clone();
        let stopped = stopped.clone();
        let alive = live_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, &shared, app, stopped).await;
            drop((alive, permit));
        });
    }
    drop(listener);
    drop(live_rx);
    live.closed().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    mut stream: TcpStream,
    shared: &Shared,
    app: Router,
    mut stopped: watch::Receiver<Stop>,
) {
    let read = match fast::serve(&mut stream, shared, &mut stopped).await {
        fast::End::Closed => return,
        fast::End::HandOver(read) => read,
    };
    let io = TokioIo::new(Replayed {
        read,
        position: 0,
        stream,
        stall: shared.settings.send_timeout,
        stalled: None,
    });
    // What `axum::serve` does for each connection, plus a deadline for every request head
    // (hyper starts it whenever it waits for one, so it also ends idle keep-alives).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.settings.header_timeout);
    let mut connection =
        std::pin::pin!(builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app)));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!("directory server connection: {e}");
                }
                return;
            }
            _ = stopped.wait_for(|s| *s != Stop::Running), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection whose first bytes were already read by the fast path: they are read again
/// first, then the socket. A write that finds no room for `stall` fails with `TimedOut`,
/// so an answer to a client that stopped reading (a large listing, a file over HTTP/1.0)
/// ends instead of holding the connection for ever; `tail` streams have their own limit.
struct Replayed {
    read: Vec<u8>,
    position: usize,
    stream: TcpStream,
    stall: Duration,
    /// Running while writes wait for room; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Replayed {
    /// What a write that found no room answers: still pending, or timed out.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let stall = self.stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = this.read.get(this.position..).unwrap_or_default();
        if rest.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.position += n;
        if this.position == this.read.len() {
            this.read = Vec::new();
            this.position = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.waiting(cx),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.waiting(cx),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replayed_bytes_come_before_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let client = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.expect("connect");
            client.write_all(b" world").await.expect("write");
            let mut echo = Vec::new();
            client.read_to_end(&mut echo).await.expect("read");
            echo
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let mut replayed = Replayed {
            read: b"hello".to_vec(),
            position: 0,
            stream,
            stall: Duration::from_secs(5),
            stalled: None,
        };
        let mut small = [0u8; 3];
        replayed.read_exact(&mut small).await.expect("read");
        assert_eq!(&small, b"hel");
        let mut rest = vec![0u8; 8];
        replayed.read_exact(&mut rest).await.expect("read");
        assert_eq!(rest, b"lo world");
        replayed.write_all(b"bye").await.expect("write");
        replayed.shutdown().await.expect("shutdown");
        drop(replayed);
        assert_eq!(client.await.expect("client"), b"bye");
    }
}
