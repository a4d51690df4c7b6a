//! liteclip: a small CLIP (ConvNeXt image tower + BERT text tower) whose model math runs in Rust
//! on libtorch kernels, on the CPU or CUDA.
//!
//! The flow of one prediction, module by module:
//!
//! ```text
//! image::decode -> image::transform --> model::convnext -> model::head -> L2 --+
//! text (tokenizer) -------------------> model::bert -> mean pool -> head -> L2 -+-> pipeline (softmax)
//! ```
//!
//! `liteclip::LiteClip` holds a loaded model (checkpoint::read + config); `pipeline::zero_shot`
//! ranks labels. The core knows nothing of Python: the PyO3 bindings live in `python/`, behind
//! the `python` feature.

// The core's users are the bindings (`python/`): without them (`cargo test` of the core alone)
// most of the crate is unused, so dead code is reported only in the build with the bindings,
// which `make lint` checks with clippy.
#![cfg_attr(not(feature = "python"), allow(dead_code, unused_imports))]

/// Lets serde read and write an enum by the name users type (`"adamw"`, `"bf16"`): implements
/// `TryFrom<String>` through the type's `parse` and `From<T> for String` through its `name`, for
/// `#[serde(try_from = "String", into = "String")]`.
macro_rules! serde_by_name {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = $crate::error::Error;
            fn try_from(name: String) -> $crate::error::Result<Self> {
                <$t>::parse(&name)
            }
        }
        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.name().to_string()
            }
        }
    };
}
pub(crate) use serde_by_name;

/// What the fuzz targets and the benchmarks reach into: not an API, and not stable. Everything
/// else is crate-private, so that the compiler reports what nothing uses.
#[doc(hidden)]
pub mod internals {
    pub use crate::checkpoint::torch_pickle::{unpickle, TorchFile, Value};
    pub use crate::image::decode::{decode_bytes, set_max_image_pixels};
    pub use crate::image::transform::preprocess;
    pub use crate::index::ann::{
        ChunkRows, Searcher, EXACT_BELOW, EXPANSION_SEARCH, GRAPH_MIN_SHARE,
    };
    pub use crate::index::duplicates::{close_pairs, components, EXACT_PAIRS};
    pub use crate::rng::Rng;
    pub use crate::text::{Padding, TextTokenizer};
}

pub(crate) mod cancel;
pub(crate) mod checkpoint;
pub(crate) mod config;
pub(crate) mod data;
pub(crate) mod device;
pub(crate) mod embed;
pub(crate) mod error;
pub(crate) mod eval;
pub(crate) mod fsio;
pub(crate) mod image;
pub(crate) mod image_embedding;
pub(crate) mod index;
pub(crate) mod json_options;
pub(crate) mod liteclip;
pub(crate) mod loss;
pub(crate) mod model;
pub(crate) mod npy;
pub(crate) mod pipeline;
pub(crate) mod prefetch;
pub(crate) mod rng;
pub(crate) mod text;
pub(crate) mod train;
pub(crate) mod zeroshot;

#[cfg(feature = "python")]
mod python;

/// libtorch's random generator is per process, and tests run on parallel threads: tests that
/// seed it or draw from it (model initialisation, training) hold this lock, so that each sees
/// the sequence its seed promises.
#[cfg(test)]
pub(crate) static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
pub(crate) fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub use crate::config::LiteClipConfig;
pub use crate::error::{Error, Result};
pub use crate::liteclip::LiteClip;
