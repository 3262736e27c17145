//! Which CPU kernels the towers' matrix products run on.
//!
//! Every `Linear` of every tower (and the fused `in_proj` of the attention blocks) goes through
//! [`linear`]. On the CPU in fp32 with no gradient recorded, for inputs of fewer than
//! [`ONEDNN_MAX_ROWS`] rows, it calls oneDNN's `mkldnn::_linear_pointwise` through the C++ shim
//! in `csrc/onednn_shim.cpp`; otherwise (longer inputs, CUDA, bf16, fitting with gradients, or
//! [`set_cpu_linear`]`(CpuLinear::Aten)`) it calls `at::linear`,
//! libtorch's MKL-backed path that Python open_clip uses. Both compute the same product; they
//! differ by float rounding only (about 1e-6 relative). `TYPOCLIP_CPU_LINEAR=aten` in the
//! environment selects the libtorch path for the whole process, for A/B measurements.
//!
//! QuickGELU in inference runs in one pass over its buffer ([`quick_gelu_`], AVX2 + FMA, in
//! `csrc/quick_gelu_avx2.c`) instead of ATen's three (scale, sigmoid, multiply).

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use tch::Tensor;

extern "C" {
    fn typoclip_onednn_linear_available() -> c_int;
    fn typoclip_linear(
        x: *const c_void,
        w: *const c_void,
        b: *const c_void,
        residual: *const c_void,
        use_onednn: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn typoclip_channels_last(x: *const c_void, err: *mut *mut c_char) -> *mut c_void;
    fn typoclip_retain_freed_memory() -> c_int;
    fn typoclip_grad_enabled() -> c_int;
    fn typoclip_quick_gelu_(x: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn typoclip_autocast_state(device: c_int) -> c_int;
    fn typoclip_autocast_enter(device: c_int, code: c_int) -> c_int;
    fn typoclip_autocast_exit(device: c_int, prev: c_int);
}

/// The reduced-precision arithmetic of an [`Autocast`] region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduced {
    /// bfloat16.
    BFloat16,
    /// IEEE half precision.
    Half,
}

impl Reduced {
    fn code(self) -> c_int {
        match self {
            Reduced::BFloat16 => 1,
            Reduced::Half => 2,
        }
    }

    /// The tensor kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            Reduced::BFloat16 => tch::Kind::BFloat16,
            Reduced::Half => tch::Kind::Half,
        }
    }
}

fn device_code(device: tch::Device) -> c_int {
    c_int::from(device != tch::Device::Cpu)
}

/// A mixed-precision region on this thread, libtorch's autocast (what `torch.autocast(device,
/// dtype)` opens in Python): while it lives, matrix products and convolutions on `device` cast
/// their inputs to the reduced kind and return it; every other operation keeps its inputs'
/// kind. The towers keep LayerNorm, softmax (attention runs in fp32, [`attention`]) and the
/// residual stream (fp32 + reduced promotes to fp32) in fp32. Dropping it restores the state
/// it found and clears autocast's cache of cast weights when no region is left open.
#[derive(Debug)]
pub struct Autocast {
    device: c_int,
    prev: c_int,
}

impl Autocast {
    /// Opens a region computing in `reduced` on `device` (`None`: autocast off inside it).
    pub fn enter(device: tch::Device, reduced: Option<Reduced>) -> Autocast {
        let device = device_code(device);
        // SAFETY: thread-local state changes with plain integer arguments.
        let prev = unsafe { typoclip_autocast_enter(device, reduced.map_or(0, Reduced::code)) };
        Autocast { device, prev }
    }

    /// Whether a region computing in reduced precision is open on this thread for `device`.
    pub fn is_open(device: tch::Device) -> bool {
        autocast_active(device)
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; `prev` is what `enter` returned on this thread.
        unsafe { typoclip_autocast_exit(self.device, self.prev) }
    }
}

/// Whether an [`Autocast`] region computing in reduced precision is open on this thread for
/// `device`.
pub(crate) fn autocast_active(device: tch::Device) -> bool {
    // SAFETY: a query with an integer argument.
    unsafe { typoclip_autocast_state(device_code(device)) != 0 }
}

/// Scaled dot-product attention (`q` `[B, H, Lq, Dh]`, `k`, `v` `[B, H, L, Dh]`), always with
/// its softmax in at least fp32 precision: inside an [`Autocast`] region the inputs are brought
/// to fp32 and the attention runs with autocast off (its output fp32; the projection after it
/// is back in the reduced kind).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn_mask: Option<&Tensor>,
    causal: bool,
) -> Tensor {
    if autocast_active(q.device()) {
        let _off = Autocast::enter(q.device(), None);
        let f = |t: &Tensor| t.to_kind(tch::Kind::Float);
        let mask = attn_mask.map(|m| {
            if m.is_floating_point() {
                f(m)
            } else {
                m.shallow_clone()
            }
        });
        return Tensor::scaled_dot_product_attention(
            &f(q),
            &f(k),
            &f(v),
            mask.as_ref(),
            0.0,
            causal,
            None,
            false,
        );
    }
    Tensor::scaled_dot_product_attention(q, k, v, attn_mask, 0.0, causal, None, false)
}

