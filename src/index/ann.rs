//! Nearest-neighbour search over an index's rows: exact (one matrix product) for small
//! indexes, where it is as fast as a graph and needs nothing saved, and an HNSW graph from
//! usearch above [`EXACT_BELOW`] rows. Either way the candidates are scored exactly with the
//! float32 rows, so a hit's score does not depend on the path that found it.

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
/// Threads that may search one graph at once (a server's workers, a notebook's pool).
const SEARCH_THREADS: usize = 64;

fn graph_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("vector search ({what}): {e}"))
}

/// Rows in memory, with the graph over them when there are enough.
pub struct Searcher {
    dim: usize,
    /// `(N, dim)` float32 on the CPU.
    matrix: Tensor,
    /// Graph keys are row numbers.
    graph: Option<Graph>,
}

impl Searcher {
    /// Exact search over `vectors` (`rows * dim` floats).
    pub fn exact(vectors: &[f32], dim: usize) -> Result<Self> {
        let rows = vectors.len() / dim.max(1);
        let matrix = Tensor::f_from_slice(vectors)?.f_view([rows as i64, dim as i64])?;
        Ok(Searcher {
            dim,
            matrix,
            graph: None,
        })
    }

    pub fn rows(&self) -> usize {
        self.matrix.size()[0] as usize
    }

    /// Candidates the graph search keeps (HNSW's `ef`): more finds more of the true
    /// neighbours, slower. For benchmarks; the index uses the default.
    pub fn set_expansion_search(&self, expansion: usize) {
        if let Some(graph) = &self.graph {
            graph.change_expansion_search(expansion);
        }
    }

    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Builds the graph over the rows (on all cores).
    pub fn build_graph(&mut self) -> Result<()> {
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
            .enumerate()
            .try_for_each(|(row, vector)| graph.add(row as u64, vector))
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

    /// Loads a graph saved by [`Searcher::save_graph`] for these rows.
    pub fn load_graph(&mut self, path: &Path) -> Result<()> {
        let graph = Graph::restore(&path.to_string_lossy()).map_err(|e| graph_error("load", e))?;
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

    /// The `k` rows most similar to the unit vector `query`, best first: `(row, cosine)`.
    /// Ties go to the lower row, so results are repeatable.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        if query.len() != self.dim {
            return Err(Error::invalid(format!(
                "the query has {} dimensions, the index {}",
                query.len(),
                self.dim
            )));
        }
        let k = k.min(self.rows());
        if k == 0 {
            return Ok(Vec::new());
        }
        let candidates: Vec<i64> = match &self.graph {
            Some(graph) => {
                let found = graph
                    .search(query, k)
                    .map_err(|e| graph_error("search", e))?;
                found.keys.iter().map(|&key| key as i64).collect()
            }
            None => (0..self.rows() as i64).collect(),
        };
        self.score_exactly(query, &candidates, k)
    }

    fn score_exactly(&self, query: &[f32], rows: &[i64], k: usize) -> Result<Vec<(usize, f32)>> {
        let q = Tensor::f_from_slice(query)?.f_view([self.dim as i64, 1])?;
        let scores = if rows.len() == self.rows() {
            self.matrix.f_matmul(&q)?
        } else {
            let index = Tensor::f_from_slice(rows)?;
            self.matrix.f_index_select(0, &index)?.f_matmul(&q)?
        }
        .f_view([-1])?;
        let scores = Vec::<f32>::try_from(&scores.f_to_kind(Kind::Float)?)?;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        let cmp = |a: &usize, b: &usize| {
            scores[*b]
                .total_cmp(&scores[*a])
                .then(rows[*a].cmp(&rows[*b]))
        };
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
        reloaded.load_graph(&path).unwrap();
        let q = &queries[..dim];
        assert_eq!(reloaded.search(q, 5).unwrap(), approx.search(q, 5).unwrap());
    }
}
