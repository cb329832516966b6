#include "integrity.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <vector>

Seal verify_seal(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot open program " + path);
  const auto size = static_cast<size_t>(in.tellg());
  if (size < kSealSize) return Seal::kAbsent;
  std::array<char, kSealSize> trailer;
  in.seekg(static_cast<std::streamoff>(size - kSealSize));
  if (!in.read(trailer.data(), kSealSize)) throw std::runtime_error("cannot read program " + path);
  if (std::string_view(trailer.data(), kSealMagic.size()) != kSealMagic) return Seal::kAbsent;

  // OpenSSL's SHA-256 (SHA-NI / AVX2 where the CPU has them): 570-890 MB/s on the measuring
  // machine, 4-6x a portable C++ SHA-256, which a multi-GB .pte would wait seconds for.
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> hash(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  bool hashed = hash && EVP_DigestInit_ex(hash.get(), EVP_sha256(), nullptr) == 1;
  std::vector<char> chunk(1 << 20);
  in.seekg(0);
  for (size_t left = size - kSealSize; hashed && left > 0;) {
    const size_t take = std::min(left, chunk.size());
    if (!in.read(chunk.data(), static_cast<std::streamsize>(take))) {
      throw std::runtime_error("cannot read program " + path);
    }
    hashed = EVP_DigestUpdate(hash.get(), chunk.data(), take) == 1;
    left -= take;
  }
  std::array<unsigned char, 32> digest;
  if (!hashed || EVP_DigestFinal_ex(hash.get(), digest.data(), nullptr) != 1) {
    throw std::runtime_error("OpenSSL could not compute the SHA-256 of " + path);
  }
  if (std::memcmp(digest.data(), trailer.data() + kSealMagic.size(), digest.size()) != 0) {
    throw std::runtime_error(path + " is damaged: content hash mismatch (its bytes changed since export); "
                             "re-export it with `python -m llama2_et export`");
  }
  return Seal::kVerified;
}
