#include "cache/memory_cache.h"

#include <gtest/gtest.h>

#include "cache/redis_cache.h"

namespace bw::cache {
namespace {

std::shared_ptr<const Entry> entry(std::size_t body_bytes, std::string tag = "x") {
  auto e = std::make_shared<Entry>();
  e->body = std::string(body_bytes, 'a') + tag;
  e->content_type = "application/json";
  return e;
}

TEST(MemoryCache, HitThenExpiresAtTtl) {
  FakeClock clock;
  MemoryCache c({1 << 20, 4}, clock);
  ASSERT_TRUE(c.insert("k", entry(10), seconds(60), clock.now()));
  EXPECT_NE(c.find("k", clock.now()), nullptr);
  clock.advance(seconds(59));
  EXPECT_NE(c.find("k", clock.now()), nullptr);
  clock.advance(seconds(1));
  EXPECT_EQ(c.find("k", clock.now()), nullptr);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.bytes(), 0u);
}

TEST(MemoryCache, ByteBoundEvictsLeastRecentlyUsed) {
  FakeClock clock;
  const std::size_t per = entry(1000)->footprint() + 2 * 2 + 64;
  MemoryCache c({per * 3 + 10, 1}, clock);
  for (auto k : {"k1", "k2", "k3"}) ASSERT_TRUE(c.insert(k, entry(1000), seconds(60), 0));
  EXPECT_EQ(c.size(), 3u);
  EXPECT_NE(c.find("k1", 0), nullptr);  // k1 is now the most recent; k2 the least
  ASSERT_TRUE(c.insert("k4", entry(1000), seconds(60), 0));
  EXPECT_EQ(c.size(), 3u);
  EXPECT_LE(c.bytes(), c.max_bytes());
  EXPECT_EQ(c.find("k2", 0), nullptr);
  EXPECT_NE(c.find("k1", 0), nullptr);
  EXPECT_NE(c.find("k4", 0), nullptr);
  EXPECT_EQ(c.evictions(), 1u);
}

TEST(MemoryCache, BoundHoldsUnderManyInserts) {
  FakeClock clock;
  MemoryCache c({64 * 1024, 8}, clock);
  for (int i = 0; i < 5000; ++i) {
    c.insert("key" + std::to_string(i), entry(static_cast<std::size_t>(i % 700)), seconds(60), 0);
    ASSERT_LE(c.bytes(), c.max_bytes());
  }
  EXPECT_GT(c.size(), 10u);
  EXPECT_GT(c.evictions(), 4000u);
}

TEST(MemoryCache, TooLargeOrZeroTtlIsNotStored) {
  FakeClock clock;
  MemoryCache c({4096, 1}, clock);
  EXPECT_FALSE(c.insert("big", entry(8192), seconds(60), 0));
  EXPECT_FALSE(c.insert("k", entry(1), 0, 0));
  EXPECT_EQ(c.size(), 0u);
}

TEST(MemoryCache, ReplaceKeepsOneCopy) {
  FakeClock clock;
  MemoryCache c({1 << 20, 2}, clock);
  c.insert("k", entry(100, "a"), seconds(60), 0);
  const auto b1 = c.bytes();
  c.insert("k", entry(100, "b"), seconds(60), 0);
  EXPECT_EQ(c.size(), 1u);
  EXPECT_EQ(c.bytes(), b1);
  EXPECT_EQ(c.find("k", 0)->body.back(), 'b');
}

TEST(CacheEntry, EncodeDecodeRoundTrip) {
  Entry e;
  e.kind = Entry::Kind::kStream;
  e.content_type = "text/event-stream";
  e.body = "data: {}\n\ndata: [DONE]\n\n";
  e.created_unix_ms = 1234;
  e.prompt_tokens = 5;
  e.completion_tokens = 7;
  e.cost_micro = 99;
  e.model_served = "gpt-4.1";
  auto d = decode(encode(e));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->kind, e.kind);
  EXPECT_EQ(d->body, e.body);
  EXPECT_EQ(d->content_type, e.content_type);
  EXPECT_EQ(d->created_unix_ms, 1234);
  EXPECT_EQ(d->prompt_tokens, 5);
  EXPECT_EQ(d->completion_tokens, 7);
  EXPECT_EQ(d->cost_micro, 99);
  EXPECT_EQ(d->model_served, "gpt-4.1");
  std::string bad = encode(e);
  bad.pop_back();
  EXPECT_FALSE(decode(bad).ok());
  EXPECT_FALSE(decode("nope").ok());
}

TEST(CacheEntry, CompressionAboveTheThreshold) {
  const std::string small(100, 'x'), large(10000, 'y');
  auto s = compress_value(small, 1024);
  EXPECT_EQ(s[0], 'r');
  EXPECT_EQ(*decompress_value(s), small);
  auto l = compress_value(large, 1024);
  EXPECT_EQ(l[0], 'z');
  EXPECT_LT(l.size(), 200u);
  EXPECT_EQ(*decompress_value(l), large);
  l[20] ^= 0x55;
  EXPECT_FALSE(decompress_value(l).ok());
}

}  // namespace
}  // namespace bw::cache
