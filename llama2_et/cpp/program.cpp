#include "program.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <stdexcept>

#include "contract.h"
#include "integrity.h"

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::extension::resize_tensor_ptr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::MethodMeta;
using executorch::runtime::Span;

// The wheel ships libexecutorch_threadpool.so, the pool XNNPACK computes on, but of its headers only
// threadpool_guard.h, not threadpool.h: the members used here are declared as ExecuTorch 1.5's
// threadpool.h declares them. The ABI risk: a wheel that renames them or changes their parameters
// breaks the link, and tests/test_cpp_runner.py checks their mangled names in the shipped .so; a
// changed return type or class layout is invisible to both (C++ mangling omits return types), and
// only calling them as `--threads` does catches it.
namespace executorch::extension::threadpool {
class ThreadPool final {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

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

// ExecuTorch's runtime, logging through keep_error_log; once per process, before anything else.
void init_runtime() {
  static const bool initialized = [] {
    executorch::runtime::runtime_init();
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(keep_error_log, __FILE__));
    return true;
  }();
  (void)initialized;
}

ScalarType scalar_type(const char* dtype) {  // a contract.h dtype name
  return std::strcmp(dtype, "float32") == 0 ? ScalarType::Float : ScalarType::Long;
}

// "tokens, input_pos" for a contract.h name list.
template <size_t N>
std::string joined(const char* const (&names)[N]) {
  std::string text;
  for (size_t i = 0; i < N; ++i) text += (i ? ", " : "") + std::string(names[i]);
  return text;
}

// The sizes forward's input i declares: for a dynamic dimension, its upper bound.
std::vector<int64_t> declared_sizes(const MethodMeta& meta, size_t i) {
  const auto sizes = meta.input_tensor_meta(i)->sizes();
  return {sizes.begin(), sizes.end()};
}

std::string shape_text(const std::vector<int64_t>& sizes) {  // "(128, 4)"
  std::string text = "(";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + (sizes.size() == 1 ? ",)" : ")");
}

// XNNPACK packs a delegate's weights when its method loads: every method of a bucketed program
// would hold its own packed copy. Its weight cache packs each weight once, for every method.
void share_packed_weights() {
  executorch::runtime::BackendOptions<1> options;
  Error error = options.set_option("weight_cache_enabled", true);
  if (error == Error::Ok) error = executorch::runtime::set_option("XnnpackBackend", options.view());
  if (error != Error::Ok) throw std::runtime_error(describe("cannot enable XNNPACK's weight cache", error));
}

}  // namespace

size_t size_thread_pool(long long threads) {
  init_runtime();
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr) throw std::runtime_error("ExecuTorch's thread pool could not start (cpuinfo failed)");
  if (threads > 0 && !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads))) {
    throw std::runtime_error("cannot resize ExecuTorch's thread pool to --threads " + std::to_string(threads));
  }
  return pool->get_thread_count();
}

// share_memory_arenas: the buckets of a bucketed program read and write forward's KV cache, planned
// in a memory arena (id 2) every method must share; for a program with forward alone it changes nothing.
Program::Program(const std::string& path)
    : path_(path), module_(path, Module::LoadMode::Mmap, nullptr, nullptr, nullptr, /*share_memory_arenas=*/true) {
  init_runtime();
  share_packed_weights();
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
  load_buckets();
  max_seq_len_ = int_constant(contract::kGetMaxSeqLen);
  read_special_ids();
  if (signature_ == Inputs::kTables) {
    check_table_shapes(*module_.method_meta("forward"));
    const auto head_dim = static_cast<float>(2 * table_half_);
    const auto theta = static_cast<float>(number_constant(contract::kGetRopeTheta));  // no shape holds it
    for (int64_t i = 0; i < table_half_; ++i) {  // float32 throughout, as model.rope_tables
      inv_freq_.push_back(1.0f / std::pow(theta, static_cast<float>(2 * i) / head_dim));
    }
  }
  make_inputs();
}

// Every bucket now, after forward: loading a method writes its initialized buffers, and forward's
// cache zeros must land before any step, never between two.
void Program::load_buckets() {
  const auto names = module_.method_names();
  if (!names.ok()) throw std::runtime_error(describe("cannot list the methods of " + path_, names.error()));
  const std::string prefix = contract::kBucketPrefix;
  for (const std::string& name : *names) {
    const std::string tail = name.substr(std::min(prefix.size(), name.size()));
    if (name.rfind(prefix, 0) != 0 || tail.empty() || !std::all_of(tail.begin(), tail.end(), [](unsigned char c) { return std::isdigit(c) != 0; })) continue;
    const Error error = module_.load_method(name);
    if (error != Error::Ok) throw std::runtime_error(describe("cannot load " + name + " of " + path_, error));
    buckets_.emplace_back(std::stoll(tail), name);
  }
  std::sort(buckets_.begin(), buckets_.end());
}

