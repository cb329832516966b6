// llama2_et_runner: generate text from a llama2-et .pte and a llama2.c tokenizer.bin.
//
// Prefill feeds the whole prompt in one forward call (the program's token dimension is
// dynamic), then decode feeds one token per call; the KV cache lives inside the program.
// Text streams to stdout, prompt first, as llama2.c's run.c prints it; speeds (a step is its forward
// and its sampling, as TextLLMRunner times it), threads and peak memory go to stderr.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "program.h"
#include "sampler.h"
#include "tokenizer.h"

namespace {

constexpr const char* kUsage =
    "usage: llama2_et_runner --model PATH.pte --tokenizer PATH.bin [--prompt TEXT] [--steps N]\n"
    "                        [--temperature T] [--top-p P] [--seed S] [--threads N] [--print-tokens]\n"
    "                        [--warmup]\n"
    "  --model         a .pte from `python -m llama2_et export` (gather, narrow or preproc design)\n"
    "  --tokenizer     a llama2.c tokenizer.bin (e.g. tok512.bin for stories260K)\n"
    "  --prompt        text to continue (default: empty, i.e. start from BOS)\n"
    "  --steps         new tokens to generate at most (default 128); stops early at the\n"
    "                  program's EOS ids (get_eos_ids; without it at EOS or BOS)\n"
    "  --temperature   0 = greedy argmax (default 0)\n"
    "  --top-p         nucleus sampling threshold in (0, 1]; 1 = off (default 1)\n"
    "  --seed          random seed for sampling (default: the current time)\n"
    "  --threads       threads of ExecuTorch's thread pool, which XNNPACK computes on\n"
    "                  (default 0: the size ExecuTorch picks for this machine)\n"
    "  --print-tokens  print token ids (prompt with BOS, then generated) instead of text;\n"
    "                  with --steps 0 and no --model it only encodes the prompt\n"
    "  --warmup        run the prompt's prefill and one decode step once, untimed, before\n"
    "                  generating: the speeds then exclude first-call costs (page faults,\n"
    "                  XNNPACK's first reshape), as a benchmark's warm-up run does\n";

struct Options {
  std::string model, tokenizer, prompt;
  long long steps = 128;
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = static_cast<uint64_t>(std::time(nullptr));
  long long threads = 0;
  bool print_tokens = false;
  bool warmup = false;
};

double parse_number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw std::runtime_error(flag + " expects a number, got '" + text + "'");
  return value;
}

long long parse_count(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || value < 0) {
    throw std::runtime_error(flag + " expects a non-negative integer, got '" + text + "'");
  }
  return value;
}

Options parse_args(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--print-tokens") {
      options.print_tokens = true;
      continue;
    }
    if (flag == "--warmup") {
      options.warmup = true;
      continue;
    }
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    const std::set<std::string> valued = {"--model", "--tokenizer", "--prompt", "--steps",
                                          "--temperature", "--top-p", "--seed", "--threads"};
    if (!valued.count(flag)) throw std::runtime_error("unknown option " + flag);
    if (i + 1 >= argc) throw std::runtime_error("missing value for " + flag);
    const std::string value = argv[++i];
    if (flag == "--model") {
      options.model = value;
    } else if (flag == "--tokenizer") {
      options.tokenizer = value;
    } else if (flag == "--prompt") {
      options.prompt = value;
    } else if (flag == "--steps") {
      options.steps = parse_count(flag, value);
    } else if (flag == "--temperature") {
      options.temperature = static_cast<float>(parse_number(flag, value));
      if (!(options.temperature >= 0.0f)) {
        throw std::runtime_error("--temperature must be >= 0, got " + value);
      }
    } else if (flag == "--top-p") {
      options.top_p = static_cast<float>(parse_number(flag, value));
      if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
        throw std::runtime_error("--top-p must be in (0, 1], got " + value);
      }
    } else if (flag == "--seed") {
      options.seed = static_cast<uint64_t>(parse_count(flag, value));
    } else if (flag == "--threads") {
      options.threads = parse_count(flag, value);
      if (options.threads > 1024) throw std::runtime_error("--threads must be at most 1024, got " + value);
    }
  }
  const bool encode_only = options.print_tokens && options.steps == 0;
  if (options.model.empty() && !encode_only) throw std::runtime_error("--model is required");
  if (options.tokenizer.empty()) throw std::runtime_error("--tokenizer is required");
  return options;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void report_speed(const char* phase, size_t tokens, double seconds) {
  std::fprintf(stderr, "%s: %zu tokens in %.2f ms, %.1f tok/s\n", phase, tokens, seconds * 1e3,
               seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0);
}

// This process's peak resident memory in KiB (the kernel's VmHWM), or -1 without /proc. Not
// getrusage's ru_maxrss: that one keeps the peak of the process that spawned us when it spawned
// with vfork, as Python's subprocess does (a 110 MB run started from a 600 MB Python says 600 MB).
long long peak_rss_kib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));  // "VmHWM:   110104 kB"
  }
  return -1;
}

