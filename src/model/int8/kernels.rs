//! The per-row passes around the int8 products, written so that the compiler vectorizes them:
//! fixed-width lane accumulators for the reductions, branch-free rounding, and GELU from a
//! polynomial `erf` and `exp` instead of libm calls (which are scalar and, for `roundf`, took
//! a fifth of the int8 forward pass in the first version's profile).
//!
//! Each public function is compiled three times, for the baseline x86-64, AVX2 + FMA and
//! AVX-512, and picks at run time (the wheel must run on any x86-64; most CPUs have AVX2; the
//! AVX-512 version made the int8 image tower another ~10% faster on the development Xeon).

/// The largest magnitude int8 holds symmetrically.
pub const LEVELS: f32 = 127.0;

/// Lanes of the reductions: independent accumulators the compiler can keep in vector registers.
const LANES: usize = 16;

/// Defines `pub fn $name` that runs the body compiled for AVX2 + FMA where the CPU has them.
macro_rules! multiversioned {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if has_avx512() {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if has_avx2() {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// Whether the CPU runs the AVX-512 versions (F, BW and VL, with AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && has_avx2()
}

/// Whether the CPU runs the AVX2 versions (with FMA).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Round half to even for |x| < 2^22 (the classic add-and-subtract of 1.5 * 2^23), in two
/// vector additions rather than a call to `roundf`.
#[inline(always)]
fn round(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// The largest magnitude in `x` (0 for an empty slice; NaNs are ignored).
#[inline(always)]
fn amax(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            let v = v.abs();
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let rest = chunks.remainder().iter().map(|v| v.abs());
    lanes
        .into_iter()
        .chain(rest)
        .fold(0f32, |m, v| if v > m { v } else { m })
}

/// `x` as int8 with one symmetric scale (largest magnitude / 127; 1 for a row of zeros or one
/// that is not finite, whose values then saturate); returns the scale.
#[inline(always)]
fn quantize_with(x: &[f32], q: &mut [i8], amax: f32) -> f32 {
    let scale = if amax > 0.0 && amax.is_finite() {
        amax / LEVELS
    } else {
        1.0
    };
    let inverse = 1.0 / scale;
    for (q, &v) in q.iter_mut().zip(x) {
        // Comparisons rather than `clamp` so that NaN lands on a bound too.
        let v = v * inverse;
        let v = if v > -LEVELS { v } else { -LEVELS };
        let v = if v < LEVELS { v } else { LEVELS };
        // SAFETY: `v` is finite and within +-127. (`as i32` would saturate, which the
        // compiler does lane by lane; this conversion vectorizes.)
        *q = unsafe { round(v).to_int_unchecked::<i32>() } as i8;
    }
    scale
}

multiversioned! {
    /// Quantizes one row of activations into `q`; returns its scale.
    pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
        quantize_with(x, q, amax(x))
    }
}

multiversioned! {
    /// One row of an int8 product back to fp32: `acc[j] * row_scale * scales[j] + bias[j]`.
    pub fn scale_back_row(acc: &[i32], row_scale: f32, scales: &[f32], bias: &[f32], out: &mut [f32]) {
        for (((o, &a), &s), &b) in out.iter_mut().zip(acc).zip(scales).zip(bias) {
            *o = a as f32 * (s * row_scale) + b;
        }
    }
}

multiversioned! {
    /// Scales one row of fc1's product back, adds the bias, applies GELU (into `hidden`) and
    /// quantizes the result for fc2 (into `q`); returns the new row's scale. One pass over
    /// the product instead of writing and re-reading three fp32 tensors.
    pub fn gelu_quantize_row(
        acc: &[i32],
        row_scale: f32,
        scales: &[f32],
        bias: &[f32],
        hidden: &mut [f32],
        q: &mut [i8],
    ) -> f32 {
        for (((h, &a), &s), &b) in hidden.iter_mut().zip(acc).zip(scales).zip(bias) {
            *h = gelu(a as f32 * (s * row_scale) + b);
        }
        quantize_with(hidden, q, amax(hidden))
    }
}

/// GELU in its exact (erf) form, as `nn.GELU()` and BERT's `gelu` compute it.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf` to within 1.5e-7 (Abramowitz & Stegun 7.1.26), branch-free.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp_nonpositive(-(a * a))).copysign(x)
}

/// `e^x` for `x <= 0` to about 2e-7 relative: `2^n * e^r` with `|r| <= ln 2 / 2` and a
/// degree-6 Taylor polynomial; below -87 (and for NaN) it is e^-87.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = if x > -87.0 { x } else { -87.0 };
    let n = round(x * std::f32::consts::LOG2_E);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    // n is in [-126, 0]: 2^n is the float with biased exponent n + 127.
    // SAFETY: `n` is a finite integer in [-126, 0] (NaN took the bound above).
    let n = unsafe { n.to_int_unchecked::<i32>() };
    p * f32::from_bits(((n + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against libtorch's exact GELU, over the range activations take and beyond, to a few
    /// fp32 ulps.
    #[test]
    fn gelu_matches_libtorch() {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 / 400.0).collect();
        let want = Vec::<f32>::try_from(tch::Tensor::from_slice(&xs).gelu("none")).unwrap();
        for (&x, &w) in xs.iter().zip(&want) {
            let tolerance = 1e-6 * (1.0 + x.abs());
            assert!(
                (gelu(x) - w).abs() < tolerance,
                "gelu({x}) = {}, want {w}",
                gelu(x)
            );
        }
        assert_eq!(gelu(-200.0), 0.0);
        assert_eq!(gelu(200.0), 200.0);
    }

    #[test]
    fn quantize_row_rounds_to_nearest_and_saturates() {
        let x = [0.0, 1.0, -2.0, 0.5, 127.0, -63.5, 62.5];
        let mut q = [0i8; 7];
        assert_eq!(quantize_row(&x, &mut q), 1.0);
        assert_eq!(q, [0, 1, -2, 0, 127, -64, 62]);
        let mut z = [1i8; 3];
        assert_eq!(quantize_row(&[0.0; 3], &mut z), 1.0);
        assert_eq!(z, [0; 3]);
        let mut inf = [0i8; 2];
        quantize_row(&[f32::INFINITY, -3.0], &mut inf);
        assert_eq!(inf, [127, -3]);
        // Long rows take the lane path and its remainder.
        let long: Vec<f32> = (0..37).map(|i| i as f32 - 20.0).collect();
        let mut q = vec![0i8; 37];
        let scale = quantize_row(&long, &mut q);
        assert_eq!(scale, 20.0 / LEVELS);
        assert_eq!(q[0], -127);
        assert_eq!(q[36], (16.0f32 * LEVELS / 20.0).round() as i8);
    }
}
