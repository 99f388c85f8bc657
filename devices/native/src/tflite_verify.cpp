// The TF-Lite model check: a flatbuffers verifier for the TF-Lite schema, then LiteRT's unchecked references.
//
// The ai-edge-litert wheel ships no schema_generated.h and no flatbuffers headers, so this is the verifier the
// schema's generated tflite::VerifyModelBuffer runs (flatbuffers::Verifier with its default options: 64 nested
// tables, 1,000,000 tables, aligned scalars, buffers under 2 GiB), written once and driven by a table of the schema
// (tflite_schema.inc, generated from the wheel's own schema_py_generated.py by cmake/gen_tflite_schema.py) rather
// than by 170 generated Verify() methods. Every check mirrors one of flatbuffers::Verifier's:
//   table      VerifyTableStart: soffset aligned and inside; vtable aligned, even size, inside; depth/count limits
//   scalar     VerifyField<T>: inside and aligned to its size
//   offset     VerifyOffset: uoffset aligned, inside, non-zero, positive as int32, target inside
//   vector     VerifyVectorOrString: length field aligned and inside, length * size < 2^31 - 1, elements inside
//   string     a vector of bytes followed by a 0 byte inside the buffer
//   union      the table of its type (NONE and types this schema does not know verify, as generated code does)
#include "tflite_verify.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "model.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the flatbuffer verifier reads the (little-endian) scalars of a flatbuffer directly"
#endif

namespace compleak {
namespace {

enum Kind : uint8_t { kScalar, kString, kTable, kUnion, kVector, kVectorOfStrings, kVectorOfTables };

//! One field of a table: its name, vtable offset, kind, scalar or vector element size, the table (kTable,
//! kVectorOfTables) or union (kUnion) it refers to, and for a union the vtable offset of its type field.
struct FieldDesc {
  const char* name;
  uint16_t vt;
  Kind kind;
  uint8_t size;
  int16_t ref;
  uint16_t type_vt;
};
struct TableDesc {
  const char* name;
  const FieldDesc* fields;
  uint16_t n;
};
//! A union: members[type] is the table of that type value (-1: none).
struct UnionDesc {
  const char* name;
  const int16_t* members;
  uint16_t n;
};

#include "tflite_schema.inc"

constexpr uint64_t kMaxDepth = 64;        // flatbuffers::Verifier::Options::max_depth
constexpr uint64_t kMaxTables = 1000000;  // ... max_tables
constexpr uint64_t kMaxSize = 0x7fffffff;  // FLATBUFFERS_MAX_BUFFER_SIZE (32-bit offsets)

int table_index(const char* name) {
  for (size_t i = 0; i < sizeof(kTables) / sizeof(kTables[0]); ++i)
    if (std::strcmp(kTables[i].name, name) == 0) return static_cast<int>(i);
  return -1;
}

uint16_t vt_of(int table, const char* field) {
  if (table < 0) return 0;
  const TableDesc& t = kTables[table];
  for (uint16_t i = 0; i < t.n; ++i)
    if (std::strcmp(t.fields[i].name, field) == 0) return t.fields[i].vt;
  return 0;
}

class Verifier {
 public:
  Verifier(const uint8_t* buf, uint64_t size) : buf_(buf), size_(size < kMaxSize ? size : kMaxSize - 1) {}

  //! VerifyBufferFromStart: minimum size, the file identifier, the root offset, the root table.
  bool buffer(const char* identifier, int root) {
    if (size_ < 12) return fail("shorter than any flatbuffer");
    if (std::memcmp(buf_ + 4, identifier, 4) != 0) return fail(std::string("no \"") + identifier + "\" identifier");
    uint64_t at = offset_at(0);
    return at ? table_at(at, root) : fail("the root offset points outside the file");
  }

  //! Where verification failed: "Model.subgraphs[0].tensors[3].shape: <why>".
  std::string where() const {
    std::string path = kTables[kTfliteRootTable].name;
    for (auto it = trail_.rbegin(); it != trail_.rend(); ++it) path += *it;
    return path + ": " + why_;
  }

 private:
  bool in(uint64_t pos, uint64_t len) const { return len < size_ && pos <= size_ - len; }
  static bool aligned(uint64_t pos, uint64_t a) { return (pos & (a - 1)) == 0; }
  template <typename T>
  T read(uint64_t pos) const {
    T v;
    std::memcpy(&v, buf_ + pos, sizeof(T));
    return v;
  }
  bool fail(const std::string& why) {
    if (why_.empty()) why_ = why;
    return false;
  }
  bool at_(const std::string& segment) {  // a failure inside `segment` (unwinding)
    trail_.push_back(segment);
    return false;
  }

