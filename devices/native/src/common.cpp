// Helpers shared by the binary and the ExecuTorch plugin.
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "model.h"

namespace compleak {

std::string one_line(const std::string& text, size_t limit) {
  std::string line;
  bool space = false;
  for (char c : text) {
    if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
      space = !line.empty();
      continue;
    }
    if (space) line += ' ';
    space = false;
    line += (static_cast<unsigned char>(c) < 32) ? '?' : c;
  }
  if (line.size() > limit) line = line.substr(0, limit - 3) + "...";
  return line;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

size_t dtype_size(const std::string& dtype) {
  if (dtype == "float32" || dtype == "int32") return 4;
  if (dtype == "int8" || dtype == "uint8") return 1;
  if (dtype == "int16" || dtype == "float16") return 2;
  if (dtype == "int64" || dtype == "float64") return 8;
  return 0;
}

template <typename T>
static void quantize_as(const float* x, size_t n, float scale, float zp, T* out) {
  const float lo = static_cast<float>(std::numeric_limits<T>::min());
  const float hi = static_cast<float>(std::numeric_limits<T>::max());
  for (size_t i = 0; i < n; ++i) {
    float v = std::nearbyint(x[i] / scale + zp);  // NumPy: float32 ops, round half to even
    out[i] = static_cast<T>(v < lo ? lo : (v > hi ? hi : v));
  }
}

void quantize(const float* x, size_t n, const std::string& dtype, double scale, int64_t zp, void* out) {
  const float s = static_cast<float>(scale), z = static_cast<float>(zp);
  if (dtype == "int8") return quantize_as(x, n, s, z, static_cast<int8_t*>(out));
  if (dtype == "uint8") return quantize_as(x, n, s, z, static_cast<uint8_t*>(out));
  if (dtype == "int16") return quantize_as(x, n, s, z, static_cast<int16_t*>(out));
  throw RunnerError("cannot quantize queries to " + dtype);
}

template <typename T>
static void dequantize_as(const T* q, size_t n, double scale, int64_t zp, float* out) {
  if (scale == 0.0) {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(q[i]);
    return;
  }
  const float s = static_cast<float>(scale), z = static_cast<float>(zp);
  for (size_t i = 0; i < n; ++i) out[i] = (static_cast<float>(q[i]) - z) * s;
}

void dequantize(const void* q, size_t n, const std::string& dtype, double scale, int64_t zp, float* out) {
  if (dtype == "float32") {
    std::memcpy(out, q, n * sizeof(float));
    return;
  }
  if (dtype == "int8") return dequantize_as(static_cast<const int8_t*>(q), n, scale, zp, out);
  if (dtype == "uint8") return dequantize_as(static_cast<const uint8_t*>(q), n, scale, zp, out);
  if (dtype == "int16") return dequantize_as(static_cast<const int16_t*>(q), n, scale, zp, out);
  if (dtype == "int32") return dequantize_as(static_cast<const int32_t*>(q), n, scale, zp, out);
  if (dtype == "int64") return dequantize_as(static_cast<const int64_t*>(q), n, scale, zp, out);
  if (dtype == "float64") return dequantize_as(static_cast<const double*>(q), n, 0.0, 0, out);
  throw RunnerError("cannot read " + dtype + " model outputs as float32");
}

}  // namespace compleak
