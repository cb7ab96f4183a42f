// The store behind previous_response_id: the stored JSON round trip, and the in-process store's
// owner check, bounds (count, bytes per entry) and TTL, on a fake clock (`now` passed in).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "api/response_store.h"
#include "api/responses.h"
#include "support/run_awaitable.h"

namespace bw::api {
namespace {

constexpr Nanos kSec = kNanosPerSecond;
constexpr const char* kOwner = "tenant:acme";

StoredConversation sample() {
  StoredConversation s;
  s.owner = kOwner;
  s.system.push_back(Part{
      .kind = Part::Kind::kText, .text = "be brief", .cache_control = R"({"type":"ephemeral"})"});
  Message user{Role::kUser, {}};
  user.parts.push_back(Part{.kind = Part::Kind::kText, .text = "Quote \" slash \\ nl \n é 🦉"});
  user.parts.push_back(Part{.kind = Part::Kind::kImage, .image_url = "https://example.com/a.png"});
  user.parts.push_back(
      Part{.kind = Part::Kind::kImage, .media_type = "image/png", .data = "iVBORw0KGgo="});
  s.conversation.push_back(user);
  Message assistant{Role::kAssistant, {}};
  assistant.parts.push_back(Part{.kind = Part::Kind::kText, .text = "Let me look."});
  assistant.parts.push_back(Part{.kind = Part::Kind::kToolCall,
                                 .id = "call_1",
                                 .name = "get_weather",
                                 .arguments = R"({"city":"Paris"})"});
  s.conversation.push_back(assistant);
  Message tool{Role::kTool, {}};
  tool.parts.push_back(Part{.kind = Part::Kind::kToolResult,
                            .text = "rain",
                            .id = "call_1",
                            .name = "get_weather",
                            .is_error = true});
  s.conversation.push_back(tool);
  s.conversation.push_back(Message{Role::kSystem, {Part{.text = "late system"}}});
  return s;
}

StoredConversation owned(std::string owner = kOwner) {
  StoredConversation s;
  s.owner = std::move(owner);
  return s;
}

void expect_same(const Part& a, const Part& b) {
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.text, b.text);
  EXPECT_EQ(a.image_url, b.image_url);
  EXPECT_EQ(a.media_type, b.media_type);
  EXPECT_EQ(a.data, b.data);
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.arguments, b.arguments);
  EXPECT_EQ(a.is_error, b.is_error);
  EXPECT_EQ(a.cache_control, b.cache_control);
}

void expect_same(const StoredConversation& a, const StoredConversation& b) {
  EXPECT_EQ(a.owner, b.owner);
  ASSERT_EQ(a.system.size(), b.system.size());
  for (std::size_t i = 0; i < a.system.size(); ++i) expect_same(a.system[i], b.system[i]);
  ASSERT_EQ(a.conversation.size(), b.conversation.size());
  for (std::size_t i = 0; i < a.conversation.size(); ++i) {
    EXPECT_EQ(a.conversation[i].role, b.conversation[i].role);
    ASSERT_EQ(a.conversation[i].parts.size(), b.conversation[i].parts.size());
    for (std::size_t j = 0; j < a.conversation[i].parts.size(); ++j) {
      expect_same(a.conversation[i].parts[j], b.conversation[i].parts[j]);
    }
  }
}

TEST(StoredConversation, JsonRoundTripKeepsEveryPartAndRole) {
  const StoredConversation in = sample();
  const std::string json = encode_stored_conversation(in);
  StoredConversation out;
  ASSERT_TRUE(decode_stored_conversation(json, out)) << json;
  expect_same(in, out);
  // Empty fields are left out of the JSON.
  EXPECT_EQ(json.find("\"image_url\":\"\""), std::string::npos) << json;
  // The owner is in the JSON, and an entry with nothing but its owner round-trips too.
  EXPECT_NE(json.find("\"owner\":\"tenant:acme\""), std::string::npos) << json;
  ASSERT_TRUE(decode_stored_conversation(encode_stored_conversation(owned("key:k1")), out));
  EXPECT_EQ(out.owner, "key:k1");
  EXPECT_TRUE(out.conversation.empty());
  EXPECT_TRUE(out.system.empty());
}

// Whose an entry without an owner is cannot be known, so it never decodes: neither a value of
// version 1 (written before entries had owners) nor one whose owner is missing or empty.
TEST(StoredConversation, AnEntryWithoutAnOwnerDoesNotDecode) {
  StoredConversation out;
  for (const std::string& ownerless :
       {std::string(R"({"v":1,"system":[],"conversation":[{"role":"user","parts":[)"
                    R"({"kind":"text","text":"hi"}]}]})"),
        std::string(R"({"v":1,"owner":"tenant:acme","system":[],"conversation":[]})"),
        std::string(R"({"v":2,"system":[],"conversation":[]})"),
        std::string(R"({"v":2,"owner":"","system":[],"conversation":[]})"),
        std::string(R"({"v":2,"owner":7,"system":[],"conversation":[]})"),
        encode_stored_conversation(owned(""))}) {
    EXPECT_FALSE(decode_stored_conversation(ownerless, out)) << ownerless;
  }
  ASSERT_TRUE(decode_stored_conversation(
      R"({"v":2,"owner":"tenant:acme","system":[],"conversation":[]})", out));
  EXPECT_EQ(out.owner, "tenant:acme");
}

