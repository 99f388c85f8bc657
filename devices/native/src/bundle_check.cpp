// The runner checks the bundle it runs from (bin/, lib/) against the sha256 list of the manifest.json beside them
// before it says hello, so a replaced binary or library is refused in one line on the device itself: no Python,
// sha256sum or shell is needed there (busybox, toybox and bare boards alike).
#include "bundle_check.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "model.h"
#include "protocol.h"
#include "sha256.h"

namespace compleak {
namespace {

const char* kFix = "push the bundle again or rebuild it (compleak runners build --force)";

//! The sha256 of the regular file at `path` (hex), or "" with *error set.
std::string file_sha256(const std::string& path, std::string* error) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = std::strerror(errno);
    return "";
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    *error = "not a regular file";
    return "";
  }
  Sha256 digest;
  std::vector<unsigned char> buf(1 << 20);
  while (true) {
    ssize_t n = read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *error = std::strerror(errno);
      close(fd);
      return "";
    }
    if (n == 0) break;
    digest.update(buf.data(), static_cast<size_t>(n));
  }
  close(fd);
  return digest.hexdigest();
}

bool is_sha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

//! "bin/<name>" or "lib/<name>" with a plain file name (as read_bundle_manifest on the host requires).
bool is_bundle_path(const std::string& rel) {
  size_t slash = rel.find('/');
  if (slash == std::string::npos || rel.find('/', slash + 1) != std::string::npos) return false;
  std::string dir = rel.substr(0, slash), name = rel.substr(slash + 1);
  return (dir == "bin" || dir == "lib") && !name.empty() && name != "." && name != "..";
}

}  // namespace

std::string verify_bundle(const std::string& bin_dir, const std::string& exe_name) {
  const std::string root = bin_dir + "/..";
  const std::string bad = "the runner bundle is not intact: ";
  std::string text;
  {
    int fd = open((root + "/manifest.json").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return bad + "manifest.json beside bin/ cannot be read (" + std::strerror(errno) + "), so its files cannot be "
             "checked; " + kFix;
    text.resize(kMaxManifestBytes + 1);
    size_t got = 0;
    while (got < text.size()) {
      ssize_t n = read(fd, &text[got], text.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    close(fd);
    if (got > kMaxManifestBytes)
      return bad + "manifest.json is over " + std::to_string(kMaxManifestBytes) + " bytes; " + kFix;
    text.resize(got);
  }
  bool too_deep = false;
  nlohmann::json manifest = parse_json(text, &too_deep);
  auto files = manifest.is_object() && !too_deep ? manifest.find("files") : manifest.end();
  if (!manifest.is_object() || too_deep || files == manifest.end() || !files->is_object())
    return bad + "manifest.json is not a bundle manifest (no \"files\" object); " + kFix;
  std::set<std::string> listed;
  for (auto it = files->begin(); it != files->end(); ++it) {
    const std::string& rel = it.key();
    if (!is_bundle_path(rel) || !it.value().is_string() || !is_sha256(it.value().get<std::string>()))
      return bad + "manifest.json lists " + one_line(rel, 60) + " without a sha256 of a bin/ or lib/ file; " + kFix;
    listed.insert(rel);
  }
  if (!listed.count("bin/" + exe_name)) return bad + "manifest.json does not list bin/" + exe_name + "; " + kFix;
  for (const char* dir : {"bin", "lib"}) {  // nothing unlisted that the loader could pick up
    DIR* d = opendir((root + "/" + dir).c_str());
    if (!d) continue;
    std::string extra;
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      if (!listed.count(std::string(dir) + "/" + name)) {
        extra = std::string(dir) + "/" + name;
        break;
      }
    }
    closedir(d);
    if (!extra.empty()) return bad + one_line(extra, 80) + " is not listed in manifest.json; " + kFix;
  }
  for (auto it = files->begin(); it != files->end(); ++it) {
    std::string error;
    std::string digest = file_sha256(root + "/" + it.key(), &error);
    if (digest.empty()) return bad + it.key() + " cannot be read (" + error + "); " + kFix;
    if (digest != it.value().get<std::string>())
      return bad + it.key() + " does not match its sha256 in manifest.json (tampered with or damaged in transfer); " +
             kFix;
  }
  return "";
}

}  // namespace compleak
