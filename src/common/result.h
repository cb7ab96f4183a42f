#pragma once
// Result<T>: the data plane returns errors as values, never exceptions. An Error carries what the
// client will see (HTTP status, OpenAI error type and code) and a message free of secrets.
//
// A Result keeps its Error on the heap: a Result is the size of its value and a pointer, not of
// an Error (144 bytes). Results live in coroutine frames (an awaited one's, the awaiting one's)
// for every request in flight, and an Error in place put the variant's index 144 bytes past the
// value, on a cache line of its own that every request touched. Errors are the rare path; the
// allocation is theirs.
#include <memory>
#include <string>
#include <utility>
#include <variant>

namespace bw {

struct Error {
  int status = 500;           // HTTP status to answer with
  std::string type;           // OpenAI error type, e.g. "invalid_request_error"
  std::string code;           // OpenAI error code, e.g. "invalid_api_key" (may be empty)
  std::string message;        // human readable, never contains a secret
  std::string param;          // offending parameter, may be empty
  double retry_after_s = -1;  // >= 0 adds a Retry-After header
};

inline Error make_error(int status, std::string type, std::string code, std::string message,
                        std::string param = {}) {
  return Error{status, std::move(type), std::move(code), std::move(message), std::move(param), -1};
}

namespace detail {
// An Error on the heap, copied as a value. A moved-from box holds none and reads as an Error of
// its defaults (as a moved-from Error in place read as one with its strings emptied).
class ErrorBox {
 public:
  explicit ErrorBox(Error e) : p_(std::make_unique<Error>(std::move(e))) {}
  ErrorBox(const ErrorBox& o) : p_(o.p_ ? std::make_unique<Error>(*o.p_) : nullptr) {}
  ErrorBox(ErrorBox&&) noexcept = default;
  ErrorBox& operator=(const ErrorBox& o) {
    if (this != &o) p_ = o.p_ ? std::make_unique<Error>(*o.p_) : nullptr;
    return *this;
  }
  ErrorBox& operator=(ErrorBox&&) noexcept = default;
  ~ErrorBox() = default;
  const Error& get() const {
    static const Error kNone{};
    return p_ ? *p_ : kNone;
  }

 private:
  std::unique_ptr<Error> p_;
};
}  // namespace detail

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_).get(); }

 private:
  std::variant<T, detail::ErrorBox> v_;
};

struct Ok {};

}  // namespace bw
