//! The image transform of liteCLIP (torchvision on PIL images):
//!
//! ```text
//! Resize(size, BICUBIC) -> CenterCrop(size) -> ToTensor() -> Normalize(CLIP mean, std)
//! ```
//!
//! The resize reproduces Pillow's `Image.resize(..., BICUBIC)` bit for bit: the same separable
//! convolution with an antialiasing support that widens with the scale, the same 22-bit
//! fixed-point weights, and the same rounding to 8 bits between the horizontal and the vertical
//! pass. Only the pixels that survive the center crop are computed; each of them is the exact
//! value Pillow would have produced for it.

use image::RgbImage;

/// CLIP's normalisation constants (per RGB channel), with the digits OpenAI published; they round
/// to the same f32 values torchvision's float32 tensors hold.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Pillow's `PRECISION_BITS` for 8-bit resampling: weights are fixed point with this many bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Size after torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the
/// longer one `int(size * long / short)` (truncated, as Python's `int` does).
pub fn resized_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Top-left offset of torchvision's `CenterCrop`: `int(round((in - out) / 2))`, where Python's
/// `round` sends halves to the even neighbour.
pub fn center_crop_offset(in_size: u32, out_size: u32) -> u32 {
    ((f64::from(in_size) - f64::from(out_size)) / 2.0)
        .round_ties_even()
        .max(0.0) as u32
}

/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps of one axis, for output indices `first..first + count` of a resize
/// of the input span `[box0, box1)` (of an axis `in_size` long) to `out_size` (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct AxisTaps {
    /// For each output index: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output index (unused tail entries are zero).
    weights: Vec<i32>,
    ksize: usize,
}

impl AxisTaps {
    fn new(in_size: u32, (box0, box1): (f64, f64), out_size: u32, first: u32, count: u32) -> Self {
        let scale = (box1 - box0) / f64::from(out_size);
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv = 1.0 / filter_scale;
        let mut bounds = Vec::with_capacity(count as usize);
        let mut weights = vec![0i32; ksize * count as usize];
        let mut taps = vec![0f64; ksize];
        for (i, out_index) in (first..first + count).enumerate() {
            let center = box0 + (f64::from(out_index) + 0.5) * scale;
            // `(int)` in C truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let n = (xmax - xmin).max(0) as usize;
            let mut total = 0.0;
            for (x, tap) in taps.iter_mut().enumerate().take(n) {
                let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * inv);
                *tap = w;
                total += w;
            }
            let row = &mut weights[i * ksize..(i + 1) * ksize];
            for x in 0..n {
                let w = if total != 0.0 {
                    taps[x] / total
                } else {
                    taps[x]
                };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                row[x] = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            bounds.push((xmin as usize, n));
        }
        AxisTaps {
            bounds,
            weights,
            ksize,
        }
    }

    /// Input indices `lo..hi` read by any of the output indices.
    fn input_span(&self) -> (usize, usize) {
        let lo = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let hi = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        (lo, hi)
    }
}

/// Pillow's `clip8`: round the fixed-point sum (it carries +0.5 from its start value) to 8 bits.
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes the shorter side to `size` and center-crops `size x size`, returning packed RGB.
pub fn resize_center_crop(image: &RgbImage, size: u32) -> Vec<u8> {
    let (in_w, in_h) = image.dimensions();
    let (res_w, res_h) = resized_size(in_w, in_h, size);
    let (crop_w, crop_h) = (size.min(res_w), size.min(res_h));
    let left = center_crop_offset(res_w, crop_w);
    let top = center_crop_offset(res_h, crop_h);
    let cols = AxisTaps::new(in_w, (0.0, f64::from(in_w)), res_w, left, crop_w);
    let rows = AxisTaps::new(in_h, (0.0, f64::from(in_h)), res_h, top, crop_h);
    resample(image, &cols, &rows)
}

