// compleak-runner: the native on-device runner (docs/native.md).
//
//   compleak-runner --serve     the runner protocol: requests on stdin, replies on stdout (stdout of libraries
//                               goes to stderr). Protocol: docs/native.md, "Runner protocol".
//   compleak-runner --probe     one JSON line: machine, runtimes that load here (each tried in a child process)
//   compleak-runner --version
//   compleak-runner --check-model FD PATH RUNTIME THREADS
//                               (internal) the contained load check of --serve: verify, load and run PATH once,
//                               one line ("ok" or "error: ...") to file descriptor FD; see check_contained()
//
// Each may be preceded by `--root DIR [--loader LOADER]`: DIR is the bundle (bin/, lib/, manifest.json) and LOADER
// the dynamic loader the runner was started through (the bundle's own, `LOADER --library-path DIR/lib
// DIR/bin/compleak-runner --root DIR --loader LOADER --serve`; docs/native.md, "The bundled loader"). Then
// /proc/self/exe names the loader, not the runner, so the runner finds its files from DIR and starts its load
// checks through LOADER. Without --root the runner is where /proc/self/exe says.
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bundle_check.h"
#include "litert_model.h"
#include "model.h"
#include "protocol.h"
#include "sha256.h"
#include "tflite_verify.h"

#ifndef COMPLEAK_RUNNER_VERSION
#define COMPLEAK_RUNNER_VERSION "0.0.0"
#endif
#ifndef COMPLEAK_EXECUTORCH_VERSION
#define COMPLEAK_EXECUTORCH_VERSION ""
#endif

using nlohmann::json;