  //! VerifyOffset: the position the uoffset at `pos` points to, or 0 when it is not a valid offset.
  uint64_t offset_at(uint64_t pos) const {
    if (!aligned(pos, 4) || !in(pos, 4)) return 0;
    uint32_t o = read<uint32_t>(pos);
    if (o == 0 || static_cast<int32_t>(o) < 0 || !in(pos + o, 1)) return 0;
    return pos + o;
  }

  //! VerifyVectorOrString: a length-prefixed run of `elem`-byte elements at `at`; its length in *n.
  bool vector_at(uint64_t at, uint64_t elem, uint32_t* n) {
    if (!aligned(at, 4) || !in(at, 4)) return fail("a vector length outside the file or misaligned");
    *n = read<uint32_t>(at);
    if (*n >= kMaxSize / elem) return fail("a vector of " + std::to_string(*n) + " elements");
    if (!in(at, 4 + elem * *n)) return fail("a vector of " + std::to_string(*n) + " elements past the end of the file");
    return true;
  }

  bool string_at(uint64_t at) {
    uint32_t n = 0;
    if (!vector_at(at, 1, &n)) return false;
    uint64_t end = at + 4 + n;
    return in(end, 1) && buf_[end] == 0 ? true : fail("a string without its terminating 0 byte");
  }

  bool table_at(uint64_t pos, int t) {
    if (!aligned(pos, 4) || !in(pos, 4)) return fail("a table outside the file or misaligned");
    const uint64_t vtable = pos - static_cast<uint64_t>(static_cast<int64_t>(read<int32_t>(pos)));
    if (++depth_ > kMaxDepth) return fail("tables nested more than " + std::to_string(kMaxDepth) + " deep");
    if (++tables_ > kMaxTables) return fail("more than " + std::to_string(kMaxTables) + " tables");
    if (!aligned(vtable, 2) || !in(vtable, 2)) return fail("a vtable outside the file or misaligned");
    const uint16_t vsize = read<uint16_t>(vtable);
    if ((vsize & 1) != 0 || !in(vtable, vsize)) return fail("a vtable of " + std::to_string(vsize) + " bytes");
    const TableDesc& td = kTables[t];
    for (uint16_t i = 0; i < td.n; ++i) {
      const FieldDesc& f = td.fields[i];
      const uint16_t fo = f.vt < vsize ? read<uint16_t>(vtable + f.vt) : 0;
      if (fo == 0) continue;  // absent: its default
      if (!field(f, pos, vtable, vsize, pos + fo)) return at_(std::string(".") + f.name);
    }
    --depth_;  // EndTable
    return true;
  }

  bool field(const FieldDesc& f, uint64_t table, uint64_t vtable, uint16_t vsize, uint64_t at) {
    if (f.kind == kScalar)
      return aligned(at, f.size) && in(at, f.size) ? true : fail("a scalar outside the table or misaligned");
    const uint64_t to = offset_at(at);
    if (!to) return fail("an offset outside the file");
    uint32_t n = 0;
    switch (f.kind) {
      case kString: return string_at(to);
      case kTable: return table_at(to, f.ref);
      case kVector: return vector_at(to, f.size, &n);
      case kVectorOfStrings:
        if (!vector_at(to, 4, &n)) return false;
        for (uint32_t i = 0; i < n; ++i) {
          const uint64_t p = to + 4 + 4 * uint64_t(i);
          if (!string_at(p + read<uint32_t>(p))) return at_("[" + std::to_string(i) + "]");
        }
        return true;
      case kVectorOfTables:
        if (!vector_at(to, 4, &n)) return false;
        for (uint32_t i = 0; i < n; ++i) {
          const uint64_t p = to + 4 + 4 * uint64_t(i);
          if (!table_at(p + read<uint32_t>(p), f.ref)) return at_("[" + std::to_string(i) + "]");
        }
        return true;
      case kUnion: {
        const uint16_t tfo = f.type_vt < vsize ? read<uint16_t>(vtable + f.type_vt) : 0;
        const uint8_t type = tfo && in(table + tfo, 1) ? buf_[table + tfo] : 0;
        const UnionDesc& u = kUnions[f.ref];
        if (type == 0 || type >= u.n || u.members[type] < 0) return true;  // NONE, or a type unknown here
        return table_at(to, u.members[type]) ? true : at_(std::string("<") + kTables[u.members[type]].name + ">");
      }
      default: return fail("an unknown field kind");
    }
  }

