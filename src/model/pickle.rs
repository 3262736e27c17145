//! A small, safe unpickler for the `data.pkl` of `torch.save` zip archives.
//!
//! It understands the opcodes that state dicts use (protocols 2–5) and a whitelist of globals
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, the
//! `torch.*Storage` types). It never executes code: any other global is an error naming it.
//! Tensors come out as [`TensorRef`]s (storage key + dtype + view geometry); the loader reads
//! the bytes from the zip's `data/<key>` entries.

use std::collections::HashMap;

/// Element type of a storage, from its `torch.*Storage` class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    /// float32
    Float,
    /// float16
    Half,
    /// bfloat16
    BFloat16,
    /// float64
    Double,
    /// int64
    Long,
    /// int32
    Int,
    /// int16
    Short,
    /// int8
    Char,
    /// uint8
    Byte,
    /// bool
    Bool,
}

impl StorageDtype {
    fn from_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "FloatStorage" => StorageDtype::Float,
            "HalfStorage" => StorageDtype::Half,
            "BFloat16Storage" => StorageDtype::BFloat16,
            "DoubleStorage" => StorageDtype::Double,
            "LongStorage" => StorageDtype::Long,
            "IntStorage" => StorageDtype::Int,
            "ShortStorage" => StorageDtype::Short,
            "CharStorage" => StorageDtype::Char,
            "ByteStorage" => StorageDtype::Byte,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::Double | StorageDtype::Long => 8,
            StorageDtype::Float | StorageDtype::Int => 4,
            StorageDtype::Half | StorageDtype::BFloat16 | StorageDtype::Short => 2,
            StorageDtype::Char | StorageDtype::Byte | StorageDtype::Bool => 1,
        }
    }

    /// The matching libtorch kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            StorageDtype::Float => tch::Kind::Float,
            StorageDtype::Half => tch::Kind::Half,
            StorageDtype::BFloat16 => tch::Kind::BFloat16,
            StorageDtype::Double => tch::Kind::Double,
            StorageDtype::Long => tch::Kind::Int64,
            StorageDtype::Int => tch::Kind::Int,
            StorageDtype::Short => tch::Kind::Int16,
            StorageDtype::Char => tch::Kind::Int8,
            StorageDtype::Byte => tch::Kind::Uint8,
            StorageDtype::Bool => tch::Kind::Bool,
        }
    }
}