namespace compleak {

constexpr int kProtocol = 1;
constexpr const char* kEtPlugin = "libcompleak_executorch.so";

constexpr const char* kBinaryName = "compleak-runner";

//! The bundle folder given with --root ("" when the runner was started directly).
static std::string g_root;
//! The dynamic loader given with --loader ("" when the runner was started directly).
static std::string g_loader;

static std::string exe_path() {
  if (!g_root.empty()) return g_root + "/bin/" + kBinaryName;
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  buf[n] = '\0';
  return buf;
}

static std::string exe_dir() {
  std::string path = exe_path();
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

static std::string exe_name() {
  std::string path = exe_path();
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::vector<std::string> library_candidates(const std::string& name) {
  std::vector<std::string> out;
  std::string dir = exe_dir();
  if (!dir.empty()) out.push_back(dir + "/../lib/" + name);
  out.push_back(name);
  return out;
}

static bool bundled(const std::string& name) {
  struct stat st;
  std::string dir = exe_dir();
  return !dir.empty() && stat((dir + "/../lib/" + name).c_str(), &st) == 0;
}

static double now_epoch() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

static json machine_info() {
  struct utsname u;
  if (uname(&u) != 0) return {{"machine", nullptr}, {"system", nullptr}};
  return {{"machine", u.machine}, {"system", std::string(u.sysname) + " " + u.release}};
}

// ------------------------------------------------------------------------------------------- runtimes

static void* g_et = nullptr;
static std::string g_et_error;

static EtOpenFn executorch_open(std::string* error) {
  if (!g_et && g_et_error.empty()) {
    std::string first;
    for (const std::string& path : library_candidates(kEtPlugin)) {
      g_et = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (g_et) break;
      const char* why = dlerror();
      if (first.empty()) first = why ? why : path;
    }
    if (!g_et)
      g_et_error = "the ExecuTorch runtime is not available here; rebuild the bundle where executorch is "
                   "installed (pip install executorch==1.5.1; compleak runners build) [" + one_line(first, 90) + "]";
  }
  if (!g_et) {
    *error = g_et_error;
    return nullptr;
  }
  auto fn = reinterpret_cast<EtOpenFn>(dlsym(g_et, "compleak_executorch_open"));
  if (!fn) *error = std::string(kEtPlugin) + " has no compleak_executorch_open; rebuild the bundle";
  return fn;
}

static std::string detect_format(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw RunnerError(path + ": cannot read model file (" + std::strerror(errno) + ")");
  unsigned char head[64];
  size_t n = std::fread(head, 1, sizeof(head), f);
  std::fclose(f);
  if (n >= 8 && std::memcmp(head + 4, "TFL3", 4) == 0) return "tflite";
  if (n >= 8 && head[4] == 'E' && head[5] == 'T' && std::isdigit(head[6]) && std::isdigit(head[7])) return "pte";
  if (n >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0)
    throw RunnerError(path + ": a zip archive (PyTorch Mobile .ptl?); the native runner runs .tflite and .pte "
                             "only: use --runner python on a device with Python and torch");
  if (n >= 2 && head[0] == 0x08)
    throw RunnerError(path + ": not a TF-Lite or ExecuTorch model (ONNX?); the native runner runs .tflite and "
                             ".pte only: use --runner python on a device with onnxruntime");
  throw RunnerError(path + ": " + (n == 0 ? "an empty file" : "an unknown file") +
                    ", not a TF-Lite or ExecuTorch model; check the artifact path or rebuild it");
}

//! The runtime a format runs on here, checked against a requested `runtime` ("" = the format's own).
static void check_runtime(const std::string& fmt, const std::string& runtime) {
  if (fmt == "tflite") {
    if (!runtime.empty() && runtime != "litert" && runtime != "ai_edge_litert" && runtime != "tflite_runtime")
      throw RunnerError("runtime '" + runtime + "' cannot run tflite models in the native runner; use litert");
  } else if (!runtime.empty() && runtime != "executorch") {
    throw RunnerError("runtime '" + runtime + "' cannot run pte models in the native runner; use executorch");
  }
}

//! "litert 2.3.0" / "executorch 1.5.1": the runtime that runs `fmt`, for messages.
static std::string runtime_name(const std::string& fmt) {
  return fmt == "tflite" ? std::string("litert ") + COMPLEAK_LITERT_VERSION
                         : std::string("executorch ") + COMPLEAK_EXECUTORCH_VERSION;
}

//! Verify the model file, then load it: the TF-Lite flatbuffer verifier before LiteRT sees a .tflite, ExecuTorch's
//! Program::load(..., Verification::InternalConsistency) before a .pte is loaded (and the Module loads it verified).
static std::unique_ptr<Model> open_model(const std::string& path, const std::string& fmt, int threads) {
  if (fmt == "tflite") {
    verify_tflite_file(path);
    return open_litert(path, threads);
  }
  std::string err;
  EtOpenFn open = executorch_open(&err);
  if (!open) throw RunnerError(path + ": " + err);
  char buf[1024] = {0};
  auto verify = reinterpret_cast<EtVerifyFn>(dlsym(g_et, "compleak_executorch_verify"));
  if (!verify) throw RunnerError(std::string(kEtPlugin) + " has no compleak_executorch_verify; rebuild the bundle");
  if (verify(path.c_str(), buf, sizeof(buf)) != 0)
    throw RunnerError(one_line(buf[0] ? buf : "executorch refused the program"));
  Model* m = open(path.c_str(), threads, buf, sizeof(buf));
  if (!m) throw RunnerError(one_line(buf[0] ? buf : "executorch failed to load the program"));
  return std::unique_ptr<Model>(m);
}

//! Run the loaded model once on one all-zero query (its own input shape, when every dimension but the batch is
//! known) and check it answers one query's worth of outputs: the first inference, done where a crash is contained.
static void trial_inference(const std::string& path, Model& m) {
  const TensorSpec in = m.input(), out = m.output();
  if (in.shape.size() < 2) return;
  std::vector<int64_t> row(in.shape.begin() + 1, in.shape.end());
  int64_t elems = 1;
  for (int64_t d : row) {
    if (d <= 0 || d > (int64_t(1) << 24)) return;
    elems *= d;
    if (elems > (int64_t(1) << 26)) return;
  }
  std::vector<float> x(static_cast<size_t>(elems), 0.0f), values;
  m.invoke(x.data(), 1, row, values);
  int64_t per = 1;
  for (size_t i = 1; i < out.shape.size(); ++i) per = out.shape[i] > 0 ? per * out.shape[i] : -1;
  if (values.empty() || (per > 0 && static_cast<int64_t>(values.size()) != per))
    throw RunnerError(path + ": the runtime returned " + std::to_string(values.size()) + " values for one query "
                      "(the model's output " + shape_text(out.shape) + " says " + std::to_string(per) + ")");
}

//! --check-model: what check_contained() runs in its child process; the answer is one line to `fd`.
static int check_model_main(int fd, const std::string& path, const std::string& runtime, int threads) {
  std::string answer = "ok";
  try {
    std::string fmt = detect_format(path);
    check_runtime(fmt, runtime);
    std::unique_ptr<Model> m = open_model(path, fmt, threads);
    trial_inference(path, *m);
  } catch (const std::bad_alloc&) {
    answer = "error: " + path + ": out of memory loading the model";
  } catch (const std::exception& exc) {
    answer = std::string("error: ") + one_line(exc.what());
  }
  answer += "\n";
  for (size_t done = 0; done < answer.size();) {
    ssize_t k = write(fd, answer.data() + done, answer.size() - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    done += static_cast<size_t>(k);
  }
  close(fd);
  _exit(0);  // no destructors: a runtime that crashes on unload must not turn a good answer into a crash
}

//! The command that starts this runner again: the binary itself, or (started through a loader with --root and
//! --loader) `LOADER --library-path ROOT/lib ROOT/bin/compleak-runner --root ROOT --loader LOADER`.
static std::vector<std::string> self_argv() {
  if (g_loader.empty() || g_root.empty()) return {exe_path()};
  return {g_loader, "--inhibit-cache", "--library-path", g_root + "/lib", exe_path(), "--root", g_root,
          "--loader", g_loader};
}

//! Seconds a contained load check may take (verify, load, one inference) before it is stopped.
constexpr int kCheckSeconds = 300;

//! The contained load: verify, load and run the model once in a child process (this binary again, --check-model),
//! so a runtime that crashes, aborts or hangs on a corrupt or unsupported file takes down the child, never the
//! serving runner. Throws RunnerError with the one line that says what happened; returns when the child answered ok.
//! The child is a fresh process (fork, then exec of /proc/self/exe): a bare fork of a runner whose runtimes have
//! started thread pools would inherit their locks but not their threads. Where exec fails, the forked child runs
//! the check itself, as --probe does.
static void check_contained(const std::string& path, const std::string& fmt, const std::string& runtime,
                            int threads) {
  int fds[2];
  if (pipe(fds) != 0) throw RunnerError(path + ": cannot start the load check (" + std::strerror(errno) + ")");
  fcntl(fds[0], F_SETFD, FD_CLOEXEC);
  const std::string exe = exe_path(), fd_arg = std::to_string(fds[1]), threads_arg = std::to_string(threads);
  const std::string runtime_arg = runtime.empty() ? "-" : runtime;
  std::vector<std::string> args = self_argv();
  for (const std::string& a : {std::string("--check-model"), fd_arg, path, runtime_arg, threads_arg}) args.push_back(a);
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a runner stopped by its host takes its load check with it
    if (getppid() != parent) _exit(1);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);  // the protocol's stdin stays the parent's
    dup2(2, 1);                          // library output goes to stderr, as in --serve
    if (!exe.empty()) execv(argv[0], const_cast<char* const*>(argv.data()));
    std::fprintf(stderr, "compleak-runner: cannot start the load check as a fresh process (%s: %s); checking in the "
                 "forked child\n", exe.empty() ? "no path to this runner" : argv[0],
                 exe.empty() ? "/proc/self/exe unreadable" : std::strerror(errno));
    check_model_main(fds[1], path, runtime, threads);
  }
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    throw RunnerError(path + ": cannot start the load check (" + std::strerror(errno) + ")");
  }
  std::string answer;
  bool timed_out = false;
  const auto t0 = std::chrono::steady_clock::now();
  char buf[4096];
  while (answer.size() < 65536) {
    int left = kCheckSeconds * 1000 - static_cast<int>(seconds_since(t0) * 1000);
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    int r = poll(&p, 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      timed_out = r == 0;
      break;
    }
    ssize_t k = read(fds[0], buf, sizeof(buf));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    answer.append(buf, static_cast<size_t>(k));
  }
  close(fds[0]);
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const std::string rt = runtime_name(fmt);
  if (timed_out)
    throw RunnerError(path + ": " + rt + " did not finish loading and running this model once within " +
                      std::to_string(kCheckSeconds) + " s (in a check process, now stopped); the runner refused it");
  size_t nl = answer.find('\n');
  std::string line = nl == std::string::npos ? "" : answer.substr(0, nl);
  if (line == "ok" && WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  if (line.rfind("error: ", 0) == 0) throw RunnerError(one_line(line.substr(7)));
  if (WIFSIGNALED(status)) {  // "crashed (segmentation fault)", as the host names a crashed runner
    int sig = WTERMSIG(status);
    std::string name = strsignal(sig) ? strsignal(sig) : "signal";
    if (!name.empty()) name[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(name[0])));
    throw RunnerError(path + ": " + rt + " crashed (" + name + ") on this model (signal " + std::to_string(sig) +
                      ", in a check process that loaded and ran it once); the file is corrupt or not supported by "
                      "this runtime: rebuild the artifact (the runner keeps serving)");
  }
  throw RunnerError(path + ": the load check of this model exited with status " +
                    std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + " without an answer (" + rt +
                    "'s messages are on the runner's stderr); the runner refused it");
}

// ------------------------------------------------------------------------------------------- inference

//! Whether a model input of `shape` takes NCHW while the queries are NHWC (x: [N, H, W, C]); as the Python runner.
static bool channels_first(const std::vector<int64_t>& shape, const std::vector<int64_t>* x,
                           const std::string& layout) {
  if (layout == "NCHW" || layout == "NHWC") return layout == "NCHW";
  if (shape.size() != 4) return false;
  if (x && x->size() == 4) {
    int64_t h = (*x)[1], w = (*x)[2], c = (*x)[3];
    auto fits = [&](int64_t a, int64_t b, int64_t d) {
      return (shape[1] < 0 || shape[1] == a) && (shape[2] < 0 || shape[2] == b) && (shape[3] < 0 || shape[3] == d);
    };
    bool nhwc = fits(h, w, c), nchw = fits(c, h, w);
    if (nhwc && !nchw) return false;
    if (nchw && !nhwc) return true;
  }
  return (shape[1] == 1 || shape[1] == 3) && !(shape[3] == 1 || shape[3] == 3);
}

//! Largest query dataset held (uint8 bytes; hello's max_dataset_bytes) and most rows one infer may name.
constexpr uint64_t kMaxDatasetBytes = uint64_t(1) << 30;
constexpr int64_t kMaxInferRows = int64_t(1) << 24;

//! The query dataset a `dataset` request left here: raw uint8 [N, H, W, C] and its affine preprocessing.
struct Dataset {
  std::string key;
  std::vector<uint8_t> x;
  int64_t n = 0, h = 0, w = 0, c = 0;
  float scale = 1.0f;
  std::vector<float> mean, std;  // empty: not applied; else 1 or C values
};

struct Loaded {
  std::unique_ptr<Model> model;
  std::string path;
  std::string layout = "auto";
  double load_seconds = 0.0;
  std::string dropped;  // why the last model was dropped after it failed while running ("" none)
};

static json info_of(const Model& m) {
  return {{"format", m.format}, {"runtime", m.runtime}, {"runtime_version", m.runtime_version},
          {"delegate", m.delegate}, {"threads", m.threads > 0 ? json(m.threads) : json(nullptr)},
          {"runner", "native"}};
}

static int64_t get_int(const json& req, const char* key, int64_t fallback) {
  auto it = req.find(key);
  if (it == req.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) throw RunnerError(std::string("protocol error: '") + key + "' is " +
                                                  one_line(it->dump(), 60) + ", not an integer");
  return it->get<int64_t>();
}

static std::string get_str(const json& req, const char* key, const std::string& fallback) {
  auto it = req.find(key);
  if (it == req.end() || it->is_null()) return fallback;
  if (!it->is_string()) throw RunnerError(std::string("protocol error: '") + key + "' is not a string");
  return it->get<std::string>();
}

static float finite_number(const json& v, const char* what) {
  if (!v.is_number() || !std::isfinite(v.get<double>()))
    throw RunnerError(std::string("protocol error: dataset preprocess ") + what + " is " + one_line(v.dump(), 60) +
                      ", not a finite number");
  return static_cast<float>(v.get<double>());  // JSON number -> double -> float32, as np.float32(float(v))
}

static std::vector<float> per_channel(const json& pre, const char* what, int64_t channels) {
  auto it = pre.find(what);
  if (it == pre.end() || it->is_null()) return {};
  if (!it->is_array() || !(it->size() == 1 || static_cast<int64_t>(it->size()) == channels))
    throw RunnerError(std::string("protocol error: dataset preprocess ") + what + " must be null or a list of 1 "
                      "(every channel) or C = " + std::to_string(channels) + " numbers, got " +
                      one_line(it->dump(), 60));
  std::vector<float> out;
  for (const auto& v : *it) out.push_back(finite_number(v, what));
  return out;
}

//! The `dataset` request: header checked, payload read while hashed, sha256 compared with the request's key.
static void read_dataset(Reader& in, const json& req, uint64_t payload, uint64_t* consumed, Dataset& ds) {
  ds = Dataset();
  auto k = req.find("key");
  bool hex = k != req.end() && k->is_string() && k->get<std::string>().size() == 64;
  if (hex)
    for (char ch : k->get<std::string>()) hex = hex && ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'));
  if (!hex) throw RunnerError("protocol error: dataset key " + (k == req.end() ? std::string("None")
                              : one_line(k->dump(), 60)) + " is not a sha256 (64 lowercase hex digits)");
  auto sh = req.find("shape");
  std::vector<int64_t> shape;
  if (sh != req.end() && sh->is_array() && sh->size() == 4)
    for (const auto& d : *sh)
      if (d.is_number_integer() && d.get<int64_t>() >= 0 && d.get<int64_t>() < (int64_t(1) << 31))
        shape.push_back(d.get<int64_t>());
  if (shape.size() != 4) throw RunnerError("protocol error: dataset shape " + (sh == req.end() ? std::string("None")
                                           : one_line(sh->dump(), 60)) + " is not [N, H, W, C]");
  if (get_str(req, "dtype", "") != "uint8")
    throw RunnerError("protocol error: dataset dtype " + one_line(req.value("dtype", json()).dump(), 30) +
                      "; only uint8 is supported");
  double size_d = static_cast<double>(shape[0]) * shape[1] * shape[2] * shape[3];
  uint64_t size = size_d > 1.8e19 ? 0 : uint64_t(shape[0]) * uint64_t(shape[1]) * uint64_t(shape[2]) *
                                           uint64_t(shape[3]);
  if (size_d > 1.8e19 || payload != size)
    throw RunnerError("protocol error: " + std::to_string(payload) + " payload bytes for a uint8 dataset of shape " +
                      shape_text(shape));
  if (size > kMaxDatasetBytes)
    throw RunnerError("a " + std::to_string(size) + "-byte query dataset is over this runner's limit of " +
                      std::to_string(kMaxDatasetBytes) + " bytes; send float32 queries instead");
  auto pre = req.find("preprocess");
  if (pre == req.end() || !pre->is_object())
    throw RunnerError("protocol error: dataset 'preprocess' is " + (pre == req.end() ? std::string("None")
                      : one_line(pre->dump(), 60)) + ", not an object");
  float scale = finite_number(pre->value("scale", json()), "scale");
  std::vector<float> mean = per_channel(*pre, "mean", shape[3]), stdv = per_channel(*pre, "std", shape[3]);
  std::vector<uint8_t> x(size);
  Sha256 digest;
  for (uint64_t got = 0; got < size;) {
    size_t take = static_cast<size_t>(std::min<uint64_t>(size - got, 1 << 20));
    size_t n = 0;
    bool ok = in.read_exact(x.data() + got, take, &n);
    digest.update(x.data() + got, n);
    got += n;
    *consumed += n;
    if (!ok) throw RunnerError("protocol error: the dataset payload ended after " + std::to_string(got) + " of " +
                               std::to_string(size) + " bytes");
  }
  std::string hexd = digest.hexdigest(), key = k->get<std::string>();
  if (hexd != key)
    throw RunnerError("the query dataset's sha256 is " + hexd.substr(0, 16) + "..., its key says " +
                      key.substr(0, 16) + "...: corrupted in transit; rerun collect");
  ds.key = key;
  ds.x = std::move(x);
  ds.n = shape[0], ds.h = shape[1], ds.w = shape[2], ds.c = shape[3];
  ds.scale = scale;
  ds.mean = std::move(mean);
  ds.std = std::move(stdv);
}

//! The queries of one infer request: NHWC `shape` [N, H, W, C]; `by_rows`: they are `rows` of the held dataset,
//! else N float32 rows follow on the payload (read batch by batch, while inference runs).
struct Queries {
  std::vector<int64_t> shape;
  std::vector<uint32_t> rows;
  bool by_rows = false;
};

//! Parse an infer by rows: its header checked against the held dataset, then its payload (M uint32
//! little-endian row numbers) read, each row checked to be in the dataset.
static void parse_rows(Reader& in, const json& req, const json& named, uint64_t payload, uint64_t* consumed,
                       const Dataset& ds, Queries& q) {
  if (ds.key.empty() || !named.is_string() || named.get<std::string>() != ds.key)
    throw RunnerError("protocol error: infer names dataset " + one_line(named.dump(), 20) + "... but the runner "
                      "holds " + (ds.key.empty() ? std::string("no dataset") : "dataset " + ds.key.substr(0, 16) +
                      "...") + "; send it with a dataset request first");
  auto r = req.find("rows");
  int64_t m = r != req.end() && r->is_number_integer() ? r->get<int64_t>() : -1;
  if (m < 0 || m > kMaxInferRows || payload != uint64_t(4) * uint64_t(m))
    throw RunnerError("protocol error: infer by rows needs 'rows' in [0, " + std::to_string(kMaxInferRows) +
                      "] and 4 payload bytes per row; got rows " + (r == req.end() ? std::string("None")
                      : one_line(r->dump(), 30)) + " and " + std::to_string(payload) + " bytes");
  std::vector<unsigned char> raw(static_cast<size_t>(4 * m));
  size_t got = 0;
  bool ok = in.read_exact(raw.data(), raw.size(), &got);
  *consumed += got;
  if (!ok) throw RunnerError("protocol error: the row numbers ended after " + std::to_string(got) + " bytes");
  q.rows.resize(static_cast<size_t>(m));
  uint32_t top = 0;
  for (int64_t i = 0; i < m; ++i) {  // little-endian uint32
    const unsigned char* b = raw.data() + 4 * i;
    q.rows[i] = uint32_t(b[0]) | (uint32_t(b[1]) << 8) | (uint32_t(b[2]) << 16) | (uint32_t(b[3]) << 24);
    top = std::max(top, q.rows[i]);
  }
  if (m && int64_t(top) >= ds.n)
    throw RunnerError("protocol error: row " + std::to_string(top) + " named, the dataset has " +
                      std::to_string(ds.n) + " rows");
  q.shape = {m, ds.h, ds.w, ds.c};
}

//! Parse an infer of float32 rows: its `shape` [N, H, W, C] checked against the payload's size.
static void parse_shape(const json& req, uint64_t payload, Queries& q) {
  auto it = req.find("shape");
  if (it != req.end() && it->is_array() && it->size() == 4)
    for (const auto& d : *it)
      if (d.is_number_integer() && d.get<int64_t>() >= 0 && d.get<int64_t>() < (int64_t(1) << 31))
        q.shape.push_back(d.get<int64_t>());
  std::string shape_str = it == req.end() ? "null" : one_line(it->dump(), 80);
  uint64_t expect = 4;
  for (int64_t d : q.shape) expect *= static_cast<uint64_t>(d);  // each < 2^31, at most 4 of them: checked below
  bool overflow = q.shape.size() == 4 && q.shape[1] * q.shape[2] > 0 &&
                  static_cast<double>(q.shape[0]) * q.shape[1] * q.shape[2] * q.shape[3] * 4 > 1.8e19;
  if (q.shape.size() != 4 || overflow || payload != expect)
    throw RunnerError("protocol error: " + std::to_string(payload) + " payload bytes for float32 " + shape_str);
}

//! Parse an infer request's header (and, for an infer by rows, its row numbers).
static Queries parse_infer(Reader& in, const json& req, uint64_t payload, uint64_t* consumed, const Dataset& ds) {
  Queries q;
  auto named = req.find("dataset");
  q.by_rows = named != req.end() && !named->is_null();
  if (q.by_rows)  // queries named by rows of the held dataset
    parse_rows(in, req, *named, payload, consumed, ds, q);
  else
    parse_shape(req, payload, q);
  return q;
}

//! How queries enter the model: its layout (NCHW: transposed from the NHWC queries) and one query's dims in it.
struct InputPlan {
  bool nchw = false;
  std::vector<int64_t> row;
};

//! Check the model's input against the queries' `shape` [N, H, W, C] (either layout); one line when it differs.
static InputPlan check_input(const Loaded& loaded, const std::vector<int64_t>& shape, int64_t batch_size) {
  TensorSpec spec = loaded.model->input();
  InputPlan p;
  p.nchw = spec.shape.size() == 4 && channels_first(spec.shape, &shape, loaded.layout);
  p.row = p.nchw ? std::vector<int64_t>{shape[3], shape[1], shape[2]}
                 : std::vector<int64_t>{shape[1], shape[2], shape[3]};
  bool fits = spec.shape.size() == 4;
  for (size_t i = 0; fits && i < 3; ++i) fits = spec.shape[i + 1] <= 0 || spec.shape[i + 1] == p.row[i];
  if (!fits) {
    std::vector<int64_t> batch_shape{std::min<int64_t>(shape[0], batch_size)};
    batch_shape.insert(batch_shape.end(), p.row.begin(), p.row.end());
    throw RunnerError(loaded.path + ": model input '" + spec.name + "' has shape " + shape_text(spec.shape) +
                      " but queries have shape " + shape_text(batch_shape) +
                      "; check the preprocessing (resize/layout) of the run");
  }
  return p;
}

//! Preprocess `n` rows of the held dataset into model inputs `xb` (NHWC): preprocess_uint8, step by step in
//! float32: x * scale, - mean[c], / std[c].
static void preprocess_rows(const Dataset& ds, const uint32_t* rows, int64_t n, size_t row_elems,
                            std::vector<float>& xb) {
  const size_t C = static_cast<size_t>(ds.c);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* src = ds.x.data() + size_t(rows[i]) * row_elems;
    float* dst = xb.data() + size_t(i) * row_elems;
    for (size_t j = 0; j < row_elems; ++j) {
      float v = static_cast<float>(src[j]) * ds.scale;
      if (!ds.mean.empty()) v = v - ds.mean[ds.mean.size() == 1 ? 0 : j % C];
      if (!ds.std.empty()) v = v / ds.std[ds.std.size() == 1 ? 0 : j % C];
      dst[j] = v;
    }
  }
}

