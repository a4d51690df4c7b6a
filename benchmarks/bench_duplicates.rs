//! Near-duplicate pairs over a photo index's rows (`liteclip duplicates`): the time to find every
//! pair above the threshold, exactly (blocked matrix products, what the index does up to
//! `EXACT_PAIRS` rows) and through the search graph (each row's graph neighbours scored
//! exactly, what it does above), and how many of the planted copies the graph finds.
//!
//! Rows: clustered as photo embeddings are (near 1,000 centres, cosine about 0.75 between rows
//! of one cluster), of which 1% get one to three planted copies (cosine about 0.99 with their
//! original, as a resized or recompressed copy scores with a trained model).
//!
//! cargo run --release --example bench_duplicates -- 20000 1000000   (sizes, copies included)
//! Env: BENCH_DIM (default 256), BENCH_THRESHOLD (default 0.95).

use std::collections::HashSet;
use std::time::Instant;

use liteclip::internals::{close_pairs, components, Rng, Searcher, EXACT_PAIRS};

#[path = "rows.rs"]
mod rows;
use rows::{clustered_rows, unit_rows};

/// `n` rows: originals clustered, then copies of 1% of them (1-3 each) with a little noise.
/// Returns the rows and the planted (original, copy) row pairs.
fn rows_with_copies(n: usize, dim: usize) -> (Vec<f32>, Vec<(usize, usize)>) {
    let mut rng = Rng::new(11);
    let mut plan = Vec::new(); // (original, copies)
    let mut total = 0;
    let mut original = 0;
    while total < n {
        let copies = if rng.below(100) == 0 {
            1 + rng.below(3)
        } else {
            0
        };
        let copies = copies.min(n - total - 1);
        plan.push((original, copies));
        total += 1 + copies;
        original += 1;
    }
    let originals = clustered_rows(plan.len(), dim, 1);
    let noise = unit_rows(n, dim, 3);
    let mut data = originals.clone();
    let mut planted = Vec::new();
    let mut next = plan.len();
    for (row, copies) in plan {
        for _ in 0..copies {
            let source = &originals[row * dim..][..dim];
            let shake = &noise[next * dim..][..dim];
            let copy: Vec<f32> = source
                .iter()
                .zip(shake)
                .map(|(a, b)| a + 0.12 * b)
                .collect();
            let norm = copy.iter().map(|x| x * x).sum::<f32>().sqrt();
            data.extend(copy.iter().map(|x| x / norm));
            planted.push((row, next));
            next += 1;
        }
    }
    (data, planted)
}

fn main() {
    let dim: usize = rows::setting("BENCH_DIM", 256);
    let threshold: f32 = rows::setting("BENCH_THRESHOLD", 0.95);
    let sizes = rows::sizes(20_000);
    println!("near-duplicate pairs, dim {dim}, threshold {threshold}, clustered rows + copies");
    println!(
        "rows      planted  path   graph build s  pairs s  pairs found  planted found  groups"
    );
    for n in sizes {
        let (data, planted) = rows_with_copies(n, dim);
        let mut searcher = Searcher::exact(&data, dim).unwrap();
        let mut build = 0.0;
        let path = if n > EXACT_PAIRS {
            let start = Instant::now();
            searcher.build_graph().unwrap();
            build = start.elapsed().as_secs_f64();
            "graph"
        } else {
            "exact"
        };
        let start = Instant::now();
        let pairs = close_pairs(&searcher, threshold).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        let found: HashSet<(usize, usize)> = pairs.iter().copied().collect();
        let planted_found = planted
            .iter()
            .filter(|&&(a, b)| found.contains(&(a.min(b), a.max(b))))
            .count();
        let groups = components(n, &pairs).len();
        println!(
            "{n:<9} {:<8} {path:<6} {build:>13.1}  {seconds:>7.1}  {:>11}  {:>6} / {:<6}  {groups}",
            planted.len(),
            pairs.len(),
            planted_found,
            planted.len()
        );
    }
}
