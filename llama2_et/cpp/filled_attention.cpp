// llama2_et::filled_attention.out: attention that reads only the filled positions of a static KV cache.
//
// The kernel of the op that llama2_et/kernels.py defines for torch.export (its eager reference is
// there). A decode step at position p reads keys and values 0..p of the cache and nothing beyond
// (a prefill block of query rows, up to its furthest row's position, keys to the end of that tile),
// in the cache's own layout (kv_cache.py, MatmulKVCache), so decode's attention grows with the
// filled prefix instead of costing the whole context. Compiled into the C++ runner and into the shared
// library libllama2_et_kernels.so that Python loads before running a program that calls the op.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::KernelRuntimeContext;

constexpr int64_t kBlockRows = 8;  // query rows per block: each cache row read serves all of them

// AVX-512's 32 registers (a tile's 16 sums stay in registers) or AVX2 with FMA where the CPU has them
// (GCC picks the clone when the library loads), else the baseline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLAMA2_ET_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LLAMA2_ET_VECTOR_CLONES
#endif

// 8 floats, one AVX register (two SSE or NEON registers): GCC's and Clang's vector extension.
using Vec = float __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

template <typename V = Vec>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
inline void store(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// out[i][c] = sum over k < depth of a[i][k] * b[k][c], for Rows rows i and the columns c of whole
// tiles (Vectors vectors V wide) below `columns`; returns how many columns that is. Row i of a is at
// a + i * a_stride, row i of out at out + i * out_stride; b[k][c0 ..] of the tile starting at column
// c0 is at b + c0 * column_step + k * b_stride: column_step 1 for a row-major b, Dh for keys packed
// tile by tile (pack_keys). A tile's Rows x Vectors vectors of sums stay in registers (a prefill
// block's 16 in AVX-512's 32; with AVX2's 16, some may spill), so each element read from b serves
// every row. Both halves of attention are this product: scores = q K (depth Dh, a column per cache
// position) and out = p V (depth the filled positions, a column per head dimension).
template <typename V, int64_t Rows, int64_t Vectors>
__attribute__((always_inline)) inline int64_t tile_matmul(const float* a, int64_t a_stride, const float* b,
                                                          int64_t b_stride, int64_t column_step, int64_t depth,
                                                          int64_t columns, float* out, int64_t out_stride) {
  constexpr int64_t lanes = sizeof(V) / sizeof(float), tile = Vectors * lanes;
  int64_t c0 = 0;
  for (; c0 + tile <= columns; c0 += tile) {
    V acc[Rows][Vectors] = {};
    const float* bt = b + c0 * column_step;
    for (int64_t k = 0; k < depth; ++k) {
      V bk[Vectors];
      for (int64_t v = 0; v < Vectors; ++v) bk[v] = load<V>(bt + k * b_stride + v * lanes);
      for (int64_t i = 0; i < Rows; ++i) {
        const float ai = a[i * a_stride + k];
        for (int64_t v = 0; v < Vectors; ++v) acc[i][v] += ai * bk[v];
      }
    }
    for (int64_t i = 0; i < Rows; ++i) {
      for (int64_t v = 0; v < Vectors; ++v) store(out + i * out_stride + c0 + v * lanes, acc[i][v]);
    }
  }
  return c0;
}

// The whole tiles of a product with `rows` rows: a prefill block's kBlockRows, in tiles of 2 vectors;
// or one row (a decode step's query, then its weights), in tiles of 4 vectors and then of 1, so
// that a tile of out = p V is a whole head of 64 dimensions with AVX-512 (48: three tiles).
template <typename V>
__attribute__((always_inline)) inline int64_t tiles(int64_t rows, const float* a, int64_t a_stride, const float* b,
                                                    int64_t b_stride, int64_t column_step, int64_t depth,
                                                    int64_t columns, float* out, int64_t out_stride) {
  if (rows == kBlockRows) {
    return tile_matmul<V, kBlockRows, 2>(a, a_stride, b, b_stride, column_step, depth, columns, out, out_stride);
  }
  const int64_t c0 = tile_matmul<V, 1, 4>(a, a_stride, b, b_stride, column_step, depth, columns, out, out_stride);
  return c0 + tile_matmul<V, 1, 1>(a, a_stride, b + c0 * column_step, b_stride, column_step, depth, columns - c0,
                                   out + c0, out_stride);
}

// Tiles of 8-float vectors: AVX2 with FMA where the CPU has it (GCC picks the clone when the library
// loads), else the baseline.
LLAMA2_ET_VECTOR_CLONES
int64_t narrow_tiles(int64_t rows, const float* a, int64_t a_stride, const float* b, int64_t b_stride,
                     int64_t column_step, int64_t depth, int64_t columns, float* out, int64_t out_stride) {
  return tiles<Vec>(rows, a, a_stride, b, b_stride, column_step, depth, columns, out, out_stride);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
using WideVec = float __attribute__((vector_size(64)));
// Tiles of 16-float vectors where the CPU has AVX-512: its 32 registers hold a block's 8 x 32 sums.
const bool kWide = [] {
  __builtin_cpu_init();  // a static initializer may run before the CPU model is read
  return __builtin_cpu_supports("x86-64-v4") > 0;
}();

__attribute__((target("arch=x86-64-v4"))) int64_t wide_tiles(int64_t rows, const float* a, int64_t a_stride,
                                                             const float* b, int64_t b_stride, int64_t column_step,
                                                             int64_t depth, int64_t columns, float* out,
                                                             int64_t out_stride) {
  return tiles<WideVec>(rows, a, a_stride, b, b_stride, column_step, depth, columns, out, out_stride);
}
#else
const bool kWide = false;

int64_t wide_tiles(int64_t, const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, float*,
                   int64_t) {
  return 0;
}
#endif

// Columns of a prefill block's tile on this CPU: keys are packed in tiles this wide.
const int64_t kTile = kWide ? 4 * kLanes : 2 * kLanes;

inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// block_matmul: wide tiles where the CPU has them, then narrow tiles, then the last columns one by one
// (a row-major b only: packed keys are padded to whole tiles).
void block_matmul(int64_t rows, const float* a, int64_t a_stride, const float* b, int64_t b_stride,
                  int64_t column_step, int64_t depth, int64_t columns, float* out, int64_t out_stride) {
  int64_t c0 = kWide ? wide_tiles(rows, a, a_stride, b, b_stride, column_step, depth, columns, out, out_stride) : 0;
  c0 += narrow_tiles(rows, a, a_stride, b + c0 * column_step, b_stride, column_step, depth, columns - c0, out + c0,
                     out_stride);
  for (int64_t i = 0; i < rows; ++i) {  // the last columns, fewer than a tile
    for (int64_t c = c0; c < columns; ++c) {
      float sum = 0.0f;
      for (int64_t k = 0; k < depth; ++k) sum += a[i * a_stride + k] * b[k * b_stride + c];
      out[i * out_stride + c] = sum;
    }
  }
}

// Keys (Dh, Lm) of one head -> tiles of kTile cache positions, columns `from` up to `to` (multiples
// of kTile): the tile at column c0 is (Dh, kTile) at packed + c0 * Dh, zero past the cache's end. In
// the cache, the 16 or 32 positions a tile needs from each of the Dh rows are Lm floats apart; packed,
// a tile is one contiguous read.
void pack_keys(const float* keys, int64_t dh, int64_t lm, int64_t from, int64_t to, float* packed) {
  for (int64_t c0 = from; c0 < to; c0 += kTile) {
    float* tile = packed + c0 * dh;
    const int64_t width = std::min(kTile, lm - c0);
    for (int64_t d = 0; d < dh; ++d) {
      std::memcpy(tile + d * kTile, keys + d * lm + c0, width * sizeof(float));
      std::fill(tile + d * kTile + width, tile + (d + 1) * kTile, 0.0f);
    }
  }
}

// exp(x) for x <= 0, 8 lanes at once: 2^n * e^r with n = round(x / ln 2) and |r| <= ln 2 / 2, e^r a
// degree-7 polynomial (Cephes' expf coefficients), 2^n written straight into the float's exponent
// bits. Relative error about 1e-7; x below -87 (e^x < 2e-38) is computed as e^-87.
inline Vec exp_nonpositive(Vec x) {
  using Int = int32_t __attribute__((vector_size(32)));
  x = x < -87.0f ? Vec{} - 87.0f : x;
  const Vec round_bias = Vec{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const Vec n = (x * 1.44269504f + round_bias) - round_bias;
  const Vec r = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln 2 in two parts, exact n * high part
  Vec p = Vec{} + 1.9875691500e-4f;
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = p * r + c;
  p = p * r * r + r + 1.0f;
  const Int bits = (__builtin_convertvector(n, Int) + 127) << 23;
  Vec two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// s[0..filled) = softmax of s[0..row_filled), then 0 up to filled (past the row's position: weight 0
// in its block's sum).
LLAMA2_ET_VECTOR_CLONES
void softmax_prefix(float* s, int64_t row_filled, int64_t filled) {
  float top = s[0];  // the row's max: lane by lane over whole vectors, then across lanes and the rest
  int64_t j = 0;
  if (row_filled >= kLanes) {
    Vec tops = load(s);
    for (j = kLanes; j + kLanes <= row_filled; j += kLanes) {
      const Vec x = load(s + j);
      tops = tops > x ? tops : x;
    }
    for (int64_t l = 0; l < kLanes; ++l) top = std::max(top, tops[l]);
  }
  for (; j < row_filled; ++j) top = std::max(top, s[j]);
  Vec sums = {};
  for (j = 0; j + kLanes <= row_filled; j += kLanes) {
    const Vec e = exp_nonpositive(load(s + j) - top);
    store(s + j, e);
    sums += e;
  }
  float total = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) total += sums[l];
  for (; j < row_filled; ++j) total += (s[j] = std::exp(s[j] - top));
  const float scale = 1.0f / total;
  for (j = 0; j < row_filled; ++j) s[j] *= scale;
  std::fill(s + row_filled, s + filled, 0.0f);
}

// Rows of one query head (q: n rows of Dh), row i at position pos[i], `filled` the widest prefix
// max pos[i] + 1: out[i] = softmax(q[i] K[:, :pos[i]+1]) V[:pos[i]+1]. keys (Dh, Lm) and values
// (Lm, Dh) of its key/value head, and for a full block its keys packed (pack_keys) as far as the
// block reads; scores holds n rows, scores_stride apart. A full block (prefill) goes through the
// register tiles 8 rows at a time; a shorter one (every decode step: one row) row by row, each row
// reading keys and values 0..pos[i].
void attend_block(const float* q, const float* keys, const float* packed, const float* values, const int64_t* pos,
                  int64_t n, int64_t filled, int64_t dh, int64_t lm, float* scores, int64_t scores_stride,
                  float* out) {
  if (n < kBlockRows) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t row_filled = pos[i] + 1;  // W: the positions row i reads
      float* s = scores + i * scores_stride;
      block_matmul(1, q + i * dh, dh, keys, lm, 1, dh, row_filled, s, scores_stride);  // (1, Dh) x (Dh, W)
      softmax_prefix(s, row_filled, row_filled);
      block_matmul(1, s, scores_stride, values, dh, 1, row_filled, dh, out + i * dh, dh);  // (1, W) x (W, Dh)
    }
    return;
  }
  // (n, Dh) x (Dh, filled rounded up to a whole tile): the scores past filled are never used
  block_matmul(n, q, dh, packed, kTile, dh, dh, round_up(filled, kTile), scores, scores_stride);
  for (int64_t i = 0; i < n; ++i) softmax_prefix(scores + i * scores_stride, pos[i] + 1, filled);
  block_matmul(n, scores, scores_stride, values, dh, 1, filled, dh, out, dh);  // (n, filled) x (filled, Dh)
}

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
  // blocks of up to kBlockRows rows of one query head (rows r..: tokens r % L.. of one head)
  const int64_t blocks_per_head = (n_tokens + kBlockRows - 1) / kBlockRows;
  const int64_t heads = nkv * (rows / n_tokens);
  const int64_t scores_stride = round_up(lm, kTile);  // a full block's scores run to a whole tile
  executorch::extension::parallel_for(0, heads * blocks_per_head, 1, [&](int64_t begin, int64_t end) {
    // per thread, kept between calls: kBlockRows rows of scores, and one key/value head's keys packed
    thread_local std::vector<float> scores, packed;
    scores.resize(kBlockRows * scores_stride);
    packed.resize(dh * scores_stride);
    int64_t packed_group = -1, packed_columns = 0;  // what `packed` holds in this call
    for (int64_t b = begin; b < end; ++b) {
      const int64_t head = b / blocks_per_head, token = (b % blocks_per_head) * kBlockRows;
      const int64_t group = head / (rows / n_tokens);
      const int64_t n = std::min(kBlockRows, n_tokens - token);
      const int64_t row = head * n_tokens + token;  // (Nkv * R) rows, flat: group * R + (i * L + token)
      // the block's widest prefix: its rows' scores are computed that far
      const int64_t filled = *std::max_element(pos + token, pos + token + n) + 1;
      if (n == kBlockRows) {  // a full block reads packed keys up to its widest position
        if (group != packed_group) packed_group = group, packed_columns = 0;
        const int64_t needed = round_up(filled, kTile);
        if (needed > packed_columns) {
          pack_keys(kd + group * dh * lm, dh, lm, packed_columns, needed, packed.data());
          packed_columns = needed;
        }
      }
      attend_block(qd + row * dh, kd + group * dh * lm, packed.data(), vd + group * lm * dh, pos + token, n,
                   filled, dh, lm, scores.data(), scores_stride, od + row * dh);
    }
  });
  return out;
}

}  // namespace

EXECUTORCH_LIBRARY(llama2_et, "filled_attention.out", filled_attention_out);
