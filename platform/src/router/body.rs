//! A request body that can be offered to one backend after another.
//!
//! hyper's client takes the request, body included, and on a connect error drops it. The
//! router must then try the next backend with the same, still unread, body, without
//! buffering it (uploads stream). So the body waits in a shared slot, and each attempt gets
//! an [`AttemptBody`] that takes it out only when the connection asks for the first frame:
//! after a connect error nothing was taken and the next attempt finds it where it was.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

/// The error an attempt's body yields; hyper wants something boxable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body, held for as many attempts as the proxy makes.
#[derive(Debug)]
pub struct Replayable {
    slot: Arc<Mutex<Option<Incoming>>>,
}

impl Replayable {
    pub fn new(body: Incoming) -> Replayable {
        Replayable {
            slot: Arc::new(Mutex::new(Some(body))),
        }
    }

    /// The body for one attempt.
    pub fn attempt(&self) -> AttemptBody {
        AttemptBody {
            slot: self.slot.clone(),
            body: None,
        }
    }

    /// Whether an attempt has started reading the body, so it cannot be offered again.
    pub fn is_spent(&self) -> bool {
        lock(&self.slot).is_none()
    }
}

/// The body one attempt sends: empty-handed until the connection first polls it.
#[derive(Debug)]
pub struct AttemptBody {
    slot: Arc<Mutex<Option<Incoming>>>,
    body: Option<Incoming>,
}

fn lock(slot: &Mutex<Option<Incoming>>) -> MutexGuard<'_, Option<Incoming>> {
    // A panic while holding this lock cannot leave the Option half-written.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = lock(&this.slot).take();
            if this.body.is_none() {
                // Only reachable if an attempt were made after a body was spent; sending an
                // empty body instead would silently truncate the upload.
                return Poll::Ready(Some(Err("request body already sent to a backend".into())));
            }
        }
        match this.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => lock(&self.slot).as_ref().is_some_and(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => lock(&self.slot)
                .as_ref()
                .map_or_else(SizeHint::default, Body::size_hint),
        }
    }
}
