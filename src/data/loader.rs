//! Decoding and transforming batches of images on worker threads, ahead of the training loop.
//!
//! A producer thread walks the planned batches; their images are decoded and transformed on all
//! cores ahead of the batch being assembled ([`crate::prefetch`]'s bounded window: a batch does
//! not wait for its slowest image while the cores idle), and the batches are handed over through
//! a bounded queue, so that up to `prefetch` batches are ready while the device computes. Images are shipped as 8-bit `(N, S, S, 3)` tensors (a
//! quarter of the bytes of floats); [`crate::image::Normalizer`] finishes them on the
//! device. Images that fail to decode are left out of their batch and reported with it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use tch::{Kind, Tensor};

use super::stream::StreamProgress;
use super::{Dataset, Sample, AUGMENT_STREAM};
use crate::image::{decode, transform, DecodeMode, Resolution};
use crate::rng::Rng;
use crate::text::TokenizedCaptions;

/// How training images become `size x size` pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ImageTransform {
    /// The inference transform: resize the shorter side, center crop.
    Center,
    /// torchvision's `RandomResizedCrop`: a random region of `scale` of the area with an aspect
    /// ratio in `ratio`, resized to the square.
    RandomResizedCrop {
        scale: (f64, f64),
        ratio: (f64, f64),
    },
}

#[derive(Debug, Clone, Copy)]
pub struct LoaderConfig {
    pub image_size: u32,
    pub transform: ImageTransform,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Seeds the augmentation, per (epoch, position in the epoch).
    pub seed: u64,
    pub epoch: u64,
    /// Put batches in page-locked memory for asynchronous copies to this GPU.
    pub pin_memory: Option<tch::Device>,
    /// Scaled JPEG decoding, or every pixel.
    pub decode: DecodeMode,
}

impl LoaderConfig {
    /// How much of each image the transform needs decoded: the output size for the center
    /// crop; for random crops, enough that the smallest crop (`scale.0` of the area at the most
    /// extreme aspect ratio) still has it.
    pub fn resolution(&self) -> Resolution {
        let short_side = match self.transform {
            ImageTransform::Center => self.image_size,
            ImageTransform::RandomResizedCrop { scale, ratio } => {
                let extreme = ratio.1.max(1.0 / ratio.0);
                let fraction = (scale.0 / extreme).sqrt().clamp(1e-3, 1.0);
                (f64::from(self.image_size) / fraction).ceil() as u32
            }
        };
        self.decode.resolution(short_side)
    }
}

/// One batch of images, ready to be moved to the device.
pub struct ImageBatch {
    /// Position of the batch in the plan (the tests check that batches arrive in order).
    #[cfg_attr(not(test), allow(dead_code))]
    pub index: usize,
    /// `(k, S, S, 3)` uint8, for the `k` samples that decoded.
    pub pixels: Tensor,
    /// The captions of the rows of `pixels`, in order.
    pub captions: BatchCaptions,
    /// Images that could not be used, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Whether `pixels` is in page-locked memory (see [`LoaderConfig::pin_memory`]).
    pub pinned: bool,
    /// Shard data: where the streams are once this batch is used (see [`super::stream`]).
    pub stream: Option<StreamProgress>,
}

/// The captions of a batch's rows.
pub enum BatchCaptions {
    /// Folder data: the samples (image and caption indices into the data set) of the rows; the
    /// trainer holds every caption tokenized.
    Samples(Vec<Sample>),
    /// Shard data: the rows' captions tokenized by the loader, followed by one empty caption
    /// (the text of padding rows).
    Tokens(TokenizedCaptions),
}

impl BatchCaptions {
    /// Rows of the batch.
    pub fn len(&self) -> usize {
        match self {
            BatchCaptions::Samples(samples) => samples.len(),
            BatchCaptions::Tokens(tokens) => tokens.len().saturating_sub(1),
        }
    }
}

