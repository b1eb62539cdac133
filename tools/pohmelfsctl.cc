// pohmelfsctl: administration commands for a mounted POHMELFS tree.
//   pohmelfsctl rmtree PATH   remove PATH and everything below it in one network command
//   pohmelfsctl mkpath PATH   create PATH with its missing parents in one network command
// Both act through an ioctl on PATH's parent directory, which must be on a POHMELFS mount.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "client/pohmelfs_ioctl.h"

namespace {

int TreeIoctl(unsigned long cmd, const std::string& path, const char* what) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : p.substr(0, slash));
  std::string rest = slash == std::string::npos ? p : p.substr(slash + 1);
  if (cmd == POHMELFS_IOC_MKPATH) {
    // Send the part of PATH below its deepest existing ancestor.
    std::string base = p;
    rest.clear();
    while (access(base.c_str(), F_OK) != 0) {
      size_t s = base.find_last_of('/');
      std::string last = s == std::string::npos ? base : base.substr(s + 1);
      if (!rest.empty()) last.append("/").append(rest);
      rest = std::move(last);
      base = s == std::string::npos ? "." : (s == 0 ? "/" : base.substr(0, s));
    }
    if (rest.empty()) {
      std::fprintf(stderr, "pohmelfsctl mkpath: %s exists\n", path.c_str());
      return 1;
    }
    dir = base;
  }
  pohmelfs_ioc_path arg{};
  if (rest.empty() || rest.size() >= sizeof(arg.path)) {
    std::fprintf(stderr, "pohmelfsctl %s: bad path '%s'\n", what, path.c_str());
    return 2;
  }
  std::memcpy(arg.path, rest.c_str(), rest.size() + 1);
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "pohmelfsctl %s: open %s: %s\n", what, dir.c_str(), std::strerror(errno));
    return 1;
  }
  int rc = ioctl(fd, cmd, &arg);
  int err = errno;
  close(fd);
  if (rc != 0) {
    std::fprintf(stderr, "pohmelfsctl %s %s: %s%s\n", what, path.c_str(), std::strerror(err),
                 err == ENOTTY ? " (not on a POHMELFS mount?)" : "");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"POHMELFS administration"};
  app.require_subcommand(1);
  std::string path;
  auto* rmtree = app.add_subcommand("rmtree", "remove a tree in one network command");
  rmtree->add_option("PATH", path, "tree to remove")->required();
  auto* mkpath = app.add_subcommand("mkpath", "create a directory path in one network command");
  mkpath->add_option("PATH", path, "path to create")->required();
  CLI11_PARSE(app, argc, argv);
  if (rmtree->parsed()) return TreeIoctl(POHMELFS_IOC_RMTREE, path, "rmtree");
  return TreeIoctl(POHMELFS_IOC_MKPATH, path, "mkpath");
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
  return 1;
}
