//! Nearest-neighbour search over an index's rows: exact (one matrix product) for small
//! indexes, where it is as fast as a graph and needs nothing saved, and an HNSW graph from
//! usearch above [`EXACT_BELOW`] rows. Either way the candidates are scored exactly with the
//! float32 rows, so a hit's score does not depend on the path that found it.

use std::collections::HashSet;
use std::path::Path;

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};
use usearch::{Index as Graph, IndexOptions, MetricKind, ScalarKind};

use crate::error::{Error, Result};
use crate::fsio;

/// Below this many rows a search is one exact matrix product: measured (BENCHMARKS.md,
/// benchmarks/bench_ann.rs) at 17 ms for 200,000 256-d rows on 2 cores, where a graph with
/// recall@10 near 0.8 on random vectors takes as long; exact results are worth that.
pub const EXACT_BELOW: usize = 250_000;

/// Graph settings (see the benchmark): connectivity 32 and a wide search, since photo
/// embeddings are 256-d and random-like directions are hard for any graph.
const CONNECTIVITY: usize = 32;
const EXPANSION_ADD: usize = 128;
pub const EXPANSION_SEARCH: usize = 512;
/// A filter must let through at least one row in this many for the graph to search with it.
/// Measured (BENCHMARKS.md, benchmarks/bench_filtered_search.rs, 100,000 rows): a filter keeping
/// half the rows searches faster through the graph than exactly, one keeping a tenth 3x slower
/// (the graph visits many rows the filter rejects); exact scoring is always complete.
pub const GRAPH_MIN_SHARE: usize = 4;
/// Threads that may search one graph at once (a server's workers, a notebook's pool).
const SEARCH_THREADS: usize = 64;

fn graph_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("vector search ({what}): {e}"))
}

/// Rows in memory, with the graph over them when there are enough. Rows and graph keys are the
/// ids of the files the rows embed, so that a commit that adds or drops rows changes the
/// searcher by those rows only ([`Searcher::sync`]): the graph is never rebuilt for a commit.
pub struct Searcher {
    dim: usize,
    /// `(N, dim)` float32 on the CPU: the rows of `chunks`, one chunk after another.
    matrix: Tensor,
    /// The id of each row, and the row of each id.
    ids: Vec<u64>,
    row_of: std::collections::HashMap<u64, usize>,
    /// The chunks the rows came from, in order: `(name, first row, rows)`.
    chunks: Vec<(String, usize, usize)>,
    /// Graph keys are ids.
    graph: Option<Graph>,
    /// Graphs this searcher built (a commit must not make it build another).
    builds: usize,
}

/// A searcher's graph and the row of each id: what finding neighbours from many threads needs
/// (the searcher itself holds tensors, which are not shared across threads).
pub struct Neighbours<'a> {
    graph: &'a Graph,
    row_of: &'a std::collections::HashMap<u64, usize>,
}

impl Neighbours<'_> {
    /// The rows of the graph's `k` nearest neighbours of `vector`.
    pub fn nearest(&self, vector: &[f32], k: usize) -> Result<Vec<usize>> {
        let found = self
            .graph
            .search(vector, k)
            .map_err(|e| graph_error("search", e))?;
        Ok(found
            .keys
            .iter()
            .filter_map(|id| self.row_of.get(id).copied())
            .collect())
    }
}

/// A chunk's rows, as [`Searcher::sync`] reads them.
#[derive(Clone)]
pub struct ChunkRows {
    pub ids: Vec<u64>,
    /// `ids.len() * dim` floats.
    pub vectors: Vec<f32>,
}

/// What a [`Searcher::sync`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub added: usize,
    pub removed: usize,
}

