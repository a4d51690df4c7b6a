//! Captioned image data sets: reading them (Flickr8k layout or any CSV), splitting them by image,
//! and ordering them into batches. Decoding happens in [`loader`]; the built-in synthetic set is
//! in [`synthetic`].

pub mod loader;
pub mod shards;
pub mod source;
pub mod stream;
pub mod synthetic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Where the captions and images of a data set are.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub image_column: String,
    pub caption_column: String,
    /// Folder that image paths in the CSV are relative to (default: `Images/` beside the CSV
    /// if it exists, else the CSV's folder).
    pub images_dir: Option<PathBuf>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            image_column: "image".into(),
            caption_column: "caption".into(),
            images_dir: None,
        }
    }
}

/// One image and all of its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: PathBuf,
    pub captions: Vec<String>,
}

/// What was dropped while reading a data set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadReport {
    pub rows: usize,
    pub malformed_rows: usize,
    pub missing_images: usize,
    /// A few examples of the problems, for the message shown to users.
    pub examples: Vec<String>,
}

impl ReadReport {
    fn note(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub entries: Vec<Entry>,
    pub report: ReadReport,
}

/// The positions of the image and caption columns in the CSV's header.
fn csv_columns(
    reader: &mut csv::Reader<&[u8]>,
    options: &CsvOptions,
    csv_path: &Path,
) -> Result<(usize, usize)> {
    let headers = reader
        .headers()
        .map_err(|e| {
            Error::invalid(format!(
                "{}: cannot read the header: {e}",
                csv_path.display()
            ))
        })?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{}: no column {name:?}; the columns are {:?} (choose them with \
                     image_column= and caption_column=)",
                    csv_path.display(),
                    headers.iter().collect::<Vec<_>>()
                ))
            })
    };
    Ok((
        column(&options.image_column)?,
        column(&options.caption_column)?,
    ))
}

/// A row's image and caption, trimmed; why not, for a malformed row.
fn image_and_caption(
    record: &csv::StringRecord,
    image_col: usize,
    caption_col: usize,
) -> std::result::Result<(String, String), String> {
    let (Some(image), Some(caption)) = (record.get(image_col), record.get(caption_col)) else {
        return Err("missing fields".into());
    };
    let (image, caption) = (image.trim(), caption.trim());
    if image.is_empty() || caption.is_empty() {
        return Err("empty image or caption".into());
    }
    Ok((image.to_owned(), caption.to_owned()))
}

/// Captions grouped by image, in the order images first appear; rows whose image file does not
/// exist are counted, not kept.
struct GroupedCaptions<'a> {
    images_dir: &'a Path,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    exists: HashMap<String, bool>,
}

impl<'a> GroupedCaptions<'a> {
    fn new(images_dir: &'a Path) -> Self {
        GroupedCaptions {
            images_dir,
            entries: Vec::new(),
            index: HashMap::new(),
            exists: HashMap::new(),
        }
    }

    fn add(&mut self, image: &str, caption: &str, line: usize, report: &mut ReadReport) {
        let images_dir = self.images_dir;
        let present = *self
            .exists
            .entry(image.to_owned())
            .or_insert_with(|| images_dir.join(image).is_file());
        if !present {
            report.missing_images += 1;
            report.note(format!(
                "line {line}: image {image} not found in {}",
                images_dir.display()
            ));
            return;
        }
        match self.index.get(image) {
            Some(&i) => self.entries[i].captions.push(caption.to_owned()),
            None => {
                self.index.insert(image.to_owned(), self.entries.len());
                self.entries.push(Entry {
                    path: images_dir.join(image),
                    captions: vec![caption.to_owned()],
                });
            }
        }
    }
}

/// Names tried, in order, for the captions file of a data set folder.
const CAPTION_FILES: [&str; 3] = ["captions.txt", "captions.csv", "captions.tsv"];

/// The captions file of a data set folder, if it has one.
pub(crate) fn captions_file(folder: &Path) -> Option<PathBuf> {
    CAPTION_FILES
        .iter()
        .map(|name| folder.join(name))
        .find(|p| p.is_file())
}