/// Makes glibc keep freed memory for reuse instead of unmapping every block over 32 MiB, so the
/// large activations of batched forward passes are not page-faulted and zeroed anew on every
/// call (worth ~1.5× for ResNets at batch 32 on the 2-core VMs). The same effect as running
/// Python with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`. Peak RSS is unchanged;
/// memory is returned to the kernel only at exit or above 1 GiB of free heap. The `typoclip`
/// binary, the benches and examples call it first thing; returns whether glibc accepted it.
pub fn retain_freed_memory() -> bool {
    // SAFETY: `mallopt` with constant arguments, before or between allocations.
    unsafe { typoclip_retain_freed_memory() != 0 }
}

/// Takes ownership of a tensor returned by the shim, or panics with its message.
///
/// SAFETY: `out` is null or a heap `at::Tensor*` the shim handed over; `err` is null or a
/// malloc'd NUL-terminated message owned by the caller.
unsafe fn take(out: *mut c_void, err: *mut c_char, what: &str) -> Tensor {
    if out.is_null() {
        let msg = super::jit::shim_message(err);
        // Shapes are fixed by the checkpoint, so this is a programming error, as a shape
        // mismatch in `Tensor::linear` would be.
        panic!("{what}: {}", msg.lines().next().unwrap_or(""));
    }
    Tensor::from_ptr(out as *mut torch_sys::C_tensor)
}

/// The kernel family used for fp32 CPU linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLinear {
    /// oneDNN's JIT sgemm (`mkldnn::_linear_pointwise`), the default where libtorch has it.
    OneDnn,
    /// `at::linear` (MKL sgemm), what Python open_clip runs.
    Aten,
}

impl CpuLinear {
    /// The name used in provenance and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CpuLinear::OneDnn => "onednn",
            CpuLinear::Aten => "aten",
        }
    }
}

const UNSET: u8 = 0;
const ONEDNN: u8 = 1;
const ATEN: u8 = 2;
static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    // SAFETY: a query with no arguments.
    *AVAILABLE.get_or_init(|| unsafe { typoclip_onednn_linear_available() } != 0)
}

/// Selects the kernel family for the rest of the process (falls back to `Aten` where this
/// libtorch has no oneDNN linear).
pub fn set_cpu_linear(choice: CpuLinear) {
    let v = match choice {
        CpuLinear::OneDnn if available() => ONEDNN,
        _ => ATEN,
    };
    CHOICE.store(v, Ordering::Relaxed);
}

/// The kernel family in use: `TYPOCLIP_CPU_LINEAR` (`onednn` / `aten`) or [`set_cpu_linear`],
/// else oneDNN where available.
pub fn cpu_linear() -> CpuLinear {
    match CHOICE.load(Ordering::Relaxed) {
        ONEDNN => CpuLinear::OneDnn,
        ATEN => CpuLinear::Aten,
        _ => {
            let wanted = match std::env::var("TYPOCLIP_CPU_LINEAR").as_deref() {
                Ok("aten") => CpuLinear::Aten,
                _ => CpuLinear::OneDnn,
            };
            set_cpu_linear(wanted);
            cpu_linear()
        }
    }
}

/// Whether autograd is recording on this thread (false inside `tch::no_grad_guard`).
pub(crate) fn grad_enabled() -> bool {
    // SAFETY: a query with no arguments.
    unsafe { typoclip_grad_enabled() != 0 }
}

/// Whether a forward pass on `x` is CPU fp32 inference with the oneDNN kernels selected and no
/// gradient recorded — where the towers take their inference-only paths (oneDNN linear,
/// channels-last, folded BatchNorm).
pub(crate) fn uses_onednn(x: &Tensor) -> bool {
    cpu_linear() == CpuLinear::OneDnn
        && !autocast_active(tch::Device::Cpu)
        && x.device() == tch::Device::Cpu
        && x.kind() == tch::Kind::Float
        && !x.requires_grad()
        && !grad_enabled()
}

