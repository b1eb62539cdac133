// pohmelfsctl: administration commands for a mounted POHMELFS tree.
//   pohmelfsctl rmtree PATH   remove PATH and everything below it in one network command
//   pohmelfsctl mkpath PATH   create PATH with its missing parents in one network command
//   pohmelfsctl servers MNT [CMD]  show or change the mount's working set of servers:
//       status (default) | add SERVER | remove URI | set SERVER | heal URI | resolve URI |
//       wait SECONDS      (SERVER is URI[?prio=N][&perm=r|w|rw])
//   pohmelfsctl treesum DIR [--list]  digest of an export tree, to compare replicas
//   pohmelfsctl keygen FILE   write a new cluster key (mode 0600; never overwrites)
// The mount commands act through an ioctl on a directory of a POHMELFS mount.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "client/pohmelfs_ioctl.h"
#include "crypto/keys.h"
#include "tools/treesum.h"

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

int ServersIoctl(const std::string& mnt, const std::vector<std::string>& words) {
  std::string command;
  for (const auto& w : words) command += (command.empty() ? "" : " ") + w;
  if (command.empty()) command = "status";
  if (words.size() == 2 && words[0] == "wait")  // seconds on the command line, ms on the wire
    command = "wait " + std::to_string(std::stoul(words[1]) * 1000);
  auto arg = std::make_unique<pohmelfs_ioc_ctl>();
  if (command.size() >= sizeof(arg->text)) {
    std::fprintf(stderr, "pohmelfsctl servers: command too long\n");
    return 2;
  }
  std::memcpy(arg->text, command.c_str(), command.size() + 1);
  int fd = open(mnt.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "pohmelfsctl servers: open %s: %s\n", mnt.c_str(), std::strerror(errno));
    return 1;
  }
  int rc = ioctl(fd, POHMELFS_IOC_SERVERS, arg.get());
  int err = errno;
  close(fd);
  if (rc != 0) {
    std::fprintf(stderr, "pohmelfsctl servers %s: %s%s\n", command.c_str(), std::strerror(err),
                 err == ENOTTY ? " (not a POHMELFS mount?)" : "");
    return 1;
  }
  arg->text[sizeof(arg->text) - 1] = 0;
  std::fputs(arg->text, stdout);
  return 0;
}

int TreeSumCommand(const std::string& dir, bool list) {
  std::string lines;
  auto sum = pohmelfs::tools::TreeSum(dir, list ? &lines : nullptr);
  if (!sum.ok()) {
    std::fprintf(stderr, "pohmelfsctl treesum: %s\n", sum.status().ToString().c_str());
    return 1;
  }
  std::fputs(lines.c_str(), stdout);
  std::printf("%s  %s\n", sum->c_str(), dir.c_str());
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
  std::vector<std::string> words;
  auto* servers = app.add_subcommand("servers", "show or change the mount's servers");
  servers->add_option("MOUNTPOINT", path, "a POHMELFS mount")->required();
  servers->add_option("COMMAND", words,
                      "status | add SERVER | remove URI | set SERVER | heal URI | resolve URI | "
                      "wait SECONDS");
  bool list = false;
  auto* treesum = app.add_subcommand("treesum", "digest of an export tree (compare replicas)");
  treesum->add_option("DIR", path, "an export directory on a server")->required();
  treesum->add_flag("--list", list, "print one line per entry before the digest");
  auto* keygen = app.add_subcommand("keygen", "write a new cluster key (mode 0600)");
  keygen->add_option("FILE", path, "where to write it (never overwritten)")->required();
  CLI11_PARSE(app, argc, argv);
  if (keygen->parsed()) {
    pohmelfs::Status s = pohmelfs::crypto::GenerateKeyFile(path);
    if (!s.ok()) {
      std::fprintf(stderr, "pohmelfsctl keygen: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("wrote a new cluster key to %s\n", path.c_str());
    return 0;
  }
  if (servers->parsed()) return ServersIoctl(path, words);
  if (treesum->parsed()) return TreeSumCommand(path, list);
  if (rmtree->parsed()) return TreeIoctl(POHMELFS_IOC_RMTREE, path, "rmtree");
  return TreeIoctl(POHMELFS_IOC_MKPATH, path, "mkpath");
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
  return 1;
}
