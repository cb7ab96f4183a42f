// Every field that makes a provider work or bill is in the estimate: choices (n, best_of), text
// outside `messages` (tools, schemas, tool calls and results), images at their documented price;
// and duplicate keys, which two parsers could read differently, are refused.
#include <gtest/gtest.h>

#include <string>

#include "providers/openai.h"

namespace bw::providers {
namespace {

const std::string kMessages = R"("messages":[{"role":"user","content":"hi"}])";

LlmRequest chat(const std::string& extra) {
  auto r = parse_request(Endpoint::kChat, R"({"model":"m",)" + kMessages + extra + "}");
  EXPECT_TRUE(r) << (r ? "" : r.error().message);
  return r ? *r : LlmRequest{};
}

TEST(BillingFields, NMultipliesTheCompletionReservation) {
  auto one = chat(R"(,"max_tokens":1000)");
  EXPECT_EQ(one.choices, 1);
  EXPECT_EQ(completion_reservation(one, 1000), 1000);
  auto many = chat(R"(,"max_tokens":1000,"n":100)");
  EXPECT_EQ(many.choices, 100);
  EXPECT_EQ(completion_reservation(many, 1000), 100'000);
}

TEST(BillingFields, BestOfCountsForCompletions) {
  auto r = parse_request(Endpoint::kCompletions,
                         R"({"model":"m","prompt":"x","max_tokens":10,"n":2,"best_of":5})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->choices, 5);
  EXPECT_EQ(completion_reservation(*r, 10), 50);
}

TEST(BillingFields, ChoicesOutOfRangeAreRefused) {
  for (std::string n : {"0", "-1", "1.5", "\"3\"", "100000"}) {
    auto r = parse_request(Endpoint::kChat, R"({"model":"m",)" + kMessages + R"(,"n":)" + n + "}");
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(r.error().status, 400);
    EXPECT_EQ(r.error().param, "n");
  }
}

TEST(BillingFields, ToolsAndSchemasAreEstimated) {
  const auto base = estimate_prompt_tokens(chat(""));
  const std::string big(30'000, 'd');
  auto tools = chat(R"(,"tools":[{"type":"function","function":{"name":"f","description":")" + big +
                    R"("}}])");
  EXPECT_GE(estimate_prompt_tokens(tools), base + 10'000);
  auto schema = chat(R"(,"response_format":{"type":"json_schema","json_schema":{"schema":{"x":")" +
                     big + R"("}}})");
  EXPECT_GE(estimate_prompt_tokens(schema), base + 10'000);
  auto functions = chat(R"(,"functions":[{"name":"f","description":")" + big + R"("}])");
  EXPECT_GE(estimate_prompt_tokens(functions), base + 10'000);
}

TEST(BillingFields, ToolCallsAndToolResultsAreEstimated) {
  const std::string big(30'000, 'r');
  auto r = parse_request(
      Endpoint::kChat,
      R"({"model":"m","messages":[{"role":"user","content":"q"},)"
      R"({"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",)"
      R"("function":{"name":"f","arguments":")" +
          big +
          R"("}}]},)"
          R"({"role":"tool","tool_call_id":"c1","content":[{"type":"text","text":")" +
          big + R"("}]}]})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_GE(estimate_prompt_tokens(*r), 20'000);
}

TEST(BillingFields, SystemBlocksAndUnknownPartsAreEstimated) {
  const std::string big(30'000, 's');
  auto r = parse_request(Endpoint::kChat,
                         R"({"model":"m","messages":[{"role":"system","content":[{"type":"text",)"
                         R"("text":")" +
                             big + R"("},{"type":"input_audio","input_audio":{"data":")" + big +
                             R"("}}]}]})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_GE(estimate_prompt_tokens(*r), 20'000);
}

TEST(BillingFields, ImagesAtTheMostOneImageIsBilled) {
  auto r = parse_request(
      Endpoint::kChat,
      R"({"model":"m","messages":[{"role":"user","content":[)"
      R"({"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},)"
      R"({"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]}]})");
  ASSERT_TRUE(r) << r.error().message;
  // Both images at the most one image is billed: "detail": "low" is OpenAI's alone, and the
  // request may be translated to a provider that ignores it.
  EXPECT_EQ(r->images, 2);
  EXPECT_EQ(kImageMaxTokens, 1600);
  EXPECT_GE(estimate_prompt_tokens(*r), 2 * 1600);
  // Once the model is known, each image is estimated at its bound (a gpt-4o-mini-like model).
  const auto before = estimate_prompt_tokens(*r);
  r->image_tokens_each = 25'501;
  EXPECT_EQ(estimate_prompt_tokens(*r), before + 2 * (25'501 - 1600));
}

TEST(BillingFields, DuplicateKeysAtAnyDepthAreRefusedByName) {
  struct Case {
    std::string body;
    std::string key;
  };
  for (const auto& c : std::vector<Case>{
           {R"({"model":"m",)" + kMessages + R"(,"stream":false,"stream":true})", "stream"},
           {R"({"model":"m","model":"n",)" + kMessages + "}", "model"},
           {R"({"model":"m",)" + kMessages + R"(,"max_tokens":1,"max_tokens":100000})",
            "max_tokens"},
           {R"({"model":"m",)" + kMessages + R"(,"n":1,"n":1000})", "n"},
           {R"({"model":"m",)" + kMessages + R"(,"str\u0065am":true,"stream":false})", "stream"},
           {R"({"model":"m","messages":[{"role":"user","content":"a","content":"b"}]})", "content"},
           {R"({"model":"m",)" + kMessages +
                R"(,"tools":[{"type":"function","function":{"name":"a","name":"b"}}]})",
            "name"},
       }) {
    auto r = parse_request(Endpoint::kChat, c.body);
    ASSERT_FALSE(r) << c.body;
    EXPECT_EQ(r.error().status, 400);
    EXPECT_EQ(r.error().code, "duplicate_key");
    EXPECT_EQ(r.error().param, c.key) << c.body;
    EXPECT_NE(r.error().message.find("'" + c.key + "'"), std::string::npos);
  }
  // Many keys (the sorted path) with one duplicate.
  std::string many = R"({"model":"m",)" + kMessages + R"(,"metadata":{)";
  for (int i = 0; i < 40; ++i) many += "\"k" + std::to_string(i) + "\":1,";
  many += R"("k7":2}})";
  auto r = parse_request(Endpoint::kChat, many);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().param, "k7");
  // The same key in two different objects is fine.
  EXPECT_TRUE(parse_request(Endpoint::kChat,
                            R"({"model":"m","messages":[{"role":"user","content":"a"},)"
                            R"({"role":"user","content":"b"}]})"));
}

TEST(BillingFields, UsageEstimateFromTheAnswerWhenTheProviderSentNone) {
  auto req = chat(R"(,"n":2)");
  const std::string body =
      R"({"choices":[{"message":{"role":"assistant","content":")" + std::string(300, 'a') +
      R"("}},{"message":{"role":"assistant","content":")" + std::string(300, 'b') + R"("}}]})";
  auto u = estimate_usage(req, body);
  EXPECT_EQ(u.prompt_tokens, estimate_prompt_tokens(req));
  EXPECT_GE(u.completion_tokens, 200);
  // Not JSON: every byte counts.
  EXPECT_GE(estimate_usage(req, std::string(3000, 'z')).completion_tokens, 1000);
}

}  // namespace
}  // namespace bw::providers
