//! Writes the `torch.save` format for a flat state dict of fp32 tensors: a zip archive (stored,
//! 64-byte aligned records, as PyTorch writes them) holding a protocol-2 pickle of an
//! `OrderedDict` and one raw little-endian record per tensor. This is the layout the original
//! liteCLIP released, which `torch.load` (also with `weights_only=True`) and the original
//! `CLIP.load_state_dict` take as they are. The writer counterpart of `torch_pickle.rs`: it
//! emits only the few opcodes that layout needs.

use std::io::{BufWriter, Write};
use std::path::Path;

use tch::{Kind, Tensor};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::error::{Error, Result};
use crate::fsio;

/// Writes `tensors` (any device, any float kind; stored as contiguous fp32) to `path`,
/// atomically.
pub fn write_state_dict(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| {
            let t = t
                .f_detach()?
                .f_to_device(tch::Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?;
            Ok((k.clone(), t))
        })
        .collect::<Result<_>>()?;
    fsio::write_atomically(path, |tmp| {
        write_archive(tmp, &cpu).map_err(|e| Error::io(tmp, std::io::Error::other(e)))
    })
}

fn write_archive(path: &Path, tensors: &[(String, Tensor)]) -> std::result::Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64);
    let mut put = |name: &str, bytes: &[u8]| -> std::result::Result<(), String> {
        zip.start_file(format!("archive/{name}"), options)
            .map_err(|e| e.to_string())?;
        zip.write_all(bytes).map_err(|e| e.to_string())
    };
    put("data.pkl", &state_dict_pickle(tensors))?;
    put("byteorder", b"little")?;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let n = t.numel();
        let mut values = vec![0f32; n];
        t.f_copy_data(&mut values, n).map_err(|e| e.to_string())?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(&format!("data/{i}"), &bytes)?;
    }
    put("version", b"3\n")?;
    let mut inner = zip.finish().map_err(|e| e.to_string())?;
    inner.flush().map_err(|e| e.to_string())
}

/// `OrderedDict([(name, torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
/// OrderedDict())), ...])`, storages as persistent ids `("storage", torch.FloatStorage, key,
/// "cpu", numel)` naming the records `data/<key>`.
fn state_dict_pickle(tensors: &[(String, Tensor)]) -> Vec<u8> {
    let mut p = Pickle(vec![0x80, 2]); // PROTO 2
    p.empty_ordered_dict();
    p.op(b'('); // MARK: the items
    for (i, (name, t)) in tensors.iter().enumerate() {
        let size = t.size();
        let stride = t.stride();
        p.string(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        p.op(b'(');
        p.string("storage");
        p.global("torch", "FloatStorage");
        p.string(&i.to_string());
        p.string("cpu");
        p.int(t.numel() as i64);
        p.op(b't');
        p.op(b'Q'); // BINPERSID
        p.int(0); // storage offset
        p.ints(&size);
        p.ints(&stride);
        p.op(0x89); // NEWFALSE: requires_grad
        p.empty_ordered_dict(); // backward hooks
        p.op(b't');
        p.op(b'R'); // REDUCE
    }
    p.op(b'u'); // SETITEMS
    p.op(b'.'); // STOP
    p.0
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, code: u8) {
        self.0.push(code);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')'); // EMPTY_TUPLE
        self.op(b'R'); // REDUCE
    }

    fn string(&mut self, s: &str) {
        self.op(b'X'); // BINUNICODE
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.op(b'K'); // BININT1
            self.0.push(v as u8);
        } else if let Ok(v) = i32::try_from(v) {
            self.op(b'J'); // BININT
            self.0.extend_from_slice(&v.to_le_bytes());
        } else {
            self.op(0x8a); // LONG1, 8 bytes
            self.0.push(8);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn ints(&mut self, values: &[i64]) {
        self.op(b'(');
        for &v in values {
            self.int(v);
        }
        self.op(b't');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own reader (an independent implementation of the format's reading side) takes back
    /// what the writer wrote, bit for bit; `tests/test_training.py` loads it with torch.
    #[test]
    fn round_trips_through_the_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("w.pt");
        let tensors = vec![
            (
                "a.weight".to_string(),
                Tensor::randn([3, 4], tch::kind::FLOAT_CPU),
            ),
            ("b".to_string(), Tensor::from(2.5f32)),
            (
                "c.bias".to_string(),
                Tensor::arange(300, tch::kind::FLOAT_CPU),
            ),
        ];
        write_state_dict(&path, &tensors).unwrap();
        let read = crate::checkpoint::read(&path).unwrap();
        assert_eq!(read.tensors.len(), 3);
        let read: std::collections::HashMap<_, _> = read.tensors.into_iter().collect();
        for (k, t) in &tensors {
            assert_eq!(t.size(), read[k].size(), "{k}");
            assert!(t.equal(&read[k]), "{k}");
        }
    }
}