//! The next xb.size() float32 query values from the request's payload.
static void read_queries(Reader& in, uint64_t* consumed, std::vector<float>& xb) {
  size_t got = 0;
  bool ok = in.read_exact(xb.data(), xb.size() * sizeof(float), &got);
  *consumed += got;
  if (!ok) throw RunnerError("protocol error: the query payload ended after " + std::to_string(*consumed) +
                             " bytes");
}

//! Transpose `n` queries from NHWC (`xb`, [n, H, W, C]) to NCHW (`xt`, [n, C, H, W]).
static void nhwc_to_nchw(const std::vector<float>& xb, int64_t n, int64_t H, int64_t W, int64_t C,
                         std::vector<float>& xt) {
  xt.resize(xb.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c)
          xt[((i * C + c) * H + h) * W + w] = xb[((i * H + h) * W + w) * C + c];
}

//! Where one infer's queries come from: the request's payload, or rows of the held dataset.
struct QuerySource {
  Reader& in;
  uint64_t* consumed;
  const Dataset& ds;
  const Queries& q;
};

//! Per-batch invocation timings of one infer (its reply's batch_seconds, batch_sizes, invoke_seconds).
struct BatchTimes {
  json seconds = json::array(), sizes = json::array();
  double total = 0.0;
};

//! The invoke loop: batches of `step` queries, each read (or preprocessed), laid out and run; outputs appended
//! to `values` (cleared first).
static BatchTimes invoke_batches(const QuerySource& src, Model& m, const InputPlan& plan, int64_t step,
                                 std::vector<float>& values) {
  const std::vector<int64_t>& shape = src.q.shape;
  const size_t row_elems = static_cast<size_t>(shape[1] * shape[2] * shape[3]);
  std::vector<float> xb, xt;
  BatchTimes times;
  values.clear();
  for (int64_t start = 0; start < shape[0]; start += step) {
    int64_t n = std::min(step, shape[0] - start);
    xb.resize(static_cast<size_t>(n) * row_elems);
    if (src.q.by_rows)
      preprocess_rows(src.ds, src.q.rows.data() + start, n, row_elems, xb);
    else
      read_queries(src.in, src.consumed, xb);
    const float* x = xb.data();
    if (plan.nchw) {
      nhwc_to_nchw(xb, n, shape[1], shape[2], shape[3], xt);
      x = xt.data();
    }
    auto t0 = std::chrono::steady_clock::now();
    m.invoke(x, n, plan.row, values);
    double dt = seconds_since(t0);
    times.total += dt;
    times.seconds.push_back(dt);
    times.sizes.push_back(n);
  }
  return times;
}

