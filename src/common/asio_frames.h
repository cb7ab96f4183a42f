#pragma once
// The memory of Asio's coroutine frames (boost::asio::awaitable), of the operations they await
// (pending reads, writes and waits) and of posted functions, from per-thread free lists, one
// per size class.
//
// Asio recycles frames through its per-thread cache (thread_info_base, awaitable_frame_tag):
// BOOST_ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE blocks of up to 1,020 bytes, handed out first fit,
// each allocation and release a scan of the cache. A proxied request creates about ten frames,
// and with 256 requests in flight on a worker the cache is empty or full most of the time: ~8
// frames per request came from malloc and went back to free, and a small frame that took a
// large cached block left the next large frame without one. Here every size class keeps its own
// last-in, first-out list: a frame usually gets the block that a frame of its size gave back
// last, which is still in the cache, in a few instructions. The same held for the memory of
// the operations a coroutine awaits (~0.7 blocks per request from malloc at 256 connections):
// their handlers' allocator (HandlerAllocator, below) takes it from the same lists.
//
// Included before anything else in every translation unit of the project (the top-level
// CMakeLists.txt passes it with -include): the explicit specialisations at the end must be
// declared before a frame is allocated. Blocks stay compatible with Asio's own recycling, so
// that code compiled without this header (a program that links the client SDK) can free a
// block from here and the other way round. Both read the byte after the frame, inside the
// block: for a frame of up to 1,020 bytes Asio keeps there the block's size in 4-byte chunks,
// and a block is kept here only if that says it is large enough for its class; a larger frame's
// block from here carries kLargeMark there, where Asio writes 0.
//
// Bounded: kMaxPerClass blocks per class and kMaxBytes per thread; frames above kMaxFrame
// bytes are not kept. A thread's blocks are freed when it exits. The sanitizer builds keep no
// blocks, so that a use after free of a frame is still found.
// Thread safety: per thread, nothing shared. A block may be given back on another thread than
// the one it came from (a coroutine that moved to the blocking pool); it joins that thread's
// lists.
#include <boost/asio/detail/thread_info_base.hpp>
#include <climits>
#include <cstddef>
#include <cstdint>

