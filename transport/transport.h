// The transport interface (DESIGN.md item 5): connect and listen by URI, send a message as a
// header plus payload iovecs, receive whole messages through callbacks. Backends register by
// URI scheme and are chosen at run time; RDMA one-sided operations live in an optional
// interface (rma.h) that a connection offers when its backend has them.
//
// Thread-safety: Connection::Send and Close may be called from any thread. Handler callbacks
// run on the backend's event-loop thread that owns the connection; they must not block for
// long (hand work to another thread). A connection's callbacks never run concurrently.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "proto/codec.h"
#include "proto/status.h"
#include "transport/rma.h"
#include "transport/uri.h"

namespace pohmelfs::transport {

struct Message {
  proto::Header hdr;
  std::vector<uint8_t> payload;  // exactly hdr.length bytes, owned by the receiver
};

class Connection {
 public:
  virtual ~Connection() = default;

  // Sends hdr (its length is set from the payload) and the payload iovecs as one message.
  // The caller keeps ownership of the iovec buffers; they are not referenced after return
  // (whatever the socket did not take at once is copied). Messages sent from one thread are
  // delivered in order. Returns ENOTCONN once the connection is closed.
  virtual Status Send(const proto::Header& hdr, std::span<const iovec> payload) = 0;
  Status Send(const proto::Header& hdr, const void* data, size_t len) {
    iovec v{const_cast<void*>(data), len};
    return Send(hdr, std::span<const iovec>(&v, len ? 1 : 0));
  }

  // Stops delivering messages until ResumeReceive (backpressure: the peer's sends block once
  // the socket buffers fill). Safe from any thread. Independently, a connection accepted by a
  // listener stops being read while more than 32 maximum payloads of its sends are unsent (its
  // peer is not reading the replies), and resumes when they drain.
  virtual void PauseReceive() = 0;
  virtual void ResumeReceive() = 0;

  // Closes the connection; on_close runs once, on the loop thread, with `why`.
  virtual void Close(const Status& why) = 0;
  virtual bool IsOpen() const = 0;
  // "tcp://10.0.0.1:41234", for logs.
  virtual const std::string& Peer() const = 0;

  // Largest payload this side accepts; set after the handshake (default PAYLOAD_MAX).
  virtual void SetMaxPayload(uint32_t bytes) = 0;

  // One-sided RMA on this connection, or null when the backend has none (tcp).
  virtual Rma* rma() { return nullptr; }

  // Opaque per-connection state of the layer above (server session, client channel).
  std::shared_ptr<void> context;
};

using ConnectionPtr = std::shared_ptr<Connection>;

// The wire header a backend sends before payload: hdr with its length set from the payload
// (EMSGSIZE past 4 GiB).
inline Status EncodeSendHeader(const proto::Header& hdr, std::span<const iovec> payload,
                               pohmelfs_hdr* wire) {
  size_t total = 0;
  for (const auto& v : payload) total += v.iov_len;
  if (total > UINT32_MAX) return Status::Error(EMSGSIZE, "payload too large");
  proto::Header h = hdr;
  h.length = static_cast<uint32_t>(total);
  proto::EncodeHeader(h, wire);
  return Status::Ok();
}

struct Handler {
  std::function<void(const ConnectionPtr&)> on_accept;  // listeners only; optional
  std::function<void(const ConnectionPtr&, Message&&)> on_message;
  std::function<void(const ConnectionPtr&, const Status&)> on_close;
};

struct TransportOptions {
  int loop_threads = 1;  // event-loop threads; connections are spread over them
  // Largest payload a new connection accepts until SetMaxPayload changes it.
  uint32_t max_payload = POHMELFS_PAYLOAD_MAX;
  // Most time a network thread (an event loop, a progress thread) keeps polling its sockets or
  // completion queue after the last event before it sleeps; adaptive below that (see
  // adaptive_spin.h). 0 sleeps at once. Servers poll (pohmelfs-server --spin-us).
  std::chrono::microseconds spin{0};
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Starts accepting on uri. Returns the bound address (the real port when uri's port is 0).
  virtual Result<Uri> Listen(const Uri& uri, Handler handler) = 0;
  // Connects within timeout.
  virtual Result<ConnectionPtr> Connect(const Uri& uri, Handler handler,
                                        std::chrono::milliseconds timeout) = 0;
  // Closes every listener and connection and joins the loop threads. Idempotent.
  // REQUIRES: not called from a Handler callback (it joins the thread running it).
  virtual void Shutdown() = 0;
};

// Creates the backend for uri.scheme ("tcp"). ENOTSUP with a clear reason for an unknown or
// not-built scheme.
Result<std::unique_ptr<Transport>> CreateTransport(const std::string& scheme,
                                                   const TransportOptions& options);

}  // namespace pohmelfs::transport
