//! A lasting, incremental index of a folder of photos: what `liteclip index` builds and
//! `liteclip search` and `liteclip.Index` query.
//!
//! - [`store`]: the folder on disk (manifest, chunks, graph, lock) and its one commit point.
//! - [`scan`]: what changed under the root since the last update.
//! - [`embedder`]: decoding overlapped with the model.
//! - [`ann`]: exact and approximate (usearch HNSW) nearest-neighbour search.
//! - [`filter`]: which photos a search may return (dates, folder, camera, score), and paging.
//! - [`duplicates`]: groups of near-duplicate photos, by neighbour search.
//! - [`query`]: a query from terms (texts, images, indexed photos) weighted and summed.
//!
//! An update takes the writer lock, re-reads the index, plans, drops deleted and changed files
//! (one commit), embeds new and changed ones committing a chunk at a time, and last saves the
//! search graph. Readers never lock: they read whichever manifest is current and notice a newer
//! one by its file identity.

pub mod ann;
pub mod duplicates;
pub mod embedder;
pub mod filter;
pub mod query;
pub mod scan;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::photo_info::{read_photo_info, PhotoInfo, TakenFrom};
use crate::liteclip::{InferenceOptions, LiteClip};
use ann::{ChunkRows, Searcher, EXACT_BELOW};
pub use duplicates::DuplicateGroup;
use embedder::{embed_files, BatchOutcome};
pub use filter::{PhotoFilter, SearchOptions, SortBy};
use scan::{FoundFile, Plan};
use store::{bad, Chunk, ChunkRef, Entry, Manifest, SkippedFile, Store, WriteLock};

/// A chunk is committed once it holds [`UpdateOptions::commit_every`] rows, or after this many
/// seconds, whichever comes first: a crash loses at most that much work.
const CHUNK_SECONDS: u64 = 30;

/// Rows per committed chunk unless told otherwise.
pub const COMMIT_EVERY: usize = 1024;
/// Seconds an update waits for another writer unless told otherwise.
pub const LOCK_WAIT_SECONDS: f64 = 10.0;

/// Settings of an update.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    pub batch_size: usize,
    /// Rows per committed chunk.
    pub commit_every: usize,
    /// How long to wait for another writer before giving up.
    pub lock_wait: Duration,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            batch_size: 64,
            commit_every: COMMIT_EVERY,
            lock_wait: Duration::from_secs_f64(LOCK_WAIT_SECONDS),
        }
    }
}

/// Where an update is, after each batch (handed to a callback that may stop the update by
/// returning an error, such as [`Error::Interrupted`]).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Files embedded or skipped so far, of `to_embed`.
    pub done: usize,
    pub to_embed: usize,
    pub skipped: usize,
    pub seconds: f64,
}

/// A file that is not in the index because it could not be read, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Absolute.
    pub path: String,
    pub error: String,
}

/// What an update (or `add`) did.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub index: PathBuf,
    pub root: PathBuf,
    /// Image files under the root (files taken out with `remove` not counted).
    pub total: usize,
    /// Files embedded: new ones and changed ones.
    pub embedded: usize,
    /// Entries dropped because their file was deleted.
    pub removed: usize,
    pub unchanged: usize,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
    /// Rows in the index afterwards.
    pub size: usize,
}

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// Stable for as long as the file is unchanged (a changed file gets a new id).
    pub id: u64,
    /// Absolute: the root joined with the indexed relative path.
    pub path: PathBuf,
    /// Cosine similarity with the query.
    pub score: f32,
    /// Bytes.
    pub file_size: u64,
    /// Date, camera, pixel size and place, when the index recorded them.
    pub info: Option<PhotoInfo>,
}

/// An indexed file as the index recorded it, for reading it again safely.
#[derive(Debug, Clone)]
pub struct IndexedFile {
    pub root: PathBuf,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

impl IndexedFile {
    /// Its bytes, if it is still the file that was indexed (see [`scan::read_if_indexed`]).
    pub fn read(&self) -> Result<Option<Vec<u8>>> {
        scan::read_if_indexed(&self.root, &self.path, self.size, self.mtime_ns)
    }
}

/// Identity of the manifest file a reader holds: a commit renames a new file over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    mtime_ns: i64,
}

fn stamp_of(dir: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(dir.join(store::MANIFEST)).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    })
}

pub struct PhotoIndex {
    store: Store,
    manifest: Manifest,
    /// The manifest as last read or committed: a commit with nothing new writes nothing.
    committed: Manifest,
    /// The entries of each listed chunk, in manifest order.
    chunk_entries: Vec<Vec<Entry>>,
    stamp: Option<Stamp>,
    /// Built on the first search, then kept in step with the commits it sees.
    searcher: Option<Searcher>,
    /// The manifest when the writer lock was taken (its graph is updated, not rebuilt).
    before_update: Option<Manifest>,
    /// Rows from which searches go through a graph ([`EXACT_BELOW`]).
    exact_below: usize,
}

impl std::fmt::Debug for PhotoIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhotoIndex")
            .field("dir", &self.store.dir())
            .field("root", &self.manifest.root)
            .field("rows", &self.len())
            .finish()
    }
}

impl PhotoIndex {
    /// Whether `dir` holds an index (its manifest), intact or not.
    pub fn exists(dir: &Path) -> bool {
        dir.join(store::MANIFEST).is_file()
    }

    /// Opens an existing index for searching and updating.
    pub fn open(dir: &Path) -> Result<Self> {
        let store = Store::new(dir);
        let (manifest, chunk_entries, stamp) = read_consistent(&store)?;
        Ok(PhotoIndex {
            store,
            committed: manifest.clone(),
            manifest,
            chunk_entries,
            stamp,
            searcher: None,
            before_update: None,
            exact_below: EXACT_BELOW,
        })
    }

