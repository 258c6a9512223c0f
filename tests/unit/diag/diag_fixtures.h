// Test fixtures for the diag suite: a copy of a committed tiny model with chosen elements of a
// BF16/F32 tensor overwritten in place (NaN weights, a poisoned embedding row).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace clawmine::test {

// Copies every file of fixture model `name` (tests/fixtures/models/<name>) into dir.
void copy_model(const std::string& name, const std::filesystem::path& dir);
// Overwrites `count` consecutive elements of tensor `tensor` in dir/model.safetensors, from flat
// index `first`, with `value` (BF16 or F32 tensors).
void patch_tensor(const std::filesystem::path& dir, const std::string& tensor, int64_t first, int64_t count,
                  float value);

}  // namespace clawmine::test
