//! Near-duplicates: indexed photos whose embeddings are within a cosine threshold of each other
//! (resized, recompressed, slightly cropped copies of one photo), grouped as the connected
//! components of "close enough", each group with a suggested photo to keep.
//!
//! Pairs come from neighbour search, not from every pair, so that a million rows take minutes:
//! up to [`EXACT_PAIRS`] rows, blocked matrix products find every close pair exactly; above,
//! each row's nearest neighbours in the search graph are scored exactly, and the search widens
//! for a row whose neighbours all pass (a photo with many copies).

use rayon::prelude::*;
use serde::Serialize;
use tch::Tensor;

use super::ann::Searcher;
use crate::error::{Error, Result};

/// The cosine above which two photos count as copies unless told otherwise: resized,
/// recompressed and slightly cropped copies of a photo score above it with a trained model;
/// different photos of one scene mostly below (see the search guide to tune it).
pub const DEFAULT_THRESHOLD: f64 = 0.95;
/// Up to this many rows, close pairs are found exactly (every row against every row, in
/// blocks): 20,000 rows are 2 x 10^8 products of 256 floats, seconds on 2 cores.
pub const EXACT_PAIRS: usize = 20_000;
/// Graph neighbours looked at per row first, and at most.
const FIRST_NEIGHBOURS: usize = 16;
const MOST_NEIGHBOURS: usize = 1024;
/// The graph search's breadth for the neighbour pass: copies are a row's very nearest
/// neighbours, which a narrow search finds (the planted copies of benchmarks/bench_duplicates.rs
/// are all found at 32 and at 64), at a sixteenth of the cost of the breadth used for ranked
/// search (512).
const NEIGHBOUR_EXPANSION: usize = 64;
/// Scores held at once by the exact path: `block rows x N` floats, about 64 MB.
const BLOCK_SCORES: usize = 16 << 20;

/// A group of near-duplicates.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DuplicateGroup<P> {
    /// The copy to keep: the largest in pixels, then the oldest.
    pub keep: P,
    /// The others, in row order.
    pub duplicates: Vec<P>,
}

/// Every pair of rows `(a, b)`, `a < b`, whose cosine is at least `threshold`. Exact up to
/// [`EXACT_PAIRS`] rows or without a graph; through the graph above.
pub fn close_pairs(searcher: &Searcher, threshold: f32) -> Result<Vec<(usize, usize)>> {
    if !(threshold > -1.0 && threshold <= 1.0) {
        return Err(Error::invalid(format!(
            "threshold is a cosine similarity, above -1 and at most 1; got {threshold}"
        )));
    }
    if searcher.rows() <= EXACT_PAIRS || !searcher.has_graph() {
        exact_pairs(searcher.matrix(), threshold)
    } else {
        graph_pairs(searcher, threshold)
    }
}

fn exact_pairs(matrix: &Tensor, threshold: f32) -> Result<Vec<(usize, usize)>> {
    let n = matrix.size()[0];
    let block = (BLOCK_SCORES / (n.max(1) as usize)).clamp(1, 4096) as i64;
    let all = matrix.f_tr()?;
    let mut pairs = Vec::new();
    let mut start = 0;
    while start < n {
        let len = block.min(n - start);
        let scores = matrix.f_narrow(0, start, len)?.f_matmul(&all)?;
        let hits = scores.f_ge(f64::from(threshold))?.f_nonzero()?;
        let flat = Vec::<i64>::try_from(&hits.f_contiguous()?.f_view([-1])?)?;
        for hit in flat.chunks_exact(2) {
            let (a, b) = (start + hit[0], hit[1]);
            if a < b {
                pairs.push((a as usize, b as usize));
            }
        }
        start += len;
    }
    Ok(pairs)
}