std::vector<int64_t> Program::bucket_widths() const {
  std::vector<int64_t> widths;
  for (const auto& bucket : buckets_) widths.push_back(bucket.first);
  return widths;
}

// The narrowest method whose attended width covers positions ..end-1.
const std::string& Program::method_for(int64_t end) const {
  static const std::string forward = "forward";
  for (const auto& bucket : buckets_) {
    if (end <= bucket.first) return bucket.second;
  }
  return forward;
}

std::string Program::input_names() const {
  return signature_ == Inputs::kPositions ? joined(contract::kPositionsInputsNames)
                                          : joined(contract::kPreprocInputsNames);
}

// The tables' shapes come from the program: forward declares cos, sin (Lm, Dh/2) and mask (Lm, Lm),
// the upper bounds of their dynamic dimensions. get_head_dim and get_max_seq_len must agree.
void Program::check_table_shapes(const MethodMeta& meta) {
  const std::vector<int64_t> cos = declared_sizes(meta, 1), sin = declared_sizes(meta, 2),
                             mask = declared_sizes(meta, 3);
  const int64_t head_dim = int_constant(contract::kGetHeadDim);
  const bool agree = cos.size() == 2 && sin == cos && cos[0] == max_seq_len_ && 2 * cos[1] == head_dim &&
                     mask == std::vector<int64_t>{max_seq_len_, max_seq_len_};
  if (!agree) {
    const std::string lm = std::to_string(max_seq_len_);
    throw std::runtime_error("forward of " + path_ + " declares cos " + shape_text(cos) + ", sin " +
                             shape_text(sin) + ", mask " + shape_text(mask) + ", but " + contract::kGetMaxSeqLen +
                             " " + lm + " and " + contract::kGetHeadDim + " " + std::to_string(head_dim) +
                             " call for tables (" + lm + ", " + std::to_string(head_dim / 2) + ") and a mask (" +
                             lm + ", " + lm + "); re-export it with `python -m llama2_et export`");
  }
  table_half_ = cos[1];
}

void Program::check_signature() {
  const auto meta = module_.method_meta("forward");
  if (!meta.ok()) throw std::runtime_error(describe("cannot read forward of " + path_, meta.error()));
  const size_t n_inputs = meta->num_inputs();
  const char* const* dtypes = nullptr;
  if (n_inputs == std::size(contract::kPositionsInputsDtypes)) {
    signature_ = Inputs::kPositions;
    dtypes = contract::kPositionsInputsDtypes;
  } else if (n_inputs == std::size(contract::kPreprocInputsDtypes)) {
    signature_ = Inputs::kTables;
    dtypes = contract::kPreprocInputsDtypes;
  }
  bool matches = dtypes != nullptr;
  for (size_t i = 0; matches && i < n_inputs; ++i) {
    const auto input = meta->input_tensor_meta(i);
    matches = input.ok() && input->scalar_type() == scalar_type(dtypes[i]);
  }
  if (matches && meta->num_outputs() >= 1) {
    const auto output = meta->output_tensor_meta(0);
    matches = output.ok() && output->scalar_type() == ScalarType::Float && output->sizes().size() == 2;
    vocab_size_ = matches ? output->sizes()[1] : 0;
  }
  if (vocab_size_ <= 0) {
    last_runtime_error.clear();
    throw std::runtime_error(
        "forward of " + path_ + " (" + std::to_string(n_inputs) + " inputs) matches neither signature: "
        "expected int64 (" + joined(contract::kPositionsInputsNames) + ") or (" +
        joined(contract::kPreprocInputsNames) + ") with float32 tables, "
        "returning float32 logits (1, V), as `python -m llama2_et export` writes");
  }
}

