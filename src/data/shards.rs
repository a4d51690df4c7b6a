//! WebDataset shards: tar files whose members `{key}.{ext}` group into samples, as img2dataset
//! writes them (`{key}.jpg|jpeg|png|webp` with `{key}.txt`, and optionally `{key}.json`).
//!
//! This module names shards (paths, brace patterns such as `shards/{00000..00127}.tar`, globs),
//! reads the samples of one shard as a stream (memory bounded by one sample, a sample at a
//! position can be skipped to), and writes shards from a captioned data set.

use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Dataset, SHARD_WRITE_STREAM};
use crate::error::{Error, Result};
use crate::fsio;
use crate::rng::Rng;

/// Extensions of the image member of a sample, as img2dataset writes them.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// One sample of a shard: its image's encoded bytes and its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSample {
    pub key: String,
    pub image: Vec<u8>,
    /// The `.txt` caption, then those of the `.json` (`"captions": [...]` or `"caption"`)
    /// that differ from it.
    pub captions: Vec<String>,
}

/// What reading a shard passed over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCounts {
    pub samples: usize,
    /// Samples with an image but no caption.
    pub no_caption: usize,
    /// Samples with a caption but no image member.
    pub no_image: usize,
    /// The shard ended in the middle of a member (a truncated or damaged tar): the samples
    /// read until then are kept.
    pub truncated: bool,
}

/// The shard files `specs` name, in order: each is a path, a brace pattern (`{000..127}`
/// ranges keep their zero padding; `{a,b}` lists), or a glob (`*`, `?`, `[...]`, matches
/// sorted). A pattern that names nothing, or names shards that do not exist, is an error that
/// says how many of the named shards exist and which pattern names those there are.
pub fn expand(specs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for spec in specs {
        let named = expand_braces(spec)?;
        let missing: Vec<&String> = named
            .iter()
            .filter(|p| !p.contains(['*', '?', '[']) && !Path::new(p).is_file())
            .collect();
        if let Some(first) = missing.first() {
            return Err(missing_shards(
                spec,
                named.len(),
                &missing,
                Path::new(first),
            ));
        }
        for pattern in named {
            if pattern.contains(['*', '?', '[']) {
                let mut matches: Vec<PathBuf> = glob::glob(&pattern)
                    .map_err(|e| Error::invalid(format!("bad shard pattern {pattern:?}: {e}")))?
                    .filter_map(|m| m.ok())
                    .collect();
                if matches.is_empty() {
                    return Err(Error::FileNotFound {
                        path: PathBuf::from(&pattern),
                        hint: Some("no shard file matches this pattern".into()),
                    });
                }
                matches.sort();
                out.extend(matches);
            } else {
                out.push(PathBuf::from(&pattern));
            }
        }
    }
    Ok(out)
}

/// The error for a spec naming `total` shards of which `missing` do not exist.
fn missing_shards(spec: &str, total: usize, missing: &[&String], first: &Path) -> Error {
    let folder = first
        .parent()
        .filter(|f| !f.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let present = tar_files(folder);
    let mut hint = if total == 1 {
        "the shard does not exist".to_owned()
    } else {
        format!(
            "{spec} names {total} shards, of which {} exist and {} are missing",
            total - missing.len(),
            missing.len()
        )
    };
    match pattern_for(folder, &present) {
        Some(pattern) => {
            hint += &format!(
                "; {} holds {} shards: data={pattern:?} names them (the pattern `liteclip shard` \
             printed)",
                folder.display(),
                present.len()
            )
        }
        None => hint += &format!("; {} holds no .tar files", folder.display()),
    }
    Error::FileNotFound {
        path: first.to_owned(),
        hint: Some(hint),
    }
}

/// The names of the `.tar` files in `folder`, sorted.
fn tar_files(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.to_ascii_lowercase().ends_with(".tar"))
        .collect();
    names.sort();
    names
}

