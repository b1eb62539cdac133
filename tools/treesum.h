// A digest of an export directory tree, for comparing replicas: every entry's path, type,
// permissions, owner, link count, size, content (SHA-256), symlink target and xattrs (including
// the object id and version POHMELFS keeps in trusted.pohmelfs.*). Times are left out: a
// resync copies them but the kernel moves a directory's times as entries come and go.
#pragma once

#include <string>

#include "proto/status.h"

namespace pohmelfs::tools {

// Walks dir (skipping the top-level .pohmelfs index). With lines, one line per entry is
// appended there. Returns the hex SHA-256 of all entry lines.
Result<std::string> TreeSum(const std::string& dir, std::string* lines);

}  // namespace pohmelfs::tools
