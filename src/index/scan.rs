//! What an update has to do: the image files under the root now, compared with what the index
//! holds. Only file metadata is read here, plus the bytes of files whose time changed but whose
//! size did not (a content hash tells a touched file from an edited one).
//!
//! Links: a link to a file inside the root is indexed under the link's name; a link that leads
//! outside the root is not (it is listed as skipped, with the reason); links to folders are not
//! followed. Reading an indexed file again ([`read_if_indexed`]) checks where it really is and
//! that it is still the file that was indexed.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::store::{Entry, Manifest, SkippedFile};
use crate::data::list_images;
use crate::error::{Error, Result};

/// An image file found under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// Relative to the root, '/'-separated.
    pub path: String,
    pub absolute: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// The work of one update.
#[derive(Debug, Default)]
pub struct Plan {
    /// Image files under the root (excluded ones not counted).
    pub total: usize,
    /// New or changed files, in path order.
    pub to_embed: Vec<FoundFile>,
    /// Ids of entries whose file is gone, changed, or excluded.
    pub to_drop: HashSet<u64>,
    /// Entries whose file was only touched (same bytes): new size/time, same row.
    pub touched: HashMap<u64, FoundFile>,
    pub unchanged: usize,
    /// Files that could not be read or named, and those that failed before and are unchanged.
    pub skipped: Vec<SkippedFile>,
    /// Entries dropped because their file is gone (or excluded), not because it changed.
    pub removed: usize,
}

/// Every image file under `root` with its size and modification time. Files whose name is not
/// UTF-8, whose metadata cannot be read, or that are links leading outside the root are
/// returned as skipped, with the reason.
pub fn scan(root: &Path) -> Result<(Vec<FoundFile>, Vec<SkippedFile>)> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let images = list_images(root)?;
    let real_root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    for absolute in images {
        let relative = absolute.strip_prefix(root).unwrap_or(&absolute);
        let lossy = relative.to_string_lossy().into_owned();
        let skip = |error: String| SkippedFile {
            path: lossy.clone(),
            size: 0,
            mtime_ns: 0,
            error,
        };
        let Some(path) = relative.to_str() else {
            skipped.push(skip(
                "the file name is not valid UTF-8; rename the file to index it".into(),
            ));
            continue;
        };
        if !inside(&absolute, &real_root) {
            skipped.push(skip(
                "a link to a file outside the indexed folder: not indexed".into(),
            ));
            continue;
        }
        match std::fs::metadata(&absolute) {
            Ok(meta) => found.push(FoundFile {
                path: path.replace(std::path::MAIN_SEPARATOR, "/"),
                size: meta.len(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                absolute,
            }),
            Err(e) => skipped.push(skip(format!("cannot read its metadata: {e}"))),
        }
    }
    Ok((found, skipped))
}

/// Whether `path` (through any link) is a file under `real_root` (a canonical path).
fn inside(path: &Path, real_root: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|real| real.starts_with(real_root))
}

/// The bytes of the indexed file `path` (absolute, under `root`), read only while it is the file
/// that was indexed: the file opened must really be under the root (a link swapped in since
/// indexing that leads elsewhere is not followed) and have the size and modification time the
/// index recorded. `None` when it is not, or is gone.
pub fn read_if_indexed(
    root: &Path,
    path: &Path,
    size: u64,
    mtime_ns: i64,
) -> Result<Option<Vec<u8>>> {
    let Ok(real_root) = std::fs::canonicalize(root) else {
        return Ok(None);
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    // Where the file opened really is (not where its name pointed a moment before).
    if !opened_path(&file, path).is_some_and(|real| real.starts_with(&real_root)) {
        return Ok(None);
    }
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    if !meta.is_file() || meta.len() != size || mtime != mtime_ns {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut file)
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(Some(bytes))
}

/// The real path of an open file: from `/proc/self/fd` on Linux (the file actually opened),
/// else the canonical form of the name it was opened by.
fn opened_path(file: &std::fs::File, name: &Path) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .or_else(|_| std::fs::canonicalize(name))
        .ok()
}

/// Compares the files found under the root with the index's entries.
pub fn plan(
    manifest: &Manifest,
    entries: &[Entry],
    found: Vec<FoundFile>,
    scan_skipped: Vec<SkippedFile>,
) -> Result<Plan> {
    let excluded: HashSet<&str> = manifest.excluded.iter().map(String::as_str).collect();
    let is_excluded = |path: &str| {
        excluded.contains(path) || folders_of(path).any(|folder| excluded.contains(folder))
    };
    let mut indexed: HashMap<&str, &Entry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let failed_before: HashMap<&str, &SkippedFile> = manifest
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s))
        .collect();
    let mut plan = Plan {
        skipped: scan_skipped,
        ..Plan::default()
    };
    for file in found {
        if is_excluded(&file.path) {
            continue;
        }
        plan.total += 1;
        let Some(entry) = indexed.remove(file.path.as_str()) else {
            match failed_before.get(file.path.as_str()) {
                Some(s) if s.size == file.size && s.mtime_ns == file.mtime_ns => {
                    plan.skipped.push((*s).clone())
                }
                _ => plan.to_embed.push(file),
            }
            continue;
        };
        if entry.size == file.size && entry.mtime_ns == file.mtime_ns {
            plan.unchanged += 1;
        } else if entry.size == file.size && hash_file(&file.absolute)? == entry.hash {
            plan.unchanged += 1;
            plan.touched.insert(entry.id, file);
        } else {
            plan.to_drop.insert(entry.id);
            plan.to_embed.push(file);
        }
    }
    // What is left was deleted (or excluded) since the last update.
    for entry in indexed.into_values() {
        plan.to_drop.insert(entry.id);
        plan.removed += 1;
    }
    Ok(plan)
}