// Asks the kernel to back this process's anonymous memory (XNNPACK's packed weights, the planned
// activations, the KV cache) with 2 MiB pages now (MADV_COLLAPSE, Linux 6.1+): a decode step streams
// every weight, and on 4 KiB pages that is a TLB miss per 4 KiB. No copy: the pages are remapped,
// and RSS stays the same. Where the kernel declines (older, or THP off), nothing changes.
void collapse_into_huge_pages() {
  constexpr int kMadvCollapse = 25;  // MADV_COLLAPSE, absent from older headers
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {  // "start-end perms offset dev inode [path]"
    std::istringstream fields(line);
    uintptr_t start = 0, end = 0;
    char dash = 0;
    std::string perms, offset, device, path;
    unsigned long long inode = 0;
    fields >> std::hex >> start >> dash >> end >> perms >> offset >> device >> std::dec >> inode >> path;
    const bool anonymous = inode == 0 && (path.empty() || path == "[heap]");
    if (!fields.eof() || !anonymous || perms.rfind("rw", 0) != 0) continue;
    const uintptr_t first = (start + kHugePage - 1) & ~(kHugePage - 1), last = end & ~(kHugePage - 1);
    if (last <= first) continue;
    void* region = reinterpret_cast<void*>(first);
    madvise(region, last - first, MADV_HUGEPAGE);
    madvise(region, last - first, kMadvCollapse);
  }
}

// Writes one token as text (or as its id), right away.
void emit(const Options& options, const Tokenizer& tokenizer, int64_t prev, int64_t token) {
  if (options.print_tokens) {
    std::printf(prev < 0 ? "%lld" : " %lld", static_cast<long long>(token));
  } else {
    std::fputs(tokenizer.decode(prev, token).c_str(), stdout);
  }
  std::fflush(stdout);
}

// The prompt as run.c prints it: text without BOS, or every id with BOS.
void emit_prompt(const Options& options, const Tokenizer& tokenizer, const std::vector<int64_t>& tokens) {
  for (size_t i = options.print_tokens ? 0 : 1; i < tokens.size(); ++i) {
    emit(options, tokenizer, i == 0 ? -1 : tokens[i - 1], tokens[i]);
  }
}

int run(const Options& options) {
  if (options.model.empty()) {  // encode only
    const Tokenizer tokenizer(options.tokenizer);
    emit_prompt(options, tokenizer, tokenizer.encode(options.prompt));
    std::fputs("\n", stdout);
    return 0;
  }
  const size_t threads = size_thread_pool(options.threads);
  const auto load_start = std::chrono::steady_clock::now();
  Program program(options.model);
  collapse_into_huge_pages();  // after the load, which packed the weights
  const Tokenizer tokenizer(options.tokenizer, program.bos_id());
  std::fprintf(stderr, "load: %s (inputs %s) in %.2f ms; content hash %s\n", options.model.c_str(),
               program.input_names().c_str(),
               seconds_since(load_start) * 1e3, program.sealed() ? "verified" : "absent (not checked)");
  std::fprintf(stderr, "threads %zu\n", threads);
  if (!program.bucket_widths().empty()) {
    std::string widths;
    for (const int64_t width : program.bucket_widths()) widths += (widths.empty() ? "" : ", ") + std::to_string(width);
    std::fprintf(stderr, "buckets: %s of %lld cache positions (forward reads all)\n", widths.c_str(),
                 static_cast<long long>(program.max_seq_len()));
  }
  if (tokenizer.vocab_size() != program.vocab_size()) {
    const std::string pieces = std::to_string(tokenizer.vocab_size());
    const std::string vocab = std::to_string(program.vocab_size());
    throw std::runtime_error("tokenizer " + options.tokenizer + " has " + pieces + " pieces but the model's "
                             "vocabulary has " + vocab + "; pass the tokenizer the model was trained with");
  }
  const long long room = program.max_seq_len() - options.steps;  // prompt tokens that fit
  const auto too_long = [&](const std::string& prompt_tokens) {
    return std::runtime_error("the prompt (" + prompt_tokens + " tokens) plus --steps " +
                              std::to_string(options.steps) + " exceeds the model's max_seq_len of " +
                              std::to_string(program.max_seq_len()) + "; shorten the prompt or lower --steps");
  };
  const size_t at_least = tokenizer.min_token_count(options.prompt);
  if (static_cast<long long>(at_least) > room) throw too_long("at least " + std::to_string(at_least));
  std::vector<int64_t> tokens = tokenizer.encode(options.prompt);  // BOS + prompt
  const auto prompt_len = static_cast<long long>(tokens.size());
  if (prompt_len > room) throw too_long(std::to_string(prompt_len));
  emit_prompt(options, tokenizer, tokens);

  if (options.warmup && options.steps > 0) {  // the run below overwrites every cache row it reads
    program.forward(tokens, 0);
    program.forward({tokens.back()}, prompt_len);
  }
  Sampler sampler(options.temperature, options.top_p, options.seed);
  std::vector<int64_t> last(1);  // decode's input: the newest token
  size_t decoded = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  for (long long step = 0; step < options.steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    int64_t next = 0;
    if (step == 0) {
      next = sampler.sample(program.forward(tokens, 0));  // prefill: the whole prompt at positions 0..
      prefill_seconds = seconds_since(start);
    } else {
      last[0] = tokens.back();
      next = sampler.sample(program.forward(last, static_cast<int64_t>(tokens.size()) - 1));
      decode_seconds += seconds_since(start);
      ++decoded;
    }
    const auto& stop = program.stop_ids();
    if (std::find(stop.begin(), stop.end(), next) != stop.end()) break;
    emit(options, tokenizer, tokens.back(), next);
    tokens.push_back(next);
  }
  std::fputs("\n", stdout);
  if (options.steps > 0) report_speed("prefill", static_cast<size_t>(prompt_len), prefill_seconds);
  report_speed("decode", decoded, decode_seconds);
  if (const long long peak = peak_rss_kib(); peak >= 0) std::fprintf(stderr, "peak_rss_kib %lld\n", peak);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n%s", error.what(), kUsage);
    return 1;
  }
}
