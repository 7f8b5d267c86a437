//! Writing a file so that a crash leaves the old version or the new one,
//! never half of either: a temporary file in the same directory, fsync,
//! rename over the target, fsync of the directory. The snapshot and the
//! break-glass grants file both go through here.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// Which step of an atomic write failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op}: {source}")]
pub struct AtomicWriteError {
    /// The step: `create temporary file`, `write temporary file`, …
    pub op: &'static str,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `bytes` atomically. The temporary file is removed
/// when any step fails.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    let at = |op: &'static str| move |source| AtomicWriteError { op, source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(at("create temporary file"))?;
        file.write_all(bytes).map_err(at("write temporary file"))?;
        file.sync_all().map_err(at("fsync temporary file"))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(at("rename temporary file"))?;
        sync_dir(&dir).map_err(at("fsync directory"))
    })();
    if result.is_err() {
        let _cleanup = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.bin"]);
    }

    #[test]
    fn a_failed_write_names_the_step_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("state.bin");
        let err = write_atomically(&path, b"x").unwrap_err();
        assert_eq!(err.op, "create temporary file");
        assert!(
            err.to_string()
                .starts_with("cannot create temporary file: ")
        );
    }
}
