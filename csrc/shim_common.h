// typoclip: what the C++ shims share.
#pragma once
#include <cstdlib>
#include <cstring>
#include <string>

namespace typoclip {

// A malloc'd copy of `s`, handed to Rust, which frees it with `typoclip_free_str`.
inline char *dup_str(const std::string &s) {
  char *out = static_cast<char *>(malloc(s.size() + 1));
  if (out) memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

}  // namespace typoclip
