//! Decoding a large JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain (libjpeg-turbo's
//! scaled inverse DCT, what PIL's `Image.draft` uses): a 12-megapixel photo that the model will
//! see at 224 pixels need not have all of its pixels reconstructed. The entropy decoding still
//! reads the whole file; the inverse transform, upsampling and colour conversion run on the
//! smaller image.
//!
//! Only the fast path ([`super::decode::Resolution::AtLeast`]) comes here, and anything it does
//! not handle (not a JPEG, CMYK, a libjpeg error) goes back to the exact decoder, which then
//! decodes it or gives its usual error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};

/// The scales libjpeg offers below 1, as denominators, coarsest first.
const DENOMINATORS: [u32; 3] = [8, 4, 2];

/// The coarsest scale `1/d` whose output's shorter side is at least `min_short_side` (libjpeg
/// rounds scaled sizes up), or `None` when only the full size is enough.
pub fn denominator_for(width: u32, height: u32, min_short_side: u32) -> Option<u32> {
    let short = width.min(height);
    DENOMINATORS
        .into_iter()
        .find(|&d| short.div_ceil(d) >= min_short_side)
}

/// The JPEG decoded at the coarsest scale that keeps `min_short_side` pixels on its shorter
/// side, EXIF orientation applied; `None` when the image is too small to gain from scaling, or
/// when libjpeg cannot decode it to RGB (the exact decoder then takes over). The caller has
/// checked the pixel limit and the end marker.
pub fn decode(bytes: &[u8], width: u32, height: u32, min_short_side: u32) -> Option<RgbImage> {
    let denominator = denominator_for(width, height, min_short_side)?;
    // libjpeg reports errors by unwinding (without the panic hook) through `C-unwind` frames.
    let decoded = catch_unwind(AssertUnwindSafe(|| -> std::io::Result<RgbImage> {
        let mut jpeg =
            mozjpeg::Decompress::with_markers(&[mozjpeg::Marker::APP(1)]).from_mem(bytes)?;
        jpeg.scale((8 / denominator) as u8);
        let orientation = jpeg
            .markers()
            .filter(|m| m.marker == mozjpeg::Marker::APP(1))
            .find_map(|m| m.data.strip_prefix(b"Exif\0\0").map(<[u8]>::to_vec));
        let mut started = jpeg.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        let rgb = RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| std::io::Error::other("scanlines do not fill the image"))?;
        let orientation = orientation
            .and_then(|exif| Orientation::from_exif_chunk(&exif))
            .unwrap_or(Orientation::NoTransforms);
        let mut image = DynamicImage::ImageRgb8(rgb);
        image.apply_orientation(orientation);
        Ok(image.into_rgb8())
    }));
    match decoded {
        Ok(Ok(rgb)) => Some(rgb),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarsest_scale_that_keeps_the_shorter_side() {
        // A phone photo for a 224-pixel model with a 2x margin: 3024 / 4 = 756 >= 448.
        assert_eq!(denominator_for(4032, 3024, 448), Some(4));
        assert_eq!(denominator_for(4032, 3024, 378), Some(8));
        assert_eq!(denominator_for(3024, 4032, 379), Some(4)); // 3024/8 = 378 is short by one
        assert_eq!(denominator_for(800, 600, 448), None);
        assert_eq!(denominator_for(1000, 900, 448), Some(2));
    }

    #[test]
    fn broken_jpegs_are_left_to_the_exact_decoder() {
        let garbage = [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xD9];
        assert!(decode(&garbage, 4000, 3000, 100).is_none());
    }
}
