//! The ONNX file format, read: the subset of `onnx.proto` (ONNX's protobuf schema, IR 3 and
//! later) that describes an inference graph — the model, its graph, nodes, attributes and
//! tensors — declared with `prost`'s derive so no schema compiler is needed at build time. Field
//! numbers are `onnx.proto`'s; fields this reader has no use for are skipped by the decoder.
//!
//! [`read_model`] decodes a file and turns every tensor (initializer or `Constant` node value)
//! into a `tch` tensor with [`tensor_from_proto`].

use std::path::Path;

use prost::Message;
use tch::{Kind, Tensor};

/// `ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// `ir_version`.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// `opset_import`.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// `producer_name`.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// `graph`.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// `domain` ("" is the default ONNX domain).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `version`.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// `node`, in topological order (the format requires it).
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// `name`.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `initializer`.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// `input`.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// `output`.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `ValueInfoProto` (its name only; the type is not needed to run the graph).
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// `name`.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// `input` ("" marks an omitted optional input).
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// `output`.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// `name`.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `op_type`.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// `attribute`.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// `domain`.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// `name`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `f`.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// `i`.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// `s`.
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// `t`.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// `floats`.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// `ints`.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// `TensorProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// `dims`.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// `data_type` (`TensorProto.DataType`: 1 float, 6 int32, 7 int64, 11 double).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// `float_data`.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// `int32_data`.
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// `int64_data`.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// `name`.
    #[prost(string, tag = "8")]
    pub name: String,
    /// `raw_data` (little-endian, row-major).
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// `double_data`.
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// `data_location` (1 = external: the data lives in another file, which is refused).
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// Decodes an ONNX file.
pub fn read_model(path: &Path, bytes: &[u8]) -> Result<ModelProto, String> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| format!("{}: not an ONNX model ({e})", path.display()))?;
    if model.graph.is_none() {
        return Err(format!("{}: graph: missing", path.display()));
    }
    Ok(model)
}

/// The tensor a `TensorProto` holds, on the CPU, as float (float and double data) or int64
/// (int32 and int64 data: shapes, axes, indices).
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor, String> {
    let name = &t.name;
    if t.data_location == 1 {
        return Err(format!(
            "tensor {name:?}: data_location: external data is not supported"
        ));
    }
    let count: i64 = t.dims.iter().product();
    if t.dims.iter().any(|&d| d < 0) {
        return Err(format!("tensor {name:?}: dims: negative ({:?})", t.dims));
    }
    let count = count as usize;
    let raw = |width: usize| -> Result<Option<&[u8]>, String> {
        if t.raw_data.is_empty() {
            return Ok(None);
        }
        if t.raw_data.len() != count * width {
            return Err(format!(
                "tensor {name:?}: raw_data: {} bytes for dims {:?}",
                t.raw_data.len(),
                t.dims
            ));
        }
        Ok(Some(&t.raw_data))
    };
    // Little-endian `raw_data` of `W`-byte values, else the typed field.
    fn values<T, const W: usize>(
        raw: Option<&[u8]>,
        read: fn([u8; W]) -> T,
        typed: impl FnOnce() -> Vec<T>,
    ) -> Vec<T> {
        match raw {
            Some(b) => b
                .chunks_exact(W)
                .map(|c| read(c.try_into().expect("W bytes")))
                .collect(),
            None => typed(),
        }
    }
    let values = match t.data_type {
        1 => {
            let v = values(raw(4)?, f32::from_le_bytes, || t.float_data.clone());
            check_len(name, v.len(), count)?;
            Tensor::from_slice(&v)
        }
        11 => {
            let v = values(
                raw(8)?,
                |b| f64::from_le_bytes(b) as f32,
                || t.double_data.iter().map(|&x| x as f32).collect(),
            );
            check_len(name, v.len(), count)?;
            Tensor::from_slice(&v)
        }
        7 => {
            let v = values(raw(8)?, i64::from_le_bytes, || t.int64_data.clone());
            check_len(name, v.len(), count)?;
            Tensor::from_slice(&v)
        }
        6 => {
            let v = values(
                raw(4)?,
                |b| i32::from_le_bytes(b) as i64,
                || t.int32_data.iter().map(|&x| x as i64).collect(),
            );
            check_len(name, v.len(), count)?;
            Tensor::from_slice(&v)
        }
        other => {
            return Err(format!(
                "tensor {name:?}: data_type: {other} is not supported (float, double, int32, int64 are)"
            ))
        }
    };
    let out = values.reshape(t.dims.as_slice());
    Ok(if out.kind() == Kind::Double {
        out.to_kind(Kind::Float)
    } else {
        out
    })
}

fn check_len(name: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("tensor {name:?}: {got} values for {want} elements"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_through_the_wire_format() {
        let t = TensorProto {
            dims: vec![2, 3],
            data_type: 1,
            name: "w".into(),
            raw_data: (0..6)
                .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
                .collect(),
            ..Default::default()
        };
        let node = NodeProto {
            input: vec![],
            output: vec!["w".into()],
            op_type: "Constant".into(),
            attribute: vec![AttributeProto {
                name: "value".into(),
                t: Some(t),
                ..Default::default()
            }],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                node: vec![node],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let back = read_model(Path::new("m.onnx"), &bytes).unwrap();
        let t = back.graph.unwrap().node[0].attribute[0].t.clone().unwrap();
        let x = tensor_from_proto(&t).unwrap();
        assert_eq!(x.size(), vec![2, 3]);
        assert_eq!(x.double_value(&[1, 2]), 2.5);

        let short = TensorProto {
            dims: vec![4],
            data_type: 1,
            name: "short".into(),
            raw_data: vec![0; 12],
            ..Default::default()
        };
        let e = tensor_from_proto(&short).unwrap_err();
        assert!(e.contains("\"short\"") && e.contains("raw_data"), "{e}");

        let e = read_model(Path::new("m.onnx"), b"\xff\xff\xff").unwrap_err();
        assert!(e.starts_with("m.onnx: not an ONNX model"), "{e}");
    }
}
