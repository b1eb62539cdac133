// pohmelfs-mount options (-o), in the POHMELFS style, and their defaults.
#pragma once

#include <fuse_lowlevel.h>

#include <string>
#include <vector>

#include "client/replica_spec.h"
#include "proto/pohmelfs_proto.h"

namespace pohmelfs::client {

struct MountOptions {
  std::vector<ReplicaSpec> servers;  // from the SERVER[,SERVER...] argument or cluster=FILE
  unsigned trans_scan_timeout_ms = 5000;
  unsigned trans_retries = 3;
  unsigned connect_timeout_ms = 5000;
  unsigned keepalive_interval_ms = 1000;
  unsigned keepalive_timeout_ms = 1000;
  double attr_timeout = 1.0;   // seconds the kernel may cache attributes
  double entry_timeout = 1.0;  // seconds the kernel may cache names
  unsigned max_write = 1u << 20;
  unsigned max_read = 0;  // largest READ the kernel sends; 0: no limit of ours
  // Coherence (docs/coherence.md): leases from the authority, the kernel cache timeouts while
  // one is held, and write-back of data under a write lease (flushed past trans_max_pages).
  bool leases = true;
  double lease_timeout = 60.0;
  bool writeback = true;
  unsigned trans_max_pages = 2048;
  unsigned threads = 16;  // FUSE worker threads (max idle)
  // Kernel readahead of the mount (its bdi's read_ahead_kb): 1 MiB makes a sequential read one
  // IO_MAX request per round trip instead of the kernel default 128 KiB. 0 keeps the default.
  unsigned read_ahead_kb = 1024;
  // Security (docs/security.md).
  std::string key_file;
  uint32_t crypto_mode = POHMELFS_CRYPTO_NONE;
  bool crypto_fail_unsupported = false;
  unsigned crypto_thread_num = 0;
  std::string name;  // empty: the host name
  std::string log_level = "warn";
  std::string log_file;    // absolute; empty: syslog once in the background, else stderr
  std::string source;      // the URI argument as given
  bool show_help = false;  // -h/--help was given: print usage and exit 0
};

// Parses argv into options plus the arguments for libfuse (mountpoint, -f, -d, -o rest).
// Prints a message and returns false on bad usage.
bool ParseMountOptions(int argc, char** argv, MountOptions* out, fuse_args* fuse_args);
void PrintMountUsage(const char* prog);

}  // namespace pohmelfs::client