/// Products of at least this many rows (tokens × batch) run on `at::linear` even where oneDNN is
/// selected: oneDNN's JIT sgemm is faster for short inputs, MKL's for long ones. Measured on the
/// 2-core AMD EPYC VM, 2 threads, fp32, `[M, 768] × [768, 3072]` (and `3072 → 768`,
/// `768 → 2304`): oneDNN 1.1–1.3× faster at M = 50, even at M ≈ 100, MKL 1.1× faster at
/// M = 200 and 1.2–1.3× at M = 1600 (ViT-B/16 at batch 8).
pub const ONEDNN_MAX_ROWS: i64 = 160;

fn call(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: Option<&Tensor>) -> Tensor {
    let rows = x.numel() as i64 / x.size().last().copied().unwrap_or(1).max(1);
    // Inside an autocast region `at::linear` (the dispatcher's autocast kernel) must run.
    let use_onednn =
        cpu_linear() == CpuLinear::OneDnn && rows < ONEDNN_MAX_ROWS && !autocast_active(x.device());
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null(), |t| t.as_ptr() as *const c_void);
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: the tensor pointers are live `at::Tensor*` owned by the borrowed tch tensors for
    // the whole call; the shim returns a new heap `at::Tensor*` that `from_ptr` takes ownership
    // of, or null with a malloc'd message that is freed once here.
    unsafe {
        let out = typoclip_linear(
            x.as_ptr() as *const c_void,
            weight.as_ptr() as *const c_void,
            ptr(bias),
            ptr(residual),
            c_int::from(use_onednn),
            &mut err,
        );
        take(out, err, "linear")
    }
}

/// `x` `[B, C, H, W]` in channels-last memory (NHWC strides; same shape and values). The
/// ResNet tower feeds its stem with it on the CPU in fp32, so every convolution after it runs
/// oneDNN's NHWC kernels without reordering activations (what `model.to(memory_format=
/// torch.channels_last)` does in PyTorch).
pub(crate) fn channels_last(x: &Tensor) -> Tensor {
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: as in `call`.
    unsafe {
        let out = typoclip_channels_last(x.as_ptr() as *const c_void, &mut err);
        take(out, err, "channels_last")
    }
}

/// `x @ weight.T + bias` over the last dimension.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    call(x, weight, bias, None)
}

