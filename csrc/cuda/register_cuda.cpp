// Registers the CUDA kernels of the attnzoo ops (schemas: csrc/ops_schema.cpp).
#include <torch/library.h>

#include "cuda/ops_cuda.h"

TORCH_LIBRARY_IMPL(attnzoo, CUDA, m) { ATTNZOO_OP_REGISTRATIONS(m, attnzoo::cuda); }