/// Resizes the region `(left, top, width, height)` of the image to `out x out` (Pillow's
/// `Image.resize(size, BICUBIC, box=region)`, as torchvision's `RandomResizedCrop` does).
pub fn resize_region(image: &RgbImage, region: (u32, u32, u32, u32), out: u32) -> Vec<u8> {
    let (in_w, in_h) = image.dimensions();
    let (left, top, w, h) = region;
    let span = |start: u32, len: u32| (f64::from(start), f64::from(start + len));
    let cols = AxisTaps::new(in_w, span(left, w), out, 0, out);
    let rows = AxisTaps::new(in_h, span(top, h), out, 0, out);
    resample(image, &cols, &rows)
}

/// Pillow's two passes: horizontal over the input rows the vertical pass will read (8-bit
/// intermediate, as in Pillow), then vertical. The sums are the same integers Pillow adds;
/// only the loop order differs (integer addition does not care), arranged so that the
/// compiler can use SIMD lanes: four channels per pixel in the horizontal pass, whole rows in
/// the vertical one.
fn resample(image: &RgbImage, cols: &AxisTaps, rows: &AxisTaps) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been found to support AVX2.
        return unsafe { resample_avx2(image, cols, rows) };
    }
    resample_portable(image, cols, rows)
}

/// The same code, compiled for AVX2 (8 lanes of i32 multiply-add) and chosen at run time, so
/// that one build runs on every x86-64 CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_avx2(image: &RgbImage, cols: &AxisTaps, rows: &AxisTaps) -> Vec<u8> {
    resample_portable(image, cols, rows)
}

