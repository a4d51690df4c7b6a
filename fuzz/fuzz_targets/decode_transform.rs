//! Any bytes through the image decoder and the transform: errors are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liteclip::internals::{decode_bytes, preprocess, set_max_image_pixels};

fuzz_target!(|data: &[u8]| {
    // Keep allocations within the fuzzer's memory limit; the limit itself is under test too.
    let _ = set_max_image_pixels(1 << 22);
    if let Ok(image) = decode_bytes(data, "fuzz") {
        let size = 16 + u32::from(data.first().copied().unwrap_or(0) % 64);
        let out = preprocess(&image, size);
        assert_eq!(out.len(), (3 * size * size) as usize);
        assert!(out.iter().all(|v| v.is_finite()));
    }
});