/// A tensor described by the pickle: a view into a storage stored elsewhere in the archive.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Storage key: the zip entry `<archive>/data/<key>`.
    pub storage_key: String,
    /// Element type.
    pub dtype: StorageDtype,
    /// Number of elements in the whole storage.
    pub storage_numel: i64,
    /// Offset of the first element, in elements.
    pub offset: i64,
    /// View shape.
    pub size: Vec<i64>,
    /// View strides, in elements.
    pub stride: Vec<i64>,
}

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`
    None,
    /// `bool`
    Bool(bool),
    /// `int`
    Int(i64),
    /// `float`
    Float(f64),
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Vec<u8>),
    /// `tuple`
    Tuple(Vec<Value>),
    /// `list` (also sets)
    List(Vec<Value>),
    /// `dict` / `OrderedDict`, insertion order kept
    Dict(Vec<(Value, Value)>),
    /// A whitelisted global, not yet called.
    Global(String, String),
    /// A storage from a persistent id.
    Storage(StorageDtype, String, i64),
    /// A tensor.
    Tensor(TensorRef),
}

/// Unpickling failed: malformed data or a construct outside the whitelist.
#[derive(Debug, thiserror::Error)]
#[error("pickle: {0}")]
pub struct PickleError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError(m.into()))
}

const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("builtins", "set"),
    ("__builtin__", "set"),
];

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        if self.pos + n > self.data.len() {
            return err("unexpected end of data");
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let start = self.pos;
        while self.pos < self.data.len() && self.data[self.pos] != b'\n' {
            self.pos += 1;
        }
        if self.pos >= self.data.len() {
            return err("unterminated line");
        }
        let s = String::from_utf8_lossy(&self.data[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(s)
    }
}

fn as_int(v: &Value) -> Result<i64, PickleError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        other => err(format!("expected an int, found {other:?}")),
    }
}

fn as_ints(v: &Value) -> Result<Vec<i64>, PickleError> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_int).collect(),
        other => err(format!("expected a tuple of ints, found {other:?}")),
    }
}

fn call(module: &str, name: &str, args: Vec<Value>) -> Result<Value, PickleError> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch", "Size") => Ok(Value::Tuple(
            as_ints(args.first().unwrap_or(&Value::Tuple(vec![])))?
                .into_iter()
                .map(Value::Int)
                .collect(),
        )),
        ("builtins" | "__builtin__", "set") => Ok(Value::List(match args.into_iter().next() {
            Some(Value::List(v)) | Some(Value::Tuple(v)) => v,
            _ => Vec::new(),
        })),
        ("torch._utils", "_rebuild_tensor_v2") => {
            if args.len() < 4 {
                return err("_rebuild_tensor_v2 with fewer than 4 arguments");
            }
            let Value::Storage(dtype, key, numel) = &args[0] else {
                return err(format!("_rebuild_tensor_v2 on a non-storage {:?}", args[0]));
            };
            Ok(Value::Tensor(TensorRef {
                storage_key: key.clone(),
                dtype: *dtype,
                storage_numel: *numel,
                offset: as_int(&args[1])?,
                size: as_ints(&args[2])?,
                stride: as_ints(&args[3])?,
            }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args
            .into_iter()
            .next()
            .ok_or_else(|| PickleError("_rebuild_parameter without data".into())),
        _ => err(format!("refusing to call global {module}.{name}")),
    }
}

/// Decodes a pickle stream. Only the whitelisted globals are accepted.
pub fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| {
        stack
            .pop()
            .ok_or_else(|| PickleError("stack underflow".into()))
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'(' => marks.push(stack.len()),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' | 0x8f => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 8 {
                    return err("LONG1 integer wider than 64 bits");
                }
                let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                    [0xffu8; 8]
                } else {
                    [0u8; 8]
                };
                buf[..n].copy_from_slice(bytes);
                stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let b = r.take(8)?;
                stack.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())));
            }
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(global(&module, &name)?);
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(global(&m, &n)?),
                    _ => return err("STACK_GLOBAL with non-string operands"),
                }
            }
            b'q' => {
                let i = r.u8()? as u32;
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| PickleError("BINPUT on empty stack".into()))?,
                );
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| PickleError("LONG_BINPUT on empty stack".into()))?,
                );
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(
                    i,
                    stack
                        .last()
                        .cloned()
                        .ok_or_else(|| PickleError("MEMOIZE on empty stack".into()))?,
                );
            }
            b'h' => {
                let i = r.u8()? as u32;
                stack.push(
                    memo.get(&i)
                        .cloned()
                        .ok_or_else(|| PickleError(format!("memo {i} missing")))?,
                );
            }
            b'j' => {
                let i = r.u32()?;
                stack.push(
                    memo.get(&i)
                        .cloned()
                        .ok_or_else(|| PickleError(format!("memo {i} missing")))?,
                );
            }
            b't' => {
                let m = marks
                    .pop()
                    .ok_or_else(|| PickleError("TUPLE without MARK".into()))?;
                let items = stack.split_off(m);
                stack.push(Value::Tuple(items));
            }
            0x85 => {
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a]));
            }
            0x86 => {
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b]));
            }
            0x87 => {
                let c = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b, c]));
            }
            b'l' => {
                let m = marks
                    .pop()
                    .ok_or_else(|| PickleError("LIST without MARK".into()))?;
                let items = stack.split_off(m);
                stack.push(Value::List(items));
            }
            b'd' => {
                let m = marks
                    .pop()
                    .ok_or_else(|| PickleError("DICT without MARK".into()))?;
                let items = stack.split_off(m);
                stack.push(Value::Dict(pairs(items)?));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return err("APPEND to a non-list"),
                }
            }
            b'e' | 0x90 => {
                let m = marks
                    .pop()
                    .ok_or_else(|| PickleError("APPENDS without MARK".into()))?;
                let items = stack.split_off(m);
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return err("APPENDS to a non-list"),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return err("SETITEM on a non-dict"),
                }
            }
            b'u' => {
                let m = marks
                    .pop()
                    .ok_or_else(|| PickleError("SETITEMS without MARK".into()))?;
                let items = stack.split_off(m);
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(pairs(items)?),
                    _ => return err("SETITEMS on a non-dict"),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent_load(pid)?);
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                let Value::Global(m, n) = func else {
                    return err(format!("REDUCE on a non-callable {func:?}"));
                };
                let args = match args {
                    Value::Tuple(a) => a,
                    other => return err(format!("REDUCE with non-tuple arguments {other:?}")),
                };
                stack.push(call(&m, &n, args)?);
            }
            0x81 => {
                let args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                let Value::Global(m, n) = cls else {
                    return err("NEWOBJ on a non-class");
                };
                let args = match args {
                    Value::Tuple(a) => a,
                    _ => Vec::new(),
                };
                stack.push(call(&m, &n, args)?);
            }
            b'b' => {
                // BUILD: state for the object below (e.g. OrderedDict `_metadata`); ignored.
                pop(&mut stack)?;
                if stack.is_empty() {
                    return err("BUILD on empty stack");
                }
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'2' => {
                let top = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| PickleError("DUP on empty stack".into()))?;
                stack.push(top);
            }
            b'1' => {
                let m = marks
                    .pop()
                    .ok_or_else(|| PickleError("POP_MARK without MARK".into()))?;
                stack.truncate(m);
            }
            other => {
                return err(format!(
                    "unsupported opcode 0x{other:02x} at byte {}",
                    r.pos - 1
                ))
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return err("odd number of dict items");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn global(module: &str, name: &str) -> Result<Value, PickleError> {
    if module == "torch" && StorageDtype::from_class(name).is_some() {
        return Ok(Value::Global(module.into(), name.into()));
    }
    if ALLOWED_GLOBALS.contains(&(module, name)) {
        Ok(Value::Global(module.into(), name.into()))
    } else {
        err(format!(
            "refusing global {module}.{name} (not part of a state dict)"
        ))
    }
}

fn persistent_load(pid: Value) -> Result<Value, PickleError> {
    let Value::Tuple(items) = pid else {
        return err("persistent id is not a tuple");
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(_, class), Value::Str(key), _location, numel]
            if tag == "storage" =>
        {
            let dtype = StorageDtype::from_class(class)
                .ok_or_else(|| PickleError(format!("unknown storage type {class}")))?;
            Ok(Value::Storage(dtype, key.clone(), as_int(numel)?))
        }
        _ => err(format!("unsupported persistent id {items:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_arbitrary_globals() {
        // cos\nsystem\n(S'echo hi'\ntR.
        let data = b"cos\nsystem\n(X\x07\x00\x00\x00echo hitR.";
        let e = unpickle(data).unwrap_err();
        assert!(e.0.contains("os.system"), "{e}");
    }

    #[test]
    fn decodes_plain_containers() {
        // protocol 2: {'a': (1, 2.5, True), 'b': [None]}
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01G@\x04\x00\x00\x00\x00\x00\x00\x88\x87X\x01\x00\x00\x00b]q\x01Nau.";
        let v = unpickle(data).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::Tuple(vec![Value::Int(1), Value::Float(2.5), Value::Bool(true)])
                ),
                (Value::Str("b".into()), Value::List(vec![Value::None])),
            ])
        );
    }

    #[test]
    fn truncated_stream_is_an_error() {
        assert!(unpickle(b"\x80\x02}q\x00(X\x01\x00").is_err());
    }
}
