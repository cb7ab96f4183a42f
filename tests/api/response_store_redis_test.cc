// test-label: redis
// RedisResponseStore against a real redis-server started by the test (loopback, free port, temp
// dir): entries as JSON with a PX TTL, the owner check, the size bound, and a Redis that is gone or
// stalled as a quick kUnavailable / skipped store, never a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include "api/response_store.h"
#include "store/key_crypto.h"
#include "support/redis_server.h"
#include "support/run_awaitable.h"

namespace bw::api {
namespace {

namespace asio = boost::asio;
using bw::testing::run;
using test::RedisServer;

Nanos steady() {
  return SteadyClock::instance().now();
}

constexpr const char* kOwner = "tenant:acme";

// The documented key: key_prefix + the first 16 hex digits of SHA-256(owner) + ":" + id.
std::string key_of(const std::string& id, const std::string& owner = kOwner) {
  return "bw:resp:" + store::sha256_hex(owner).substr(0, 16) + ":" + id;
}

StoredConversation conversation(std::string text, std::string owner = kOwner) {
  StoredConversation s;
  s.owner = std::move(owner);
  s.system.push_back(Part{.text = "be brief"});
  s.conversation.push_back(Message{Role::kUser, {Part{.text = std::move(text)}}});
  s.conversation.push_back(Message{
      Role::kAssistant,
      {Part{.kind = Part::Kind::kToolCall, .id = "call_1", .name = "f", .arguments = "{}"}}});
  return s;
}

std::unique_ptr<RedisResponseStore> make_store(const std::string& url,
                                               Nanos ttl = 60 * kNanosPerSecond,
                                               std::size_t max_bytes = 1 << 20) {
  RedisResponseStoreOptions o;
  o.url = url;
  o.timeout = 200 * kNanosPerMilli;
  o.store.ttl = ttl;
  o.store.max_entry_bytes = max_bytes;
  o.breaker_failures = 2;
  o.breaker_cooldown = 600 * kNanosPerMilli;
  auto s = make_redis_response_store(o);
  EXPECT_TRUE(s.ok());
  return std::move(s.value());
}

TEST(RedisResponseStore, StoresJsonWithATtlAndReadsItBack) {
  RedisServer redis;
  asio::io_context ioc;
  auto store = make_store(redis.url(), 60 * kNanosPerSecond);
  ASSERT_TRUE(run(ioc, store->put("resp_1", conversation("I like owls"), steady())));
  // The value is the documented JSON under key_prefix + id, with a PX expiry.
  // sha256("tenant:acme") begins cef41eed96b2cb03.
  EXPECT_EQ(key_of("resp_1"), "bw:resp:cef41eed96b2cb03:resp_1");
  const std::string raw = redis.command({"GET", key_of("resp_1")});
  EXPECT_NE(raw.find("\"I like owls\""), std::string::npos) << raw;
  const long long pttl = std::atoll(redis.command({"PTTL", key_of("resp_1")}).c_str());
  EXPECT_GT(pttl, 50'000);
  EXPECT_LE(pttl, 60'000);

  StoredConversation out;
  EXPECT_EQ(run(ioc, store->get("resp_1", kOwner, out, steady())), StoreLookup::kFound);
  ASSERT_EQ(out.conversation.size(), 2u);
  EXPECT_EQ(out.conversation[0].parts[0].text, "I like owls");
  EXPECT_EQ(out.conversation[1].parts[0].kind, Part::Kind::kToolCall);
  ASSERT_EQ(out.system.size(), 1u);
  EXPECT_EQ(out.system[0].text, "be brief");

  EXPECT_EQ(run(ioc, store->get("resp_unknown", kOwner, out, steady())), StoreLookup::kNotFound);
  // A value that is not a stored conversation reads as not found.
  redis.command({"SET", key_of("resp_junk"), "{not json"});
  EXPECT_EQ(run(ioc, store->get("resp_junk", kOwner, out, steady())), StoreLookup::kNotFound);
  // Expired (Redis drops it): not found.
  redis.command({"PEXPIRE", key_of("resp_1"), "1"});
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(run(ioc, store->get("resp_1", kOwner, out, steady())), StoreLookup::kNotFound);
  EXPECT_EQ(store->stats().failures, 0u);
}

TEST(RedisResponseStore, AnotherOwnersEntryReadsExactlyAsAnUnknownId) {
  RedisServer redis;
  asio::io_context ioc;
  auto store = make_store(redis.url());
  ASSERT_TRUE(run(ioc, store->put("resp_1", conversation("I like owls"), steady())));
  // The owner is kept in the value, beside the conversation.
  const std::string raw = redis.command({"GET", key_of("resp_1")});
  EXPECT_NE(raw.find("\"owner\":\"tenant:acme\""), std::string::npos) << raw;
  // Under a key of its owner: no other owner's lookup reads it.
  EXPECT_EQ(redis.command({"EXISTS", "bw:resp:resp_1"}), "0");

  StoredConversation out = conversation("untouched", "nobody");
  for (const char* stranger : {"tenant:globex", "key:acme", "tenant:acm", ""}) {
    EXPECT_EQ(run(ioc, store->get("resp_1", stranger, out, steady())), StoreLookup::kNotFound)
        << stranger;
    EXPECT_EQ(run(ioc, store->get("resp_unknown", stranger, out, steady())),
              StoreLookup::kNotFound);
  }
  // Nothing of the entry reached the strangers, and it is still there for its owner.
  EXPECT_EQ(out.owner, "nobody");
  EXPECT_EQ(out.conversation[0].parts[0].text, "untouched");
  EXPECT_EQ(redis.command({"EXISTS", key_of("resp_1")}), "1");
  ASSERT_EQ(run(ioc, store->get("resp_1", kOwner, out, steady())), StoreLookup::kFound);
  EXPECT_EQ(out.owner, kOwner);
  EXPECT_EQ(out.conversation[0].parts[0].text, "I like owls");

  // An entry without an owner is not written, and one written before entries had owners
  // (version 1) is found by nobody.
  EXPECT_FALSE(run(ioc, store->put("resp_2", conversation("x", ""), steady())));
  EXPECT_EQ(redis.command({"EXISTS", key_of("resp_2", "")}), "0");
  // (at the key of that time, and at the owner's key).
  for (const std::string& key : {std::string("bw:resp:resp_old"), key_of("resp_old")}) {
    redis.command({"SET", key,
                   R"({"v":1,"system":[],"conversation":[{"role":"user","parts":[)"
                   R"({"kind":"text","text":"old"}]}]})"});
  }
  for (const char* anyone : {kOwner, "tenant:globex", ""}) {
    EXPECT_EQ(run(ioc, store->get("resp_old", anyone, out, steady())), StoreLookup::kNotFound);
  }
  // A value whose owner is not the key's (written by hand, or a hash collision) is not found
  // either: the value's owner is checked too.
  redis.command({"SET", key_of("resp_moved"),
                 R"({"v":2,"owner":"tenant:globex","system":[],"conversation":[]})"});
  EXPECT_EQ(run(ioc, store->get("resp_moved", kOwner, out, steady())), StoreLookup::kNotFound);
  EXPECT_EQ(store->stats().failures, 0u);
}

// A marker of a response stored by the provider: the owner's key, version 3, the store's TTL.
TEST(RedisResponseStore, AMarkerIsStoredUnderItsOwnerWithTheTtl) {
  RedisServer redis;
  asio::io_context ioc;
  auto store = make_store(redis.url(), 60 * kNanosPerSecond);
  StoredConversation marker;
  marker.owner = kOwner;
  marker.upstream = true;
  ASSERT_TRUE(run(ioc, store->put("resp_up", marker, steady())));
  const std::string raw = redis.command({"GET", key_of("resp_up")});
  EXPECT_NE(raw.find("\"v\":3"), std::string::npos) << raw;
  EXPECT_NE(raw.find("\"upstream\":true"), std::string::npos) << raw;
  const long long pttl = std::atoll(redis.command({"PTTL", key_of("resp_up")}).c_str());
  EXPECT_GT(pttl, 50'000);
  EXPECT_LE(pttl, 60'000);
  StoredConversation out;
  EXPECT_EQ(run(ioc, store->get("resp_up", "tenant:globex", out, steady())),
            StoreLookup::kNotFound);
  EXPECT_FALSE(out.upstream);
  ASSERT_EQ(run(ioc, store->get("resp_up", kOwner, out, steady())), StoreLookup::kFound);
  EXPECT_TRUE(out.upstream);
  EXPECT_TRUE(out.conversation.empty());
}

TEST(RedisResponseStore, AnEntryOverTheSizeBoundIsSkipped) {
  RedisServer redis;
  asio::io_context ioc;
  auto store = make_store(redis.url(), 60 * kNanosPerSecond, 4096);
  EXPECT_FALSE(run(ioc, store->put("resp_big", conversation(std::string(5000, 'x')), steady())));
  EXPECT_EQ(redis.command({"EXISTS", key_of("resp_big")}), "0");
  EXPECT_EQ(store->stats().too_large, 1u);
  EXPECT_TRUE(run(ioc, store->put("resp_small", conversation("x"), steady())));
}

TEST(RedisResponseStore, AStalledOrStoppedRedisIsUnavailableWithinTheDeadline) {
  RedisServer redis;
  asio::io_context ioc;
  auto store = make_store(redis.url());
  ASSERT_TRUE(run(ioc, store->put("resp_1", conversation("hi"), steady())));
  StoredConversation out;

  redis.pause();  // accepts nothing, answers nothing: only the deadline ends the call
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run(ioc, store->get("resp_1", kOwner, out, steady())), StoreLookup::kUnavailable);
  EXPECT_FALSE(run(ioc, store->put("resp_2", conversation("hi"), steady())));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  // The breaker is open now: the next calls fail at once, without a round trip to Redis (which
  // would wait out the 200 ms deadline). Counted, not timed: a slow machine cannot blur it.
  EXPECT_TRUE(store->stats().breaker_open);
  const auto calls = store->stats().calls;
  t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run(ioc, store->get("resp_1", kOwner, out, steady())), StoreLookup::kUnavailable);
  EXPECT_EQ(store->stats().calls, calls) << "a call went to Redis with the breaker open";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  redis.resume();

  redis.stop();
  std::this_thread::sleep_for(std::chrono::milliseconds(700));  // past the breaker's cooldown
  EXPECT_EQ(run(ioc, store->get("resp_1", kOwner, out, steady())), StoreLookup::kUnavailable);

  // Back (empty, no persistence): the store answers again after the cooldown.
  redis.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  StoreLookup again = StoreLookup::kUnavailable;
  for (int i = 0; i < 20 && again == StoreLookup::kUnavailable; ++i) {
    again = run(ioc, store->get("resp_1", kOwner, out, steady()));
    if (again == StoreLookup::kUnavailable)
      std::this_thread::sleep_for(std::chrono::milliseconds(650));
  }
  EXPECT_EQ(again, StoreLookup::kNotFound);
}

}  // namespace
}  // namespace bw::api