//! Check the outputs of `n` queries: a whole number of classes per query (with no query: the output's shape)
//! and no NaN/Inf; returns the class count.
static int64_t check_outputs(const Loaded& loaded, int64_t n, const std::vector<float>& values) {
  int64_t classes = 1;
  if (n > 0) {
    classes = static_cast<int64_t>(values.size()) / n;
    if (classes * n != static_cast<int64_t>(values.size()))
      throw RunnerError(loaded.path + ": the runtime returned " + std::to_string(values.size()) + " values for " +
                        std::to_string(n) + " queries");
  } else {
    const std::vector<int64_t> out = loaded.model->output().shape;
    for (size_t i = 1; i < out.size(); ++i)
      if (out[i] > 0) classes *= out[i];
  }
  int64_t bad = 0;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < classes; ++c)
      if (!std::isfinite(values[static_cast<size_t>(r * classes + c)])) {
        ++bad;
        break;
      }
  if (bad) throw RunnerError(loaded.path + ": the runtime produced NaN/Inf outputs for " + std::to_string(bad) +
                             " queries");
  return classes;
}

//! The infer request: rows read batch by batch from `in` while inference runs; returns the reply and outputs.
static json infer(Reader& in, const json& req, uint64_t payload, uint64_t* consumed, Loaded& loaded,
                  const Dataset& ds, std::vector<float>& values) {
  if (!loaded.model)
    throw RunnerError(loaded.dropped.empty() ? std::string("protocol error: infer before load (no model loaded)")
                                             : "no model loaded: the last one was dropped after it failed (" +
                                                   loaded.dropped + "); load a model again");
  const Queries q = parse_infer(in, req, payload, consumed, ds);
  Model& m = *loaded.model;
  const double t_start = now_epoch();
  int64_t batch_size = get_int(req, "batch_size", 256);
  if (batch_size < 1) batch_size = 256;
  const InputPlan plan = check_input(loaded, q.shape, batch_size);
  int64_t cap = m.max_batch();
  int64_t step = std::max<int64_t>(1, cap > 0 ? std::min(batch_size, cap) : batch_size);
  BatchTimes times = invoke_batches(QuerySource{in, consumed, ds, q}, m, plan, step, values);
  const int64_t n = q.shape[0], classes = check_outputs(loaded, n, values);
  json meta = info_of(m);
  json mi = machine_info();
  meta.update({{"batch_size", batch_size}, {"n", n}, {"load_seconds", loaded.load_seconds},
               {"invoke_seconds", times.total}, {"started", t_start}, {"finished", now_epoch()},
               {"python", nullptr}, {"numpy", nullptr}, {"machine", mi["machine"]},
               {"input_layout", plan.nchw ? "NCHW" : "NHWC"}});
  return {{"ok", true}, {"shape", {n, classes}}, {"bytes", values.size() * sizeof(float)}, {"meta", meta},
          {"batch_seconds", times.seconds}, {"batch_sizes", times.sizes}};
}

