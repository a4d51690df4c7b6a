//! NumPy `.npy` files of float32 rows: what `liteclip embed` writes and the photo index keeps its
//! rows in (format 1.0, C order, little-endian).

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::fsio;

/// Writes a 2-D float32 tensor as a NumPy `.npy` file (format 1.0, C order), atomically.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let t = t.f_to_kind(Kind::Float)?.f_contiguous()?;
    let shape = t.size();
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // The magic, version and length take 10 bytes; the header ends in '\n' at a multiple of 64.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let n = t.numel();
    let mut values = vec![0f32; n];
    t.f_copy_data(&mut values, n)?;
    let mut bytes = Vec::with_capacity(total + 4 * n);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    fsio::write_bytes(path, &bytes)
}

/// Parses a float32 `.npy` of shape `(rows, dim)` as [`write`] writes it.
pub fn read_rows(bytes: &[u8], dim: usize) -> std::result::Result<Vec<f32>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let start = 10 + header_len;
    let header = bytes
        .get(10..start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated header")?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(format!("not C-ordered float32 rows ({})", header.trim()));
    }
    let data = &bytes[start..];
    if data.len() % (4 * dim.max(1)) != 0 {
        return Err(format!(
            "{} bytes of data is not whole {dim}-float rows",
            data.len()
        ));
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_are_read_back_and_numpy_headers_are_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        write(&path, &Tensor::from_slice(&values).view([3, 4])).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        assert_eq!((10 + header_len) % 64, 0);
        assert!(std::str::from_utf8(&bytes[10..10 + header_len])
            .unwrap()
            .contains("'shape': (3, 4)"));
        assert_eq!(read_rows(&bytes, 4).unwrap(), values);
        assert!(read_rows(&bytes, 5).is_err());
        assert!(read_rows(b"not numpy at all", 4).is_err());
    }
}
