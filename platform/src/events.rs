//! App events (crashes, staging results, starts, stops, scaling) on the `DEA_EVENTS` stream,
//! one subject per app (`dea.events.<app>`), so `dea ctl events` shows what happened even
//! after the controller that saw it is gone. The stream keeps a bounded number per app.

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{StateError, validate_label};
use crate::names::{EVENTS_STREAM, EVENTS_SUBJECT_PREFIX, NameKind};
use crate::streams::all_of_subject;

/// Something that happened to an app. Serialised with a `type` tag, so readers can skip kinds
/// they do not know yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An instance exited without being asked to (`droplet.exited` with a crash reason).
    Crashed {
        instance: String,
        index: u32,
        exit_status: Option<i64>,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Staging produced a droplet.
    Staged {
        task_id: String,
        droplet_sha1: String,
        detected_buildpack: Option<String>,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    StagingFailed {
        task_id: String,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// An instance reached RUNNING.
    Started {
        instance: String,
        index: u32,
        version: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Instances were stopped on purpose.
    Stopped {
        instances: u32,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Scaled {
        from: u32,
        to: u32,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

/// An event as read back: where it sits in the stream, and what it was.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// The stream sequence; increases with publication order.
    pub sequence: u64,
    pub event: Event,
}

/// The event stream. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    context: jetstream::Context,
    stream: stream::Stream,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

fn subject(app: &str) -> String {
    format!("{EVENTS_SUBJECT_PREFIX}.{app}")
}

impl Events {
    pub(crate) fn new(context: jetstream::Context, stream: stream::Stream) -> Events {
        Events { context, stream }
    }

    /// Records `event` for `app` and waits for the stream to acknowledge it. Returns the
    /// stream sequence.
    pub async fn publish(&self, app: &str, event: &Event) -> Result<u64, StateError> {
        validate_label(NameKind::App, app)?;
        let payload = serde_json::to_vec(event).map_err(|source| StateError::Encode {
            what: "event",
            key: app.to_string(),
            source,
        })?;
        let ack = self
            .context
            .publish(subject(app), payload.into())
            .await
            .map_err(|err| StateError::nats("publish", EVENTS_STREAM, app, err))?
            .await
            .map_err(|err| StateError::nats("publish ack", EVENTS_STREAM, app, err))?;
        Ok(ack.sequence)
    }

    /// The app's last `limit` events, oldest first. Events this version cannot decode (a newer
    /// kind) are skipped with a warning rather than hiding the rest.
    pub async fn list(&self, app: &str, limit: usize) -> Result<Vec<RecordedEvent>, StateError> {
        validate_label(NameKind::App, app)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The stream keeps at most `events_per_app` per subject, so reading them all is bounded.
        let messages = all_of_subject(&self.stream, EVENTS_STREAM, subject(app)).await?;
        let skip = messages.len().saturating_sub(limit);
        let mut events = Vec::with_capacity(messages.len() - skip);
        for message in messages.into_iter().skip(skip) {
            let sequence = message.sequence;
            match serde_json::from_slice(&message.payload) {
                Ok(event) => events.push(RecordedEvent { sequence, event }),
                Err(err) => {
                    tracing::warn!(app, sequence, error = %err, "skipping an undecodable event");
                }
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_json() {
        let event = Event::Scaled {
            from: 1,
            to: 3,
            at: OffsetDateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_string(&event).expect("encodes");
        assert_eq!(
            json,
            r#"{"type":"scaled","from":1,"to":3,"at":"1970-01-01T00:00:00Z"}"#
        );
        assert_eq!(
            serde_json::from_str::<Event>(&json).expect("decodes"),
            event
        );
    }
}
