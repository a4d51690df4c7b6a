//! Search over a photo index's rows: recall@10 of the approximate path (usearch HNSW, as
//! `liteclip.Index` uses it above `EXACT_BELOW` rows) against exact search, query latency of
//! both (p50/p99, one query at a time, as `liteclip search` and the server run them), graph
//! build time, and bytes on disk per vector. Random unit vectors: harder to search than real
//! embeddings, which cluster.
//!
//! cargo run --release --example bench_ann -- 200000 1000000   (sizes; default 200000)
//! Env: BENCH_DIM (default 256, liteCLIP's embedding size), BENCH_QUERIES (default 300),
//! BENCH_EXPANSIONS (e.g. 256,512,1024: also report recall and latency at these search
//! widths), BENCH_DATA=clustered (rows near 1,000 random centres, as photo embeddings cluster
//! by content, instead of uniform random directions).
//!
//! Also timed: one commit as an index update makes them (1,024 rows dropped, 1,024 new ones
//! added) taken into the built graph by `Searcher::sync`, against building the graph again,
//! with recall after it.

use std::time::Instant;

use liteclip::internals::{ChunkRows, Searcher, EXACT_BELOW, EXPANSION_SEARCH};

#[path = "rows.rs"]
mod rows;
use rows::{clustered_rows, unit_rows};

/// Rows one commit of an index update adds (its default `commit_every`).
const COMMIT: usize = 1024;

/// Rows with consecutive ids from `first`.
fn rows_of(first: u64, vectors: &[f32], dim: usize) -> ChunkRows {
    let n = vectors.len() / dim;
    ChunkRows {
        ids: (first..first + n as u64).collect(),
        vectors: vectors.to_vec(),
    }
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    sorted_ms[((sorted_ms.len() - 1) as f64 * p).round() as usize]
}

fn time_queries(searcher: &Searcher, queries: &[f32], dim: usize) -> (Vec<Vec<usize>>, f64, f64) {
    let mut found = Vec::new();
    let mut ms = Vec::new();
    for q in queries.chunks_exact(dim) {
        let t = Instant::now();
        let hits = searcher.search(q, 10).expect("search");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        found.push(hits.into_iter().map(|h| h.0).collect());
    }
    ms.sort_by(f64::total_cmp);
    (found, percentile(&ms, 0.5), percentile(&ms, 0.99))
}

fn recall(truth: &[Vec<usize>], got: &[Vec<usize>]) -> f64 {
    let hits: usize = truth
        .iter()
        .zip(got)
        .map(|(t, g)| g.iter().filter(|r| t.contains(r)).count())
        .sum();
    hits as f64 / (10 * truth.len()) as f64
}

fn main() {
    let dim: usize = rows::setting("BENCH_DIM", 256);
    let n_queries: usize = rows::setting("BENCH_QUERIES", 300);
    let sizes = rows::sizes(200_000);
    eprintln!(
        "threads: {}, exact below {EXACT_BELOW} rows",
        rayon::current_num_threads()
    );
    for n in sizes {
        let clustered = std::env::var("BENCH_DATA").is_ok_and(|d| d == "clustered");
        let (data, queries) = if clustered {
            (clustered_rows(n, dim, 1), clustered_rows(n_queries, dim, 2))
        } else {
            (unit_rows(n, dim, 1), unit_rows(n_queries, dim, 2))
        };
        let exact = Searcher::exact(&data, dim).expect("exact");
        let (truth, exact_p50, exact_p99) = time_queries(&exact, &queries, dim);
        drop(exact);
        // Two chunks, as an index holds them: the last COMMIT rows apart, to be dropped later.
        let tail = COMMIT.min(n / 2);
        let split = (n - tail) * dim;
        let mut chunks = std::collections::HashMap::from([
            ("a", rows_of(0, &data[..split], dim)),
            ("b", rows_of((n - tail) as u64, &data[split..], dim)),
        ]);
        let mut approx = Searcher::empty(dim).expect("searcher");
        approx
            .sync(&["a".into(), "b".into()], &mut |name| {
                Ok(chunks[name].clone())
            })
            .expect("rows");
        drop(data);
        let t = Instant::now();
        approx.build_graph().expect("graph");
        let build_s = t.elapsed().as_secs_f64();
        let expansions: Vec<usize> = std::env::var("BENCH_EXPANSIONS").map_or(vec![0], |v| {
            v.split(',')
                .map(|e| e.parse().expect("BENCH_EXPANSIONS"))
                .collect()
        });
        for &expansion in expansions.iter().filter(|&&e| e > 0) {
            approx.set_expansion_search(expansion);
            let (got, p50, p99) = time_queries(&approx, &queries, dim);
            eprintln!(
                "ef {expansion}: recall@10 {:.4}, p50 {p50:.3} ms, p99 {p99:.3} ms",
                recall(&truth, &got)
            );
        }
        approx.set_expansion_search(EXPANSION_SEARCH);
        let (got, ann_p50, ann_p99) = time_queries(&approx, &queries, dim);
        let recall_before = recall(&truth, &got);
        // One commit: chunk "b" dropped, chunk "c" of new rows added.
        let new_rows = if clustered {
            clustered_rows(tail, dim, 3)
        } else {
            unit_rows(tail, dim, 3)
        };
        chunks.insert("c", rows_of(n as u64, &new_rows, dim));
        let t = Instant::now();
        approx
            .sync(&["a".into(), "c".into()], &mut |name| {
                Ok(chunks[name].clone())
            })
            .expect("commit");
        let commit_s = t.elapsed().as_secs_f64();
        let mut after = Searcher::empty(dim).expect("searcher");
        after
            .sync(&["a".into(), "c".into()], &mut |name| {
                Ok(chunks[name].clone())
            })
            .expect("rows");
        let (truth_after, _, _) = time_queries(&after, &queries, dim);
        drop(after);
        let (got_after, _, _) = time_queries(&approx, &queries, dim);
        let recall_after = recall(&truth_after, &got_after);
        let recall = recall_before;
        let dir = tempfile::tempdir().expect("tmp");
        let graph_path = dir.path().join("g.usearch");
        approx.save_graph(&graph_path).expect("save");
        let graph_bytes = std::fs::metadata(&graph_path).expect("stat").len();
        // Chunk rows (.npy float32) plus the graph; the entries' JSON is ~100 bytes a file more.
        let per_vector = (graph_bytes as f64 + (n * dim * 4) as f64) / n as f64;
        println!(
            "{{\"rows\": {n}, \"dim\": {dim}, \"queries\": {n_queries}, \"recall_at_10\": {recall:.4}, \
             \"exact_p50_ms\": {exact_p50:.3}, \"exact_p99_ms\": {exact_p99:.3}, \
             \"ann_p50_ms\": {ann_p50:.3}, \"ann_p99_ms\": {ann_p99:.3}, \
             \"graph_build_s\": {build_s:.1}, \"graph_bytes_per_vector\": {:.0}, \
             \"disk_bytes_per_vector\": {per_vector:.0}, \"commit_rows\": {tail}, \
             \"commit_sync_s\": {commit_s:.2}, \"recall_at_10_after_commit\": {recall_after:.4}}}",
            graph_bytes as f64 / n as f64
        );
    }
}
