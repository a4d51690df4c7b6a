//! Filtered search over a photo index's rows (`liteclip search --after/--under/--camera`): query
//! latency (p50/p99, one query at a time) and recall@10 against the exact filtered ranking, for
//! filters that keep 50%, 10% and 1% of the rows, exactly (a matrix product over every row,
//! then the filter) and through the graph (usearch's filtered search, which the index uses
//! when a filter keeps at least 1 row in `GRAPH_MIN_SHARE`; narrower ones are scored exactly).
//! Rows near 1,000 random centres, as photo embeddings cluster by content.
//!
//! cargo run --release --example bench_filtered_search -- 100000 1000000   (sizes)
//! Env: BENCH_DIM (default 256), BENCH_QUERIES (default 200).

use std::time::Instant;

use liteclip::internals::{Searcher, GRAPH_MIN_SHARE};

#[path = "rows.rs"]
mod rows;
use rows::clustered_rows;

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    sorted_ms[((sorted_ms.len() - 1) as f64 * p).round() as usize]
}

/// The top 10 of each query among the allowed rows, with p50 and p99 latency in ms.
fn run(
    searcher: &Searcher,
    queries: &[f32],
    dim: usize,
    allowed: &[bool],
) -> (Vec<Vec<usize>>, f64, f64) {
    let mut results = Vec::new();
    let mut ms = Vec::new();
    for q in queries.chunks_exact(dim) {
        let start = Instant::now();
        let hits = searcher.search_where(q, 10, Some(allowed), None).unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(hits.len(), 10, "a filter keeping this many rows returns 10");
        results.push(hits.into_iter().map(|h| h.0).collect());
    }
    ms.sort_by(f64::total_cmp);
    (results, percentile(&ms, 0.5), percentile(&ms, 0.99))
}

fn main() {
    let dim: usize = rows::setting("BENCH_DIM", 256);
    let n_queries: usize = rows::setting("BENCH_QUERIES", 200);
    let sizes = rows::sizes(100_000);
    println!("filtered search, dim {dim}, {n_queries} queries, k 10, clustered rows");
    println!("graph used from a share of 1/{GRAPH_MIN_SHARE} of the rows");
    println!("rows      kept   exact p50/p99 ms   graph p50/p99 ms   graph recall@10");
    for n in sizes {
        let data = clustered_rows(n, dim, 1);
        let queries = clustered_rows(n_queries, dim, 2);
        let exact = Searcher::exact(&data, dim).unwrap();
        let mut graph = Searcher::exact(&data, dim).unwrap();
        let start = Instant::now();
        graph.build_graph().unwrap();
        println!(
            "({n} rows: graph built in {:.1} s)",
            start.elapsed().as_secs_f64()
        );
        for every in [2usize, 10, 100] {
            // Every `every`-th row in a scattered order, as a date range or folder cuts a
            // library: not a contiguous block of rows.
            let allowed: Vec<bool> = (0..n)
                .map(|row| (row.wrapping_mul(2_654_435_761) >> 7) % every == 0)
                .collect();
            let (truth, e50, e99) = run(&exact, &queries, dim, &allowed);
            let (got, g50, g99) = run(&graph, &queries, dim, &allowed);
            let found: usize = truth
                .iter()
                .zip(&got)
                .map(|(t, g)| g.iter().filter(|r| t.contains(r)).count())
                .sum();
            let recall = found as f64 / (10 * truth.len()) as f64;
            println!(
                "{n:<9} {:>4.0}%   {e50:>6.1} / {e99:>6.1}    {g50:>6.1} / {g99:>6.1}    {recall:.4}",
                100.0 / every as f64
            );
        }
    }
}