void Program::read_special_ids() {
  const auto names = module_.method_names();
  const bool has_bos = names.ok() && names->count(contract::kGetBosId);
  bos_id_ = has_bos ? int_constant(contract::kGetBosId) : contract::kBosId;
  if (!names.ok() || !names->count(contract::kGetEosIds)) {
    stop_ids_.assign(std::begin(contract::kStopIds), std::end(contract::kStopIds));
    return;
  }
  const auto values = module_.execute(contract::kGetEosIds);  // one int output per id
  if (values.ok()) {
    for (const EValue& value : *values) {
      if (!value.isInt()) break;
      stop_ids_.push_back(value.toInt());
    }
  }
  if (!values.ok() || stop_ids_.empty() || stop_ids_.size() != values->size()) {
    last_runtime_error.clear();
    throw std::runtime_error(path_ + ": method " + contract::kGetEosIds +
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

void Program::make_inputs() {
  const auto capacity = static_cast<SizesType>(max_seq_len_);
  const auto half = static_cast<SizesType>(table_half_);
  token_data_.resize(max_seq_len_);
  tensors_.push_back(from_blob(token_data_.data(), {1, capacity}, ScalarType::Long));  // (1, L)
  if (signature_ == Inputs::kPositions) {
    position_data_.resize(1);
    tensors_.push_back(from_blob(position_data_.data(), {1}, ScalarType::Long));  // (1,)
  } else {
    position_data_.resize(max_seq_len_);
    cos_data_.resize(max_seq_len_ * half);
    sin_data_.resize(max_seq_len_ * half);
    mask_data_.resize(max_seq_len_ * max_seq_len_);
    tensors_.push_back(from_blob(cos_data_.data(), {capacity, half}, ScalarType::Float));  // (L, Dh/2)
    tensors_.push_back(from_blob(sin_data_.data(), {capacity, half}, ScalarType::Float));
    tensors_.push_back(from_blob(mask_data_.data(), {capacity, capacity}, ScalarType::Float));  // (L, W <= Lm)
    tensors_.push_back(from_blob(position_data_.data(), {capacity}, ScalarType::Long));  // (L,)
  }
  inputs_.assign(tensors_.begin(), tensors_.end());  // views: the tensors and their buffers stay put
  seq_len_ = static_cast<int32_t>(capacity);
}

void Program::resize_inputs(int32_t seq_len) {
  const auto half = static_cast<SizesType>(table_half_);
  Error error = resize_tensor_ptr(tensors_[0], {1, seq_len});
  if (signature_ == Inputs::kTables) {
    for (size_t i : {1, 2}) error = error == Error::Ok ? resize_tensor_ptr(tensors_[i], {seq_len, half}) : error;
    if (error == Error::Ok) error = resize_tensor_ptr(tensors_[4], {seq_len});
  }
  if (error != Error::Ok) throw std::runtime_error(describe("cannot resize the inputs of " + path_, error));
  seq_len_ = seq_len;
}

Span<const float> Program::forward(const std::vector<int64_t>& tokens, int64_t start_pos) {
  const auto seq_len = static_cast<int32_t>(tokens.size());
  if (seq_len < 1 || start_pos + seq_len > max_seq_len_) {
    throw std::runtime_error("forward of " + path_ + ": " + std::to_string(seq_len) + " tokens at position " +
                             std::to_string(start_pos) + " do not fit max_seq_len " +
                             std::to_string(max_seq_len_));
  }
  if (seq_len != seq_len_) resize_inputs(seq_len);
  std::copy(tokens.begin(), tokens.end(), token_data_.begin());
  if (signature_ == Inputs::kPositions) {
    position_data_[0] = start_pos;
  } else {
    const auto half = static_cast<size_t>(table_half_);
    const float neg_inf = -std::numeric_limits<float>::infinity();
    // (L, pos + L): the mask's width is the cache positions attention reads, the filled ones only
    const int64_t width = start_pos + seq_len;
    const Error error = resize_tensor_ptr(tensors_[3], {seq_len, static_cast<SizesType>(width)});
    if (error != Error::Ok) throw std::runtime_error(describe("cannot resize the mask of " + path_, error));
    for (int64_t row = 0; row < seq_len; ++row) {
      const int64_t pos = start_pos + row;
      position_data_[row] = pos;
      for (size_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos) * inv_freq_[i];
        cos_data_[row * half + i] = std::cos(angle);
        sin_data_[row * half + i] = std::sin(angle);
      }
      float* mask_row = mask_data_.data() + row * width;
      for (int64_t key = 0; key < width; ++key) mask_row[key] = key <= pos ? 0.0f : neg_inf;
    }
  }
  const auto outputs = module_.execute(method_for(start_pos + seq_len), inputs_);
  if (!outputs.ok()) throw std::runtime_error(describe("forward of " + path_ + " failed", outputs.error()));
  const auto& logits = outputs->at(0).toTensor();  // (1, V): the program's own output memory
  return {logits.const_data_ptr<float>(), static_cast<size_t>(vocab_size_)};
}