fn graph_pairs(searcher: &Searcher, threshold: f32) -> Result<Vec<(usize, usize)>> {
    let matrix = searcher.matrix().f_contiguous()?;
    let dim = matrix.size()[1] as usize;
    let data = Vec::<f32>::try_from(&matrix.f_view([-1])?)?;
    let row = |r: usize| &data[r * dim..(r + 1) * dim];
    let n = searcher.rows();
    let Some(neighbours) = searcher.neighbours() else {
        return exact_pairs(searcher.matrix(), threshold);
    };
    searcher.set_expansion_search(NEIGHBOUR_EXPANSION);
    let pairs = neighbour_pairs(&neighbours, &row, n, threshold);
    searcher.set_expansion_search(super::ann::EXPANSION_SEARCH);
    let mut pairs = pairs?;
    pairs.sort_unstable();
    pairs.dedup();
    Ok(pairs)
}

/// Each row's close graph neighbours, widening the search for a row whose neighbours all pass.
fn neighbour_pairs<'a>(
    neighbours: &super::ann::Neighbours<'_>,
    row: &(impl Fn(usize) -> &'a [f32] + Sync),
    n: usize,
    threshold: f32,
) -> Result<Vec<(usize, usize)>> {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let per_row: Vec<Vec<(usize, usize)>> = (0..n)
        .into_par_iter()
        .map(|r| -> Result<Vec<(usize, usize)>> {
            let mut k = FIRST_NEIGHBOURS.min(n);
            loop {
                let found = neighbours.nearest(row(r), k)?;
                let close: Vec<usize> = found
                    .iter()
                    .copied()
                    .filter(|&other| other != r && dot(row(r), row(other)) >= threshold)
                    .collect();
                // Widen while every neighbour found passes: there may be more.
                let all_passed = close.len() + 1 >= found.len();
                if !all_passed || k >= MOST_NEIGHBOURS.min(n) {
                    return Ok(close.into_iter().map(|o| (r.min(o), r.max(o))).collect());
                }
                k = (k * 4).min(MOST_NEIGHBOURS).min(n);
            }
        })
        .collect::<Result<_>>()?;
    Ok(per_row.into_iter().flatten().collect())
}

/// The connected components of `pairs` over `n` rows that hold two rows or more, each in row
/// order, in the order of their first rows.
pub fn components(n: usize, pairs: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for &(a, b) in pairs {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for x in 0..n {
        let r = root(&mut parent, x);
        groups.entry(r).or_default().push(x);
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_join_chains_and_leave_singles_out() {
        let groups = components(7, &[(0, 3), (3, 5), (1, 2), (5, 0)]);
        assert_eq!(groups, vec![vec![0, 3, 5], vec![1, 2]]);
        assert!(components(3, &[]).is_empty());
    }

    /// Rows around 50 centres, four close copies of each, and 300 loners.
    fn copies(dim: usize) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(5);
        let unit = |v: Vec<f32>| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
        };
        let mut rows = Vec::new();
        for _ in 0..50 {
            let centre: Vec<f32> = (0..dim).map(|_| rng.uniform() as f32 - 0.5).collect();
            for _ in 0..4 {
                let copy: Vec<f32> = centre
                    .iter()
                    .map(|c| c + 0.02 * (rng.uniform() as f32 - 0.5))
                    .collect();
                rows.extend(unit(copy));
            }
        }
        for _ in 0..300 {
            rows.extend(unit((0..dim).map(|_| rng.uniform() as f32 - 0.5).collect()));
        }
        rows
    }

    #[test]
    fn graph_pairs_equal_exact_pairs() {
        let dim = 32;
        let data = copies(dim);
        let exact = Searcher::exact(&data, dim).unwrap();
        let mut graph = Searcher::exact(&data, dim).unwrap();
        graph.build_graph().unwrap();
        let want = exact_pairs(exact.matrix(), 0.95).unwrap();
        let got = graph_pairs(&graph, 0.95).unwrap();
        assert_eq!(want.len(), 50 * 6, "4 copies of 50 photos: 6 pairs each");
        assert_eq!(got, want);
        assert_eq!(components(exact.rows(), &got).len(), 50);
    }
}
