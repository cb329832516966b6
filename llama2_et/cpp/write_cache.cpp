// llama2_et::write_cache.out: cache.index_copy_(dim, positions, source), in place, a block per row and run.
//
// The kernel of the op that llama2_et/kernels.py defines (its eager reference is there). Viewed as
// (outer, positions, inner) around `dim`, source row (o, l) goes to cache row (o, positions[l]); where
// positions run consecutively, as a prefill's do, a run's rows within one outer row o are one
// contiguous block on both sides, copied with one memcpy. The portable index_put_ that index_copy_ exports to computes
// each element's index instead. Float caches, as filled_attention.cpp's, with which it is compiled into the
// runner and the library.
#include <algorithm>
#include <cstring>

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::KernelRuntimeContext;

constexpr int64_t kPrefetchRows = 16;  // a decode write's destinations, each its own cache line: fetched ahead

// source (outer, L, inner) -> cache (outer, Lm, inner) at positions (L,), sizes taken around `dim`.
// `out` is the op's unused result.
Tensor& write_cache_out(KernelRuntimeContext& ctx, const Tensor& source, Tensor& cache, const Tensor& positions,
                        int64_t dim, Tensor& out) {
  ET_KERNEL_CHECK(ctx, source.dim() == cache.dim() && dim >= 0 && dim < cache.dim() && positions.dim() == 1,
                  InvalidArgument, out);
  ET_KERNEL_CHECK(ctx, source.scalar_type() == ScalarType::Float && cache.scalar_type() == ScalarType::Float &&
                  positions.scalar_type() == ScalarType::Long, InvalidArgument, out);
  ET_KERNEL_CHECK(ctx, executorch::runtime::tensors_have_same_dim_order(source, cache) &&
                  executorch::runtime::tensor_is_default_dim_order(cache), InvalidArgument, out);
  const int64_t n_tokens = positions.size(0), lm = cache.size(dim);
  ET_KERNEL_CHECK(ctx, source.size(dim) == n_tokens, InvalidArgument, out);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < cache.dim(); ++d) {
    ET_KERNEL_CHECK(ctx, d == dim || source.size(d) == cache.size(d), InvalidArgument, out);
    if (d < dim) outer *= cache.size(d);
    if (d > dim) inner *= cache.size(d);
  }
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < n_tokens; ++t) {
    ET_KERNEL_CHECK(ctx, pos[t] >= 0 && pos[t] < lm, InvalidArgument, out);
  }
  const float* src = source.const_data_ptr<float>();
  float* dst = cache.mutable_data_ptr<float>();
  // one thread: waking the pool cost more than the copy (a 480-token stories110M-shape write, 2 threads)
  for (int64_t t = 0; t < n_tokens;) {
    int64_t run = 1;  // positions t, t + 1, ... consecutive: one block in every outer row
    while (t + run < n_tokens && pos[t + run] == pos[t] + run) ++run;
    const int64_t floats = run * inner;
    for (int64_t o = 0; o < outer; ++o) {
      float* to = dst + (o * lm + pos[t]) * inner;
      const float* from = src + (o * n_tokens + t) * inner;
      if (floats < 16) {
        if (o + kPrefetchRows < outer) __builtin_prefetch(to + kPrefetchRows * lm * inner, 1);
        std::copy_n(from, floats, to);  // a decode step's few floats: no call
      } else {
        std::memcpy(to, from, floats * sizeof(float));
      }
    }
    t += run;
  }
  return out;
}

}  // namespace

EXECUTORCH_LIBRARY(llama2_et, "write_cache.out", write_cache_out);
