//! Any bytes as a torch.save checkpoint: the zip + pickle reader must fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liteclip::internals::{unpickle, TorchFile, Value};

fuzz_target!(|data: &[u8]| {
    let _ = unpickle(data);
    let path = std::path::Path::new("fuzz.pt");
    if let Ok(mut file) = TorchFile::open(path, data.to_vec()) {
        if let Value::Dict(items) = std::mem::replace(&mut file.root, Value::None) {
            for (_, value) in items {
                if let Value::Tensor(t) = value {
                    let _ = file.tensor(path, &t);
                }
            }
        }
    }
});
