#include "common/asio_frames.h"

#include <gtest/gtest.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_allocator.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

namespace bw::frame_pool {
namespace {

using boost::asio::detail::thread_info_base;

// A purpose this header does not specialise: Asio's own recycling, as code compiled without the
// header sees it (its cache slots are default_tag's).
struct AsioOwnTag {
  enum {
    cache_size = thread_info_base::default_tag::cache_size,
    begin_mem_index = thread_info_base::default_tag::begin_mem_index,
    end_mem_index = thread_info_base::default_tag::end_mem_index
  };
};

std::uint32_t kept(std::size_t size) {
  return detail::lists.count[detail::class_of(size)];
}

TEST(AsioFrames, AFrameGetsTheBlockThatItsSizeClassGaveBackLast) {
  if (!kKeep) GTEST_SKIP() << "sanitizer builds keep no blocks";
  void* a = allocate(1000, 16);
  void* b = allocate(1000, 16);
  const auto before = kept(1000);
  deallocate(a, 1000);
  deallocate(b, 1000);
  EXPECT_EQ(kept(1000), before + 2);
  // Sizes in the same 64-byte class share blocks, last in first out.
  void* c = allocate(970, 16);
  void* d = allocate(1010, 16);
  EXPECT_EQ(c, b);
  EXPECT_EQ(d, a);
  EXPECT_EQ(kept(1000), before);
  // Another class does not take them.
  deallocate(c, 970);
  void* e = allocate(100, 16);
  EXPECT_NE(e, c);
  deallocate(e, 100);
  deallocate(d, 1010);
}

TEST(AsioFrames, AsiosFrameAllocationGoesThroughTheLists) {
  if (!kKeep) GTEST_SKIP() << "sanitizer builds keep no blocks";
  // What awaitable_frame_base::operator new and delete call.
  void* p = thread_info_base::allocate(thread_info_base::awaitable_frame_tag(), nullptr, 700);
  const auto before = kept(700);
  thread_info_base::deallocate(thread_info_base::awaitable_frame_tag(), nullptr, p, 700);
  EXPECT_EQ(kept(700), before + 1);
  EXPECT_EQ(thread_info_base::allocate(thread_info_base::awaitable_frame_tag(), nullptr, 700), p);
  thread_info_base::deallocate(thread_info_base::awaitable_frame_tag(), nullptr, p, 700);
}

// A block's address, kept as a number: compared after the block went back (the compiler's
// use-after-free check would otherwise object to the pointer).
std::uintptr_t address(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

TEST(AsioFrames, AnAwaitedOperationsMemoryGoesThroughTheLists) {
  // The handler of an operation a coroutine awaits, alone and inside as_tuple: the reactor's
  // operation for it is allocated with its associated allocator, rebound to the operation.
  using Handler = boost::asio::detail::awaitable_handler<boost::asio::any_io_executor,
                                                         boost::system::error_code, std::size_t>;
  static_assert(
      std::is_same_v<boost::asio::associated_allocator_t<Handler>, HandlerAllocator<void>>);
  if (!kKeep) GTEST_SKIP() << "sanitizer builds keep no blocks";
  struct Operation {
    alignas(16) unsigned char bytes[150];
  };
  using Rebound = std::allocator_traits<HandlerAllocator<void>>::rebind_alloc<Operation>;
  Rebound a;
  Operation* p = a.allocate(1);
  const auto at = address(p);
  const auto before = kept(sizeof(Operation));
  a.deallocate(p, 1);
  EXPECT_EQ(kept(sizeof(Operation)), before + 1);
  // A frame of the same class gets it next, and the other way round.
  void* frame = allocate(180, 16);
  EXPECT_EQ(address(frame), at);
  deallocate(frame, 180);
  Operation* again = a.allocate(1);
  EXPECT_EQ(address(again), at);
  a.deallocate(again, 1);
}

TEST(AsioFrames, PostedFunctionsMemoryGoesThroughTheLists) {
  if (!kKeep) GTEST_SKIP() << "sanitizer builds keep no blocks";
  void* p = thread_info_base::allocate(thread_info_base::executor_function_tag(), nullptr, 140);
  const auto at = address(p);
  const auto before = kept(140);
  thread_info_base::deallocate(thread_info_base::executor_function_tag(), nullptr, p, 140);
  EXPECT_EQ(kept(140), before + 1);
  void* frame = allocate(150, 16);
  EXPECT_EQ(address(frame), at);
  deallocate(frame, 150);
}

TEST(AsioFrames, BlocksStayUsableByAsiosOwnRecycling) {
  // Code compiled without this header recycles through Asio's cache, which reads the block's
  // size from the byte at [size] (in 4-byte chunks) and reuses the block for any size it holds.
  void* p = allocate(200, 16);
  const auto chunks = static_cast<unsigned char*>(p)[200];
  EXPECT_GE(chunks, 50);                         // at least the 200 bytes asked for
  EXPECT_LE(chunks * std::size_t{4} + 1, 256u);  // never more than the block holds
  {
    thread_info_base asio_cache;
    thread_info_base::deallocate(AsioOwnTag(), &asio_cache, p, 200);
    // Asio's cache gives it to a larger request that fits, writing its own mark inside it.
    const std::size_t larger = kKeep ? 240 : 200;
    void* q = thread_info_base::allocate(AsioOwnTag(), &asio_cache, larger);
    EXPECT_EQ(q, p);
    thread_info_base::deallocate(AsioOwnTag(), &asio_cache, q, larger);
  }  // and frees it with the cache
}

TEST(AsioFrames, AnAsioBlockIsKeptOnlyIfItHoldsItsClass) {
  if (!kKeep) GTEST_SKIP() << "sanitizer builds keep no blocks";
  // Asio's own block for 100 bytes holds 112 (101 rounded up to 16): less than the 128 of its
  // class here. Its mark says so.
  void* p = thread_info_base::allocate(AsioOwnTag(), nullptr, 100);
  const auto before = kept(100);
  deallocate(p, 100);
  EXPECT_EQ(kept(100), before);
  // Asio's block for 124 bytes holds 128 (125 rounded up): large enough, kept.
  void* q = thread_info_base::allocate(AsioOwnTag(), nullptr, 124);
  deallocate(q, 124);
  EXPECT_EQ(kept(100), before + 1);
  EXPECT_EQ(allocate(127, 16), q);
  deallocate(q, 127);
  // A larger frame's block from Asio (marked 0) is not kept either.
  void* r = thread_info_base::allocate(AsioOwnTag(), nullptr, 2000);
  const auto before_large = kept(2000);
  deallocate(r, 2000);
  EXPECT_EQ(kept(2000), before_large);
}

TEST(AsioFrames, ListsAreBoundedAndLargeFramesAreNotKept) {
  if (!kKeep) GTEST_SKIP() << "sanitizer builds keep no blocks";
  std::vector<void*> blocks;
  for (std::uint32_t i = 0; i < kMaxPerClass + 10; ++i) blocks.push_back(allocate(300, 16));
  for (void* b : blocks) deallocate(b, 300);
  EXPECT_EQ(kept(300), kMaxPerClass);
  EXPECT_LE(detail::lists.bytes, kMaxBytes);
  // Empty the class again for the other tests.
  for (std::uint32_t i = 0; i < kMaxPerClass; ++i) blocks[i] = allocate(300, 16);
  for (std::uint32_t i = 0; i < kMaxPerClass; ++i) deallocate(blocks[i], kMaxFrame + 1);
  EXPECT_EQ(kept(300), 0u);

  void* big = allocate(kMaxFrame + 1, 16);
  deallocate(big, kMaxFrame + 1);
  void* again = allocate(kMaxFrame + 1, 16);
  deallocate(again, kMaxFrame + 1);
  SUCCEED();
}

TEST(AsioFrames, EachThreadKeepsItsOwnBlocks) {
  if (!kKeep) GTEST_SKIP() << "sanitizer builds keep no blocks";
  const auto here_before = kept(500);
  std::size_t kept_there = 0;
  std::thread t([&] {
    void* p = allocate(500, 16);
    deallocate(p, 500);
    kept_there = detail::lists.bytes;
  });  // its blocks are freed as it exits (the leak checks of the sanitizer builds see to that)
  t.join();
  EXPECT_EQ(kept_there, 512u);
  EXPECT_EQ(kept(500), here_before);
}

}  // namespace
}  // namespace bw::frame_pool
