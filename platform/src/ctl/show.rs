//! `dea ctl apps`, `app` and `events`: what is wanted (the app specs), what runs (the agents'
//! answers) and what happened (the event stream), laid out as `cf` lays them out.

use super::{Ctl, CtlError, filter, megabytes};
use crate::desired::{AppState, StagingState};
use crate::events::Event;
use dea_protocol::InstanceState;
use std::io::Write;

fn state_word(state: AppState) -> &'static str {
    match state {
        AppState::Started => "started",
        AppState::Stopped => "stopped",
    }
}

pub async fn apps(ctl: &Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    let specs = ctl.platform.apps().list().await?;
    let mut rows = vec![[
        "name".to_string(),
        "requested state".into(),
        "instances".into(),
        "memory".into(),
        "disk".into(),
        "urls".into(),
    ]];
    for (spec, _) in specs {
        let found = ctl.find(&filter(&spec.guid)).await?;
        let running = found
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        rows.push([
            spec.name.clone(),
            state_word(spec.state).into(),
            format!("{running}/{}", spec.instances),
            megabytes(spec.memory_mb << 20),
            megabytes(spec.disk_mb << 20),
            spec.routes.join(", "),
        ]);
    }
    table(out, &rows)
}

pub async fn app(ctl: &Ctl, name: &str, out: &mut dyn Write) -> Result<(), CtlError> {
    let spec = ctl.spec(name).await?;
    let mut query = filter(&spec.guid);
    query.include_stats = Some(true);
    let found = ctl.find(&query).await?;
    let running = found
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .count();
    let staging = match spec.staging.as_ref().map(|s| &s.state) {
        None => "none".to_string(),
        Some(StagingState::Pending) => "pending".into(),
        Some(StagingState::Running) => "running".into(),
        Some(StagingState::Succeeded) => "staged".into(),
        Some(StagingState::Failed(reason)) => format!("failed: {reason}"),
    };
    let fields = [
        ("name", spec.name.clone()),
        ("requested state", state_word(spec.state).into()),
        ("instances", format!("{running}/{}", spec.instances)),
        (
            "usage",
            format!(
                "{} x {} instances",
                megabytes(spec.memory_mb << 20),
                spec.instances
            ),
        ),
        ("routes", spec.routes.join(", ")),
        ("staging", staging),
        (
            "buildpack",
            spec.droplet
                .as_ref()
                .and_then(|d| d.detected_buildpack.clone())
                .or(spec.buildpack.clone())
                .unwrap_or_default(),
        ),
        (
            "droplet",
            spec.droplet
                .as_ref()
                .map(|d| d.sha1.clone())
                .unwrap_or_default(),
        ),
    ];
    for (key, value) in fields {
        writeln!(out, "{:<17}{value}", format!("{key}:"))?;
    }
    writeln!(out)?;
    let mut rows = vec![[
        "".to_string(),
        "state".into(),
        "since".into(),
        "cpu".into(),
        "memory".into(),
        "disk".into(),
        "agent".into(),
    ]];
    for instance in &found {
        let stats = instance.stats.as_ref();
        let usage = |key: &str| {
            stats
                .and_then(|s| s["usage"][key].as_f64())
                .unwrap_or_default()
        };
        let quota = |key: &str| {
            stats
                .and_then(|s| s[key].as_u64())
                .map(megabytes)
                .unwrap_or_default()
        };
        rows.push([
            format!("#{}", instance.index),
            format!("{:?}", instance.state).to_lowercase(),
            since(instance.state_timestamp),
            stats.map_or(String::new(), |_| format!("{:.1}%", usage("cpu"))),
            stats.map_or(String::new(), |_| {
                format!(
                    "{} of {}",
                    megabytes(usage("mem") as u64),
                    quota("mem_quota")
                )
            }),
            stats.map_or(String::new(), |_| {
                format!(
                    "{} of {}",
                    megabytes(usage("disk") as u64),
                    quota("disk_quota")
                )
            }),
            instance.dea.clone(),
        ]);
    }
    table(out, &rows)
}

pub async fn events(ctl: &Ctl, name: &str, out: &mut dyn Write) -> Result<(), CtlError> {
    ctl.spec(name).await?;
    let events = ctl.platform.events().list(name, 50).await?;
    let mut rows = vec![["time".to_string(), "event".into(), "description".into()]];
    for recorded in events {
        let (at, kind, description) = match recorded.event {
            Event::Crashed {
                index,
                exit_status,
                reason,
                at,
                ..
            } => (
                at,
                "app.crash",
                format!(
                    "index: {index}, exit_status: {}, reason: {reason}",
                    exit_status.map_or("none".into(), |s| s.to_string())
                ),
            ),
            Event::Staged {
                droplet_sha1,
                detected_buildpack,
                at,
                ..
            } => (
                at,
                "app.droplet.create",
                format!(
                    "droplet: {droplet_sha1}, buildpack: {}",
                    detected_buildpack.unwrap_or_default()
                ),
            ),
            Event::StagingFailed { reason, at, .. } => (at, "app.staging.failed", reason),
            Event::Started {
                index, version, at, ..
            } => (
                at,
                "app.instance.start",
                format!("index: {index}, version: {version}"),
            ),
            Event::Stopped {
                instances,
                reason,
                at,
            } => (at, "app.stop", format!("instances: {instances}, {reason}")),
            Event::Scaled { from, to, at } => {
                (at, "app.scale", format!("instances: {from} -> {to}"))
            }
        };
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        rows.push([at, kind.to_string(), description]);
    }
    table(out, &rows)
}

/// How long ago a Unix timestamp was, as `cf` says it (`2m13s ago`).
fn since(timestamp: f64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let secs = (now - timestamp).max(0.0) as u64;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m{}s ago", secs / 60, secs % 60),
        _ => format!("{}h{}m ago", secs / 3600, (secs % 3600) / 60),
    }
}

/// Columns padded to their widest cell, as `cf` prints tables.
fn table<const N: usize>(out: &mut dyn Write, rows: &[[String; N]]) -> Result<(), CtlError> {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
