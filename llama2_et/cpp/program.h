// A llama2-et .pte as a model: tells its input signature from forward's and runs forward from positions.
#pragma once

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/core/span.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

// The two input signatures of contract.h, all the runner tells the three designs apart by:
// kPositions (narrow, gather: contract::kPositionsInputsNames) takes the start position (1,), and
// the program slices its RoPE tables and mask; kTables (preproc: contract::kPreprocInputsNames)
// takes the sliced tables and mask, and the positions (L,).
enum class Inputs { kPositions, kTables };

// Sizes ExecuTorch's thread pool, which XNNPACK computes on, to `threads` (0 keeps the size ExecuTorch
// picks for this machine) and returns its size. Call it before constructing a Program:
// XNNPACK takes the pool when it loads a program. Throws std::runtime_error when it cannot.
size_t size_thread_pool(long long threads);

class Program {
 public:
  // Verifies the .pte's content hash (integrity.h), then loads it, its forward method and its
  // buckets (forward_<W>, which share forward's KV cache: the module shares its memory arenas); throws
  // std::runtime_error naming the file when it is missing, damaged, corrupt, or its forward
  // matches neither signature (or, with kTables, disagrees with its metadata).
  explicit Program(const std::string& path);

  // Logits (V,) of the last of `tokens`, placed at positions start_pos.., written to the KV cache,
  // through the narrowest method whose width covers them (a bucket, or forward).
  // A view of the program's output, valid until the next forward: nothing is copied or allocated
  // per call (the inputs are written into tensors made once, resized when L changes).
  executorch::runtime::Span<const float> forward(const std::vector<int64_t>& tokens, int64_t start_pos);

  std::string input_names() const;  // "tokens, input_pos": forward's inputs, from contract.h
  int64_t max_seq_len() const { return max_seq_len_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t bos_id() const { return bos_id_; }
  bool sealed() const { return sealed_; }
  // The widths of the bucket methods, ascending (empty for a program with forward alone).
  std::vector<int64_t> bucket_widths() const;  // the file carries a content hash, and it matched
  // The ids that end generation: the program's get_eos_ids, or contract::kStopIds without it.
  const std::vector<int64_t>& stop_ids() const { return stop_ids_; }

 private:
  int64_t int_constant(const std::string& name);
  double number_constant(const std::string& name);
  void check_signature();
  void check_table_shapes(const executorch::runtime::MethodMeta& meta);
  void read_special_ids();
  void load_buckets();
  const std::string& method_for(int64_t end) const;
  void make_inputs();
  void resize_inputs(int32_t seq_len);

  std::string path_;
  executorch::extension::Module module_;
  Inputs signature_ = Inputs::kPositions;
  bool sealed_ = false;
  int64_t max_seq_len_ = 0;
  int64_t vocab_size_ = 0;
  int64_t bos_id_ = 0;
  std::vector<int64_t> stop_ids_;
  std::vector<std::pair<int64_t, std::string>> buckets_;  // (W, forward_<W>), ascending W
  int64_t table_half_ = 0;       // Dh/2, the width of the cos and sin inputs (kTables only)
  std::vector<float> inv_freq_;  // (Dh/2,) RoPE frequencies theta^(-2i/Dh) (kTables only)
  // forward's inputs, each buffer sized for L = max_seq_len and viewed by a tensor of the current L.
  std::vector<int64_t> token_data_, position_data_;
  std::vector<float> cos_data_, sin_data_, mask_data_;
  std::vector<executorch::extension::TensorPtr> tensors_;
  std::vector<executorch::runtime::EValue> inputs_;  // views of tensors_, in the signature's order
  int32_t seq_len_ = 0;                              // the L tensors_ have now
};
