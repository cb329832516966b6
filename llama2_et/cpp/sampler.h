// Picking the next token from logits: greedy, temperature, and top-p (nucleus) sampling.
#pragma once

#include <executorch/runtime/core/span.h>

#include <cstdint>
#include <random>
#include <vector>

class Sampler {
 public:
  // temperature 0 = greedy; top_p in (0, 1) keeps the smallest set of most likely tokens whose
  // probabilities sum past top_p, 1 keeps them all. The same seed gives the same tokens.
  Sampler(float temperature, float top_p, uint64_t seed);

  // The next token id for logits (V,); greedy reads them in place, sampling copies them once.
  int64_t sample(executorch::runtime::Span<const float> logits);

 private:
  float temperature_;
  float top_p_;
  std::mt19937_64 rng_;
  std::vector<float> probs_;          // (V,) softmax of logits / temperature
  std::vector<int64_t> candidates_;  // token ids, most likely first when top-p cuts
};
