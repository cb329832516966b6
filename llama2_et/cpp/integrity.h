// The content hash of a .pte (llama2_et/integrity.py seals it at export): a trailer after the
// program bytes, kSealMagic then the sha256 of every byte before the trailer. ExecuTorch reads a
// program from its header's offsets and ignores the trailer, so a sealed file loads everywhere.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

constexpr std::string_view kSealMagic = "llama2_et:sha256";
constexpr size_t kSealSize = kSealMagic.size() + 32;

enum class Seal { kVerified, kAbsent };

// Checks the file's sealed hash against its bytes: kVerified, or kAbsent for a file without one
// (ExecuTorch's own export_llm writes none); throws std::runtime_error naming the file when it
// cannot be read or its bytes no longer match the hash.
Seal verify_seal(const std::string& path);
