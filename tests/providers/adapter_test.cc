#include <gtest/gtest.h>
#include <simdjson.h>

#include <map>

#include "api/chat.h"
#include "providers/adapter.h"
#include "providers/gemini.h"

namespace bw::providers {
namespace {

TEST(RateLimits, OpenAIAnthropicAndGeminiHeadersReadIntoOneStruct) {
  std::map<std::string, std::string, std::less<>> h = {
      {"x-ratelimit-limit-requests", "500"},     {"x-ratelimit-remaining-requests", "499"},
      {"x-ratelimit-reset-requests", "120ms"},   {"x-ratelimit-limit-tokens", "30000"},
      {"x-ratelimit-remaining-tokens", "29000"}, {"x-ratelimit-reset-tokens", "6m0s"}};
  auto look = [&](std::string_view n) -> std::string_view {
    auto it = h.find(n);
    return it == h.end() ? std::string_view{} : std::string_view(it->second);
  };
  auto r = parse_rate_limits(Wire::kOpenAI, look, 200, "", 0);
  EXPECT_EQ(r.request_limit, 500);
  EXPECT_EQ(r.tokens_remaining, 29000);
  EXPECT_DOUBLE_EQ(r.requests_reset_s, 0.12);
  EXPECT_DOUBLE_EQ(r.tokens_reset_s, 360);

  h = {{"anthropic-ratelimit-requests-limit", "50"},
       {"anthropic-ratelimit-requests-remaining", "49"},
       {"anthropic-ratelimit-requests-reset", "2026-12-04T23:00:05Z"},
       {"anthropic-ratelimit-input-tokens-remaining", "1000"},
       {"retry-after", "7"}};
  const std::int64_t now = parse_rfc3339_ms("2026-12-04T23:00:00Z");
  r = parse_rate_limits(Wire::kAnthropic, look, 429, "", now);
  EXPECT_EQ(r.request_limit, 50);
  EXPECT_DOUBLE_EQ(r.requests_reset_s, 5);
  EXPECT_EQ(r.input_tokens_remaining, 1000);
  EXPECT_DOUBLE_EQ(r.retry_after_s, 7);

  h.clear();
  r = parse_rate_limits(
      Wire::kGemini, look, 429,
      R"({"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"quota","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"31s"}]}})",
      0);
  EXPECT_DOUBLE_EQ(r.retry_after_s, 31);
}

TEST(UpstreamError, ProviderMessagesAndTypes) {
  auto e = upstream_error(
      Wire::kAnthropic, 529,
      R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})");
  EXPECT_EQ(e.status, 503);
  EXPECT_EQ(e.message, "Overloaded");
  e = upstream_error(Wire::kGemini, 400,
                     R"({"error":{"code":400,"message":"bad arg","status":"INVALID_ARGUMENT"}})");
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.code, "INVALID_ARGUMENT");
}

TEST(Gemini, RequestShapeAndUsage) {
  auto r = api::decode_chat_request(R"({"model":"g","messages":[
    {"role":"system","content":"sys"},{"role":"user","content":"q"},
    {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"x\":1}"}}]},
    {"role":"tool","tool_call_id":"c1","content":"sunny"}],
    "tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],"max_tokens":9})");
  ASSERT_TRUE(r.ok()) << r.error().message;
  std::vector<std::string> dropped;
  simdjson::dom::parser p;
  auto doc = p.parse(encode_gemini_request(*r, 0, dropped)).value();
  EXPECT_EQ(std::string(doc["systemInstruction"]["parts"].at(0)["text"].get_string().value()),
            "sys");
  EXPECT_EQ(std::string(doc["contents"].at(1)["role"].get_string().value()), "model");
  EXPECT_EQ(
      std::string(
          doc["contents"].at(2)["parts"].at(0)["functionResponse"]["name"].get_string().value()),
      "get");
  EXPECT_EQ(doc["generationConfig"]["maxOutputTokens"].get_int64().value(), 9);
  EXPECT_EQ(
      std::string(doc["tools"].at(0)["functionDeclarations"].at(0)["name"].get_string().value()),
      "get");
  EXPECT_EQ(gemini_target("/v1beta", "gemini-2.5-flash", true),
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");

  auto resp = decode_gemini_response(
      R"({"candidates":[{"content":{"role":"model","parts":[{"text":"hi"},{"functionCall":{"name":"get","args":{"x":2}}}]},"finishReason":"STOP"}],
    "usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":7,"thoughtsTokenCount":3,"cachedContentTokenCount":40}})");
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ(resp->finish, api::FinishReason::kToolCalls);
  EXPECT_EQ(resp->usage.prompt_tokens, 100);
  EXPECT_EQ(resp->usage.cached_tokens, 40);
  EXPECT_EQ(resp->usage.completion_tokens, 10);
  EXPECT_EQ(resp->usage.reasoning_tokens, 3);
}

