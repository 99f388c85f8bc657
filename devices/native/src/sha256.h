// SHA-256 (FIPS 180-4), for the dataset op's integrity check; a straightforward implementation, no dependencies.
// Written here on purpose: the runner must need only libc and libstdc++ (Android's bionic exposes no libcrypto to
// apps, minimal boards may lack OpenSSL); tests/test_native_runner.py checks it against hashlib via the dataset op.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace compleak {

class Sha256 {
 public:
  Sha256() { reset(); }
  void reset();
  void update(const void* data, size_t n);
  //! Lowercase hex digest (64 characters); the object must be reset() before reuse.
  std::string hexdigest();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t fill_ = 0;
  uint64_t bits_ = 0;
};

}  // namespace compleak