    /// Changes the size from which searches go through a graph.
    #[cfg(test)]
    pub fn set_exact_below(&mut self, rows: usize) {
        self.exact_below = rows;
        self.searcher = None;
    }

    /// Opens the index at `dir` for `root` and `model`, creating it (empty) if it does not
    /// exist. An existing index must be of the same root and weights.
    pub fn create(dir: &Path, root: &Path, model: &LiteClip, checkpoint: &Path) -> Result<Self> {
        let root = existing_dir(root)?;
        if dir.join(store::MANIFEST).exists() {
            let index = Self::open(dir)?;
            if index.manifest.root != root {
                return Err(bad(
                    dir,
                    format!(
                        "this index is of {}, not {}; give another --index path for this folder",
                        index.manifest.root.display(),
                        root.display()
                    ),
                ));
            }
            index.check_model(model, checkpoint)?;
            return Ok(index);
        }
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .next()
                .is_some()
        {
            return Err(bad(
                dir,
                "exists and is not a liteclip index (no manifest.json); give a new path",
            ));
        }
        let checkpoint = checkpoint
            .canonicalize()
            .map_err(|e| Error::io(checkpoint, e))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let store = Store::new(dir);
        let manifest = Manifest::new(
            root,
            checkpoint,
            model.fingerprint()?,
            model.config().embed_dim,
        );
        {
            let _lock = WriteLock::acquire(dir, Duration::ZERO)?;
            store.commit(&manifest)?;
        }
        Self::open(dir)
    }

    /// Loads the checkpoint recorded in the index (or `checkpoint`, which must hold the same
    /// weights) for searching or updating.
    pub fn load_model(
        &self,
        checkpoint: Option<&Path>,
        options: &InferenceOptions,
    ) -> Result<LiteClip> {
        let path = checkpoint.unwrap_or(&self.manifest.checkpoint);
        let model = options.load(path, None).map_err(|e| match e {
            Error::FileNotFound { path, .. } if checkpoint.is_none() => Error::FileNotFound {
                path,
                hint: Some(format!(
                    "the checkpoint that built {} is gone; pass checkpoint= (--checkpoint) with \
                     the same weights",
                    self.store.dir().display()
                )),
            },
            other => other,
        })?;
        self.check_model(&model, path)?;
        Ok(model)
    }

