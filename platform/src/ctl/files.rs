//! `dea ctl logs` and `files`: an instance's files from its agent's directory server, by the
//! signed URL the agent gives in its `dea.find.droplet` answer (reached through the router).

use super::{Ctl, CtlError, filter};
use dea_protocol::InstanceState;
use futures_util::StreamExt;
use std::io::Write;

/// The signed URL for `path` in instance `index` of `name`.
async fn file_url(ctl: &Ctl, name: &str, index: u32, path: &str) -> Result<String, CtlError> {
    let spec = ctl.spec(name).await?;
    let mut query = filter(&spec.guid);
    query.indices = Some(vec![index]);
    query.path = Some(path.to_string());
    let found = ctl.find(&query).await?;
    found
        .into_iter()
        .filter(|i| i.state == InstanceState::Running)
        .find_map(|i| i.file_uri_v2)
        .ok_or_else(|| CtlError::NoInstance {
            app: name.to_string(),
            index,
        })
}

/// Copies a response body to `out` as it arrives.
async fn copy(response: reqwest::Response, out: &mut dyn Write) -> Result<(), CtlError> {
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(CtlError::Usage(format!("HTTP {status}: {body}")));
    }
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(())
}

/// The instance's `logs/stdout.log` and `logs/stderr.log`; with `follow`, stdout as it grows.
pub async fn logs(
    ctl: &Ctl,
    name: &str,
    index: u32,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    if follow {
        let url = file_url(ctl, name, index, "logs/stdout.log").await?;
        let response = ctl
            .http(&url)?
            .get(format!("{url}&tail&tail_offset=0"))
            .send()
            .await?;
        return copy(response, out).await;
    }
    for log in ["logs/stdout.log", "logs/stderr.log"] {
        let url = file_url(ctl, name, index, log).await?;
        writeln!(out, "==> {log} <==")?;
        copy(ctl.http(&url)?.get(&url).send().await?, out).await?;
    }
    Ok(())
}

/// A file's contents, or a directory's listing, as the directory server gives it.
pub async fn files(
    ctl: &Ctl,
    name: &str,
    index: u32,
    path: &str,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let url = file_url(ctl, name, index, path).await?;
    copy(ctl.http(&url)?.get(&url).send().await?, out).await
}
