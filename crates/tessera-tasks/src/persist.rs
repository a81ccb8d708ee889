//! Durable writes: a file is written to a temp file, fsync'd, renamed over the old one and
//! the directory fsync'd, so a crash never leaves a half-written task file or playlist.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PersistError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` atomically and durably with the given permission bits.
/// On failure the temporary file is removed (a full disk leaves no 0-byte `.tmp` behind).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PersistError> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(PersistError { path: path.to_owned(), source });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| PersistError { path: dir.to_owned(), source })?;
    Ok(())
}
