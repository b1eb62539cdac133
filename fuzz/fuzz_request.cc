// libFuzzer target: every request decoder of the server. The input is a wire header followed
// by a payload; the header goes through DecodeHeader, and the payload through ExecuteRequest
// (every command's decoder, and the command itself) against a scratch export. The export is
// $POHMELFS_FUZZ_EXPORT (ci/fuzz mounts a small tmpfs there, so that writes and fallocate stay
// bounded), else a directory under /tmp.
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "proto/codec.h"
#include "rdma-server/export_ops.h"
#include "rdma-server/export_store.h"

namespace {

using pohmelfs::server::ExportStore;

class CountingHandles final : public pohmelfs::server::OpenHandles {
 public:
  void Opened(const pohmelfs::proto::Oid&) override { open_++; }
  void Released(const pohmelfs::proto::Oid&) override {
    if (open_ > 0) open_--;
  }
  size_t OpenCount() const override { return open_; }

 private:
  size_t open_ = 0;
};

ExportStore* Store() {
  static std::unique_ptr<ExportStore> store = [] {
    spdlog::set_level(spdlog::level::off);  // the commands' log lines are noise here
    const char* dir = getenv("POHMELFS_FUZZ_EXPORT");
    std::string path = dir && *dir ? dir : "/tmp/pohmelfs-fuzz-export-" + std::to_string(getpid());
    std::filesystem::create_directories(path);
    auto s = ExportStore::Open(path);
    if (!s.ok()) abort();  // the harness itself is broken: say so loudly
    return std::move(*s);
  }();
  return store.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < sizeof(pohmelfs_hdr)) return 0;
  pohmelfs_hdr wire;
  std::memcpy(&wire, data, sizeof(wire));
  const size_t payload = size - sizeof(wire);
  // The framing check the transport does; the fuzzer may set any length, so test the real one
  // and then make it consistent to reach the command decoders.
  (void)pohmelfs::proto::DecodeHeader(wire, POHMELFS_PAYLOAD_MAX);
  wire.magic = pohmelfs::proto::to_le(uint32_t{POHMELFS_MAGIC});
  wire.version = pohmelfs::proto::to_le(uint16_t{POHMELFS_PROTO_VERSION_MAX});
  wire.length = pohmelfs::proto::to_le(static_cast<uint32_t>(payload));
  auto hdr = pohmelfs::proto::DecodeHeader(wire, POHMELFS_PAYLOAD_MAX);
  if (!hdr.ok()) return 0;
  const uint16_t op = hdr->opcode;
  if (op == POHMELFS_OP_HELLO || op == POHMELFS_OP_PING || op == POHMELFS_OP_AUTH) return 0;
  static CountingHandles handles;
  pohmelfs::server::OpEnv env{Store(), &handles};
  env.max_open_handles = 1024;
  pohmelfs::proto::Reader r(std::span<const uint8_t>(data + sizeof(wire), payload));
  std::vector<uint8_t> reply;
  (void)pohmelfs::server::ExecuteRequest(env, op, &r, &reply);
  return 0;
}
