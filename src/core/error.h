// Errors for input problems (bad files, configs, ids). Internal invariants use assert instead.
// No exception escapes the library API: functions that can fail on input return Result<T>.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace whale {

struct Error {
  std::string message;  // what is wrong, in one sentence
  std::string file;     // the file it was found in, if any
  std::string field;    // the tensor, JSON field or argument, if any
  std::string hint;     // what the user can do about it, if known

  // "file: field: message (hint: ...)" with empty parts left out.
  std::string to_string() const;
};

// Builds an Error; `field`, `file` and `hint` are optional.
Error make_error(std::string message, std::string field = {}, std::string file = {},
                 std::string hint = {});

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  const Error& error() const {
    assert(!ok());
    return std::get<1>(v_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> v_;
};

struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Ok{}; }

}  // namespace whale

// Propagates an error from an expression returning Result<...>.
#define WHALE_TRY(expr)                                            \
  do {                                                             \
    auto whale_try_result_ = (expr);                               \
    if (!whale_try_result_.ok()) return whale_try_result_.error(); \
  } while (0)

#define WHALE_CONCAT_INNER(a, b) a##b
#define WHALE_CONCAT(a, b) WHALE_CONCAT_INNER(a, b)
// Declares `lhs` from a Result<T> expression, or returns its error.
#define WHALE_ASSIGN_OR_RETURN(lhs, expr)                                                          \
  auto WHALE_CONCAT(whale_res_, __LINE__) = (expr);                                                \
  if (!WHALE_CONCAT(whale_res_, __LINE__).ok()) return WHALE_CONCAT(whale_res_, __LINE__).error(); \
  lhs = std::move(WHALE_CONCAT(whale_res_, __LINE__)).value()
