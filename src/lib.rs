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

pub mod cancel;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod embed;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod image;
pub mod index;
pub mod liteclip;
pub mod loss;
pub mod model;
pub mod pipeline;
pub mod prefetch;
pub mod rng;
pub mod text;
pub mod train;

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
