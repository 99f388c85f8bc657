#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model.h"

namespace compleak {

//! Paths to try for a bundled shared library: <dir of the executable>/../lib/<name>, then <name> (the loader's
//! search path). Defined in main.cpp.
std::vector<std::string> library_candidates(const std::string& name);

//! Load a .tflite model through LiteRT (throws RunnerError, one line).
std::unique_ptr<Model> open_litert(const std::string& path, int threads);

//! LiteRT's version when libLiteRt.so loads here (available = true), else the one-line reason.
std::string litert_status(bool* available);

}  // namespace compleak
