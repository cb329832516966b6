#include "tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace {

template <typename T>
bool read_value(std::ifstream& in, T& value) {
  return static_cast<bool>(in.read(reinterpret_cast<char*>(&value), sizeof(T)));
}

// The byte a piece "<0xXX>" stands for, or -1.
int parse_byte_piece(const std::string& piece) {
  unsigned value = 0;
  char end = 0;
  if (piece.size() == 6 && std::sscanf(piece.c_str(), "<0x%2X%c", &value, &end) == 2 && end == '>') {
    return static_cast<int>(value);
  }
  return -1;
}

}  // namespace

Tokenizer::Tokenizer(const std::string& path, int64_t bos_id) : bos_id_(bos_id) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open tokenizer file " + path);
  const std::string bad = "tokenizer file " + path + " is not a llama2.c tokenizer.bin";
  uint32_t max_token_length = 0;
  if (!read_value(in, max_token_length) || max_token_length == 0 || max_token_length > 4096) {
    throw std::runtime_error(bad + " (bad max_token_length header)");
  }
  float score = 0;
  while (read_value(in, score)) {  // one piece per iteration until the end of the file
    int32_t length = 0;
    if (!read_value(in, length) || length < 0 || static_cast<uint32_t>(length) > max_token_length) {
      throw std::runtime_error(bad + " (bad length of piece " + std::to_string(pieces_.size()) + ")");
    }
    std::string piece(static_cast<size_t>(length), '\0');
    if (!in.read(piece.data(), length)) {
      throw std::runtime_error(bad + " (truncated at piece " + std::to_string(pieces_.size()) + ")");
    }
    ids_.emplace(piece, vocab_size());
    pieces_.push_back(std::move(piece));
    scores_.push_back(score);
  }
  if (in.gcount() != 0) throw std::runtime_error(bad + " (trailing bytes)");
  if (vocab_size() <= contract::kEosId) throw std::runtime_error(bad + " (fewer than 3 pieces)");
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  byte_of_.assign(pieces_.size(), -1);
  for (size_t id = 0; id < pieces_.size(); ++id) {
    const int byte = parse_byte_piece(pieces_[id]);
    if (byte >= 0) {
      byte_ids_[byte] = static_cast<int64_t>(id);
      byte_of_[id] = byte;
    }
  }
}

int64_t Tokenizer::lookup(const std::string& piece) const {
  const auto it = ids_.find(piece);
  return it == ids_.end() ? -1 : it->second;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int64_t> tokens = {bos_id_};
  if (text.empty()) return tokens;
  // sentencepiece's "add dummy prefix": the text is read as if it started with a space.
  const int64_t space = lookup(" ");
  if (space >= 0) tokens.push_back(space);

  // One piece per UTF-8 character: a lead byte and its continuation bytes (10xxxxxx).
  for (size_t start = 0; start < text.size();) {
    size_t end = start + 1;
    while (end < text.size() && end - start < 4 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) {
      ++end;
    }
    const std::string character = text.substr(start, end - start);
    const int64_t id = lookup(character);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (unsigned char byte : character) {
        tokens.push_back(byte_ids_[byte] >= 0 ? byte_ids_[byte] : 0);  // 0 = <unk>
      }
    }
    start = end;
  }

  // BPE: merge the adjacent pair whose joined piece scores highest (leftmost on ties), repeat.
  while (true) {
    float best_score = 0;
    int64_t best_id = -1;
    size_t best_index = 0;
    for (size_t i = 1; i + 1 < tokens.size(); ++i) {  // i = 0 is BOS, never merged
      const int64_t id = lookup(pieces_[tokens[i]] + pieces_[tokens[i + 1]]);
      if (id >= 0 && (best_id < 0 || scores_[id] > best_score)) {
        best_score = scores_[id];
        best_id = id;
        best_index = i;
      }
    }
    if (best_id < 0) break;
    tokens[best_index] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_index) + 1);
  }
  return tokens;
}

std::string Tokenizer::decode(int64_t prev, int64_t token) const {
  if (token < 0 || token >= vocab_size()) return "";
  if (byte_of_[token] >= 0) return std::string(1, static_cast<char>(byte_of_[token]));
  const std::string& piece = pieces_[token];
  if (prev == bos_id_ && !piece.empty() && piece[0] == ' ') return piece.substr(1);
  return piece;
}