static void remove_in(const std::string& path, const std::string& workspace) {
  if (path.empty() || workspace.empty()) return;
  char real_path[PATH_MAX], real_ws[PATH_MAX];
  if (!realpath(path.c_str(), real_path) || !realpath(workspace.c_str(), real_ws)) return;
  std::string rp(real_path);
  size_t slash = rp.rfind('/');
  if (slash == std::string::npos) return;
  std::string dir = slash == 0 ? "/" : rp.substr(0, slash);
  if (dir == real_ws) unlink(path.c_str());
}

static json runtimes_bundled() {
  json r = json::object();
  r["litert"] = bundled("libLiteRt.so") ? json(COMPLEAK_LITERT_VERSION) : json(nullptr);
  r["executorch"] = bundled(kEtPlugin) && std::strlen(COMPLEAK_EXECUTORCH_VERSION)
                        ? json(COMPLEAK_EXECUTORCH_VERSION) : json(nullptr);
  return r;
}

static json formats_of(const json& runtimes) {
  json f = json::array();
  if (!runtimes["executorch"].is_null()) f.push_back("pte");
  if (!runtimes["litert"].is_null()) f.push_back("tflite");
  return f;
}

//! The hello: the runner's first message (what it runs, the ops it answers, its limits, the machine).
static json hello_message() {
  json runtimes = runtimes_bundled();
  json hello = {{"ok", true}, {"hello", "compleak-runner"}, {"protocol", kProtocol}, {"runner", "native"},
                {"runner_version", COMPLEAK_RUNNER_VERSION}, {"executable", exe_dir() + "/compleak-runner"},
                {"runtimes", runtimes}, {"formats", formats_of(runtimes)},
                {"ops", {"load", "infer", "dataset", "exit"}}, {"max_dataset_bytes", kMaxDatasetBytes},
                {"python", nullptr}, {"numpy", nullptr}};
  hello.update(machine_info());
  return hello;
}