impl Dataset {
    /// Reads a data set: a folder in the Flickr8k layout (`Images/` + `captions.txt`, a CSV with
    /// header `image,caption`), or a CSV file. Rows that cannot be parsed and images that do not
    /// exist are skipped and counted in [`Dataset::report`].
    pub fn open(data: &Path, options: &CsvOptions) -> Result<Self> {
        if !data.exists() {
            return Err(Error::FileNotFound {
                path: data.to_owned(),
                hint: Some(
                    "expected a data set folder (Images/ + captions.txt), a CSV, or WebDataset \
                     shards (.tar files or a pattern such as shards/{00000..00009}.tar)"
                        .into(),
                ),
            });
        }
        let csv_path = if data.is_dir() {
            captions_file(data).ok_or_else(|| Error::FileNotFound {
                path: data.join(CAPTION_FILES[0]),
                hint: Some(format!(
                    "a data set folder needs a captions file ({}) with columns \"{}\" and \"{}\"",
                    CAPTION_FILES.join(", "),
                    options.image_column,
                    options.caption_column
                )),
            })?
        } else {
            data.to_owned()
        };
        let base = csv_path.parent().unwrap_or(Path::new(".")).to_owned();
        let images_dir = match &options.images_dir {
            Some(dir) => dir.clone(),
            None if base.join("Images").is_dir() => base.join("Images"),
            None => base,
        };
        let text = std::fs::read(&csv_path).map_err(|e| Error::io(&csv_path, e))?;
        let delimiter = if csv_path.extension().is_some_and(|e| e == "tsv") {
            b'\t'
        } else {
            b','
        };
        Self::from_csv(&text, delimiter, &images_dir, options, &csv_path)
    }

