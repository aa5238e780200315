//! `dea ctl scale`, `restart`, `stop`, `start` and `delete`: changes to what is wanted. The
//! controller makes them happen; each is one compare-and-set on the app's spec.

use super::{Ctl, CtlError};
use crate::blobs::BlobBucket;
use crate::desired::AppState;
use crate::events::Event;
use std::io::Write;
use time::OffsetDateTime;

pub async fn scale(
    ctl: &Ctl,
    name: &str,
    instances: Option<u32>,
    memory_mb: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let before = ctl.spec(name).await?;
    let (spec, _) = ctl
        .platform
        .apps()
        .modify(name, |spec| {
            if let Some(n) = instances {
                spec.instances = n;
            }
            if let Some(mb) = memory_mb {
                spec.memory_mb = mb;
                // New limits need new containers: a new version rolls them.
                spec.version = uuid::Uuid::new_v4().to_string();
            }
        })
        .await?;
    if before.instances != spec.instances {
        let event = Event::Scaled {
            from: before.instances,
            to: spec.instances,
            at: OffsetDateTime::now_utc(),
        };
        ctl.platform.events().publish(name, &event).await?;
    }
    writeln!(
        out,
        "Scaled {name} to {} instances of {} MB",
        spec.instances, spec.memory_mb
    )?;
    Ok(())
}

/// A new version: the controller rolls every instance, index by index.
pub async fn restart(ctl: &Ctl, name: &str, out: &mut dyn Write) -> Result<(), CtlError> {
    ctl.spec(name).await?;
    ctl.platform
        .apps()
        .modify(name, |spec| {
            spec.state = AppState::Started;
            spec.version = uuid::Uuid::new_v4().to_string();
        })
        .await?;
    writeln!(out, "Restarting {name}")?;
    Ok(())
}

pub async fn set_state(
    ctl: &Ctl,
    name: &str,
    state: AppState,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let before = ctl.spec(name).await?;
    ctl.platform
        .apps()
        .modify(name, |spec| spec.state = state)
        .await?;
    if state == AppState::Stopped && before.state == AppState::Started {
        let event = Event::Stopped {
            instances: before.instances,
            reason: "stopped by the operator".into(),
            at: OffsetDateTime::now_utc(),
        };
        ctl.platform.events().publish(name, &event).await?;
    }
    let word = match state {
        AppState::Started => "Starting",
        AppState::Stopped => "Stopping",
    };
    writeln!(out, "{word} {name}")?;
    Ok(())
}

/// Deletes the app: its spec (the controller then stops its instances), its routes and its
/// package. Its droplet stays if another app runs the same one.
pub async fn delete(ctl: &Ctl, name: &str, out: &mut dyn Write) -> Result<(), CtlError> {
    let spec = ctl.spec(name).await?;
    ctl.platform.apps().delete(name).await?;
    for route in &spec.routes {
        if let Err(e) = ctl.platform.routes().release(route, name).await {
            tracing::warn!(route, "releasing a route: {e}");
        }
    }
    if let Some(package) = &spec.package {
        ctl.platform
            .blobs()
            .delete(BlobBucket::Packages, &package.name)
            .await?;
    }
    if let Some(droplet) = &spec.droplet {
        let shared = ctl.platform.apps().list().await?.iter().any(|(other, _)| {
            other
                .droplet
                .as_ref()
                .is_some_and(|d| d.sha1 == droplet.sha1)
        });
        if !shared {
            ctl.platform
                .blobs()
                .delete(BlobBucket::Droplets, &droplet.sha1)
                .await?;
        }
    }
    writeln!(out, "Deleted {name}")?;
    Ok(())
}