    /// Refuses a model whose rows would not be comparable with the index's.
    pub fn check_model(&self, model: &LiteClip, checkpoint: &Path) -> Result<()> {
        let (dir, m) = (self.store.dir(), &self.manifest);
        let dim = model.config().embed_dim;
        if dim != m.embed_dim {
            return Err(bad(
                dir,
                format!(
                    "holds {}-d embeddings but {} makes {dim}-d ones: another model; search with \
                     the checkpoint that built the index ({})",
                    m.embed_dim,
                    checkpoint.display(),
                    m.checkpoint.display()
                ),
            ));
        }
        if model.fingerprint()? != m.fingerprint {
            return Err(bad(
                dir,
                format!(
                    "{} does not hold the weights that built this index ({}): its embeddings \
                     would not be comparable; use that checkpoint, or build a new index",
                    checkpoint.display(),
                    m.checkpoint.display()
                ),
            ));
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    pub fn root(&self) -> &Path {
        &self.manifest.root
    }

    pub fn checkpoint(&self) -> &Path {
        &self.manifest.checkpoint
    }

    pub fn embed_dim(&self) -> i64 {
        self.manifest.embed_dim
    }

    /// Commits so far (see [`Manifest::generation`]).
    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    pub fn len(&self) -> usize {
        self.manifest.rows()
    }

    /// Every indexed file: `(id, absolute path)`, in row order.
    pub fn files(&self) -> Vec<(u64, PathBuf)> {
        self.chunk_entries
            .iter()
            .flatten()
            .map(|e| (e.id, self.absolute(&e.path)))
            .collect()
    }

    fn absolute(&self, relative: &str) -> PathBuf {
        self.manifest.root.join(relative)
    }

    /// Re-reads the index if another process committed since it was read. Returns whether it
    /// did.
    pub fn refresh(&mut self) -> Result<bool> {
        if stamp_of(self.store.dir()) == self.stamp {
            return Ok(false);
        }
        let (manifest, chunk_entries, stamp) = read_consistent(&self.store)?;
        self.committed = manifest.clone();
        self.manifest = manifest;
        self.chunk_entries = chunk_entries;
        self.stamp = stamp;
        // The searcher stays: the next search brings it to these chunks by the rows they add
        // and drop, without rebuilding its graph.
        Ok(true)
    }

    /// The `k` indexed files closest to the unit vector `query`, best first.
    #[cfg(test)]
    pub fn search(&mut self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        let options = SearchOptions {
            top_k: k,
            ..Default::default()
        };
        self.search_with(query, &options)
    }

    /// The page of results `options` asks for: the photos passing its filter, closest to the
    /// unit vector `query` first (or newest first, see [`SortBy::Date`]), from `offset` on.
    pub fn search_with(&mut self, query: &[f32], options: &SearchOptions) -> Result<Vec<Hit>> {
        options.check()?;
        self.refresh()?;
        self.sync_searcher()?;
        let searcher = self.searcher.as_ref().expect("synced above");
        // Rows follow the chunks in manifest order, as the entries do.
        let allowed: Option<Vec<bool>> = (!options.filter.is_empty()).then(|| {
            self.chunk_entries
                .iter()
                .flatten()
                .map(|e| options.filter.allows(e))
                .collect()
        });
        let rows = match options.sort {
            SortBy::Score => {
                let wanted = options.offset.saturating_add(options.top_k);
                let rows =
                    searcher.search_where(query, wanted, allowed.as_deref(), options.min_score)?;
                rows.into_iter().skip(options.offset).collect::<Vec<_>>()
            }
            SortBy::Date => {
                let min_score = options.min_score.unwrap_or(-1.0);
                let mut rows = searcher.scores_where(query, allowed.as_deref(), min_score)?;
                let entries: Vec<&Entry> = self.chunk_entries.iter().flatten().collect();
                let taken = |row: usize| entries[row].info.as_ref().map(|i| i.taken.as_str());
                // Newest first; undated entries last; then by score, then by row.
                rows.sort_by(|a, b| {
                    taken(b.0)
                        .cmp(&taken(a.0))
                        .then(b.1.total_cmp(&a.1))
                        .then(a.0.cmp(&b.0))
                });
                rows.into_iter()
                    .skip(options.offset)
                    .take(options.top_k)
                    .collect()
            }
        };
        Ok(rows
            .into_iter()
            .map(|(row, score)| self.hit(row, score))
            .collect())
    }

    fn hit(&self, row: usize, score: f32) -> Hit {
        let entry = self.entry_at(row);
        Hit {
            id: entry.id,
            path: self.absolute(&entry.path),
            score,
            file_size: entry.size,
            info: entry.info.clone(),
        }
    }

    /// Groups of near-duplicate photos: those whose embeddings have a cosine of at least
    /// `threshold` with another of the group (directly or through others), each group with the
    /// photo to keep (the largest in pixels, then the oldest) and the others. Above
    /// [`duplicates::EXACT_PAIRS`] rows this needs a search graph: the saved one, or one built
    /// now (a minute or so below 250,000 rows, where none is saved).
    pub fn duplicates(&mut self, threshold: f32) -> Result<Vec<DuplicateGroup<PathBuf>>> {
        self.refresh()?;
        self.sync_searcher()?;
        let searcher = self.searcher.as_mut().expect("synced above");
        if searcher.rows() > duplicates::EXACT_PAIRS && !searcher.has_graph() {
            searcher.build_graph()?;
        }
        let pairs = duplicates::close_pairs(searcher, threshold)?;
        let entries: Vec<&Entry> = self.chunk_entries.iter().flatten().collect();
        let groups = duplicates::components(entries.len(), &pairs);
        // The keeper: most pixels, then the earliest date, then the first path.
        let rank = |e: &Entry| {
            let info = e.info.as_ref();
            let pixels = info.map_or(0, |i| u64::from(i.width) * u64::from(i.height));
            let taken = info.map_or("9999", |i| i.taken.as_str()).to_owned();
            (std::cmp::Reverse(pixels), taken, e.path.clone())
        };
        Ok(groups
            .into_iter()
            .map(|rows| {
                let keep = *rows
                    .iter()
                    .min_by_key(|&&r| rank(entries[r]))
                    .expect("a group has rows");
                DuplicateGroup {
                    keep: self.absolute(&entries[keep].path),
                    duplicates: rows
                        .iter()
                        .filter(|&&r| r != keep)
                        .map(|&r| self.absolute(&entries[r].path))
                        .collect(),
                }
            })
            .collect())
    }

    /// The stored embedding of the indexed file `id` (to search with a photo already in the
    /// index without decoding it again), or None when the index does not hold it.
    pub fn vector_of(&mut self, id: u64) -> Result<Option<Vec<f32>>> {
        self.refresh()?;
        self.sync_searcher()?;
        self.searcher.as_ref().expect("synced above").vector_of(id)
    }

    /// A folder given as absolute (under the root) or relative to the root, as the relative
    /// '/'-separated path a [`PhotoFilter`] takes.
    pub fn folder_under_root(&self, folder: &Path) -> Result<String> {
        let root = &self.manifest.root;
        let relative = if folder.is_absolute() {
            let located = scan::real_location(folder);
            located
                .strip_prefix(root)
                .map(Path::to_path_buf)
                .map_err(|_| {
                    Error::invalid(format!(
                        "under={}: not under the indexed folder {}",
                        folder.display(),
                        root.display()
                    ))
                })?
        } else {
            folder.to_path_buf()
        };
        relative
            .to_str()
            .map(|r| r.replace(std::path::MAIN_SEPARATOR, "/"))
            .ok_or_else(|| Error::invalid("under=: the folder name is not valid UTF-8"))
    }

    /// The id of the indexed file at `path` (absolute, or relative to the root), if indexed.
    pub fn id_of_path(&self, path: &Path) -> Option<u64> {
        let relative = self.entry_path(path)?;
        self.chunk_entries
            .iter()
            .flatten()
            .find(|e| e.path == relative)
            .map(|e| e.id)
    }

    /// The ids of the indexed files at `paths` (one pass over the entries, whatever their
    /// number), None for a path that is not indexed.
    pub fn ids_of_paths(&self, paths: &[PathBuf]) -> Vec<Option<u64>> {
        let ids: std::collections::HashMap<&str, u64> = self
            .chunk_entries
            .iter()
            .flatten()
            .map(|e| (e.path.as_str(), e.id))
            .collect();
        paths
            .iter()
            .map(|p| {
                self.entry_path(p)
                    .and_then(|r| ids.get(r.as_str()).copied())
            })
            .collect()
    }

    /// `path` (absolute, or relative to the root) as the entries write it.
    fn entry_path(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.manifest.root).unwrap_or(path);
        Some(relative.to_str()?.replace(std::path::MAIN_SEPARATOR, "/"))
    }

    /// The entry of row `row` (rows run through the chunks in manifest order).
    fn entry_at(&self, mut row: usize) -> &Entry {
        for entries in &self.chunk_entries {
            if row < entries.len() {
                return &entries[row];
            }
            row -= entries.len();
        }
        panic!("row {row} past the end of the index")
    }

    fn entry_of(&self, id: u64) -> Option<&Entry> {
        self.chunk_entries.iter().flatten().find(|e| e.id == id)
    }

    /// What reading the indexed file `id` again needs: the root, its absolute path, and the
    /// size and time it had when indexed (see [`scan::read_if_indexed`]).
    pub fn indexed_file(&self, id: u64) -> Option<IndexedFile> {
        self.entry_of(id).map(|e| IndexedFile {
            root: self.manifest.root.clone(),
            path: self.absolute(&e.path),
            size: e.size,
            mtime_ns: e.mtime_ns,
        })
    }

    /// Brings the searcher to the listed chunks (reading only the chunks it does not hold yet;
    /// see [`Searcher::sync`]). Above [`EXACT_BELOW`] rows a searcher without a graph takes the
    /// one saved with the manifest, if it is intact, and otherwise keeps searching exactly:
    /// only a writer builds a graph ([`PhotoIndex::finish`]), so a reader (a server) never
    /// stops answering for minutes to build one.
    fn sync_searcher(&mut self) -> Result<()> {
        let dim = self.manifest.embed_dim as usize;
        let mut searcher = match self.searcher.take() {
            Some(searcher) => searcher,
            None => Searcher::empty(dim)?,
        };
        loop {
            match sync_to(&mut searcher, &self.store, &self.manifest) {
                Ok(_) => break,
                // A writer replaced the chunk after our manifest was read: read it again.
                Err(Error::FileNotFound { .. }) if self.refresh()? => continue,
                Err(e) => return Err(e),
            }
        }
        if searcher.rows() < self.exact_below {
            searcher.drop_graph();
        } else if !searcher.has_graph() {
            if let Some(bytes) = self.saved_graph_bytes() {
                let path = self.store.dir().to_owned();
                if searcher.load_graph(&bytes, &path).is_err() {
                    searcher.drop_graph();
                }
            }
        }
        self.searcher = Some(searcher);
        Ok(())
    }

    /// The bytes of the graph the manifest names, if its hash is the one recorded (only such a
    /// file is handed to the graph loader).
    fn saved_graph_bytes(&self) -> Option<Vec<u8>> {
        saved_graph_bytes(&self.store, &self.manifest)
    }

    /// Brings the index up to date with its folder: embeds new and changed image files, drops
    /// deleted ones. Committed a chunk at a time; Ctrl-C commits what is done, then stops.
    pub fn update(
        &mut self,
        model: &LiteClip,
        options: &UpdateOptions,
        progress: &mut dyn FnMut(&Progress) -> Result<()>,
    ) -> Result<UpdateReport> {
        let started = Instant::now();
        let _lock = WriteLock::acquire(self.store.dir(), options.lock_wait)?;
        self.reload_for_writing()?;
        let root = existing_dir(&self.manifest.root)?;
        let (found, skipped) = scan::scan(&root)?;
        let entries: Vec<Entry> = self.chunk_entries.iter().flatten().cloned().collect();
        let plan = scan::plan(&self.manifest, &entries, found, skipped)?;
        self.manifest.skipped.clear();
        self.apply(model, plan, options, progress, started)
    }

    /// One rank's part of a distributed update: embeds the `rank`-th of `world` disjoint shares
    /// of the files an update would embed now, into staging files. Writes nothing else; the
    /// next [`PhotoIndex::update`] (on rank 0, after all ranks finish) takes the staged rows in
    /// instead of embedding those files again. Returns how many files this rank embedded.
    pub fn embed_share(
        &self,
        model: &LiteClip,
        rank: usize,
        world: usize,
        options: &UpdateOptions,
        progress: &mut dyn FnMut(&Progress) -> Result<()>,
    ) -> Result<usize> {
        if world == 0 || rank >= world {
            return Err(Error::invalid(format!("rank {rank} of a world of {world}")));
        }
        let started = Instant::now();
        self.check_model(model, &self.manifest.checkpoint)?;
        let root = existing_dir(&self.manifest.root)?;
        let (found, skipped) = scan::scan(&root)?;
        let entries: Vec<Entry> = self.chunk_entries.iter().flatten().cloned().collect();
        let plan = scan::plan(&self.manifest, &entries, found, skipped)?;
        let share: Vec<FoundFile> = plan
            .to_embed
            .into_iter()
            .skip(rank)
            .step_by(world)
            .collect();
        let dim = self.manifest.embed_dim as usize;
        let (total, mut done, mut embedded, mut seq) = (share.len(), 0, 0, 0);
        let mut writer = ChunkWriter::new(dim, options.commit_every);
        let mut unused_ids = 0;
        let mut flush = |writer: &mut ChunkWriter| -> Result<()> {
            if let Some(chunk) = writer.take() {
                self.store.write_staged(rank, seq, &chunk, dim)?;
                seq += 1;
            }
            Ok(())
        };
        let outcome = embed_files(model, share, options.batch_size, |batch: BatchOutcome| {
            done += batch.embedded.len() + batch.failed.len();
            embedded += batch.embedded.len();
            writer.push(batch.embedded, &mut unused_ids);
            if writer.is_due() {
                flush(&mut writer)?;
            }
            progress(&Progress {
                done,
                to_embed: total,
                skipped: done - embedded,
                seconds: started.elapsed().as_secs_f64(),
            })
        });
        flush(&mut writer)?;
        outcome.map(|()| embedded)
    }

    /// Indexes the given files now, also ones taken out with [`PhotoIndex::remove`]. A path
    /// is a file or a folder (every image under it), absolute or relative to the working
    /// folder, and must lie under the root. Unchanged files already indexed are left as they
    /// are. Nothing is done if a path does not exist, is not an image file, or lies in a folder
    /// taken out with `remove` (add that folder instead).
    pub fn add(
        &mut self,
        model: &LiteClip,
        paths: &[PathBuf],
        options: &UpdateOptions,
        progress: &mut dyn FnMut(&Progress) -> Result<()>,
    ) -> Result<UpdateReport> {
        let started = Instant::now();
        for path in paths {
            if std::fs::symlink_metadata(path).is_err() {
                return Err(Error::FileNotFound {
                    path: path.clone(),
                    hint: Some(
                        "add takes files or folders that exist under the indexed folder".into(),
                    ),
                });
            }
        }
        let _lock = WriteLock::acquire(self.store.dir(), options.lock_wait)?;
        self.reload_for_writing()?;
        let scopes = self.paths_under_root(paths)?;
        for (scope, given) in scopes.iter().zip(paths) {
            if let Some(folder) = scan::excluding_folder(&self.manifest.excluded, scope) {
                return Err(Error::invalid(format!(
                    "{} lies in {folder}/, which was taken out of the index with remove; add \
                     that folder to bring it back (then remove what should stay out)",
                    given.display()
                )));
            }
        }
        let wanted = |path: &str| scopes.iter().any(|scope| scan::covers(scope, path));
        let (found, skipped) = scan::scan(&self.manifest.root)?;
        let found: Vec<FoundFile> = found.into_iter().filter(|f| wanted(&f.path)).collect();
        let skipped: Vec<SkippedFile> = skipped.into_iter().filter(|s| wanted(&s.path)).collect();
        for (scope, given) in scopes.iter().zip(paths) {
            let is_file = std::fs::metadata(given).is_ok_and(|m| m.is_file());
            let named = |path: &str| path == scope.as_str();
            if is_file
                && !found.iter().any(|f| named(&f.path))
                && !skipped.iter().any(|s| named(&s.path))
            {
                return Err(Error::invalid(format!(
                    "{} is not an image file the index takes (extensions: {}; names starting \
                     with '.' are left out)",
                    given.display(),
                    crate::data::IMAGE_EXTENSIONS.join(", ")
                )));
            }
        }
        self.manifest.excluded.retain(|p| !wanted(p));
        self.manifest.skipped.retain(|s| !wanted(&s.path));
        let entries: Vec<Entry> = self
            .chunk_entries
            .iter()
            .flatten()
            .filter(|e| wanted(&e.path))
            .cloned()
            .collect();
        let plan = scan::plan(&self.manifest, &entries, found, skipped)?;
        self.apply(model, plan, options, progress, started)
    }

    /// Takes files out of the index, and keeps them out of later updates until they are added
    /// again. A path is a file or a folder (everything under it, also files put there later),
    /// absolute or relative to the working folder, under the root. Returns how many indexed
    /// files were removed. A path that is neither in the index nor already removed is an
    /// error naming it, and then nothing is removed: a mistyped path must not leave a private
    /// photo searchable without a word.
    pub fn remove(&mut self, paths: &[PathBuf], lock_wait: Duration) -> Result<usize> {
        let _lock = WriteLock::acquire(self.store.dir(), lock_wait)?;
        self.reload_for_writing()?;
        let scopes = self.paths_under_root(paths)?;
        let mut not_found = Vec::new();
        for (scope, given) in scopes.iter().zip(paths) {
            if scope.is_empty() {
                return Err(Error::invalid(format!(
                    "{} is the indexed folder itself; to drop the whole index, delete {}",
                    given.display(),
                    self.store.dir().display()
                )));
            }
            let known = self
                .chunk_entries
                .iter()
                .flatten()
                .any(|e| scan::covers(scope, &e.path))
                || self
                    .manifest
                    .skipped
                    .iter()
                    .any(|s| scan::covers(scope, &s.path))
                || scan::excluding_folder(&self.manifest.excluded, scope).is_some()
                || self.manifest.excluded.contains(scope);
            if !known {
                not_found.push(given.display().to_string());
            }
        }
        if !not_found.is_empty() {
            return Err(Error::invalid(format!(
                "not in the index, so nothing was removed: {} (paths are absolute or relative \
                 to the working folder {})",
                not_found.join(", "),
                std::env::current_dir().unwrap_or_default().display()
            )));
        }
        let wanted = |path: &str| scopes.iter().any(|scope| scan::covers(scope, path));
        let drop: HashSet<u64> = self
            .chunk_entries
            .iter()
            .flatten()
            .filter(|e| wanted(&e.path))
            .map(|e| e.id)
            .collect();
        // A removed folder's exclusion stands for the exclusions under it.
        self.manifest.excluded.retain(|p| !wanted(p));
        self.manifest.skipped.retain(|s| !wanted(&s.path));
        for scope in scopes {
            if !self.manifest.excluded.contains(&scope) {
                self.manifest.excluded.push(scope);
            }
        }
        self.rewrite_chunks(&drop, &HashMap::new())?;
        self.commit()?;
        self.finish()?;
        Ok(drop.len())
    }

    /// `paths` as the caller means them (absolute, or relative to the working folder) as
    /// '/'-separated paths relative to the root ("" for the root itself). A path outside the
    /// root is an error; for a relative path that names a file under the root only when taken
    /// from the root, the error says which path to give.
    fn paths_under_root(&self, paths: &[PathBuf]) -> Result<Vec<String>> {
        let root = &self.manifest.root;
        let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), e))?;
        paths
            .iter()
            .map(|given| {
                let located = scan::real_location(&cwd.join(given));
                let relative = located.strip_prefix(root).map_err(|_| {
                    let mut message = format!(
                        "{} is not under the indexed folder {}",
                        given.display(),
                        root.display()
                    );
                    if given.is_relative() {
                        message += &format!(
                            " (relative paths are taken from the working folder, {})",
                            cwd.display()
                        );
                        if root.join(given).exists() {
                            message += &format!("; did you mean {}?", root.join(given).display());
                        }
                    }
                    Error::invalid(message)
                })?;
                relative
                    .to_str()
                    .map(|r| r.replace(std::path::MAIN_SEPARATOR, "/"))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "{}: the file name is not valid UTF-8",
                            given.display()
                        ))
                    })
            })
            .collect()
    }

    /// Re-reads the index under the writer lock and sweeps what no manifest lists.
    fn reload_for_writing(&mut self) -> Result<()> {
        let (manifest, chunk_entries, stamp) = read_consistent(&self.store)?;
        self.store.sweep(&manifest);
        self.before_update = Some(manifest.clone());
        self.committed = manifest.clone();
        self.manifest = manifest;
        // What this writer commits is in the current format (entries without metadata are
        // still read, and filled in by the next update: see `fill_missing_info`).
        self.manifest.version = store::VERSION;
        self.chunk_entries = chunk_entries;
        self.stamp = stamp;
        self.searcher = None;
        Ok(())
    }

    fn apply(
        &mut self,
        model: &LiteClip,
        plan: Plan,
        options: &UpdateOptions,
        progress: &mut dyn FnMut(&Progress) -> Result<()>,
        started: Instant,
    ) -> Result<UpdateReport> {
        self.check_model(model, &self.manifest.checkpoint.clone())?;
        let Plan {
            total,
            to_embed,
            to_drop,
            touched,
            unchanged,
            skipped,
            removed,
        } = plan;
        self.manifest.skipped.extend(skipped);
        self.rewrite_chunks(&to_drop, &touched)?;
        self.fill_missing_info()?;
        self.commit()?;

        let to_embed_count = to_embed.len();
        let mut writer = ChunkWriter::new(self.manifest.embed_dim as usize, options.commit_every);
        let (staged, to_embed) = self.take_staged(to_embed);
        let (mut done, mut embedded) = (staged.len(), staged.len());
        let mut staged = staged.into_iter().peekable();
        while staged.peek().is_some() {
            let rows = writer.rows;
            writer.push(
                staged.by_ref().take(rows).collect(),
                &mut self.manifest.next_id,
            );
            self.commit_chunk(&mut writer)?;
        }
        let outcome = embed_files(
            model,
            to_embed,
            options.batch_size,
            |batch: BatchOutcome| {
                done += batch.embedded.len() + batch.failed.len();
                embedded += batch.embedded.len();
                self.manifest
                    .skipped
                    .extend(batch.failed.into_iter().map(|(file, error)| SkippedFile {
                        path: file.path,
                        size: file.size,
                        mtime_ns: file.mtime_ns,
                        error,
                    }));
                writer.push(batch.embedded, &mut self.manifest.next_id);
                if writer.is_due() {
                    self.commit_chunk(&mut writer)?;
                }
                progress(&Progress {
                    done,
                    to_embed: to_embed_count,
                    skipped: self.manifest.skipped.len(),
                    seconds: started.elapsed().as_secs_f64(),
                })
            },
        );
        // What was embedded is kept, also when stopped by Ctrl-C.
        self.commit_chunk(&mut writer)?;
        outcome?;
        self.finish()?;
        self.store.clear_staged();
        Ok(UpdateReport {
            index: self.store.dir().to_owned(),
            root: self.manifest.root.clone(),
            total,
            embedded,
            removed,
            unchanged,
            skipped: self
                .manifest
                .skipped
                .iter()
                .map(|s| Skipped {
                    path: self.absolute(&s.path).to_string_lossy().into_owned(),
                    error: s.error.clone(),
                })
                .collect(),
            seconds: started.elapsed().as_secs_f64(),
            size: self.len(),
        })
    }

    /// Splits the files to embed into those a rank already embedded (staged rows of the same
    /// size and time) and the rest.
    fn take_staged(&self, files: Vec<FoundFile>) -> (Vec<embedder::Embedded>, Vec<FoundFile>) {
        let dim = self.manifest.embed_dim as usize;
        let mut staged: HashMap<String, (Entry, Vec<f32>)> = HashMap::new();
        for chunk in self.store.read_staged(dim) {
            for (entry, vector) in chunk
                .entries
                .into_iter()
                .zip(chunk.vectors.chunks_exact(dim))
            {
                staged.insert(entry.path.clone(), (entry, vector.to_vec()));
            }
        }
        let mut ready = Vec::new();
        let mut rest = Vec::new();
        for file in files {
            match staged.remove(&file.path) {
                Some((entry, vector))
                    if entry.size == file.size && entry.mtime_ns == file.mtime_ns =>
                {
                    let info = entry
                        .info
                        .unwrap_or_else(|| PhotoInfo::from_file_time(file.mtime_ns));
                    ready.push(embedder::Embedded {
                        file,
                        hash: entry.hash,
                        info,
                        vector,
                    })
                }
                _ => rest.push(file),
            }
        }
        (ready, rest)
    }

    /// Replaces every chunk holding a dropped or touched entry by one without the dropped
    /// rows and with the touched entries' new size and time (not committed yet).
    fn rewrite_chunks(
        &mut self,
        drop: &HashSet<u64>,
        touched: &HashMap<u64, FoundFile>,
    ) -> Result<()> {
        let dim = self.manifest.embed_dim as usize;
        for i in 0..self.manifest.chunks.len() {
            let affected = self.chunk_entries[i]
                .iter()
                .any(|e| drop.contains(&e.id) || touched.contains_key(&e.id));
            if !affected {
                continue;
            }
            let old = self.store.read_chunk(&self.manifest.chunks[i], dim)?;
            if old.entries.iter().any(|e| drop.contains(&e.id)) {
                // Rows go, and the saved graph still holds them: the manifest names no graph
                // until this update saves one brought up to date (a reader keeps syncing the
                // graph it holds, or searches exactly).
                self.manifest.forget_graph();
            }
            let mut chunk = Chunk {
                name: self.new_chunk_name(i),
                entries: Vec::new(),
                vectors: Vec::new(),
            };
            for (entry, vector) in old.entries.into_iter().zip(old.vectors.chunks_exact(dim)) {
                if drop.contains(&entry.id) {
                    continue;
                }
                let entry = match touched.get(&entry.id) {
                    Some(file) => Entry {
                        size: file.size,
                        mtime_ns: file.mtime_ns,
                        // Same bytes, so the same EXIF; a date taken from the file's time moves.
                        info: entry.info.map(|info| match info.taken_from {
                            TakenFrom::FileTime => PhotoInfo {
                                taken: PhotoInfo::from_file_time(file.mtime_ns).taken,
                                ..info
                            },
                            _ => info,
                        }),
                        ..entry
                    },
                    None => entry,
                };
                chunk.entries.push(entry);
                chunk.vectors.extend_from_slice(vector);
            }
            if !chunk.entries.is_empty() {
                self.store.write_chunk(&chunk, dim)?;
            }
            self.manifest.chunks[i] = ChunkRef {
                name: chunk.name,
                rows: chunk.entries.len(),
            };
            self.chunk_entries[i] = chunk.entries;
        }
        // Emptied chunks leave the manifest.
        let keep: Vec<bool> = self.manifest.chunks.iter().map(|c| c.rows > 0).collect();
        let mut flags = keep.iter();
        self.manifest.chunks.retain(|_| *flags.next().unwrap());
        let mut flags = keep.iter();
        self.chunk_entries.retain(|_| *flags.next().unwrap());
        Ok(())
    }

    /// Reads the metadata of entries that have none (indexed by a version that did not keep it)
    /// from their files, and rewrites their chunks with it: the rows stay, nothing is embedded
    /// again. A file that is no longer the one indexed, or cannot be read, is dated by its
    /// recorded modification time.
    fn fill_missing_info(&mut self) -> Result<()> {
        let dim = self.manifest.embed_dim as usize;
        for i in 0..self.manifest.chunks.len() {
            if self.chunk_entries[i].iter().all(|e| e.info.is_some()) {
                continue;
            }
            let mut chunk = self.store.read_chunk(&self.manifest.chunks[i], dim)?;
            let root = self.manifest.root.clone();
            chunk.entries.par_iter_mut().for_each(|entry| {
                if entry.info.is_some() {
                    return;
                }
                let absolute = root.join(&entry.path);
                let bytes = scan::read_if_indexed(&root, &absolute, entry.size, entry.mtime_ns);
                entry.info = Some(match bytes {
                    Ok(Some(bytes)) => read_photo_info(&bytes, entry.mtime_ns),
                    _ => PhotoInfo::from_file_time(entry.mtime_ns),
                });
            });
            chunk.name = self.new_chunk_name(i);
            self.store.write_chunk(&chunk, dim)?;
            self.manifest.chunks[i] = ChunkRef {
                name: chunk.name,
                rows: chunk.entries.len(),
            };
            self.chunk_entries[i] = chunk.entries;
        }
        Ok(())
    }

    /// A chunk name no file of the index has had: the generation it will be committed in.
    fn new_chunk_name(&self, slot: usize) -> String {
        format!("g{:08}-{slot:05}", self.manifest.generation + 1)
    }

    fn commit_chunk(&mut self, writer: &mut ChunkWriter) -> Result<()> {
        if let Some(mut chunk) = writer.take() {
            chunk.name = self.new_chunk_name(self.manifest.chunks.len());
            self.store.write_chunk(&chunk, writer.dim)?;
            self.manifest.chunks.push(ChunkRef {
                name: chunk.name,
                rows: chunk.entries.len(),
            });
            self.chunk_entries.push(chunk.entries);
            self.manifest.forget_graph();
        }
        self.commit()
    }

    /// Writes the manifest if it differs from the one last committed.
    fn commit(&mut self) -> Result<()> {
        if self.manifest == self.committed {
            return Ok(());
        }
        self.manifest.generation += 1;
        self.store.commit(&self.manifest)?;
        self.committed = self.manifest.clone();
        self.stamp = stamp_of(self.store.dir());
        self.searcher = None;
        Ok(())
    }

    /// Saves a search graph for the final rows if the index is big enough and has none for
    /// them (an unchanged index keeps its graph), and sweeps old files.
    fn finish(&mut self) -> Result<()> {
        let wants_graph = self.len() >= self.exact_below;
        // (A graph saved without a hash, by an older version, is saved again with one.)
        if wants_graph && self.manifest.ann_hash.is_none() {
            let searcher = self.graph_for_final_rows()?;
            let name = format!("ann-{:08}.usearch", self.manifest.generation + 1);
            let path = self.store.ann_path(&name);
            searcher.save_graph(&path)?;
            self.manifest.ann_hash = Some(scan::hash_file(&path)?);
            self.manifest.ann = Some(name);
            self.commit()?;
            self.searcher = Some(searcher);
        } else if !wants_graph && self.manifest.ann.is_some() {
            self.manifest.forget_graph();
            self.commit()?;
        }
        self.store.sweep(&self.manifest);
        Ok(())
    }

    /// A searcher with a graph over the final rows: the graph saved before this update (still
    /// on disk: old files are swept after this), brought up to date by the rows the update
    /// added and dropped; or, with none saved or intact, one built from scratch. At a million
    /// rows the first takes seconds, the second minutes.
    fn graph_for_final_rows(&mut self) -> Result<Searcher> {
        let mut searcher = Searcher::empty(self.manifest.embed_dim as usize)?;
        let before = self.before_update.take();
        let mut from_saved = false;
        if let Some(before) = before.filter(|b| b.ann.is_some()) {
            if let Some(bytes) = saved_graph_bytes(&self.store, &before) {
                sync_to(&mut searcher, &self.store, &before)?;
                from_saved = searcher.load_graph(&bytes, self.store.dir()).is_ok();
            }
        }
        sync_to(&mut searcher, &self.store, &self.manifest)?;
        if !from_saved {
            searcher.build_graph()?;
        }
        Ok(searcher)
    }
}

