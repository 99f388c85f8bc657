// Framing of the runner protocol: read_message / write_message, as read_message / frame of
// devices/ondevice/compleak_runner.py. Protocol: docs/native.md, "Runner protocol".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace compleak {

//! Largest request header read (bytes of JSON), as the Python runner's MAX_REQUEST_HEADER.
constexpr uint32_t kMaxRequestHeader = 1u << 20;
//! Deepest nesting of arrays and objects kept from any JSON the runner reads (request headers, manifest.json); a
//! request header is at most 3 deep.
constexpr int kMaxJsonDepth = 32;

//! `text` parsed as JSON, its nesting bounded: values nested deeper than kMaxJsonDepth are dropped while parsing
//! (nlohmann's parser is iterative and the dropped values are never built, so nothing recurses on them later:
//! dump() in an error message, the destructor) and *too_deep is set. A syntax error gives a discarded value.
nlohmann::json parse_json(const std::string& text, bool* too_deep);

//! Buffered reads of a file descriptor (the protocol's stdin).
class Reader {
 public:
  explicit Reader(int fd) : fd_(fd) {}
  //! Read exactly n bytes; false when the stream ended first (got: bytes read before the end).
  bool read_exact(void* dst, size_t n, size_t* got = nullptr);
  //! Discard n bytes (or until the end of the stream).
  void skip(uint64_t n);

 private:
  int fd_;
  unsigned char buf_[1 << 16];
  size_t pos_ = 0, len_ = 0;
};

//! One request header, or an empty optional-like result: `ended` at a clean end of stream.
//! Throws RunnerError (one line) for an out-of-sync or malformed header. A framed object header that is refused
//! while the stream stays in step (nested deeper than kMaxJsonDepth) comes back with `refused` set to the error.
nlohmann::json read_message(Reader& in, bool* ended, std::string* refused);

//! Write header (compact JSON, framed) followed by `payload_size` bytes; false when the stream is gone.
bool write_message(int fd, const nlohmann::json& header, const void* payload = nullptr, size_t payload_size = 0);

}  // namespace compleak
