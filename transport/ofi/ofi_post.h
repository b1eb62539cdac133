// Posting helpers shared by the ofi backend's connected (OfiConnection) and reliable datagram
// (RdmConnection) connections.
#pragma once

#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <cerrno>

#include "transport/framed/framed_connection.h"
#include "transport/ofi/ofi_domain.h"

namespace pohmelfs::transport::ofi {

// libfabric's negative return of a post as 0, EAGAIN or a positive errno.
inline int PostResult(ssize_t rc) {
  if (rc == 0) return 0;
  if (rc == -FI_EAGAIN) return EAGAIN;
  const int err = static_cast<int>(-rc);
  return err > 0 && err < FI_ERRNO_OFFSET ? err : EIO;
}

// Posts op (an RDMA write or read) on ep towards addr (FI_ADDR_UNSPEC on a connected
// endpoint). publish runs after the last access to op, just before the post: the completion
// may free op at once.
template <typename Publish>
int PostRmaOp(fid_ep* ep, fi_addr_t addr, const OfiDomain& domain, TransferOp* op,
              Publish publish) {
  void* desc = static_cast<const OfiMemoryRegion&>(*op->local).desc();
  iovec iov{op->buf, op->len};
  fi_rma_iov rma{op->remote.addr, op->len, op->remote.key};
  fi_msg_rma msg{};
  msg.msg_iov = &iov;
  msg.desc = &desc;
  msg.iov_count = 1;
  msg.addr = addr;
  msg.rma_iov = &rma;
  msg.rma_iov_count = 1;
  msg.context = op->scratch;
  const bool read = op->kind == TransferOp::Kind::kRead;
  // A write completes when the data is in the peer's memory (a bad key is then reported
  // here), not when it left this host; unless later sends are all it must precede and the
  // provider orders sends after writes.
  const uint64_t when = op->before_next_send && domain.orders_sends_after_writes()
                            ? FI_TRANSMIT_COMPLETE
                            : FI_DELIVERY_COMPLETE;
  publish();
  return PostResult(read ? fi_readmsg(ep, &msg, FI_COMPLETION)
                         : fi_writemsg(ep, &msg, FI_COMPLETION | when));
}

}  // namespace pohmelfs::transport::ofi