/// Brings `searcher` to the rows of `manifest`'s chunks, reading only the chunks it lacks.
fn sync_to(searcher: &mut Searcher, store: &Store, manifest: &Manifest) -> Result<ann::Synced> {
    let dim = manifest.embed_dim as usize;
    let names: Vec<String> = manifest.chunks.iter().map(|c| c.name.clone()).collect();
    let listed: HashMap<&str, &ChunkRef> = manifest
        .chunks
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    searcher.sync(&names, &mut |name| {
        read_chunk_rows(store, listed[name], dim)
    })
}

/// A chunk's ids and rows, for a [`Searcher`].
fn read_chunk_rows(store: &Store, chunk: &ChunkRef, dim: usize) -> Result<ChunkRows> {
    let chunk = store.read_chunk(chunk, dim)?;
    Ok(ChunkRows {
        ids: chunk.entries.iter().map(|e| e.id).collect(),
        vectors: chunk.vectors,
    })
}

/// The bytes of the graph `manifest` names, if they hash to what it recorded.
fn saved_graph_bytes(store: &Store, manifest: &Manifest) -> Option<Vec<u8>> {
    let (name, hash) = (manifest.ann.as_ref()?, manifest.ann_hash.as_ref()?);
    let bytes = std::fs::read(store.ann_path(name)).ok()?;
    (&scan::hash_bytes(&bytes) == hash).then_some(bytes)
}