    fn from_csv(
        text: &[u8],
        delimiter: u8,
        images_dir: &Path,
        options: &CsvOptions,
        csv_path: &Path,
    ) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_reader(text);
        let (image_col, caption_col) = csv_columns(&mut reader, options, csv_path)?;
        let mut report = ReadReport::default();
        let mut grouped = GroupedCaptions::new(images_dir);
        for (row, record) in reader.records().enumerate() {
            report.rows += 1;
            let line = row + 2; // 1-based, after the header
            let pair = record
                .map_err(|e| e.to_string())
                .and_then(|r| image_and_caption(&r, image_col, caption_col));
            match pair {
                Ok((image, caption)) => grouped.add(&image, &caption, line, &mut report),
                Err(why) => {
                    report.malformed_rows += 1;
                    report.note(format!("line {line}: {why}"));
                }
            }
        }
        if grouped.entries.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no usable (image, caption) rows out of {} ({} malformed, {} with missing \
                 images){}",
                csv_path.display(),
                report.rows,
                report.malformed_rows,
                report.missing_images,
                report
                    .examples
                    .first()
                    .map(|e| format!("; e.g. {e}"))
                    .unwrap_or_default()
            )));
        }
        Ok(Dataset {
            entries: grouped.entries,
            report,
        })
    }

    pub fn from_entries(entries: Vec<Entry>) -> Self {
        Dataset {
            entries,
            report: ReadReport::default(),
        }
    }

    pub fn num_images(&self) -> usize {
        self.entries.len()
    }

    pub fn num_captions(&self) -> usize {
        self.entries.iter().map(|e| e.captions.len()).sum()
    }

    /// Splits by image, never by caption row: all captions of an image land on the same side.
    /// `val_fraction` of the images (at least one when positive) go to validation, chosen by
    /// `seed`; both sides keep the data set's order.
    pub fn split(&self, val_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::invalid(format!(
                "val_fraction must be in [0, 1), got {val_fraction}"
            )));
        }
        let n = self.entries.len();
        let mut n_val = (n as f64 * val_fraction).round() as usize;
        if val_fraction > 0.0 {
            n_val = n_val.max(1);
        }
        if n_val >= n && n_val > 0 {
            return Err(Error::invalid(format!(
                "val_fraction {val_fraction} leaves no training images out of {n}"
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        Rng::derive(seed, SPLIT_STREAM, 0).shuffle(&mut order);
        let mut is_val = vec![false; n];
        for &i in &order[..n_val] {
            is_val[i] = true;
        }
        let pick = |want: bool| Dataset {
            entries: self
                .entries
                .iter()
                .zip(&is_val)
                .filter(|(_, &v)| v == want)
                .map(|(e, _)| e.clone())
                .collect(),
            report: ReadReport::default(),
        };
        Ok((pick(false), pick(true)))
    }
}

/// Extensions of files taken as images in image folders.
pub const IMAGE_EXTENSIONS: [&str; 12] = [
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "tga", "qoi",
];

/// Whether a file is taken as an image by its extension (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Every image file under `root`, recursively, sorted by path. Hidden files and folders
/// (names starting with '.') are passed over, as are links to folders (no cycles).
pub fn list_images(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.is_dir() {
        return Err(Error::FileNotFound {
            path: root.to_owned(),
            hint: Some("expected a folder of images".into()),
        });
    }
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if is_image_path(&path) && path.is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A labelled image folder (torchvision's ImageFolder layout): one sub-folder per class.
#[derive(Debug, Clone, Default)]
pub struct ImageFolder {
    /// Class names: sub-folder names, sorted, with `_` read as a space.
    pub classes: Vec<String>,
    /// `(image path, class index)`, sorted by class then file name.
    pub images: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    pub fn open(root: &Path) -> Result<Self> {
        let read_dir = |dir: &Path| -> Result<Vec<PathBuf>> {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            Ok(entries)
        };
        if !root.is_dir() {
            return Err(Error::FileNotFound {
                path: root.to_owned(),
                hint: Some("expected a folder with one sub-folder of images per class".into()),
            });
        }
        let mut classes = Vec::new();
        let mut images = Vec::new();
        for dir in read_dir(root)?.into_iter().filter(|p| p.is_dir()) {
            let files: Vec<PathBuf> = read_dir(&dir)?
                .into_iter()
                .filter(|p| is_image_path(p))
                .collect();
            if files.is_empty() {
                continue;
            }
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().replace('_', " "))
                .unwrap_or_default();
            let class = classes.len();
            classes.push(name);
            images.extend(files.into_iter().map(|f| (f, class)));
        }
        if classes.len() < 2 {
            return Err(Error::invalid(format!(
                "{}: an image folder needs at least 2 class sub-folders with images, found {}",
                root.display(),
                classes.len()
            )));
        }
        Ok(ImageFolder { classes, images })
    }
}

/// File beside a checkpoint that records the data set it was trained on and how it was split.
pub const DATA_INFO_FILE: &str = "data.json";

/// How a run splits its data: stored with checkpoints so `evaluate(split="val")` can rebuild
/// the same validation set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataInfo {
    pub data: PathBuf,
    pub image_column: String,
    pub caption_column: String,
    pub images_dir: Option<PathBuf>,
    pub val_fraction: f64,
    pub seed: u64,
    /// A separate validation set (`val_data`): then `data` is trained on whole.
    #[serde(default)]
    pub val_data: Option<PathBuf>,
    /// `data` named WebDataset shards (not split: `val_data` is the validation set).
    #[serde(default)]
    pub shards: bool,
}

impl DataInfo {
    pub fn read(checkpoint: &Path) -> Option<Self> {
        let dir = if checkpoint.is_dir() {
            checkpoint.to_owned()
        } else {
            checkpoint.parent()?.to_owned()
        };
        let text = std::fs::read_to_string(dir.join(DATA_INFO_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn csv_options(&self) -> CsvOptions {
        CsvOptions {
            image_column: self.image_column.clone(),
            caption_column: self.caption_column.clone(),
            images_dir: self.images_dir.clone(),
        }
    }
}

/// Random streams, so that each kind of choice has its own sequence for a seed.
pub const SPLIT_STREAM: u64 = 1;
pub const ORDER_STREAM: u64 = 2;
pub const AUGMENT_STREAM: u64 = 3;
/// Shard streams: the order of a stream's shards, its shuffle buffer's draws, and the caption
/// picked for a sample with several.
pub const SHARD_ORDER_STREAM: u64 = 4;
pub const SHUFFLE_BUFFER_STREAM: u64 = 5;
pub const CAPTION_STREAM: u64 = 6;
/// Writing shards: the order of the samples.
pub const SHARD_WRITE_STREAM: u64 = 7;

/// One training pair: an image and one of its captions (indices into a [`Dataset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sample {
    pub entry: u32,
    pub caption: u32,
}

/// The pairs of one epoch. Every caption is used once; captions come in rounds (each image's
/// first caption in shuffled image order, then each image's second, ...), so an image appears
/// at most once per round and rarely twice in a batch.
pub fn epoch_samples(dataset: &Dataset, seed: u64, epoch: u64) -> Vec<Sample> {
    let mut rng = Rng::derive(seed, ORDER_STREAM, epoch);
    let caption_orders: Vec<Vec<u32>> = dataset
        .entries
        .iter()
        .map(|e| {
            let mut order: Vec<u32> = (0..e.captions.len() as u32).collect();
            rng.shuffle(&mut order);
            order
        })
        .collect();
    let rounds = caption_orders.iter().map(Vec::len).max().unwrap_or(0);
    let mut samples = Vec::with_capacity(dataset.num_captions());
    for round in 0..rounds {
        let mut images: Vec<u32> = (0..dataset.entries.len() as u32)
            .filter(|&i| caption_orders[i as usize].len() > round)
            .collect();
        rng.shuffle(&mut images);
        samples.extend(images.into_iter().map(|i| Sample {
            entry: i,
            caption: caption_orders[i as usize][round],
        }));
    }
    samples
}

/// Cuts samples into batches of `batch_size` in which no image appears twice (a repeated image
/// would be its own false negative in the contrastive loss): a duplicate is swapped with the
/// next sample whose image is not in the batch yet. A last batch of fewer than two pairs is
/// dropped (a contrastive loss needs negatives).
pub fn make_batches(mut samples: Vec<Sample>, batch_size: usize) -> Vec<Vec<Sample>> {
    let batch_size = batch_size.max(1);
    let mut batches = Vec::with_capacity(samples.len() / batch_size + 1);
    let mut start = 0;
    while start < samples.len() {
        let end = (start + batch_size).min(samples.len());
        let mut seen = std::collections::HashSet::with_capacity(batch_size);
        for i in start..end {
            if !seen.insert(samples[i].entry) {
                if let Some(j) = (end..samples.len()).find(|&j| !seen.contains(&samples[j].entry)) {
                    samples.swap(i, j);
                    seen.insert(samples[i].entry);
                }
            }
        }
        batches.push(samples[start..end].to_vec());
        start = end;
    }
    if batches.last().is_some_and(|b| b.len() < 2) {
        batches.pop();
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n_images: usize, captions_each: usize) -> Dataset {
        Dataset::from_entries(
            (0..n_images)
                .map(|i| Entry {
                    path: PathBuf::from(format!("{i}.png")),
                    captions: (0..captions_each)
                        .map(|c| format!("image {i} caption {c}"))
                        .collect(),
                })
                .collect(),
        )
    }

    #[test]
    fn split_is_by_image_and_deterministic() {
        let data = toy(50, 5);
        let (train, val) = data.split(0.2, 7).unwrap();
        assert_eq!((train.num_images(), val.num_images()), (40, 10));
        assert_eq!(val.num_captions(), 50);
        for e in &val.entries {
            assert!(!train.entries.iter().any(|t| t.path == e.path));
        }
        let (_, val2) = data.split(0.2, 7).unwrap();
        assert_eq!(val.entries, val2.entries);
        let (_, val3) = data.split(0.2, 8).unwrap();
        assert_ne!(val.entries, val3.entries);
        assert!(data.split(1.0, 0).is_err());
        assert_eq!(data.split(0.0, 0).unwrap().1.num_images(), 0);
    }

    #[test]
    fn epochs_use_every_caption_once_and_batches_avoid_duplicate_images() {
        let data = toy(30, 5);
        let samples = epoch_samples(&data, 1, 0);
        assert_eq!(samples.len(), 150);
        let unique: std::collections::HashSet<_> = samples.iter().collect();
        assert_eq!(unique.len(), 150);
        assert_ne!(samples, epoch_samples(&data, 1, 1));
        assert_eq!(samples, epoch_samples(&data, 1, 0));
        let batches = make_batches(samples, 8);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 150);
        for b in &batches {
            let images: std::collections::HashSet<_> = b.iter().map(|s| s.entry).collect();
            assert_eq!(images.len(), b.len());
        }
    }

    #[test]
    fn reads_csv_skipping_bad_rows_and_missing_images() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("Images");
        std::fs::create_dir(&images).unwrap();
        for name in ["a.jpg", "b.jpg"] {
            std::fs::write(images.join(name), b"x").unwrap();
        }
        std::fs::write(
            dir.path().join("captions.txt"),
            "image,caption\na.jpg,\"a dog, running\"\na.jpg,a dog\nb.jpg,a cat\n\
             c.jpg,a missing image\n,no image\nb.jpg\n",
        )
        .unwrap();
        let data = Dataset::open(dir.path(), &CsvOptions::default()).unwrap();
        assert_eq!(data.num_images(), 2);
        assert_eq!(data.entries[0].captions, vec!["a dog, running", "a dog"]);
        assert_eq!(data.report.rows, 6);
        assert_eq!(data.report.missing_images, 1);
        assert_eq!(data.report.malformed_rows, 2);

        let e = Dataset::open(
            dir.path(),
            &CsvOptions {
                caption_column: "text".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no column \"text\""), "{e}");
    }
}
