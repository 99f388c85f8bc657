// The runner's start-up check of its own bundle against manifest.json (docs/native.md, "What is verified").
#pragma once

#include <string>

namespace compleak {

//! Largest manifest.json read (bytes), as devices/native/bundle.py's MAX_MANIFEST_BYTES.
constexpr size_t kMaxManifestBytes = size_t(1) << 20;

//! Check the bundle whose bin/ is `bin_dir`: <bin_dir>/../manifest.json lists every file of bin/ and lib/ with its
//! sha256 (the binary `exe_name` among them), every listed file is there with that sha256, and nothing unlisted is
//! there. Returns "" when the bundle is intact, else one line naming the file and the fix.
std::string verify_bundle(const std::string& bin_dir, const std::string& exe_name);

}  // namespace compleak