//! The load request: replaces the loaded model; its file goes too when it lies in the given workspace.
static json answer_load(const json& req, Loaded& loaded) {
  loaded.model.reset();
  loaded.dropped.clear();
  auto rm = req.find("remove_previous");
  if (!loaded.path.empty() && rm != req.end() && rm->is_boolean() && rm->get<bool>())
    remove_in(loaded.path, get_str(req, "workspace", ""));
  auto t0 = std::chrono::steady_clock::now();
  auto mit = req.find("model");
  if (mit == req.end() || !mit->is_string() || mit->get<std::string>().empty())
    throw RunnerError("load: the request names no model file ('model')");
  loaded.path = mit->get<std::string>();
  loaded.layout = get_str(req, "layout", "auto");
  if (loaded.layout != "NHWC" && loaded.layout != "NCHW") loaded.layout = "auto";
  int64_t threads = get_int(req, "threads", 0);
  if (threads < 0 || threads > 1024) throw RunnerError("load: threads must be in 0..1024, got " +
                                                       std::to_string(threads));
  const std::string runtime = get_str(req, "runtime", "");
  const std::string fmt = detect_format(loaded.path);
  check_runtime(fmt, runtime);
  if (fmt == "pte") {  // a bundle without ExecuTorch says so before any check process starts
    std::string err;
    if (!executorch_open(&err)) throw RunnerError(loaded.path + ": " + err);
  } else {
    bool available = false;
    std::string err = litert_status(&available);
    if (!available) throw RunnerError(loaded.path + ": " + err);
  }
  check_contained(loaded.path, fmt, runtime, static_cast<int>(threads));  // a crash here is the child's
  loaded.model = open_model(loaded.path, fmt, static_cast<int>(threads));
  loaded.load_seconds = seconds_since(t0);
  return {{"ok", true}, {"info", info_of(*loaded.model)}, {"load_seconds", loaded.load_seconds}};
}

