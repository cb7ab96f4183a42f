#pragma once
// A member that most owners never use, constructed on its first mutable use. An owner that
// does not use it neither writes nor destroys its bytes: those cache lines are never touched.
// The request context (gateway/context.h) is built and taken down once per request, with
// hundreds of requests in flight at once; its rarely used parts cost cache misses for nothing.
//
// Reads (`->`, get()) see a default-constructed value while the member is unused; mut()
// constructs it first. Thread safety: that of T (the shared default is immutable).
#include <optional>
#include <utility>

namespace bw {

template <class T>
class Lazy {
 public:
  // The value to change (constructed now if it was not).
  T& mut() { return v_ ? *v_ : v_.emplace(); }
  // Replaces the value with `v`, moved in (not constructed first and then assigned).
  T& set(T&& v) { return v_.emplace(std::move(v)); }
  // The value to read: the default one while unused.
  const T& get() const { return v_ ? *v_ : unused(); }
  const T* operator->() const { return &get(); }
  bool used() const { return v_.has_value(); }

 private:
  // A static member rather than a function's static: read without a guard check, by
  // requests only (after static initialisation).
  static const T& unused() { return kUnused; }
  static inline const T kUnused{};
  std::optional<T> v_;
};

}  // namespace bw
