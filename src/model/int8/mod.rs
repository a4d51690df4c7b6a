//! Dynamic int8 linear layers for inference (`precision="int8"`): weights quantized once per
//! output channel, activations per row at each call, the product in int8 with int32
//! accumulation through libtorch's `_int_mm` (oneDNN, VNNI where the CPU has it), then scaled
//! back to fp32 with the bias added.
//!
//! Rows go through in chunks of about 1 MB ([`super::mlp::chunk_rows`]): the passes around
//! each product (quantize, scale back, GELU) then work in cache, and the buffers are allocated
//! once per call (a whole-batch int32 product of the first ConvNeXt stage is 77 MB, and
//! faulting in fresh pages for it cost more than the product). An MLP (`fc1 -> GELU -> fc2`)
//! is fused: fc1's product goes straight to fc2's int8 input in one pass
//! ([`kernels::gelu_quantize_row`]).

mod kernels;
mod team;

use tch::{Device, Kind, Tensor};

use super::mlp::{as_rows, chunk_rows, row_chunks, with_last_dim};
use kernels::LEVELS;

/// A linear layer's weight in int8: `[in, out]` (the layout `_int_mm` multiplies by), with the
/// per-output-channel scales and the bias in fp32.
#[derive(Debug)]
pub struct Int8Weight {
    weight: Tensor,
    scales: Vec<f32>,
    bias: Vec<f32>,
}

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

    fn in_features(&self) -> usize {
        self.weight.size()[0] as usize
    }

    fn out_features(&self) -> usize {
        self.scales.len()
    }

    /// `x @ W^T + b` for fp32 `x` (`[..., in]`) on the CPU.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (rows, shape) = as_rows(x, Kind::Float);
        let n = self.out_features();
        let out = Tensor::empty([rows.size()[0], n as i64], (Kind::Float, Device::Cpu));
        let mut input = Quantized::new(chunk_rows(n, rows.size()[0] as usize), self.in_features());
        let product = Product::new(input.rows, n);
        for (start, len) in row_chunks(rows.size()[0] as usize, input.rows) {
            input.quantize(&rows, start, len);
            product.multiply(&input, len, self);
            product.scale_back(&input.scales[..len], self, &out, start);
        }
        with_last_dim(out, shape, n as i64)
    }
}

/// `fc2(GELU(fc1(x)))` for fp32 `x` (`[..., in]`) on the CPU, fused as described above.
pub fn mlp(fc1: &Int8Weight, fc2: &Int8Weight, x: &Tensor) -> Tensor {
    let (rows, shape) = as_rows(x, Kind::Float);
    let (hidden, n) = (fc1.out_features(), fc2.out_features());
    let out = Tensor::empty([rows.size()[0], n as i64], (Kind::Float, Device::Cpu));
    let mut input = Quantized::new(
        chunk_rows(hidden, rows.size()[0] as usize),
        fc1.in_features(),
    );
    let mut activations = Quantized::new(input.rows, hidden);
    let (first, second) = (
        Product::new(input.rows, hidden),
        Product::new(input.rows, n),
    );
    for (start, len) in row_chunks(rows.size()[0] as usize, input.rows) {
        input.quantize(&rows, start, len);
        first.multiply(&input, len, fc1);
        first.gelu_quantize(&input.scales[..len], fc1, &mut activations, len);
        second.multiply(&activations, len, fc2);
        second.scale_back(&activations.scales[..len], fc2, &out, start);
    }
    with_last_dim(out, shape, n as i64)
}

/// A chunk's rows in int8 with their scales (a buffer reused from chunk to chunk).
struct Quantized {
    values: Tensor,
    scales: Vec<f32>,
    rows: usize,
    width: usize,
}

impl Quantized {
    fn new(rows: usize, width: usize) -> Self {
        Quantized {
            values: Tensor::empty([rows as i64, width as i64], (Kind::Int8, Device::Cpu)),
            scales: vec![1.0; rows],
            rows,
            width,
        }
    }

    /// The first `len` rows, as `_int_mm`'s left operand.
    fn head(&self, len: usize) -> Tensor {
        self.values.narrow(0, 0, len as i64)
    }

    /// Quantizes rows `start..start + len` of `x` (contiguous fp32, `width` wide).
    fn quantize(&mut self, x: &Tensor, start: usize, len: usize) {
        let w = self.width;
        // SAFETY: `x` is a contiguous fp32 CPU matrix `width` wide with at least
        // `start + len` rows; `values` is this buffer's own int8 storage, written only here.
        let (src, dst) = unsafe {
            (
                rows_of::<f32>(x, start, len, w),
                rows_of_mut::<i8>(&self.values, 0, len, w),
            )
        };
        let per = part_rows(len);
        let parts: Vec<_> = dst
            .chunks_mut(per * w)
            .zip(src.chunks(per * w))
            .zip(self.scales[..len].chunks_mut(per))
            .collect();
        team::run(parts, |((q, x), scales)| {
            for ((q, x), scale) in q.chunks_mut(w).zip(x.chunks(w)).zip(scales) {
                *scale = kernels::quantize_row(x, q);
            }
        });
    }
}

/// A chunk's int32 product (a buffer reused from chunk to chunk).
struct Product {
    values: Tensor,
    width: usize,
}

impl Product {
    fn new(rows: usize, width: usize) -> Self {
        Product {
            values: Tensor::empty([rows as i64, width as i64], (Kind::Int, Device::Cpu)),
            width,
        }
    }

    /// The product of the first `len` rows of `input` with `weight`.
    fn multiply(&self, input: &Quantized, len: usize, weight: &Int8Weight) {
        let out = self.values.narrow(0, 0, len as i64);
        let _ = input.head(len).internal_int_mm_out(&out, &weight.weight);
    }

