//! Embedding collections into files: every image under a folder (recursively) or every line
//! of a text file, written as a `.npy` of unit-length float32 rows and, beside it, a JSON index
//! saying what each row is. Images that cannot be decoded are skipped and reported, not fatal.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::data::list_images;
use crate::error::{Error, Result};
use crate::fsio;
use crate::image::ImageInput;
use crate::image_embedding::embed_each;
use crate::liteclip::LiteClip;
use crate::npy;

/// What [`embed_to_file`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedReport {
    pub output: PathBuf,
    pub index: PathBuf,
    /// "images" or "texts".
    pub kind: String,
    pub rows: usize,
    /// Images that could not be decoded, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The JSON index beside an embedding file.
#[derive(Serialize)]
struct Index<'a> {
    kind: &'a str,
    checkpoint: &'a str,
    items: Vec<String>,
}

/// Embeds `source` (a folder of images, or a text file with one text per line) with `model`,
/// writing `output` (`.npy`) and its index (`output` with `.json`), both atomically.
/// `checkpoint` is recorded in the index, to tell later which model made the rows.
pub fn embed_to_file(
    model: &LiteClip,
    source: &Path,
    output: &Path,
    batch_size: usize,
    checkpoint: &str,
) -> Result<EmbedReport> {
    if !source.exists() {
        return Err(Error::FileNotFound {
            path: source.to_owned(),
            hint: Some("expected a folder of images or a text file".into()),
        });
    }
    let (kind, items, embeddings, skipped) = if source.is_dir() {
        let folder = embed_folder(model, source, batch_size)?;
        let items = folder
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        ("images", items, folder.embeddings, folder.skipped)
    } else {
        let text = std::fs::read_to_string(source).map_err(|e| Error::io(source, e))?;
        let items: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let embeddings = {
            let refs: Vec<&str> = items.iter().map(String::as_str).collect();
            model.encode_texts(&refs)?
        };
        ("texts", items, embeddings, Vec::new())
    };
    let index_path = output.with_extension("json");
    npy::write(output, &embeddings)?;
    let rows = items.len();
    fsio::write_json(
        &index_path,
        &Index {
            kind,
            checkpoint,
            items,
        },
    )?;
    Ok(EmbedReport {
        output: output.to_owned(),
        index: index_path,
        kind: kind.into(),
        rows,
        skipped,
    })
}

/// The images of a folder and their embeddings.
pub struct FolderEmbeddings {
    /// The images embedded, in path order.
    pub paths: Vec<PathBuf>,
    /// One unit-length row per path, `(N, embed_dim)` float32 on the CPU.
    pub embeddings: Tensor,
    /// Images that could not be decoded, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Embeddings of every image under `root`, in path order, `batch_size` at a time. An image
/// that cannot be read or decoded is skipped and reported; the others of its batch are kept.
pub fn embed_folder(model: &LiteClip, root: &Path, batch_size: usize) -> Result<FolderEmbeddings> {
    let paths = list_images(root)?;
    let (size, decode) = (model.config().image_size as u32, model.decode());
    let mut kept = Vec::with_capacity(paths.len());
    let mut parts = Vec::new();
    let mut skipped = Vec::new();
    embed_each(
        model,
        &paths,
        batch_size.max(1),
        |path| {
            let pixels = ImageInput::Path(path.clone()).preprocess(size, decode)?;
            Ok::<_, Error>(((), pixels))
        },
        |batch| {
            for (path, item) in paths[batch.start..].iter().zip(batch.items) {
                match item {
                    Ok(()) => kept.push(path.clone()),
                    Err(e) if is_unreadable(&e) => skipped.push((path.clone(), e.to_string())),
                    Err(e) => return Err(e),
                }
            }
            parts.push(batch.rows);
            Ok(())
        },
    )?;
    let embeddings = if parts.is_empty() {
        Tensor::f_zeros(
            [0, model.config().embed_dim],
            (Kind::Float, tch::Device::Cpu),
        )?
    } else {
        Tensor::f_cat(&parts, 0)?
    };
    Ok(FolderEmbeddings {
        paths: kept,
        embeddings,
        skipped,
    })
}

/// A problem with one input file (skip it), as opposed to one with the run (stop).
fn is_unreadable(error: &Error) -> bool {
    matches!(
        error,
        Error::ImageDecode { .. } | Error::FileNotFound { .. } | Error::Io { .. }
    )
}
