// Framing of the runner protocol (bounded reads, framed writes). Protocol: docs/native.md, "Runner protocol".
#include "protocol.h"

#include <cerrno>
#include <cstring>
#include <unistd.h>

#include "model.h"

namespace compleak {

bool Reader::read_exact(void* dst, size_t n, size_t* got) {
  auto* out = static_cast<unsigned char*>(dst);
  size_t done = 0;
  while (done < n) {
    if (pos_ == len_) {
      if (n - done >= sizeof(buf_)) {  // large reads go straight to the destination
        ssize_t k = ::read(fd_, out + done, n - done);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        done += static_cast<size_t>(k);
        continue;
      }
      ssize_t k = ::read(fd_, buf_, sizeof(buf_));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) break;
      pos_ = 0;
      len_ = static_cast<size_t>(k);
    }
    size_t take = std::min(n - done, len_ - pos_);
    std::memcpy(out + done, buf_ + pos_, take);
    pos_ += take;
    done += take;
  }
  if (got) *got = done;
  return done == n;
}

void Reader::skip(uint64_t n) {
  unsigned char scratch[1 << 14];
  while (n > 0) {
    size_t take = static_cast<size_t>(std::min<uint64_t>(n, sizeof(scratch)));
    size_t got = 0;
    read_exact(scratch, take, &got);
    if (got < take) return;
    n -= take;
  }
}

nlohmann::json parse_json(const std::string& text, bool* too_deep) {
  *too_deep = false;
  nlohmann::json::parser_callback_t bounded = [too_deep](int depth, nlohmann::json::parse_event_t event,
                                                         nlohmann::json&) {
    if (depth < kMaxJsonDepth) return true;
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start || event == E::array_start) {  // a container at depth kMaxJsonDepth: dropped
      *too_deep = true;
      return false;
    }
    return true;
  };
  return nlohmann::json::parse(text, bounded, /*allow_exceptions=*/false);
}

nlohmann::json read_message(Reader& in, bool* ended, std::string* refused) {
  *ended = false;
  refused->clear();
  unsigned char head[4];
  size_t got = 0;
  if (!in.read_exact(head, 4, &got)) {
    if (got == 0) {
      *ended = true;
      return nullptr;
    }
    throw RunnerError("protocol error: the stream ended " + std::to_string(got) + " bytes into a 4-byte read");
  }
  uint32_t size = (uint32_t(head[0]) << 24) | (uint32_t(head[1]) << 16) | (uint32_t(head[2]) << 8) | head[3];
  if (size == 0 || size > kMaxRequestHeader)
    throw RunnerError("protocol error: a " + std::to_string(size) + "-byte message header (out of sync?)");
  std::string text(size, '\0');
  if (!in.read_exact(&text[0], size, &got))
    throw RunnerError("protocol error: the stream ended " + std::to_string(got) + " bytes into a " +
                      std::to_string(size) + "-byte read");
  bool too_deep = false;
  nlohmann::json header = parse_json(text, &too_deep);
  if (header.is_discarded())
    throw RunnerError("protocol error: a message header that is not JSON (out of sync?)");
  if (!header.is_object())
    throw RunnerError(std::string("protocol error: a JSON ") + header.type_name() + " header instead of an object");
  auto it = header.find("bytes");
  if (it != header.end() && !it->is_null() &&
      !(it->is_number_unsigned() || (it->is_number_integer() && it->get<int64_t>() >= 0)))
    throw RunnerError("protocol error: 'bytes' is " + one_line(it->dump(), 60) + ", not a byte count");
  if (too_deep) {  // refused, in step: only its payload size is kept (the dropped values left placeholders)
    *refused = "protocol error: a request header nested deeper than " + std::to_string(kMaxJsonDepth) + " levels";
    nlohmann::json slim = nlohmann::json::object();
    if (it != header.end()) slim["bytes"] = *it;
    return slim;
  }
  return header;
}

static bool write_all(int fd, const void* data, size_t n) {
  auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool write_message(int fd, const nlohmann::json& header, const void* payload, size_t payload_size) {
  // invalid UTF-8 in a message (e.g. a path) is replaced rather than throwing
  std::string body = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  uint32_t n = static_cast<uint32_t>(body.size());
  unsigned char head[4] = {static_cast<unsigned char>(n >> 24), static_cast<unsigned char>(n >> 16),
                           static_cast<unsigned char>(n >> 8), static_cast<unsigned char>(n)};
  std::string framed(reinterpret_cast<char*>(head), 4);
  framed += body;
  if (!write_all(fd, framed.data(), framed.size())) return false;
  return payload_size == 0 || write_all(fd, payload, payload_size);
}

}  // namespace compleak
