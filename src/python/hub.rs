//! Hugging Face Hub ids (`hf-hub:owner/name`) where the bindings take a checkpoint. The Hub
//! itself is Python's `huggingface_hub`, reached through `liteclip.hub`; this is the one place
//! the bindings call it for a checkpoint, so that every entry point that takes one (a model, a
//! pipeline, an index) takes a Hub id alike.

use std::path::PathBuf;

use pyo3::prelude::*;

/// A `hf-hub:owner/name` checkpoint as its folder in the Hugging Face cache (fetched if
/// needed and allowed); any other path as it is.
pub(crate) fn resolve_checkpoint(py: Python<'_>, path: PathBuf) -> PyResult<PathBuf> {
    match path.to_str() {
        Some(spec) if spec.starts_with("hf-hub:") => py
            .import("liteclip.hub")?
            .call_method1("model_folder", (spec,))?
            .extract(),
        _ => Ok(path),
    }
}
