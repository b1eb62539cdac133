// Internals of the fabric benchmark shared by its files: fabric_bench.cc (echo server, message
// tests, output) and fabric_rma.cc (the RMA write/read sweep and its server side).
//
// The bench's echo protocol: PING requests numbered by hdr.trans, each answered with
// FLAG_REPLY and the same trans. Private request flags (bits no POHMELFS peer sets on PING):
//   (none)          reply echoes the payload
//   kFlagAckOnly    reply with an empty payload
//   kFlagRmaSetup   reply payload: RmaInfoWire of the server's RMA buffer, registered once per
//                   connection and filled with a known pattern; EOPNOTSUPP without rma()
//   kFlagRmaCrc     request payload: RmaRangeWire; reply payload: RmaCrcWire, the CRC32C of
//                   those bytes of the RMA buffer; ERANGE outside it, ENOENT before a setup
// Wire structs are little-endian, fixed width, padded to 8 bytes.
//
// Thread-safety: FabricClient's Run and Call are called from one thread at a time (the
// measuring thread); replies and RMA completions arrive on the transport's threads.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/bench.h"
#include "transport/transport.h"
#include "transport/uri.h"

namespace pohmelfs::bench::fabric {

constexpr uint32_t kFlagAckOnly = 1u << 31;
constexpr uint32_t kFlagRmaSetup = 1u << 30;
constexpr uint32_t kFlagRmaCrc = 1u << 29;

struct RmaInfoWire {
  uint64_t addr;  // the peer's RemoteAddress of the buffer's first byte
  uint64_t key;
  uint64_t len;
};
static_assert(sizeof(RmaInfoWire) == 24);

struct RmaRangeWire {
  uint64_t offset;
  uint64_t len;
};
static_assert(sizeof(RmaRangeWire) == 16);

struct RmaCrcWire {
  uint32_t crc32c;
  uint32_t pad;
};
static_assert(sizeof(RmaCrcWire) == 8);

// Both ends accept 4 MiB messages (above POHMELFS_PAYLOAD_MAX).
constexpr uint32_t kMaxPayload = (4u << 20) + 4096;
// The largest RMA of the sweep (--max-size is bounded by it).
constexpr size_t kMaxRma = 4u << 20;
// The server's RMA buffer: the largest RMA plus a page of slack, so that the buffer is never
// exactly as long as an RMA (an RMA that ran past its range would show in the CRC of the page
// after it, which the client checks too).
constexpr size_t kRmaBufferBytes = kMaxRma + 4096;
constexpr auto kReplyTimeout = std::chrono::seconds(10);
constexpr size_t kSmall = 64;
constexpr double kMiB = 1024.0 * 1024.0;

// Builds the RMA_SETUP or RMA_CRC reply on the server's loop thread. Returns the reply status
// (0 or an errno); the reply payload goes to *out.
uint32_t ServeRma(const transport::ConnectionPtr& conn, const transport::Message& m,
                  std::vector<uint8_t>* out);

// The byte pattern of test data: seed picks one of many patterns (no run of zeros).
void FillPattern(uint8_t* p, size_t len, uint64_t seed);

struct RunParams {
  size_t size = kSmall;
  uint64_t window = 1;
  bool ack = false;  // the server replies with an empty payload
  bool record_latency = false;
  // Messages are sent by the thread calling Run, as an application (the mount) sends, rather
  // than by the loop thread on each reply; used for bandwidth, where tcp then writes straight
  // from the caller's buffer instead of queueing a copy.
  bool send_from_caller = false;
  std::chrono::milliseconds duration{200};  // no new message after this
  uint64_t max_iters = 0;                   // 0: bounded by time only
};

struct RunResult {
  uint64_t iters = 0;
  double seconds = 0;
  std::vector<uint64_t> latency_ns;  // when recorded, one per message
};

struct ClientCtx;

// One connection to an echo server, with its own transport.
class FabricClient {
 public:
  static Result<std::unique_ptr<FabricClient>> Connect(const transport::Uri& uri,
                                                       const transport::TransportOptions& topts);
  FabricClient(std::unique_ptr<transport::Transport> t, transport::ConnectionPtr conn,
               std::shared_ptr<ClientCtx> ctx);
  ~FabricClient();

  // Sends p.window messages of data[0, p.size), then one more per reply until the time or
  // iteration bound is reached (from the loop thread, or from this one with
  // p.send_from_caller), and waits for the last reply.
  Result<RunResult> Run(const RunParams& p, const uint8_t* data);
  // One request outside of a run: PING with flags and payload; returns the reply (its status
  // is the caller's to check).
  Result<transport::Message> Call(uint32_t flags, const void* payload, size_t len);
  transport::Connection& conn() { return *conn_; }

 private:
  void StartLocked(const RunParams& p, const uint8_t* data);
  Status WaitLocked(std::unique_lock<std::mutex>& lk);
  void SendFromCallerLocked(std::unique_lock<std::mutex>& lk);

  std::unique_ptr<transport::Transport> transport_;
  transport::ConnectionPtr conn_;
  std::shared_ptr<ClientCtx> ctx_;
};

struct BandwidthRow {
  uint64_t bytes = 0;
  uint64_t iters = 0;
  double seconds = 0;
  double mib_per_s() const { return static_cast<double>(bytes * iters) / kMiB / seconds; }
  double usec_per_xfer() const { return seconds * 1e6 / static_cast<double>(iters); }
  double mxfers_per_s() const { return static_cast<double>(iters) / seconds / 1e6; }
};

// The context of one client run: options, payload buffer and the results so far.
struct FabricRun {
  FabricRun(const FabricOptions& options, const transport::Uri& server);

  const FabricOptions& o;
  std::string backend;
  std::string label;
  std::string uri;
  std::vector<uint8_t> data;
  std::vector<CsvRow> rows;  // every result, in measuring order

  JsonLine Json(std::string_view test) const;
  RunParams Params(size_t size, uint64_t window) const;
  CsvRow Row(std::string_view test, uint64_t bytes, uint64_t window) const;
};

void Emit(const std::string& line);
// Prints the column titles of a bandwidth table (text mode only).
void PrintBandwidthHeader(const FabricRun& r, std::string_view test, uint64_t window);
// Prints a bandwidth result and records it as a CSV row.
void AddBandwidth(FabricRun& r, std::string_view test, uint64_t window, const BandwidthRow& b);

// The RMA write, then read, sweep over [min_size, max_size] with every size's data checked.
// Prints a skip note when the connection has no rma().
Status MeasureRma(FabricRun& r, FabricClient& client);

}  // namespace pohmelfs::bench::fabric