/// A pattern naming exactly `names` (in `folder`): a brace range when they are consecutive
/// numbers of one width (what `write_shards` writes), else a glob.
fn pattern_for(folder: &Path, names: &[String]) -> Option<String> {
    let joined = |name: String| Some(folder.join(name).display().to_string());
    let (first, last) = (names.first()?, names.last()?);
    let width = first.len() - ".tar".len();
    let number = |name: &String| -> Option<u64> {
        let stem = &name[..name.len() - ".tar".len()];
        let digits = stem.len() == width && stem.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| stem.parse().ok())?
    };
    let numbers: Option<Vec<u64>> = names.iter().map(number).collect();
    match numbers {
        Some(n) if n.len() > 1 && n.windows(2).all(|w| w[1] == w[0] + 1) => {
            let (a, b) = (&first[..width], &last[..width]);
            joined(format!("{{{a}..{b}}}.tar"))
        }
        Some(n) if n.len() == 1 => joined(first.clone()),
        _ => joined("*.tar".into()),
    }
}

/// `a{1..3}b` -> `a1b a2b a3b`; `{x,y}` -> `x y`; nested and repeated groups expand in order.
fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_owned()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| Error::invalid(format!("unclosed '{{' in shard pattern {pattern:?}")))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let items: Vec<String> = match body.split_once("..") {
        Some((from, to)) => {
            let parse = |s: &str| {
                s.parse::<u64>().map_err(|_| {
                    Error::invalid(format!("bad range {{{body}}} in shard pattern {pattern:?}"))
                })
            };
            let (a, b) = (parse(from)?, parse(to)?);
            if a > b {
                return Err(Error::invalid(format!(
                    "empty range {{{body}}} in shard pattern {pattern:?}"
                )));
            }
            let width = if from.starts_with('0') { from.len() } else { 0 };
            (a..=b).map(|i| format!("{i:0width$}")).collect()
        }
        None => body.split(',').map(str::to_owned).collect(),
    };
    let mut out = Vec::new();
    for item in items {
        out.extend(expand_braces(&format!("{head}{item}{tail}"))?);
    }
    Ok(out)
}

/// `dir/abc.001.jpg` -> (`dir/abc`, `001.jpg`): the key ends at the basename's first dot, as in
/// WebDataset.
fn split_member(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base_start..].find('.')? + base_start;
    Some((&name[..dot], &name[dot + 1..]))
}

/// The members of one sample as they are read.
#[derive(Default)]
struct Pending {
    key: String,
    image: Option<Vec<u8>>,
    txt: Option<String>,
    json: Option<Vec<u8>>,
}

impl Pending {
    /// The sample, or which part it lacks.
    fn finish(self, counts: &mut ShardCounts) -> Option<ShardSample> {
        let mut captions: Vec<String> = self.txt.into_iter().map(|t| t.trim().to_owned()).collect();
        if let Some(json) = self.json {
            for caption in json_captions(&json) {
                if !captions.contains(&caption) {
                    captions.push(caption);
                }
            }
        }
        captions.retain(|c| !c.is_empty());
        match (self.image, captions.is_empty()) {
            (Some(image), false) => {
                counts.samples += 1;
                Some(ShardSample {
                    key: self.key,
                    image,
                    captions,
                })
            }
            (Some(_), true) => {
                counts.no_caption += 1;
                None
            }
            (None, _) => {
                counts.no_image += 1;
                None
            }
        }
    }
}

/// Captions in a sample's JSON: a `captions` list, else a `caption` string (img2dataset).
fn json_captions(bytes: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Meta {
        captions: Option<Vec<String>>,
        caption: Option<String>,
    }
    match serde_json::from_slice::<Meta>(bytes) {
        Ok(Meta {
            captions: Some(list),
            ..
        }) => list.into_iter().map(|c| c.trim().to_owned()).collect(),
        Ok(Meta {
            caption: Some(c), ..
        }) => vec![c.trim().to_owned()],
        _ => Vec::new(),
    }
}

