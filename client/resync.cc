#include "client/resync.h"

#include <spdlog/spdlog.h>

#include <deque>
#include <map>
#include <set>

namespace pohmelfs::client {

namespace {

constexpr uint32_t kReaddirBytes = 64u << 10;

bool SameType(const Entry& a, const Entry& b) {
  return (a.st.st_mode & S_IFMT) == (b.st.st_mode & S_IFMT);
}

Result<std::map<std::string, Entry>> ListAll(FsClient& fs, const Oid& dir) {
  std::map<std::string, Entry> out;
  uint64_t cookie = 0;
  for (;;) {
    auto page = fs.ReadDir(dir, cookie, kReaddirBytes);
    if (!page.ok()) return page.status();
    for (auto& e : page->entries) {
      cookie = e.next_cookie;
      if (e.name != "." && e.name != "..") out.emplace(std::move(e.name), e.entry);
    }
    if (page->eof || page->entries.empty()) return out;
  }
}

Result<std::vector<std::string>> XattrNames(FsClient& fs, const Oid& oid) {
  uint32_t size = 0;
  auto probe = fs.ListXattr(oid, 0, &size);
  if (!probe.ok()) {
    if (probe.code() == EOPNOTSUPP || probe.code() == ENODATA) return std::vector<std::string>{};
    return probe.status();
  }
  if (size == 0) return std::vector<std::string>{};
  auto list = fs.ListXattr(oid, size, &size);
  if (!list.ok()) return list.status();
  std::vector<std::string> names;
  std::string cur;
  for (uint8_t c : *list) {
    if (c == 0) {
      if (!cur.empty()) names.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(c));
    }
  }
  return names;
}

}  // namespace

Result<int> Resyncer::Pass() {
  deferred_ = 0;
  POHMELFS_RETURN_IF_ERROR(SyncObject(good_.root(), false));
  POHMELFS_RETURN_IF_ERROR(Walk({good_.root()}));
  return deferred_;
}

Status Resyncer::Walk(std::deque<Oid> dirs) {
  while (!dirs.empty()) {
    if (cancel_) return Status::Error(ECANCELED, "resync cancelled");
    Oid dir = dirs.front();
    dirs.pop_front();
    std::vector<std::pair<Entry, bool>> children;  // entry on good, created now
    POHMELFS_RETURN_IF_ERROR(ReconcileDir(dir, &children));
    for (const auto& [e, created] : children) {
      POHMELFS_RETURN_IF_ERROR(SyncObject(e.oid, created));
      if (S_ISDIR(e.st.st_mode)) dirs.push_back(e.oid);
    }
  }
  return Status::Ok();
}

Status Resyncer::FullSync() {
  constexpr int kMaxPasses = 4;
  for (int pass = 1; pass <= kMaxPasses; pass++) {
    st_->passes++;
    auto deferred = Pass();
    if (!deferred.ok()) return deferred.status();
    if (*deferred == 0) return Status::Ok();
    spdlog::info("resync: pass {} left {} entries for the next pass", pass, *deferred);
  }
  return Status::Error(EAGAIN,
                       "resync did not converge in " + std::to_string(kMaxPasses) + " passes");
}

Status Resyncer::Redo(const std::vector<Oid>& oids) {
  deferred_ = 0;
  for (const Oid& oid : oids) {
    auto g = good_.GetAttr(oid);
    if (!g.ok()) {
      if (g.code() == ENOENT) continue;  // gone on good too: its parent's reconcile removes it
      return g.status();
    }
    if (!S_ISDIR(g->st.st_mode)) {
      POHMELFS_RETURN_IF_ERROR(SyncObject(oid, false));
      continue;
    }
    std::vector<std::pair<Entry, bool>> children;
    POHMELFS_RETURN_IF_ERROR(ReconcileDir(oid, &children));
    std::deque<Oid> new_dirs;
    for (const auto& [e, created] : children) {
      POHMELFS_RETURN_IF_ERROR(SyncObject(e.oid, created));
      if (created && S_ISDIR(e.st.st_mode)) new_dirs.push_back(e.oid);
    }
    POHMELFS_RETURN_IF_ERROR(Walk(std::move(new_dirs)));
  }
  return deferred_ == 0 ? Status::Ok() : FullSync();
}

// Makes dir's entries on stale the same names with the same object ids as on good.
Status Resyncer::ReconcileDir(const Oid& dir, std::vector<std::pair<Entry, bool>>* children) {
  auto lock = locks_.Exclusive(dir);
  st_->dirs++;
  auto gl = ListAll(good_, dir);
  if (!gl.ok()) return gl.code() == ENOENT ? Status::Ok() : gl.status();  // gone meanwhile
  auto sl = ListAll(stale_, dir);
  if (!sl.ok()) {
    if (sl.code() != ENOENT) return sl.status();
    deferred_++;  // not on stale yet (created under a directory a later pass reaches)
    return Status::Ok();
  }
  bool changed = false;
  for (const auto& [name, se] : *sl) {
    auto it = gl->find(name);
    if (it != gl->end() && it->second.oid == se.oid && SameType(it->second, se)) continue;
    Status s =
        S_ISDIR(se.st.st_mode) ? stale_.RmTree(dir, name).status() : stale_.Unlink(dir, name);
    if (!s.ok() && s.code() != ENOENT) return s;
    st_->removed++;
    changed = true;
  }
  for (const auto& [name, ge] : *gl) {
    auto it = sl->find(name);
    if (it != sl->end() && it->second.oid == ge.oid && SameType(it->second, ge)) {
      children->emplace_back(ge, false);
      continue;
    }
    Status s = CreateLike(dir, name, ge);
    if (s.code() == EEXIST) {  // the id is still in use elsewhere on stale: next pass
      deferred_++;
      continue;
    }
    if (s.code() == ENOENT) continue;  // removed on good meanwhile
    if (!s.ok()) return s;
    st_->created++;
    changed = true;
    children->emplace_back(ge, true);
  }
  if (changed) {  // our creates and removes moved the directory's times: put them back
    auto g = good_.GetAttr(dir);
    if (g.ok()) {
      SetAttrArgs a;
      a.valid = POHMELFS_SETATTR_ATIME | POHMELFS_SETATTR_MTIME | POHMELFS_SETATTR_VERSION;
      a.atime = g->st.st_atim;
      a.mtime = g->st.st_mtim;
      a.version = g->version;
      POHMELFS_RETURN_IF_ERROR(stale_.SetAttr(dir, a).status());
    }
  }
  return Status::Ok();
}

