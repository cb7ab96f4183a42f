#pragma once
// Result<T>: the data plane returns errors as values, never exceptions. An Error carries what the
// client will see (HTTP status, OpenAI error type and code) and a message free of secrets.
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

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

struct Ok {};

}  // namespace bw
