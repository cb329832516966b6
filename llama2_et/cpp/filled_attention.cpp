// llama2_et::filled_attention.out: attention that reads only the filled positions of a static KV cache.
//
// The kernel of the op that llama2_et/kernels.py defines for torch.export (its eager reference is
// there). A step at positions p reads keys and values 0..p of the cache and nothing beyond, in the
// cache's own layout (transforms.py, MatmulKVCache), so decode's attention grows with the filled
// prefix instead of costing the whole context. Compiled into the C++ runner and into the shared
// library libllama2_et_kernels.so that Python loads before running a program that calls the op.
#include <algorithm>
#include <cmath>
#include <vector>

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::KernelRuntimeContext;

// q (Nkv, R, Dh) already scaled, R = rep * L with row r for token r % L; keys (Nkv, Dh, Lm);
// values (Nkv, Lm, Dh); positions (L,). Row r attends to cache positions 0..positions[r % L].
Tensor& filled_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& keys,
                             const Tensor& values, const Tensor& positions, Tensor& out) {
  ET_KERNEL_CHECK(ctx, q.dim() == 3 && keys.dim() == 3 && values.dim() == 3 && positions.dim() == 1,
                  InvalidArgument, out);
  ET_KERNEL_CHECK(ctx, q.scalar_type() == ScalarType::Float && keys.scalar_type() == ScalarType::Float &&
                  values.scalar_type() == ScalarType::Float && positions.scalar_type() == ScalarType::Long,
                  InvalidArgument, out);
  const int64_t nkv = q.size(0), rows = q.size(1), dh = q.size(2), lm = keys.size(2);
  const int64_t n_tokens = positions.size(0);
  ET_KERNEL_CHECK(ctx, keys.size(0) == nkv && keys.size(1) == dh && values.size(0) == nkv &&
                  values.size(1) == lm && values.size(2) == dh && n_tokens > 0 && rows % n_tokens == 0,
                  InvalidArgument, out);
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < n_tokens; ++t) {
    ET_KERNEL_CHECK(ctx, pos[t] >= 0 && pos[t] < lm, InvalidArgument, out);
  }
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == executorch::runtime::Error::Ok,
                  InvalidArgument, out);
  const float* qd = q.const_data_ptr<float>();
  const float* kd = keys.const_data_ptr<float>();
  const float* vd = values.const_data_ptr<float>();
  float* od = out.mutable_data_ptr<float>();
  executorch::extension::parallel_for(0, nkv * rows, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;  // one row of probabilities per thread, kept between calls
    scores.resize(lm);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t group = i / rows, filled = pos[(i % rows) % n_tokens] + 1;
      const float* qi = qd + i * dh;
      const float* k = kd + group * dh * lm;
      const float* v = vd + group * lm * dh;
      float* s = scores.data();
      std::fill(s, s + filled, 0.0f);
      for (int64_t d = 0; d < dh; ++d) {  // s += q[d] * K[d, :filled], a row of the cache at a time
        const float qv = qi[d];
        const float* krow = k + d * lm;
        for (int64_t j = 0; j < filled; ++j) s[j] += qv * krow[j];
      }
      const float top = *std::max_element(s, s + filled);
      float total = 0.0f;
      for (int64_t j = 0; j < filled; ++j) total += (s[j] = std::exp(s[j] - top));
      float* o = od + i * dh;
      std::fill(o, o + dh, 0.0f);
      for (int64_t j = 0; j < filled; ++j) {  // o += p[j] * V[j, :]
        const float p = s[j] / total;
        const float* vrow = v + j * dh;
        for (int64_t d = 0; d < dh; ++d) o[d] += p * vrow[d];
      }
    }
  });
  return out;
}

}  // namespace

EXECUTORCH_LIBRARY(llama2_et, "filled_attention.out", filled_attention_out);
