// .tflite through LiteRT's C API (the CompiledModel API of libLiteRt.so, from the ai-edge-litert wheel).
//
// libLiteRt.so is dlopen'd at the first load, so the binary runs where it is absent (then a .tflite load says so
// in one line). The few C types used are declared here as LiteRT documents them ABI-stable
// (litert/c/litert_model_types.h, litert_layout.h: LiteRtRankedTensorType is 72 bytes on LP64).
#include "litert_model.h"

#include <dlfcn.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace compleak {
namespace {

using Status = int;
using Handle = void*;
constexpr Status kOk = 0;
constexpr int kHwCpu = 1;
constexpr int kLockRead = 0, kLockWrite = 1;

struct Layout {
  unsigned int rank : 7;
  bool has_strides : 1;
  int32_t dimensions[8];
  uint32_t strides[8];
};
struct RankedTensorType {
  int32_t element_type;
  Layout layout;
};
struct PerTensorQuant {
  float scale;
  int64_t zero_point;
};
static_assert(sizeof(Layout) == 68, "LiteRtLayout ABI");
static_assert(sizeof(RankedTensorType) == 72, "LiteRtRankedTensorType ABI");
static_assert(sizeof(PerTensorQuant) == 16, "LiteRtQuantizationPerTensor ABI");

struct Api {
  void* lib = nullptr;
  Status (*create_environment)(int, const void*, Handle*) = nullptr;
  void (*destroy_environment)(Handle) = nullptr;
  Status (*create_model_from_file)(Handle, const char*, Handle*) = nullptr;
  void (*destroy_model)(Handle) = nullptr;
  Status (*get_model_signature)(Handle, size_t, Handle*) = nullptr;
  Status (*get_num_signature_inputs)(Handle, size_t*) = nullptr;
  Status (*get_num_signature_outputs)(Handle, size_t*) = nullptr;
  Status (*get_signature_input_tensor)(Handle, size_t, Handle*) = nullptr;
  Status (*get_signature_output_tensor)(Handle, size_t, Handle*) = nullptr;
  Status (*get_signature_input_name)(Handle, size_t, const char**) = nullptr;
  Status (*get_signature_output_name)(Handle, size_t, const char**) = nullptr;
  Status (*get_ranked_tensor_type)(Handle, RankedTensorType*) = nullptr;
  Status (*get_quantization_type_id)(Handle, int*) = nullptr;
  Status (*get_per_tensor_quantization)(Handle, PerTensorQuant*) = nullptr;
  Status (*create_options)(Handle*) = nullptr;
  void (*destroy_options)(Handle) = nullptr;
  Status (*set_hardware_accelerators)(Handle, int) = nullptr;
  Status (*create_opaque_options)(const char*, void*, void (*)(void*), Handle*) = nullptr;
  Status (*add_opaque_options)(Handle, Handle) = nullptr;
  Status (*create_compiled_model)(Handle, Handle, Handle, Handle*) = nullptr;
  void (*destroy_compiled_model)(Handle) = nullptr;
  Status (*input_requirements)(Handle, size_t, size_t, Handle*) = nullptr;
  Status (*output_requirements)(Handle, size_t, size_t, Handle*) = nullptr;
  Status (*input_layout)(Handle, size_t, size_t, Layout*) = nullptr;
  Status (*output_layouts)(Handle, size_t, size_t, Layout*, bool) = nullptr;
  Status (*resize_input)(Handle, size_t, size_t, const int*, size_t) = nullptr;
  Status (*create_buffer_from_requirements)(Handle, const RankedTensorType*, Handle, Handle*) = nullptr;
  void (*destroy_buffer)(Handle) = nullptr;
  Status (*buffer_packed_size)(Handle, size_t*) = nullptr;
  Status (*lock_buffer)(Handle, void**, int) = nullptr;
  Status (*unlock_buffer)(Handle) = nullptr;
  Status (*run)(Handle, size_t, size_t, Handle*, size_t, Handle*) = nullptr;
};

Api g_api;
std::string g_api_error;
bool g_api_tried = false;

std::string status_text(Status s) {
  switch (s) {
    case 1: return "invalid argument";
    case 2: return "memory allocation failure";
    case 3: return "runtime failure";
    case 4: return "missing input tensor";
    case 5: return "unsupported";
    case 6: return "not found";
    case 500: return "file I/O error";
    case 501: return "invalid flatbuffer";
    case 504: return "compilation error";
    default: return "status " + std::to_string(s);
  }
}

template <typename F>
bool resolve(F& field, const char* name, std::vector<std::string>& missing) {
  field = reinterpret_cast<F>(dlsym(g_api.lib, name));
  if (!field) missing.push_back(name);
  return field != nullptr;
}

const Api* api(std::string* error) {
  if (g_api_tried) {
    if (!g_api.lib) *error = g_api_error;
    return g_api.lib ? &g_api : nullptr;
  }
  g_api_tried = true;
  std::string tried;
  for (const std::string& path : library_candidates("libLiteRt.so")) {
    g_api.lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (g_api.lib) break;
    const char* why = dlerror();
    if (tried.empty()) tried = why ? why : path;
  }
  if (!g_api.lib) {
    g_api_error = "the LiteRT runtime (libLiteRt.so) is not available here; rebuild the bundle where ai-edge-litert "
                  "is installed (pip install ai-edge-litert; compleak runners build) [" + one_line(tried, 90) + "]";
    *error = g_api_error;
    return nullptr;
  }
  std::vector<std::string> missing;
  resolve(g_api.create_environment, "LiteRtCreateEnvironment", missing);
  resolve(g_api.destroy_environment, "LiteRtDestroyEnvironment", missing);
  resolve(g_api.create_model_from_file, "LiteRtCreateModelFromFile", missing);
  resolve(g_api.destroy_model, "LiteRtDestroyModel", missing);
  resolve(g_api.get_model_signature, "LiteRtGetModelSignature", missing);
  resolve(g_api.get_num_signature_inputs, "LiteRtGetNumSignatureInputs", missing);
  resolve(g_api.get_num_signature_outputs, "LiteRtGetNumSignatureOutputs", missing);
  resolve(g_api.get_signature_input_tensor, "LiteRtGetSignatureInputTensorByIndex", missing);
  resolve(g_api.get_signature_output_tensor, "LiteRtGetSignatureOutputTensorByIndex", missing);
  resolve(g_api.get_signature_input_name, "LiteRtGetSignatureInputName", missing);
  resolve(g_api.get_signature_output_name, "LiteRtGetSignatureOutputName", missing);
  resolve(g_api.get_ranked_tensor_type, "LiteRtGetRankedTensorType", missing);
  resolve(g_api.get_quantization_type_id, "LiteRtGetQuantizationTypeId", missing);
  resolve(g_api.get_per_tensor_quantization, "LiteRtGetPerTensorQuantization", missing);
  resolve(g_api.create_options, "LiteRtCreateOptions", missing);
  resolve(g_api.destroy_options, "LiteRtDestroyOptions", missing);
  resolve(g_api.set_hardware_accelerators, "LiteRtSetOptionsHardwareAccelerators", missing);
  resolve(g_api.create_compiled_model, "LiteRtCreateCompiledModel", missing);
  resolve(g_api.destroy_compiled_model, "LiteRtDestroyCompiledModel", missing);
  resolve(g_api.input_requirements, "LiteRtGetCompiledModelInputBufferRequirements", missing);
  resolve(g_api.output_requirements, "LiteRtGetCompiledModelOutputBufferRequirements", missing);
  resolve(g_api.output_layouts, "LiteRtGetCompiledModelOutputTensorLayouts", missing);
  resolve(g_api.create_buffer_from_requirements, "LiteRtCreateManagedTensorBufferFromRequirements", missing);
  resolve(g_api.destroy_buffer, "LiteRtDestroyTensorBuffer", missing);
  resolve(g_api.buffer_packed_size, "LiteRtGetTensorBufferPackedSize", missing);
  resolve(g_api.lock_buffer, "LiteRtLockTensorBuffer", missing);
  resolve(g_api.unlock_buffer, "LiteRtUnlockTensorBuffer", missing);
  resolve(g_api.run, "LiteRtRunCompiledModel", missing);
  std::vector<std::string> optional;  // batch resizing and thread options: used when present
  resolve(g_api.input_layout, "LiteRtGetCompiledModelInputTensorLayout", optional);
  resolve(g_api.resize_input, "LiteRtCompiledModelResizeInputTensorNonStrict", optional);
  resolve(g_api.create_opaque_options, "LiteRtCreateOpaqueOptions", optional);
  resolve(g_api.add_opaque_options, "LiteRtAddOpaqueOptions", optional);
  if (!missing.empty()) {
    dlclose(g_api.lib);
    g_api.lib = nullptr;
    g_api_error = "libLiteRt.so lacks the LiteRT C API function " + missing[0] +
                  " (an incompatible ai-edge-litert version); rebuild the bundle with ai-edge-litert 2.x";
    *error = g_api_error;
    return nullptr;
  }
  return &g_api;
}

std::string dtype_of(int32_t element_type) {
  switch (element_type) {
    case 1: return "float32";
    case 2: return "int32";
    case 3: return "uint8";
    case 4: return "int64";
    case 7: return "int16";
    case 9: return "int8";
    case 10: return "float16";
    case 11: return "float64";
    default: return "type" + std::to_string(element_type);
  }
}

class LiteRtModel final : public Model {
 public:
  LiteRtModel(const std::string& path, int threads) : path_(path) {
    std::string err;
    const Api* a = api(&err);
    if (!a) throw RunnerError(path + ": " + err);
    a_ = a;
    format = "tflite";
    runtime = "litert";
    runtime_version = COMPLEAK_LITERT_VERSION;
    delegate = "LiteRT CompiledModel, CPU accelerator (XNNPACK)";
    check(a_->create_environment(0, nullptr, &env_), "cannot create a LiteRT environment");
    Status s = a_->create_model_from_file(env_, path.c_str(), &model_);
    if (s != kOk) fail("LiteRT " + runtime_version + " cannot load this TF-Lite model", s);
    check(a_->get_model_signature(model_, 0, &signature_), "the model has no signature");
    check(a_->get_num_signature_inputs(signature_, &n_inputs_), "cannot count the model inputs");
    check(a_->get_num_signature_outputs(signature_, &n_outputs_), "cannot count the model outputs");
    if (n_inputs_ != 1 || n_outputs_ < 1)
      throw RunnerError(path + ": a TF-Lite model with " + std::to_string(n_inputs_) + " inputs and " +
                        std::to_string(n_outputs_) + " outputs; the runner takes one image input");
    Handle tensor = nullptr;
    check(a_->get_signature_input_tensor(signature_, 0, &tensor), "cannot read the input tensor");
    check(a_->get_ranked_tensor_type(tensor, &in_type_), "the input tensor has no static rank");
    in_spec_ = spec(tensor, in_type_, a_->get_signature_input_name, 0);
    out_types_.resize(n_outputs_);
    for (size_t i = 0; i < n_outputs_; ++i) {
      check(a_->get_signature_output_tensor(signature_, i, &tensor), "cannot read an output tensor");
      check(a_->get_ranked_tensor_type(tensor, &out_types_[i]), "an output tensor has no static rank");
      if (i == 0) out_spec_ = spec(tensor, out_types_[0], a_->get_signature_output_name, 0);
    }
    if (dtype_size(in_spec_.dtype) == 0 || dtype_size(out_spec_.dtype) == 0)
      throw RunnerError(path + ": unsupported tensor types (input " + in_spec_.dtype + ", output " +
                        out_spec_.dtype + ")");
    out_row_ = 1;  // output values per query (0: not known from the model's output shape)
    for (size_t i = 1; i < out_spec_.shape.size(); ++i)
      out_row_ = out_spec_.shape[i] > 0 ? out_row_ * out_spec_.shape[i] : 0;
    compile(threads);
    batch_ = in_type_.layout.rank > 0 && in_type_.layout.dimensions[0] > 0 ? in_type_.layout.dimensions[0] : 1;
    if (a_->input_layout) {
      Layout l{};
      if (a_->input_layout(compiled_, 0, 0, &l) == kOk && l.rank > 0 && l.dimensions[0] > 0) batch_ = l.dimensions[0];
    }
    resizable_ = a_->resize_input != nullptr;
  }

