//! Moving the bytes: HTTP through the shared [`crate::download`] helper with redirects
//! followed by hand (each hop checked against the policy), operator `file:` mirrors read
//! beneath their directory, and a DNS resolver that keeps buildpack-chosen names off loopback
//! and link-local addresses.

use super::policy::Rules;
use super::url_rules::{self, Prefix};
use super::{Denial, FetchError, FetchGrant, NetworkFailure};
use crate::download::{Accept, Digests, DownloadError, Downloader, Options, Step};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Component, Path};
use tempfile::NamedTempFile;
use url::Url;

/// Redirects followed per download, at most.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// One download: what was asked for, where it goes, and on whose behalf (redirect hops are
/// checked against the same rules the request was).
pub(crate) struct Target<'a> {
    pub requested: &'a Url,
    pub url_used: &'a Url,
    /// The mirror `to` that `url_used` is beneath, when a rule rewrote it.
    pub to: Option<&'a Prefix>,
    pub grant: &'a FetchGrant,
    pub rules: &'a Rules,
}

/// The size limit for one attempt (its time limits are the downloader's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_bytes: u64,
    pub limit_mb: u64,
}

/// What a finished attempt left: the content (not yet in the cache), its digest and size.
pub(crate) type Downloaded = (NamedTempFile, String, u64);

impl Target<'_> {
    fn network(&self, cause: NetworkFailure) -> FetchError {
        FetchError::Network {
            url_used: self.url_used.to_string(),
            cause,
        }
    }

    fn denied(&self, reason: Denial) -> FetchError {
        FetchError::Denied {
            url: self.requested.to_string(),
            url_used: self.url_used.to_string(),
            reason: Box::new(reason),
        }
    }

    fn too_large(&self, limits: Limits) -> FetchError {
        FetchError::TooLarge {
            url_used: self.url_used.to_string(),
            limit_mb: limits.limit_mb,
        }
    }
}

/// Downloads `target.url_used` over HTTP(S) into `partial`, following at most
/// [`MAX_REDIRECTS`] redirects, each of them resolved, normalised and checked first.
pub(crate) async fn download_http(
    downloader: &Downloader,
    target: &Target<'_>,
    limits: Limits,
    partial: NamedTempFile,
) -> Result<Downloaded, FetchError> {
    let options = Options {
        max_bytes: limits.max_bytes,
        digests: Digests::SHA256,
        accept: Accept::Success,
    };
    let mut out = tokio::fs::File::from_std(partial.as_file().try_clone()?);
    let mut current = target.url_used.clone();
    let mut hops = 0;
    let done = loop {
        let step = downloader
            .download_or_redirect(&current, &options, &mut out)
            .await
            .map_err(|e| fetch_error(target, &current, limits, e))?;
        let (status, location) = match step {
            Step::Done(done) => break done,
            Step::Redirect { status, location } => (status, location),
        };
        let Some(location) = location else {
            return Err(FetchError::Status {
                url_used: current.to_string(),
                status,
            });
        };
        let mut next = current.join(&location).map_err(|source| {
            target.denied(Denial::BadRedirect {
                from: current.clone(),
                location: url_rules::sanitize(&location),
                source,
            })
        })?;
        next.set_fragment(None);
        hops += 1;
        if hops > MAX_REDIRECTS {
            return Err(target.denied(Denial::TooManyRedirects { last: next }));
        }
        if let Err(source) = target
            .rules
            .check_hop(&next, target.requested, target.grant)
        {
            return Err(target.denied(Denial::Hop {
                from: current,
                to: next,
                source,
            }));
        }
        current = next;
    };
    // Only SHA-256 was asked for; without it there is nothing to verify or store under.
    let sha256 = done
        .sha256
        .ok_or_else(|| std::io::Error::other("the download computed no SHA-256"))?;
    Ok((partial, sha256, done.size))
}

/// The fetch service's error for a failed hop to `current`: a server error or a broken
/// connection is a network error (tried again), any other refusal is final.
fn fetch_error(
    target: &Target<'_>,
    current: &Url,
    limits: Limits,
    error: DownloadError,
) -> FetchError {
    match error {
        DownloadError::Status { status, .. } if status.is_server_error() => {
            target.network(NetworkFailure::ServerError {
                url: current.clone(),
                status,
            })
        }
        DownloadError::Status { status, .. } => FetchError::Status {
            url_used: current.to_string(),
            status: status.as_u16(),
        },
        DownloadError::TooLarge { .. } => target.too_large(limits),
        DownloadError::Request { source, .. } | DownloadError::Client { source } => {
            target.network(NetworkFailure::Request(source))
        }
        DownloadError::Write { source, .. } => FetchError::Cache(source),
    }
}