pub struct Loader {
    rx: Option<Receiver<crate::Result<ImageBatch>>>,
    expected: usize,
    received: usize,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts preparing `batches` (indices into `dataset`) in the background, positions
    /// counted from the epoch's start.
    #[cfg(test)]
    pub fn start(dataset: Arc<Dataset>, batches: Vec<Vec<Sample>>, config: LoaderConfig) -> Self {
        let mut position = 0u64;
        let positioned = batches
            .into_iter()
            .map(|batch| {
                let first = position;
                position += batch.len() as u64;
                (first, batch)
            })
            .collect();
        Self::start_at(dataset, positioned, config)
    }

    /// Starts preparing `batches` (indices into `dataset`) in the background, each batch with
    /// the epoch position of its first sample (augmentation draws are keyed by position): a
    /// data-parallel rank loads slices of the epoch's global batches.
    pub fn start_at(
        dataset: Arc<Dataset>,
        batches: Vec<(u64, Vec<Sample>)>,
        config: LoaderConfig,
    ) -> Self {
        let (tx, rx) = sync_channel(config.prefetch.max(1));
        let expected = batches.len();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let worker = std::thread::Builder::new()
            .name("liteclip-loader".into())
            .spawn(move || {
                // Every image of the plan, with its epoch position: decoded on all cores ahead
                // of the batch being assembled (a batch never waits for its slowest image while
                // the cores idle), within the window that bounds memory.
                let groups: Vec<usize> = batches.iter().map(|(_, b)| b.len()).collect();
                let items: Vec<(u64, Sample)> = batches
                    .into_iter()
                    .flat_map(|(first, batch)| {
                        batch
                            .into_iter()
                            .enumerate()
                            .map(move |(i, sample)| (first + i as u64, sample))
                    })
                    .collect();
                let mut index = 0;
                let outcome = crate::prefetch::map_in_groups(
                    &items,
                    &groups,
                    |&(position, sample)| decode_sample(&dataset, sample, position, &config),
                    |start, results| {
                        let batch = items[start..start + results.len()].iter().map(|p| p.1);
                        let prepared = assemble(&dataset, index, batch.zip(results), &config);
                        index += 1;
                        if stop_flag.load(Ordering::Relaxed) || tx.send(prepared).is_err() {
                            return Err(crate::Error::Interrupted); // the consumer is gone
                        }
                        Ok(())
                    },
                );
                if let Err(e) = outcome {
                    if !matches!(e, crate::Error::Interrupted) {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .ok();
        Loader {
            rx: Some(rx),
            expected,
            received: 0,
            stop,
            worker,
        }
    }
}

impl Iterator for Loader {
    type Item = crate::Result<ImageBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.as_ref()?.recv() {
            Ok(batch) => {
                self.received += 1;
                Some(batch)
            }
            // The producer ended early: it can only have died.
            Err(_) if self.received < self.expected => {
                self.received = self.expected;
                Some(Err(crate::Error::invalid(
                    "the data loader thread stopped unexpectedly",
                )))
            }
            Err(_) => None,
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full queue.
        self.rx.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Transforms a decoded image to `size x size` packed RGB bytes.
pub(super) fn transform_image(
    rgb: &image::RgbImage,
    config: &LoaderConfig,
    rng: &mut Rng,
) -> Vec<u8> {
    match config.transform {
        ImageTransform::Center => transform::resize_center_crop(rgb, config.image_size),
        ImageTransform::RandomResizedCrop { scale, ratio } => {
            let (w, h) = rgb.dimensions();
            let region = transform::random_resized_crop_box(w, h, scale, ratio, rng);
            transform::resize_region(rgb, region, config.image_size)
        }
    }
}

/// The packed RGB rows of a batch as a `(rows, S, S, 3)` uint8 tensor, page-locked when the
/// configuration asks; and whether it is.
pub(super) fn pixels_tensor(
    bytes: &[u8],
    rows: usize,
    config: &LoaderConfig,
) -> crate::Result<(Tensor, bool)> {
    let s = config.image_size as i64;
    let mut pixels = Tensor::f_from_data_size(bytes, &[rows as i64, s, s, 3], Kind::Uint8)?;
    if let Some(device) = config.pin_memory {
        pixels = crate::device::pin(&pixels, device)?;
    }
    Ok((pixels, config.pin_memory.is_some()))
}

/// One image of the plan, decoded and transformed (its augmentation drawn from its epoch
/// position, so that the result does not depend on which thread or batch prepared it).
fn decode_sample(
    dataset: &Dataset,
    sample: Sample,
    position: u64,
    config: &LoaderConfig,
) -> crate::Result<Vec<u8>> {
    let mut rng = Rng::derive(config.seed ^ AUGMENT_STREAM, config.epoch, position);
    let path = &dataset.entries[sample.entry as usize].path;
    let rgb = decode::decode_file_at(path, config.resolution())?;
    Ok(transform_image(&rgb, config, &mut rng))
}

/// A batch from its samples' decoded images: the failed ones left out and reported.
fn assemble(
    dataset: &Dataset,
    index: usize,
    batch: impl Iterator<Item = (Sample, crate::Result<Vec<u8>>)>,
    config: &LoaderConfig,
) -> crate::Result<ImageBatch> {
    let s = config.image_size as usize;
    let mut bytes = Vec::new();
    let mut kept = Vec::new();
    let mut failed = Vec::new();
    for (sample, result) in batch {
        match result {
            Ok(rgb) => {
                bytes.reserve(s * s * 3);
                bytes.extend_from_slice(&rgb);
                kept.push(sample);
            }
            Err(e) => failed.push((
                dataset.entries[sample.entry as usize].path.clone(),
                e.to_string(),
            )),
        }
    }
    let (pixels, pinned) = pixels_tensor(&bytes, kept.len(), config)?;
    Ok(ImageBatch {
        index,
        pixels,
        captions: BatchCaptions::Samples(kept),
        failed,
        pinned,
        stream: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{generate, Layout};
    use crate::data::{epoch_samples, make_batches, CsvOptions};

    fn config(prefetch: usize) -> LoaderConfig {
        LoaderConfig {
            image_size: 16,
            transform: ImageTransform::Center,
            prefetch,
            seed: 3,
            epoch: 1,
            pin_memory: None,
            decode: DecodeMode::Exact,
        }
    }

    /// Batches are decoded ahead on worker threads, yet arrive in the planned order with the
    /// planned samples; an unreadable image drops out of its batch only, and is reported.
    #[test]
    fn batches_arrive_in_plan_order_with_their_samples() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        generate(&root, 20, 0, 16, Layout::Captions).unwrap();
        let dataset = Arc::new(Dataset::open(&root, &CsvOptions::default()).unwrap());
        let broken = dataset.entries[7].path.clone();
        std::fs::write(&broken, b"not an image").unwrap();
        let plan = make_batches(epoch_samples(&dataset, 3, 1), 6);
        for prefetch in [1, 4] {
            let got: Vec<ImageBatch> =
                Loader::start(dataset.clone(), plan.clone(), config(prefetch))
                    .map(|b| b.unwrap())
                    .collect();
            assert_eq!(got.len(), plan.len());
            for (i, (batch, planned)) in got.iter().zip(&plan).enumerate() {
                assert_eq!(batch.index, i);
                let expected: Vec<Sample> =
                    planned.iter().copied().filter(|s| s.entry != 7).collect();
                let BatchCaptions::Samples(kept) = &batch.captions else {
                    panic!("folder batches carry samples");
                };
                assert_eq!(kept, &expected);
                assert_eq!(batch.pixels.size(), [expected.len() as i64, 16, 16, 3]);
                let failed = planned.len() - expected.len();
                assert_eq!(batch.failed.len(), failed);
                assert!(batch.failed.iter().all(|(p, _)| p == &broken));
            }
        }
    }
}
