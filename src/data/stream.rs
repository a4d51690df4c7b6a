//! Training batches streamed from WebDataset shards, in memory bounded by the shuffle blocks
//! and the prefetched batches, never by the size of the data set.
//!
//! Shards are dealt to `world x workers` streams once for the run: stream `g = rank * workers +
//! t` takes shards `g, g + S, g + 2S, ...` of the list (`S` streams), so every epoch each rank
//! reads the same shards. Each stream is a thread that reads its shards in an order shuffled
//! by (seed, epoch, pass), cuts their samples into blocks of `shuffle_buffer`, shuffles each
//! block by (seed, epoch, stream, block) and hands the samples on. A rank's assembler thread
//! takes samples from its streams in turn, decodes and transforms a batch's images in parallel
//! (rayon), picks and tokenizes one caption per sample, and queues the batch.
//!
//! Every sample carries where its stream stands once it is used ([`StreamPosition`]: the
//! block's first sample, found again as (pass, shard, sample), and how many of the block's
//! samples are used). A checkpoint inside an epoch records those positions and the assembler's
//! turn ([`RankCursor`]); a resumed stream re-reads only the block it was in, and with the same
//! ranks and workers the rest of the epoch is exactly that of an unbroken run.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::loader::{pixels_tensor, transform_image, BatchCaptions, ImageBatch, LoaderConfig};
use super::shards::{read_shard, ShardCounts, ShardSample};
use super::{AUGMENT_STREAM, BLOCK_SHUFFLE_STREAM, CAPTION_STREAM, SHARD_ORDER_STREAM};
use crate::error::{Error, Result};
use crate::image::decode;
use crate::rng::Rng;
use crate::text::{TextTokenizer, TokenizedCaptions};

/// Samples a stream holds ahead of the assembler (beyond its shuffle block).
const STREAM_QUEUE: usize = 64;

/// Where a stream stands: in block `block`, which starts at sample `sample` of the `shard`-th
/// shard of pass `pass`'s order, of which `taken` samples are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Pass over the stream's shards (beyond 0 only with `samples_per_epoch`).
    pub pass: u64,
    pub shard: u64,
    pub sample: u64,
    pub block: u64,
    pub taken: u64,
}

impl StreamPosition {
    const FIELDS: usize = 5;

    fn encode(&self) -> [i64; Self::FIELDS] {
        [self.pass, self.shard, self.sample, self.block, self.taken].map(|v| v as i64)
    }

    fn decode(v: &[i64]) -> Self {
        StreamPosition {
            pass: v[0] as u64,
            shard: v[1] as u64,
            sample: v[2] as u64,
            block: v[3] as u64,
            taken: v[4] as u64,
        }
    }
}

/// Where one rank's streams stand, and which of them gives the next sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankCursor {
    pub next_stream: usize,
    pub streams: Vec<StreamPosition>,
}

impl RankCursor {
    /// Every stream at the start of the epoch.
    pub fn start(workers: usize) -> Self {
        RankCursor {
            next_stream: 0,
            streams: vec![StreamPosition::default(); workers],
        }
    }

    /// As integers of a fixed length for a number of workers (gathered over ranks).
    pub fn encode(&self) -> Vec<i64> {
        let mut out = vec![self.next_stream as i64];
        out.extend(self.streams.iter().flat_map(StreamPosition::encode));
        out
    }

    /// The cursors of all ranks from their gathered encodings.
    pub fn decode_all(values: &[i64], workers: usize) -> Vec<RankCursor> {
        let len = 1 + workers * StreamPosition::FIELDS;
        values
            .chunks_exact(len)
            .map(|c| RankCursor {
                next_stream: c[0] as usize,
                streams: c[1..]
                    .chunks_exact(StreamPosition::FIELDS)
                    .map(StreamPosition::decode)
                    .collect(),
            })
            .collect()
    }
}

/// Where every rank's streams stand: saved with a checkpoint inside an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCursor {
    pub workers: usize,
    pub ranks: Vec<RankCursor>,
}

/// What comes with each batch besides its rows.
#[derive(Debug, Clone)]
pub struct StreamProgress {
    /// Where this rank's streams stand once the batch is used.
    pub cursor: RankCursor,
    /// Shards read to their end since the previous batch, with what they skipped.
    pub shards_done: Vec<(PathBuf, ShardCounts)>,
}

