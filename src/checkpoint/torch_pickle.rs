//! A reader for files written by `torch.save` (the zip format of PyTorch >= 1.6), enough for state
//! dicts: plain or ordered dicts (possibly nested) of tensors, numbers and strings.
//!
//! tch's own loader cannot read `torch.save(model.state_dict())` (an `OrderedDict`), which is
//! exactly how the original liteCLIP released its weights, so we read the format ourselves:
//! `<name>/data.pkl` is a pickle whose tensors point, through persistent ids, at raw little-endian
//! storages in `<name>/data/<key>`. The pickle is interpreted, never executed: only the handful of
//! constructors a state dict uses are understood, anything else becomes an opaque value.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// A value of the unpickled object graph.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// Something we do not interpret (the result of an unknown constructor).
    Opaque(String),
}

#[derive(Debug, Clone)]
pub struct StorageRef {
    pub key: String,
    pub kind: Kind,
    pub numel: i64,
}

#[derive(Debug, Clone)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// A pickle virtual machine restricted to data: no code is ever run.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Value nodes that copies (DUP, memo) may still create. Python's pickle shares objects;
    /// we copy them, so a few hundred bytes of DUP/APPENDS would otherwise nest copies of
    /// copies into gigabytes (found by fuzzing).
    copy_budget: usize,
}

/// Node weight of a value (strings and bytes by length), counted only up to `limit`.
fn weight(v: &Value, limit: usize) -> usize {
    let mut total = 0usize;
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        total += 1 + match v {
            Value::Str(s) | Value::Global(s, _) | Value::Opaque(s) => s.len() / 16,
            Value::Bytes(b) => b.len() / 16,
            Value::Tuple(items) | Value::List(items) => {
                pending.extend(items.iter());
                0
            }
            Value::Dict(items) => {
                pending.extend(items.iter().flat_map(|(k, v)| [k, v]));
                0
            }
            Value::Tensor(t) => t.size.len() + t.stride.len(),
            _ => 0,
        };
        if total > limit {
            break;
        }
    }
    total
}

type PResult<T> = std::result::Result<T, String>;

/// A copy of `v`, charged to `budget`.
fn charged_copy(budget: &mut usize, v: &Value) -> PResult<Value> {
    let w = weight(v, *budget);
    if w > *budget {
        return Err("pickle copies too much data (a self-replicating structure?)".into());
    }
    *budget -= w;
    Ok(v.clone())
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copy_budget: (data.len() * 64).max(1 << 22),
        }
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("pickle ends early at byte {}", self.pos))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32le(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64le(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("unterminated line in pickle")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> PResult<String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 string in pickle".to_string())
    }

    fn pop(&mut self) -> PResult<Value> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let mark = self.marks.pop().ok_or("pickle MARK missing")?;
        if mark > self.stack.len() {
            return Err("pickle MARK beyond stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn memo_put(&mut self, key: u32) -> PResult<()> {
        let top = self.stack.last().ok_or("pickle memo of empty stack")?;
        let v = charged_copy(&mut self.copy_budget, top)?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> PResult<()> {
        let v = self
            .memo
            .get(&key)
            .ok_or_else(|| format!("pickle memo key {key} missing"))?;
        let v = charged_copy(&mut self.copy_budget, v)?;
        self.stack.push(v);
        Ok(())
    }

    fn run(mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64le()?; // FRAME
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'X' => {
                    let n = self.u32le()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let n = usize::try_from(self.u64le()?).map_err(|_| "string too long")?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'T' | b'B' => {
                    let n = self.u32le()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'J' => {
                    let v = self.u32le()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack
                        .push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("integer in pickle too large".into());
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= i64::from(byte) << (8 * i);
                    }
                    // Sign-extend from n bytes.
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                b'q' => {
                    let k = u32::from(self.u8()?);
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32le()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = u32::from(self.u8()?);
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32le()?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Value::Opaque(format!("{cls:?}")));
                }
                b'b' => {
                    // BUILD: object state (an OrderedDict's `_metadata`, a parameter's hooks) is
                    // irrelevant to the tensor values.
                    self.pop()?;
                    self.top()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(items) => items.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("APPEND on a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("APPENDS on a non-list".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self
                        .stack
                        .last()
                        .ok_or_else(|| "pickle stack underflow".to_string())?;
                    let v = charged_copy(&mut self.copy_budget, top)?;
                    self.stack.push(v);
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

/// `('storage', torch.FloatStorage, key, location, numel)` -> a storage reference.
fn persistent_load(pid: Value) -> PResult<Value> {
    let Value::Tuple(items) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(_, type_name), Value::Str(key), _location, Value::Int(numel)]
            if tag == "storage" =>
        {
            let kind = storage_kind(type_name)
                .ok_or_else(|| format!("unsupported storage type {type_name}"))?;
            Ok(Value::Storage(StorageRef {
                key: key.clone(),
                kind,
                numel: *numel,
            }))
        }
        _ => Err(format!("unsupported persistent id {items:?}")),
    }
}

fn int_tuple(v: &Value) -> PResult<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Ok(*n),
                _ => Err("tensor size or stride is not an integer".to_string()),
            })
            .collect(),
        _ => Err("tensor size or stride is not a tuple".into()),
    }
}

/// The few constructors a state dict needs.
fn reduce(callable: Value, args: Value) -> PResult<Value> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Opaque(format!("{callable:?}")));
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => return Ok(Value::Opaque(format!("{module}.{name}"))),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") | ("builtins", "dict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            match args.as_slice() {
                [Value::Storage(s), Value::Int(offset), size, stride, ..] => {
                    Ok(Value::Tensor(TensorRef {
                        storage: s.clone(),
                        offset: *offset,
                        size: int_tuple(size)?,
                        stride: int_tuple(stride)?,
                    }))
                }
                _ => Err(format!("unexpected arguments to {name}")),
            }
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(format!("unexpected arguments to {name}")),
        },
        _ => Ok(Value::Opaque(format!("{module}.{name}"))),
    }
}