  ~LiteRtModel() override {
    free_buffers();
    if (compiled_) a_->destroy_compiled_model(compiled_);
    if (model_) a_->destroy_model(model_);
    if (env_) a_->destroy_environment(env_);
  }

  TensorSpec input() const override { return in_spec_; }
  TensorSpec output() const override { return out_spec_; }
  int64_t max_batch() const override { return resizable_ ? 0 : 1; }

  void invoke(const float* x, int64_t n, const std::vector<int64_t>& row, std::vector<float>& out) override {
    size_t row_elems = 1;
    for (int64_t d : row) row_elems *= static_cast<size_t>(d);
    if (n != batch_) {
      if (resizable_ && !resize(n, row)) resizable_ = false;
      if (!resizable_) {
        if (batch_ != 1 && !resize(1, row))
          throw ModelFault(path_ + ": LiteRT cannot run this model on " + std::to_string(n) + " queries at once "
                           "nor on one; check the input shape");
        for (int64_t i = 0; i < n; ++i) invoke(x + i * row_elems, 1, row, out);
        return;
      }
    }
    if (in_buf_ == nullptr) make_buffers();
    size_t in_count = static_cast<size_t>(n) * row_elems;
    if (in_bytes_ != in_count * dtype_size(in_spec_.dtype))
      throw ModelFault(path_ + ": LiteRT input buffer of " + std::to_string(in_bytes_) + " bytes for " +
                       std::to_string(n) + " queries of shape " + shape_text(row) + "; check the input shape");
    void* mem = nullptr;
    fault(a_->lock_buffer(in_buf_, &mem, kLockWrite), "cannot lock the input buffer");
    if (in_spec_.dtype == "float32")
      std::memcpy(mem, x, in_count * sizeof(float));
    else if (in_spec_.scale != 0.0)
      quantize(x, in_count, in_spec_.dtype, in_spec_.scale, in_spec_.zero_point, mem);
    else {
      a_->unlock_buffer(in_buf_);
      throw RunnerError(path_ + ": the model takes " + in_spec_.dtype + " inputs without quantization "
                        "parameters; the runner feeds float32 or quantized images");
    }
    a_->unlock_buffer(in_buf_);
    Status s = a_->run(compiled_, 0, 1, &in_buf_, out_bufs_.size(), out_bufs_.data());
    if (s != kOk) fault(s, "LiteRT invoke failed");
    size_t esize = dtype_size(out_spec_.dtype);
    size_t count = out_bytes_ / esize;
    if (count == 0 || count % static_cast<size_t>(n) != 0 || (out_row_ > 0 && count != size_t(n * out_row_)))
      throw ModelFault(path_ + ": LiteRT produced " + std::to_string(count) + " output values for " +
                       std::to_string(n) + " queries" + (out_row_ > 0 ? " (" + std::to_string(out_row_) +
                       " per query expected)" : std::string()));
    fault(a_->lock_buffer(out_bufs_[0], &mem, kLockRead), "cannot lock the output buffer");
    size_t at = out.size();
    out.resize(at + count);
    dequantize(mem, count, out_spec_.dtype, out_spec_.scale, out_spec_.zero_point, out.data() + at);
    a_->unlock_buffer(out_bufs_[0]);
  }

