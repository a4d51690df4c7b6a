//! Embedding the files of an update ([`crate::image_embedding`]): threads on all cores read,
//! hash, decode and transform the files ahead of the image tower. A file that cannot be read or
//! decoded is reported and left out; it never stops the batch.

use tch::Kind;

use super::scan::{hash_bytes, FoundFile};
use crate::error::{Error, Result};
use crate::image::photo_info::{read_photo_info, PhotoInfo};
use crate::image::{decode, transform, DecodeMode};
use crate::image_embedding::embed_each;
use crate::liteclip::LiteClip;

/// One embedded file.
pub struct Embedded {
    pub file: FoundFile,
    pub hash: String,
    pub info: PhotoInfo,
    /// Unit length, `embed_dim` floats.
    pub vector: Vec<f32>,
}

/// What one batch gave: the files embedded, and those skipped with the reason.
pub struct BatchOutcome {
    pub embedded: Vec<Embedded>,
    pub failed: Vec<(FoundFile, String)>,
}

/// Embeds `files` `batch_size` at a time, handing each batch's outcome to `sink` in order.
/// Stops with [`Error::Interrupted`] between batches when [`crate::cancel::check`] says so,
/// after the sink has had every finished batch.
pub fn embed_files(
    model: &LiteClip,
    files: Vec<FoundFile>,
    batch_size: usize,
    mut sink: impl FnMut(BatchOutcome) -> Result<()>,
) -> Result<()> {
    let (size, mode) = (model.config().image_size as u32, model.decode());
    embed_each(
        model,
        &files,
        batch_size,
        |file| read_and_preprocess(file, size, mode),
        |batch| {
            let rows = batch.rows.f_to_kind(Kind::Float)?.f_contiguous()?;
            let dim = model.config().embed_dim as usize;
            let n = rows.numel();
            let mut flat = vec![0f32; n];
            rows.f_copy_data(&mut flat, n)?;
            let mut vectors = flat.chunks_exact(dim);
            let mut outcome = BatchOutcome {
                embedded: Vec::new(),
                failed: Vec::new(),
            };
            for (file, item) in files[batch.start..].iter().zip(batch.items) {
                match item {
                    Ok((hash, info)) => outcome.embedded.push(Embedded {
                        file: file.clone(),
                        hash,
                        info,
                        vector: vectors.next().expect("a row per good file").to_vec(),
                    }),
                    Err(reason) => outcome.failed.push((file.clone(), reason)),
                }
            }
            sink(outcome)
        },
    )
}

/// The file's content hash, its metadata and its preprocessed pixels, or why it cannot be
/// used. The file is read once: the metadata comes from the same bytes.
fn read_and_preprocess(
    file: &FoundFile,
    size: u32,
    mode: DecodeMode,
) -> std::result::Result<((String, PhotoInfo), Vec<f32>), String> {
    let bytes = std::fs::read(&file.absolute).map_err(|e| format!("cannot read: {e}"))?;
    let need = mode.resolution(size);
    let rgb = decode::decode_bytes_at(&bytes, &file.path, need).map_err(|e| match e {
        Error::ImageDecode { message, .. } => message,
        other => other.to_string(),
    })?;
    let info = read_photo_info(&bytes, file.mtime_ns);
    Ok((
        (hash_bytes(&bytes), info),
        transform::preprocess(&rgb, size),
    ))
}
