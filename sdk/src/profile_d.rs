//! `.profile.d` scripts: sourced by bash, in name order, before the app starts.
//!
//! This is how a buildpack puts an installed runtime on `PATH` at run time. Scripts should
//! default rather than override (`export LANG=${LANG:-C.UTF-8}`), because they run after the
//! app's own configuration is in the environment.

use crate::{APP_DIR, Error};
use std::path::PathBuf;

/// Writes `/app/.profile.d/<name>.sh` with `script` as its body and returns its path.
pub fn write(name: &str, script: &str) -> Result<PathBuf, Error> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::Failed(format!(
            "invalid .profile.d script name {name:?}"
        )));
    }
    let dir = PathBuf::from(APP_DIR).join(".profile.d");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(&path, script)?;
    Ok(path)
}