/// `x @ weight.T + bias + residual`, the residual add fused into the kernel on the oneDNN path.
pub(crate) fn linear_add(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Tensor {
    call(x, weight, bias, Some(residual))
}

/// QuickGELU, `x · σ(1.702 x)`, in place in one pass (AVX2 + FMA, SLEEF's 1-ulp `expf`, on
/// libtorch's intra-op threads) where `x` is a contiguous CPU fp32 tensor with no gradient
/// recorded and the CPU has AVX2 and FMA. Returns false, leaving `x` as it was, where not.
pub(crate) fn quick_gelu_(x: &mut Tensor) -> bool {
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: `x` is a live `at::Tensor*` borrowed mutably for the call, which writes its data
    // in place and keeps its storage; `err` is null or a malloc'd message, freed once here.
    let done = unsafe { typoclip_quick_gelu_(x.as_mut_ptr() as *mut c_void, &mut err) };
    if done < 0 {
        let msg = unsafe { super::jit::shim_message(err) };
        panic!("quick_gelu: {}", msg.lines().next().unwrap_or(""));
    }
    done == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn onednn_linear_equals_aten() {
        assert!(
            available(),
            "this libtorch has no mkldnn::_linear_pointwise"
        );
        let _g = tch::no_grad_guard();
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        // 100 rows take oneDNN (where selected), 200 rows `at::linear`: both must agree.
        for batch in [2, 4] {
            let x = Tensor::randn([batch, 50, 96], opts);
            let w = Tensor::randn([160, 96], opts) * 0.1;
            let b = Tensor::randn([160], opts);
            let r = Tensor::randn([batch, 50, 160], opts);
            let want = x.linear(&w, Some(&b));
            assert!(max_diff(&call(&x, &w, Some(&b), None), &want) < 1e-5);
            assert!(max_diff(&call(&x, &w, None, None), &x.linear::<Tensor>(&w, None)) < 1e-5);
            assert!(max_diff(&call(&x, &w, Some(&b), Some(&r)), &(&want + &r)) < 1e-5);
            // A non-contiguous input (a transposed batch) gives the same rows.
            let xt = x.transpose(0, 1);
            assert!(max_diff(&call(&xt, &w, Some(&b), None), &want.transpose(0, 1)) < 1e-5);
            // A bias broadcast over a residual of a different but broadcastable shape.
            let r1 = Tensor::randn([160], opts);
            assert!(max_diff(&call(&x, &w, Some(&b), Some(&r1)), &(&want + &r1)) < 1e-5);
        }
    }

    fn quick_gelu_aten(x: &Tensor) -> Tensor {
        x * (x * 1.702).sigmoid()
    }

    #[test]
    fn one_pass_quick_gelu_equals_aten() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(5);
        // An odd length (tail past the last 8 lanes), large magnitudes both ways (exp overflow
        // and underflow), zeros, and the MLP's shape at batch 2.
        for x in [
            Tensor::randn([1003], (Kind::Float, Device::Cpu)) * 4.0,
            Tensor::from_slice(&[0.0f32, -0.0, 60.0, -60.0, 100.0, -100.0, 1e-30, -1e-30, 3.5]),
            Tensor::randn([2, 50, 3072], (Kind::Float, Device::Cpu)),
        ] {
            let want = quick_gelu_aten(&x);
            let mut got = x.copy();
            if !quick_gelu_(&mut got) {
                // No AVX2/FMA here: nothing to compare, and `x` must be untouched.
                #[cfg(target_arch = "x86_64")]
                assert!(
                    !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")),
                    "the one-pass kernel refused a CPU with AVX2 and FMA"
                );
                assert_eq!(max_diff(&got, &x), 0.0);
                continue;
            }
            let scale = want.abs().clamp_min(1e-30);
            let rel = ((&got - &want).abs() / scale).max().double_value(&[]);
            assert!(rel < 1e-6, "relative difference {rel}");
            assert!(got.isfinite().all().int64_value(&[]) == 1);
        }
        // Not eligible: a non-contiguous view or another dtype is left as it was.
        let mut t = Tensor::randn([4, 6], (Kind::Float, Device::Cpu)).transpose(0, 1);
        let before = t.copy();
        assert!(!quick_gelu_(&mut t));
        assert_eq!(max_diff(&t, &before), 0.0);
        let mut d = Tensor::randn([8], (Kind::Double, Device::Cpu));
        assert!(!quick_gelu_(&mut d));
    }

    #[test]
    fn channels_last_keeps_shape_and_values() {
        let x = Tensor::randn([2, 3, 5, 7], (Kind::Float, Device::Cpu));
        let y = channels_last(&x);
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), vec![105, 1, 21, 3]);
        assert_eq!(max_diff(&x, &y), 0.0);
    }

    #[test]
    fn gradients_fall_back_to_aten() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([3, 8], opts).set_requires_grad(true);
        let w = Tensor::randn([5, 8], opts);
        let y = linear(&x, &w, None);
        assert!(y.requires_grad(), "the result must stay differentiable");
        y.sum(Kind::Float).backward();
        let g = x.grad();
        let want = w
            .sum_dim_intlist(0, false, Kind::Float)
            .expand([3, 8], false);
        assert!(max_diff(&g, &want) < 1e-6);
    }

    #[test]
    fn autocast_regions_reduce_products_only_and_restore_the_state() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        let (x, w, b) = (
            Tensor::randn([4, 50, 64], opts),
            Tensor::randn([64, 64], opts),
            Tensor::randn([64], opts),
        );
        let residual = Tensor::randn([4, 50, 64], opts);
        assert!(!autocast_active(Device::Cpu));
        let want = linear_add(&x, &w, Some(&b), &residual);
        {
            let _a = Autocast::enter(Device::Cpu, Some(Reduced::BFloat16));
            assert!(autocast_active(Device::Cpu));
            // The product in bf16, from fp32 operands (oneDNN's fp32 path is bypassed).
            assert_eq!(linear(&x, &w, Some(&b)).kind(), Kind::BFloat16);
            // The residual sum promotes back to fp32, close to the fp32 result.
            let y = linear_add(&x, &w, Some(&b), &residual);
            assert_eq!(y.kind(), Kind::Float);
            let rel = max_diff(&y, &want) / want.abs().max().double_value(&[]);
            assert!(rel > 0.0 && rel < 2e-2, "bf16 product error {rel}");
            // Attention (and its softmax) in fp32, equal to the fp32 attention.
            let q = Tensor::randn([4, 2, 50, 32], opts);
            let a = attention(&q, &q, &q, None, false);
            assert_eq!(a.kind(), Kind::Float);
            assert!(
                autocast_active(Device::Cpu),
                "attention restores the region"
            );
            {
                let _off = Autocast::enter(Device::Cpu, None);
                assert!(!autocast_active(Device::Cpu));
                assert_eq!(linear(&x, &w, None).kind(), Kind::Float);
                let fp32 = attention(&q, &q, &q, None, false);
                assert!(max_diff(&a, &fp32) < 1e-6);
            }
            assert!(
                autocast_active(Device::Cpu),
                "a nested region restores the outer one"
            );
        }
        assert!(!autocast_active(Device::Cpu));
        assert_eq!(linear(&x, &w, None).kind(), Kind::Float);
    }
}
