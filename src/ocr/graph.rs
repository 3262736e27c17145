//! An ONNX inference graph run on libtorch: each node is checked and compiled once, at load, into
//! one `tch` operation (ONNX's semantics, refusing any attribute value it does not implement),
//! so the graph runs on whatever device its constants were moved to — the CPU or the GPU beside
//! CLIP. Values live in numbered slots and are dropped after their last use.
//!
//! The operator set is the one PaddleOCR's exported detectors use (opset 11–13): `Conv`,
//! `ConvTranspose`, `BatchNormalization`, `Add`, `Sub`, `Mul`, `Div`, `Clip`, `Relu`,
//! `Sigmoid`, `HardSigmoid`, `HardSwish`, `GlobalAveragePool`, `Resize` (nearest, as Paddle
//! exports it), `Concat` and `Constant`. Anything else is refused at load naming the node.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use super::onnx::{tensor_from_proto, AttributeProto, ModelProto, NodeProto};

/// A compiled graph.
pub struct Graph {
    ops: Vec<Step>,
    /// Constant slots, filled at load.
    constants: Vec<(usize, Tensor)>,
    input: usize,
    output: usize,
    slots: usize,
    device: Device,
    /// Activations and convolution weights in NHWC memory (the CPU).
    channels_last: bool,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("ops", &self.ops.len())
            .field("constants", &self.constants.len())
            .field("device", &self.device)
            .finish()
    }
}

