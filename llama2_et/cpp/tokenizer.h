// The llama2.c tokenizer.bin format: a vocabulary of pieces with merge scores, encoded by BPE as
// sentencepiece encodes with the .model the file was made from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "contract.h"

class Tokenizer {
 public:
  // Reads tokenizer.bin: uint32 max_token_length, then per piece float32 score, int32 length,
  // bytes. Throws std::runtime_error naming the file if it is missing or malformed.
  // bos_id: the id encode starts with (the program's get_bos_id).
  explicit Tokenizer(const std::string& path, int64_t bos_id = contract::kBosId);
  Tokenizer(const Tokenizer&) = delete;  // merges_ views the pieces of this object
  Tokenizer& operator=(const Tokenizer&) = delete;

  // BOS, then the BPE pieces of normalize(text): merged pairwise, highest score first (leftmost
  // on ties), as sentencepiece's BPE model; a character left without a piece becomes <0xXX> bytes.
  std::vector<int64_t> encode(const std::string& text) const;

  // The fewest ids encode(text) can return: BOS plus one per max_token_length bytes of
  // normalize(text). Linear time, to reject an over-long prompt before encoding it.
  size_t min_token_count(const std::string& text) const;

  // The text of `token`, with the leading space dropped right after BOS and <0xXX> as a raw byte.
  std::string decode(int64_t prev, int64_t token) const;

  int64_t vocab_size() const { return static_cast<int64_t>(pieces_.size()); }

 private:
  // sentencepiece's normalizer for these models (identity character map): a space in front (its
  // add_dummy_prefix), and with remove_extra_whitespaces, no leading, trailing or doubled spaces;
  // each byte of ill-formed UTF-8 becomes U+FFFD, as sentencepiece reads it.
  // The result spells sentencepiece's whitespace symbol U+2581 as ' ', as tokenizer.bin does.
  std::string normalize(const std::string& text) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string_view, int64_t> merges_;  // pieces a merge may produce: not
                                                          // <unk>, BOS, EOS or <0xXX> bytes
  size_t max_token_length_ = 0;
  // tokenizer.bin does not record sentencepiece's remove_extra_whitespaces; a model trained with
  // it never sees two spaces in a row, so a piece of two spaces means the flag was off.
  bool remove_extra_whitespaces_ = true;
  int64_t byte_ids_[256];     // id of the <0xXX> piece for each byte, -1 if absent
  std::vector<int> byte_of_;  // byte value of a <0xXX> piece, -1 for other pieces
  int64_t bos_id_;
};
