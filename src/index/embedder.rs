//! Embedding a list of files with decoding overlapped with the model: a producer thread reads,
//! hashes, decodes and transforms the next batch on all cores (rayon) while the caller's thread
//! runs the current one through the image tower. A file that cannot be read or decoded is
//! reported and left out; it never stops the batch.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use rayon::prelude::*;
use tch::{Kind, Tensor};

use super::scan::{hash_bytes, FoundFile};
use crate::cancel;
use crate::error::{Error, Result};
use crate::image::{decode, transform, DecodeMode};
use crate::liteclip::LiteClip;

/// Batches decoded ahead of the model: one waiting while the next is decoded.
const DECODED_AHEAD: usize = 1;

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

struct Decoded {
    file: FoundFile,
    outcome: std::result::Result<(String, Vec<f32>), String>,
}

/// Embeds `files` `batch_size` at a time, handing each batch's outcome to `sink` in order.
/// Stops with [`Error::Interrupted`] between batches when [`cancel::check`] says so, after the
/// sink has had every finished batch.
pub fn embed_files(
    model: &LiteClip,
    files: Vec<FoundFile>,
    batch_size: usize,
    mut sink: impl FnMut(BatchOutcome) -> Result<()>,
) -> Result<()> {
    let size = model.config().image_size as u32;
    let (batches, producer) = start_decoding(files, batch_size.max(1), size, model.decode());
    let result = (|| {
        for batch in &batches {
            cancel::check()?;
            sink(embed_batch(model, batch, size)?)?;
        }
        Ok(())
    })();
    // Dropping the receiver stops the producer at its next send.
    drop(batches);
    let _ = producer.join();
    result
}

fn start_decoding(
    files: Vec<FoundFile>,
    batch_size: usize,
    size: u32,
    decode: DecodeMode,
) -> (Receiver<Vec<Decoded>>, JoinHandle<()>) {
    let (send, receive) = sync_channel(DECODED_AHEAD);
    let producer = std::thread::spawn(move || {
        let mut files = files.into_iter().peekable();
        while files.peek().is_some() {
            let batch: Vec<FoundFile> = files.by_ref().take(batch_size).collect();
            let decoded: Vec<Decoded> = batch
                .into_par_iter()
                .map(|file| Decoded {
                    outcome: read_and_preprocess(&file, size, decode),
                    file,
                })
                .collect();
            if send.send(decoded).is_err() {
                return;
            }
        }
    });
    (receive, producer)
}

/// The file's content hash and its preprocessed pixels, or why it cannot be used.
fn read_and_preprocess(
    file: &FoundFile,
    size: u32,
    mode: DecodeMode,
) -> std::result::Result<(String, Vec<f32>), String> {
    let bytes = std::fs::read(&file.absolute).map_err(|e| format!("cannot read: {e}"))?;
    let need = mode.resolution(size);
    let rgb = decode::decode_bytes_at(&bytes, &file.path, need).map_err(|e| match e {
        Error::ImageDecode { message, .. } => message,
        other => other.to_string(),
    })?;
    Ok((hash_bytes(&bytes), transform::preprocess(&rgb, size)))
}

fn embed_batch(model: &LiteClip, batch: Vec<Decoded>, size: u32) -> Result<BatchOutcome> {
    let mut good = Vec::with_capacity(batch.len());
    let mut pixels = Vec::new();
    let mut failed = Vec::new();
    for item in batch {
        match item.outcome {
            Ok((hash, data)) => {
                pixels.extend_from_slice(&data);
                good.push((item.file, hash));
            }
            Err(reason) => failed.push((item.file, reason)),
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
