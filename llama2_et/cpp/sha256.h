// SHA-256 (FIPS 180-4), small and dependency-free: the runner checks a .pte's content hash.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

class Sha256 {
 public:
  Sha256();
  void update(const uint8_t* data, size_t size);
  std::array<uint8_t, 32> digest();  // call once, after the last update

 private:
  void compress(const uint8_t* block);  // one 64-byte block into state_

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};
