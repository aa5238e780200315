//! Reading JetStream streams without consumers (see [`last_per_subject`]).

use crate::error::StateError;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;

/// The last message of every subject under `filter`, without a consumer: the subjects come
/// from the stream's info and each message from a get, both answered by the stream's leader.
/// (An ephemeral consumer needs the cluster's meta leader as well; when a node went away,
/// creating one timed out for as long as a minute on nats-server 2.9, while these kept
/// answering.)
pub(crate) async fn last_per_subject(
    stream: &stream::Stream,
    bucket: &'static str,
    filter: String,
) -> Result<Vec<jetstream::message::StreamMessage>, StateError> {
    let mut subjects = Vec::new();
    let mut listed = stream
        .info_with_subjects(&filter)
        .await
        .map_err(|err| StateError::nats("subjects", bucket, &filter, err))?;
    while let Some(entry) = listed.next().await {
        let (subject, _count) =
            entry.map_err(|err| StateError::nats("subjects", bucket, &filter, err))?;
        subjects.push(subject);
    }
    subjects.sort();
    let mut messages = Vec::with_capacity(subjects.len());
    for subject in subjects {
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => messages.push(message),
            // Removed since the listing (its limits, a purge): not there, then.
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(err) => return Err(StateError::nats("get", bucket, &subject, err)),
        }
    }
    Ok(messages)
}

/// Every message of `subject`, in order, by direct gets walking its sequence numbers (no
/// consumer; see [`last_per_subject`]).
pub(crate) async fn all_of_subject(
    stream: &stream::Stream,
    bucket: &'static str,
    subject: String,
) -> Result<Vec<jetstream::message::StreamMessage>, StateError> {
    let mut messages = Vec::new();
    let mut next = 1;
    loop {
        match stream
            .direct_get_next_for_subject(subject.as_str(), Some(next))
            .await
        {
            Ok(message) => {
                next = message.sequence + 1;
                messages.push(message);
            }
            Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => return Ok(messages),
            Err(err) => return Err(StateError::nats("get", bucket, &subject, err)),
        }
    }
}

/// The `KV-Operation` header marks a deleted or purged key in a stream message.
pub(crate) fn is_kv_tombstone_header(headers: &async_nats::HeaderMap) -> bool {
    headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}