#[inline(always)]
fn resample_portable(image: &RgbImage, cols: &AxisTaps, rows: &AxisTaps) -> Vec<u8> {
    let (in_w, _) = image.dimensions();
    let (row_lo, row_hi) = rows.input_span();
    let (col_lo, col_hi) = cols.input_span();
    let src = image.as_raw();
    let stride = in_w as usize * 3;

    let mid_w = cols.bounds.len();
    let mid_stride = mid_w * 3;
    let mut mid = vec![0u8; (row_hi - row_lo) * mid_stride];
    // One input row widened to i32, four lanes per pixel (the fourth unused).
    let mut wide = vec![[0i32; 4]; col_hi - col_lo];
    for (r, y) in (row_lo..row_hi).enumerate() {
        let line = &src[y * stride + col_lo * 3..y * stride + col_hi * 3];
        for (w, p) in wide.iter_mut().zip(line.chunks_exact(3)) {
            *w = [i32::from(p[0]), i32::from(p[1]), i32::from(p[2]), 0];
        }
        let out = &mut mid[r * mid_stride..(r + 1) * mid_stride];
        for (x, &(start, n)) in cols.bounds.iter().enumerate() {
            let taps = &cols.weights[x * cols.ksize..x * cols.ksize + n];
            let pixels = &wide[start - col_lo..start - col_lo + n];
            let mut acc = [HALF; 4];
            for (&w, p) in taps.iter().zip(pixels) {
                for c in 0..4 {
                    acc[c] += p[c] * w;
                }
            }
            out[x * 3] = clip8(acc[0]);
            out[x * 3 + 1] = clip8(acc[1]);
            out[x * 3 + 2] = clip8(acc[2]);
        }
    }

    let mut dst = vec![0u8; rows.bounds.len() * mid_stride];
    let mut acc = vec![0i32; mid_stride];
    for (y, &(start, n)) in rows.bounds.iter().enumerate() {
        acc.fill(HALF);
        let taps = &rows.weights[y * rows.ksize..y * rows.ksize + n];
        for (j, &w) in taps.iter().enumerate() {
            let row =
                &mid[(start - row_lo + j) * mid_stride..(start - row_lo + j + 1) * mid_stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in dst[y * mid_stride..(y + 1) * mid_stride]
            .iter_mut()
            .zip(&acc)
        {
            *o = clip8(a);
        }
    }
    dst
}

/// torchvision's `RandomResizedCrop` box: a region of `scale` of the area and an aspect ratio
/// in `ratio` (log-uniform), ten tries, then a center crop clamped to `ratio`.
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut crate::rng::Rng,
) -> (u32, u32, u32, u32) {
    let area = f64::from(width) * f64::from(height);
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(log_lo, log_hi).exp();
        let w = (target * aspect).sqrt().round() as u32;
        let h = (target / aspect).sqrt().round() as u32;
        if w > 0 && h > 0 && w <= width && h <= height {
            let top = rng.below((height - h + 1) as usize) as u32;
            let left = rng.below((width - w + 1) as usize) as u32;
            return (left, top, w, h);
        }
    }
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((f64::from(width) / ratio.0).round() as u32).max(1))
    } else if in_ratio > ratio.1 {
        (
            ((f64::from(height) * ratio.1).round() as u32).max(1),
            height,
        )
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// `ToTensor()` + `Normalize(CLIP_MEAN, CLIP_STD)`: packed RGB bytes to channel-first floats,
/// with the same float32 operations as torchvision (`x / 255`, then `(x - mean) / std`).
pub fn normalize_to_chw(rgb: &[u8], out: &mut [f32]) {
    let plane = rgb.len() / 3;
    debug_assert_eq!(out.len(), rgb.len());
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(p[c]) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
}

/// The whole transform: an RGB image to a normalised `3 x size x size` float array.
pub fn preprocess(image: &RgbImage, size: u32) -> Vec<f32> {
    let rgb = resize_center_crop(image, size);
    let mut out = vec![0f32; rgb.len()];
    normalize_to_chw(&rgb, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_sizes_and_offsets() {
        assert_eq!(resized_size(451, 300, 224), (336, 224));
        assert_eq!(resized_size(300, 451, 224), (224, 336));
        assert_eq!(resized_size(4000, 30, 224), (29866, 224));
        assert_eq!(resized_size(1, 1, 224), (224, 224));
        // Python: int(round(1.5)) == 2, int(round(2.5)) == 2, int(round(0.5)) == 0.
        assert_eq!(center_crop_offset(227, 224), 2);
        assert_eq!(center_crop_offset(229, 224), 2);
        assert_eq!(center_crop_offset(225, 224), 0);
    }

    #[test]
    fn kernel_weights_sum_to_one_and_identity_is_exact() {
        let taps = AxisTaps::new(1000, (0.0, 1000.0), 224, 0, 224);
        for i in 0..224 {
            let s: i32 = taps.weights[i * taps.ksize..(i + 1) * taps.ksize]
                .iter()
                .sum();
            assert!(
                (s - (1 << PRECISION_BITS)).abs() <= taps.ksize as i32,
                "{s}"
            );
        }
        let img = RgbImage::from_fn(224, 224, |x, y| {
            image::Rgb([x as u8, y as u8, (x ^ y) as u8])
        });
        assert_eq!(resize_center_crop(&img, 224), img.as_raw().clone());
    }

    #[test]
    fn constant_images_stay_constant_at_any_scale() {
        for (w, h) in [(1, 1), (3, 700), (4000, 30), (225, 224), (97, 131)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([200, 13, 77]));
            let out = resize_center_crop(&img, 224);
            assert_eq!(out.len(), 224 * 224 * 3);
            assert!(out.chunks_exact(3).all(|p| p == [200, 13, 77]), "{w}x{h}");
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn normalisation_matches_the_formula() {
        let mut out = [0f32; 3];
        normalize_to_chw(&[255, 0, 128], &mut out);
        assert!((out[0] - (1.0 - 0.48145466) / 0.26862954).abs() < 1e-6);
        assert!((out[1] - (0.0 - 0.4578275) / 0.26130258).abs() < 1e-6);
        assert!((out[2] - (128.0 / 255.0 - 0.40821073) / 0.27577711).abs() < 1e-6);
    }
}