// Gemini leaves out counts that are zero; one that is there must be a count.
TEST(Gemini, UnreadableUsageCountsAreNotTrusted) {
  const std::string head =
      R"({"candidates":[{"content":{"role":"model","parts":[{"text":"hi"}]},"finishReason":"STOP"}],)";
  // A count left out is 0 (an answer without output: with output, see below).
  auto ok = decode_gemini_response(
      R"({"candidates":[{"finishReason":"SAFETY"}],"usageMetadata":{"promptTokenCount":100}})");
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->usage.usable());
  EXPECT_EQ(ok->usage.completion_tokens, 0);
  for (std::string_view bad :
       {R"("usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":"7"}})",
        R"("usageMetadata":{"promptTokenCount":-100,"candidatesTokenCount":7}})",
        R"("usageMetadata":{"promptTokenCount":100,"thoughtsTokenCount":[3]}})"}) {
    auto r = decode_gemini_response(head + std::string(bad));
    ASSERT_TRUE(r.ok()) << bad;
    EXPECT_TRUE(r->usage.present) << bad;
    EXPECT_FALSE(r->usage.usable()) << bad;
  }
}

TEST(Gemini, StreamChunksDecodeEventByEvent) {
  auto dec = make_gemini_stream_decoder();
  std::vector<api::StreamEvent> evs;
  dec->feed("", R"({"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}}]})", evs);
  ASSERT_EQ(evs.size(), 2u);  // start + the first delta, before any later chunk
  EXPECT_EQ(evs[1].text, "Hel");
  EXPECT_FALSE(dec->done());
  evs.clear();
  dec->feed(
      "",
      R"({"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2}})",
      evs);
  EXPECT_TRUE(dec->done());
  ASSERT_EQ(evs.size(), 3u);
  EXPECT_EQ(evs[1].finish, api::FinishReason::kLength);
  EXPECT_EQ(evs[2].usage.prompt_tokens, 5);
}

// Chat's n is Gemini's candidateCount; every candidate comes back as a choice.
TEST(Gemini, CandidatesAreChoices) {
  api::Request req;
  req.messages.push_back(
      api::Message{.role = api::Role::kUser,
                   .parts = {api::Part{.kind = api::Part::Kind::kText, .text = "hi"}}});
  req.n = 3;
  std::vector<std::string> dropped;
  const auto body = encode_gemini_request(req, 100, dropped);
  EXPECT_NE(body.find(R"("candidateCount":3)"), std::string::npos) << body;
  EXPECT_NE(body.find(R"("maxOutputTokens":100)"), std::string::npos) << body;
  req.n = 1;
  EXPECT_EQ(encode_gemini_request(req, 100, dropped).find("candidateCount"), std::string::npos);
  auto r = decode_gemini_response(
      R"({"candidates":[{"content":{"parts":[{"text":"one"}]},"finishReason":"STOP","index":0},)"
      R"({"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]},"finishReason":"STOP","index":1},)"
      R"({"content":{"parts":[{"text":"three"}]},"finishReason":"MAX_TOKENS","index":2}],)"
      R"("usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":30}})");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->content.size(), 1u);
  EXPECT_EQ(r->content[0].text, "one");
  ASSERT_EQ(r->more_choices.size(), 2u);
  EXPECT_EQ(r->more_choices[0].finish, api::FinishReason::kToolCalls);
  EXPECT_EQ(r->more_choices[1].finish, api::FinishReason::kLength);
  EXPECT_EQ(r->usage.completion_tokens, 30);  // of every candidate
  const auto chat = api::encode_chat_response(*r, "g");
  EXPECT_NE(chat.find(R"("index":2)"), std::string::npos) << chat;
  EXPECT_NE(chat.find(R"("content":"three")"), std::string::npos) << chat;
  EXPECT_NE(chat.find(R"("finish_reason":"tool_calls")"), std::string::npos) << chat;
}

