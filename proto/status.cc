#include "proto/status.h"

#include <cstring>

namespace pohmelfs {

Status Status::FromErrno(const char* what) {
  int err = errno != 0 ? errno : EIO;
  return Status(err, std::string(what) + ": " + std::strerror(err));
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s = std::strerror(err_);
  if (!reason_.empty()) s += " (" + reason_ + ")";
  return s;
}

}  // namespace pohmelfs