// A marker of a response stored by the provider: version 3 (a replica that reads version 2 only
// takes it for an unknown id), its owner and nothing else.
TEST(StoredConversation, AMarkerRoundTripsAsVersion3AndAConversationStaysVersion2) {
  StoredConversation marker = owned("tenant:acme");
  marker.upstream = true;
  const std::string json = encode_stored_conversation(marker);
  EXPECT_NE(json.find("\"v\":3"), std::string::npos) << json;
  EXPECT_NE(json.find("\"upstream\":true"), std::string::npos) << json;
  StoredConversation out;
  ASSERT_TRUE(decode_stored_conversation(json, out)) << json;
  EXPECT_TRUE(out.upstream);
  EXPECT_EQ(out.owner, "tenant:acme");
  EXPECT_TRUE(out.conversation.empty());
  const std::string conv = encode_stored_conversation(sample());
  EXPECT_NE(conv.find("\"v\":2"), std::string::npos) << conv;
  EXPECT_EQ(conv.find("upstream"), std::string::npos) << conv;
  ASSERT_TRUE(decode_stored_conversation(conv, out));
  EXPECT_FALSE(out.upstream);
  // Version 3 is a marker or nothing; a marker needs an owner like any entry.
  for (const std::string& bad :
       {std::string(R"({"v":3,"owner":"tenant:acme","system":[],"conversation":[]})"),
        std::string(R"({"v":3,"owner":"tenant:acme","upstream":false,"system":[],)"
                    R"("conversation":[]})"),
        std::string(R"({"v":3,"owner":"","upstream":true,"system":[],"conversation":[]})")}) {
    EXPECT_FALSE(decode_stored_conversation(bad, out)) << bad;
  }
}

TEST(StoredConversation, ForeignOrDamagedValuesDoNotDecode) {
  StoredConversation out;
  const std::string good = encode_stored_conversation(sample());
  for (const std::string& bad :
       {std::string(), std::string("null"), std::string("[]"), std::string("not json"),
        good.substr(0, good.size() / 2), std::string(R"({"v":2,"system":[],"conversation":[]})"),
        std::string(R"({"v":1,"conversation":[]})"),
        std::string(R"({"v":1,"system":[],"conversation":[{"role":"robot","parts":[]}]})"),
        std::string(R"({"v":1,"system":[{"kind":"video"}],"conversation":[]})"),
        std::string(R"({"v":1,"system":[{"kind":"text","text":5}],"conversation":[]})")}) {
    EXPECT_FALSE(decode_stored_conversation(bad, out)) << bad;
  }
}

TEST(MemoryResponseStore, EntriesExpireAfterTheirTtl) {
  MemoryResponseStore store(10, 60 * kSec);
  ASSERT_TRUE(store.put("resp_a", sample(), 100 * kSec));
  StoredConversation out;
  EXPECT_TRUE(store.get("resp_a", kOwner, out, 100 * kSec));
  expect_same(sample(), out);
  EXPECT_TRUE(store.get("resp_a", kOwner, out, 160 * kSec - 1));
  EXPECT_FALSE(store.get("resp_a", kOwner, out, 160 * kSec));  // expired, and dropped
  EXPECT_EQ(store.size(), 0u);
  EXPECT_FALSE(store.get("resp_unknown", kOwner, out, 0));
}

TEST(MemoryResponseStore, OldestEntriesLeaveFirstAtTheCountBound) {
  MemoryResponseStore store(2, 3600 * kSec);
  StoredConversation out;
  ASSERT_TRUE(store.put("a", owned(), 0));
  ASSERT_TRUE(store.put("b", owned(), 1));
  ASSERT_TRUE(store.put("c", owned(), 2));
  EXPECT_EQ(store.size(), 2u);
  EXPECT_FALSE(store.get("a", kOwner, out, 3));
  EXPECT_TRUE(store.get("b", kOwner, out, 3));
  EXPECT_TRUE(store.get("c", kOwner, out, 3));
  // An id stored again is the newest: "b" leaves before it.
  ASSERT_TRUE(store.put("c", sample(), 4));
  ASSERT_TRUE(store.put("d", owned(), 5));
  EXPECT_FALSE(store.get("b", kOwner, out, 6));
  EXPECT_TRUE(store.get("c", kOwner, out, 6));
  expect_same(sample(), out);
  EXPECT_TRUE(store.get("d", kOwner, out, 6));
  // Storing one id over and over keeps the store (and its order) bounded.
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(store.put("d", owned(), 7 + i));
  EXPECT_EQ(store.size(), 2u);
  EXPECT_TRUE(store.get("c", kOwner, out, 2000));
}

