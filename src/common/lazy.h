#pragma once
// A member that most owners never use, constructed on its first mutable use. An owner that
// does not use it neither writes nor destroys its bytes: those cache lines are never touched.
// The request context (gateway/context.h) is built and taken down once per request, with
// hundreds of requests in flight at once; its rarely used parts cost cache misses for nothing.
//
// Reads (`->`, get()) see a default-constructed value while the member is unused; mut()
// constructs it first. Thread safety: that of T (the shared default is immutable).
#include <new>
#include <utility>

namespace bw {

template <class T>
class Lazy {
 public:
  Lazy() {}  // NOLINT: the value is left unconstructed
  Lazy(const Lazy&) = delete;
  Lazy& operator=(const Lazy&) = delete;
  ~Lazy() {
    if (used_) v_.~T();
  }

  // The value to change (constructed now if it was not).
  T& mut() {
    if (!used_) {
      ::new (static_cast<void*>(&v_)) T();
      used_ = true;
    }
    return v_;
  }
  // Replaces the value with `v`, moved in (not constructed first and then assigned).
  T& set(T&& v) {
    if (used_) {
      used_ = false;
      v_.~T();
    }
    ::new (static_cast<void*>(&v_)) T(std::move(v));
    used_ = true;
    return v_;
  }
  // The value to read: the default one while unused.
  const T& get() const { return used_ ? v_ : unused(); }
  const T* operator->() const { return &get(); }
  bool used() const { return used_; }

  // A static member rather than a function's static: read without a guard check, by
  // requests only (after static initialisation).
  static const T& unused() { return kUnused; }

 private:
  static inline const T kUnused{};
  // The flag first: an owner that leaves the value unused reads and writes only the flag, which
  // shares a cache line with the members before it.
  bool used_ = false;
  union {
    T v_;
  };
};

// Lazy for a large member that few owners use: the value is made on the heap on its first
// mutable use, and the owner holds only a pointer, all that an owner that never uses it reads
// or writes. The same interface as Lazy's.
template <class T>
class LazyBox {
 public:
  LazyBox() = default;
  LazyBox(const LazyBox&) = delete;
  LazyBox& operator=(const LazyBox&) = delete;
  ~LazyBox() { delete v_; }

  T& mut() { return v_ ? *v_ : *(v_ = new T()); }
  T& set(T&& v) {
    T* made = new T(std::move(v));
    delete v_;
    v_ = made;
    return *made;
  }
  const T& get() const { return v_ ? *v_ : Lazy<T>::unused(); }
  const T* operator->() const { return &get(); }
  bool used() const { return v_ != nullptr; }

 private:
  T* v_ = nullptr;
};

}  // namespace bw
