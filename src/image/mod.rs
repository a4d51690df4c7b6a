//! From whatever the user holds (a path, encoded bytes, decoded pixels) to the normalised float
//! batch the image tower takes. Decoding lives in [`decode`], the pixel transform in
//! [`transform`]; this module only dispatches and batches them across threads.

pub mod decode;
pub mod photo_info;
pub mod scaled_jpeg;
pub mod thumbnail;
pub mod transform;

use std::path::PathBuf;

use image::RgbImage;
use rayon::prelude::*;

use crate::error::Result;
use tch::{Kind, Tensor};

pub use decode::{
    max_image_pixels, set_max_image_pixels, DecodeMode, Resolution, DEFAULT_MAX_IMAGE_PIXELS,
};

/// One image, in any of the forms the public API accepts.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// A file on disk, decoded here (EXIF orientation applied).
    Path(PathBuf),
    /// An encoded file's bytes.
    Encoded(Vec<u8>),
    /// Decoded 8-bit RGB pixels (from a numpy array or a PIL image).
    Pixels(RgbImage),
}

impl ImageInput {
    /// Decodes (if needed) to 8-bit RGB, at the resolution `need` asks for or more.
    pub fn to_rgb(&self, need: Resolution) -> Result<std::borrow::Cow<'_, RgbImage>> {
        use std::borrow::Cow;
        Ok(match self {
            ImageInput::Path(path) => Cow::Owned(decode::decode_file_at(path, need)?),
            ImageInput::Encoded(bytes) => {
                Cow::Owned(decode::decode_bytes_at(bytes, "image bytes", need)?)
            }
            ImageInput::Pixels(rgb) => Cow::Borrowed(rgb),
        })
    }

    /// Decodes and transforms to a `3 x size x size` normalised float array.
    pub fn preprocess(&self, size: u32, decode: DecodeMode) -> Result<Vec<f32>> {
        Ok(transform::preprocess(
            &*self.to_rgb(decode.resolution(size))?,
            size,
        ))
    }
}

/// Preprocesses many images in parallel into one contiguous `N x 3 x size x size` buffer. The
/// first failing image (in input order) is the error reported.
pub fn preprocess_batch(images: &[ImageInput], size: u32, decode: DecodeMode) -> Result<Vec<f32>> {
    let per_image = 3 * size as usize * size as usize;
    let mut out = vec![0f32; per_image * images.len()];
    let outcomes: Vec<Result<()>> = out
        .par_chunks_mut(per_image)
        .zip(images.par_iter())
        .map(|(slot, image)| {
            slot.copy_from_slice(&image.preprocess(size, decode)?);
            Ok(())
        })
        .collect();
    outcomes.into_iter().collect::<Result<()>>()?;
    Ok(out)
}

/// `ToTensor()` + `Normalize` on batches of `(N, S, S, 3)` uint8 pixels, on the device that
/// holds them (after an 8-bit transfer, a quarter of the bytes of floats): `(N, 3, S, S)`
/// floats, the same values [`transform::normalize_to_chw`] computes. The constants are put on
/// the device once.
pub struct Normalizer {
    mean: Tensor,
    std: Tensor,
}

impl Normalizer {
    pub fn new(device: tch::Device) -> Result<Self> {
        let constant = |v: &[f32; 3]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?
                .f_view([1, 3, 1, 1])?
                .f_to_device(device)?)
        };
        Ok(Normalizer {
            mean: constant(&transform::CLIP_MEAN)?,
            std: constant(&transform::CLIP_STD)?,
        })
    }

    pub fn apply(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = pixels
            .f_permute([0, 3, 1, 2])?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?;
        Ok(x.f_sub(&self.mean)?.f_div(&self.std)?)
    }
}
