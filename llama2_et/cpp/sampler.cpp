#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

using executorch::runtime::Span;

namespace {

// Index of the largest value, the lowest index on ties (as torch.argmax).
int64_t argmax(Span<const float> values) {
  return std::max_element(values.begin(), values.end()) - values.begin();
}

// probs = softmax(logits / temperature).
void softmax(Span<const float> logits, float temperature, std::vector<float>& probs) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  probs.resize(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((logits[i] - max_logit) / temperature);
    sum += probs[i];
  }
  for (float& x : probs) x = static_cast<float>(x / sum);
}

}  // namespace

Sampler::Sampler(float temperature, float top_p, uint64_t seed)
    : temperature_(temperature), top_p_(top_p), rng_(seed) {}

int64_t Sampler::sample(Span<const float> logits) {
  if (temperature_ == 0.0f) return argmax(logits);
  softmax(logits, temperature_, probs_);
  candidates_.resize(logits.size());
  std::iota(candidates_.begin(), candidates_.end(), 0);
  size_t kept = candidates_.size();
  float kept_mass = 1.0f;
  if (top_p_ < 1.0f) {
    std::stable_sort(candidates_.begin(), candidates_.end(),
                     [&](int64_t a, int64_t b) { return probs_[a] > probs_[b]; });
    kept_mass = 0.0f;
    kept = 0;
    while (kept < candidates_.size() && kept_mass <= top_p_) kept_mass += probs_[candidates_[kept++]];
  }
  // Inverse-CDF draw over the kept tokens, their probabilities renormalised by kept_mass.
  const float r = std::uniform_real_distribution<float>(0.0f, kept_mass)(rng_);
  float cdf = 0.0f;
  for (size_t i = 0; i < kept; ++i) {
    cdf += probs_[candidates_[i]];
    if (r < cdf) return candidates_[i];
  }
  return candidates_[kept - 1];  // rounding left r just past the last cdf
}
