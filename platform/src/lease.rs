//! Leases in KV `dea-leases`, so that of two controllers running at once only the holder acts.
//!
//! A lease is a key whose value names its holder. Acquiring is an atomic `create`; renewing
//! is an `update` on the revision the holder last wrote, so a holder that lost the lease can
//! never overwrite the new holder. Expiry needs no clock agreement between controllers: the
//! bucket's `max_age` is the TTL, and with one revision per key JetStream removes a lease
//! `max_age` after its last write (the server's clock alone decides).
//!
//! The holder's own view is conservative: it counts its TTL from *before* it sent the write,
//! and its TTL may not exceed the bucket's, so [`Lease::is_held`] turns false no later than
//! the server can hand the lease to someone else.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{StateError, validate_label};
use crate::names::{LEASES_BUCKET, NameError, NameKind};

/// What a lease key holds: who holds it, and since when (for operators).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    #[serde(with = "time::serde::rfc3339")]
    renewed_at: OffsetDateTime,
}

/// The lease bucket. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Leases {
    pub(crate) fn new(kv: kv::Store, ttl: Duration) -> Leases {
        Leases { kv, ttl }
    }

    /// The bucket's TTL: how long a lease survives without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Acquires lease `name` for `holder`, who then believes it holds it for `ttl` after each
    /// successful write (`ttl` may not exceed [`Leases::ttl`]; renew well within it).
    /// If `holder` already holds it (a restarted process with the same identity), the lease
    /// is renewed. Held by someone else: [`StateError::LeaseHeld`].
    ///
    /// `holder` must be unique per running process: two processes with one identity would
    /// both believe they hold the lease.
    pub async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StateError> {
        validate_label(NameKind::Lease, name)?;
        validate_holder(holder)?;
        if ttl.is_zero() || ttl > self.ttl {
            return Err(StateError::LeaseTtl {
                requested: ttl,
                bucket: self.ttl,
            });
        }
        // A few rounds, because the lease can expire or be released between our `create`
        // failing and our read.
        for _ in 0..3 {
            let sent = Instant::now();
            let value = self.value(name, holder)?;
            match self.kv.create(name, value).await {
                Ok(revision) => {
                    tracing::info!(lease = name, holder, "acquired lease");
                    return Ok(Lease {
                        leases: self.clone(),
                        name: name.to_string(),
                        holder: holder.to_string(),
                        ttl,
                        revision,
                        valid_until: Some(sent + ttl),
                    });
                }
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {}
                Err(err) => return Err(StateError::nats("acquire", LEASES_BUCKET, name, err)),
            }
            match self.current(name).await? {
                Some((current, revision)) if current == holder => {
                    let mut lease = Lease {
                        leases: self.clone(),
                        name: name.to_string(),
                        holder: holder.to_string(),
                        ttl,
                        revision,
                        valid_until: None,
                    };
                    lease.renew().await?;
                    return Ok(lease);
                }
                Some((current, _)) => {
                    return Err(StateError::LeaseHeld {
                        name: name.to_string(),
                        holder: current,
                    });
                }
                None => continue,
            }
        }
        Err(StateError::Contended {
            name: name.to_string(),
            attempts: 3,
        })
    }

    /// Who holds lease `name` right now, if anyone.
    pub async fn holder(&self, name: &str) -> Result<Option<String>, StateError> {
        validate_label(NameKind::Lease, name)?;
        Ok(self.current(name).await?.map(|(holder, _)| holder))
    }

    async fn current(&self, name: &str) -> Result<Option<(String, u64)>, StateError> {
        let entry = self
            .kv
            .entry(name)
            .await
            .map_err(|err| StateError::nats("get", LEASES_BUCKET, name, err))?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                let value: LeaseValue =
                    serde_json::from_slice(&entry.value).map_err(|source| StateError::Decode {
                        what: "lease",
                        key: name.to_string(),
                        source,
                    })?;
                Ok(Some((value.holder, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    fn value(&self, name: &str, holder: &str) -> Result<Bytes, StateError> {
        serde_json::to_vec(&LeaseValue {
            holder: holder.to_string(),
            renewed_at: OffsetDateTime::now_utc(),
        })
        .map(Bytes::from)
        .map_err(|source| StateError::Encode {
            what: "lease",
            key: name.to_string(),
            source,
        })
    }
}

fn validate_holder(holder: &str) -> Result<(), StateError> {
    let reason = if holder.is_empty() {
        Some(NameError::Empty)
    } else if holder.len() > 256 {
        Some(NameError::TooLong { max: 256 })
    } else {
        holder
            .chars()
            .find(|c| c.is_control())
            .map(NameError::Forbidden)
    };
    match reason {
        Some(reason) => Err(StateError::invalid_name(
            NameKind::LeaseHolder,
            holder,
            reason,
        )),
        None => Ok(()),
    }
}

/// A lease this process acquired. Renew it well within its TTL (a third of it is usual);
/// once [`Lease::is_held`] is false the holder must stop acting.
#[derive(Debug)]
pub struct Lease {
    leases: Leases,
    name: String,
    holder: String,
    ttl: Duration,
    revision: u64,
    /// `None` once lost or released.
    valid_until: Option<Instant>,
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The KV revision of the holder's last write.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether this process may still act on the lease: renewed within its TTL and not lost.
    pub fn is_held(&self) -> bool {
        self.valid_until.is_some_and(|until| Instant::now() < until)
    }

    /// Extends the lease by another TTL. [`StateError::LeaseLost`] if it expired or someone
    /// else took it since the last write (it is then no longer held).
    pub async fn renew(&mut self) -> Result<(), StateError> {
        let sent = Instant::now();
        let value = self.leases.value(&self.name, &self.holder)?;
        match self
            .leases
            .kv
            .update(&self.name, value, self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.valid_until = Some(sent + self.ttl);
                Ok(())
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                self.valid_until = None;
                tracing::warn!(lease = self.name, holder = self.holder, "lost lease");
                Err(StateError::LeaseLost {
                    name: self.name.clone(),
                    holder: self.holder.clone(),
                })
            }
            // Unknown outcome (e.g. a timeout): keep believing only until the old deadline.
            Err(err) => Err(StateError::nats("renew", LEASES_BUCKET, &self.name, err)),
        }
    }

    /// Gives the lease up at once, so another holder need not wait for the TTL. Only deletes
    /// the revision this holder wrote; a lease already taken over is left alone.
    pub async fn release(mut self) -> Result<(), StateError> {
        self.valid_until = None;
        match self
            .leases
            .kv
            .delete_expect_revision(&self.name, Some(self.revision))
            .await
        {
            Ok(()) => {
                tracing::info!(lease = self.name, holder = self.holder, "released lease");
                Ok(())
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(err) => Err(StateError::nats("release", LEASES_BUCKET, &self.name, err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders() {
        assert!(validate_holder("controller-1 on host-a").is_ok());
        assert!(validate_holder("").is_err());
        assert!(validate_holder("a\nb").is_err());
    }
}