/// Whether the relative path `path` is `scope` or lies under the folder `scope` ("" is the
/// root, which covers everything).
pub fn covers(scope: &str, path: &str) -> bool {
    scope.is_empty()
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The folders a relative '/'-separated path lies in, outermost first (`a/b/c.jpg`: `a`, `a/b`).
fn folders_of(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// The folder among `excluded` that `path` lies in (not `path` itself), if any.
pub fn excluding_folder<'a>(excluded: &'a [String], path: &str) -> Option<&'a str> {
    folders_of(path).find_map(|folder| {
        excluded
            .iter()
            .find(|x| x.as_str() == folder)
            .map(String::as_str)
    })
}

/// Where an absolute path really is: its folder resolved through links, its last component
/// kept as named (a link to a file is indexed under the link's name). `.` and `..` are
/// resolved first, textually, so that a path to a file that is gone still resolves.
pub fn real_location(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut normal = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    match (normal.parent(), normal.file_name()) {
        (Some(parent), Some(name)) => match real_location_of_folder(parent) {
            Some(folder) => folder.join(name),
            None => normal,
        },
        _ => normal,
    }
}

/// The canonical form of `folder`, or of its nearest existing ancestor joined with the rest.
fn real_location_of_folder(folder: &Path) -> Option<PathBuf> {
    if let Ok(real) = folder.canonicalize() {
        return Some(real);
    }
    let (parent, name) = (folder.parent()?, folder.file_name()?);
    Some(real_location_of_folder(parent)?.join(name))
}

/// xxh3-64 of a file's bytes, hex, read in blocks.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:016x}", hasher.digest()))
}

/// xxh3-64 of bytes already read, hex (the same value as [`hash_file`]).
pub fn hash_bytes(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn entry_for(file: &FoundFile, id: u64) -> Entry {
        Entry {
            id,
            path: file.path.clone(),
            size: file.size,
            mtime_ns: file.mtime_ns,
            hash: hash_file(&file.absolute).unwrap(),
            info: None,
        }
    }

    #[test]
    fn new_changed_touched_deleted_and_unchanged_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["keep.jpg", "touch.jpg", "edit.jpg", "gone.jpg"] {
            write(dir.path(), name, name.as_bytes());
        }
        write(dir.path(), "notes.txt", b"not an image");
        let (found, skipped) = scan(dir.path()).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(found.len(), 4);
        let entries: Vec<Entry> = found
            .iter()
            .zip(0..)
            .map(|(f, id)| entry_for(f, id))
            .collect();
        let id_of = |name: &str| entries.iter().find(|e| e.path == name).unwrap().id;
        let manifest = Manifest::new(dir.path().into(), "/c".into(), "f".into(), 4);

        std::fs::remove_file(dir.path().join("gone.jpg")).unwrap();
        write(dir.path(), "new.jpg", b"new");
        // Same size, other bytes; and same bytes with a later time.
        write(dir.path(), "edit.jpg", b"EDIT.JPG");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("touch.jpg"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        // edit.jpg may keep its old time on a coarse clock: force a different one.
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("edit.jpg"))
            .unwrap()
            .set_modified(later)
            .unwrap();

        let (found, skipped) = scan(dir.path()).unwrap();
        let plan = plan(&manifest, &entries, found, skipped).unwrap();
        let embed: Vec<&str> = plan.to_embed.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(embed, ["edit.jpg", "new.jpg"]);
        let dropped: HashSet<u64> = [id_of("edit.jpg"), id_of("gone.jpg")].into();
        assert_eq!(plan.to_drop, dropped);
        assert_eq!(plan.removed, 1);
        assert_eq!(plan.unchanged, 2);
        assert_eq!(
            plan.touched.keys().copied().collect::<Vec<_>>(),
            [id_of("touch.jpg")]
        );
        assert_eq!(plan.total, 4);
    }

    #[test]
    fn non_utf8_names_are_skipped_with_a_reason() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.jpg");
        std::fs::write(dir.path().join(name), b"x").unwrap();
        let (found, skipped) = scan(dir.path()).unwrap();
        assert!(found.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].error.contains("UTF-8"), "{:?}", skipped[0]);
    }
}