// A stream of candidateCount candidates: each chunk carries the candidates that produced
// something, each with its index (left out for 0), in any order; each candidate finishes on its
// own, and the stream is complete (with its usage, of every candidate) once all have finished.
TEST(Gemini, StreamedCandidatesAreChoicesByTheirIndex) {
  auto dec = make_gemini_stream_decoder(3);
  std::vector<api::StreamEvent> evs;
  using K = api::StreamEvent::Kind;
  dec->feed("",
            R"({"candidates":[{"content":{"parts":[{"text":"b1"}]},"index":1},)"
            R"({"content":{"parts":[{"text":"a1"}]}},)"
            R"({"content":{"parts":[{"text":"c1"}]},"index":2}],)"
            R"("usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}})",
            evs);
  ASSERT_EQ(evs.size(), 4u);
  EXPECT_EQ(evs[0].kind, K::kStart);
  EXPECT_EQ(evs[1].choice, 1);
  EXPECT_EQ(evs[1].text, "b1");
  EXPECT_EQ(evs[2].choice, 0);
  EXPECT_EQ(evs[2].text, "a1");
  EXPECT_EQ(evs[3].choice, 2);
  EXPECT_EQ(evs[3].text, "c1");
  evs.clear();
  // Candidate 1 finishes with a call, 0 at the cap; 2 is still generating: not done, no usage.
  dec->feed("",
            R"({"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"q":1}}}]},)"
            R"("finishReason":"STOP","index":1},{"content":{"parts":[{"text":"a2"}]},)"
            R"("finishReason":"MAX_TOKENS"},)"
            R"({"content":{"parts":[{"text":"x"}]},"index":3}],)"
            R"("usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":9}})",
            evs);
  EXPECT_FALSE(dec->done());
  ASSERT_EQ(evs.size(), 5u);  // candidate 3 was not asked for: nothing of it
  EXPECT_EQ(evs[0].kind, K::kToolCallStart);
  EXPECT_EQ(evs[0].choice, 1);
  EXPECT_EQ(evs[0].index, 0);
  EXPECT_EQ(evs[1].kind, K::kToolArgsDelta);
  EXPECT_EQ(evs[2].kind, K::kFinish);
  EXPECT_EQ(evs[2].choice, 1);
  EXPECT_EQ(evs[2].finish, api::FinishReason::kToolCalls);
  EXPECT_EQ(evs[3].text, "a2");
  EXPECT_EQ(evs[4].kind, K::kFinish);
  EXPECT_EQ(evs[4].choice, 0);
  EXPECT_EQ(evs[4].finish, api::FinishReason::kLength);
  evs.clear();
  dec->feed("",
            R"({"candidates":[{"content":{"parts":[{"text":"c2"}]},"finishReason":"STOP",)"
            R"("index":2}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":12}})",
            evs);
  EXPECT_TRUE(dec->done());
  ASSERT_EQ(evs.size(), 3u);
  EXPECT_EQ(evs[1].kind, K::kFinish);
  EXPECT_EQ(evs[1].choice, 2);
  EXPECT_EQ(evs[2].kind, K::kUsage);
  EXPECT_EQ(evs[2].usage.completion_tokens, 12);  // every candidate's, once

  // Into a chat stream: every choice opens with its role and ends with its own finish_reason;
  // the usage chunk comes once, at the end.
  auto replay = make_gemini_stream_decoder(2);
  auto enc = api::make_chat_stream_encoder("g", true);
  std::string out;
  for (
      const char* chunk :
      {R"({"candidates":[{"content":{"parts":[{"text":"x"}]}},{"content":{"parts":[{"text":"y"}]},"index":1}]})",
       R"({"candidates":[{"content":{"parts":[{"text":"z"}]},"finishReason":"STOP","index":1}]})",
       R"({"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3}})"}) {
    evs.clear();
    replay->feed("", chunk, evs);
    for (const auto& e : evs) enc->on_event(e, out);
  }
  EXPECT_TRUE(replay->done());
  enc->finish(out);
  auto count = [&](std::string_view what) {
    std::size_t n = 0;
    for (auto at = out.find(what); at != std::string::npos; at = out.find(what, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count(R"("index":0,"delta":{"role":"assistant")"), 1u) << out;
  EXPECT_EQ(count(R"("index":1,"delta":{"role":"assistant")"), 1u) << out;
  EXPECT_EQ(count(R"("index":0,"delta":{"content":"x"})"), 1u) << out;
  EXPECT_EQ(count(R"("index":1,"delta":{"content":"y"})"), 1u) << out;
  EXPECT_EQ(count(R"("index":1,"delta":{"content":"z"})"), 1u) << out;
  EXPECT_EQ(count(R"("index":0,"delta":{},"finish_reason":"stop")"), 1u) << out;
  EXPECT_EQ(count(R"("index":1,"delta":{},"finish_reason":"stop")"), 1u) << out;
  EXPECT_EQ(count(R"("finish_reason")"), count(R"("delta")")) << out;
  EXPECT_EQ(count(R"("completion_tokens":3)"), 1u) << out;
  EXPECT_EQ(count("data: [DONE]"), 1u) << out;
}

// Gemini leaves out zero counts, but an answer with output did not cost zero output tokens.
TEST(Gemini, OutputWithoutAnOutputCountIsNotTrusted) {
  auto r = decode_gemini_response(
      R"({"candidates":[{"content":{"parts":[{"text":"hello"}]},"finishReason":"STOP"}],)"
      R"("usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}})");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->usage.present);
  EXPECT_FALSE(r->usage.usable());
  // Nothing generated (a blocked prompt): zero output is believed.
  auto blocked = decode_gemini_response(
      R"({"candidates":[{"finishReason":"SAFETY"}],"usageMetadata":{"promptTokenCount":5}})");
  ASSERT_TRUE(blocked.ok());
  EXPECT_TRUE(blocked->usage.usable());
}

// Each chunk's usageMetadata is a running total; the final one may follow the finishReason in a
// chunk of its own. The last counts are the ones sent on (and billed), not those of the finish.
TEST(Gemini, StreamUsageAfterTheFinishReplacesTheRunningTotal) {
  auto dec = make_gemini_stream_decoder();
  std::vector<api::StreamEvent> evs;
  dec->feed("",
            R"({"candidates":[{"content":{"parts":[{"text":"Hel"}]}}],)"
            R"("usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}})",
            evs);
  dec->feed("",
            R"({"candidates":[{"content":{"parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS"}],)"
            R"("usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}})",
            evs);
  EXPECT_TRUE(dec->done());
  dec->feed("",
            R"({"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":300,)"
            R"("thoughtsTokenCount":40,"totalTokenCount":345}})",
            evs);
  const api::Usage* last = nullptr;
  for (const auto& e : evs) {
    if (e.kind == api::StreamEvent::Kind::kUsage && e.usage.present) last = &e.usage;
  }
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(last->prompt_tokens, 5);
  EXPECT_EQ(last->completion_tokens, 340);
  EXPECT_EQ(last->reasoning_tokens, 40);
}

}  // namespace
}  // namespace bw::providers