//! What the serve loop keeps between requests: the loaded model, the held dataset, the last infer's outputs.
struct ServeState {
  Loaded loaded;
  Dataset dataset;
  std::vector<float> values;
};

//! One request (`op` is not exit) answered: its reply, {"ok": true, ...} or a one-line error; `with_values`:
//! the outputs in `st.values` follow the reply.
static json answer(Reader& in, const json& req, const std::string& op, uint64_t payload, uint64_t* consumed,
                   ServeState& st, bool* with_values) {
  try {
    if (op == "load") return answer_load(req, st.loaded);
    if (op == "dataset") {  // at most one held: the old one goes before the new one is read
      read_dataset(in, req, payload, consumed, st.dataset);
      return {{"ok", true}, {"key", st.dataset.key}, {"rows", st.dataset.n}};
    }
    if (op == "infer") {
      json reply = infer(in, req, payload, consumed, st.loaded, st.dataset, st.values);
      *with_values = true;
      return reply;
    }
    auto op_it = req.find("op");
    throw RunnerError("protocol error: unknown request " + (op_it == req.end() ? std::string("None")
                                                                                : one_line(op_it->dump(), 60)));
  } catch (const ModelFault& exc) {  // the model failed while running: dropped, never used in an unknown state
    st.loaded.model.reset();
    st.loaded.dropped = one_line(exc.what(), 180);
    return {{"ok", false}, {"error", one_line(exc.what(), 240) + "; the model was dropped: load it again"}};
  } catch (const RunnerError& exc) {
    return {{"ok", false}, {"error", one_line(exc.what())}};
  } catch (const std::bad_alloc&) {
    return {{"ok", false}, {"error", op == "dataset" ? std::string("out of memory holding the query dataset; "
                                                                   "send float32 queries instead")
                                                     : "out of memory running " + st.loaded.path +
                                                           "; lower --batch-size"}};
  } catch (const std::exception& exc) {
    return {{"ok", false}, {"error", op + ": " + one_line(exc.what())}};
  }
}