/// How a rank streams one epoch.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Every shard of the run, in the order given.
    pub shards: Arc<Vec<PathBuf>>,
    pub rank: usize,
    pub world: usize,
    pub workers: usize,
    pub shuffle_buffer: usize,
    /// A stream that ends starts another pass over its shards (`samples_per_epoch`).
    pub repeat: bool,
    /// Samples per batch (this rank's contrastive batch).
    pub batch_size: usize,
    /// Batches to deliver.
    pub batches: usize,
    /// Once the data ends, deliver empty batches up to `batches` (the ranks of a group step
    /// together; a rank without data contributes padding).
    pub pad: bool,
    /// Image size and transform, prefetch, seed and epoch.
    pub loader: LoaderConfig,
}

/// The shards of stream `stream` of `streams`.
pub fn stream_shards(shards: &[PathBuf], stream: usize, streams: usize) -> Vec<PathBuf> {
    shards
        .iter()
        .skip(stream)
        .step_by(streams)
        .cloned()
        .collect()
}

/// Samples the streams of `rank` hold, from each shard's count.
pub fn rank_samples(counts: &[usize], rank: usize, world: usize, workers: usize) -> usize {
    let streams = world * workers;
    counts
        .iter()
        .enumerate()
        .filter(|(i, _)| (i % streams) / workers == rank)
        .map(|(_, n)| n)
        .sum()
}

/// The batches of one rank's epoch, prepared on background threads (an iterator).
pub struct ShardLoader {
    rx: Option<Receiver<Result<ImageBatch>>>,
    assembler: Option<JoinHandle<()>>,
}

impl ShardLoader {
    /// Starts the streams at `cursor` (the start of the epoch, or a checkpoint's position).
    pub fn start(config: StreamConfig, cursor: RankCursor, tokenizer: TextTokenizer) -> Self {
        let (tx, rx) = sync_channel(config.loader.prefetch.max(1));
        let assembler = std::thread::Builder::new()
            .name("liteclip-shards".into())
            .spawn(move || Assembler::new(config, cursor, tokenizer).run(&tx))
            .ok();
        ShardLoader {
            rx: Some(rx),
            assembler,
        }
    }
}

impl Iterator for ShardLoader {
    type Item = Result<ImageBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for ShardLoader {
    fn drop(&mut self) {
        // Closing the queue stops the assembler, whose dropped queues stop the streams.
        self.rx.take();
        if let Some(assembler) = self.assembler.take() {
            let _ = assembler.join();
        }
    }
}

/// What a stream hands on.
enum StreamItem {
    Sample(Box<StreamSample>),
    ShardDone(PathBuf, ShardCounts),
    Failed(Error),
}

struct StreamSample {
    sample: ShardSample,
    /// `shard.tar/key`, naming the sample in messages.
    origin: PathBuf,
    /// The stream's position once this sample is used.
    after: StreamPosition,
    /// Unique in the epoch: seeds the sample's augmentation and caption choice.
    key: u64,
}

/// One rank's side: its streams, their turn, and the batches made of them.
struct Assembler {
    config: StreamConfig,
    cursor: RankCursor,
    tokenizer: TextTokenizer,
    queues: Vec<Receiver<StreamItem>>,
    threads: Vec<JoinHandle<()>>,
    live: Vec<bool>,
}

impl Assembler {
    fn new(config: StreamConfig, cursor: RankCursor, tokenizer: TextTokenizer) -> Self {
        let streams = config.world * config.workers;
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for t in 0..config.workers {
            let id = config.rank * config.workers + t;
            let (tx, rx) = sync_channel(STREAM_QUEUE);
            let stream = Stream {
                id: id as u64,
                shards: stream_shards(&config.shards, id, streams),
                seed: config.loader.seed,
                epoch: config.loader.epoch,
                block_size: config.shuffle_buffer.max(1),
                repeat: config.repeat,
                tx,
            };
            let start = cursor.streams[t];
            if let Ok(handle) = std::thread::Builder::new()
                .name(format!("liteclip-stream-{t}"))
                .spawn(move || stream.run(start))
            {
                threads.push(handle);
            }
            queues.push(rx);
        }
        Assembler {
            live: vec![true; config.workers],
            config,
            cursor,
            tokenizer,
            queues,
            threads,
        }
    }

