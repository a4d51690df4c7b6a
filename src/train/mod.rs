//! Training: the loop, its optimizer and schedule, checkpoints and resumption.

pub mod optim;