/// Unpickles bytes (exposed for tests and fuzzing).
pub fn unpickle(data: &[u8]) -> std::result::Result<Value, String> {
    Unpickler::new(data).run()
}

/// Reads a `torch.save` zip file: the unpickled root object and a way to materialise tensors.
pub struct TorchFile {
    archive: zip::ZipArchive<Cursor<Vec<u8>>>,
    /// Size of the whole file: no entry can hold more, whatever its header claims.
    file_len: u64,
    prefix: String,
    pub root: Value,
    storages: HashMap<String, Tensor>,
}

impl TorchFile {
    pub fn open(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let bad = |m: String| Error::checkpoint(path, m);
        let file_len = bytes.len() as u64;
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| bad(format!("not a readable torch.save zip file: {e}")))?;
        let pkl_name = archive
            .file_names()
            .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(str::to_owned)
            .ok_or_else(|| bad("zip file has no data.pkl: not written by torch.save".into()))?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
        let read_entry = |archive: &mut zip::ZipArchive<_>, name: &str| -> Result<Vec<u8>> {
            let mut entry = archive
                .by_name(name)
                .map_err(|e| bad(format!("cannot read {name}: {e}")))?;
            let mut buf = Vec::with_capacity(entry.size().min(file_len) as usize);
            entry
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("cannot read {name}: {e}")))?;
            Ok(buf)
        };
        if let Ok(order) = read_entry(&mut archive, &format!("{prefix}byteorder")) {
            if order.trim_ascii() != b"little" {
                return Err(bad("big-endian torch checkpoints are not supported".into()));
            }
        }
        let pkl = read_entry(&mut archive, &pkl_name)?;
        let root = unpickle(&pkl).map_err(|e| bad(format!("cannot unpickle data.pkl: {e}")))?;
        Ok(TorchFile {
            archive,
            file_len,
            prefix,
            root,
            storages: HashMap::new(),
        })
    }

    /// Builds a (CPU, contiguous) tensor from its reference, reading its storage once.
    pub fn tensor(&mut self, path: &Path, t: &TensorRef) -> Result<Tensor> {
        let bad = |m: String| Error::checkpoint(path, m);
        if !self.storages.contains_key(&t.storage.key) {
            let name = format!("{}data/{}", self.prefix, t.storage.key);
            let mut entry = self
                .archive
                .by_name(&name)
                .map_err(|e| bad(format!("missing tensor storage {name}: {e}")))?;
            let elem = t.storage.kind.elt_size_in_bytes();
            let want = usize::try_from(t.storage.numel)
                .ok()
                .and_then(|n| n.checked_mul(elem))
                .ok_or_else(|| bad(format!("storage {name} has an invalid size")))?;
            if entry.size() < want as u64 || want as u64 > self.file_len {
                return Err(bad(format!(
                    "storage {name} holds {} bytes, {want} expected (truncated file?)",
                    entry.size()
                )));
            }
            let mut buf = vec![0u8; want];
            entry
                .read_exact(&mut buf)
                .map_err(|e| bad(format!("cannot read {name}: {e}")))?;
            let storage = Tensor::f_from_data_size(&buf, &[t.storage.numel], t.storage.kind)?;
            self.storages.insert(t.storage.key.clone(), storage);
        }
        let storage = &self.storages[&t.storage.key];
        // Reject views that would read outside their storage before libtorch sees them.
        let ok = t.size.len() == t.stride.len()
            && t.offset >= 0
            && t.size.iter().all(|&s| s >= 0)
            && t.stride.iter().all(|&s| s >= 0)
            && {
                // A saved tensor never holds more elements than its storage; a larger view
                // (stride 0) would make `contiguous` allocate without bound.
                let numel = t.size.iter().try_fold(1i64, |acc, &s| acc.checked_mul(s));
                numel.is_some_and(|n| n <= t.storage.numel.max(0))
            }
            && {
                let numel: i64 = t.size.iter().product();
                let last = t
                    .size
                    .iter()
                    .zip(&t.stride)
                    .try_fold(t.offset, |acc, (&s, &st)| {
                        acc.checked_add((s - 1).max(0).checked_mul(st)?)
                    });
                numel == 0 || last.is_some_and(|l| l < t.storage.numel)
            };
        if !ok {
            return Err(bad(format!(
                "tensor view (size {:?}, stride {:?}, offset {}) lies outside its storage of {}",
                t.size, t.stride, t.offset, t.storage.numel
            )));
        }
        Ok(storage
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)?
            .f_contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpickles_basic_values() {
        // pickle.dumps({'a': 1, 'b': [2.5, 'x'], 'c': (True, None, -3)}, protocol=2)
        let data: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x04eX\x01\x00\x00\x00cq\x05\x88NJ\xfd\xff\xff\xff\x87q\x06u.";
        let Value::Dict(items) = unpickle(data).unwrap() else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], (Value::Str(k), Value::Int(1)) if k == "a"));
        match &items[1].1 {
            Value::List(l) => {
                assert!(matches!(l[0], Value::Float(f) if f == 2.5));
                assert!(matches!(&l[1], Value::Str(s) if s == "x"));
            }
            v => panic!("{v:?}"),
        }
        match &items[2].1 {
            Value::Tuple(t) => {
                assert!(matches!(t[0], Value::Bool(true)));
                assert!(matches!(t[1], Value::None));
                assert!(matches!(t[2], Value::Int(-3)));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for data in [
            &b""[..],
            b"\x80\x02",
            b"\xff\xff",
            b"\x80\x02(u.",
            b"\x80\x02h\x05.",
        ] {
            assert!(unpickle(data).is_err());
        }
    }

    #[test]
    fn self_replicating_pickles_are_refused_not_expanded() {
        // EMPTY_LIST, then (DUP, APPEND) 60 times: each round nests a copy of the list in
        // itself, 2^60 nodes in all if copies were free.
        let mut data = b"]".to_vec();
        data.extend(b"2a".repeat(60));
        data.push(b'.');
        let err = unpickle(&data).unwrap_err();
        assert!(err.to_string().contains("copies too much"), "{err}");
        // The fuzzer's out-of-memory input (DUP, MARK, APPENDS and dicts).
        let found = include_bytes!("../../fuzz/regressions/checkpoint/oom-dup-appends.pkl");
        assert!(unpickle(found).is_err());
    }
}
