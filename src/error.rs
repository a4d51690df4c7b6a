//! The one error type of the core. Every fallible path returns [`Error`]; the Python bindings map
//! each variant to one Python exception class in `python/errors.rs`, and nowhere else.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A tensor whose shape in a checkpoint differs from what the model config expects.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeMismatch {
    pub key: String,
    pub expected: Vec<i64>,
    pub found: Vec<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder the caller named does not exist.
    #[error("{}: no such file or directory{}", path.display(), hint_suffix(hint))]
    FileNotFound { path: PathBuf, hint: Option<String> },

    /// Any other I/O failure (permissions, disk full, ...).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Bytes that are not a decodable image, or an image we refuse (too large, empty).
    #[error("{origin}: {message}")]
    ImageDecode { origin: String, message: String },

    /// A checkpoint that cannot be read or does not fit the model.
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// A checkpoint whose tensor names or shapes do not match the model config.
    #[error("{}", key_mismatch_message(path, missing, unexpected, mismatched))]
    KeyMismatch {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        mismatched: Vec<ShapeMismatch>,
    },

    /// A model config that is inconsistent or names an unknown preset.
    #[error("invalid model config: {0}")]
    Config(String),

    /// An argument with the right type but a value we cannot use.
    #[error("{0}")]
    InvalidArgument(String),

    /// An argument of the wrong type (raised as TypeError in Python).
    #[error("{0}")]
    InvalidType(String),

    /// A device that was asked for but is not there (e.g. CUDA on a CPU-only machine).
    #[error("{0}")]
    Device(String),

    /// A data-parallel peer failed or could not be reached.
    #[error("{0}")]
    Distributed(String),

    /// Training diverged: the loss became NaN or infinite.
    #[error("{0}")]
    NonFiniteLoss(String),

    /// A photo index folder that cannot be used: not an index, damaged, written by a newer
    /// liteclip, or made with other weights or another folder.
    #[error("{}: {message}", path.display())]
    BadIndex { path: PathBuf, message: String },

    /// Another process holds a photo index's writer lock.
    #[error("{0}")]
    IndexLocked(String),

    /// The user asked to stop (Ctrl-C) during a long operation.
    #[error("interrupted")]
    Interrupted,

    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::FileNotFound { path, hint: None }
        } else {
            Error::Io { path, source }
        }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn image(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ImageDecode {
            origin: origin.into(),
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// The same error, its message saying which item of a list (`what[i]`) it is about.
    pub fn in_item(self, what: &str, i: usize) -> Self {
        match self {
            Error::InvalidType(m) => Error::InvalidType(format!("{what}[{i}]: {m}")),
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{what}[{i}]: {m}")),
            other => other,
        }
    }
}

impl Error {
    /// The libtorch error a panic carries, if the panic is tch's: its infallible calls (every
    /// plain forward, `apply`, `matmul`, ...) unwrap libtorch's result, so an out-of-memory or
    /// a CUDA error inside a forward arrives as a panic whose message holds libtorch's. Read
    /// back here, it is an [`Error::Torch`] like any other libtorch failure, not a bug.
    pub fn from_torch_panic(message: &str) -> Option<Error> {
        let (_, rest) = message.split_once("Torch(\"")?;
        let body = rest.rsplit_once("\")").map_or(rest, |(body, _)| body);
        let text = body
            .replace("\\n", "\n")
            .replace("\\\"", "\"")
            .replace("\\\\", "\\");
        // libtorch appends the C++ frames it was raised from: not for users.
        let first = text
            .split("\nException raised from")
            .next()
            .unwrap_or(&text)
            .trim();
        Some(Error::Torch(tch::TchError::Torch(first.to_owned())))
    }
}

pub(crate) fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

/// Lists every problem at once, so that a user fixing a checkpoint sees the whole picture.
fn key_mismatch_message(
    path: &std::path::Path,
    missing: &[String],
    unexpected: &[String],
    mismatched: &[ShapeMismatch],
) -> String {
    const SHOWN: usize = 20;
    fn list(items: impl ExactSizeIterator<Item = String>) -> String {
        let n = items.len();
        let mut shown: Vec<String> = items.take(SHOWN).collect();
        if n > SHOWN {
            shown.push(format!("... and {} more", n - SHOWN));
        }
        shown.join(", ")
    }
    let mut parts = vec![format!(
        "{}: checkpoint does not match the model config",
        path.display()
    )];
    if !missing.is_empty() {
        parts.push(format!(
            "missing keys ({}): {}",
            missing.len(),
            list(missing.iter().cloned())
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "unexpected keys ({}): {}",
            unexpected.len(),
            list(unexpected.iter().cloned())
        ));
    }
    if !mismatched.is_empty() {
        parts.push(format!(
            "shape mismatches ({}): {}",
            mismatched.len(),
            list(
                mismatched
                    .iter()
                    .map(|m| format!("{} expected {:?} found {:?}", m.key, m.expected, m.found))
            )
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tch_panic_reads_as_libtorch_s_error() {
        let result = std::panic::catch_unwind(|| {
            let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
            let b = tch::Tensor::zeros([4, 5], (tch::Kind::Float, tch::Device::Cpu));
            a.matmul(&b)
        });
        let payload = result.unwrap_err();
        let message = payload.downcast_ref::<String>().unwrap();
        match Error::from_torch_panic(message) {
            Some(Error::Torch(tch::TchError::Torch(m))) => {
                assert!(m.contains("cannot be multiplied"), "{m}");
                assert!(!m.contains("Exception raised from"), "{m}");
            }
            other => panic!("{other:?} from {message}"),
        }
        assert!(Error::from_torch_panic("index out of bounds").is_none());
    }
}
