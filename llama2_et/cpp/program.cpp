#include "program.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <stdexcept>

#include "contract.h"
#include "integrity.h"

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

std::string last_runtime_error;  // ExecuTorch logs its reasons; we keep the last for our message

void keep_error_log(et_timestamp_t, et_pal_log_level_t level, const char*, const char*, size_t,
                    const char* message, size_t length) {
  if (level != kError && level != kFatal) return;
  last_runtime_error.assign(message, length);
  for (char& c : last_runtime_error) {  // it may quote bytes of a corrupt file
    if (c < ' ' || c > '~') c = '?';
  }
}

// "<what>: <ExecuTorch error> (<its last log line>)"
std::string describe(const std::string& what, Error error) {
  std::string text = what + ": " + executorch::runtime::to_string(error);
  if (!last_runtime_error.empty()) text += " (" + last_runtime_error + ")";
  last_runtime_error.clear();
  return text;
}

ScalarType scalar_type(const char* dtype) {  // a contract.h dtype name
  return std::strcmp(dtype, "float32") == 0 ? ScalarType::Float : ScalarType::Long;
}

// "(tokens, input_pos)" for a contract.h name list.
template <size_t N>
std::string joined(const char* const (&names)[N]) {
  std::string text = "(";
  for (size_t i = 0; i < N; ++i) text += (i ? ", " : "") + std::string(names[i]);
  return text + ")";
}

}  // namespace

Program::Program(const std::string& path) : path_(path), module_(path, Module::LoadMode::Mmap) {
  executorch::runtime::runtime_init();
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(keep_error_log, __FILE__));
  sealed_ = verify_seal(path) == Seal::kVerified;  // before ExecuTorch reads a byte of it
  const std::string not_ours = "; export it with `python -m llama2_et export`";
  Error error = module_.load(executorch::runtime::Program::Verification::InternalConsistency);
  if (error != Error::Ok) throw std::runtime_error(describe("cannot load program " + path, error) + not_ours);
  last_runtime_error.clear();
  error = module_.load_method("forward");
  // ExecuTorch 1.5's Method::init can log an error (e.g. "Op index ... out of range") and still
  // return Ok, leaving a kernel pointer unset that forward would call: an error logged is a failure.
  if (error == Error::Ok && !last_runtime_error.empty()) error = Error::InvalidProgram;
  if (error != Error::Ok) throw std::runtime_error(describe("cannot load forward of " + path, error));
  check_signature();
  max_seq_len_ = int_constant(contract::kMaxSeqLen);
  read_special_ids();
  if (design_ == Design::kPreproc) {
    const int64_t head_dim = int_constant(contract::kHeadDim);
    const auto theta = static_cast<float>(number_constant(contract::kRopeTheta));
    for (int64_t i = 0; i < head_dim / 2; ++i) {  // float32 throughout, as preproc.rope_tables
      inv_freq_.push_back(1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim)));
    }
  }
}

void Program::check_signature() {
  const auto meta = module_.method_meta("forward");
  if (!meta.ok()) throw std::runtime_error(describe("cannot read forward of " + path_, meta.error()));
  const size_t n_inputs = meta->num_inputs();
  const char* const* dtypes = nullptr;
  if (n_inputs == std::size(contract::kPositionsDtypes)) {
    design_ = Design::kPositions;
    dtypes = contract::kPositionsDtypes;
  } else if (n_inputs == std::size(contract::kPreprocDtypes)) {
    design_ = Design::kPreproc;
    dtypes = contract::kPreprocDtypes;
  }
  bool matches = dtypes != nullptr;
  for (size_t i = 0; matches && i < n_inputs; ++i) {
    const auto input = meta->input_tensor_meta(i);
    matches = input.ok() && input->scalar_type() == scalar_type(dtypes[i]);
  }
  int64_t vocab_size = 0;
  if (matches && meta->num_outputs() >= 1) {
    const auto output = meta->output_tensor_meta(0);
    matches = output.ok() && output->scalar_type() == ScalarType::Float && output->sizes().size() == 2;
    vocab_size = matches ? output->sizes()[1] : 0;
  }
  if (vocab_size <= 0) {
    last_runtime_error.clear();
    throw std::runtime_error(
        "forward of " + path_ + " (" + std::to_string(n_inputs) + " inputs) matches neither design: "
        "expected int64 " + joined(contract::kPositionsNames) + " or " + joined(contract::kPreprocNames) +
        " with float32 tables, "
        "returning float32 logits (1, V), as `python -m llama2_et export` writes");
  }
  logits_.resize(static_cast<size_t>(vocab_size));
}