    fn run(mut self, tx: &SyncSender<Result<ImageBatch>>) {
        for index in 0..self.config.batches {
            let batch = match self.next_batch(index) {
                Ok(None) => break, // the data has ended
                Ok(Some(batch)) => Ok(batch),
                Err(e) => Err(e),
            };
            if tx.send(batch).is_err() {
                break;
            }
        }
        // Stop the streams (a send to a dropped queue fails) and wait for them.
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// The next batch; `None` once every stream has ended (unless padding).
    fn next_batch(&mut self, index: usize) -> Result<Option<ImageBatch>> {
        let (samples, shards_done) = self.take_samples()?;
        if samples.is_empty() && !self.config.pad {
            return Ok(None);
        }
        let config = &self.config.loader;
        let Rows {
            bytes,
            mut texts,
            failed,
        } = prepare_rows(samples, config);
        let rows = texts.len();
        texts.push(String::new()); // the padding rows' caption
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = TokenizedCaptions::new(&self.tokenizer, &texts)?;
        let (pixels, pinned) = pixels_tensor(&bytes, rows, config)?;
        Ok(Some(ImageBatch {
            index,
            pixels,
            captions: BatchCaptions::Tokens(tokens),
            failed,
            pinned,
            stream: Some(StreamProgress {
                cursor: self.cursor.clone(),
                shards_done,
            }),
        }))
    }

    /// The next batch's samples, one from each live stream in turn; fewer once all have ended.
    #[allow(clippy::type_complexity)]
    fn take_samples(&mut self) -> Result<(Vec<StreamSample>, Vec<(PathBuf, ShardCounts)>)> {
        let workers = self.config.workers;
        let mut samples = Vec::with_capacity(self.config.batch_size);
        let mut shards_done = Vec::new();
        while samples.len() < self.config.batch_size {
            let next = self.cursor.next_stream;
            let Some(t) = (0..workers)
                .map(|k| (next + k) % workers)
                .find(|&t| self.live[t])
            else {
                break;
            };
            match self.queues[t].recv() {
                Ok(StreamItem::Sample(s)) => {
                    self.cursor.streams[t] = s.after;
                    self.cursor.next_stream = (t + 1) % workers;
                    samples.push(*s);
                }
                Ok(StreamItem::ShardDone(path, counts)) => shards_done.push((path, counts)),
                Ok(StreamItem::Failed(e)) => return Err(e),
                Err(_) => self.live[t] = false,
            }
        }
        Ok((samples, shards_done))
    }
}

/// A batch's decoded rows: packed pixels, one caption each, and the samples that failed.
struct Rows {
    bytes: Vec<u8>,
    texts: Vec<String>,
    failed: Vec<(PathBuf, String)>,
}

/// Decodes and transforms the samples' images in parallel and picks a caption for each that
/// decoded. Both random draws are keyed by the sample, not by the thread that makes them.
fn prepare_rows(samples: Vec<StreamSample>, config: &LoaderConfig) -> Rows {
    let prepared: Vec<Result<Vec<u8>>> = samples
        .par_iter()
        .map(|s| {
            let origin = s.origin.to_string_lossy();
            let rgb = decode::decode_bytes_at(&s.sample.image, &origin, config.resolution())?;
            let mut rng = Rng::derive(config.seed ^ AUGMENT_STREAM, config.epoch, s.key);
            Ok(transform_image(&rgb, config, &mut rng))
        })
        .collect();
    let row = (config.image_size * config.image_size * 3) as usize;
    let mut rows = Rows {
        bytes: Vec::with_capacity(samples.len() * row),
        texts: Vec::with_capacity(samples.len() + 1),
        failed: Vec::new(),
    };
    for (s, result) in samples.into_iter().zip(prepared) {
        match result {
            Ok(rgb) => {
                rows.bytes.extend_from_slice(&rgb);
                let mut rng = Rng::derive(config.seed ^ CAPTION_STREAM, config.epoch, s.key);
                let captions = s.sample.captions;
                rows.texts.push(captions[rng.below(captions.len())].clone());
            }
            Err(e) => rows.failed.push((s.origin, e.to_string())),
        }
    }
    rows
}

/// One stream: its shards, read in order, shuffled in blocks.
struct Stream {
    id: u64,
    shards: Vec<PathBuf>,
    seed: u64,
    epoch: u64,
    block_size: usize,
    repeat: bool,
    tx: SyncSender<StreamItem>,
}

/// The block being read: where it starts, its number, and samples of it already used.
struct Block {
    start: StreamPosition,
    number: u64,
    skip: usize,
    items: Vec<(ShardSample, PathBuf)>,
}

/// The assembler has gone: the stream stops.
struct Gone;

impl Stream {
    fn run(self, start: StreamPosition) {
        if let Err(Some(e)) = self.read_from(start) {
            let _ = self.tx.send(StreamItem::Failed(e));
        }
    }

