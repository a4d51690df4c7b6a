//! Training batches streamed from WebDataset shards, in memory bounded by the shuffle buffers
//! and the prefetched batches, never by the size of the data set.
//!
//! Shards are dealt to `world x workers` streams once for the run: stream `g = rank * workers +
//! t` takes shards `g, g + S, g + 2S, ...` of the list (`S` streams), so every epoch each rank
//! reads the same shards. Each stream is a thread that reads its shards in an order shuffled
//! by (seed, epoch, pass), [`OPEN_SHARDS`] of them at once, into a shuffle buffer of
//! `shuffle_buffer` samples (webdataset's `shuffle(n)`): each sample handed on is drawn at
//! random from the buffer, and its place is refilled from a shard picked at random among the
//! open ones. Shards written in source order (one class, one site, one day after another) so
//! still mix within a batch. A rank's assembler thread takes samples from its streams in turn,
//! decodes and transforms a batch's images in parallel (rayon), picks and tokenizes one caption
//! per sample, and queues the batch.
//!
//! Memory: each stream holds its buffer, [`STREAM_QUEUE`] samples queued for the assembler and
//! a few samples per open shard, so a rank holds about `workers x (shuffle_buffer + 110)`
//! encoded samples besides the prefetched batches.
//!
//! Every draw depends on (seed, epoch, stream) and the shards' contents only, so a stream is
//! the same sequence every time it is read. A sample carries how many samples its stream has
//! handed on once it is used ([`StreamPosition`]); a checkpoint inside an epoch records those
//! counts and the assembler's turn ([`RankCursor`]). A resumed stream reads its shards again
//! from the epoch's start, rebuilding its buffer draw by draw, and skips (without decoding)
//! the samples it had handed on: with the same ranks and workers the rest of the epoch is
//! exactly that of an unbroken run, for the cost of re-reading the part of the epoch done.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::loader::{pixels_tensor, transform_image, BatchCaptions, ImageBatch, LoaderConfig};
use super::shards::{read_shard, ShardCounts, ShardSample};
use super::{AUGMENT_STREAM, CAPTION_STREAM, SHARD_ORDER_STREAM, SHUFFLE_BUFFER_STREAM};
use crate::error::{Error, Result};
use crate::image::decode;
use crate::rng::Rng;
use crate::text::{TextTokenizer, TokenizedCaptions};

/// Samples a stream holds ahead of the assembler (beyond its shuffle buffer).
const STREAM_QUEUE: usize = 64;
/// Shards a stream reads at once into its shuffle buffer.
pub const OPEN_SHARDS: usize = 16;
/// Samples each open shard's reader holds ahead.
const READER_QUEUE: usize = 2;

/// Where a stream stands in its epoch: how many samples it has handed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// (Older versions saved other fields: read as 0, with the cursor's format 0.)
    #[serde(default)]
    pub used: u64,
}

impl StreamPosition {
    const FIELDS: usize = 1;

    fn encode(&self) -> [i64; Self::FIELDS] {
        [self.used as i64]
    }

    fn decode(v: &[i64]) -> Self {
        StreamPosition { used: v[0] as u64 }
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
    /// How streams read: [`CURSOR_FORMAT`] for positions this version can continue from.
    /// Cursors saved by versions that shuffled in blocks have none (0).
    #[serde(default)]
    pub format: u32,
    pub workers: usize,
    pub ranks: Vec<RankCursor>,
}

/// The [`ShardCursor::format`] of this version's streams.
pub const CURSOR_FORMAT: u32 = 2;

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
                buffer_size: config.shuffle_buffer.max(1),
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

/// One stream: its shards, read [`OPEN_SHARDS`] at a time through a shuffle buffer.
struct Stream {
    id: u64,
    shards: Vec<PathBuf>,
    seed: u64,
    epoch: u64,
    buffer_size: usize,
    repeat: bool,
    tx: SyncSender<StreamItem>,
}

/// The assembler has gone: the stream stops.
struct Gone;

/// Why a stream stopped before the end of its data.
enum Stop {
    Gone,
    Failed(Error),
}

impl From<Gone> for Stop {
    fn from(_: Gone) -> Self {
        Stop::Gone
    }
}

impl Stream {
    fn run(self, start: StreamPosition) {
        if let Err(Stop::Failed(e)) = self.stream_from(start) {
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

    /// Hands on the epoch's samples after the first `start.used` ones (which are drawn, so
    /// that the buffer is the one an unbroken stream has, but not sent).
    fn stream_from(&self, start: StreamPosition) -> std::result::Result<(), Stop> {
        let mut rng = Rng::derive(self.seed ^ SHUFFLE_BUFFER_STREAM, self.epoch, self.id);
        let mut feed = ShardFeed::new(self);
        let mut buffer: Vec<(ShardSample, PathBuf)> = Vec::with_capacity(self.buffer_size);
        let mut used = 0u64;
        loop {
            while buffer.len() < self.buffer_size {
                match feed.next(&mut rng)? {
                    Some(item) => buffer.push(item),
                    None => break,
                }
            }
            if buffer.is_empty() {
                return Ok(());
            }
            let (sample, origin) = buffer.swap_remove(rng.below(buffer.len()));
            used += 1;
            if used <= start.used {
                continue; // handed on before the checkpoint
            }
            self.send(StreamItem::Sample(Box::new(StreamSample {
                sample,
                origin,
                after: StreamPosition { used },
                key: (self.id << 40) | (used - 1),
            })))?;
        }
    }

    fn send(&self, item: StreamItem) -> std::result::Result<(), Gone> {
        self.tx.send(item).map_err(|_| Gone)
    }
}

/// The samples of a stream's shards, [`OPEN_SHARDS`] shards read at once (each by its own
/// thread), one sample at a time from a shard picked at random.
struct ShardFeed<'a> {
    stream: &'a Stream,
    pass: u64,
    order: Vec<PathBuf>,
    next_shard: usize,
    open: Vec<(PathBuf, Receiver<ReaderItem>)>,
    /// Samples delivered so far: a pass over shards that hold none would never end.
    delivered: u64,
}

/// What a shard's reader thread sends.
enum ReaderItem {
    Sample(ShardSample),
    Done(ShardCounts),
    Failed(Error),
}

impl<'a> ShardFeed<'a> {
    fn new(stream: &'a Stream) -> Self {
        ShardFeed {
            order: stream.order(0),
            stream,
            pass: 0,
            next_shard: 0,
            open: Vec::new(),
            delivered: 0,
        }
    }

