// typoclip: oneDNN's fused linear (`mkldnn::_linear_pointwise`) for CPU fp32 inference.
//
// libtorch's `at::linear` runs fp32 CPU matrix products through MKL's sgemm. On AMD CPUs (what
// these VMs are) oneDNN's JIT sgemm is markedly faster at CLIP's shapes, and PyTorch ships it as
// the `mkldnn::_linear_pointwise` operator (what TorchInductor's CPU backend calls). It is not
// part of tch's generated API, so it is reached here through the dispatcher.
#include <torch/torch.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <malloc.h>
#include <optional>
#include <string>

#include "shim_common.h"

namespace {

const c10::OperatorHandle *linear_pointwise() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op ? &*op : nullptr;
}

const c10::OperatorHandle *linear_pointwise_binary() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", "binary"});
  return op ? &*op : nullptr;
}

bool eligible(const at::Tensor &x, const at::Tensor &w, const at::Tensor *b) {
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat) {
    return false;
  }
  if (!w.device().is_cpu() || (b && (!b->device().is_cpu() || b->scalar_type() != at::kFloat))) {
    return false;
  }
  // The oneDNN operator has no autograd formula: only when no gradient is being recorded.
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || w.requires_grad() || (b && b->requires_grad()))) {
    return false;
  }
  return x.dim() >= 2 && x.size(-1) == w.size(1);
}

}  // namespace

extern "C" {

// 1 when this libtorch has the oneDNN linear operators.
int typoclip_onednn_linear_available() {
  return linear_pointwise() != nullptr && linear_pointwise_binary() != nullptr;
}

// `x @ w.T + b` (+ `residual` when given, fused into the same kernel), through oneDNN when
// `use_onednn` is set and the call is eligible (CPU, fp32, no gradient recorded), else through
// `at::linear`. Returns a heap-allocated `at::Tensor*` owned by the caller, or null with *err set
// to a malloc'd message.
void *typoclip_linear(const at::Tensor *x, const at::Tensor *w, const at::Tensor *b,
                      const at::Tensor *residual, int use_onednn, char **err) {
  try {
    at::Tensor out;
    if (use_onednn && typoclip_onednn_linear_available() && eligible(*x, *w, b) &&
        (!residual || (residual->device().is_cpu() && residual->scalar_type() == at::kFloat))) {
      torch::jit::Stack stack;
      stack.emplace_back(*x);
      if (residual) {
        at::Tensor other = residual->expand(
            [&] {
              auto sizes = x->sizes().vec();
              sizes.back() = w->size(0);
              return sizes;
            }()).contiguous();
        stack.emplace_back(other);
        stack.emplace_back(*w);
        stack.emplace_back(b ? c10::IValue(*b) : c10::IValue());
        stack.emplace_back(std::string("add"));
        linear_pointwise_binary()->callBoxed(&stack);
      } else {
        stack.emplace_back(*w);
        stack.emplace_back(b ? c10::IValue(*b) : c10::IValue());
        stack.emplace_back(std::string("none"));
        stack.emplace_back(c10::List<std::optional<at::Scalar>>());
        stack.emplace_back(c10::IValue());
        linear_pointwise()->callBoxed(&stack);
      }
      out = stack.at(0).toTensor();
    } else {
      out = b ? at::linear(*x, *w, *b) : at::linear(*x, *w);
      if (residual) {
        // The product is a fresh tensor: add in place where no broadcast is needed.
        // (Under autocast the product may be bf16 / fp16 and the residual fp32: the sum then
        // promotes to fp32, so the residual stream keeps its precision.)
        if (residual->sizes() == out.sizes() && residual->scalar_type() == out.scalar_type()) {
          out.add_(*residual);
        } else {
          out = out + *residual;
        }
      }
    }
    return new at::Tensor(std::move(out));
  } catch (const std::exception &e) {
    if (err) *err = typoclip::dup_str(e.what());
    return nullptr;
  }
}

// `x` copied (where needed) into channels-last memory format (NHWC strides, same logical NCHW
// shape): oneDNN's convolutions run natively on it instead of reordering every activation.
void *typoclip_channels_last(const at::Tensor *x, char **err) {
  try {
    return new at::Tensor(x->contiguous(at::MemoryFormat::ChannelsLast));
  } catch (const std::exception &e) {
    if (err) *err = typoclip::dup_str(e.what());
    return nullptr;
  }
}

void typoclip_quick_gelu_avx2(float *p, int64_t n);  // quick_gelu_avx2.c

// QuickGELU, `x * sigmoid(1.702 x)`, in place on a contiguous CPU fp32 tensor, in one pass on
// libtorch's intra-op threads (ATen's ops take three: scale, sigmoid, multiply). Returns 1 when
// done, 0 when not eligible (no AVX2/FMA, another dtype or device, not contiguous, or autograd
// recording): the caller then uses ATen's ops. -1 with *err set on an error.
int typoclip_quick_gelu_(at::Tensor *x, char **err) {
  try {
    static const bool cpu_ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!cpu_ok || !x->device().is_cpu() || x->scalar_type() != at::kFloat ||
        !x->is_contiguous() || (at::GradMode::is_enabled() && x->requires_grad())) {
      return 0;
    }
    float *p = x->data_ptr<float>();
    at::parallel_for(0, x->numel(), 1 << 14, [p](int64_t begin, int64_t end) {
      typoclip_quick_gelu_avx2(p + begin, end - begin);
    });
    return 1;
  } catch (const std::exception &e) {
    if (err) *err = typoclip::dup_str(e.what());
    return -1;
  }
}

// This thread's autocast state for `device` (0: CPU, 1: CUDA) as a code: 0 off, 1 bfloat16,
// 2 float16.
int typoclip_autocast_state(int device) {
  const auto dev = device == 1 ? at::kCUDA : at::kCPU;
  if (!at::autocast::is_autocast_enabled(dev)) return 0;
  return at::autocast::get_autocast_dtype(dev) == at::kHalf ? 2 : 1;
}

static void set_autocast_code(at::DeviceType dev, int code) {
  if (code != 0) at::autocast::set_autocast_dtype(dev, code == 2 ? at::kHalf : at::kBFloat16);
  at::autocast::set_autocast_enabled(dev, code != 0);
}

// Opens an autocast region on this thread: `device` (as above) computes in `code`'s dtype
// (0 turns autocast off inside the region). Returns the state to restore on leaving.
int typoclip_autocast_enter(int device, int code) {
  const auto dev = device == 1 ? at::kCUDA : at::kCPU;
  const int prev = typoclip_autocast_state(device);
  set_autocast_code(dev, code);
  at::autocast::increment_nesting();
  return prev;
}

// Leaves the region opened by `typoclip_autocast_enter` (which returned `prev`): restores the
// state and, when no region is left open on this thread, clears autocast's cache of cast
// weights, as `torch.autocast.__exit__` does.
void typoclip_autocast_exit(int device, int prev) {
  const auto dev = device == 1 ? at::kCUDA : at::kCPU;
  set_autocast_code(dev, prev);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

// Whether autograd records operations on this thread (`torch.is_grad_enabled()`).
int typoclip_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

// glibc serves every allocation over 32 MiB with a fresh mmap and returns it to the kernel on
// free, so each large activation of a batched forward pass is page-faulted and zeroed anew (at
// batch 32 the ResNet towers spend a third of their time there). Keeping freed memory in the
// heap lets the next forward pass reuse it. Returns 1 when glibc took both settings.
int typoclip_retain_freed_memory() {
  int ok = mallopt(M_MMAP_MAX, 0);
  ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return ok ? 1 : 0;
}

}  // extern "C"
