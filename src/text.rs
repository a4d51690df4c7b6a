//! Captions and labels to token ids: BERT uncased WordPiece (the vocabulary of bert-mini), with
//! [CLS]/[SEP], truncation to the model's maximum length and an attention mask.
//!
//! The vocabulary ships inside the Python package (`python/liteclip/data/bert-uncased/`) and is
//! compiled into the library from there, so nothing is read or downloaded at run time.

use std::sync::OnceLock;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use tch::{Device, Tensor};

use crate::error::{Error, Result};

static TOKENIZER_JSON: &[u8] =
    include_bytes!("../python/liteclip/data/bert-uncased/tokenizer.json");

/// Id of the padding token in the BERT vocabulary.
pub const PAD_ID: i64 = 0;

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest sequence of the batch: same embeddings as fixed padding (padding is masked
    /// out), less compute.
    Longest,
    /// To the maximum length, as the original liteCLIP did (`padding="max_length"`).
    MaxLength,
}

impl Padding {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "longest" => Ok(Padding::Longest),
            "max_length" => Ok(Padding::MaxLength),
            other => Err(Error::invalid(format!(
                "padding must be \"longest\" or \"max_length\", got {other:?}"
            ))),
        }
    }
}

/// A batch of token sequences, row-major `batch x seq_len`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub batch: usize,
    pub seq_len: usize,
}

/// The tokenizer of one model: the shared vocabulary plus that model's maximum length.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

fn base_tokenizer() -> Result<&'static Tokenizer> {
    static BASE: OnceLock<std::result::Result<Tokenizer, String>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut t = Tokenizer::from_bytes(TOKENIZER_JSON).map_err(|e| e.to_string())?;
        // The shipped file presets padding to 128 (see its README): we pad ourselves.
        t.with_padding(None);
        Ok(t)
    })
    .as_ref()
    .map_err(|e| Error::invalid(format!("bundled BERT vocabulary failed to load: {e}")))
}

impl TextTokenizer {
    /// The bundled BERT uncased tokenizer, truncating to `max_length` tokens.
    pub fn new(max_length: usize) -> Result<Self> {
        if max_length < 2 {
            return Err(Error::invalid(format!(
                "max_length must be at least 2 ([CLS] and [SEP]), got {max_length}"
            )));
        }
        let mut inner = base_tokenizer()?.clone();
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::invalid(format!("cannot set truncation: {e}")))?;
        Ok(TextTokenizer { inner, max_length })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokenizes a batch (in parallel), pads it, and builds the attention mask.
    pub fn encode(&self, texts: &[&str], padding: Padding) -> Result<TokenBatch> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::invalid(format!("tokenization failed: {e}")))?;
        let seq_len = match padding {
            Padding::MaxLength => self.max_length,
            Padding::Longest => encodings.iter().map(|e| e.len()).max().unwrap_or(0),
        };
        let batch = encodings.len();
        let mut input_ids = vec![PAD_ID; batch * seq_len];
        let mut attention_mask = vec![0i64; batch * seq_len];
        for (row, enc) in encodings.iter().enumerate() {
            for (col, &id) in enc.get_ids().iter().enumerate().take(seq_len) {
                input_ids[row * seq_len + col] = i64::from(id);
                attention_mask[row * seq_len + col] = 1;
            }
        }
        Ok(TokenBatch {
            input_ids,
            attention_mask,
            batch,
            seq_len,
        })
    }
}

/// Captions tokenized once, kept unpadded; batches are padded to their longest caption.
#[derive(Debug, Clone, Default)]
pub struct TokenizedCaptions {
    ids: Vec<Vec<i64>>,
}

impl TokenizedCaptions {
    /// Tokenizes `texts` in chunks, polling [`crate::cancel::check`] between them (a
    /// million captions take seconds).
    pub fn new(tokenizer: &TextTokenizer, texts: &[&str]) -> Result<Self> {
        const CHUNK: usize = 8192;
        let mut ids = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(CHUNK) {
            crate::cancel::check()?;
            let encodings = tokenizer
                .inner
                .encode_batch(chunk.to_vec(), true)
                .map_err(|e| Error::invalid(format!("tokenization failed: {e}")))?;
            ids.extend(encodings.iter().map(|e| {
                e.get_ids()
                    .iter()
                    .map(|&i| i64::from(i))
                    .collect::<Vec<_>>()
            }));
        }
        Ok(TokenizedCaptions { ids })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Tokens of caption `i`, [CLS] and [SEP] included.
    pub fn token_count(&self, i: usize) -> usize {
        self.ids[i].len()
    }

    /// The captions at `indices`, padded to the longest of them.
    pub fn batch(&self, indices: &[usize]) -> TokenBatch {
        let seq_len = indices
            .iter()
            .map(|&i| self.ids[i].len())
            .max()
            .unwrap_or(0);
        let batch = indices.len();
        let mut input_ids = vec![PAD_ID; batch * seq_len];
        let mut attention_mask = vec![0i64; batch * seq_len];
        for (row, &i) in indices.iter().enumerate() {
            for (col, &id) in self.ids[i].iter().enumerate() {
                input_ids[row * seq_len + col] = id;
                attention_mask[row * seq_len + col] = 1;
            }
        }
        TokenBatch {
            input_ids,
            attention_mask,
            batch,
            seq_len,
        }
    }
}

/// Token ids and attention mask as `(N, L)` int64 tensors on `device`.
pub fn token_tensors(tokens: &TokenBatch, device: Device) -> Result<(Tensor, Tensor)> {
    let shape = [tokens.batch as i64, tokens.seq_len as i64];
    let ids = Tensor::f_from_slice(&tokens.input_ids)?.f_view(shape)?;
    let mask = Tensor::f_from_slice(&tokens.attention_mask)?.f_view(shape)?;
    let ids = crate::device::to_device_async(&ids, device, false)?;
    let mask = crate::device::to_device_async(&mask, device, false)?;
    Ok((ids, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bert_ids() {
        // Ids of bert-base-uncased's vocabulary (REFERENCE.md), independent of this code.
        let t = TextTokenizer::new(128).unwrap();
        let b = t
            .encode(&["a photo of a dog", "A Photo"], Padding::Longest)
            .unwrap();
        assert_eq!(b.seq_len, 7);
        assert_eq!(&b.input_ids[..7], &[101, 1037, 6302, 1997, 1037, 3899, 102]);
        assert_eq!(&b.input_ids[7..], &[101, 1037, 6302, 102, 0, 0, 0]);
        assert_eq!(&b.attention_mask[7..], &[1, 1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn pre_tokenized_batches_equal_direct_encoding() {
        let t = TextTokenizer::new(16).unwrap();
        let texts = [
            "a red circle",
            "two large purple crosses on a grey background",
            "x",
        ];
        let store = TokenizedCaptions::new(&t, &texts).unwrap();
        let direct = t.encode(&[texts[1], texts[2]], Padding::Longest).unwrap();
        assert_eq!(store.batch(&[1, 2]), direct);
    }

    #[test]
    fn truncates_keeping_sep_and_pads_to_max_length() {
        let t = TextTokenizer::new(5).unwrap();
        let b = t
            .encode(&["one two three four five six", ""], Padding::MaxLength)
            .unwrap();
        assert_eq!(b.seq_len, 5);
        assert_eq!(b.input_ids[0], 101);
        assert_eq!(b.input_ids[4], 102);
        assert_eq!(&b.input_ids[5..], &[101, 102, 0, 0, 0]);
        assert!(TextTokenizer::new(1).is_err());
    }
}
