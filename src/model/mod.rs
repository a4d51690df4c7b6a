//! The network: towers, heads and the CLIP module that joins them. Nothing here knows of files,
//! tokenizers or Python; tensors in, tensors out.

pub mod bert;
pub mod clip;
pub mod convnext;
pub mod head;
mod int8;
mod layers;
mod mlp;
pub mod precision;

pub use clip::{l2_normalize, ClipModel, TowerLocks};
pub use precision::Precision;