  const uint8_t* buf_;
  const uint64_t size_;
  uint64_t depth_ = 0, tables_ = 0;
  std::string why_;
  std::vector<std::string> trail_;
};

//! Read access to a verified buffer (every offset known to be inside it).
class Reader {
 public:
  explicit Reader(const uint8_t* buf) : buf_(buf) {}
  template <typename T>
  T read(uint64_t pos) const {
    T v;
    std::memcpy(&v, buf_ + pos, sizeof(T));
    return v;
  }
  //! The position of field `vt` of the table at `table` (0: absent).
  uint64_t field(uint64_t table, uint16_t vt) const {
    if (!table || !vt) return 0;
    const uint64_t vtable = table - static_cast<uint64_t>(static_cast<int64_t>(read<int32_t>(table)));
    const uint16_t vsize = read<uint16_t>(vtable);
    const uint16_t fo = vt < vsize ? read<uint16_t>(vtable + vt) : 0;
    return fo ? table + fo : 0;
  }
  //! What the offset field `vt` points to (a table, vector or string; 0: absent).
  uint64_t ref(uint64_t table, uint16_t vt) const {
    const uint64_t p = field(table, vt);
    return p ? p + read<uint32_t>(p) : 0;
  }
  template <typename T>
  T scalar(uint64_t table, uint16_t vt, T fallback) const {
    const uint64_t p = field(table, vt);
    return p ? read<T>(p) : fallback;
  }
  uint32_t size(uint64_t vec) const { return vec ? read<uint32_t>(vec) : 0; }
  uint64_t table(uint64_t vec, uint32_t i) const {
    const uint64_t p = vec + 4 + 4 * uint64_t(i);
    return p + read<uint32_t>(p);
  }
  int32_t i32(uint64_t vec, uint32_t i) const { return read<int32_t>(vec + 4 + 4 * uint64_t(i)); }