struct Step {
    op: Op,
    inputs: Vec<usize>,
    output: usize,
    /// Slots whose last use is this step.
    frees: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Op {
    Conv {
        stride: [i64; 2],
        padding: [i64; 2],
        dilation: [i64; 2],
        groups: i64,
    },
    ConvTranspose {
        stride: [i64; 2],
        padding: [i64; 2],
        output_padding: [i64; 2],
        dilation: [i64; 2],
        groups: i64,
    },
    BatchNorm {
        epsilon: f64,
    },
    Add,
    Sub,
    Mul,
    Div,
    Clip {
        min: Option<f64>,
        max: Option<f64>,
    },
    Relu,
    Sigmoid,
    HardSigmoid {
        alpha: f64,
        beta: f64,
    },
    HardSwish,
    GlobalAveragePool,
    /// Nearest-neighbour upsampling by whole factors (asymmetric coordinates, floor).
    ResizeNearest {
        scale: [f64; 2],
    },
    Concat {
        axis: i64,
    },
    /// `x · scale + bias` with scalar constants (fused from `Mul` then `Add`).
    Affine {
        scale: f64,
        bias: f64,
    },
}

/// Whether `b` broadcasts to `a`'s shape (so `a op= b` is `a op b`), with the same dtype.
fn broadcasts_into(b: &Tensor, a: &Tensor) -> bool {
    let (sa, sb) = (a.size(), b.size());
    a.kind() == b.kind()
        && sb.len() <= sa.len()
        && sb
            .iter()
            .rev()
            .zip(sa.iter().rev())
            .all(|(&x, &y)| x == y || x == 1)
}

/// A constant's value when it is one number.
fn scalar_of(values: &HashMap<usize, Tensor>, slot: usize) -> Option<f64> {
    values
        .get(&slot)
        .filter(|t| t.numel() == 1 && t.kind() == Kind::Float)
        .map(|t| t.double_value(&vec![0; t.dim()]))
}

/// A per-output-channel constant for a convolution with `c` output channels: one number, or
/// `[C, 1, 1]` / `[1, C, 1, 1]`, as a `[C]` vector.
fn channel_vector(values: &HashMap<usize, Tensor>, slot: usize, c: i64) -> Option<Tensor> {
    let t = values.get(&slot)?;
    if t.kind() != Kind::Float {
        return None;
    }
    let size = t.size();
    if t.numel() == 1 {
        return Some(t.flatten(0, -1).expand([c], false).contiguous());
    }
    let channel = match size.as_slice() {
        [n, 1, 1] | [1, n, 1, 1] => *n,
        _ => return None,
    };
    (channel == c).then(|| t.flatten(0, -1))
}

/// Graph fusions, each exact in real arithmetic (floating-point results move by rounding
/// only): a convolution absorbs the inference `BatchNormalization`, the constant `Mul` and the
/// constant `Add` that follow it when it is their only input (weights and bias rescaled
/// per output channel); `Add(x, 3) → Clip(0, 6) → Mul(x, ·) → Div(·, 6)` becomes `HardSwish`;
/// `Mul` by a scalar then `Add` of a scalar becomes one `Affine`. Steps that become dead are
/// removed.
fn fuse(
    ops: Vec<Step>,
    values: &mut HashMap<usize, Tensor>,
    slots: &mut usize,
    output: usize,
) -> Vec<Step> {
    let mut ops: Vec<Option<Step>> = ops.into_iter().map(Some).collect();
    let mut consumers: HashMap<usize, Vec<usize>> = HashMap::new();
    for (k, step) in ops.iter().enumerate() {
        for &s in &step.as_ref().expect("all live").inputs {
            consumers.entry(s).or_default().push(k);
        }
    }
    // The one live step reading `slot`, when exactly one does and it is not the output.
    let only_consumer =
        |ops: &[Option<Step>], consumers: &HashMap<usize, Vec<usize>>, slot: usize| {
            if slot == output {
                return None;
            }
            let live: Vec<usize> = consumers
                .get(&slot)
                .map(|v| v.iter().copied().filter(|&k| ops[k].is_some()).collect())
                .unwrap_or_default();
            match live.as_slice() {
                [k] => Some(*k),
                _ => None,
            }
        };
    let mut new_constant = |values: &mut HashMap<usize, Tensor>, t: Tensor| -> usize {
        let s = *slots;
        *slots += 1;
        values.insert(s, t);
        s
    };
    for i in 0..ops.len() {
        // Convolutions absorb what follows them.
        while let Some(step) = ops[i].as_ref() {
            if !matches!(step.op, Op::Conv { .. }) {
                break;
            }
            let Some(j) = only_consumer(&ops, &consumers, step.output) else {
                break;
            };
            let next = ops[j].as_ref().expect("live");
            let w = &values[&step.inputs[1]];
            let c = w.size()[0];
            let b = match step.inputs.get(2) {
                Some(s) => values[s].shallow_clone(),
                None => Tensor::zeros([c], (Kind::Float, Device::Cpu)),
            };
            let other = |next: &Step| -> Option<usize> {
                match next.inputs.as_slice() {
                    [a, b] if *a == step.output && values.contains_key(b) => Some(*b),
                    [a, b] if *b == step.output && values.contains_key(a) => Some(*a),
                    _ => None,
                }
            };
            let folded: Option<(Tensor, Tensor)> = match &next.op {
                Op::BatchNorm { epsilon } if next.inputs[0] == step.output => {
                    let p: Option<Vec<Tensor>> = next.inputs[1..5]
                        .iter()
                        .map(|s| values.get(s).map(|t| t.to_kind(Kind::Double)))
                        .collect();
                    p.map(|p| {
                        let k = &p[0] / (&p[3] + *epsilon).sqrt();
                        let w2 = w.to_kind(Kind::Double) * k.view([c, 1, 1, 1]);
                        let b2 = (b.to_kind(Kind::Double) - &p[2]) * &k + &p[1];
                        (w2.to_kind(Kind::Float), b2.to_kind(Kind::Float))
                    })
                }
                Op::Mul => other(next)
                    .and_then(|s| channel_vector(values, s, c))
                    .map(|k| (w * k.view([c, 1, 1, 1]), &b * &k)),
                Op::Add => other(next)
                    .and_then(|s| channel_vector(values, s, c))
                    .map(|k| (w.shallow_clone(), &b + &k)),
                _ => None,
            };
            let Some((w2, b2)) = folded else { break };
            let out = next.output;
            let ws = new_constant(values, w2);
            let bs = new_constant(values, b2);
            let step = ops[i].as_mut().expect("live");
            step.inputs = vec![step.inputs[0], ws, bs];
            step.output = out;
            ops[j] = None;
        }
        // HardSwish: Add(x, 3) → Clip(0, 6) → Mul(x, clip) → Div(mul, 6).
        let hardswish = (|| {
            let add = ops[i].as_ref()?;
            if !matches!(add.op, Op::Add) || scalar_of(values, add.inputs[1])? != 3.0 {
                return None;
            }
            let x = add.inputs[0];
            let k_clip = only_consumer(&ops, &consumers, add.output)?;
            let clip = ops[k_clip].as_ref()?;
            if !matches!(clip.op, Op::Clip { min: Some(a), max: Some(b) } if a == 0.0 && b == 6.0) {
                return None;
            }
            let k_mul = only_consumer(&ops, &consumers, clip.output)?;
            let mul = ops[k_mul].as_ref()?;
            let mut ins = mul.inputs.clone();
            ins.sort();
            let mut want = vec![x, clip.output];
            want.sort();
            if !matches!(mul.op, Op::Mul) || ins != want {
                return None;
            }
            let k_div = only_consumer(&ops, &consumers, mul.output)?;
            let div = ops[k_div].as_ref()?;
            if !matches!(div.op, Op::Div)
                || div.inputs[0] != mul.output
                || scalar_of(values, div.inputs[1])? != 6.0
            {
                return None;
            }
            Some((x, k_clip, k_mul, k_div))
        })();
        if let Some((x, k_clip, k_mul, k_div)) = hardswish {
            let out = ops[k_div].as_ref().expect("live").output;
            ops[k_clip] = None;
            ops[k_mul] = None;
            ops[k_div] = None;
            ops[i] = Some(Step {
                op: Op::HardSwish,
                inputs: vec![x],
                output: out,
                frees: Vec::new(),
            });
            continue;
        }
        // Affine: Mul(x, scalar) → Add(·, scalar).
        let affine = (|| {
            let mul = ops[i].as_ref()?;
            if !matches!(mul.op, Op::Mul) {
                return None;
            }
            let (x, scale) = match mul.inputs.as_slice() {
                [a, b] => match (scalar_of(values, *a), scalar_of(values, *b)) {
                    (Some(k), None) => (*b, k),
                    (None, Some(k)) => (*a, k),
                    _ => return None,
                },
                _ => return None,
            };
            let k_add = only_consumer(&ops, &consumers, mul.output)?;
            let add = ops[k_add].as_ref()?;
            let bias = match add.inputs.as_slice() {
                [a, b] if *a == mul.output => scalar_of(values, *b)?,
                [a, b] if *b == mul.output => scalar_of(values, *a)?,
                _ => return None,
            };
            matches!(add.op, Op::Add).then_some((x, scale, bias, k_add))
        })();
        if let Some((x, scale, bias, k_add)) = affine {
            let out = ops[k_add].as_ref().expect("live").output;
            ops[k_add] = None;
            ops[i] = Some(Step {
                op: Op::Affine { scale, bias },
                inputs: vec![x],
                output: out,
                frees: Vec::new(),
            });
        }
    }
    ops.into_iter().flatten().collect()
}

/// Why a graph cannot be compiled.
fn node_error(node: &NodeProto, index: usize, what: impl std::fmt::Display) -> String {
    format!(
        "node {index} ({} {:?}): {what}",
        node.op_type,
        if node.name.is_empty() {
            node.output.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        }
    )
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn pair(node: &NodeProto, index: usize, name: &str, default: i64) -> Result<[i64; 2], String> {
    match ints(node, name) {
        None => Ok([default, default]),
        Some(v) if v.len() == 2 => Ok([v[0], v[1]]),
        Some(v) => Err(node_error(node, index, format!("{name}: {v:?} is not 2-D"))),
    }
}

/// ONNX pads `[top, left, bottom, right]` → torch's symmetric `[h, w]`.
fn symmetric_pads(node: &NodeProto, index: usize) -> Result<[i64; 2], String> {
    if let Some(a) = attr(node, "auto_pad") {
        let mode = String::from_utf8_lossy(&a.s);
        if mode != "NOTSET" {
            return Err(node_error(
                node,
                index,
                format!("auto_pad: {mode} is not supported"),
            ));
        }
    }
    match ints(node, "pads") {
        None => Ok([0, 0]),
        Some(p) if p.len() == 4 && p[0] == p[2] && p[1] == p[3] => Ok([p[0], p[1]]),
        Some(p) => Err(node_error(
            node,
            index,
            format!("pads: {p:?} is not symmetric 2-D"),
        )),
    }
}

fn string_attr(node: &NodeProto, name: &str, default: &str) -> String {
    attr(node, name)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_else(|| default.to_string())
}

fn float_attr(node: &NodeProto, name: &str, default: f32) -> f64 {
    attr(node, name).map(|a| a.f).unwrap_or(default) as f64
}

impl Graph {
    /// Compiles a model's graph with its fusions; its constants go to `device`.
    pub fn compile(model: &ModelProto, device: Device) -> Result<Graph, String> {
        Self::compile_with(model, device, true)
    }

    /// Compiles a model's graph, fusing (see [`fuse`]) when `fusion` is true.
    pub fn compile_with(model: &ModelProto, device: Device, fusion: bool) -> Result<Graph, String> {
        let graph = model.graph.as_ref().ok_or("graph: missing")?;
        for set in &model.opset_import {
            if (set.domain.is_empty() || set.domain == "ai.onnx") && set.version > 17 {
                return Err(format!(
                    "opset_import: version {} is newer than this reader knows (17)",
                    set.version
                ));
            }
        }
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let slot = |name: &str, slot_of: &mut HashMap<String, usize>| -> usize {
            let n = slot_of.len();
            *slot_of.entry(name.to_string()).or_insert(n)
        };
        // Constant values by slot: initializers and `Constant` nodes.
        let mut values: HashMap<usize, Tensor> = HashMap::new();
        for t in &graph.initializer {
            let s = slot(&t.name, &mut slot_of);
            values.insert(s, tensor_from_proto(t)?);
        }
        let inputs: Vec<&str> = graph
            .input
            .iter()
            .map(|v| v.name.as_str())
            .filter(|n| !graph.initializer.iter().any(|t| t.name == *n))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(format!(
                "input: the graph has {} non-constant inputs, a detector has one",
                inputs.len()
            ));
        };
        let input = slot(input, &mut slot_of);
        let [output] = graph.output.as_slice() else {
            return Err(format!(
                "output: the graph has {} outputs, a detector has one",
                graph.output.len()
            ));
        };
        let output_name = output.name.clone();

        let mut ops: Vec<Step> = Vec::new();
        for (index, node) in graph.node.iter().enumerate() {
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                return Err(node_error(
                    node,
                    index,
                    format!("domain {:?} is not supported", node.domain),
                ));
            }
            let [out] = node.output.as_slice() else {
                return Err(node_error(
                    node,
                    index,
                    "only single-output nodes are supported",
                ));
            };
            if node.op_type == "Constant" {
                let t = attr(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| {
                        node_error(
                            node,
                            index,
                            "value: missing (only tensor constants are supported)",
                        )
                    })?;
                let x = tensor_from_proto(t).map_err(|e| node_error(node, index, e))?;
                let s = slot(out, &mut slot_of);
                values.insert(s, x);
                continue;
            }
            let mut ins = Vec::new();
            for name in &node.input {
                if name.is_empty() {
                    ins.push(usize::MAX);
                    continue;
                }
                let Some(&s) = slot_of.get(name) else {
                    return Err(node_error(
                        node,
                        index,
                        format!("input {name:?} is not defined before it"),
                    ));
                };
                ins.push(s);
            }
            let constant = |k: usize| -> Option<&Tensor> { ins.get(k).and_then(|s| values.get(s)) };
            let scalar = |k: usize| -> Result<Option<f64>, String> {
                match ins.get(k) {
                    None | Some(&usize::MAX) => Ok(None),
                    Some(_) => match constant(k) {
                        Some(t) if t.numel() == 1 => Ok(Some(t.double_value(&[]))),
                        _ => Err(node_error(
                            node,
                            index,
                            format!("input {k}: must be a constant scalar"),
                        )),
                    },
                }
            };
            let need = |n: usize| -> Result<(), String> {
                if ins.len() < n || ins[..n].contains(&usize::MAX) {
                    Err(node_error(node, index, format!("needs {n} inputs")))
                } else {
                    Ok(())
                }
            };
            let (op, keep): (Op, usize) = match node.op_type.as_str() {
                "Conv" => {
                    need(2)?;
                    if constant(1).map(|w| w.dim() != 4).unwrap_or(true) {
                        return Err(node_error(
                            node,
                            index,
                            "weight: must be a constant 4-D tensor",
                        ));
                    }
                    let op = Op::Conv {
                        stride: pair(node, index, "strides", 1)?,
                        padding: symmetric_pads(node, index)?,
                        dilation: pair(node, index, "dilations", 1)?,
                        groups: attr(node, "group").map(|a| a.i).unwrap_or(1),
                    };
                    (op, ins.len().min(3))
                }
                "ConvTranspose" => {
                    need(2)?;
                    if attr(node, "output_shape").is_some() {
                        return Err(node_error(node, index, "output_shape: not supported"));
                    }
                    let op = Op::ConvTranspose {
                        stride: pair(node, index, "strides", 1)?,
                        padding: symmetric_pads(node, index)?,
                        output_padding: pair(node, index, "output_padding", 0)?,
                        dilation: pair(node, index, "dilations", 1)?,
                        groups: attr(node, "group").map(|a| a.i).unwrap_or(1),
                    };
                    (op, ins.len().min(3))
                }
                "BatchNormalization" => {
                    need(5)?;
                    if attr(node, "training_mode")
                        .map(|a| a.i != 0)
                        .unwrap_or(false)
                    {
                        return Err(node_error(
                            node,
                            index,
                            "training_mode: only inference is supported",
                        ));
                    }
                    (
                        Op::BatchNorm {
                            epsilon: float_attr(node, "epsilon", 1e-5),
                        },
                        5,
                    )
                }
                "Add" | "Sub" | "Mul" | "Div" => {
                    need(2)?;
                    let op = match node.op_type.as_str() {
                        "Add" => Op::Add,
                        "Sub" => Op::Sub,
                        "Mul" => Op::Mul,
                        _ => Op::Div,
                    };
                    (op, 2)
                }
                "Clip" => {
                    need(1)?;
                    let (min, max) = if attr(node, "min").is_some() || attr(node, "max").is_some() {
                        (
                            attr(node, "min").map(|a| a.f as f64),
                            attr(node, "max").map(|a| a.f as f64),
                        )
                    } else {
                        (scalar(1)?, scalar(2)?)
                    };
                    (Op::Clip { min, max }, 1)
                }
                "Relu" => (Op::Relu, 1),
                "Sigmoid" => (Op::Sigmoid, 1),
                "HardSwish" => (Op::HardSwish, 1),
                "HardSigmoid" => (
                    Op::HardSigmoid {
                        alpha: float_attr(node, "alpha", 0.2),
                        beta: float_attr(node, "beta", 0.5),
                    },
                    1,
                ),
                "GlobalAveragePool" => (Op::GlobalAveragePool, 1),
                "Concat" => {
                    let axis = attr(node, "axis")
                        .map(|a| a.i)
                        .ok_or_else(|| node_error(node, index, "axis: missing"))?;
                    (Op::Concat { axis }, ins.len())
                }
                "Resize" => {
                    let mode = string_attr(node, "mode", "nearest");
                    let coords = string_attr(node, "coordinate_transformation_mode", "half_pixel");
                    let nearest = string_attr(node, "nearest_mode", "round_prefer_floor");
                    if mode != "nearest" || coords != "asymmetric" || nearest != "floor" {
                        return Err(node_error(
                            node,
                            index,
                            format!("mode {mode}, coordinate_transformation_mode {coords}, nearest_mode {nearest}: only nearest / asymmetric / floor is supported"),
                        ));
                    }
                    let scales = constant(2).ok_or_else(|| {
                        node_error(
                            node,
                            index,
                            "scales: must be a constant (sizes are not supported)",
                        )
                    })?;
                    let s: Vec<f64> =
                        Vec::<f64>::try_from(scales.to_kind(Kind::Double).flatten(0, -1))
                            .map_err(|e| node_error(node, index, e))?;
                    if s.len() != 4
                        || s[0] != 1.0
                        || s[1] != 1.0
                        || s[2] < 1.0
                        || s[3] < 1.0
                        || s[2].fract() != 0.0
                        || s[3].fract() != 0.0
                    {
                        return Err(node_error(node, index, format!("scales: {s:?}: only whole spatial upsampling factors are supported")));
                    }
                    (
                        Op::ResizeNearest {
                            scale: [s[2], s[3]],
                        },
                        1,
                    )
                }
                other => {
                    return Err(node_error(
                        node,
                        index,
                        format!("operator {other} is not supported"),
                    ))
                }
            };
            let s_out = slot(out, &mut slot_of);
            ops.push(Step {
                op,
                inputs: ins[..keep].to_vec(),
                output: s_out,
                frees: Vec::new(),
            });
        }
        let output = *slot_of
            .get(&output_name)
            .ok_or_else(|| format!("output {output_name:?}: no node makes it"))?;
        let mut slots = slot_of.len();
        if fusion {
            ops = fuse(ops, &mut values, &mut slots, output);
        }
        // Only constants some step reads are kept.
        let used: std::collections::HashSet<usize> =
            ops.iter().flat_map(|s| s.inputs.iter().copied()).collect();
        let mut constants: Vec<(usize, Tensor)> = values
            .into_iter()
            .filter(|(s, _)| used.contains(s))
            .collect();
        constants.sort_by_key(|(s, _)| *s);
        // Each non-constant slot is freed after its last use (the output and the input never
        // are: the input belongs to the caller).
        let constant_slots: std::collections::HashSet<usize> =
            constants.iter().map(|(s, _)| *s).collect();
        let mut last_use: HashMap<usize, usize> = HashMap::new();
        for (k, step) in ops.iter().enumerate() {
            for &s in &step.inputs {
                last_use.insert(s, k);
            }
        }
        for (s, k) in last_use {
            if s != output && s != input && !constant_slots.contains(&s) && s != usize::MAX {
                ops[k].frees.push(s);
            }
        }
        // oneDNN's convolutions are fastest on NHWC activations and weights on the CPU;
        // elementwise operators keep the layout.
        let channels_last = device == Device::Cpu;
        let constants = constants
            .into_iter()
            .map(|(s, t)| {
                let t = t.to_device(device);
                (
                    s,
                    if t.dim() == 4 && channels_last {
                        crate::model::kernels::channels_last(&t)
                    } else {
                        t
                    },
                )
            })
            .collect();
        Ok(Graph {
            ops,
            constants,
            input,
            output,
            slots,
            device,
            channels_last,
        })
    }