/// Streams the samples of `shard` to `visit` in order, from the `skip`-th sample on (a resumed
/// stream), until it returns `Break`. Memory holds one sample at a time.
pub fn read_shard(
    shard: &Path,
    skip: usize,
    visit: &mut dyn FnMut(ShardSample) -> ControlFlow<()>,
) -> Result<ShardCounts> {
    let file = File::open(shard).map_err(|e| Error::io(shard, e))?;
    // A stream reads up to `stream::OPEN_SHARDS` shards at once: a modest buffer each.
    let mut archive = tar::Archive::new(BufReader::with_capacity(256 << 10, file));
    let mut counts = ShardCounts::default();
    let mut pending: Option<Pending> = None;
    let mut seen = 0usize;
    let mut deliver = |p: Pending, counts: &mut ShardCounts| -> ControlFlow<()> {
        match p.finish(counts) {
            Some(sample) => {
                seen += 1;
                if seen > skip {
                    visit(sample)
                } else {
                    ControlFlow::Continue(())
                }
            }
            None => ControlFlow::Continue(()),
        }
    };
    let entries = archive.entries().map_err(|e| Error::io(shard, e))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(_) => {
                counts.truncated = true;
                break;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => continue,
        };
        let Some((key, ext)) = split_member(&name) else {
            continue;
        };
        // The member's kind is its last extension (`x.y.4.webp` is a webp of sample `x`).
        let ext = ext.rsplit('.').next().unwrap_or(ext).to_ascii_lowercase();
        let key = key.to_owned();
        if pending.as_ref().is_some_and(|p| p.key != key) {
            let done = pending.take().expect("checked above");
            if deliver(done, &mut counts).is_break() {
                return Ok(counts);
            }
        }
        let p = pending.get_or_insert_with(|| Pending {
            key,
            ..Pending::default()
        });
        let size = entry.size();
        let mut bytes = Vec::with_capacity(size as usize);
        // A member cut short reads fewer bytes than its header says, without an error.
        if entry.read_to_end(&mut bytes).is_err() || (bytes.len() as u64) < size {
            counts.truncated = true;
            pending = None;
            break;
        }
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            p.image = Some(bytes);
        } else if ext == "txt" {
            p.txt = Some(String::from_utf8_lossy(&bytes).into_owned());
        } else if ext == "json" {
            p.json = Some(bytes);
        }
    }
    if let Some(last) = pending {
        let _ = deliver(last, &mut counts);
    }
    Ok(counts)
}

/// Writes `dataset` as shards `out/00000.tar`, `out/00001.tar`, ... of `per_shard` samples:
/// one sample per image (its file's bytes as they are, its first caption as `.txt`, all its
/// captions and its source path in `.json`). With `shuffle` (a seed), the images are written
/// in an order shuffled by it, so that shards made from a source sorted by class, site or date
/// each hold a bit of everything (a training stream mixes only a few shards at once); `None`
/// keeps the source's order. Each shard is written atomically. Returns the shard paths.
pub fn write_shards(
    dataset: &Dataset,
    out: &Path,
    per_shard: usize,
    shuffle: Option<u64>,
) -> Result<Vec<PathBuf>> {
    if per_shard == 0 {
        return Err(Error::invalid("samples_per_shard must be at least 1"));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut order: Vec<&super::Entry> = dataset.entries.iter().collect();
    if let Some(seed) = shuffle {
        Rng::derive(seed, SHARD_WRITE_STREAM, 0).shuffle(&mut order);
    }
    let mut written = Vec::new();
    for (s, entries) in order.chunks(per_shard).enumerate() {
        let path = out.join(format!("{s:05}.tar"));
        fsio::write_atomically(&path, |tmp| {
            let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
            let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
            for (i, entry) in entries.iter().enumerate() {
                let key = format!("{:09}", s * per_shard + i);
                let image = std::fs::read(&entry.path).map_err(|e| Error::io(&entry.path, e))?;
                let ext = image_extension(&entry.path);
                let meta = serde_json::json!({
                    "captions": entry.captions,
                    "source": entry.path.to_string_lossy(),
                });
                let caption = entry.captions.first().cloned().unwrap_or_default();
                let members: [(String, Vec<u8>); 3] = [
                    (format!("{key}.{ext}"), image),
                    (format!("{key}.txt"), caption.into_bytes()),
                    (format!("{key}.json"), meta.to_string().into_bytes()),
                ];
                for (name, bytes) in members {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder
                        .append_data(&mut header, &name, bytes.as_slice())
                        .map_err(|e| Error::io(tmp, e))?;
                }
            }
            builder
                .into_inner()
                .and_then(|mut w| std::io::Write::flush(&mut w))
                .map_err(|e| Error::io(tmp, e))
        })?;
        written.push(path);
    }
    Ok(written)
}

/// The member extension for an image file: its own when WebDataset readers know it (`jpg`,
/// `jpeg`, `png`, `webp`), else `jpg` for anything else (the reader decodes by content).
fn image_extension(path: &Path) -> String {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        ext
    } else {
        "jpg".into()
    }
}

