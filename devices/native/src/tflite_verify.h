// The TF-Lite model check run before LiteRT sees a file (docs/native.md, "What is verified and contained").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace compleak {

//! Verify `size` bytes at `buf` as a TF-Lite model: the flatbuffer verifier of the TF-Lite schema (what the
//! schema's generated tflite::VerifyModelBuffer checks, driven by src/tflite_schema.inc, generated from the
//! ai-edge-litert wheel's schema), then the references LiteRT follows unchecked (operator codes, tensor and buffer
//! indices, buffer data outside the flatbuffer). Returns "" when the model verifies, else one line saying where
//! and why it does not.
std::string verify_tflite(const uint8_t* buf, size_t size);

//! verify_tflite over the file at `path` (mapped read-only); throws RunnerError naming the file and the fix.
void verify_tflite_file(const std::string& path);

}  // namespace compleak