 private:
  void fail(const std::string& what, Status s) const {
    throw RunnerError(path_ + ": " + what + " (" + status_text(s) + ")");
  }
  void check(Status s, const std::string& what) const {
    if (s != kOk) fail(what, s);
  }
  //! A failure while running: the model is in an unknown state (the runner drops it).
  void fault(Status s, const std::string& what) const {
    if (s != kOk) throw ModelFault(path_ + ": " + what + " (" + status_text(s) + ")");
  }

  TensorSpec spec(Handle tensor, const RankedTensorType& type, Status (*name_of)(Handle, size_t, const char**),
                  size_t index) const {
    TensorSpec t;
    const char* name = nullptr;
    if (name_of(signature_, index, &name) == kOk && name) t.name = name;
    for (unsigned i = 0; i < type.layout.rank && i < 8; ++i) t.shape.push_back(type.layout.dimensions[i]);
    t.dtype = dtype_of(type.element_type);
    int qtype = 0;
    PerTensorQuant q{};
    if (a_->get_quantization_type_id(tensor, &qtype) == kOk && qtype == 1 &&
        a_->get_per_tensor_quantization(tensor, &q) == kOk && q.scale != 0.0f) {
      t.scale = q.scale;
      t.zero_point = q.zero_point;
    }
    return t;
  }

