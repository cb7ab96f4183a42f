#include "cache/key.h"

#include <gtest/gtest.h>

namespace bw::cache {
namespace {

std::string key_of(std::string_view body, std::string_view scope = "t:acme",
                   std::string_view model = "gpt-4.1", bool stream = false,
                   std::string_view api = "/v1/chat/completions") {
  auto c = canonical_body(body);
  EXPECT_TRUE(c.ok()) << body;
  return make_key({scope, model, api, stream}, c.ok() ? *c : std::string());
}

constexpr std::string_view kBase =
    R"({"model":"gpt-4.1","messages":[{"role":"user","content":"Hi"}],"temperature":0,)"
    R"("seed":7,"n":1,"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],)"
    R"("response_format":{"type":"json_object"},"top_p":1,"max_tokens":20})";

TEST(CacheKey, KeyOrderAndWhitespaceDoNotMatter) {
  const std::string reordered =
      "{ \"max_tokens\" : 20 ,\n \"top_p\":1.0, \"response_format\":{\"type\":\"json_object\"},"
      "\"tools\":[{\"function\":{\"parameters\":{},\"name\":\"f\"},\"type\":\"function\"}],"
      "\"n\":1,\"seed\":7,\"temperature\":0.0,\t\"messages\":[{\"content\":\"Hi\",\"role\":"
      "\"user\"}],\"model\":\"gpt-4.1\"}";
  EXPECT_EQ(key_of(kBase), key_of(reordered));
  EXPECT_EQ(*canonical_body(kBase), *canonical_body(reordered));
}

TEST(CacheKey, FieldsThatDoNotChangeTheAnswerAreIgnored) {
  std::string with = std::string(kBase);
  with.insert(1, R"("user":"u1","stream_options":{"include_usage":true},"metadata":{"a":"b"},)");
  EXPECT_EQ(key_of(kBase), key_of(with));
}

TEST(CacheKey, EveryParameterChangesTheKey) {
  const std::string base = key_of(kBase);
  const std::vector<std::pair<std::string, std::string>> changes = {
      {"\"Hi\"", "\"Hi!\""},
      {"\"user\"", "\"system\""},
      {"\"temperature\":0", "\"temperature\":0.5"},
      {"\"seed\":7", "\"seed\":8"},
      {"\"n\":1", "\"n\":2"},
      {"\"name\":\"f\"", "\"name\":\"g\""},
      {"\"json_object\"", "\"text\""},
      {"\"top_p\":1", "\"top_p\":0.9"},
      {"\"max_tokens\":20", "\"max_tokens\":21"},
  };
  for (const auto& [from, to] : changes) {
    std::string b(kBase);
    const auto pos = b.find(from);
    ASSERT_NE(pos, std::string::npos) << from;
    b.replace(pos, from.size(), to);
    EXPECT_NE(key_of(b), base) << from << " -> " << to;
  }
  std::string extra(kBase);
  extra.insert(1, R"("presence_penalty":0.1,)");
  EXPECT_NE(key_of(extra), base);
}

TEST(CacheKey, ScopeModelApiAndStreamAreInTheKey) {
  const std::string base = key_of(kBase);
  EXPECT_NE(key_of(kBase, "t:other"), base);
  EXPECT_NE(key_of(kBase, "t:acme", "claude-sonnet-4.5"), base);
  EXPECT_NE(key_of(kBase, "t:acme", "gpt-4.1", true), base);
  EXPECT_NE(key_of(kBase, "t:acme", "gpt-4.1", false, "/v1/responses"), base);
}

TEST(CacheKey, ScopeIds) {
  EXPECT_EQ(scope_id(Scope::kTenant, "a", "k1"), "t:a");
  // A key without a tenant is a tenant of its own.
  EXPECT_EQ(scope_id(Scope::kTenant, "", "k1"), "k:k1");
  EXPECT_NE(scope_id(Scope::kTenant, "", "k1"), scope_id(Scope::kTenant, "", "k2"));
  EXPECT_EQ(scope_id(Scope::kKey, "a", "k1"), "k:k1");
  EXPECT_EQ(scope_id(Scope::kGlobal, "a", "k1"), "g");
  // Tenant "k:x" and key "x" cannot meet: the prefixes differ.
  EXPECT_NE(scope_id(Scope::kTenant, "x", ""), scope_id(Scope::kKey, "", "x"));
  EXPECT_EQ(parse_scope("key"), Scope::kKey);
  EXPECT_FALSE(parse_scope("everyone"));
}

TEST(CacheKey, WithoutPromptKeepsParameters) {
  auto a = canonical_body(kBase, true);
  std::string other(kBase);
  other.replace(other.find("\"Hi\""), 4, "\"Hello there\"");
  auto b = canonical_body(other, true);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(a->find("messages"), std::string::npos);
  EXPECT_NE(a->find("tools"), std::string::npos);
}

TEST(CacheKey, NotAnObject) {
  EXPECT_FALSE(canonical_body("[1,2]").ok());
  EXPECT_FALSE(canonical_body("{").ok());
}

TEST(CacheKey, PromptText) {
  EXPECT_EQ(prompt_text(kBase), "user: Hi\n");
  EXPECT_EQ(prompt_text(R"({"input":"abc"})"), "abc");
  EXPECT_EQ(prompt_text(R"({"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]})"),
            "user: x \n");
}

TEST(CacheKey, Deterministic) {
  EXPECT_TRUE(deterministic(R"({"messages":[],"temperature":0})", false));
  EXPECT_TRUE(deterministic(R"({"messages":[],"temperature":0.0})", false));
  EXPECT_TRUE(deterministic(R"({"messages":[],"seed":1})", false));
  EXPECT_FALSE(deterministic(R"({"messages":[],"temperature":0.7})", false));
  EXPECT_FALSE(deterministic(R"({"messages":[]})", false));
  EXPECT_TRUE(deterministic(R"({"input":"x"})", true));
  // A Responses request has an input too: it is not an embedding.
  EXPECT_FALSE(deterministic(R"({"input":"x"})", false));
}

}  // namespace
}  // namespace bw::cache