    /// The next sample and its origin (`shard.tar/key`); `None` once every shard is read.
    fn next(&mut self, rng: &mut Rng) -> std::result::Result<Option<(ShardSample, PathBuf)>, Stop> {
        loop {
            self.open_more();
            if self.open.is_empty() {
                return Ok(None);
            }
            let i = rng.below(self.open.len());
            match self.open[i].1.recv() {
                Ok(ReaderItem::Sample(sample)) => {
                    self.delivered += 1;
                    let origin = self.open[i].0.join(&sample.key);
                    return Ok(Some((sample, origin)));
                }
                Ok(ReaderItem::Done(counts)) => {
                    let (shard, _) = self.open.remove(i);
                    self.stream.send(StreamItem::ShardDone(shard, counts))?;
                }
                Ok(ReaderItem::Failed(e)) => return Err(Stop::Failed(e)),
                Err(_) => {
                    let shard = &self.open[i].0;
                    return Err(Stop::Failed(Error::io(
                        shard,
                        std::io::Error::other("the shard's reader thread stopped"),
                    )));
                }
            }
        }
    }

    /// Opens shards until [`OPEN_SHARDS`] are open or none is left; with `repeat`, a pass that
    /// ends starts the next (once the stream has shown it holds samples at all).
    fn open_more(&mut self) {
        while self.open.len() < OPEN_SHARDS {
            if self.next_shard == self.order.len() {
                let empty_so_far = self.delivered == 0;
                if !self.stream.repeat || self.order.is_empty() || empty_so_far {
                    return;
                }
                self.pass += 1;
                self.order = self.stream.order(self.pass);
                self.next_shard = 0;
            }
            let shard = self.order[self.next_shard].clone();
            self.next_shard += 1;
            let rx = spawn_reader(shard.clone());
            self.open.push((shard, rx));
        }
    }
}

/// Reads `shard` on a thread of its own, a few samples ahead; the thread ends with the shard
/// or when the receiver is dropped.
fn spawn_reader(shard: PathBuf) -> Receiver<ReaderItem> {
    let (tx, rx) = sync_channel(READER_QUEUE);
    let _ = std::thread::Builder::new()
        .name("liteclip-shard".into())
        .spawn(move || {
            let result = read_shard(&shard, 0, &mut |sample| match tx
                .send(ReaderItem::Sample(sample))
            {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            });
            let _ = tx.send(match result {
                Ok(counts) => ReaderItem::Done(counts),
                Err(e) => ReaderItem::Failed(e),
            });
        });
    rx
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

    /// Shards that each hold one class (as shards written in source order do) still give
    /// batches of several classes: the buffer is filled from several shards at once.
    #[test]
    fn samples_of_shards_written_in_order_mix_within_a_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let shards = write_shards(tmp.path(), &[16; 8]); // shard s: samples 16s..16s+15
        let mut c = config(&shards, 0, 1, 0);
        c.workers = 1;
        c.shuffle_buffer = 32;
        c.batch_size = 16;
        let batches = run(c, RankCursor::start(1));
        assert_eq!(flat(&batches).len(), 128);
        for (ids, _) in &batches[..batches.len() - 2] {
            let shards: BTreeSet<u32> = ids.iter().map(|id| id / 16).collect();
            assert!(shards.len() >= 3, "a batch from shards {shards:?}: {ids:?}");
        }
    }

    #[test]
    fn cursors_encode_and_decode() {
        let mut a = RankCursor::start(3);
        a.next_stream = 2;
        a.streams[1] = StreamPosition { used: 900 };
        let b = RankCursor::start(3);
        let mut values = a.encode();
        values.extend(b.encode());
        assert_eq!(RankCursor::decode_all(&values, 3), vec![a, b]);
    }
}