    /// The first `len` rows, as fp32 with the bias, into rows `start..` of `out` (`[_, width]`).
    fn scale_back(&self, row_scales: &[f32], weight: &Int8Weight, out: &Tensor, start: usize) {
        let (w, len) = (self.width, row_scales.len());
        // SAFETY: `values` holds at least `len` rows of int32; `out` is a contiguous fp32 CPU
        // matrix `width` wide with at least `start + len` rows, written only here.
        let (acc, dst) = unsafe {
            (
                rows_of::<i32>(&self.values, 0, len, w),
                rows_of_mut::<f32>(out, start, len, w),
            )
        };
        let (scales, bias) = (&weight.scales, &weight.bias);
        let per = part_rows(len);
        let parts: Vec<_> = dst
            .chunks_mut(per * w)
            .zip(acc.chunks(per * w))
            .zip(row_scales.chunks(per))
            .collect();
        team::run(parts, |((out, acc), row_scales)| {
            let rows = out.chunks_mut(w).zip(acc.chunks(w)).zip(row_scales);
            for ((o, a), &rs) in rows {
                kernels::scale_back_row(a, rs, scales, bias, o);
            }
        });
    }

    /// The first `len` rows, with the bias and GELU, quantized into `next`.
    fn gelu_quantize(
        &self,
        row_scales: &[f32],
        weight: &Int8Weight,
        next: &mut Quantized,
        len: usize,
    ) {
        let w = self.width;
        // SAFETY: `values` holds at least `len` rows of int32; `next.values` is the next
        // layer's own int8 buffer, `width` wide, written only here.
        let (acc, dst) = unsafe {
            (
                rows_of::<i32>(&self.values, 0, len, w),
                rows_of_mut::<i8>(&next.values, 0, len, w),
            )
        };
        let (scales, bias) = (&weight.scales, &weight.bias);
        let per = part_rows(len);
        let parts: Vec<_> = dst
            .chunks_mut(per * w)
            .zip(acc.chunks(per * w))
            .zip(row_scales.chunks(per))
            .zip(next.scales[..len].chunks_mut(per))
            .collect();
        team::run(parts, |(((q, acc), row_scales), next_scales)| {
            let mut hidden = vec![0f32; w];
            let rows = q.chunks_mut(w).zip(acc.chunks(w)).zip(row_scales);
            for (((q, a), &rs), scale) in rows.zip(next_scales) {
                *scale = kernels::gelu_quantize_row(a, rs, scales, bias, &mut hidden, q);
            }
        });
    }
}

/// Rows per part when a chunk's `rows` rows are split among the threads.
fn part_rows(rows: usize) -> usize {
    rows.div_ceil(team::threads()).max(1)
}

/// Rows `start..start + len` of a contiguous CPU matrix `width` wide whose kind is `T`.
///
/// # Safety
/// `t` must be contiguous, on the CPU, of kind `T`, and not written while the slice lives.
unsafe fn rows_of<T>(t: &Tensor, start: usize, len: usize, width: usize) -> &[T] {
    debug_assert!(t.is_contiguous() && t.device() == Device::Cpu);
    debug_assert_eq!(t.kind().elt_size_in_bytes(), std::mem::size_of::<T>());
    let all = std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel());
    &all[start * width..(start + len) * width]
}

/// As [`rows_of`], writable.
///
/// # Safety
/// As [`rows_of`], and no other slice of `t` may live at the same time.
#[allow(clippy::mut_from_ref)]
unsafe fn rows_of_mut<T>(t: &Tensor, start: usize, len: usize, width: usize) -> &mut [T] {
    debug_assert!(t.is_contiguous() && t.device() == Device::Cpu);
    debug_assert_eq!(t.kind().elt_size_in_bytes(), std::mem::size_of::<T>());
    let all = std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel());
    &mut all[start * width..(start + len) * width]
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

    /// The fused MLP is within quantization error of fp32 `fc2(gelu(fc1(x)))`, across several
    /// chunks (2048 hidden units: 256 rows per chunk) and a partial last one.
    #[test]
    fn int8_mlp_matches_fp32_across_chunks() {
        let (w1, b1) = (
            uniform(2048, 64, -0.2, 0.2, 6),
            uniform(1, 2048, -0.5, 0.5, 7),
        );
        let (w2, b2) = (
            uniform(32, 2048, -0.05, 0.05, 8),
            uniform(1, 32, -0.5, 0.5, 9),
        );
        let (b1, b2) = (b1.view([2048]), b2.view([32]));
        let x = uniform(600, 64, -2.0, 2.0, 10).view([3, 200, 64]);
        let (fc1, fc2) = (Int8Weight::new(&w1, &b1), Int8Weight::new(&w2, &b2));
        let got = mlp(&fc1, &fc2, &x);
        let want = x.linear(&w1, Some(&b1)).gelu("none").linear(&w2, Some(&b2));
        assert_eq!(got.size(), [3, 200, 32]);
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(err < 0.03 * scale, "error {err} for outputs up to {scale}");
        // Unfused int8 layers agree with the fused path up to GELU's rounding.
        let unfused = fc2.forward(&fc1.forward(&x).gelu("none"));
        let diff = (&got - &unfused).abs().max().double_value(&[]);
        assert!(diff < 0.01 * scale, "{diff}");
        // Every row was computed (no chunk skipped): compare row by row.
        let row_err = (&got - &want).abs().amax([-1].as_slice(), false);
        assert!(row_err.max().double_value(&[]) < 0.03 * scale);
        assert!(got.isfinite().all().int64_value(&[]) == 1);
    }
}
