// The llama2.c tokenizer.bin format: a vocabulary of pieces with merge scores, encoded by BPE.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "contract.h"

class Tokenizer {
 public:
  // Reads tokenizer.bin: uint32 max_token_length, then per piece float32 score, int32 length,
  // bytes. Throws std::runtime_error naming the file if it is missing or malformed.
  // bos_id: the id encode starts with (the program's get_bos_id).
  explicit Tokenizer(const std::string& path, int64_t bos_id = contract::kBosId);

  // BOS, then a leading space piece, then UTF-8 characters (bytes as <0xXX> pieces when a
  // character has no piece), merged pairwise by highest score until no pair is in the vocabulary.
  std::vector<int64_t> encode(const std::string& text) const;

  // The text of `token`, with the leading space dropped right after BOS and <0xXX> as a raw byte.
  std::string decode(int64_t prev, int64_t token) const;

  int64_t vocab_size() const { return static_cast<int64_t>(pieces_.size()); }

 private:
  int64_t lookup(const std::string& piece) const;  // -1 when not in the vocabulary

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int64_t> ids_;
  int64_t byte_ids_[256];                 // id of the <0xXX> piece for each byte, -1 if absent
  std::vector<int> byte_of_;              // byte value of a <0xXX> piece, -1 for other pieces
  int64_t bos_id_;
};
