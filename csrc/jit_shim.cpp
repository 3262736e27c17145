// typoclip: read every parameter *and buffer* of a TorchScript archive without running its graph.
//
// tch's CModule exposes `named_parameters()` only, which misses the BatchNorm running statistics of
// the ResNet towers. OpenAI's official `.pt` files also embed CUDA device constants in their graphs,
// so we load on CPU and only walk the module's tensors.
#include <torch/script.h>
#include <string>

#include "shim_common.h"

extern "C" {

typedef void (*typoclip_tensor_cb)(void *ctx, const char *name, void *tensor);

// Returns 0 on success; on failure returns 1 and sets *err to a malloc'd message.
// Each tensor is handed to `cb` as a heap-allocated `torch::Tensor*` that the callee owns.
int typoclip_jit_named_tensors(const char *path, typoclip_tensor_cb cb, void *ctx, char **err) {
  try {
    torch::jit::Module module = torch::jit::load(std::string(path), torch::kCPU);
    for (const auto &p : module.named_parameters(/*recurse=*/true)) {
      cb(ctx, p.name.c_str(), new torch::Tensor(p.value.detach()));
    }
    for (const auto &b : module.named_buffers(/*recurse=*/true)) {
      cb(ctx, b.name.c_str(), new torch::Tensor(b.value.detach()));
    }
    return 0;
  } catch (const std::exception &e) {
    if (err) *err = typoclip::dup_str(e.what());
    return 1;
  }
}

void typoclip_free_str(char *s) { free(s); }

}  // extern "C"
