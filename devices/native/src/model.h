// The runtime-independent model interface of compleak-runner (see docs/native.md).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace compleak {

//! An artifact or input problem: its message is one line naming the thing and the fix (sent as {"ok": false}).
struct RunnerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

//! The loaded model failed or contradicted itself while running (the runtime failed, or returned another number of
//! outputs than the queries call for): the runner drops it, so the next infer gets "no model loaded", not a model
//! in an unknown state.
struct ModelFault : RunnerError {
  using RunnerError::RunnerError;
};

//! One model tensor as the Python runner describes it (shape: -1 for a dynamic dimension).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype = "float32";  // float32 | int8 | uint8 | int16 | ...
  double scale = 0.0;             // 0: not quantized
  int64_t zero_point = 0;
};

//! A loaded artifact. invoke() maps one batch of float32 queries already in the model's layout to float32
//! outputs [n, C] (quantized inputs/outputs are (de)quantized inside, exactly as the Python runner does).
class Model {
 public:
  virtual ~Model() = default;
  virtual TensorSpec input() const = 0;
  virtual TensorSpec output() const = 0;
  //! Largest batch one invocation takes (0: any).
  virtual int64_t max_batch() const = 0;
  //! x: float32 C-order [n, row...] with row == dims of input() (model layout); out: n * C floats, appended.
  virtual void invoke(const float* x, int64_t n, const std::vector<int64_t>& row, std::vector<float>& out) = 0;

  std::string format;           // pte | tflite
  std::string runtime;          // executorch | litert
  std::string runtime_version;  // the wheel's version
  std::string delegate;
  int threads = 0;              // 0: the runtime's default (reported as null)
};

//! The ExecuTorch plugin's entry points (lib/libcompleak_executorch.so, dlopen'd by the binary).
extern "C" {
typedef Model* (*EtOpenFn)(const char* path, int threads, char* error, size_t error_size);
//! Program::load(loader, Program::Verification::InternalConsistency) of the file: 0 when it verifies, else the
//! one-line reason in `error`.
typedef int (*EtVerifyFn)(const char* path, char* error, size_t error_size);
typedef const char* (*EtVersionFn)();
}

// ----------------------------------------------------------------------- helpers shared by the runtimes

//! One line of at most `limit` characters (whitespace runs collapsed), for error messages.
std::string one_line(const std::string& text, size_t limit = 300);
//! "[1, 28, 28, 1]"
std::string shape_text(const std::vector<int64_t>& shape);
//! Quantize like the Python runner: clip(round_half_even(x / scale + zp)) in float32 arithmetic.
void quantize(const float* x, size_t n, const std::string& dtype, double scale, int64_t zp, void* out);
//! Dequantize: (q - zp) * scale in float32; raw integers become floats when scale is 0.
void dequantize(const void* q, size_t n, const std::string& dtype, double scale, int64_t zp, float* out);
//! Size in bytes of one element of `dtype` (0: unsupported).
size_t dtype_size(const std::string& dtype);

}  // namespace compleak