    /// The number of compiled steps (after fusion).
    pub fn steps(&self) -> usize {
        self.ops.len()
    }

    /// How many steps of each operator the compiled graph has.
    pub fn op_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for step in &self.ops {
            let name = format!("{:?}", step.op);
            let name = name
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_string();
            *out.entry(name).or_insert(0) += 1;
        }
        out
    }

    /// Where the constants live (and the input must).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs the graph on one input.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut values: Vec<Option<Tensor>> = (0..self.slots).map(|_| None).collect();
        for (s, t) in &self.constants {
            values[*s] = Some(t.shallow_clone());
        }
        values[self.input] = Some(if self.channels_last {
            crate::model::kernels::channels_last(x)
        } else {
            x.shallow_clone()
        });
        for step in &self.ops {
            // The first input, owned, when this step is its last use: elementwise operators then
            // write into it instead of allocating.
            let first = step.inputs[0];
            let in_place = step.frees.contains(&first)
                && step.inputs.iter().filter(|&&s| s == first).count() == 1
                && match step.op {
                    Op::Relu | Op::HardSwish | Op::Affine { .. } => true,
                    Op::Add | Op::Sub | Op::Mul | Op::Div => {
                        let a = values[first].as_ref().expect("defined");
                        let b = values[step.inputs[1]].as_ref().expect("defined");
                        broadcasts_into(b, a)
                    }
                    _ => false,
                };
            let mut own = if in_place { values[first].take() } else { None };
            let arg = |k: usize| -> &Tensor {
                values[step.inputs[k]]
                    .as_ref()
                    .expect("compiled graphs define values before use")
            };
            let opt = |k: usize| -> Option<&Tensor> {
                step.inputs
                    .get(k)
                    .filter(|&&s| s != usize::MAX)
                    .map(|&s| values[s].as_ref().expect("defined"))
            };
            let y = match &step.op {
                Op::Conv {
                    stride,
                    padding,
                    dilation,
                    groups,
                } => arg(0).conv2d(arg(1), opt(2), stride, padding, dilation, *groups),
                Op::ConvTranspose {
                    stride,
                    padding,
                    output_padding,
                    dilation,
                    groups,
                } => arg(0).conv_transpose2d(
                    arg(1),
                    opt(2),
                    stride,
                    padding,
                    output_padding,
                    *groups,
                    dilation,
                ),
                Op::BatchNorm { epsilon } => arg(0).batch_norm(
                    Some(arg(1)),
                    Some(arg(2)),
                    Some(arg(3)),
                    Some(arg(4)),
                    false,
                    0.0,
                    *epsilon,
                    false,
                ),
                Op::Add | Op::Sub | Op::Mul | Op::Div if own.is_some() => {
                    let mut a = own.take().expect("owned");
                    let b = arg(1);
                    let _ = match step.op {
                        Op::Add => a.g_add_(b),
                        Op::Sub => a.g_sub_(b),
                        Op::Mul => a.g_mul_(b),
                        _ => a.g_div_(b),
                    };
                    a
                }
                Op::Relu | Op::HardSwish | Op::Affine { .. } if own.is_some() => {
                    let mut a = own.take().expect("owned");
                    let _ = match step.op {
                        Op::Relu => a.relu_(),
                        Op::HardSwish => a.hardswish_(),
                        Op::Affine { scale, bias } => {
                            let _ = a.g_mul_scalar_(scale);
                            a.g_add_scalar_(bias)
                        }
                        _ => unreachable!(),
                    };
                    a
                }
                Op::Add => arg(0) + arg(1),
                Op::Sub => arg(0) - arg(1),
                Op::Mul => arg(0) * arg(1),
                Op::Div => arg(0) / arg(1),
                Op::Clip { min, max } => match (min, max) {
                    (Some(a), Some(b)) => arg(0).clamp(*a, *b),
                    (Some(a), None) => arg(0).clamp_min(*a),
                    (None, Some(b)) => arg(0).clamp_max(*b),
                    (None, None) => arg(0).shallow_clone(),
                },
                Op::Relu => arg(0).relu(),
                Op::Sigmoid => arg(0).sigmoid(),
                Op::HardSigmoid { alpha, beta } => (arg(0) * *alpha + *beta).clamp(0.0, 1.0),
                Op::HardSwish => arg(0).hardswish(),
                Op::GlobalAveragePool => arg(0).mean_dim(&[2i64, 3][..], true, None),
                Op::ResizeNearest { scale } => {
                    let size = arg(0).size();
                    let (h, w) = (size[2], size[3]);
                    arg(0).upsample_nearest2d(
                        [
                            (h as f64 * scale[0]).floor() as i64,
                            (w as f64 * scale[1]).floor() as i64,
                        ],
                        Some(scale[0]),
                        Some(scale[1]),
                    )
                }
                Op::Concat { axis } => {
                    let parts: Vec<&Tensor> = (0..step.inputs.len()).map(arg).collect();
                    Tensor::cat(&parts, *axis)
                }
                Op::Affine { scale, bias } => {
                    let mut y = arg(0) * *scale;
                    let _ = y.g_add_scalar_(*bias);
                    y
                }
            };
            values[step.output] = Some(y);
            for &s in &step.frees {
                values[s] = None;
            }
        }
        values[self.output].take().expect("the output is computed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::onnx::{GraphProto, TensorProto, ValueInfoProto};

    fn value(name: &str) -> ValueInfoProto {
        ValueInfoProto { name: name.into() }
    }

    fn model(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>) -> ModelProto {
        ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                node: nodes,
                initializer,
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: format!("{op}_0"),
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn scalar(name: &str, v: f32) -> TensorProto {
        TensorProto {
            dims: vec![],
            data_type: 1,
            name: name.into(),
            raw_data: v.to_le_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_small_graph_runs_with_onnx_semantics_fused_or_not() {
        // y = hardswish(x · 2 + 1) spelled as ONNX exports it, then a sigmoid.
        let nodes = vec![
            node("Mul", &["x", "two"], "m"),
            node("Add", &["m", "one"], "a"),
            node("Add", &["a", "three"], "a3"),
            node("Clip", &["a3", "zero", "six"], "c"),
            node("Mul", &["a", "c"], "p"),
            node("Div", &["p", "six"], "h"),
            node("Sigmoid", &["h"], "y"),
        ];
        let consts = vec![
            scalar("two", 2.0),
            scalar("one", 1.0),
            scalar("three", 3.0),
            scalar("zero", 0.0),
            scalar("six", 6.0),
        ];
        let m = model(nodes, consts);
        let x = Tensor::linspace(-6.0, 6.0, 25, (Kind::Float, Device::Cpu)).view([1, 1, 5, 5]);
        let want = (&x * 2.0 + 1.0).hardswish().sigmoid();
        for fusion in [false, true] {
            let g = Graph::compile_with(&m, Device::Cpu, fusion).unwrap();
            let y = g.forward(&x);
            let d = f64::try_from((&y - &want).abs().max()).unwrap();
            assert!(d < 1e-6, "fusion {fusion}: {d}");
            let counts = g.op_counts();
            if fusion {
                assert_eq!(g.steps(), 3, "{counts:?}");
                assert_eq!(
                    (counts["Affine"], counts["HardSwish"]),
                    (1, 1),
                    "{counts:?}"
                );
            } else {
                assert_eq!(g.steps(), 7, "{counts:?}");
            }
        }
        // The caller's input is never written in place.
        assert!((&x.view([-1]).get(0) + 6.0).abs().double_value(&[]) < 1e-9);
    }

    #[test]
    fn unsupported_operators_and_attributes_are_refused_naming_the_node() {
        let e = Graph::compile(
            &model(vec![node("Gemm", &["x", "x"], "y")], vec![]),
            Device::Cpu,
        )
        .unwrap_err();
        assert!(
            e.contains("Gemm") && e.contains("Gemm_0") && e.contains("not supported"),
            "{e}"
        );
        let mut resize = node("Resize", &["x", "", "s"], "y");
        resize.attribute.push(AttributeProto {
            name: "mode".into(),
            s: b"linear".to_vec(),
            ..Default::default()
        });
        let e =
            Graph::compile(&model(vec![resize], vec![scalar("s", 2.0)]), Device::Cpu).unwrap_err();
        assert!(e.contains("Resize") && e.contains("mode linear"), "{e}");
        let e = Graph::compile(
            &model(vec![node("Relu", &["nope"], "y")], vec![]),
            Device::Cpu,
        )
        .unwrap_err();
        assert!(e.contains("\"nope\" is not defined"), "{e}");
    }
}