/// Rows embedded since the last commit.
struct ChunkWriter {
    dim: usize,
    /// Rows that make a chunk due.
    rows: usize,
    entries: Vec<Entry>,
    vectors: Vec<f32>,
    since: Instant,
}

impl ChunkWriter {
    fn new(dim: usize, rows: usize) -> Self {
        ChunkWriter {
            dim,
            rows: rows.max(1),
            entries: Vec::new(),
            vectors: Vec::new(),
            since: Instant::now(),
        }
    }

    fn push(&mut self, rows: Vec<embedder::Embedded>, next_id: &mut u64) {
        for row in rows {
            self.entries.push(Entry {
                id: *next_id,
                path: row.file.path,
                size: row.file.size,
                mtime_ns: row.file.mtime_ns,
                hash: row.hash,
                info: Some(row.info),
            });
            *next_id += 1;
            self.vectors.extend_from_slice(&row.vector);
        }
    }

    fn is_due(&self) -> bool {
        self.entries.len() >= self.rows
            || (!self.entries.is_empty() && self.since.elapsed().as_secs() >= CHUNK_SECONDS)
    }

    fn take(&mut self) -> Option<Chunk> {
        self.since = Instant::now();
        if self.entries.is_empty() {
            return None;
        }
        Some(Chunk {
            name: String::new(),
            entries: std::mem::take(&mut self.entries),
            vectors: std::mem::take(&mut self.vectors),
        })
    }
}