impl Searcher {
    /// Exact search over `vectors` (`rows * dim` floats), each row's id its number.
    pub fn exact(vectors: &[f32], dim: usize) -> Result<Self> {
        let rows = vectors.len() / dim.max(1);
        let mut searcher = Searcher::empty(dim)?;
        let all = ChunkRows {
            ids: (0..rows as u64).collect(),
            vectors: vectors.to_vec(),
        };
        searcher.sync(&[String::new()], &mut |_| Ok(all.clone()))?;
        Ok(searcher)
    }

    /// No rows yet.
    pub fn empty(dim: usize) -> Result<Self> {
        Ok(Searcher {
            dim,
            matrix: Tensor::f_zeros([0, dim as i64], (Kind::Float, Device::Cpu))?,
            ids: Vec::new(),
            row_of: Default::default(),
            chunks: Vec::new(),
            graph: None,
            builds: 0,
        })
    }

    /// Graphs this searcher has built from scratch.
    pub fn graph_builds(&self) -> usize {
        self.builds
    }

    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Makes the rows those of the chunks named `wanted`, in that order: chunks held already
    /// are kept, the others are read with `read`. The graph, if there is one, follows by ids:
    /// the ids that left are removed from it, the new ones added.
    pub fn sync(
        &mut self,
        wanted: &[String],
        read: &mut dyn FnMut(&str) -> Result<ChunkRows>,
    ) -> Result<Synced> {
        let held: std::collections::HashMap<&str, (usize, usize)> = self
            .chunks
            .iter()
            .map(|(name, start, len)| (name.as_str(), (*start, *len)))
            .collect();
        let mut parts = Vec::with_capacity(wanted.len());
        let mut ids = Vec::with_capacity(self.ids.len());
        let mut chunks = Vec::with_capacity(wanted.len());
        // Rows new to this searcher: what the graph must take in.
        let mut fresh: Vec<(u64, Vec<f32>)> = Vec::new();
        for name in wanted {
            let start = ids.len();
            match held.get(name.as_str()) {
                Some(&(from, len)) => {
                    parts.push(self.matrix.f_narrow(0, from as i64, len as i64)?);
                    ids.extend_from_slice(&self.ids[from..from + len]);
                }
                None => {
                    let rows = read(name)?;
                    let n = rows.ids.len();
                    if rows.vectors.len() != n * self.dim {
                        return Err(Error::invalid(format!(
                            "chunk {name}: {} floats for {n} rows of {}",
                            rows.vectors.len(),
                            self.dim
                        )));
                    }
                    parts.push(
                        Tensor::f_from_slice(&rows.vectors)?.f_view([n as i64, self.dim as i64])?,
                    );
                    fresh.extend(
                        rows.ids
                            .iter()
                            .zip(rows.vectors.chunks_exact(self.dim))
                            .map(|(&id, v)| (id, v.to_vec())),
                    );
                    ids.extend_from_slice(&rows.ids);
                }
            }
            chunks.push((name.clone(), start, ids.len() - start));
        }
        let kept: HashSet<u64> = ids.iter().copied().collect();
        let before: HashSet<u64> = self.ids.iter().copied().collect();
        let gone: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !kept.contains(id))
            .collect();
        // A row read again under a new chunk name (its chunk was rewritten) is not new.
        fresh.retain(|(id, _)| !before.contains(id));
        if let Some(graph) = &self.graph {
            for id in &gone {
                graph.remove(*id).map_err(|e| graph_error("remove", e))?;
            }
            let threads = rayon::current_num_threads().max(SEARCH_THREADS);
            graph
                .reserve_capacity_and_threads(graph.size() + fresh.len(), threads)
                .map_err(|e| graph_error("reserve", e))?;
            fresh
                .par_iter()
                .try_for_each(|(id, vector)| graph.add(*id, vector))
                .map_err(|e| graph_error("add", e))?;
        }
        self.matrix = if parts.is_empty() {
            Tensor::f_zeros([0, self.dim as i64], (Kind::Float, Device::Cpu))?
        } else {
            Tensor::f_cat(&parts, 0)?
        };
        self.row_of = ids.iter().enumerate().map(|(row, &id)| (id, row)).collect();
        self.ids = ids;
        self.chunks = chunks;
        Ok(Synced {
            added: fresh.len(),
            removed: gone.len(),
        })
    }

    /// Candidates the graph search keeps (HNSW's `ef`): more finds more of the true
    /// neighbours, slower. Ranked search uses the default; the near-duplicate pass a narrower
    /// one while it runs (see `duplicates`).
    pub fn set_expansion_search(&self, expansion: usize) {
        if let Some(graph) = &self.graph {
            graph.change_expansion_search(expansion);
        }
    }

    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Searches exactly from now on.
    pub fn drop_graph(&mut self) {
        self.graph = None;
    }

    /// Builds the graph over the rows (on all cores).
    pub fn build_graph(&mut self) -> Result<()> {
        self.builds += 1;
        let rows = self.rows();
        let graph = Graph::new(&IndexOptions {
            dimensions: self.dim,
            metric: MetricKind::IP,
            quantization: ScalarKind::F32,
            connectivity: CONNECTIVITY,
            expansion_add: EXPANSION_ADD,
            expansion_search: EXPANSION_SEARCH,
            multi: false,
        })
        .map_err(|e| graph_error("create", e))?;
        let threads = rayon::current_num_threads().max(SEARCH_THREADS);
        graph
            .reserve_capacity_and_threads(rows, threads)
            .map_err(|e| graph_error("reserve", e))?;
        let data = self.flat()?;
        data.par_chunks_exact(self.dim)
            .zip(self.ids.par_iter())
            .try_for_each(|(vector, &id)| graph.add(id, vector))
            .map_err(|e| graph_error("add", e))?;
        self.graph = Some(graph);
        Ok(())
    }

    /// Saves the graph (atomically) to `path`.
    pub fn save_graph(&self, path: &Path) -> Result<()> {
        let Some(graph) = &self.graph else {
            return Ok(());
        };
        fsio::write_atomically(path, |tmp| {
            graph
                .save(&tmp.to_string_lossy())
                .map_err(|e| graph_error("save", e))
        })
    }

    /// Loads a graph saved by [`Searcher::save_graph`] for these rows from its file's bytes
    /// (which the caller has checked against the hash it recorded).
    pub fn load_graph(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        let graph = Graph::restore_from_buffer(bytes).map_err(|e| graph_error("load", e))?;
        if graph.size() != self.rows() || graph.dimensions() != self.dim {
            return Err(Error::invalid(format!(
                "{}: the saved graph holds {} rows of {} floats, the index {} of {}",
                path.display(),
                graph.size(),
                graph.dimensions(),
                self.rows(),
                self.dim
            )));
        }
        graph.change_expansion_search(EXPANSION_SEARCH);
        graph
            .reserve_capacity_and_threads(graph.size(), SEARCH_THREADS)
            .map_err(|e| graph_error("reserve", e))?;
        self.graph = Some(graph);
        Ok(())
    }

    /// The `k` rows most similar to the unit vector `query`, best first: `(row, cosine)`, rows
    /// in the order of the chunks last synced. Ties go to the lower row, so results are
    /// repeatable.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        self.search_where(query, k, None, None)
    }

    /// [`Searcher::search`] among the rows that `allowed` marks (all when None) and that score
    /// at least `min_score`. With a graph, a filter that lets through at least
    /// 1/[`GRAPH_MIN_SHARE`] of the rows is applied inside the graph search; a narrower one, a
    /// `k` above [`EXPANSION_SEARCH`], or a graph search that finds fewer than `k` allowed rows
    /// falls back to exact scoring, so `k` results come back whenever `k` rows are allowed.
    pub fn search_where(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&[bool]>,
        min_score: Option<f32>,
    ) -> Result<Vec<(usize, f32)>> {
        self.check_query(query, allowed)?;
        let allowed_rows = allowed.map_or(self.rows(), |a| a.iter().filter(|&&x| x).count());
        let k = k.min(allowed_rows);
        if k == 0 {
            return Ok(Vec::new());
        }
        let candidates = match &self.graph {
            Some(graph)
                if k <= EXPANSION_SEARCH && allowed_rows * GRAPH_MIN_SHARE >= self.rows() =>
            {
                self.graph_candidates(graph, query, k, allowed)?
            }
            _ => None,
        };
        let q = Tensor::f_from_slice(query)?.f_view([self.dim as i64, 1])?;
        let (rows, scores) = match candidates {
            Some(rows) => {
                let index = Tensor::f_from_slice(&rows)?;
                (rows, self.matrix.f_index_select(0, &index)?.f_matmul(&q)?)
            }
            None => ((0..self.rows() as i64).collect(), self.matrix.f_matmul(&q)?),
        };
        let scores = Vec::<f32>::try_from(&scores.f_view([-1])?.f_to_kind(Kind::Float)?)?;
        let mut order: Vec<usize> = (0..scores.len())
            .filter(|&i| allowed.is_none_or(|a| a[rows[i] as usize]))
            .filter(|&i| min_score.is_none_or(|m| scores[i] >= m))
            .collect();
        let cmp = |a: &usize, b: &usize| {
            scores[*b]
                .total_cmp(&scores[*a])
                .then(rows[*a].cmp(&rows[*b]))
        };
        let k = k.min(order.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, cmp);
            order.truncate(k);
        }
        order.sort_by(cmp);
        Ok(order
            .into_iter()
            .map(|i| (rows[i] as usize, scores[i]))
            .collect())
    }

    /// The graph's `k` nearest allowed rows, or None when it found fewer than `k` (a filter
    /// that cuts the graph into pieces the search does not reach).
    fn graph_candidates(
        &self,
        graph: &Graph,
        query: &[f32],
        k: usize,
        allowed: Option<&[bool]>,
    ) -> Result<Option<Vec<i64>>> {
        let found = match allowed {
            None => graph.search(query, k),
            Some(mask) => graph.filtered_search(query, k, |id| {
                self.row_of.get(&id).is_some_and(|&row| mask[row])
            }),
        }
        .map_err(|e| graph_error("search", e))?;
        let rows: Vec<i64> = found
            .keys
            .iter()
            .filter_map(|id| self.row_of.get(id))
            .filter(|&&row| allowed.is_none_or(|a| a[row]))
            .map(|&row| row as i64)
            .collect();
        Ok((rows.len() >= k).then_some(rows))
    }

    /// Every allowed row's score, exactly, in row order: `(row, cosine)` for those scoring at
    /// least `min_score`.
    pub fn scores_where(
        &self,
        query: &[f32],
        allowed: Option<&[bool]>,
        min_score: f32,
    ) -> Result<Vec<(usize, f32)>> {
        self.check_query(query, allowed)?;
        let q = Tensor::f_from_slice(query)?.f_view([self.dim as i64, 1])?;
        let scores = self.matrix.f_matmul(&q)?.f_view([-1])?;
        let scores = Vec::<f32>::try_from(&scores.f_to_kind(Kind::Float)?)?;
        Ok(scores
            .into_iter()
            .enumerate()
            .filter(|&(row, score)| allowed.is_none_or(|a| a[row]) && score >= min_score)
            .collect())
    }

    /// The stored row of the file `id`, if this searcher holds it.
    pub fn vector_of(&self, id: u64) -> Result<Option<Vec<f32>>> {
        let Some(&row) = self.row_of.get(&id) else {
            return Ok(None);
        };
        let row = self.matrix.f_get(row as i64)?.f_contiguous()?;
        Ok(Some(Vec::<f32>::try_from(&row)?))
    }

    fn check_query(&self, query: &[f32], allowed: Option<&[bool]>) -> Result<()> {
        if query.len() != self.dim {
            return Err(Error::invalid(format!(
                "the query has {} dimensions, the index {}",
                query.len(),
                self.dim
            )));
        }
        if allowed.is_some_and(|a| a.len() != self.rows()) {
            return Err(Error::invalid(format!(
                "a filter over {} rows for a searcher of {}",
                allowed.map_or(0, <[bool]>::len),
                self.rows()
            )));
        }
        Ok(())
    }

    /// The rows, `(N, dim)` float32 on the CPU, in row order.
    pub fn matrix(&self) -> &Tensor {
        &self.matrix
    }

    /// The graph's neighbour search, shareable across threads (None without a graph).
    pub fn neighbours(&self) -> Option<Neighbours<'_>> {
        self.graph.as_ref().map(|graph| Neighbours {
            graph,
            row_of: &self.row_of,
        })
    }

    /// The id of a row.
    pub fn id_of(&self, row: usize) -> u64 {
        self.ids[row]
    }

    fn flat(&self) -> Result<Vec<f32>> {
        let t = self
            .matrix
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_view([-1])?;
        Ok(Vec::<f32>::try_from(&t)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.uniform() as f32 - 0.5).collect();
        for row in v.chunks_exact_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    #[test]
    fn exact_search_ranks_by_hand_computed_dot_products() {
        // Rows chosen so the order is known without the code: q = e0.
        let rows = [0.6f32, 0.8, 1.0, 0.0, -1.0, 0.0, 0.8, 0.6];
        let s = Searcher::exact(&rows, 2).unwrap();
        let hits = s.search(&[1.0, 0.0], 3).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 3, 0]);
        assert!((hits[1].1 - 0.8).abs() < 1e-6);
        assert_eq!(s.search(&[1.0, 0.0], 10).unwrap().len(), 4);
        assert!(s.search(&[1.0], 1).is_err());
    }

    #[test]
    fn the_graph_finds_what_exact_search_finds_and_survives_a_reload() {
        let (n, dim) = (3000, 32);
        let data = unit_rows(n, dim, 7);
        let exact = Searcher::exact(&data, dim).unwrap();
        let mut approx = Searcher::exact(&data, dim).unwrap();
        approx.build_graph().unwrap();
        let queries = unit_rows(50, dim, 8);
        let mut found = 0;
        for q in queries.chunks_exact(dim) {
            let truth: Vec<usize> = exact.search(q, 10).unwrap().iter().map(|h| h.0).collect();
            let got = approx.search(q, 10).unwrap();
            found += got.iter().filter(|h| truth.contains(&h.0)).count();
        }
        let recall = found as f64 / 500.0;
        assert!(recall >= 0.95, "recall@10 {recall}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.usearch");
        approx.save_graph(&path).unwrap();
        let mut reloaded = Searcher::exact(&data, dim).unwrap();
        reloaded
            .load_graph(&std::fs::read(&path).unwrap(), &path)
            .unwrap();
        let q = &queries[..dim];
        assert_eq!(reloaded.search(q, 5).unwrap(), approx.search(q, 5).unwrap());
    }

    #[test]
    fn filtered_searches_return_k_allowed_rows_on_both_paths() {
        let (n, dim) = (3000, 32);
        let data = unit_rows(n, dim, 11);
        let exact = Searcher::exact(&data, dim).unwrap();
        let mut graph = Searcher::exact(&data, dim).unwrap();
        graph.build_graph().unwrap();
        let queries = unit_rows(20, dim, 12);
        // A wide filter (every other row: through the graph) and a narrow one (1 row in 100:
        // exact scoring of every row).
        for (every, min_recall) in [(2usize, 0.9), (100, 1.0)] {
            let allowed: Vec<bool> = (0..n).map(|row| row % every == 0).collect();
            let mut found = 0;
            for q in queries.chunks_exact(dim) {
                // The truth: every row scored, the disallowed ones dropped, by hand.
                let mut truth: Vec<(usize, f32)> = exact
                    .search(q, n)
                    .unwrap()
                    .into_iter()
                    .filter(|(row, _)| allowed[*row])
                    .collect();
                truth.truncate(10);
                let got = graph.search_where(q, 10, Some(&allowed), None).unwrap();
                assert_eq!(got.len(), 10);
                assert!(got.iter().all(|(row, _)| allowed[*row]));
                let truth_rows: Vec<usize> = truth.iter().map(|h| h.0).collect();
                found += got.iter().filter(|h| truth_rows.contains(&h.0)).count();
                // A minimum score keeps only rows at or above it.
                let floor = truth[4].1;
                let above = exact
                    .search_where(q, 10, Some(&allowed), Some(floor))
                    .unwrap();
                assert_eq!(above, truth[..5]);
            }
            let recall = found as f64 / 200.0;
            assert!(recall >= min_recall, "every {every}: recall {recall}");
        }
        // More rows wanted than the filter lets through: all of them, exactly.
        let few: Vec<bool> = (0..n).map(|row| row < 3).collect();
        let got = graph
            .search_where(&queries[..dim], 10, Some(&few), None)
            .unwrap();
        let mut rows: Vec<usize> = got.iter().map(|h| h.0).collect();
        rows.sort();
        assert_eq!(rows, [0, 1, 2]);
    }

    /// Rows of chunk `c`: ids `c * 1000 + i`.
    fn chunk(c: u64, n: usize, dim: usize) -> ChunkRows {
        ChunkRows {
            ids: (0..n as u64).map(|i| c * 1000 + i).collect(),
            vectors: unit_rows(n, dim, c),
        }
    }

    #[test]
    fn a_sync_follows_added_and_dropped_chunks_without_rebuilding_the_graph() {
        let dim = 16;
        let read = |name: &str| -> Result<ChunkRows> {
            let c: u64 = name.parse().unwrap();
            Ok(chunk(c, if c == 3 { 150 } else { 400 }, dim))
        };
        let names = |list: &[u64]| list.iter().map(u64::to_string).collect::<Vec<_>>();
        let mut live = Searcher::empty(dim).unwrap();
        live.sync(&names(&[1, 2]), &mut |n| read(n)).unwrap();
        live.build_graph().unwrap();
        // Chunk 2 goes, chunk 3 comes (a commit that dropped files and added some).
        let synced = live.sync(&names(&[1, 3]), &mut |n| read(n)).unwrap();
        assert_eq!(
            synced,
            Synced {
                added: 150,
                removed: 400
            }
        );
        assert_eq!(live.rows(), 550);
        assert!(live.has_graph());
        // What a searcher made from scratch over the same rows finds, by id.
        let mut fresh = Searcher::empty(dim).unwrap();
        fresh.sync(&names(&[1, 3]), &mut |n| read(n)).unwrap();
        let mut found = 0;
        for q in unit_rows(40, dim, 99).chunks_exact(dim) {
            let truth: Vec<u64> = fresh
                .search(q, 10)
                .unwrap()
                .iter()
                .map(|h| fresh.id_of(h.0))
                .collect();
            let got: Vec<u64> = live
                .search(q, 10)
                .unwrap()
                .iter()
                .map(|h| live.id_of(h.0))
                .collect();
            assert!(
                got.iter().all(|id| id / 1000 != 2),
                "a dropped row was found"
            );
            found += got.iter().filter(|id| truth.contains(id)).count();
        }
        assert!(
            found as f64 / 400.0 >= 0.95,
            "recall@10 {}",
            found as f64 / 400.0
        );
        // A chunk rewritten under a new name with the same rows is not new to the graph.
        let same =
            |name: &str| -> Result<ChunkRows> { read(if name == "1b" { "1" } else { name }) };
        let synced = live
            .sync(&["1b".to_string(), "3".to_string()], &mut |n| same(n))
            .unwrap();
        assert_eq!(synced, Synced::default());
        assert_eq!(live.graph_builds(), 1);
    }
}