//! --serve: the hello, then one reply per request until exit or the end of stdin (docs/native.md, "Runner
//! protocol").
static int serve() {
  std::fflush(stdout);
  int proto = dup(1);  // the protocol owns the real stdout; runtime libraries printing to fd 1 go to stderr
  if (proto < 0 || dup2(2, 1) < 0) {
    std::fprintf(stderr, "error: cannot set up the protocol stream\n");
    return 3;
  }
  fcntl(proto, F_SETFD, FD_CLOEXEC);  // load-check processes do not hold the protocol stream
  std::string tampered = verify_bundle(exe_dir(), exe_name());
  if (!tampered.empty()) {  // instead of the hello: one refusal, then exit
    write_message(proto, {{"ok", false}, {"error", one_line(tampered)}});
    return 3;
  }
  if (!write_message(proto, hello_message())) return 0;
  Reader in(0);
  ServeState st;
  while (true) {
    bool ended = false;
    json req;
    std::string refused;
    try {
      req = read_message(in, &ended, &refused);
    } catch (const RunnerError& exc) {  // out of step with the host: say so once and stop
      write_message(proto, {{"ok", false}, {"error", exc.what()}});
      return 3;
    }
    if (ended) return 0;
    if (!refused.empty()) {  // framed, but refused: skip its payload and stay in step
      auto b = req.find("bytes");
      if (b != req.end() && b->is_number_integer()) in.skip(b->get<uint64_t>());
      if (!write_message(proto, {{"ok", false}, {"error", refused}})) return 0;
      continue;
    }
    auto op_it = req.find("op");
    std::string op = op_it != req.end() && op_it->is_string() ? op_it->get<std::string>() : "";
    if (op == "exit") return 0;
    uint64_t payload = 0, consumed = 0;
    auto b = req.find("bytes");
    if (b != req.end() && b->is_number_integer()) payload = b->get<uint64_t>();
    bool with_values = false;
    json reply = answer(in, req, op, payload, &consumed, st, &with_values);
    if (payload > consumed) in.skip(payload - consumed);  // a failed request: drop the rest, stay in sync
    bool ok = reply["ok"].get<bool>();
    if (!write_message(proto, reply, ok && with_values ? st.values.data() : nullptr,
                       ok && with_values ? st.values.size() * sizeof(float) : 0))
      return 0;
  }
}

//! Try loading a runtime in a child process, so a library that crashes here is reported, not fatal.
static json try_runtime(const char* name) {
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 1);
    bool ok = false;
    std::string err;
    if (std::strcmp(name, "litert") == 0) litert_status(&ok);
    else ok = executorch_open(&err) != nullptr;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) < 0) return "cannot start a probe process";
  if (WIFSIGNALED(status)) return std::string("loading it crashed (signal ") + std::to_string(WTERMSIG(status)) + ")";
  if (WEXITSTATUS(status) == 0) return nullptr;
  bool ok = false;
  std::string err;
  if (std::strcmp(name, "litert") == 0) err = litert_status(&ok);
  else executorch_open(&err);
  return err;
}

static int probe() {
  json bundled_rt = runtimes_bundled();
  json runtimes = json::object(), errors = json::object();
  for (const char* name : {"executorch", "litert"}) {
    json why = try_runtime(name);
    runtimes[name] = why.is_null() ? (bundled_rt[name].is_null() ? json("unknown") : bundled_rt[name]) : json(nullptr);
    if (!why.is_null()) errors[name] = why;
  }
  std::string tampered = verify_bundle(exe_dir(), exe_name());
  if (!tampered.empty()) errors["bundle"] = one_line(tampered);
  json out = {{"runner", "native"}, {"runner_version", COMPLEAK_RUNNER_VERSION}, {"protocol", kProtocol},
              {"python", nullptr}, {"numpy", nullptr}, {"runtimes", runtimes}, {"formats", formats_of(runtimes)},
              {"errors", errors}};
  out.update(machine_info());
  std::printf("%s\n", out.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  return 0;
}

}  // namespace compleak

//! Take the leading `--root DIR [--loader LOADER]` off the arguments (see the head of this file); false when they are
//! malformed (a missing or empty value).
static bool take_location(int* argc, char*** argv) {
  for (const char* opt : {"--root", "--loader"}) {
    if (*argc < 2 || std::strcmp((*argv)[1], opt) != 0) continue;
    if (*argc < 3 || !*(*argv)[2]) return false;
    (std::strcmp(opt, "--root") == 0 ? compleak::g_root : compleak::g_loader) = (*argv)[2];
    (*argv)[2] = (*argv)[0];
    *argv += 2;
    *argc -= 2;
  }
  return compleak::g_loader.empty() || !compleak::g_root.empty();
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);  // a vanished host ends the loop through a failed write
  if (!take_location(&argc, &argv)) {
    std::fprintf(stderr, "error: --root needs the bundle folder and --loader the loader's path (--loader only with "
                 "--root)\n");
    return 2;
  }
  while (!compleak::g_root.empty() && compleak::g_root.size() > 1 && compleak::g_root.back() == '/')
    compleak::g_root.pop_back();
  std::string arg = argc == 2 ? argv[1] : "";
  try {
    if (argc == 6 && std::strcmp(argv[1], "--check-model") == 0) {
      char* end = nullptr;
      long fd = std::strtol(argv[2], &end, 10), threads = std::strtol(argv[5], nullptr, 10);
      if (*argv[2] && !*end && fd > 2 && fd < 1 << 20)
        return compleak::check_model_main(static_cast<int>(fd), argv[3], std::strcmp(argv[4], "-") ? argv[4] : "",
                                          static_cast<int>(threads < 0 || threads > 1024 ? 0 : threads));
    }
    if (arg == "--serve") return compleak::serve();
    if (arg == "--probe") return compleak::probe();
    if (arg == "--version") {
      std::printf("compleak-runner %s (protocol %d)\n", COMPLEAK_RUNNER_VERSION, compleak::kProtocol);
      return 0;
    }
  } catch (const std::exception& exc) {
    std::fprintf(stderr, "error: %s\n", compleak::one_line(exc.what()).c_str());
    return 3;
  }
  std::fprintf(stderr, "usage: compleak-runner [--root DIR [--loader LOADER]] --serve | --probe | --version\n");
  return arg == "--help" || arg == "-h" ? 0 : 2;
}
