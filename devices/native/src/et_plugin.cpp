// .pte through the ExecuTorch runtime of the executorch wheel (lib/libcompleak_executorch.so).
//
// Linked against libexecutorch.so and, kept with --no-as-needed, the optimized and quantized kernel libraries,
// the XNNPACK backend and the thread pool: they register their kernels/backend from static initializers when
// this plugin is loaded. The binary dlopens this plugin at the first .pte load, so it runs without ExecuTorch.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/runtime.h>

#include "model.h"

// threadpool.h is not among the wheel's headers; libexecutorch_threadpool.so exports these two (non-virtual)
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace compleak {
namespace {

using executorch::aten::ScalarType;
using executorch::extension::FileDataLoader;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::Program;

std::string dtype_of(ScalarType t) {
  switch (t) {
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Short: return "int16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Half: return "float16";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    default: return "scalar_type_" + std::to_string(static_cast<int>(t));
  }
}

std::string error_text(Error e) {
  return "ExecuTorch error " + std::to_string(static_cast<int>(e)) + ", " + executorch::runtime::to_string(e);
}

class EtModel final : public Model {
 public:
  EtModel(const std::string& path, int threads) : path_(path) {
    format = "pte";
    runtime = "executorch";
    runtime_version = COMPLEAK_EXECUTORCH_VERSION;
    delegate = "XNNPACK delegate + optimized/quantized kernels";
    if (threads > 0) {
      auto* pool = executorch::extension::threadpool::get_threadpool();
      if (pool && pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads))) this->threads = threads;
    }
    module_ = std::make_unique<Module>(path, Module::LoadMode::File);
    Error e = module_->load(Program::Verification::InternalConsistency);  // verified again: what runs is checked
    if (e != Error::Ok)
      throw RunnerError(path + ": not a valid ExecuTorch program (" + error_text(e) + "); the file is truncated or "
                        "corrupt: copy or rebuild the artifact");
    e = module_->load_method("forward");
    if (e != Error::Ok)
      throw RunnerError(path + ": executorch " + runtime_version + " cannot load this program (" + error_text(e) +
                        "; a missing kernel or backend is named on stderr)");
    auto meta = module_->method_meta("forward");
    if (!meta.ok()) throw RunnerError(path + ": executorch cannot read the program's forward method");
    if (meta->num_inputs() != 1 || meta->num_outputs() < 1)
      throw RunnerError(path + ": a program with " + std::to_string(meta->num_inputs()) +
                        " inputs; the runner takes one image input");
    auto in = meta->input_tensor_meta(0);
    auto out = meta->output_tensor_meta(0);
    if (!in.ok() || !out.ok()) throw RunnerError(path + ": the program's input or output is not a tensor");
    in_spec_.name = "input_0";
    for (auto d : in->sizes()) in_spec_.shape.push_back(d);
    in_spec_.dtype = dtype_of(in->scalar_type());
    out_spec_.name = "output_0";
    for (auto d : out->sizes()) out_spec_.shape.push_back(d);
    out_spec_.dtype = dtype_of(out->scalar_type());
    if (in_spec_.dtype != "float32")
      throw RunnerError(path + ": the program takes " + in_spec_.dtype + " inputs; the runner feeds float32");
    if (dtype_size(out_spec_.dtype) == 0)
      throw RunnerError(path + ": the program returns " + out_spec_.dtype + " outputs");
    batch_ = in_spec_.shape.empty() || in_spec_.shape[0] <= 0 ? 1 : in_spec_.shape[0];
  }

  TensorSpec input() const override { return in_spec_; }
  TensorSpec output() const override { return out_spec_; }
  int64_t max_batch() const override { return batch_; }

  void invoke(const float* x, int64_t n, const std::vector<int64_t>& row, std::vector<float>& out) override {
    size_t row_elems = 1;
    for (int64_t d : row) row_elems *= static_cast<size_t>(d);
    // a fixed batch dimension: pad the last batch with zeros, drop the padding after (as the Python runner)
    buf_.assign(static_cast<size_t>(batch_) * row_elems, 0.0f);
    std::memcpy(buf_.data(), x, static_cast<size_t>(n) * row_elems * sizeof(float));
    std::vector<executorch::aten::SizesType> sizes{static_cast<executorch::aten::SizesType>(batch_)};
    for (int64_t d : row) sizes.push_back(static_cast<executorch::aten::SizesType>(d));
    auto tensor = executorch::extension::from_blob(buf_.data(), sizes, ScalarType::Float);
    auto result = module_->execute("forward", {executorch::runtime::EValue(*tensor)});
    if (!result.ok()) throw ModelFault(path_ + ": executorch execute failed (" + error_text(result.error()) + ")");
    if (result->empty() || !(*result)[0].isTensor())
      throw ModelFault(path_ + ": the program's first output is not a tensor");
    const auto& y = (*result)[0].toTensor();
    size_t total = static_cast<size_t>(y.numel());
    if (y.dim() < 1 || y.size(0) != batch_ || total % static_cast<size_t>(batch_) != 0)
      throw ModelFault(path_ + ": executorch returned " + std::to_string(total) + " values for a batch of " +
                       std::to_string(batch_));
    size_t per_row = total / static_cast<size_t>(batch_);
    size_t at = out.size();
    out.resize(at + static_cast<size_t>(n) * per_row);
    dequantize(y.const_data_ptr(), static_cast<size_t>(n) * per_row, dtype_of(y.scalar_type()), 0.0, 0,
               out.data() + at);
  }

 private:
  std::string path_;
  std::unique_ptr<Module> module_;
  TensorSpec in_spec_, out_spec_;
  int64_t batch_ = 1;
  std::vector<float> buf_;
};

}  // namespace
}  // namespace compleak

extern "C" __attribute__((visibility("default"))) compleak::Model* compleak_executorch_open(
    const char* path, int threads, char* error, size_t error_size) {
  try {
    executorch::runtime::runtime_init();
    return new compleak::EtModel(path, threads);
  } catch (const std::exception& exc) {
    std::snprintf(error, error_size, "%s", exc.what());
  } catch (...) {
    std::snprintf(error, error_size, "%s: executorch failed to load the program", path);
  }
  return nullptr;
}

extern "C" __attribute__((visibility("default"))) int compleak_executorch_verify(const char* path, char* error,
                                                                                 size_t error_size) {
  try {
    executorch::runtime::runtime_init();
    auto loader = executorch::extension::FileDataLoader::from(path);
    if (!loader.ok()) {
      std::snprintf(error, error_size, "%s: executorch cannot read the file (%s)", path,
                    compleak::error_text(loader.error()).c_str());
      return 1;
    }
    auto program = executorch::runtime::Program::load(&loader.get(),
                                                      executorch::runtime::Program::Verification::InternalConsistency);
    if (!program.ok()) {
      std::snprintf(error, error_size, "%s: not a valid ExecuTorch program (%s; verification failed); the file is "
                    "truncated or corrupt: copy or rebuild the artifact", path,
                    compleak::error_text(program.error()).c_str());
      return 1;
    }
    return 0;
  } catch (const std::exception& exc) {
    std::snprintf(error, error_size, "%s", exc.what());
  } catch (...) {
    std::snprintf(error, error_size, "%s: executorch failed to verify the program", path);
  }
  return 1;
}

extern "C" __attribute__((visibility("default"))) const char* compleak_executorch_version() {
  return COMPLEAK_EXECUTORCH_VERSION;
}
