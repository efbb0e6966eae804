// Registers the CPU kernels of the attnzoo ops (schemas: csrc/ops_schema.cpp).
#include <torch/library.h>

#include "cpu/ops_cpu.h"

TORCH_LIBRARY_IMPL(attnzoo, CPU, m) { ATTNZOO_OP_REGISTRATIONS(m, attnzoo::cpu); }
