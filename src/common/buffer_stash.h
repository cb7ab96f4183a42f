#pragma once
// The heap buffers of a request's strings, kept per thread for the next request. Every proxied
// request builds the same handful of strings at about the same sizes (the upstream request's
// headers and body, the upstream answer's headers and body, the client's answer headers, the
// request id); without this each cost a malloc and a free, and those of ~1 KB and more (the
// bodies) go past glibc's per-thread cache into its arena.
//
// Buffers are kept by size class (powers of two from 16 bytes), a few per class: take() looks
// at one class, give() puts into one, so both cost a few instructions. A buffer that take()
// has to make is rounded up to its class's size, so that it is found again once given back.
// The shelf is last in, first out. The buffers a connection needs only while it has a request
// (its request body and head fields, its answer's head, an upstream request's head, an
// upstream answer's headers and pieces) are taken per request and given back at its end, so
// that keep-alive connections waiting for their next request keep none.
// A class's shelf grows to the most buffers of its class given back at once, which follows the
// requests in flight on the thread (a few buffers of a class each: 64 per class ran dry at 256
// connections on one worker, and every buffer past them was a malloc and a free).
// Bounded: kPerClass buffers of each class below 4 KB and kPerLargeClass of the larger ones,
// none above 16 KB (~4.4 MB per thread at most, reached only with that many requests in flight
// at once); a larger one, or one given to a full class, is freed as before.
// Thread safety: per thread, nothing shared.
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

namespace bw::stash {

// Class k holds buffers whose allocation (capacity + 1 for the terminator) is in
// [16 << k, 32 << k): capacities 15 (inside the string) up to 16,382.
inline constexpr std::size_t kClasses = 10;
inline constexpr std::size_t kPerClass = 512;       // classes of buffers below 4 KB
inline constexpr std::size_t kPerLargeClass = 8;    // 4 KB and above
inline constexpr std::size_t kFirstLargeClass = 8;  // [16 << 8, 32 << 8): 4 KB up to 8 KB

namespace detail {
struct Shelf {
  std::array<std::vector<std::string>, kClasses> items;  // the buffers of class c, all empty
};
inline Shelf& shelf() {
  thread_local Shelf s;
  return s;
}
}  // namespace detail

// An empty string with room for at least `min` characters: a kept buffer when its class has
// one, else a new one of the class's size.
inline std::string take(std::size_t min) {
  std::string out;
  if (min <= 15) return out;  // fits inside the string itself
  // The first class whose every buffer holds `min`: capacity (16 << c) - 1 >= min.
  const auto c = static_cast<std::size_t>(std::bit_width(min)) - 4;
  if (c >= kClasses) {
    out.reserve(min);
    return out;
  }
  auto& kept = detail::shelf().items[c];
  if (!kept.empty()) {
    out = std::move(kept.back());
    kept.pop_back();
    return out;
  }
  out.reserve((std::size_t{16} << c) - 1);
  return out;
}

// Keeps `str`'s buffer for a later take() (then `str` is left empty); for use just before
// `str` is destroyed.
inline void give(std::string& str) {
  const std::size_t cap = str.capacity();
  if (cap < 31) return;  // no heap buffer, or one smaller than any take() asks of its class
  const auto c = static_cast<std::size_t>(std::bit_width(cap + 1)) - 5;
  if (c >= kClasses) return;
  auto& kept = detail::shelf().items[c];
  if (kept.size() == (c >= kFirstLargeClass ? kPerLargeClass : kPerClass)) return;
  str.clear();
  kept.push_back(std::move(str));
}

// give() of `str`'s buffer, which is freed when the stash does not keep it: `str` is left
// empty and without a heap buffer either way.
inline void release(std::string& str) {
  give(str);
  if (str.capacity() > 15) std::string().swap(str);
}

// Gives the empty `str` a kept buffer of at least `min` characters when it has less room (a
// string that holds characters is left alone).
inline void room(std::string& str, std::size_t min) {
  if (str.capacity() >= min || !str.empty()) return;
  give(str);
  str = take(min);
}

// Read blocks: an allocator for a socket's read buffer (a beast::basic_flat_buffer) whose blocks
// of kReadBlock bytes, the size of a read, are kept per thread, last in, first out. A buffer
// that is emptied and shrunk between uses (an upstream connection back in its pool) gives its
// block back, and the next read on the thread, of any connection, takes the one given back
// last, whose lines are still in the core's caches: at 256 upstream connections on a worker,
// their own blocks (4 MB, the answer's lines of each written by the kernel cold) outgrew the
// core's L2. Other sizes go to operator new and delete as usual.
// Bounded: kReadBlocksKept blocks per thread (1 MB); more are freed. A thread's blocks are
// freed when it exits. The sanitizer builds keep none, so that a use after free is still found.
// Thread safety: per thread, nothing shared; a block freed on another thread joins its list.
inline constexpr std::size_t kReadBlock = 16 * 1024;
inline constexpr std::size_t kReadBlocksKept = 64;

namespace detail {
// The sanitizer builds keep none, as the frame lists keep none (common/asio_frames.h).
inline constexpr bool kKeepBlocks = frame_pool::kKeep;

// kFresh until the thread's BlocksDrain is registered (kArmed), kClosed once the thread exits
// (nothing more is kept).
enum class BlocksState : std::uint8_t { kFresh, kArmed, kClosed };
// Constant-initialised and trivially destructible: read without a guard. The free blocks form a
// list through their first word.
struct Blocks {
  void* head;
  std::size_t count;
  BlocksState state;
};
inline thread_local Blocks blocks{};

// Frees the thread's blocks when it exits.
struct BlocksDrain {
  ~BlocksDrain() {
    for (void* p = blocks.head; p != nullptr;) {
      void* next = *static_cast<void**>(p);
      ::operator delete(p);
      p = next;
    }
    blocks = Blocks{nullptr, 0, BlocksState::kClosed};
  }
  bool touched = false;
};
inline thread_local BlocksDrain blocks_drain;

// Keeps `p` unless the thread keeps kReadBlocksKept already or is exiting.
inline bool keep_block(void* p) noexcept {
  Blocks& b = blocks;
  if (b.count == kReadBlocksKept || b.state == BlocksState::kClosed) return false;
  if (b.state == BlocksState::kFresh) [[unlikely]] {
    b.state = BlocksState::kArmed;
    blocks_drain.touched = true;  // registers its destructor for this thread
  }
  *static_cast<void**>(p) = b.head;
  b.head = p;
  ++b.count;
  return true;
}
}  // namespace detail

// The blocks kept on the calling thread.
inline std::size_t read_blocks_kept() {
  return detail::blocks.count;
}

template <class T>
struct ReadBlockAllocator {
  using value_type = T;
  using is_always_equal = std::true_type;
  ReadBlockAllocator() noexcept = default;
  template <class U>
  ReadBlockAllocator(const ReadBlockAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (detail::kKeepBlocks && bytes == kReadBlock) {
      auto& b = detail::blocks;
      if (void* p = b.head) {
        b.head = *static_cast<void**>(p);
        --b.count;
        return static_cast<T*>(p);
      }
    }
    return static_cast<T*>(::operator new(bytes));
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (detail::kKeepBlocks && n * sizeof(T) == kReadBlock) {
      if (detail::keep_block(p)) return;
    }
    ::operator delete(p);
  }
  template <class U>
  bool operator==(const ReadBlockAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace bw::stash