// Creates dir/name on stale as the object ge is on good (same id), or links the existing one.
Status Resyncer::CreateLike(const Oid& dir, const std::string& name, const Entry& ge) {
  const mode_t mode = ge.st.st_mode;
  const uint32_t uid = ge.st.st_uid, gid = ge.st.st_gid;
  if (!S_ISDIR(mode) && stale_.GetAttr(ge.oid).ok())
    return stale_.Link(ge.oid, dir, name).status();  // another name of an object it has
  if (S_ISDIR(mode)) return stale_.MkDir(dir, name, mode & 07777, uid, gid, ge.oid).status();
  if (S_ISLNK(mode)) {
    auto target = good_.ReadLink(ge.oid);
    if (!target.ok()) return target.status();
    return stale_.Symlink(dir, name, *target, uid, gid, ge.oid).status();
  }
  return stale_
      .MkNod(dir, name, mode, static_cast<uint64_t>(ge.st.st_rdev), uid, gid, false, ge.oid)
      .status();
}

// Copies data, xattrs and attributes of one object when its versions differ.
Status Resyncer::SyncObject(const Oid& oid, bool created) {
  auto lock = locks_.Exclusive(oid);
  st_->objects++;
  auto g = good_.GetAttr(oid);
  if (!g.ok()) return g.code() == ENOENT ? Status::Ok() : g.status();
  auto s = stale_.GetAttr(oid);
  if (!s.ok()) {
    if (s.code() != ENOENT) return s.status();
    deferred_++;
    return Status::Ok();
  }
  const mode_t mode = g->st.st_mode;
  if (S_ISLNK(mode)) return Status::Ok();  // a symlink's target never changes
  if (!created && !force_ && g->version == s->version && g->st.st_size == s->st.st_size)
    return Status::Ok();
  st_->copied++;
  if (S_ISREG(mode)) POHMELFS_RETURN_IF_ERROR(CopyData(oid, static_cast<uint64_t>(g->st.st_size)));
  POHMELFS_RETURN_IF_ERROR(CopyXattrs(oid));
  SetAttrArgs a;
  a.valid = POHMELFS_SETATTR_MODE | POHMELFS_SETATTR_UID | POHMELFS_SETATTR_GID |
            POHMELFS_SETATTR_ATIME | POHMELFS_SETATTR_MTIME | POHMELFS_SETATTR_VERSION;
  a.mode = mode & 07777;
  a.uid = g->st.st_uid;
  a.gid = g->st.st_gid;
  a.atime = g->st.st_atim;
  a.mtime = g->st.st_mtim;
  a.version = g->version;
  return stale_.SetAttr(oid, a).status();
}

Status Resyncer::CopyData(const Oid& oid, uint64_t size) {
  SetAttrArgs trunc;
  trunc.valid = POHMELFS_SETATTR_SIZE;
  trunc.size = size;
  POHMELFS_RETURN_IF_ERROR(stale_.SetAttr(oid, trunc).status());
  for (uint64_t off = 0; off < size;) {
    if (cancel_) return Status::Error(ECANCELED, "resync cancelled");
    size_t want = static_cast<size_t>(std::min<uint64_t>(POHMELFS_IO_MAX, size - off));
    auto data = good_.Read(oid, off, want);
    if (!data.ok()) return data.status();
    const auto bytes = data->bytes();
    const size_t n = bytes.size();
    if (n == 0) break;  // shrank meanwhile: the size set above is corrected next pass
    auto w = stale_.Write(oid, off, bytes.data(), n);
    if (!w.ok()) return w.status();
    off += n;
    st_->bytes += n;
  }
  return Status::Ok();
}

Status Resyncer::CopyXattrs(const Oid& oid) {
  auto gnames = XattrNames(good_, oid);
  if (!gnames.ok()) return gnames.status();
  auto snames = XattrNames(stale_, oid);
  if (!snames.ok()) return snames.status();
  std::set<std::string> keep(gnames->begin(), gnames->end());
  for (const auto& n : *snames)
    if (!keep.count(n)) {
      Status s = stale_.RemoveXattr(oid, n);
      if (!s.ok() && s.code() != ENODATA) return s;
    }
  for (const auto& n : *gnames) {
    uint32_t size = 0;
    auto probe = good_.GetXattr(oid, n, 0, &size);
    if (!probe.ok()) {
      if (probe.code() == ENODATA) continue;
      return probe.status();
    }
    std::vector<uint8_t> value;
    if (size > 0) {
      auto v = good_.GetXattr(oid, n, size, &size);
      if (!v.ok()) return v.status();
      value = std::move(*v);
    }
    POHMELFS_RETURN_IF_ERROR(stale_.SetXattr(oid, n, value.data(), value.size(), 0));
  }
  return Status::Ok();
}

}  // namespace pohmelfs::client
