// Registers the CPU kernels of the attnzoo ops (schemas: csrc/ops_schema.cpp).
#include <torch/library.h>

#include "cpu/ops_cpu.h"

TORCH_LIBRARY_IMPL(attnzoo, CPU, m) {
  m.impl("bilinear_fwd", &attnzoo::cpu::bilinear_fwd);
  m.impl("bilinear_bwd", &attnzoo::cpu::bilinear_bwd);
  m.impl("additive_fwd", &attnzoo::cpu::additive_fwd);
  m.impl("additive_bwd", &attnzoo::cpu::additive_bwd);
}
