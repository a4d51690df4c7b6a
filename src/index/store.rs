//! The on-disk form of a photo index: a folder (`LIB.lcx/`) holding
//!
//! - `manifest.json`: what the index is (root, checkpoint, weights fingerprint, embedding size,
//!   format version) and which chunks make it up. Replacing it is the one commit point.
//! - `chunks/<name>.npy` + `chunks/<name>.json`: the unit-length float32 rows of a batch of
//!   files and, in the same order, what each row is (id, path relative to the root, size,
//!   modification time, content hash). Chunks are written whole, under new names, before the
//!   manifest that lists them; a chunk is never changed once listed, only replaced.
//! - `ann-<generation>.usearch`: the approximate-search graph for one generation, if saved.
//! - `lock`: `flock`ed by the one writer; readers take no lock.
//!
//! So a crash (SIGKILL, power cut) at any moment leaves the previous manifest and every chunk
//! it lists intact: at most the chunk being written is lost, and the next writer sweeps files no
//! manifest lists.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsio;
use crate::image::photo_info::PhotoInfo;

/// Written in every manifest, so that a folder of something else is not taken for an index.
pub const FORMAT: &str = "liteclip-index";
/// The newest layout this build reads and the one it writes. Version 2 added each photo's
/// metadata to the chunk entries ([`Entry::info`]); version 1 indexes are read, and upgraded by
/// their next update.
pub const VERSION: u32 = 2;
pub const MANIFEST: &str = "manifest.json";
const CHUNKS: &str = "chunks";
const LOCK: &str = "lock";
/// Rows embedded by the ranks of a distributed update, before rank 0 takes them in.
const STAGING: &str = "staging";

/// What the index is and which chunks it holds. Replaced atomically on every commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The indexed folder, absolute. Entry paths are relative to it.
    pub root: PathBuf,
    /// The checkpoint that embedded the rows, absolute (searches load it).
    pub checkpoint: PathBuf,
    /// [`crate::liteclip::LiteClip::fingerprint`] of those weights.
    pub fingerprint: String,
    pub embed_dim: i64,
    /// Incremented by every commit; names new chunk and graph files.
    pub generation: u64,
    /// The id the next embedded file gets (ids are never reused).
    pub next_id: u64,
    pub chunks: Vec<ChunkRef>,
    /// Files that could not be read, remembered with their size and time so that an unchanged
    /// one is not decoded again on every update.
    pub skipped: Vec<SkippedFile>,
    /// Paths taken out with `remove`: updates leave them out until `add` brings them back.
    pub excluded: Vec<String>,
    /// The saved approximate-search graph of this generation, if any.
    pub ann: Option<String>,
    /// Its content hash ([`super::scan::hash_file`]): a graph file that is not the one saved
    /// (damaged, replaced, crafted) is not loaded; the graph is built again from the rows.
    #[serde(default)]
    pub ann_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    pub name: String,
    pub rows: usize,
}

/// One indexed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: u64,
    /// Relative to the root, '/'-separated.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// xxh3-64 of the file's bytes, hex.
    pub hash: String,
    /// Date, camera, size and place, read when the file was embedded. Absent in indexes of
    /// format version 1: the next update reads it from the files, without embedding again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<PhotoInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedFile {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub error: String,
}

/// A chunk in memory: its entries and their rows, `entries.len() * dim` floats.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub name: String,
    pub entries: Vec<Entry>,
    pub vectors: Vec<f32>,
}

/// Whether `path` is relative, '/'-separated, and stays inside the folder it is relative to:
/// no empty, `.` or `..` component, no leading '/', no NUL.
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The error for an index folder that cannot be used as one.
pub fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadIndex {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl Manifest {
    /// The saved graph no longer matches the rows.
    pub fn forget_graph(&mut self) {
        self.ann = None;
        self.ann_hash = None;
    }

    pub fn new(root: PathBuf, checkpoint: PathBuf, fingerprint: String, embed_dim: i64) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            root,
            checkpoint,
            fingerprint,
            embed_dim,
            generation: 0,
            next_id: 0,
            chunks: Vec::new(),
            skipped: Vec::new(),
            excluded: Vec::new(),
            ann: None,
            ann_hash: None,
        }
    }

    /// Reads and checks `dir/manifest.json`: a clear error for a folder that is not an index,
    /// a damaged manifest, or one written by a newer liteclip.
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.exists() {
            return Err(Error::FileNotFound {
                path: dir.to_owned(),
                hint: Some(
                    "no index there; build one with `liteclip index PHOTOS/ --index ...`".into(),
                ),
            });
        }
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(dir, format!("not a liteclip index (no {MANIFEST})")))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(dir, format!("damaged index: {MANIFEST} is not JSON ({e})")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(
                dir,
                format!("not a liteclip index ({MANIFEST} is something else)"),
            ));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version > u64::from(VERSION) {
            return Err(bad(
                dir,
                format!(
                    "written by a newer liteclip (index format {version}; this version reads up \
                     to {VERSION}): upgrade liteclip, or rebuild the index"
                ),
            ));
        }
        serde_json::from_value(value)
            .map_err(|e| bad(dir, format!("damaged index: {MANIFEST}: {e}")))
    }

    pub fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.rows).sum()
    }
}

