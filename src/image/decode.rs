//! Decoding files and bytes into 8-bit RGB, as `PIL.Image.open(f).convert("RGB")` would, plus the
//! two things PIL leaves to the caller: EXIF orientation is applied, and images whose header
//! claims more pixels than a settable limit are refused before any pixel is decoded.
//!
//! A caller that will shrink the image says how much resolution it needs ([`Resolution`]);
//! large JPEGs are then decoded at a reduced scale ([`super::scaled_jpeg`]) unless the
//! `decode="exact"` mode ([`DecodeMode`]) asks for every pixel.

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

use super::scaled_jpeg;
use crate::error::{Error, Result};

/// How much of an image a caller needs decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Every pixel, as PIL decodes them.
    Full,
    /// At least this many pixels on the shorter side: a large JPEG may be decoded at 1/2, 1/4
    /// or 1/8 scale.
    AtLeast(u32),
}

/// The `decode=` option: how images are decoded before the resize to the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DecodeMode {
    /// Large JPEGs are decoded at the smallest DCT scale that keeps [`DecodeMode::MARGIN`]
    /// times the resolution the resize produces; everything else as `Exact`.
    Fast,
    /// Every pixel: the preprocessing is bit-identical to PIL + torchvision.
    #[default]
    Exact,
}

crate::serde_by_name!(DecodeMode);