void Program::read_special_ids() {
  const auto names = module_.method_names();
  const bool has_bos = names.ok() && names->count(contract::kBos);
  bos_id_ = has_bos ? int_constant(contract::kBos) : contract::kBosId;
  if (!names.ok() || !names->count(contract::kEosIds)) {
    stop_ids_.assign(std::begin(contract::kStopIds), std::end(contract::kStopIds));
    return;
  }
  const auto values = module_.execute(contract::kEosIds);  // one int output per id
  if (values.ok()) {
    for (const EValue& value : *values) {
      if (!value.isInt()) break;
      stop_ids_.push_back(value.toInt());
    }
  }
  if (!values.ok() || stop_ids_.empty() || stop_ids_.size() != values->size()) {
    last_runtime_error.clear();
    throw std::runtime_error(path_ + ": method " + contract::kEosIds +
                             " does not return integer ids; export it with `python -m llama2_et export`");
  }
}

int64_t Program::int_constant(const std::string& name) {
  const auto value = module_.get(name);
  if (!value.ok() || !value->isInt() || value->toInt() <= 0) {
    last_runtime_error.clear();
    throw std::runtime_error(path_ + " has no positive integer method " + name +
                             "; export it with `python -m llama2_et export`, which adds it");
  }
  return value->toInt();
}

double Program::number_constant(const std::string& name) {
  const auto value = module_.get(name);
  if (value.ok() && value->isDouble()) return value->toDouble();
  if (value.ok() && value->isInt()) return static_cast<double>(value->toInt());
  last_runtime_error.clear();
  throw std::runtime_error(path_ + " has no number method " + name +
                           "; export it with `python -m llama2_et export`, which adds it");
}

const std::vector<float>& Program::forward(const std::vector<int64_t>& tokens, int64_t start_pos) {
  const auto seq_len = static_cast<int32_t>(tokens.size());
  std::vector<int64_t> token_data = tokens;  // from_blob wraps mutable memory
  std::vector<int64_t> positions;
  std::vector<float> cos, sin, mask;
  std::vector<TensorPtr> tensors = {from_blob(token_data.data(), {1, seq_len}, ScalarType::Long)};  // (1, L)
  if (design_ == Design::kPositions) {
    positions = {start_pos};
    tensors.push_back(from_blob(positions.data(), {1}, ScalarType::Long));  // (1,)
  } else {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int64_t pos = start_pos; pos < start_pos + seq_len; ++pos) {
      positions.push_back(pos);
      for (float freq : inv_freq_) {
        const float angle = static_cast<float>(pos) * freq;
        cos.push_back(std::cos(angle));
        sin.push_back(std::sin(angle));
      }
      for (int64_t key = 0; key < max_seq_len_; ++key) mask.push_back(key <= pos ? 0.0f : neg_inf);
    }
    const auto half = static_cast<int32_t>(inv_freq_.size());
    const auto context = static_cast<int32_t>(max_seq_len_);
    tensors.push_back(from_blob(cos.data(), {seq_len, half}, ScalarType::Float));  // (L, Dh/2)
    tensors.push_back(from_blob(sin.data(), {seq_len, half}, ScalarType::Float));
    tensors.push_back(from_blob(mask.data(), {seq_len, context}, ScalarType::Float));  // (L, Lm)
    tensors.push_back(from_blob(positions.data(), {seq_len}, ScalarType::Long));  // (L,)
  }
  const std::vector<EValue> inputs(tensors.begin(), tensors.end());  // views: tensors stay alive
  const auto outputs = module_.forward(inputs);
  if (!outputs.ok()) throw std::runtime_error(describe("forward of " + path_ + " failed", outputs.error()));
  const auto& logits = outputs->at(0).toTensor();  // (1, V)
  std::copy(logits.const_data_ptr<float>(), logits.const_data_ptr<float>() + logits_.size(), logits_.begin());
  return logits_;
}
