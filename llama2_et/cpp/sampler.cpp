#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace {

// Index of the largest value, the lowest index on ties (as torch.argmax).
int64_t argmax(const std::vector<float>& values) {
  return std::max_element(values.begin(), values.end()) - values.begin();
}

// In-place softmax of logits / temperature.
void softmax(std::vector<float>& logits, float temperature) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float& x : logits) {
    x = std::exp((x - max_logit) / temperature);
    sum += x;
  }
  for (float& x : logits) x = static_cast<float>(x / sum);
}

}  // namespace

Sampler::Sampler(float temperature, float top_p, uint64_t seed)
    : temperature_(temperature), top_p_(top_p), rng_(seed) {}

int64_t Sampler::sample(std::vector<float>& logits) {
  if (temperature_ == 0.0f) return argmax(logits);
  softmax(logits, temperature_);
  std::vector<int64_t> candidates(logits.size());  // token ids, most likely first when top-p cuts
  std::iota(candidates.begin(), candidates.end(), 0);
  size_t kept = candidates.size();
  float kept_mass = 1.0f;
  if (top_p_ < 1.0f) {
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
    kept_mass = 0.0f;
    kept = 0;
    while (kept < candidates.size() && kept_mass <= top_p_) kept_mass += logits[candidates[kept++]];
  }
  // Inverse-CDF draw over the kept tokens, their probabilities renormalised by kept_mass.
  const float r = std::uniform_real_distribution<float>(0.0f, kept_mass)(rng_);
  float cdf = 0.0f;
  for (size_t i = 0; i < kept; ++i) {
    cdf += logits[candidates[i]];
    if (r < cdf) return candidates[i];
  }
  return candidates[kept - 1];  // rounding left r just past the last cdf
}
