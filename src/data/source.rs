//! What `data=` names: a captioned folder or CSV ([`super::Dataset`]), or WebDataset shards
//! ([`super::shards`], streamed by [`super::stream`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::shards;
use crate::error::{Error, Result};

/// The `data` option as given: one path or pattern, or a list of them (in JSON a string or a
/// list of strings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "OneOrMany", into = "OneOrMany")]
pub struct DataSpec(pub Vec<String>);

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for DataSpec {
    fn from(value: OneOrMany) -> Self {
        match value {
            OneOrMany::One(s) => DataSpec(vec![s]),
            OneOrMany::Many(list) => DataSpec(list),
        }
    }
}

impl From<DataSpec> for OneOrMany {
    fn from(spec: DataSpec) -> Self {
        match <[String; 1]>::try_from(spec.0) {
            Ok([one]) => OneOrMany::One(one),
            Err(list) => OneOrMany::Many(list),
        }
    }
}

impl From<&str> for DataSpec {
    fn from(s: &str) -> Self {
        DataSpec(vec![s.to_owned()])
    }
}

impl From<&Path> for DataSpec {
    fn from(p: &Path) -> Self {
        DataSpec(vec![p.to_string_lossy().into_owned()])
    }
}

/// Where training data comes from, once `data` is looked at.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// A Flickr8k-layout folder or a CSV of image paths and captions.
    Captioned(PathBuf),
    /// WebDataset tar shards, in the order given.
    Shards(Vec<PathBuf>),
}

impl DataSpec {
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|s| s.is_empty())
    }

    /// The first path or pattern (what a checkpoint records and messages name).
    pub fn first(&self) -> PathBuf {
        PathBuf::from(self.0.first().cloned().unwrap_or_default())
    }

    /// For messages: the paths and patterns, comma-separated.
    pub fn display(&self) -> String {
        self.0.join(", ")
    }

    /// Shards when the spec is a list, a brace pattern or glob, a `.tar` file, or a folder of
    /// `.tar` files without a captions file; otherwise one captioned folder or CSV (whose own
    /// errors then say what is missing).
    pub fn resolve(&self) -> Result<DataSource> {
        match self.0.as_slice() {
            [] => Err(Error::invalid(
                "data is required: a data set folder, a CSV of image,caption, or WebDataset shards",
            )),
            [one] if !names_shards(one) => {
                let path = PathBuf::from(one);
                match shard_folder(&path)? {
                    Some(tars) => Ok(DataSource::Shards(tars)),
                    None => Ok(DataSource::Captioned(path)),
                }
            }
            specs => Ok(DataSource::Shards(shards::expand(specs)?)),
        }
    }
}

/// A pattern or a `.tar` path (the folder and CSV layouts are neither).
fn names_shards(spec: &str) -> bool {
    spec.contains(['{', '*', '?', '[']) || spec.to_ascii_lowercase().ends_with(".tar")
}

/// The `.tar` files of a folder that holds shards rather than a captioned data set.
fn shard_folder(path: &Path) -> Result<Option<Vec<PathBuf>>> {
    if !path.is_dir() || super::captions_file(path).is_some() {
        return Ok(None);
    }
    let mut tars: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar")))
        .collect();
    tars.sort();
    Ok((!tars.is_empty()).then_some(tars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_csvs_and_shards_are_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("flickr")).unwrap();
        std::fs::write(root.join("flickr/captions.txt"), "image,caption\n").unwrap();
        std::fs::create_dir_all(root.join("shards")).unwrap();
        for name in ["b.tar", "a.tar"] {
            std::fs::write(root.join("shards").join(name), b"").unwrap();
        }
        let spec = |s: &Path| DataSpec::from(s);
        assert_eq!(
            spec(&root.join("flickr")).resolve().unwrap(),
            DataSource::Captioned(root.join("flickr"))
        );
        let pairs = root.join("pairs.csv");
        assert_eq!(
            spec(&pairs).resolve().unwrap(),
            DataSource::Captioned(pairs.clone())
        );
        let tars = vec![root.join("shards/a.tar"), root.join("shards/b.tar")];
        assert_eq!(
            spec(&root.join("shards")).resolve().unwrap(),
            DataSource::Shards(tars.clone())
        );
        let glob = DataSpec::from(format!("{}/shards/*.tar", root.display()).as_str());
        assert_eq!(glob.resolve().unwrap(), DataSource::Shards(tars.clone()));
        let list = DataSpec(tars.iter().rev().map(|p| p.display().to_string()).collect());
        let reversed: Vec<PathBuf> = tars.iter().rev().cloned().collect();
        assert_eq!(list.resolve().unwrap(), DataSource::Shards(reversed));
        assert!(DataSpec(vec![]).resolve().is_err());
        // JSON: a string or a list.
        let one: DataSpec = serde_json::from_str("\"x\"").unwrap();
        let many: DataSpec = serde_json::from_str("[\"x\", \"y\"]").unwrap();
        assert_eq!((one.0.len(), many.0.len()), (1, 2));
        assert_eq!(serde_json::to_string(&one).unwrap(), "\"x\"");
    }
}