/// The folder's chunk files, read and written by name.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Store {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chunk_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.join(CHUNKS).join(name);
        (base.with_extension("npy"), base.with_extension("json"))
    }

    pub fn ann_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a chunk's two files (each atomically). It is part of the index only once a
    /// committed manifest lists it.
    pub fn write_chunk(&self, chunk: &Chunk, dim: usize) -> Result<()> {
        self.write_chunk_files(chunk, dim)
    }

    fn write_chunk_files(&self, chunk: &Chunk, dim: usize) -> Result<()> {
        let (npy, json) = self.chunk_paths(&chunk.name);
        let rows = chunk.entries.len();
        debug_assert_eq!(chunk.vectors.len(), rows * dim);
        if !chunk.vectors.iter().all(|v| v.is_finite()) {
            return Err(Error::invalid(format!(
                "refusing to write chunk {}: an embedding holds a value that is not a finite \
                 number (is the model's output NaN?)",
                chunk.name
            )));
        }
        let matrix =
            tch::Tensor::f_from_slice(&chunk.vectors)?.f_view([rows as i64, dim as i64])?;
        crate::npy::write(&npy, &matrix)?;
        fsio::write_json(&json, &chunk.entries)
    }

    /// Reads what a listed chunk's rows are (not the rows themselves).
    pub fn read_chunk_entries(&self, chunk: &ChunkRef) -> Result<Vec<Entry>> {
        let (_, json) = self.chunk_paths(&chunk.name);
        let text = std::fs::read_to_string(&json).map_err(|e| Error::io(&json, e))?;
        let entries: Vec<Entry> = serde_json::from_str(&text)
            .map_err(|e| bad(&self.dir, format!("damaged chunk {}: {e}", json.display())))?;
        // An entry names a file under the root; a path that climbs out of it or is absolute
        // would make the index (and a server over it) read files it was never given.
        if let Some(entry) = entries.iter().find(|e| !is_plain_relative(&e.path)) {
            return Err(bad(
                &self.dir,
                format!(
                    "damaged chunk {}: the entry {:?} is not a plain path inside the indexed folder",
                    chunk.name, entry.path
                ),
            ));
        }
        if entries.len() != chunk.rows {
            return Err(bad(
                &self.dir,
                format!(
                    "damaged chunk {}: the manifest lists {} rows, the chunk {}",
                    chunk.name,
                    chunk.rows,
                    entries.len()
                ),
            ));
        }
        Ok(entries)
    }

    /// Reads a listed chunk, checking that its two files agree with the manifest.
    pub fn read_chunk(&self, chunk: &ChunkRef, dim: usize) -> Result<Chunk> {
        let (npy, _) = self.chunk_paths(&chunk.name);
        let entries = self.read_chunk_entries(chunk)?;
        let bytes = std::fs::read(&npy).map_err(|e| Error::io(&npy, e))?;
        let vectors = crate::npy::read_rows(&bytes, dim)
            .map_err(|m| bad(&self.dir, format!("damaged chunk {}: {m}", npy.display())))?;
        if let Some(row) = vectors
            .chunks(dim.max(1))
            .position(|row| !row.iter().all(|v| v.is_finite()))
        {
            return Err(bad(
                &self.dir,
                format!(
                    "damaged chunk {}: row {row} ({}) holds a value that is not a finite number; \
                     delete the index folder and index again",
                    chunk.name,
                    entries.get(row).map_or("?", |e| e.path.as_str())
                ),
            ));
        }
        if vectors.len() != chunk.rows * dim {
            return Err(bad(
                &self.dir,
                format!(
                    "damaged chunk {}: the manifest lists {} rows, its vectors file holds {}",
                    chunk.name,
                    chunk.rows,
                    vectors.len() / dim.max(1)
                ),
            ));
        }
        Ok(Chunk {
            name: chunk.name.clone(),
            entries,
            vectors,
        })
    }

    /// Writes rows a rank embedded (`staging/chunks/rank-R/NNNNNN.*`); they become part of the index
    /// only when an update takes them in (see [`Store::read_staged`]).
    pub fn write_staged(&self, rank: usize, seq: usize, chunk: &Chunk, dim: usize) -> Result<()> {
        let name = format!("rank-{rank}/{seq:06}");
        let staged = Store {
            dir: self.dir.join(STAGING),
        };
        let mut chunk = chunk.clone();
        chunk.name = name;
        staged.write_chunk_files(&chunk, dim)
    }

    /// Every staged chunk whose two files are complete (a chunk cut short is left out: its
    /// files are simply embedded again).
    pub fn read_staged(&self, dim: usize) -> Vec<Chunk> {
        let root = self.dir.join(STAGING);
        let Ok(ranks) = std::fs::read_dir(root.join(CHUNKS)) else {
            return Vec::new();
        };
        let staged = Store { dir: root };
        let mut chunks = Vec::new();
        for rank in ranks.flatten() {
            let Ok(files) = std::fs::read_dir(rank.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let name = format!(
                        "{}/{}",
                        rank.file_name().to_string_lossy(),
                        path.file_stem().unwrap_or_default().to_string_lossy()
                    );
                    let rows = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| serde_json::from_str::<Vec<Entry>>(&t).ok())
                        .map_or(0, |e| e.len());
                    if let Ok(chunk) = staged.read_chunk(&ChunkRef { name, rows }, dim) {
                        chunks.push(chunk);
                    }
                }
            }
        }
        chunks
    }

    /// Drops every staged row (after an update took them in).
    pub fn clear_staged(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join(STAGING));
    }

    /// Makes `manifest` the index: the one atomic step of every change.
    pub fn commit(&self, manifest: &Manifest) -> Result<()> {
        fsio::write_json(&self.dir.join(MANIFEST), manifest)
    }

    /// Removes chunk and graph files that `manifest` does not list (left by a writer that was
    /// stopped, or replaced by a later commit) and temporary files. Only the writer calls it.
    pub fn sweep(&self, manifest: &Manifest) {
        let mut keep: HashSet<String> = HashSet::new();
        for c in &manifest.chunks {
            keep.insert(format!("{}.npy", c.name));
            keep.insert(format!("{}.json", c.name));
        }
        keep.extend(manifest.ann.iter().cloned());
        let remove_unlisted = |dir: &Path, is_ours: &dyn Fn(&str) -> bool| {
            let Ok(listing) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in listing.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_ours(&name) && !keep.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        };
        remove_unlisted(&self.dir.join(CHUNKS), &|_| true);
        remove_unlisted(&self.dir, &|name| {
            name.ends_with(".usearch") || name.contains(".tmp-")
        });
    }
}

