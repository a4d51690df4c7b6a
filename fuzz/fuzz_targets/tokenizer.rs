//! Any text through the tokenizer: [CLS] first, [SEP] last, never longer than the maximum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liteclip::internals::{Padding, TextTokenizer};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let max = 2 + usize::from(data.first().copied().unwrap_or(0) % 127);
    let tokenizer = TextTokenizer::new(max).expect("the bundled vocabulary loads");
    let batch = tokenizer.encode(&[text.as_ref(), "a photo"], Padding::Longest).expect("tokenizes");
    assert!(batch.seq_len <= max);
    assert_eq!(batch.input_ids[0], 101);
    let n = batch.attention_mask[..batch.seq_len].iter().filter(|&&m| m == 1).count();
    assert_eq!(batch.input_ids[n - 1], 102);
});
