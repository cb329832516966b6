// A llama2-et .pte as a model: detects the program design and runs forward from positions.
#pragma once

#include <executorch/extension/module/module.h>

#include <cstdint>
#include <string>
#include <vector>

// positions: forward(tokens (1, L) int64, input_pos (1,) int64 start) -> logits (1, V)
// preproc:   forward(tokens (1, L) int64, cos (L, Dh/2), sin (L, Dh/2), mask (L, Lm),
//                    input_pos (L,) int64) -> logits (1, V); the caller slices the tables.
enum class Design { kPositions, kPreproc };

class Program {
 public:
  // Loads the .pte and its forward method; throws std::runtime_error naming the file when it
  // is missing, corrupt, or its forward matches neither design.
  explicit Program(const std::string& path);

  // Logits (V,) of the last of `tokens`, placed at positions start_pos.., written to the KV cache.
  const std::vector<float>& forward(const std::vector<int64_t>& tokens, int64_t start_pos);

  Design design() const { return design_; }
  int64_t max_seq_len() const { return max_seq_len_; }
  int64_t vocab_size() const { return static_cast<int64_t>(logits_.size()); }

 private:
  int64_t int_constant(const std::string& name);
  double number_constant(const std::string& name);
  void check_signature();

  std::string path_;
  executorch::extension::Module module_;
  Design design_ = Design::kPositions;
  int64_t max_seq_len_ = 0;
  std::vector<float> inv_freq_;  // (Dh/2,) RoPE frequencies theta^(-2i/Dh), preproc design only
  std::vector<float> logits_;    // (V,)
};