/// The single-writer lock of an index, held until dropped (closing the file releases it, also
/// when the process dies).
pub struct WriteLock {
    _file: File,
}

impl WriteLock {
    /// Takes the lock, waiting up to `wait` for another writer to finish.
    pub fn acquire(dir: &Path, wait: Duration) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        let path = dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let started = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(WriteLock { _file: file });
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(&path, error));
            }
            if started.elapsed() >= wait {
                return Err(Error::IndexLocked(format!(
                    "{}: another process is writing this index (waited {:.0} s); try again \
                     when it has finished",
                    dir.display(),
                    wait.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            path: format!("p{id}.jpg"),
            size: 10,
            mtime_ns: 5,
            hash: "00".into(),
            info: None,
        }
    }

    #[test]
    fn chunks_round_trip_and_unlisted_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let chunk = Chunk {
            name: "a".into(),
            entries: vec![entry(0), entry(1)],
            vectors: vec![1.0, 0.0, 0.0, 0.5, 0.5, 0.0],
        };
        store.write_chunk(&chunk, 3).unwrap();
        let orphan = Chunk {
            name: "b".into(),
            ..chunk.clone()
        };
        store.write_chunk(&orphan, 3).unwrap();
        let reference = ChunkRef {
            name: "a".into(),
            rows: 2,
        };
        let back = store.read_chunk(&reference, 3).unwrap();
        assert_eq!(back.entries, chunk.entries);
        assert_eq!(back.vectors, chunk.vectors);
        // A manifest that claims more rows than the files hold is refused, not misread.
        let wrong = ChunkRef {
            name: "a".into(),
            rows: 3,
        };
        assert!(matches!(
            store.read_chunk(&wrong, 3),
            Err(Error::BadIndex { .. })
        ));

        let mut manifest = Manifest::new("/r".into(), "/c".into(), "f".into(), 3);
        manifest.chunks.push(reference);
        store.commit(&manifest).unwrap();
        store.sweep(&manifest);
        assert!(dir.path().join("chunks/a.npy").exists());
        assert!(!dir.path().join("chunks/b.npy").exists());
        assert!(!dir.path().join("chunks/b.json").exists());
        assert_eq!(Manifest::read(dir.path()).unwrap().rows(), 2);
    }

    #[test]
    fn manifests_of_other_things_and_newer_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a liteclip index"), "{err}");
        std::fs::write(dir.path().join(MANIFEST), "{\"format\": \"x\"}").unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a liteclip index"), "{err}");
        std::fs::write(dir.path().join(MANIFEST), "{not json").unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        std::fs::write(
            dir.path().join(MANIFEST),
            format!("{{\"format\": \"{FORMAT}\", \"version\": 99}}"),
        )
        .unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("newer liteclip"), "{err}");
    }

    #[test]
    fn a_second_writer_waits_then_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriteLock::acquire(dir.path(), Duration::ZERO).unwrap();
        let second = WriteLock::acquire(dir.path(), Duration::from_millis(200));
        assert!(matches!(second, Err(Error::IndexLocked(_))));
        drop(first);
        WriteLock::acquire(dir.path(), Duration::ZERO).unwrap();
    }
}
