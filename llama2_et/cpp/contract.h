// The contract between an exported program (.pte) and this runner: the C++ mirror of
// llama2_et/contract.py (tests/test_cpp_runner.py checks that the two agree), kept in one header
// as ExecuTorch keeps its runner's metadata names in extension/llm/runner/constants.h.
#pragma once

#include <cstddef>
#include <cstdint>

namespace contract {

constexpr int64_t kBosId = 1;
constexpr int64_t kEosId = 2;
// A story ends at EOS, or at BOS (llama2.c's run.c stops there): the stop ids of a .pte that
// declares none.
constexpr int64_t kStopIds[] = {kBosId, kEosId};

// Metadata methods: what TextLLMRunner reads ...
constexpr const char* kMaxSeqLen = "get_max_seq_len";
constexpr const char* kMaxContextLen = "get_max_context_len";
constexpr const char* kVocabSize = "get_vocab_size";
constexpr const char* kBos = "get_bos_id";
constexpr const char* kEosIds = "get_eos_ids";
constexpr const char* kNLayers = "get_n_layers";
constexpr const char* kUseKvCache = "use_kv_cache";
constexpr const char* kUseSdpaWithKvCache = "use_sdpa_with_kv_cache";
constexpr const char* kEnableDynamicShape = "enable_dynamic_shape";
// ... and what the preproc design's runtimes rebuild their RoPE tables and mask from.
constexpr const char* kDim = "get_dim";
constexpr const char* kNHeads = "get_n_heads";
constexpr const char* kNKvHeads = "get_n_kv_heads";
constexpr const char* kHeadDim = "get_head_dim";
constexpr const char* kRopeTheta = "get_rope_theta";

// The inputs of forward, in order, told apart by their count; the output is float32 logits (1, V).
// positions (the "narrow" and "gather" designs): tokens (1, L), input_pos (1,).
constexpr const char* kPositionsNames[] = {"tokens", "input_pos"};
constexpr const char* kPositionsDtypes[] = {"int64", "int64"};
// preproc: tokens (1, L), cos (L, Dh/2), sin (L, Dh/2), mask (L, W), input_pos (L,), with
// pos + L <= W <= Lm: attention reads the first W cache positions, so W = pos + L skips the empty ones.
constexpr const char* kPreprocNames[] = {"tokens", "cos", "sin", "mask", "input_pos"};
constexpr const char* kPreprocDtypes[] = {"int64", "float32", "float32", "float32", "int64"};

}  // namespace contract
