// Run-time switches of CPU kernel paths, for side-by-side comparisons: each is read once from the
// environment, and a value starting with '0' turns its path off (ATTNZOO_ADDITIVE_EXP=0, ATTNZOO_ROW_FORWARD=0).
#pragma once
#include <cstdlib>

namespace attnzoo::cpu {

// Whether the environment leaves the path switched on by `name` on (unset, or not starting with '0').
inline bool switch_on(const char* name) {
  const char* e = std::getenv(name);
  return !(e && e[0] == '0');
}

// The float tanh forward's exp form (elementwise_impl.h).
inline bool additive_exp_form_enabled() {
  static const bool on = switch_on("ATTNZOO_ADDITIVE_EXP");
  return on;
}

// The row path of decoder steps (row_forward.h).
inline bool row_forward_enabled() {
  static const bool on = switch_on("ATTNZOO_ROW_FORWARD");
  return on;
}

}  // namespace attnzoo::cpu
