//! Small JPEG previews of images (what a search page shows for each result).

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::RgbImage;

use crate::error::{Error, Result};

/// JPEG quality of previews: small files that still look clean at thumbnail size.
const QUALITY: u8 = 85;

/// `image` scaled down (never up) to fit in `max_side` x `max_side`, aspect kept, as a JPEG.
pub fn thumbnail_jpeg(image: &RgbImage, max_side: u32) -> Result<Vec<u8>> {
    if max_side == 0 {
        return Err(Error::invalid(
            "the thumbnail size must be at least 1 pixel",
        ));
    }
    let (w, h) = image.dimensions();
    let scale = f64::from(max_side) / f64::from(w.max(h));
    let small;
    let out = if scale < 1.0 {
        let tw = ((f64::from(w) * scale).round() as u32).max(1);
        let th = ((f64::from(h) * scale).round() as u32).max(1);
        // Triangle over the whole image: an area-weighted average, no aliasing from big photos.
        small = image::imageops::resize(image, tw, th, FilterType::Triangle);
        &small
    } else {
        image
    };
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, QUALITY)
        .encode_image(out)
        .map_err(|e| Error::invalid(format!("cannot encode the thumbnail: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_images_shrink_to_fit_and_small_ones_keep_their_size() {
        let decode = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8();
        let wide = RgbImage::from_pixel(1000, 500, image::Rgb([200, 30, 30]));
        let thumb = decode(&thumbnail_jpeg(&wide, 100).unwrap());
        assert_eq!(thumb.dimensions(), (100, 50));
        // A flat colour survives JPEG within a few levels.
        let p = thumb.get_pixel(50, 25).0;
        assert!(
            p.iter()
                .zip([200u8, 30, 30])
                .all(|(a, b)| a.abs_diff(b) <= 6),
            "{p:?}"
        );
        let small = RgbImage::from_pixel(40, 60, image::Rgb([0, 0, 0]));
        assert_eq!(
            decode(&thumbnail_jpeg(&small, 100).unwrap()).dimensions(),
            (40, 60)
        );
        assert!(thumbnail_jpeg(&small, 0).is_err());
    }
}