/// The samples of a shard as its member names promise them (an image member and a `.txt` or
/// `.json` one under one key), from the tar headers alone: member contents are seeked over,
/// not read. An upper bound of what [`read_shard`] delivers (an empty caption or a truncated
/// shard gives fewer); it sizes epochs before any sample is read.
pub fn count_keys(shard: &Path) -> Result<usize> {
    let file = File::open(shard).map_err(|e| Error::io(shard, e))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| Error::io(shard, e))?;
    let (mut count, mut key, mut image, mut caption) = (0, String::new(), false, false);
    for entry in entries {
        let Ok(entry) = entry else {
            break; // damaged from here on: read_shard stops here too
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Ok(path) = entry.path() else { continue };
        let name = path.to_string_lossy();
        let Some((k, ext)) = split_member(&name) else {
            continue;
        };
        if k != key {
            count += usize::from(image && caption);
            (key, image, caption) = (k.to_owned(), false, false);
        }
        let ext = ext.rsplit('.').next().unwrap_or(ext).to_ascii_lowercase();
        image |= IMAGE_EXTENSIONS.contains(&ext.as_str());
        caption |= ext == "txt" || ext == "json";
    }
    Ok(count + usize::from(image && caption))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn read_all(path: &Path, skip: usize) -> (Vec<ShardSample>, ShardCounts) {
        let mut samples = Vec::new();
        let counts = read_shard(path, skip, &mut |s| {
            samples.push(s);
            ControlFlow::Continue(())
        })
        .unwrap();
        (samples, counts)
    }

    #[test]
    fn braces_and_globs_expand_in_order() {
        assert_eq!(
            expand_braces("s/{008..011}.tar").unwrap(),
            ["s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]
        );
        assert_eq!(
            expand_braces("{a,b}-{1..2}").unwrap(),
            ["a-1", "a-2", "b-1", "b-2"]
        );
        assert!(expand_braces("x{3..1}").is_err() && expand_braces("x{1..").is_err());
        let tmp = tempfile::tempdir().unwrap();
        for name in ["b.tar", "a.tar", "c.txt"] {
            std::fs::write(tmp.path().join(name), b"").unwrap();
        }
        let pattern = format!("{}/*.tar", tmp.path().display());
        let got = expand(&[pattern]).unwrap();
        assert_eq!(got, [tmp.path().join("a.tar"), tmp.path().join("b.tar")]);
        let missing = format!("{}/{{0..1}}.tar", tmp.path().display());
        assert!(matches!(
            expand(&[missing]),
            Err(Error::FileNotFound { .. })
        ));
    }

    #[test]
    fn a_pattern_naming_missing_shards_says_what_exists() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::write(tmp.path().join(format!("{i:05}.tar")), b"").unwrap();
        }
        let spec = format!("{}/{{00000..00127}}.tar", tmp.path().display());
        let err = expand(&[spec]).unwrap_err().to_string();
        assert!(
            err.contains("names 128 shards, of which 5 exist and 123 are missing"),
            "{err}"
        );
        assert!(err.contains("00005.tar"), "{err}");
        let suggested = format!("{}/{{00000..00004}}.tar", tmp.path().display());
        assert!(err.contains(&suggested), "{err}");
        // The suggestion names exactly what is there.
        assert_eq!(expand(&[suggested]).unwrap().len(), 5);
        std::fs::write(tmp.path().join("extra.tar"), b"").unwrap();
        let err = expand(&[format!("{}/00009.tar", tmp.path().display())]).unwrap_err();
        assert!(err.to_string().contains("*.tar"), "{err}");
    }

    #[test]
    fn members_group_into_samples_and_incomplete_ones_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.tar");
        let json = br#"{"captions": ["a dog", "a brown dog"]}"#;
        let bytes = tar_of(&[
            ("d/0001.jpg", b"IMG1"),
            ("d/0001.txt", b" a dog \n"),
            ("d/0001.json", json),
            ("d/0002.png", b"IMG2"),           // no caption
            ("d/0003.txt", b"lonely caption"), // no image
            ("d/x.y.4.webp", b"IMG4"),
            ("d/x.json", br#"{"caption": "from json"}"#),
        ]);
        std::fs::write(&path, &bytes).unwrap();
        let (samples, counts) = read_all(&path, 0);
        assert_eq!(samples.len(), 1 + 1);
        assert_eq!(samples[0].key, "d/0001");
        assert_eq!(samples[0].image, b"IMG1");
        assert_eq!(samples[0].captions, ["a dog", "a brown dog"]);
        assert_eq!(samples[1].key, "d/x");
        assert_eq!(samples[1].captions, ["from json"]);
        assert_eq!(
            (counts.samples, counts.no_caption, counts.no_image),
            (2, 1, 1)
        );
        assert_eq!(count_keys(&path).unwrap(), 2);
        assert!(!counts.truncated);
        // Skipping resumes at a sample.
        let (rest, _) = read_all(&path, 1);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].key, "d/x");
        // A shard cut inside its last member keeps the samples before the damage.
        // (10 bytes into the content of `d/x.json`, the last member: 512-byte blocks, 1024 to end.)
        std::fs::write(&path, &bytes[..bytes.len() - 1024 - 512 + 10]).unwrap();
        let (some, counts) = read_all(&path, 0);
        assert!(counts.truncated);
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].key, "d/0001");
    }

    #[test]
    fn written_shards_read_back_as_the_data_set() {
        let tmp = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for i in 0..5 {
            let p = tmp.path().join(format!("img{i}.png"));
            std::fs::write(&p, format!("png bytes {i}")).unwrap();
            entries.push(super::super::Entry {
                path: p,
                captions: vec![format!("caption {i}"), format!("other {i}")],
            });
        }
        let dataset = Dataset::from_entries(entries.clone());
        let out = tmp.path().join("shards");
        let shards = write_shards(&dataset, &out, 2, None).unwrap();
        assert_eq!(shards.len(), 3);
        let pattern = format!("{}/{{00000..00002}}.tar", out.display());
        assert_eq!(expand(&[pattern]).unwrap(), shards);
        let mut got = Vec::new();
        for shard in &shards {
            got.extend(read_all(shard, 0).0);
        }
        assert_eq!(got.len(), 5);
        for (sample, entry) in got.iter().zip(&entries) {
            assert_eq!(sample.image, std::fs::read(&entry.path).unwrap());
            assert_eq!(sample.captions, entry.captions);
        }
        assert!(write_shards(&dataset, &out, 0, None).is_err());
    }

    #[test]
    fn written_shards_are_shuffled_by_seed_unless_asked_not_to() {
        let tmp = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (0..40)
            .map(|i| {
                let p = tmp.path().join(format!("img{i:02}.png"));
                std::fs::write(&p, format!("png bytes {i}")).unwrap();
                super::super::Entry {
                    path: p,
                    captions: vec![format!("caption {i}")],
                }
            })
            .collect();
        let dataset = Dataset::from_entries(entries);
        let order = |name: &str, shuffle: Option<u64>| -> Vec<String> {
            let shards = write_shards(&dataset, &tmp.path().join(name), 8, shuffle).unwrap();
            shards
                .iter()
                .flat_map(|s| read_all(s, 0).0)
                .map(|s| s.captions[0].clone())
                .collect()
        };
        let source: Vec<String> = (0..40).map(|i| format!("caption {i}")).collect();
        let (a, b, c) = (
            order("a", Some(1)),
            order("b", Some(1)),
            order("c", Some(2)),
        );
        assert_eq!(order("kept", None), source);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, source);
        let mut sorted = a.clone();
        sorted.sort_by_key(|c| c[8..].parse::<u32>().unwrap());
        assert_eq!(sorted, source);
    }
}