namespace bw::frame_pool {

inline constexpr std::size_t kGranule = 64;  // class k holds blocks of (k + 1) * 64 bytes
inline constexpr std::size_t kMaxFrame = 4095;
inline constexpr std::size_t kClasses = (kMaxFrame + 1) / kGranule;
inline constexpr std::uint32_t kMaxPerClass = 1024;
inline constexpr std::size_t kMaxBytes = std::size_t{4} << 20;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BW_FRAME_POOL_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define BW_FRAME_POOL_OFF 1
#endif
#endif
#ifdef BW_FRAME_POOL_OFF
inline constexpr bool kKeep = false;
#else
inline constexpr bool kKeep = true;
#endif

namespace detail {

struct Lists {
  void* head[kClasses];
  std::uint32_t count[kClasses];
  std::size_t bytes;
  bool armed;   // the thread's Drain is registered (and the thread is not exiting)
  bool closed;  // the thread is exiting: keep nothing more
};
// Constant-initialised and trivially destructible: read without a guard, valid until the thread
// is gone.
inline thread_local Lists lists{};

// Frees the thread's blocks when it exits.
struct Drain {
  ~Drain() {
    Lists& l = lists;
    for (std::size_t k = 0; k < kClasses; ++k) {
      while (void* p = l.head[k]) {
        l.head[k] = *static_cast<void**>(p);
        boost::asio::aligned_delete(p);
      }
      l.count[k] = 0;
    }
    l.bytes = 0;
    l.closed = true;
    l.armed = false;
  }
  bool touched = false;
};
inline thread_local Drain drain;

// The class of a frame of `size` bytes: its block must hold size + 1 bytes (the mark).
constexpr std::size_t class_of(std::size_t size) {
  return size / kGranule;
}
constexpr std::size_t block_bytes(std::size_t k) {
  return (k + 1) * kGranule;
}
// The largest frame whose mark is Asio's chunk count, and the mark of a larger frame's block
// from here (Asio marks its own with 0 and never keeps them).
inline constexpr std::size_t kChunkMarked = 4 * UCHAR_MAX;
inline constexpr unsigned char kLargeMark = 0xa5;
// The mark of a block of `bytes` bytes for a frame of up to kChunkMarked bytes: the chunks
// before the mark's own byte. Asio's block for a mark m holds 4m + 1 bytes rounded up to 16,
// so a mark of at least chunks_mark(block_bytes(k)) means a block of block_bytes(k) or more.
constexpr unsigned char chunks_mark(std::size_t bytes) {
  return static_cast<unsigned char>((bytes - 1) / 4);
}
static_assert((block_bytes(class_of(kChunkMarked)) - 1) / 4 <= UCHAR_MAX);
inline unsigned char mark_for(std::size_t size) {
  return size <= kChunkMarked ? chunks_mark(block_bytes(class_of(size))) : kLargeMark;
}
// Whether a block given back for a frame of `size` bytes holds block_bytes(class_of(size)).
inline bool fits_class(const void* p, std::size_t size) {
  const unsigned char mark = static_cast<const unsigned char*>(p)[size];
  return size <= kChunkMarked ? mark >= chunks_mark(block_bytes(class_of(size)))
                              : mark == kLargeMark;
}

}  // namespace detail

inline void* allocate(std::size_t size, std::size_t align) {
  if (!kKeep || size > kMaxFrame || align > alignof(std::max_align_t)) {
    // As Asio does without a cache.
    const std::size_t chunks = (size + 3) / 4;
    void* p = boost::asio::aligned_new(align, chunks * 4 + 1);
    static_cast<unsigned char*>(p)[size] =
        static_cast<unsigned char>(chunks <= UCHAR_MAX ? chunks : 0);
    return p;
  }
  detail::Lists& l = detail::lists;
  const std::size_t k = detail::class_of(size);
  void* p = l.head[k];
  if (p) {
    l.head[k] = *static_cast<void**>(p);
    --l.count[k];
    l.bytes -= detail::block_bytes(k);
  } else {
    p = boost::asio::aligned_new(kGranule, detail::block_bytes(k));
  }
  static_cast<unsigned char*>(p)[size] = detail::mark_for(size);
  return p;
}

namespace detail {
void keep_first(void* p, std::size_t size);
}  // namespace detail

inline void deallocate(void* p, std::size_t size) {
  if constexpr (kKeep) {
    detail::Lists& l = detail::lists;
    const std::size_t k = detail::class_of(size);
    if (size <= kMaxFrame && l.count[k] < kMaxPerClass &&
        l.bytes + detail::block_bytes(k) <= kMaxBytes && detail::fits_class(p, size)) {
      // A tail call: the common case below needs no stack frame.
      if (!l.armed) [[unlikely]]
        return detail::keep_first(p, size);
      *static_cast<void**>(p) = l.head[k];
      l.head[k] = p;
      ++l.count[k];
      l.bytes += detail::block_bytes(k);
      return;
    }
  }
  boost::asio::aligned_delete(p);
}

namespace detail {

// deallocate's rare case, out of line: registers the thread's Drain before its first block is
// kept; an exiting thread keeps nothing.
[[gnu::noinline]] inline void keep_first(void* p, std::size_t size) {
  Lists& l = lists;
  if (l.closed) {
    boost::asio::aligned_delete(p);
    return;
  }
  l.armed = true;
  drain.touched = true;  // registers the thread's Drain
  deallocate(p, size);
}

}  // namespace detail

// An allocator over the lists, for Asio's handler memory: what a pending operation of a
// coroutine holds (a read, a write, a wait, a composed write's state) while it waits.
template <class T>
struct HandlerAllocator {
  using value_type = T;
  HandlerAllocator() noexcept = default;
  template <class U>
  HandlerAllocator(const HandlerAllocator<U>&) noexcept {}  // NOLINT: rebinding is implicit
  T* allocate(std::size_t n) {
    return static_cast<T*>(frame_pool::allocate(sizeof(T) * n, alignof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { frame_pool::deallocate(p, sizeof(T) * n); }
  template <class U>
  bool operator==(const HandlerAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace bw::frame_pool

namespace boost::asio {

template <typename T, typename Allocator>
struct associated_allocator;
namespace detail {
template <typename Executor, typename... Ts>
class awaitable_handler;
template <typename Signature, typename Executor>
class awaitable_async_op_handler;
}  // namespace detail

// The completion handler of every operation a coroutine awaits (use_awaitable, also inside
// as_tuple) allocates its operation from the lists. Asio's default for a handler without an
// allocator is its per-thread cache (thread_info_base's default_tag): 24 blocks, first fit,
// which ran dry with a few hundred operations pending on a worker (~0.7 blocks per request
// from malloc at 256 connections). default_tag itself cannot be specialised here: the class
// uses it in its own definition.
template <typename Executor, typename... Ts, typename Allocator>
struct associated_allocator<detail::awaitable_handler<Executor, Ts...>, Allocator> {
  using type = bw::frame_pool::HandlerAllocator<void>;
  static type get(const detail::awaitable_handler<Executor, Ts...>&) noexcept { return {}; }
  static type get(const detail::awaitable_handler<Executor, Ts...>&, const Allocator&) noexcept {
    return {};
  }
};

// The same for an operation a coroutine awaits directly (a deferred operation, co_awaited).
template <typename Signature, typename Executor, typename Allocator>
struct associated_allocator<detail::awaitable_async_op_handler<Signature, Executor>, Allocator> {
  using type = bw::frame_pool::HandlerAllocator<void>;
  static type get(const detail::awaitable_async_op_handler<Signature, Executor>&) noexcept {
    return {};
  }
  static type get(const detail::awaitable_async_op_handler<Signature, Executor>&,
                  const Allocator&) noexcept {
    return {};
  }
};

}  // namespace boost::asio

namespace boost::asio::detail {

// Coroutine frames.
template <>
inline void* thread_info_base::allocate<thread_info_base::awaitable_frame_tag>(
    thread_info_base::awaitable_frame_tag, thread_info_base*, std::size_t size, std::size_t align) {
  return bw::frame_pool::allocate(size, align);
}

template <>
inline void thread_info_base::deallocate<thread_info_base::awaitable_frame_tag>(
    thread_info_base::awaitable_frame_tag, thread_info_base*, void* pointer, std::size_t size) {
  bw::frame_pool::deallocate(pointer, size);
}

// Functions posted to an executor (a coroutine's resumption after a post, a dispatch to
// another thread's executor).
template <>
inline void* thread_info_base::allocate<thread_info_base::executor_function_tag>(
    thread_info_base::executor_function_tag, thread_info_base*, std::size_t size,
    std::size_t align) {
  return bw::frame_pool::allocate(size, align);
}

template <>
inline void thread_info_base::deallocate<thread_info_base::executor_function_tag>(
    thread_info_base::executor_function_tag, thread_info_base*, void* pointer, std::size_t size) {
  bw::frame_pool::deallocate(pointer, size);
}

}  // namespace boost::asio::detail