/// Why a file beneath a mirror directory could not be read.
#[derive(Debug)]
enum FileFailure {
    NotFound,
    /// `..`, an absolute symlink or one leading out of the directory, or a magic link.
    Outside,
    NotRegular(&'static str),
    TooLarge,
    Io(std::io::Error),
}

impl From<std::io::Error> for FileFailure {
    fn from(error: std::io::Error) -> Self {
        FileFailure::Io(error)
    }
}

/// Reads `target.url_used`, a `file:` URL beneath the operator's mirror directory
/// `target.to`, into `partial`. The open is descriptor-relative beneath that directory and
/// the blocking I/O runs on the blocking pool.
pub(crate) async fn download_file(
    target: &Target<'_>,
    limits: Limits,
    partial: NamedTempFile,
) -> Result<Downloaded, FetchError> {
    let Some(to) = target.to else {
        return Err(target.denied(Denial::FileWithoutMirror));
    };
    let (Ok(root), Ok(full)) = (to.url.to_file_path(), target.url_used.to_file_path()) else {
        return Err(target.denied(Denial::NotLocalFile));
    };
    let relative = match full.strip_prefix(&root) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => return Err(target.denied(Denial::NotBeneathMirror { root })),
    };
    let max_bytes = limits.max_bytes;
    let task_root = root.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut partial = partial;
        read_beneath(&task_root, &relative, max_bytes, partial.as_file_mut())
            .map(|(sha, size)| (partial, sha, size))
    })
    .await
    .map_err(|e| FetchError::Cache(std::io::Error::other(e)))?;
    outcome.map_err(|failure| match failure {
        FileFailure::NotFound => FetchError::Status {
            url_used: target.url_used.to_string(),
            status: 404,
        },
        FileFailure::Outside => target.denied(Denial::OutsideMirror { root }),
        FileFailure::NotRegular(kind) => target.denied(Denial::NotRegular { kind }),
        FileFailure::TooLarge => target.too_large(limits),
        FileFailure::Io(e) => target.network(NetworkFailure::Io(e)),
    })
}

/// Opens `relative` beneath `root` with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`,
/// non-blocking (a FIFO must not hang the open), checks that it is a regular file, and copies
/// at most `max_bytes` of it to `out`, returning its SHA-256 and size.
fn read_beneath(
    root: &Path,
    relative: &Path,
    max_bytes: u64,
    out: &mut std::fs::File,
) -> Result<(String, u64), FileFailure> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    if relative.as_os_str().is_empty() {
        return Err(FileFailure::NotRegular("a directory"));
    }
    // `to_file_path` has already decoded and resolved the URL path; anything but plain names
    // here is a bug, refused rather than handed to the kernel.
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(FileFailure::Outside);
    }
    let errno = |e: Errno| match e {
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => FileFailure::NotFound,
        Errno::XDEV | Errno::LOOP => FileFailure::Outside,
        other => FileFailure::Io(std::io::Error::from(other)),
    };
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let fd = rustix::fs::openat2(
        &root_fd,
        relative,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(errno)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        return Err(FileFailure::NotRegular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "a socket or other special file"
        }));
    }
    if meta.len() > max_bytes {
        return Err(FileFailure::TooLarge);
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut reader = file.take(max_bytes + 1);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > max_bytes {
            return Err(FileFailure::TooLarge);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Why the fetch client's resolver gives a name no address (reqwest keeps it as the source of
/// its connect error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unresolved {
    #[error("{host} has no addresses")]
    NoAddresses { host: String },
    #[error(
        "{host} resolves only to loopback, link-local or unspecified addresses, which only a \
         host named by an operator mirror rule or fetch.allow entry may reach"
    )]
    OnlyRestricted { host: String },
}

/// The fetch client's DNS resolver: a name the operator did not name as a target (a mirror
/// `to` or `fetch.allow` host) never resolves to a loopback, link-local or unspecified
/// address, so a buildpack cannot reach the agent's own services through a DNS name it
/// chose. Literal IP hosts never come here; the policy checks those.
pub(crate) struct GuardedResolver {
    pub trusted: HashSet<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let trusted = self.trusted.contains(&host);
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(Unresolved::NoAddresses { host }.into());
            }
            let kept: Vec<SocketAddr> = if trusted {
                found
            } else {
                found
                    .into_iter()
                    .filter(|addr| !url_rules::restricted_ip(addr.ip()))
                    .collect()
            };
            if kept.is_empty() {
                return Err(Unresolved::OnlyRestricted { host }.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// An error with its whole `source()` chain (`error sending request: client error (Connect):
/// tcp connect error: Connection refused`), each cause once, control characters escaped.
pub(crate) fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = String::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        // Some errors repeat their source in their own message; say each part once.
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        current = e.source();
    }
    url_rules::sanitize(&message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve;
    use std::str::FromStr;

    #[tokio::test]
    async fn names_resolving_to_loopback_need_an_operator_rule() {
        let guarded = GuardedResolver {
            trusted: HashSet::new(),
        };
        let name = reqwest::dns::Name::from_str("localhost").expect("name");
        let error = match guarded.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("loopback"), "{error}");

        let trusting = GuardedResolver {
            trusted: ["localhost".to_string()].into(),
        };
        let name = reqwest::dns::Name::from_str("localhost").expect("name");
        let addrs: Vec<_> = match trusting.resolve(name).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }

    #[test]
    fn error_chains_are_spelled_out_once_without_control_characters() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused \u{1b}[31mred\u{1b}[0m",
        );
        let text = describe_error(&Outer(inner));
        assert!(
            text.starts_with("error sending request: connection refused"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
}
