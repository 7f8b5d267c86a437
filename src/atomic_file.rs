//! Writing a file so that a crash leaves the old version or the new one,
//! never half of either: a temporary file in the same directory, fsync,
//! rename over the target, fsync of the directory. The snapshot and the
//! break-glass grants file both go through here. A process killed between
//! creating its temporary file and the rename leaves that file behind; the
//! next successful write removes the temporaries of processes that are gone,
//! so repeated crashes do not fill the disk.

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
    let prefix = format!(".{name}.tmp-");
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
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
    } else {
        remove_dead_temporaries(&dir, &prefix);
    }
    result
}

/// Removes `<prefix><pid>` files in `dir` whose process no longer runs.
/// Best effort: a file that cannot be listed or removed is left alone.
fn remove_dead_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !process_runs(pid)
        {
            let _gone = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` exists. Where that cannot be told, it is assumed
/// to run, so nothing another process may still be writing is removed.
fn process_runs(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
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

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_removes_temporaries_left_by_dead_processes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        // No process has a pid this high (Linux caps pids at 2^22).
        let dead = dir.path().join(".state.bin.tmp-4294967294");
        let other_file = dir.path().join(".other.bin.tmp-4294967294");
        let alive = dir.path().join(".state.bin.tmp-1");
        for p in [&dead, &other_file, &alive] {
            std::fs::write(p, b"half").unwrap();
        }
        write_atomically(&path, b"whole").unwrap();
        assert!(!dead.exists(), "a dead process's temporary stays");
        assert!(other_file.exists(), "another file's temporary was removed");
        assert!(alive.exists(), "pid 1 runs: its temporary must stay");
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
