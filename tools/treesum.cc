#include "tools/treesum.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "proto/unique_fd.h"

namespace pohmelfs::tools {
namespace {

using Md = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;
struct DirCloser {
  void operator()(DIR* d) const { closedir(d); }
};

std::string Hex(const unsigned char* p, unsigned n) {
  static const char* k = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; i++) s += {k[p[i] >> 4], k[p[i] & 15]};
  return s;
}

Result<std::string> FileSum(const std::string& path) {
  pohmelfs::UniqueFd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(("open " + path).c_str());
  Md md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = read(fd.get(), buf.data(), buf.size());
    if (n < 0) return Status::FromErrno(("read " + path).c_str());
    if (n == 0) break;
    EVP_DigestUpdate(md.get(), buf.data(), static_cast<size_t>(n));
  }
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(md.get(), out, &len);
  return Hex(out, len);
}

std::string Xattrs(const std::string& path) {
  std::vector<char> names(65536);
  ssize_t n = llistxattr(path.c_str(), names.data(), names.size());
  if (n <= 0) return "";
  std::vector<std::string> list;
  for (ssize_t i = 0; i < n;) {
    std::string name(names.data() + i);
    i += static_cast<ssize_t>(name.size()) + 1;
    list.push_back(name);
  }
  std::sort(list.begin(), list.end());
  std::string out;
  std::vector<unsigned char> value(65536);
  for (const auto& name : list) {
    ssize_t v = lgetxattr(path.c_str(), name.c_str(), value.data(), value.size());
    out += " " + name + "=" + (v < 0 ? "?" : Hex(value.data(), static_cast<unsigned>(v)));
  }
  return out;
}

Status Walk(const std::string& root, const std::string& rel, std::string* all) {
  const std::string dir = rel.empty() ? root : root + "/" + rel;
  std::unique_ptr<DIR, DirCloser> d(opendir(dir.c_str()));
  if (!d) return Status::FromErrno(("opendir " + dir).c_str());
  std::vector<std::string> names;
  while (dirent* e = readdir(d.get())) {
    std::string n = e->d_name;
    if (n == "." || n == ".." || (rel.empty() && n == ".pohmelfs")) continue;
    names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    const std::string r = rel.empty() ? n : rel + "/" + n;
    const std::string path = root + "/" + r;
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) return Status::FromErrno(("lstat " + path).c_str());
    std::string line = r + " mode=" + std::to_string(st.st_mode) +
                       " uid=" + std::to_string(st.st_uid) + " gid=" + std::to_string(st.st_gid);
    if (!S_ISDIR(st.st_mode))
      line += " nlink=" + std::to_string(st.st_nlink) + " size=" + std::to_string(st.st_size);
    if (S_ISREG(st.st_mode)) {
      auto sum = FileSum(path);
      if (!sum.ok()) return sum.status();
      line += " sha256=" + *sum;
    } else if (S_ISLNK(st.st_mode)) {
      std::vector<char> target(PATH_MAX);
      ssize_t t = readlink(path.c_str(), target.data(), target.size());
      if (t < 0) return Status::FromErrno(("readlink " + path).c_str());
      line += " target=" + std::string(target.data(), static_cast<size_t>(t));
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      line += " rdev=" + std::to_string(st.st_rdev);
    }
    line += Xattrs(path) + "\n";
    all->append(line);
    if (S_ISDIR(st.st_mode)) POHMELFS_RETURN_IF_ERROR(Walk(root, r, all));
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> TreeSum(const std::string& dir, std::string* lines) {
  std::string all = ". " + Xattrs(dir) + "\n";
  POHMELFS_RETURN_IF_ERROR(Walk(dir, "", &all));
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_Digest(all.data(), all.size(), out, &len, EVP_sha256(), nullptr);
  if (lines) lines->append(all);
  return Hex(out, len);
}

}  // namespace pohmelfs::tools