impl DecodeMode {
    pub const NAMES: [&'static str; 2] = ["fast", "exact"];
    /// Decoded pixels kept per pixel of the resize's output (on the shorter side), as a
    /// fraction: 3/2. Measured on 12-megapixel photos (BENCHMARKS.md): at 224 pixels this lets
    /// a 4032x3024 JPEG decode at 1/8 scale (378 >= 336), and the embeddings stay within a
    /// cosine of 0.9999 of the exact path's.
    pub const MARGIN: (u32, u32) = (3, 2);

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "fast" => Ok(DecodeMode::Fast),
            "exact" => Ok(DecodeMode::Exact),
            other => Err(Error::invalid(format!(
                "unknown decode mode {other:?}: expected \"fast\" or \"exact\""
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DecodeMode::Fast => "fast",
            DecodeMode::Exact => "exact",
        }
    }

    /// What a resize that brings the shorter side to `short_side` pixels needs decoded.
    pub fn resolution(self, short_side: u32) -> Resolution {
        match self {
            DecodeMode::Fast => {
                let (num, den) = Self::MARGIN;
                Resolution::AtLeast(short_side.saturating_mul(num).div_ceil(den))
            }
            DecodeMode::Exact => Resolution::Full,
        }
    }
}

/// PIL's own refusal threshold (twice `Image.MAX_IMAGE_PIXELS`): about 13400 x 13400.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 178_956_970;

static MAX_IMAGE_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_IMAGE_PIXELS);

/// The largest image (width x height) that will be decoded; larger ones are refused as likely
/// decompression bombs.
pub fn max_image_pixels() -> u64 {
    MAX_IMAGE_PIXELS.load(Ordering::Relaxed)
}

/// Changes the limit of [`max_image_pixels`] for the whole process.
pub fn set_max_image_pixels(limit: u64) -> Result<()> {
    if limit == 0 {
        return Err(Error::invalid("max_image_pixels must be positive"));
    }
    MAX_IMAGE_PIXELS.store(limit, Ordering::Relaxed);
    Ok(())
}

/// Reads and decodes an image file at the resolution `need` asks for (or more).
pub fn decode_file_at(path: &Path, need: Resolution) -> Result<RgbImage> {
    if path.is_dir() {
        return Err(Error::image(
            path.display().to_string(),
            "is a directory, not an image file",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes_at(&bytes, &path.display().to_string(), need)
}

/// Decodes an encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF, ...), every pixel. `origin`
/// names the source in error messages.
pub fn decode_bytes(bytes: &[u8], origin: &str) -> Result<RgbImage> {
    decode_bytes_at(bytes, origin, Resolution::Full)
}

/// What a file that no decoder recognises is called.
const NOT_AN_IMAGE: &str =
    "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF, ICO, PNM, TGA, QOI, ...)";

/// The width and height an encoded image declares in its header, read without decoding it
/// (to refuse an image by its size before paying for it).
pub fn dimensions(bytes: &[u8], origin: &str) -> Result<(u32, u32)> {
    if bytes.is_empty() {
        return Err(Error::image(origin, "empty file, not an image"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::image(origin, format!("cannot read image: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(Error::image(origin, NOT_AN_IMAGE));
    };
    reader
        .into_dimensions()
        .map_err(|e| Error::image(origin, format!("not a valid {format:?} image: {e}")))
}

/// Decodes an encoded image at the resolution `need` asks for (or more).
pub fn decode_bytes_at(bytes: &[u8], origin: &str, need: Resolution) -> Result<RgbImage> {
    decode_bytes_with_limit(bytes, origin, max_image_pixels(), need)
}

fn decode_bytes_with_limit(
    bytes: &[u8],
    origin: &str,
    max_pixels: u64,
    need: Resolution,
) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::image(origin, "empty file, not an image"));
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::image(origin, format!("{what}: {e}"));

    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail("cannot read image", &e))?;
    let Some(format) = reader.format() else {
        // Nothing of the bytes themselves: the message may reach a client (a server's upload,
        // a file an index names), and a file's first bytes are its contents.
        return Err(Error::image(origin, NOT_AN_IMAGE));
    };
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // The decoder would fill the missing part with grey and succeed; PIL refuses such files
        // ("image file is truncated") and so do we.
        return Err(Error::image(
            origin,
            "truncated JPEG: the file ends before its end-of-image marker",
        ));
    }
    let mut limits = Limits::default();
    // Room for the largest allowed image at 16 bits per channel with alpha.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    reader.limits(limits);

    let mut decoder = reader
        .into_decoder()
        .map_err(|e| fail(&format!("not a valid {format:?} image"), &e))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(Error::image(
            origin,
            format!("image has no pixels ({width}x{height})"),
        ));
    }
    if pixels > max_pixels {
        return Err(Error::image(
            origin,
            format!(
                "image is {width}x{height} = {pixels} pixels, above the limit of {max_pixels} \
                 (a guard against decompression bombs; raise it with \
                 liteclip.set_max_image_pixels)"
            ),
        ));
    }
    if let (Resolution::AtLeast(short_side), image::ImageFormat::Jpeg) = (need, format) {
        if let Some(rgb) = scaled_jpeg::decode(bytes, width, height, short_side) {
            return Ok(rgb);
        }
    }
    // A broken EXIF block should not make a good image unreadable.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| fail(&format!("corrupt or truncated {format:?} image"), &e))?;
    image.apply_orientation(orientation);
    Ok(to_rgb8(image))
}

/// Whether a JPEG stream reaches its end-of-image marker (FF D9) after its first scan.
///
/// Marker segments before the first scan are skipped by their lengths (an EXIF thumbnail there
/// has markers of its own); inside entropy-coded data an FF byte is only ever followed by 00
/// (stuffing), a restart marker, or the next segment, so an FF D9 there is the real end.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return false;
        }
        let marker = bytes[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        if marker == 0xDA {
            let scan = &bytes[(pos + 2 + len).min(bytes.len())..];
            return scan.windows(2).any(|w| w == [0xFF, 0xD9]);
        }
        pos += 2 + len;
    }
    false
}

/// Converts any colour mode to 8-bit RGB the way PIL's `convert("RGB")` does: grey is replicated,
/// alpha is dropped (not composited), palettes are expanded by the decoder, and 16-bit or float
/// channels are scaled to 8 bits.
pub fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// Wraps packed 8-bit pixels (row-major, `channels` per pixel: 1 grey, 3 RGB, 4 RGBA) as RGB.
pub fn rgb_from_pixels(data: &[u8], width: u32, height: u32, channels: u32) -> Result<RgbImage> {
    let expected = (width as usize) * (height as usize) * (channels as usize);
    if width == 0 || height == 0 {
        return Err(Error::invalid(format!(
            "image array has no pixels ({height}x{width})"
        )));
    }
    if data.len() != expected {
        return Err(Error::invalid(format!(
            "pixel buffer holds {} bytes, expected {height}x{width}x{channels} = {expected}",
            data.len()
        )));
    }
    let rgb: Vec<u8> = match channels {
        3 => data.to_vec(),
        1 => data.iter().flat_map(|&v| [v, v, v]).collect(),
        4 => data
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        2 => data
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        n => {
            return Err(Error::invalid(format!(
                "image array must have 1, 2, 3 or 4 channels, got {n}"
            )))
        }
    };
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| Error::invalid("pixel buffer does not match its size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(image: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_grey_and_rgba_like_pil() {
        let grey = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(x * 40 + y) as u8]));
        let png = encode(
            DynamicImage::ImageLuma8(grey.clone()),
            image::ImageFormat::Png,
        );
        let rgb = decode_bytes(&png, "grey.png").unwrap();
        for (x, y, p) in rgb.enumerate_pixels() {
            let v = grey.get_pixel(x, y)[0];
            assert_eq!(p.0, [v, v, v]);
        }
        let rgba = image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 0]));
        let png = encode(DynamicImage::ImageRgba8(rgba), image::ImageFormat::Png);
        // Alpha is dropped, not composited: a fully transparent pixel keeps its colour.
        assert_eq!(
            decode_bytes(&png, "a.png").unwrap().get_pixel(0, 0).0,
            [10, 20, 30]
        );
    }

    #[test]
    fn rejects_garbage_empty_and_truncated() {
        assert!(matches!(
            decode_bytes(b"", "e"),
            Err(Error::ImageDecode { .. })
        ));
        assert!(matches!(
            decode_bytes(b"hello, this is text", "t"),
            Err(Error::ImageDecode { .. })
        ));
        let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let png = encode(DynamicImage::ImageRgb8(img), image::ImageFormat::Png);
        assert!(decode_bytes(&png[..png.len() / 2], "half.png").is_err());
    }

    #[test]
    fn truncated_jpeg_is_refused_and_complete_one_accepted() {
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 9]));
        let jpeg = encode(DynamicImage::ImageRgb8(img), image::ImageFormat::Jpeg);
        assert!(decode_bytes(&jpeg, "full.jpg").is_ok());
        let mut with_trailer = jpeg.clone();
        with_trailer.extend_from_slice(b"trailing bytes some cameras add");
        assert!(decode_bytes(&with_trailer, "trailer.jpg").is_ok());
        for cut in [jpeg.len() - 2, jpeg.len() / 2, 200] {
            let e = decode_bytes(&jpeg[..cut], "cut.jpg").unwrap_err();
            assert!(e.to_string().contains("cut.jpg"), "{e}");
        }
    }

    #[test]
    fn refuses_images_above_the_pixel_limit() {
        let img = image::RgbImage::new(40, 30);
        let png = encode(DynamicImage::ImageRgb8(img), image::ImageFormat::Png);
        // Through a local limit, so that tests running in parallel are not affected.
        let e = decode_bytes_with_limit(&png, "big.png", 1000, Resolution::Full).unwrap_err();
        assert!(e.to_string().contains("1200 pixels"), "{e}");
        assert!(decode_bytes_with_limit(&png, "big.png", 1200, Resolution::Full).is_ok());
    }
}