/// The manifest and the entries of the chunks it lists, read as one state: if a writer
/// commits in between (a listed chunk is gone), it reads again.
fn read_consistent(store: &Store) -> Result<(Manifest, Vec<Vec<Entry>>, Option<Stamp>)> {
    let mut attempts = 0;
    loop {
        let stamp = stamp_of(store.dir());
        let manifest = Manifest::read(store.dir())?;
        match read_entries(store, &manifest) {
            Ok(entries) => return Ok((manifest, entries, stamp)),
            Err(Error::FileNotFound { .. }) if attempts < 10 && stamp_of(store.dir()) != stamp => {
                attempts += 1;
            }
            Err(Error::FileNotFound { path, .. }) => {
                return Err(bad(
                    store.dir(),
                    format!("damaged index: {} is listed but missing", path.display()),
                ))
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_entries(store: &Store, manifest: &Manifest) -> Result<Vec<Vec<Entry>>> {
    manifest
        .chunks
        .iter()
        .map(|c| store.read_chunk_entries(c))
        .collect()
}

fn existing_dir(root: &Path) -> Result<PathBuf> {
    if !root.is_dir() {
        return Err(Error::FileNotFound {
            path: root.to_owned(),
            hint: Some("expected the folder of photos to index".into()),
        });
    }
    root.canonicalize().map_err(|e| Error::io(root, e))
}

#[cfg(test)]
mod tests;
