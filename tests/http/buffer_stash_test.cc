#include "common/buffer_stash.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "http/http.h"

namespace bw {
namespace {

// Empties the calling thread's shelf, so that each test starts from nothing kept.
void drain() {
  std::vector<std::string> held;
  for (std::size_t min : {16, 32, 64, 128, 256, 512, 1024}) {
    for (std::size_t i = 0; i < stash::kPerClass + 1; ++i) held.push_back(stash::take(min));
  }
  for (std::size_t min : {2048, 8191}) {
    for (std::size_t i = 0; i < stash::kPerLargeClass + 1; ++i) held.push_back(stash::take(min));
  }
}

TEST(BufferStash, TakeGivesAnEmptyStringWithRoom) {
  drain();
  for (std::size_t min : {0, 1, 15, 16, 28, 31, 32, 100, 1000, 8191, 8192, 20000, 100000}) {
    std::string s = stash::take(min);
    EXPECT_TRUE(s.empty()) << min;
    EXPECT_GE(s.capacity(), min) << min;
  }
}

TEST(BufferStash, AGivenBufferIsTakenAgainBySizesOfItsClass) {
  drain();
  std::string s = stash::take(1000);
  s.assign(900, 'x');
  const char* buffer = s.data();
  stash::give(s);
  EXPECT_TRUE(s.empty());
  // A request larger than the class's smallest buffer looks elsewhere.
  std::string larger = stash::take(1024);
  EXPECT_NE(larger.data(), buffer);
  std::string again = stash::take(600);
  EXPECT_EQ(again.data(), buffer);
  EXPECT_TRUE(again.empty());
  EXPECT_GE(again.capacity(), 600u);
  // Taken once: the next take of that class makes a new buffer.
  std::string other = stash::take(600);
  EXPECT_NE(other.data(), buffer);
}

TEST(BufferStash, SmallAndHugeBuffersAreNotKept) {
  drain();
  std::string inline_chars = "short";
  stash::give(inline_chars);
  EXPECT_EQ(inline_chars, "short");  // no heap buffer: left as it was
  std::string huge(64 * 1024, 'h');
  stash::give(huge);
  EXPECT_EQ(huge.size(), 64u * 1024);  // above the largest class: freed by its owner
}

TEST(BufferStash, AFullClassKeepsNoMore) {
  drain();
  std::vector<std::string> made;
  std::vector<const char*> buffers;
  for (std::size_t i = 0; i < stash::kPerClass + 2; ++i) {
    made.push_back(stash::take(300));
    buffers.push_back(made.back().data());
  }
  std::size_t kept = 0;
  for (auto& s : made) {
    stash::give(s);
    if (s.capacity() <= 15) ++kept;
  }
  EXPECT_EQ(kept, stash::kPerClass);
}

TEST(BufferStash, ALargeClassKeepsFewer) {
  drain();
  std::vector<std::string> made;
  for (std::size_t i = 0; i < stash::kPerLargeClass + 2; ++i) made.push_back(stash::take(5000));
  std::size_t kept = 0;
  for (auto& s : made) {
    stash::give(s);
    if (s.capacity() <= 15) ++kept;
  }
  EXPECT_EQ(kept, stash::kPerLargeClass);
}

TEST(BufferStash, ReleaseLeavesNoBufferWhetherKeptOrNot) {
  drain();
  std::string kept = stash::take(700);
  const char* buffer = kept.data();
  kept.assign(600, 'k');
  stash::release(kept);
  EXPECT_TRUE(kept.empty());
  EXPECT_LE(kept.capacity(), 15u);
  std::string huge(64 * 1024, 'h');
  stash::release(huge);  // not kept: freed
  EXPECT_TRUE(huge.empty());
  EXPECT_LE(huge.capacity(), 15u);
  EXPECT_EQ(stash::take(700).data(), buffer);
}

TEST(BufferStash, RoomGivesAnEmptyStringAKeptBuffer) {
  drain();
  std::string s = stash::take(1500);
  const char* buffer = s.data();
  stash::give(s);
  std::string empty;
  stash::room(empty, 1200);
  EXPECT_EQ(empty.data(), buffer);
  EXPECT_GE(empty.capacity(), 1200u);
  stash::room(empty, 100);  // room enough already: unchanged
  EXPECT_EQ(empty.data(), buffer);
  std::string holding = "abc";
  stash::room(holding, 5000);  // holds characters: left alone
  EXPECT_EQ(holding, "abc");
  EXPECT_LT(holding.capacity(), 5000u);
}

TEST(BufferStash, ShelvesArePerThread) {
  drain();
  std::string s = stash::take(2000);
  const char* buffer = s.data();
  stash::give(s);
  const char* seen_elsewhere = nullptr;
  std::thread t([&] { seen_elsewhere = stash::take(2000).data(); });
  t.join();
  EXPECT_NE(seen_elsewhere, buffer);
  EXPECT_EQ(stash::take(2000).data(), buffer);
}

TEST(BufferStash, HeadersGiveTheirBufferBackWhenDestroyed) {
  drain();
  const char* buffer = nullptr;
  {
    http::Headers h;
    h.reserve(300);
    h.add("x-one", "1");
    buffer = h.wire().data();
    http::Headers copy = h;  // a copy has its own buffer
    EXPECT_NE(copy.wire().data(), buffer);
    EXPECT_EQ(copy.wire(), h.wire());
  }
  EXPECT_EQ(stash::take(300).data(), buffer);
}

// Read blocks are kept per thread, last in, first out, up to kReadBlocksKept; other sizes are
// not kept.
TEST(ReadBlocks, TheBlockGivenBackLastIsTakenFirstAndTheShelfIsBounded) {
  if (!stash::detail::kKeepBlocks) GTEST_SKIP() << "sanitizer builds keep no blocks";
  std::thread([] {  // a thread of its own: starts with no block kept
    stash::ReadBlockAllocator<char> alloc;
    EXPECT_EQ(stash::read_blocks_kept(), 0u);
    char* a = alloc.allocate(stash::kReadBlock);
    char* b = alloc.allocate(stash::kReadBlock);
    a[stash::kReadBlock - 1] = 'a';
    alloc.deallocate(a, stash::kReadBlock);
    alloc.deallocate(b, stash::kReadBlock);
    EXPECT_EQ(stash::read_blocks_kept(), 2u);
    EXPECT_EQ(alloc.allocate(stash::kReadBlock), b);
    EXPECT_EQ(alloc.allocate(stash::kReadBlock), a);
    EXPECT_EQ(stash::read_blocks_kept(), 0u);
    alloc.deallocate(a, stash::kReadBlock);
    alloc.deallocate(b, stash::kReadBlock);
    char* other = alloc.allocate(100);
    alloc.deallocate(other, 100);
    EXPECT_EQ(stash::read_blocks_kept(), 2u);
    std::vector<char*> held;
    for (std::size_t i = 0; i < stash::kReadBlocksKept + 3; ++i) {
      held.push_back(alloc.allocate(stash::kReadBlock));
    }
    for (char* p : held) alloc.deallocate(p, stash::kReadBlock);
    EXPECT_EQ(stash::read_blocks_kept(), stash::kReadBlocksKept);
  })
      .join();  // the thread's blocks are freed as it exits (LeakSanitizer would say otherwise)
}

}  // namespace
}  // namespace bw