TEST(MemoryResponseStore, AnEntryOverTheByteBoundIsNotStored) {
  MemoryResponseStore store(10, 3600 * kSec, 1000);
  StoredConversation big = owned();
  big.conversation.push_back(Message{Role::kUser, {Part{.text = std::string(1001, 'x')}}});
  EXPECT_FALSE(store.put("big", big, 0));
  StoredConversation out;
  EXPECT_FALSE(store.get("big", kOwner, out, 0));
  big.conversation[0].parts[0].text.resize(900);
  EXPECT_TRUE(store.put("fits", big, 0));
  EXPECT_TRUE(store.get("fits", kOwner, out, 0));
}

TEST(MemoryResponseStore, AnotherOwnersEntryReadsExactlyAsAnUnknownId) {
  MemoryResponseStore store(10, 60 * kSec);
  ASSERT_TRUE(store.put("resp_a", sample(), 0));  // owned by tenant:acme
  StoredConversation out = owned("untouched");
  for (const char* stranger : {"tenant:globex", "key:acme", "acme", "tenant:acm", ""}) {
    EXPECT_FALSE(store.get("resp_a", stranger, out, kSec)) << stranger;
    EXPECT_EQ(store.get("resp_a", stranger, out, kSec),
              store.get("resp_nope", stranger, out, kSec));
  }
  // Nothing of the entry reached the stranger, and it is still there for its owner.
  EXPECT_EQ(out.owner, "untouched");
  EXPECT_TRUE(out.conversation.empty());
  EXPECT_EQ(store.size(), 1u);
  ASSERT_TRUE(store.get("resp_a", kOwner, out, kSec));
  expect_same(sample(), out);
}

TEST(MemoryResponseStore, AnEntryWithoutAnOwnerIsNotStored) {
  MemoryResponseStore store(10, 60 * kSec);
  StoredConversation ownerless = sample();
  ownerless.owner.clear();
  EXPECT_FALSE(store.put("resp_a", ownerless, 0));
  EXPECT_EQ(store.size(), 0u);
  StoredConversation out;
  EXPECT_FALSE(store.get("resp_a", "", out, 0));
}

TEST(MemoryResponseStore, TheBackendInterfaceChecksTheOwnerToo) {
  boost::asio::io_context ioc;
  auto store = make_memory_response_store(ResponseStoreOptions{});
  ASSERT_TRUE(bw::testing::run(ioc, store->put("resp_a", sample(), 0)));
  EXPECT_FALSE(bw::testing::run(ioc, store->put("resp_b", owned(""), 0)));
  StoredConversation out;
  EXPECT_EQ(store->try_get("resp_a", "tenant:globex", out, 0), StoreLookup::kNotFound);
  EXPECT_EQ(store->try_get("resp_a", "", out, 0), StoreLookup::kNotFound);
  EXPECT_EQ(bw::testing::run(ioc, store->get("resp_a", "tenant:globex", out, 0)),
            StoreLookup::kNotFound);
  EXPECT_EQ(store->try_get("resp_b", "", out, 0), StoreLookup::kNotFound);
  EXPECT_TRUE(out.conversation.empty());
  EXPECT_EQ(store->try_get("resp_a", kOwner, out, 0), StoreLookup::kFound);
  expect_same(sample(), out);
  out = {};
  EXPECT_EQ(bw::testing::run(ioc, store->get("resp_a", kOwner, out, 0)), StoreLookup::kFound);
  expect_same(sample(), out);
}

// A marker is found by its owner only, with its flag, and bounded like any entry.
TEST(MemoryResponseStore, AMarkerIsItsOwnersOnlyAndExpires) {
  boost::asio::io_context ioc;
  ResponseStoreOptions o;
  o.ttl = 10 * kSec;
  auto store = make_memory_response_store(o);
  StoredConversation marker = owned();
  marker.upstream = true;
  ASSERT_TRUE(bw::testing::run(ioc, store->put("resp_up", marker, 0)));
  StoredConversation out;
  EXPECT_EQ(store->try_get("resp_up", "tenant:globex", out, kSec), StoreLookup::kNotFound);
  EXPECT_FALSE(out.upstream);
  ASSERT_EQ(store->try_get("resp_up", kOwner, out, kSec), StoreLookup::kFound);
  EXPECT_TRUE(out.upstream);
  EXPECT_EQ(out.owner, kOwner);
  EXPECT_EQ(store->try_get("resp_up", kOwner, out, 10 * kSec), StoreLookup::kNotFound);
}

TEST(MemoryResponseStore, TheInProcessBackendAnswersWithoutWaiting) {
  ResponseStoreOptions o;
  o.ttl = 10 * kSec;
  o.max_entries = 1;
  auto store = make_memory_response_store(o);
  EXPECT_EQ(store->backend(), "memory");
  StoredConversation out;
  auto found = store->try_get("resp_x", kOwner, out, 0);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(*found, StoreLookup::kNotFound);
}

}  // namespace
}  // namespace bw::api
