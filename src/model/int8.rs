//! Dynamic int8 linear layers for inference (`precision="int8"`): weights quantized once per
//! output channel, activations per row at each call, the product in int8 with int32
//! accumulation through libtorch's `_int_mm` (oneDNN, VNNI where the CPU has it), then scaled
//! back to fp32 with the bias added.
//!
//! The quantization of the activations and the scaling back are one pass each over the raw
//! buffers (rayon, row by row): done with eager tensor ops they would take five passes and
//! cost more than the int8 product saves.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// A linear layer's weight in int8: `[in, out]` (the layout `_int_mm` multiplies by), with the
/// per-output-channel scales and the bias in fp32.
#[derive(Debug)]
pub struct Int8Weight {
    weight: Tensor,
    scales: Vec<f32>,
    bias: Vec<f32>,
}

/// The largest magnitude int8 holds symmetrically.
const LEVELS: f32 = 127.0;

impl Int8Weight {
    /// Quantizes `ws` (`[out, in]`, fp32): each output channel symmetric, by its largest
    /// magnitude.
    pub fn new(ws: &Tensor, bs: &Tensor) -> Self {
        let ws = ws.detach().to_device(Device::Cpu).to_kind(Kind::Float);
        let amax = ws.abs().amax([1].as_slice(), true);
        let scales = amax.clamp_min(1e-12) / f64::from(LEVELS);
        let weight = (&ws / &scales)
            .round()
            .clamp(-f64::from(LEVELS), f64::from(LEVELS))
            .to_kind(Kind::Int8)
            .transpose(0, 1)
            .contiguous();
        let to_vec = |t: &Tensor| Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap_or_default();
        Int8Weight {
            weight,
            scales: to_vec(&scales),
            bias: to_vec(&bs.detach().to_device(Device::Cpu).to_kind(Kind::Float)),
        }
    }

    /// `x @ W^T + b` for fp32 `x` (`[..., in]`) on the CPU.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let k = *shape.last().expect("a linear layer's input has dimensions");
        let rows = x.to_kind(Kind::Float).contiguous().view([-1, k]);
        let (quantized, row_scales) = quantize_rows(&rows);
        let product = quantized.internal_int_mm(&self.weight);
        let out = self.scale_back(&product, &row_scales);
        *shape.last_mut().expect("checked above") = self.scales.len() as i64;
        out.view(shape.as_slice())
    }

    /// `acc[i][j] * row_scale[i] * scale[j] + bias[j]`, in fp32.
    fn scale_back(&self, product: &Tensor, row_scales: &[f32]) -> Tensor {
        let (m, n) = (row_scales.len(), self.scales.len());
        let product = product.contiguous();
        let out = Tensor::empty([m as i64, n as i64], (Kind::Float, Device::Cpu));
        // SAFETY: `product` is a contiguous int32 [m, n] CPU tensor and `out` a fresh float
        // one of the same shape; both outlive the slices, and only `out` is written.
        let (acc, dst) = unsafe {
            (
                std::slice::from_raw_parts(product.data_ptr() as *const i32, m * n),
                std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, m * n),
            )
        };
        let (scales, bias) = (&self.scales, &self.bias);
        dst.par_chunks_mut(n.max(1))
            .zip(acc.par_chunks(n.max(1)))
            .zip(row_scales.par_iter())
            .for_each(|((row, acc), &rs)| {
                for (((o, &a), &s), &b) in row.iter_mut().zip(acc).zip(scales).zip(bias) {
                    *o = a as f32 * rs * s + b;
                }
            });
        out
    }
}

/// Each row of a contiguous fp32 `[m, k]` tensor as int8 with its own scale (largest magnitude
/// / 127; rows of zeros get scale 1).
fn quantize_rows(rows: &Tensor) -> (Tensor, Vec<f32>) {
    let (m, k) = (rows.size()[0] as usize, rows.size()[1] as usize);
    let out = Tensor::empty([m as i64, k as i64], (Kind::Int8, Device::Cpu));
    let mut scales = vec![1f32; m];
    // SAFETY: `rows` is a contiguous float [m, k] CPU tensor and `out` a fresh int8 one of the
    // same shape; both outlive the slices, and only `out` is written.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(rows.data_ptr() as *const f32, m * k),
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut i8, m * k),
        )
    };
    dst.par_chunks_mut(k.max(1))
        .zip(src.par_chunks(k.max(1)))
        .zip(scales.par_iter_mut())
        .for_each(|((q, x), scale)| {
            let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
            if amax > 0.0 {
                *scale = amax / LEVELS;
            }
            let inverse = 1.0 / *scale;
            for (q, &v) in q.iter_mut().zip(x) {
                *q = (v * inverse).round().clamp(-LEVELS, LEVELS) as i8;
            }
        });
    (out, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The int8 layer is within the error of 8-bit quantization of the fp32 one, and exact on
    /// values that quantize without loss.
    /// A `[rows, cols]` tensor of values in `[lo, hi)` from the crate's seeded generator (not
    /// libtorch's global one, which tests running in parallel share).
    fn uniform(rows: i64, cols: i64, lo: f64, hi: f64, seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.range(lo, hi) as f32).collect();
        Tensor::from_slice(&values).view([rows, cols])
    }

    /// The int8 layer is within the error of 8-bit quantization of the fp32 one, and exact on
    /// values that quantize without loss.
    #[test]
    fn int8_linear_matches_fp32_within_quantization_error() {
        let ws = uniform(48, 96, -1.0, 1.0, 1);
        let bs = uniform(1, 48, -1.0, 1.0, 2).view([48]);
        let x = uniform(10, 96, -2.0, 2.0, 3).view([2, 5, 96]);
        let layer = Int8Weight::new(&ws, &bs);
        let got = layer.forward(&x);
        let want = x.linear(&ws, Some(&bs));
        assert_eq!(got.size(), [2, 5, 48]);
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(err < 0.02 * scale, "error {err} for outputs up to {scale}");
        assert!(err > 0.0);
        // Integers in [-127, 127] with a row and a column of 127s quantize exactly.
        let wi = uniform(8, 16, -127.0, 128.0, 4).floor();
        let _ = wi.narrow(1, 0, 1).fill_(127.0);
        let xi = uniform(3, 16, -127.0, 128.0, 5).floor();
        let _ = xi.narrow(1, 0, 1).fill_(127.0);
        let zero = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        let exact = Int8Weight::new(&wi, &zero).forward(&xi);
        let diff = (&exact - xi.linear(&wi, Some(&zero)))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-3, "{diff}");
        // A row of zeros stays zero (plus the bias).
        let z = layer.forward(&Tensor::zeros([1, 96], (Kind::Float, Device::Cpu)));
        assert!((z - bs.unsqueeze(0)).abs().max().double_value(&[]) < 1e-6);
    }
}
