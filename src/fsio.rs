//! The one way the core writes files: nothing a user keeps (checkpoints, run folders, exports,
//! embeddings) is ever seen half-written under its final name.
//!
//! A file is written to a temporary name beside its destination, flushed to disk, and renamed
//! over it; a folder is written whole under a temporary name and swapped in. Both then sync
//! the parent folder so that the rename itself survives a power cut.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// Runs `write` on a temporary file beside `path`, syncs it, then renames it over `path`. On
/// failure the temporary file is removed and `path` is left as it was.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = parent_of(path);
    if !parent.as_os_str().is_empty() {
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    }
    let tmp = sibling(
        path,
        &format!(".{}.tmp-{}", file_name(path), std::process::id()),
    );
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        sync_dir(&parent);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Writes `value` as pretty-printed JSON to `path` atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid(format!("cannot serialise {}: {e}", path.display())))?;
    write_bytes(path, text.as_bytes())
}

/// Writes a folder as a unit: everything goes into `<dir>.tmp`, which then replaces `dir` (the
/// previous folder is moved to `<dir>.old` first and removed last), so `dir` is always either
/// the old or the new folder, never a mixture. [`existing_folder`] finds `<dir>.old` when a
/// crash fell between the two renames.
pub fn replace_folder(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, &format!("{}.tmp", file_name(dir)));
    let old = old_copy(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = write(&tmp) {
        // A failed write (disk full, ...) leaves the previous folder as it was.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_dir(&parent_of(dir));
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// `dir` if it holds `marker`, else the `<dir>.old` copy [`replace_folder`] leaves when it was
/// cut between its two renames, if that holds it.
pub fn existing_folder(dir: &Path, marker: &str) -> Option<PathBuf> {
    if dir.join(marker).is_file() {
        return Some(dir.to_owned());
    }
    let old = old_copy(dir);
    old.join(marker).is_file().then_some(old)
}

/// Makes renames inside `dir` durable. Best effort: some file systems cannot sync folders.
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn old_copy(dir: &Path) -> PathBuf {
    sibling(dir, &format!("{}.old", file_name(dir)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sibling(path: &Path, name: &str) -> PathBuf {
    path.with_file_name(name)
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_owned).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_previous_file_and_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub").join("a.txt");
        write_bytes(&path, b"one").unwrap();
        let failed = write_atomically(&path, |t| {
            std::fs::write(t, b"half").unwrap();
            Err(Error::invalid("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn a_folder_is_replaced_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("last");
        replace_folder(&dir, |d| write_bytes(&d.join("w"), b"1")).unwrap();
        let failed = replace_folder(&dir, |d| {
            write_bytes(&d.join("w"), b"2")?;
            Err(Error::invalid("cut"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(dir.join("w")).unwrap(), b"1");
        replace_folder(&dir, |d| write_bytes(&d.join("w"), b"3")).unwrap();
        assert_eq!(std::fs::read(dir.join("w")).unwrap(), b"3");
        assert!(!tmp.path().join("last.tmp").exists() && !tmp.path().join("last.old").exists());
        // A crash between the renames leaves only last.old: it is found.
        std::fs::rename(&dir, tmp.path().join("last.old")).unwrap();
        assert_eq!(
            existing_folder(&dir, "w"),
            Some(tmp.path().join("last.old"))
        );
    }
}
