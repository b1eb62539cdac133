// Data written under a write lease, kept on the client and sent later in large batches
// (POHMELFS's write-back cache; docs/coherence.md).
//
// Writes land in per-file extents (merged when they touch). A flush sends them as WRITE
// commands of up to POHMELFS_IO_MAX bytes, small ones packed many to a BATCH transaction, up to
// `flush_parallel` transactions at once; each goes to every replica through the Caller. Flushes
// of one file are serialised so that a later write never lands before an earlier one. A file
// flushes by itself past `file_threshold` dirty bytes, and writers wait (flushing) while the
// whole cache is past `total_limit`.
//
// A failed flush drops the file's dirty data and keeps the error: the application sees it on
// its next write, fsync or close of the file (TakeError).
//
// Thread-safety: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "client/fs_client.h"

namespace pohmelfs::client {

class WriteCache {
 public:
  struct Options {
    size_t file_threshold = 8u << 20;
    size_t total_limit = 256u << 20;
    int flush_parallel = 4;
  };
  struct Counters {
    std::atomic<uint64_t> writes{0}, transactions{0}, commands{0}, bytes{0};
  };

  WriteCache(std::shared_ptr<Caller> caller, Options o) : caller_(std::move(caller)), opts_(o) {}

  // Keeps the data; may flush this file first (thresholds). Fails with a recorded error.
  Status Add(const Oid& oid, uint64_t offset, const void* data, size_t size);
  // Sends the file's dirty data; returns the first error (and the recorded one, once).
  Status Flush(const Oid& oid);
  Status FlushAll();
  // A flush nobody waits on (a lease break): an error is kept for the application.
  void FlushForBreak(const Oid& oid);
  // Takes the file's dirty data out of the cache if it is at most max_bytes (the caller sends
  // it another way); nullopt (and nothing taken) otherwise.
  std::optional<std::map<uint64_t, std::vector<uint8_t>>> TakeSmall(const Oid& oid,
                                                                    size_t max_bytes);
  // Forgets the file's dirty data without a trace (the file never reached a server).
  void Discard(const Oid& oid);
  // Drops the file's dirty data, recording why (a lost lease); the next call sees `why`.
  void Fail(const Oid& oid, const Status& why);
  // The recorded error, once.
  Status TakeError(const Oid& oid);
  // The end of the file's dirty data (0 if none), and whether it has any; data a flush is
  // sending counts until the servers answered.
  std::optional<uint64_t> DirtyEnd(const Oid& oid);
  // The file size the last flush reported, if any.
  std::optional<uint64_t> FlushedSize(const Oid& oid);
  size_t dirty_bytes() const { return total_.load(); }
  const Counters& counters() const { return counters_; }

 private:
  struct File {
    std::mutex flush_mu;                               // one flush of this file at a time, in order
    std::mutex mu;                                     // the fields below
    std::map<uint64_t, std::vector<uint8_t>> extents;  // GUARDED_BY(mu): offset -> bytes
    size_t dirty = 0;                                  // GUARDED_BY(mu)
    Status error;                                      // GUARDED_BY(mu)
    std::optional<uint64_t> flushed_size;              // GUARDED_BY(mu)
    // The end of the extents a flush took and is sending: still "dirty" for DirtyEnd until
    // the servers have them (a READ or GETATTR must not overtake them).
    std::optional<uint64_t> sending_end;  // GUARDED_BY(mu)
  };
  std::shared_ptr<File> FileOf(const Oid& oid, bool create);
  Status FlushFile(const Oid& oid, File* f, bool report);
  // Sends the extents as WRITE/BATCH transactions; returns the size the server reported last.
  Result<uint64_t> Send(const Oid& oid, const std::map<uint64_t, std::vector<uint8_t>>& extents);

  const std::shared_ptr<Caller> caller_;
  const Options opts_;
  Counters counters_;
  std::atomic<size_t> total_{0};
  std::mutex mu_;
  std::unordered_map<Oid, std::shared_ptr<File>, proto::OidHash> files_;  // GUARDED_BY(mu_)
};

}  // namespace pohmelfs::client
