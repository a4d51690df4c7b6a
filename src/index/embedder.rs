//! Embedding a list of files with decoding overlapped with the model: threads on all cores
//! read, hash, decode and transform the files ahead of the caller's thread, which runs them
//! through the image tower batch by batch ([`prefetch`]). A file that cannot be read or
//! decoded is reported and left out; it never stops the batch.

use tch::{Kind, Tensor};

use super::scan::{hash_bytes, FoundFile};
use crate::cancel;
use crate::error::{Error, Result};
use crate::image::{decode, transform, DecodeMode};
use crate::liteclip::LiteClip;
use crate::prefetch;

/// One embedded file.
pub struct Embedded {
    pub file: FoundFile,
    pub hash: String,
    /// Unit length, `embed_dim` floats.
    pub vector: Vec<f32>,
}

/// What one batch gave: the files embedded, and those skipped with the reason.
pub struct BatchOutcome {
    pub embedded: Vec<Embedded>,
    pub failed: Vec<(FoundFile, String)>,
}

/// A file's content hash and preprocessed pixels, or why it cannot be used.
type Decoded = std::result::Result<(String, Vec<f32>), String>;

/// Embeds `files` `batch_size` at a time, handing each batch's outcome to `sink` in order.
/// Stops with [`Error::Interrupted`] between batches when [`cancel::check`] says so, after the
/// sink has had every finished batch.
pub fn embed_files(
    model: &LiteClip,
    files: Vec<FoundFile>,
    batch_size: usize,
    mut sink: impl FnMut(BatchOutcome) -> Result<()>,
) -> Result<()> {
    let (size, mode) = (model.config().image_size as u32, model.decode());
    prefetch::map_in_order(
        &files,
        batch_size,
        |file| read_and_preprocess(file, size, mode),
        |start, decoded| {
            cancel::check()?;
            let batch = files[start..start + decoded.len()].iter().cloned();
            sink(embed_batch(model, batch.zip(decoded), size)?)
        },
    )
}

/// The file's content hash and its preprocessed pixels, or why it cannot be used.
fn read_and_preprocess(file: &FoundFile, size: u32, mode: DecodeMode) -> Decoded {
    let bytes = std::fs::read(&file.absolute).map_err(|e| format!("cannot read: {e}"))?;
    let need = mode.resolution(size);
    let rgb = decode::decode_bytes_at(&bytes, &file.path, need).map_err(|e| match e {
        Error::ImageDecode { message, .. } => message,
        other => other.to_string(),
    })?;
    Ok((hash_bytes(&bytes), transform::preprocess(&rgb, size)))
}

fn embed_batch(
    model: &LiteClip,
    batch: impl Iterator<Item = (FoundFile, Decoded)>,
    size: u32,
) -> Result<BatchOutcome> {
    let (mut good, mut pixels, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (file, decoded) in batch {
        match decoded {
            Ok((hash, data)) => {
                pixels.extend_from_slice(&data);
                good.push((file, hash));
            }
            Err(reason) => failed.push((file, reason)),
        }
    }
    let mut embedded = Vec::with_capacity(good.len());
    if !good.is_empty() {
        let s = i64::from(size);
        let input = Tensor::f_from_slice(&pixels)?.f_view([good.len() as i64, 3, s, s])?;
        let rows = model
            .encode_pixels(&input)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let dim = rows.size()[1] as usize;
        let n = good.len() * dim;
        let mut flat = vec![0f32; n];
        rows.f_copy_data(&mut flat, n)?;
        for ((file, hash), vector) in good.into_iter().zip(flat.chunks_exact(dim)) {
            embedded.push(Embedded {
                file,
                hash,
                vector: vector.to_vec(),
            });
        }
    }
    Ok(BatchOutcome { embedded, failed })
}
