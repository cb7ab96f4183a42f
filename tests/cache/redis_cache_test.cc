#include "cache/redis_cache.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include "cache/key.h"
#include "cache/memory_cache.h"
#include "support/redis_server.h"
#include "support/run_awaitable.h"

namespace bw::cache {
namespace {

namespace asio = boost::asio;
using bw::testing::run;

std::shared_ptr<const Entry> big_entry() {
  auto e = std::make_shared<Entry>();
  e->kind = Entry::Kind::kStream;
  for (int i = 0; i < 200; ++i)
    e->body += "data: {\"choices\":[{\"delta\":{\"content\":\"w\"}}]}\n\n";
  e->content_type = "text/event-stream";
  e->cost_micro = 42;
  return e;
}

std::shared_ptr<store::RedisClient> client_for(const test::RedisServer& s) {
  auto ep = store::parse_redis_url(s.url());
  return std::make_shared<store::RedisClient>(*ep, 0, 256, std::vector<store::RedisScript>{});
}

TEST(RedisCache, StoresCompressedWithTtlAndReadsBack) {
  test::RedisServer server;
  asio::io_context ioc;
  RedisCache c(client_for(server), {}, SteadyClock::instance());
  run(ioc, c.put("abc", big_entry(), seconds(30)));
  const auto stored = server.command({"GET", "bw:cache:abc"});
  EXPECT_EQ(stored[0], 'z');  // compressed: above 1 KiB
  EXPECT_LT(stored.size(), big_entry()->body.size() / 4);
  const auto ttl = std::stoll(server.command({"PTTL", "bw:cache:abc"}));
  EXPECT_GT(ttl, 25000);
  EXPECT_LE(ttl, 30000);
  auto got = run(ioc, c.get("abc"));
  ASSERT_NE(got.entry, nullptr);
  EXPECT_FALSE(got.failed);
  EXPECT_EQ(got.entry->body, big_entry()->body);
  EXPECT_EQ(got.entry->cost_micro, 42);
  auto miss = run(ioc, c.get("nope"));
  EXPECT_EQ(miss.entry, nullptr);
  EXPECT_FALSE(miss.failed);
}

TEST(RedisCache, ADownRedisIsAMissWithinTheTimeout) {
  test::RedisServer server;
  asio::io_context ioc;
  RedisCacheOptions o;
  o.timeout = millis(50);
  RedisCache c(client_for(server), o, SteadyClock::instance());
  run(ioc, c.put("k", big_entry(), seconds(30)));
  server.pause();  // accepts nothing, answers nothing
  const Nanos t0 = SteadyClock::instance().now();
  auto got = run(ioc, c.get("k"));
  const Nanos took = SteadyClock::instance().now() - t0;
  server.resume();
  EXPECT_EQ(got.entry, nullptr);
  EXPECT_TRUE(got.failed);
  EXPECT_LT(took, millis(1000));
  EXPECT_GE(c.failures(), 1u);
}

TEST(CacheScope, TenantANeverGetsTenantBsEntry) {
  FakeClock clock;
  MemoryCache c({1 << 20, 4}, clock);
  const std::string body = R"({"model":"m","messages":[{"role":"user","content":"secret plan"}]})";
  auto canon = canonical_body(body);
  ASSERT_TRUE(canon.ok());
  auto key_for = [&](Scope s, std::string_view tenant, std::string_view key) {
    const auto scope = scope_id(s, tenant, key);
    return make_key({scope, "m", "/v1/chat/completions", false}, *canon);
  };
  auto e = std::make_shared<Entry>();
  e->body = "tenant A's answer";
  c.insert(key_for(Scope::kTenant, "A", "a1"), e, seconds(60), clock.now());
  EXPECT_NE(c.find(key_for(Scope::kTenant, "A", "a2"), clock.now()), nullptr);  // same tenant
  EXPECT_EQ(c.find(key_for(Scope::kTenant, "B", "a1"), clock.now()), nullptr);
  EXPECT_EQ(c.find(key_for(Scope::kKey, "A", "a2"), clock.now()), nullptr);
  EXPECT_EQ(c.find(key_for(Scope::kGlobal, "A", "a1"), clock.now()), nullptr);
}

}  // namespace
}  // namespace bw::cache