 private:
  const uint8_t* buf_;
};

std::string item(const char* what, uint32_t i) { return std::string(what) + "[" + std::to_string(i) + "]"; }

//! Data stored outside the flatbuffer (offset > 1, as LiteRT reads it) must lie inside the file.
std::string outside(const std::string& where, uint64_t offset, uint64_t size, uint64_t file_size) {
  if (offset <= 1 || (size <= file_size && offset <= file_size - size)) return "";
  return where + ": " + std::to_string(size) + " bytes at offset " + std::to_string(offset) + ", past the end of the " +
         std::to_string(file_size) + "-byte file";
}

//! Every index in the int vector `vec` is -1 (optional) or a tensor of the subgraph's `n`.
std::string tensor_indices(const Reader& r, uint64_t vec, uint32_t n, const std::string& where) {
  for (uint32_t i = 0; i < r.size(vec); ++i) {
    int32_t v = r.i32(vec, i);
    if (v < -1 || (v >= 0 && static_cast<uint32_t>(v) >= n))
      return item(where.c_str(), i) + ": tensor " + std::to_string(v) + " of " + std::to_string(n);
  }
  return "";
}

//! The references LiteRT follows without checking them (as tflite's own verifier.cc and InterpreterBuilder do).
std::string references(const uint8_t* buf, uint64_t file_size) {
  static const int kModel = table_index("Model"), kSubGraph = table_index("SubGraph"),
                   kTensor = table_index("Tensor"), kOperator = table_index("Operator"),
                   kBuffer = table_index("Buffer"), kSignature = table_index("SignatureDef"),
                   kTensorMap = table_index("TensorMap");
  const Reader r(buf);
  const uint64_t model = r.read<uint32_t>(0);
  const uint64_t codes = r.ref(model, vt_of(kModel, "operator_codes"));
  const uint64_t subgraphs = r.ref(model, vt_of(kModel, "subgraphs"));
  const uint64_t buffers = r.ref(model, vt_of(kModel, "buffers"));
  const uint32_t n_codes = r.size(codes), n_subgraphs = r.size(subgraphs), n_buffers = r.size(buffers);
  if (n_subgraphs == 0) return "Model.subgraphs: none (a model needs one)";
  for (uint32_t b = 0; b < n_buffers; ++b) {
    const uint64_t buffer = r.table(buffers, b);
    std::string e = outside(item("Model.buffers", b), r.scalar<uint64_t>(buffer, vt_of(kBuffer, "offset"), 0),
                            r.scalar<uint64_t>(buffer, vt_of(kBuffer, "size"), 0), file_size);
    if (!e.empty()) return e;
  }
  std::vector<uint32_t> n_tensors(n_subgraphs);
  for (uint32_t s = 0; s < n_subgraphs; ++s) {
    const std::string sg = item("Model.subgraphs", s);
    const uint64_t subgraph = r.table(subgraphs, s);
    const uint64_t tensors = r.ref(subgraph, vt_of(kSubGraph, "tensors"));
    const uint32_t nt = n_tensors[s] = r.size(tensors);
    for (uint32_t t = 0; t < nt; ++t) {
      uint32_t b = r.scalar<uint32_t>(r.table(tensors, t), vt_of(kTensor, "buffer"), 0);
      if (b >= n_buffers)
        return sg + item(".tensors", t) + ".buffer: buffer " + std::to_string(b) + " of " + std::to_string(n_buffers);
    }
    for (const char* io : {"inputs", "outputs"}) {
      std::string e = tensor_indices(r, r.ref(subgraph, vt_of(kSubGraph, io)), nt, sg + "." + io);
      if (!e.empty()) return e;
    }
    const uint64_t ops = r.ref(subgraph, vt_of(kSubGraph, "operators"));
    for (uint32_t o = 0; o < r.size(ops); ++o) {
      const std::string where = sg + item(".operators", o);
      const uint64_t op = r.table(ops, o);
      uint32_t code = r.scalar<uint32_t>(op, vt_of(kOperator, "opcode_index"), 0);
      if (code >= n_codes)
        return where + ".opcode_index: operator code " + std::to_string(code) + " of " + std::to_string(n_codes);
      for (const char* io : {"inputs", "outputs", "intermediates"}) {
        std::string e = tensor_indices(r, r.ref(op, vt_of(kOperator, io)), nt, where + "." + io);
        if (!e.empty()) return e;
      }
      std::string e = outside(where + ".large_custom_options",
                              r.scalar<uint64_t>(op, vt_of(kOperator, "large_custom_options_offset"), 0),
                              r.scalar<uint64_t>(op, vt_of(kOperator, "large_custom_options_size"), 0), file_size);
      if (!e.empty()) return e;
    }
  }
  const uint64_t signatures = r.ref(model, vt_of(kModel, "signature_defs"));
  for (uint32_t i = 0; i < r.size(signatures); ++i) {
    const std::string where = item("Model.signature_defs", i);
    const uint64_t sig = r.table(signatures, i);
    uint32_t s = r.scalar<uint32_t>(sig, vt_of(kSignature, "subgraph_index"), 0);
    if (s >= n_subgraphs)
      return where + ".subgraph_index: subgraph " + std::to_string(s) + " of " + std::to_string(n_subgraphs);
    for (const char* io : {"inputs", "outputs"}) {
      const uint64_t maps = r.ref(sig, vt_of(kSignature, io));
      for (uint32_t m = 0; m < r.size(maps); ++m) {
        uint32_t t = r.scalar<uint32_t>(r.table(maps, m), vt_of(kTensorMap, "tensor_index"), 0);
        if (t >= n_tensors[s])
          return where + "." + io + "[" + std::to_string(m) + "].tensor_index: tensor " + std::to_string(t) + " of " +
                 std::to_string(n_tensors[s]);
      }
    }
  }
  return "";
}

}  // namespace

std::string verify_tflite(const uint8_t* buf, size_t size) {
  Verifier v(buf, size);
  if (!v.buffer(kTfliteIdentifier, kTfliteRootTable)) return "the flatbuffer does not verify at " + v.where();
  return references(buf, size);
}

void verify_tflite_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw RunnerError(path + ": cannot read model file (" + std::strerror(errno) + ")");
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
    close(fd);
    throw RunnerError(path + ": not a regular, non-empty model file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) throw RunnerError(path + ": cannot map model file (" + std::strerror(errno) + ")");
  std::string why = verify_tflite(static_cast<const uint8_t*>(map), size);
  munmap(map, size);
  if (!why.empty())
    throw RunnerError(path + ": not a valid TF-Lite model (" + one_line(why, 200) + "); the file is truncated or "
                      "corrupt: copy or rebuild the artifact");
}

}  // namespace compleak