    /// The stream's shards in the order of `pass`.
    fn order(&self, pass: u64) -> Vec<PathBuf> {
        let mut order = self.shards.clone();
        let seed = Rng::derive(self.seed ^ SHARD_ORDER_STREAM, self.epoch, self.id).next_u64();
        Rng::derive(seed, 0, pass).shuffle(&mut order);
        order
    }

    /// Reads from `start` to the end of the data (`Err(None)`: the assembler has gone).
    fn read_from(&self, start: StreamPosition) -> std::result::Result<(), Option<Error>> {
        let mut block = Block {
            start,
            number: start.block,
            skip: start.taken as usize,
            items: Vec::new(),
        };
        let mut pass = start.pass;
        while pass == 0 || self.repeat {
            let order = self.order(pass);
            let first = if pass == start.pass { start.shard } else { 0 } as usize;
            let mut read_any = false;
            for (index, shard) in order.iter().enumerate().skip(first) {
                let skip = if (pass, index) == (start.pass, first) {
                    start.sample
                } else {
                    0
                };
                let mut sample = skip;
                let mut gone = false;
                let counts = read_shard(shard, skip as usize, &mut |s| {
                    if block.items.is_empty() {
                        block.start = StreamPosition {
                            pass,
                            shard: index as u64,
                            sample,
                            ..block.start
                        };
                    }
                    sample += 1;
                    read_any = true;
                    let origin = shard.join(&s.key);
                    block.items.push((s, origin));
                    if block.items.len() == self.block_size && self.flush(&mut block).is_err() {
                        gone = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                })
                .map_err(Some)?;
                if gone {
                    return Err(None);
                }
                self.send(StreamItem::ShardDone(shard.clone(), counts))
                    .map_err(|Gone| None)?;
            }
            if !read_any {
                break; // no shard of this stream holds a sample: another pass would spin
            }
            pass += 1;
        }
        self.flush(&mut block).map_err(|Gone| None)
    }

    /// Shuffles the block and hands on its samples not used yet.
    fn flush(&self, block: &mut Block) -> std::result::Result<(), Gone> {
        let mut items = std::mem::take(&mut block.items);
        let seed = Rng::derive(self.seed ^ BLOCK_SHUFFLE_STREAM, self.epoch, self.id).next_u64();
        Rng::derive(seed, 0, block.number).shuffle(&mut items);
        for (i, (sample, origin)) in items.into_iter().enumerate().skip(block.skip) {
            let after = StreamPosition {
                block: block.number,
                taken: i as u64 + 1,
                ..block.start
            };
            let key = (self.id << 40) | (block.number * self.block_size as u64 + i as u64);
            self.send(StreamItem::Sample(Box::new(StreamSample {
                sample,
                origin,
                after,
                key,
            })))?;
        }
        block.number += 1;
        block.skip = 0;
        Ok(())
    }

    fn send(&self, item: StreamItem) -> std::result::Result<(), Gone> {
        self.tx.send(item).map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::ImageTransform;
    use std::collections::BTreeSet;

    /// Shards of solid 8x8 PNGs whose colour is the sample's number (red + 256 x green), so a
    /// batch's pixels say which samples it holds.
    fn write_shards(dir: &std::path::Path, sizes: &[usize]) -> Vec<PathBuf> {
        let mut id = 0u32;
        let mut paths = Vec::new();
        for (s, &n) in sizes.iter().enumerate() {
            let mut builder = tar::Builder::new(Vec::new());
            for _ in 0..n {
                let pixel = image::Rgb([(id % 256) as u8, (id / 256) as u8, 7]);
                let mut png = Vec::new();
                image::RgbImage::from_pixel(8, 8, pixel)
                    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .unwrap();
                let caption = format!("sample {id}");
                for (name, bytes) in [
                    (format!("{id:06}.png"), png),
                    (format!("{id:06}.txt"), caption.into_bytes()),
                ] {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder
                        .append_data(&mut header, name, bytes.as_slice())
                        .unwrap();
                }
                id += 1;
            }
            let path = dir.join(format!("{s:03}.tar"));
            std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
            paths.push(path);
        }
        paths
    }

    fn config(shards: &[PathBuf], rank: usize, world: usize, epoch: u64) -> StreamConfig {
        StreamConfig {
            shards: Arc::new(shards.to_vec()),
            rank,
            world,
            workers: 2,
            shuffle_buffer: 4,
            repeat: false,
            batch_size: 3,
            batches: 1000,
            pad: false,
            loader: LoaderConfig {
                image_size: 8,
                transform: ImageTransform::Center,
                prefetch: 2,
                seed: 11,
                epoch,
                pin_memory: None,
                decode: crate::image::DecodeMode::Exact,
            },
        }
    }

    /// The sample numbers of each batch (from its pixels), and the cursor after it.
    fn run(config: StreamConfig, cursor: RankCursor) -> Vec<(Vec<u32>, RankCursor)> {
        let tokenizer = TextTokenizer::new(16).unwrap();
        ShardLoader::start(config, cursor, tokenizer)
            .map(|b| {
                let b = b.unwrap();
                let px = Vec::<u8>::try_from(&b.pixels.flatten(0, -1)).unwrap();
                let ids = px
                    .chunks(8 * 8 * 3)
                    .map(|p| u32::from(p[0]) + 256 * u32::from(p[1]))
                    .collect::<Vec<_>>();
                assert_eq!(b.captions.len(), ids.len());
                (ids, b.stream.unwrap().cursor)
            })
            .collect()
    }

    fn flat(batches: &[(Vec<u32>, RankCursor)]) -> Vec<u32> {
        batches.iter().flat_map(|(ids, _)| ids.clone()).collect()
    }

    #[test]
    fn ranks_and_workers_read_disjoint_shards_covering_every_sample_once() {
        let tmp = tempfile::tempdir().unwrap();
        let sizes = [5, 7, 3, 6, 4];
        let shards = write_shards(tmp.path(), &sizes);
        let mut all = Vec::new();
        for rank in 0..2 {
            let got = flat(&run(config(&shards, rank, 2, 0), RankCursor::start(2)));
            let counts: Vec<usize> = sizes.to_vec();
            assert_eq!(got.len(), rank_samples(&counts, rank, 2, 2));
            all.extend(got);
        }
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        assert_eq!(all.len(), 25);
        assert_eq!(distinct, (0..25).collect());
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        let tmp = tempfile::tempdir().unwrap();
        let shards = write_shards(tmp.path(), &[9, 9, 9]);
        let once = flat(&run(config(&shards, 0, 1, 0), RankCursor::start(2)));
        let again = flat(&run(config(&shards, 0, 1, 0), RankCursor::start(2)));
        let next_epoch = flat(&run(config(&shards, 0, 1, 1), RankCursor::start(2)));
        assert_eq!(once, again);
        assert_ne!(once, next_epoch);
        let sorted = |v: &[u32]| v.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(sorted(&once), sorted(&next_epoch));
        // Blocks are shuffled: not the order the shards hold.
        assert_ne!(once, (0..27).collect::<Vec<_>>());
    }

    /// From the cursor after any batch, a restarted loader delivers exactly the rest.
    #[test]
    fn restarting_at_a_cursor_continues_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let shards = write_shards(tmp.path(), &[7, 5, 8, 2]);
        for repeat in [false, true] {
            let mut c = config(&shards, 0, 1, 3);
            c.repeat = repeat;
            c.batches = 17; // with repeat, more than one pass
            let whole = run(c.clone(), RankCursor::start(2));
            if repeat {
                assert_eq!(whole.len(), 17);
            }
            for k in 1..whole.len() {
                let rest = run(
                    StreamConfig {
                        batches: c.batches - k,
                        ..c.clone()
                    },
                    whole[k - 1].1.clone(),
                );
                assert_eq!(flat(&rest), flat(&whole[k..]), "resumed after batch {k}");
            }
        }
    }

    #[test]
    fn cursors_encode_and_decode() {
        let mut a = RankCursor::start(3);
        a.next_stream = 2;
        a.streams[1] = StreamPosition {
            pass: 1,
            shard: 4,
            sample: 900,
            block: 12,
            taken: 3,
        };
        let b = RankCursor::start(3);
        let mut values = a.encode();
        values.extend(b.encode());
        assert_eq!(RankCursor::decode_all(&values, 3), vec![a, b]);
    }
}
