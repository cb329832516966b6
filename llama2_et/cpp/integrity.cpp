#include "integrity.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

#include "sha256.h"

Seal verify_seal(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot open program " + path);
  const auto size = static_cast<size_t>(in.tellg());
  if (size < kSealSize) return Seal::kAbsent;
  std::array<char, kSealSize> trailer;
  in.seekg(static_cast<std::streamoff>(size - kSealSize));
  if (!in.read(trailer.data(), kSealSize)) throw std::runtime_error("cannot read program " + path);
  if (std::string_view(trailer.data(), kSealMagic.size()) != kSealMagic) return Seal::kAbsent;

  Sha256 hash;
  std::vector<char> chunk(1 << 20);
  in.seekg(0);
  for (size_t left = size - kSealSize; left > 0;) {
    const size_t take = std::min(left, chunk.size());
    if (!in.read(chunk.data(), static_cast<std::streamsize>(take))) {
      throw std::runtime_error("cannot read program " + path);
    }
    hash.update(reinterpret_cast<const uint8_t*>(chunk.data()), take);
    left -= take;
  }
  const auto digest = hash.digest();
  if (std::memcmp(digest.data(), trailer.data() + kSealMagic.size(), digest.size()) != 0) {
    throw std::runtime_error(path + " is damaged: content hash mismatch (its bytes changed since export); "
                             "re-export it with `python -m llama2_et export`");
  }
  return Seal::kVerified;
}
