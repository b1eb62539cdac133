// Status and Result<T>: cheap error values used at every module boundary. An error carries a
// positive Linux errno (what reaches the application at the FUSE edge) and a short reason for
// logs. Thread-safety: values, no shared state.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace pohmelfs {

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return {}; }
  // REQUIRES: err > 0.
  static Status Error(int err, std::string reason = {}) { return Status(err, std::move(reason)); }
  // The current errno with "what" as the reason.
  static Status FromErrno(const char* what);

  bool ok() const { return err_ == 0; }
  int code() const { return err_; }
  const std::string& reason() const { return reason_; }
  std::string ToString() const;

 private:
  Status(int err, std::string reason) : err_(err), reason_(std::move(reason)) {}
  int err_ = 0;
  std::string reason_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status s) : v_(std::move(s)) {}     // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() { return std::get<0>(v_); }
  const T& operator*() const { return std::get<0>(v_); }
  Status status() const { return ok() ? Status::Ok() : std::get<1>(v_); }
  int code() const { return ok() ? 0 : std::get<1>(v_).code(); }

 private:
  std::variant<T, Status> v_;
};

// Returns the Status of expr from the enclosing function when it is an error.
#define POHMELFS_RETURN_IF_ERROR(expr) \
  do {                                 \
    ::pohmelfs::Status _st = (expr);   \
    if (!_st.ok()) return _st;         \
  } while (0)

}  // namespace pohmelfs
