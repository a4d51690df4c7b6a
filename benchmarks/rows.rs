//! What the Rust benchmarks share: their settings (row counts from the command line, numbers
//! from the environment), random unit rows, and rows clustered as photo embeddings are.

use liteclip::internals::Rng;

/// The row counts given on the command line, or `default` when none is.
pub fn sizes(default: usize) -> Vec<usize> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers of rows"))
        .collect();
    if sizes.is_empty() {
        vec![default]
    } else {
        sizes
    }
}

/// A number (or other value) from the environment variable `name`, or `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<f32> = (0..n * dim).map(|_| rng.uniform() as f32 - 0.5).collect();
    for row in v.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Unit rows near 1,000 shared centres (the same centres for rows and queries).
pub fn clustered_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let centres = unit_rows(1000, dim, 99);
    let noise = unit_rows(n, dim, seed);
    let mut rng = Rng::new(seed + 7);
    let mut v = Vec::with_capacity(n * dim);
    for row in noise.chunks_exact(dim) {
        let c = &centres[rng.below(1000) * dim..][..dim];
        let mixed: Vec<f32> = c.iter().zip(row).map(|(a, b)| a + 0.6 * b).collect();
        let norm = mixed.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.extend(mixed.iter().map(|x| x / norm));
    }
    v
}