  void compile(int threads) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      Handle options = nullptr;
      check(a_->create_options(&options), "cannot create LiteRT options");
      a_->set_hardware_accelerators(options, kHwCpu);
      bool with_threads = attempt == 0 && threads > 0 && a_->create_opaque_options && a_->add_opaque_options;
      if (with_threads) {  // the CPU accelerator's options: TOML text under the identifier "xnnpack"
        std::string toml = "num_threads = " + std::to_string(threads) + "\n";
        char* payload = strdup(toml.c_str());
        Handle opaque = nullptr;
        if (payload && a_->create_opaque_options("xnnpack", payload, free, &opaque) == kOk) {
          if (a_->add_opaque_options(options, opaque) != kOk) with_threads = false;
        } else {
          free(payload);
          with_threads = false;
        }
      }
      Status s = a_->create_compiled_model(env_, model_, options, &compiled_);
      a_->destroy_options(options);
      if (s == kOk) {
        this->threads = with_threads ? threads : 0;
        return;
      }
      if (!(attempt == 0 && threads > 0)) fail("LiteRT " + runtime_version + " cannot compile this model", s);
    }
  }

  //! Resize the input to `n` queries; false when LiteRT refuses, or when the output does not follow the batch (a
  //! batch fixed inside the model, e.g. Flatten's Reshape to [1, K]: running it would write n queries' values into
  //! a one-query graph). Then the caller runs one query at a time, as the Python runner's fallback does.
  bool resize(int64_t n, const std::vector<int64_t>& row) {
    std::vector<int> dims{static_cast<int>(n)};
    for (int64_t d : row) dims.push_back(static_cast<int>(d));
    if (dims.size() != in_type_.layout.rank) return false;
    if (a_->resize_input(compiled_, 0, 0, dims.data(), dims.size()) != kOk) return false;
    free_buffers();
    batch_ = n;
    if (out_row_ > 0) {
      std::vector<Layout> layouts(n_outputs_);
      if (a_->output_layouts(compiled_, 0, n_outputs_, layouts.data(), true) != kOk ||
          elements(layouts[0]) != n * out_row_) {
        batch_ = 0;  // neither n nor the old batch: the caller resizes to one query
        return false;
      }
    }
    return true;
  }

  static int64_t elements(const Layout& l) {
    int64_t e = 1;
    for (unsigned i = 0; i < l.rank && i < 8; ++i) e = l.dimensions[i] > 0 ? e * l.dimensions[i] : -1;
    return l.rank == 0 ? -1 : e;
  }

  void free_buffers() {
    if (in_buf_) a_->destroy_buffer(in_buf_);
    in_buf_ = nullptr;
    for (Handle b : out_bufs_) a_->destroy_buffer(b);
    out_bufs_.clear();
  }

  void make_buffers() {
    RankedTensorType in_type = in_type_;
    in_type.layout.dimensions[0] = static_cast<int32_t>(batch_);
    std::vector<Layout> layouts(n_outputs_);
    fault(a_->output_layouts(compiled_, 0, n_outputs_, layouts.data(), true), "cannot read the output shapes");
    Handle req = nullptr;
    fault(a_->input_requirements(compiled_, 0, 0, &req), "cannot read the input buffer requirements");
    fault(a_->create_buffer_from_requirements(env_, &in_type, req, &in_buf_), "cannot create the input buffer");
    fault(a_->buffer_packed_size(in_buf_, &in_bytes_), "cannot size the input buffer");
    for (size_t i = 0; i < n_outputs_; ++i) {
      RankedTensorType t = out_types_[i];
      t.layout = layouts[i];
      fault(a_->output_requirements(compiled_, 0, i, &req), "cannot read the output buffer requirements");
      Handle b = nullptr;
      fault(a_->create_buffer_from_requirements(env_, &t, req, &b), "cannot create an output buffer");
      out_bufs_.push_back(b);
      if (i == 0) fault(a_->buffer_packed_size(b, &out_bytes_), "cannot size the output buffer");
    }
  }

  const Api* a_ = nullptr;
  std::string path_;
  Handle env_ = nullptr, model_ = nullptr, signature_ = nullptr, compiled_ = nullptr;
  size_t n_inputs_ = 0, n_outputs_ = 0;
  RankedTensorType in_type_{};
  std::vector<RankedTensorType> out_types_;
  TensorSpec in_spec_, out_spec_;
  int64_t batch_ = 1;
  int64_t out_row_ = 0;
  bool resizable_ = true;
  Handle in_buf_ = nullptr;
  std::vector<Handle> out_bufs_;
  size_t in_bytes_ = 0, out_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Model> open_litert(const std::string& path, int threads) {
  return std::make_unique<LiteRtModel>(path, threads);
}

std::string litert_status(bool* available) {
  std::string err;
  *available = api(&err) != nullptr;
  return *available ? std::string(COMPLEAK_LITERT_VERSION) : err;
}

}  // namespace compleak
