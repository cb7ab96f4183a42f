// inspect_chunk reads the common stream event without a JSON parse (scan_chunk); these tests
// hold it to parse_chunk's answer on tricky and on random events.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "providers/chunk_scan.h"
#include "providers/openai.h"
#include "support/show_bytes.h"

namespace bw::providers {
namespace {

using namespace std::string_literals;

std::string show(std::string_view s) {
  return test::show_bytes(s, 300);
}

// Every field of the answer, so that a difference in any of them fails.
testing::AssertionResult same(const ChunkInfo& a, const ChunkInfo& b) {
  if (a.done == b.done && a.usage_only == b.usage_only && a.text_chars == b.text_chars &&
      a.has_text == b.has_text && a.other_output == b.other_output &&
      a.usage.present == b.usage.present && a.usage.unreadable == b.usage.unreadable &&
      a.usage.prompt_tokens == b.usage.prompt_tokens &&
      a.usage.completion_tokens == b.usage.completion_tokens &&
      a.usage.cached_tokens == b.usage.cached_tokens &&
      a.usage.cache_write_tokens == b.usage.cache_write_tokens &&
      a.usage.reasoning_tokens == b.usage.reasoning_tokens) {
    return testing::AssertionSuccess();
  }
  auto f = [](const ChunkInfo& i) {
    return "{done " + std::to_string(i.done) + ", usage_only " + std::to_string(i.usage_only) +
           ", text_chars " + std::to_string(i.text_chars) + ", has_text " +
           std::to_string(i.has_text) + ", other_output " + std::to_string(i.other_output) +
           ", usage " + std::to_string(i.usage.present) +
           (i.usage.unreadable ? " unreadable " : " ") + std::to_string(i.usage.prompt_tokens) +
           "/" + std::to_string(i.usage.completion_tokens) + "/" +
           std::to_string(i.usage.cached_tokens) + "}";
  };
  return testing::AssertionFailure() << f(a) << " != " << f(b);
}

// The scan, where it answers, and inspect_chunk always give the parse's answer.
void expect_agrees(std::string_view data) {
  const ChunkInfo parsed = parse_chunk(data);
  EXPECT_TRUE(same(inspect_chunk(data), parsed)) << show(data);
  if (auto scanned = scan_chunk(data)) {
    EXPECT_TRUE(same(*scanned, parsed)) << show(data);
  }
}

testing::AssertionResult same_usage(const Usage& a, const Usage& b) {
  ChunkInfo x, y;
  x.usage = a;
  y.usage = b;
  return same(x, y);
}

// A buffered answer's usage: extract_usage (the scan where it answers) gives the parse's answer,
// for the chat endpoints and for embeddings (whose usage has no completion count).
void expect_answer_agrees(std::string_view body) {
  for (Endpoint ep : {Endpoint::kChat, Endpoint::kEmbeddings}) {
    const Usage parsed = parse_answer_usage(body, ep);
    EXPECT_TRUE(same_usage(extract_usage(body, ep), parsed)) << show(body);
    if (auto scanned = scan_answer_usage(body, ep)) {
      EXPECT_TRUE(same_usage(*scanned, parsed)) << show(body);
    }
  }
}

const std::string kHead =
    R"({"id":"chatcmpl-9x8Yz","object":"chat.completion.chunk","created":1733390000,)"
    R"("model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1",)";

std::string delta_event(std::string_view delta_json, std::string_view tail = R"(,"usage":null)") {
  return kHead + R"("choices":[{"index":0,"delta":)" + std::string(delta_json) +
         R"(,"logprobs":null,"finish_reason":null}])" + std::string(tail) + "}";
}

// The shapes that real providers send on every event: these must not need the parse.
TEST(ChunkScan, CommonEventsAreScanned) {
  const std::vector<std::string> common = {
      delta_event(R"({"role":"assistant","content":"","refusal":null})"),
      delta_event(R"({"content":"Hello"})"),
      delta_event(R"({"content":" world"})", ""),
      delta_event(R"({"content":"line\nnext \"quoted\" tab\t"})"),
      delta_event(R"({"content":"caf\u00e9 \u20ac \ud83d\ude00"})"),
      delta_event("{\"content\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}"),
      delta_event(R"({"content":"the \"usage\": {\"prompt_tokens\": 5} text"})"),
      delta_event(R"({"content":"usage"})"),
      delta_event(R"({})"),
      kHead + R"("choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],)"
              R"("usage":null})",
      delta_event(R"({"tool_calls":[{"index":0,"id":"call_abc","type":"function",)"
                  R"("function":{"name":"get_weather","arguments":""}}]})"),
      delta_event(R"({"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]})"),
      R"({"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"abc",)"
      R"("index":0,"logprobs":null,"finish_reason":null}],"model":"m"})",
      kHead + R"("choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"token":)"
              R"("a","logprob":-0.0012,"bytes":[97],"top_logprobs":[]}]},"finish_reason":null}]})",
      R"({"choices":[{"index":0,"delta":{"content":"x"}},{"index":1,"delta":{"content":"yz"}}]})",
      " {\"choices\" : [ {\"delta\" : {\"content\" : \"spaced\"} } ] }\r\n",
  };
  for (const auto& e : common) {
    EXPECT_TRUE(scan_chunk(e).has_value()) << show(e);
    expect_agrees(e);
  }
  auto hello = scan_chunk(delta_event(R"({"content":"Hello"})"));
  ASSERT_TRUE(hello);
  EXPECT_EQ(hello->text_chars, 5u);
  EXPECT_TRUE(hello->has_text);
  // Escapes count as the bytes they stand for: 1 + 2 + 1 + 3 + 1 + 4.
  auto escaped = scan_chunk(delta_event(R"({"content":"\n\u00e9 \u20ac \ud83d\ude00"})"));
  ASSERT_TRUE(escaped);
  EXPECT_EQ(escaped->text_chars, 12u);
  auto role = scan_chunk(delta_event(R"({"role":"assistant","content":""})"));
  ASSERT_TRUE(role);
  EXPECT_FALSE(role->has_text);
}

// Events the scan must leave to the parse, or answer exactly as it would.
TEST(ChunkScan, TrickyEventsAgreeWithTheParse) {
  const std::vector<std::string> tricky = {
      // output that is not text, empty or not, in every spelling
      R"({"choices":[{"delta":{"tool_calls":[]}}]})",
      R"({"choices":[{"delta":{"tool_calls":[ ]}}]})",
      R"({"choices":[{"delta":{"tool_calls":[{}]}}]})",
      R"({"choices":[{"delta":{"tool_calls":null,"refusal":""}}]})",
      R"({"choices":[{"delta":{"function_call":{ }}}]})",
      R"({"choices":[{"delta":{"function_call":{"name":"f"}}}]})",
      R"({"choices":[{"delta":{"refusal":"no"}}]})",
      R"({"choices":[{"delta":{"refusal":"\u0000"}}]})",
      R"({"choices":[{"delta":{"reasoning_content":"think"}}]})",
      R"({"choices":[{"delta":{"refusal":null,"refusal":"x"}}]})",
      R"({"choices":[{"delta":{"ref\u0075sal":"x"}}]})",
      R"({"choices":[{"delta":{"tool_calls":5}}]})",
      R"({"choices":[{"delta":{"audio":{"id":"a"}}}]})",
      R"({"choices":[{"delta":"tool_calls"}]})",
      // usage, in every place and spelling
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}})",
      R"({"choices":[{"text":"abc"}],"usage":{"prompt_tokens":1,"completion_tokens":2}})",
      R"({"choices":[],"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}})",
      R"({"choices":[],"usage":{}})",
      R"({"choices":[],"usage":null})",
      R"({"choices":[],"usage":5})",
      R"({"choices":[],"usage":"x"})",
      R"({"choices":[],"usage":[{"prompt_tokens":1}]})",
      R"({"usage":null,"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}})",
      R"({"usage":{"prompt_tokens":7,"completion_tokens":1},"choices":[],"usage":null})",
      R"({"choices":[],"us\u0061ge":{"prompt_tokens":7,"completion_tokens":1}})",
      R"({"choices":[],"us\u0061ge":null,"usage":{"prompt_tokens":7}})",
      R"({"choices":[],"usage":null,"x":"usage"})",
      R"({"choices":[{"delta":{"content":"\"usage\":{\"prompt_tokens\":9}"}}],"usage":null})",
      R"({"choices":[{"delta":{"content":"x","usage":{"prompt_tokens":9}}}]})",
      R"({"choices":[{"delta":{"content":"x"}}],"meta":{"usage":{"prompt_tokens":9}}})",
      R"({"choices":[], "usage" : {"prompt_tokens":3}})",
      R"({"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3}} )",
      // duplicate and escaped keys where the answer is read
      R"({"choices":[{"delta":{"content":"a"}}],"choices":[{"delta":{"content":"bbbb"}}]})",
      R"({"choices":null,"choices":[{"delta":{"content":"bbbb"}}]})",
      R"({"choices":[{"delta":{"content":"a"},"delta":{"content":"bbb"}}]})",
      R"({"choices":[{"delta":{"content":"a","content":"bbb"}}]})",
      R"({"choices":[{"delta":{"content":null,"content":"bbb"}}]})",
      R"({"choices":[{"text":"a","text":"bbb"}]})",
      R"({"ch\u006fices":[{"delta":{"content":"abc"}}]})",
      R"({"choices":[{"d\u0065lta":{"content":"abc"}}]})",
      R"({"choices":[{"delta":{"c\u006fntent":"abc"}}]})",
      R"({"choices":[{"t\u0065xt":"abc"}]})",
      R"({"choices":[{"delta":{"content":"ab"},"x\"y":1}]})",
      // where the text is taken from
      R"({"choices":[{"delta":{"content":null},"text":"abc"}]})",
      R"({"choices":[{"delta":{"content":5},"text":"abc"}]})",
      R"({"choices":[{"delta":{"content":"ab"},"text":"abcdef"}]})",
      R"({"choices":[{"text":"abcdef","delta":{"content":"ab"}}]})",
      R"({"choices":[{"delta":"content","text":"abc"}]})",
      R"({"choices":[{"delta":[{"content":"abc"}]}]})",
      R"({"choices":[{"text":{"content":"abc"}}]})",
      R"({"choices":[{"text":null}]})",
      R"({"choices":["abc",1,null,[{"delta":{"content":"abc"}}]]})",
      R"({"choices":{"0":{"delta":{"content":"abc"}}}})",
      R"({"choices":"abc"})",
      R"({"choices":[{"delta":{"content":""}},{"delta":{"content":"b"}}]})",
      R"({"choices":[{"delta":{"content":""}},{"text":""}]})",
      R"({"delta":{"content":"abc"}})",
      R"({"choices":[{"message":{"content":"abc"}}]})",
      // escapes and UTF-8 in the text
      R"({"choices":[{"delta":{"content":"\"\\\/\b\f\n\r\t"}}]})",
      R"({"choices":[{"delta":{"content":"\u0000\u007f\u0080\u07ff\u0800\uffff"}}]})",
      R"({"choices":[{"delta":{"content":"\uD83D\uDE00\udbff\udfff\ud800\udc00"}}]})",
      R"({"choices":[{"delta":{"content":"\ud83d"}}]})",
      R"({"choices":[{"delta":{"content":"\ud83dx"}}]})",
      R"({"choices":[{"delta":{"content":"\ud83d\u0041"}}]})",
      R"({"choices":[{"delta":{"content":"\ud83d\ud83d"}}]})",
      R"({"choices":[{"delta":{"content":"\ude00"}}]})",
      R"({"choices":[{"delta":{"content":"\ude00\ud83d"}}]})",
      R"({"choices":[{"delta":{"content":"\ud83d\"}}]})",
      R"({"choices":[{"delta":{"content":"\u12"}}]})",
      R"({"choices":[{"delta":{"content":"\uZZZZ"}}]})",
      R"({"choices":[{"delta":{"content":"\x41"}}]})",
      R"({"choices":[{"delta":{"content":"\'"}}]})",
      R"({"choices":[{"delta":{"content":"ends with backslash\\"}}]})",
      R"({"choices":[{"delta":{"content":"ends with backslash\"}}]})",
      "{\"choices\":[{\"delta\":{\"content\":\"h\xc3\xa9llo \xf0\x9f\x98\x80\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"bad \xff byte\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"overlong \xc0\xaf\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"surrogate \xed\xa0\x80\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"cut \xe2\x82\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"too big \xf4\x90\x80\x80\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"ok\"}}],\"x\":\"\xff\"}",
      "{\"choices\":[{\"delta\":{\"content\":\"ok\"}}],\"\xc3\xa9\":1}",
      "{\"choices\":[{\"delta\":{\"content\":\"raw\ttab\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"raw\nnewline\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"nul\0byte\"}}]}"s,
      "{\"choices\":[{\"delta\":{\"content\":\"del\x7f\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"unit separator \x1f\"}}]}",
      "{\"choices\":[{\"delta\":{\"content\":\"long enough to be read eight bytes at a time "
      "\x1f\"}}]}",
      // not JSON, or not an object
      "",
      "[DONE]",
      " [DONE]",
      "{}",
      "[]",
      "null",
      "\"choices\"",
      "42",
      R"([{"choices":[{"delta":{"content":"abc"}}]}])",
      R"({"choices":[{"delta":{"content":"abc"}}]})"
      R"({"choices":[{"delta":{"content":"abc"}}]})",
      R"({"choices":[{"delta":{"content":"abc"}}]}x)",
      R"({"choices":[{"delta":{"content":"abc"}}]},)",
      R"({"choices":[{"delta":{"content":"abc"}}],})",
      R"({"choices":[{"delta":{"content":"abc"}},]})",
      R"({"choices":[{"delta":{"content":"abc"}}])",
      R"({"choices":[{"delta":{"content":"abc"}})",
      R"({"choices":[{"delta":{"content":"abc)",
      R"({'choices':[{'delta':{'content':'abc'}}]})",
      R"({choices:[{"delta":{"content":"abc"}}]})",
      R"({"choices" [{"delta":{"content":"abc"}}]})",
      R"({"choices":[{"delta":{"content":"abc"}}] "x":1})",
      R"({"choices":[{"delta":{"content":"abc" "x":1}}]})",
      R"({"choices":[{"delta":{"content":"abc"}}],"x":tru})",
      R"({"choices":[{"delta":{"content":"abc"}}],"x":truex})",
      R"({"choices":[{"delta":{"content":"abc"}}],"x":nul})",
      R"({"choices":[{"delta":{"content":"abc"}}],"x":True})",
      R"({"choices":[{"delta":{"content":"abc"}}],"x":NaN})",
      R"({"choices":[{"delta":{"content":"abc"}}],"x":Infinity})",
      "{\"choices\":[{\"delta\":{\"content\":\"abc\"}}],\f\"x\":1}",
      "{\"choices\":[{\"delta\":{\"content\":\"abc\"}}]\v}",
      "\xef\xbb\xbf{\"choices\":[{\"delta\":{\"content\":\"abc\"}}]}",
      "\n\t {\"choices\":[{\"delta\":{\"content\":\"abc\"}}]} \r\n\t",
      // numbers beside the text
      R"({"choices":[{"delta":{"content":"a"}}],"n":01})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":-})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":1.})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":.5})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":1e})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":1e+})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":+1})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":-0})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":-0.0e-0})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":1E+22})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":0x10})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":1e400})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":-1e400})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":1e-400})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":1.7976931348623157e308})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":123456789012345678})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":9223372036854775807})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":9223372036854775808})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":18446744073709551616})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":-9223372036854775809})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":123456789012345678901234567890})",
      R"({"choices":[{"delta":{"content":"a"}}],"n":0.1234567890123456789012345})",
      R"({"created":1733390000,"choices":[{"index":0,"delta":{"content":"a"}}]})",
  };
  for (const auto& e : tricky) {
    expect_agrees(e);
    expect_answer_agrees(e);
  }

  // The parse's rule for a duplicate key: the first one counts. The scan must not decide.
  EXPECT_FALSE(scan_chunk(R"({"usage":null,"choices":[],"usage":{"prompt_tokens":7}})"));
  EXPECT_FALSE(scan_chunk(R"({"choices":[{"delta":{"content":"a","content":"bbb"}}]})"));
  EXPECT_FALSE(scan_chunk(R"({"choices":[],"usage":{"prompt_tokens":3}})"));
  EXPECT_FALSE(scan_chunk("{\"choices\":[{\"delta\":{\"content\":\"bad \xff\"}}]}"));
}

// The usage event is read by the scan that inspect_chunk uses; whatever in it the scan does not
// take is left to the parse, and both agree with the parse.
TEST(ChunkScan, UsageEventsAgreeWithTheParse) {
  const std::string usage_event =
      kHead + R"("choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,)"
              R"("total_tokens":29,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},)"
              R"("completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}})";
  auto read = scan_chunk_with_usage(usage_event);
  ASSERT_TRUE(read);
  EXPECT_TRUE(read->usage.present);
  EXPECT_TRUE(read->usage_only);
  EXPECT_EQ(read->usage.prompt_tokens, 19);
  EXPECT_EQ(read->usage.completion_tokens, 10);
  EXPECT_EQ(read->usage.cached_tokens, 4);
  EXPECT_TRUE(same(*read, parse_chunk(usage_event)));
  EXPECT_FALSE(scan_chunk(usage_event));

  const std::vector<std::string> events = {
      usage_event,
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}})",
      R"({"choices":[{"delta":{"content":"ab"}}],"usage":{"prompt_tokens":3}})",
      R"({"usage":{"prompt_tokens":3}})",
      R"({"choices":null,"usage":{"prompt_tokens":3}})",
      R"({"choices":{},"usage":{"prompt_tokens":3}})",
      R"({"usage":{"prompt_tokens":3},"choices":[]})",
      R"({"choices":[],"usage":{}})",
      R"({"choices":[],"usage":{"prompt_tokens":-3,"completion_tokens":0}})",
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":"4"}})",
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4.5}})",
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":18446744073709551615}})",
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,)"
      R"("prompt_tokens_details":null}})",
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,)"
      R"("prompt_tokens_details":{"cached_tokens":-1}}})",
      R"({"choices":[],"usage":{"prompt_tokens":-0}})",
      R"({"choices":[],"usage":{"prompt_tokens":3.0}})",
      R"({"choices":[],"usage":{"prompt_tokens":3e2}})",
      R"({"choices":[],"usage":{"prompt_tokens":"3"}})",
      R"({"choices":[],"usage":{"prompt_tokens":null}})",
      R"({"choices":[],"usage":{"prompt_tokens":true}})",
      R"({"choices":[],"usage":{"prompt_tokens":[3]}})",
      R"({"choices":[],"usage":{"prompt_tokens":{"n":3}}})",
      R"({"choices":[],"usage":{"prompt_tokens":922337203685477580}})",
      R"({"choices":[],"usage":{"prompt_tokens":9223372036854775807}})",
      R"({"choices":[],"usage":{"prompt_tokens":9223372036854775808}})",
      R"({"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":2}})",
      R"({"choices":[],"usage":{"completion_tokens":1,"completion_tokens":2.5}})",
      R"({"choices":[],"usage":{"pr\u006fmpt_tokens":5}})",
      R"({"choices":[],"usage":{"prompt_tokens_details":null}})",
      R"({"choices":[],"usage":{"prompt_tokens_details":{"cached_tokens":2},)"
      R"("prompt_tokens_details":{"cached_tokens":5}}})",
      R"({"choices":[],"usage":{"prompt_tokens_details":{"cached_tokens":2,"cached_tokens":5}}})",
      R"({"choices":[],"usage":{"prompt_tokens_details":{"cached_tokens":1.5}}})",
      R"({"choices":[],"usage":{"prompt_tokens_details":[{"cached_tokens":1}]}})",
      R"({"choices":[],"usage":{"x":{"prompt_tokens":9},"prompt_tokens":1}})",
      R"({"choices":[],"usage":{"prompt_tokens":1,"note":"caf\u00e9"}})",
      "{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"note\":\"bad \xff\"}}",
      R"({"choices":[],"usage":{"prompt_tokens":1})",
      R"({"choices":[],"usage":{"prompt_tokens":1}})",
      R"({"choices":[],"usage":{"prompt_tokens":1}}})",
      R"({"choices":[],"usage":{ "prompt_tokens" : 1 , "completion_tokens" : 2 }})",
  };
  for (const auto& e : events) {
    expect_agrees(e);
    expect_answer_agrees(e);
    if (auto scanned = scan_chunk_with_usage(e)) {
      EXPECT_TRUE(same(*scanned, parse_chunk(e))) << show(e);
    }
  }
  // A duplicate where the answer is read, a count the parse reads otherwise: left to the parse.
  EXPECT_FALSE(
      scan_chunk_with_usage(R"({"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":2}})"));
  EXPECT_FALSE(scan_chunk_with_usage(R"({"choices":[],"usage":{"prompt_tokens":3.0}})"));
  EXPECT_FALSE(scan_chunk_with_usage(R"({"choices":[],"usage":{"prompt_tokens":-0}})"));
}

TEST(ChunkScan, DeepAndLargeEventsAgreeWithTheParse) {
  for (int depth : {1, 10, 30, 31, 32, 33, 40, 100, 1100}) {
    std::string nested = std::string(depth, '[') + "1" + std::string(depth, ']');
    expect_agrees(R"({"choices":[{"delta":{"content":"ab"}}],"x":)" + nested + "}");
    std::string objects;
    for (int i = 0; i < depth; ++i) objects += R"({"k":)";
    objects += "null" + std::string(depth, '}');
    expect_agrees(R"({"choices":[{"delta":{"content":"ab"},"x":)" + objects + "}]}");
  }
  for (std::size_t n : {std::size_t{1} << 15, std::size_t{1} << 16, (std::size_t{1} << 16) + 1,
                        std::size_t{1} << 20}) {
    expect_agrees(R"({"choices":[{"delta":{"content":")" + std::string(n, 'x') + R"("}}]})");
    expect_answer_agrees(R"({"choices":[{"message":{"content":")" + std::string(n, 'x') +
                         R"("}}],"usage":{"prompt_tokens":1,"completion_tokens":2}})");
  }
}

// A value of which nothing is read (the answer's choices, any other member) is checked without
// recursion: as deep as the scan goes (31 containers inside a top-level member, 32 are left to
// the parse), and random values of every kind, whitespace and damage inside it agree with the
// parse.
TEST(AnswerScan, SkippedValuesAgreeWithTheParse) {
  const std::string usage = R"("usage":{"prompt_tokens":1,"completion_tokens":2})";
  for (int depth : {1, 2, 30, 31, 32, 33}) {
    const std::string arrays = std::string(depth, '[') + "1" + std::string(depth, ']');
    std::string objects;
    for (int i = 0; i < depth; ++i) objects += R"({"k":)";
    objects += "null" + std::string(depth, '}');
    for (const std::string& v : {arrays, objects}) {
      const std::string a = R"({"choices":)" + v + "," + usage + "}";
      EXPECT_EQ(scan_answer_usage(a, Endpoint::kChat).has_value(), depth <= 31) << show(a);
      expect_answer_agrees(a);
    }
  }
  std::mt19937 rng(20261207);
  const auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  const char* const kAtoms[] = {"0",
                                "-0",
                                "1",
                                "-12",
                                "3.25",
                                "1e5",
                                "2E-07",
                                "1.5e+3",
                                "01",
                                "1.",
                                "-",
                                ".5",
                                "1e",
                                "1e123",
                                "123456789012345678",
                                "1234567890123456789",
                                "true",
                                "false",
                                "null",
                                "tru",
                                "nul",
                                "\"\"",
                                "\"a\"",
                                "\"\\n\\u00e9\"",
                                "\"\\ud83d\\ude00\"",
                                "\"\\x\"",
                                "\"\xc3\xa9\"",
                                "\"\xff\"",
                                "\"\t\"",
                                "[]",
                                "{}",
                                "[ ]",
                                "{ }"};
  const char* const kWs[] = {"", "", "", " ", "\n", "\r\n\t", "\f"};
  std::function<std::string(int)> value = [&](int depth) -> std::string {
    const std::size_t kind = depth > 6 ? 2 : pick(4);
    std::string out;
    if (kind == 0 || kind == 1) {
      const bool object = kind == 0;
      out += object ? '{' : '[';
      const std::size_t n = pick(4);
      for (std::size_t i = 0; i < n; ++i) {
        if (i) out += ',';
        out += kWs[pick(std::size(kWs))];
        if (object)
          out +=
              std::string("\"k") + std::to_string(pick(3)) + "\"" + kWs[pick(std::size(kWs))] + ":";
        out += kWs[pick(std::size(kWs))];
        out += value(depth + 1);
        out += kWs[pick(std::size(kWs))];
      }
      out += object ? '}' : ']';
      return out;
    }
    return kAtoms[pick(std::size(kAtoms))];
  };
  int scanned = 0;
  constexpr int kAnswers = 20000;
  for (int i = 0; i < kAnswers; ++i) {
    std::string v = value(0);
    if (pick(6) == 0 && !v.empty()) {  // damage: a byte cut, changed or added
      const std::size_t at = pick(v.size());
      switch (pick(3)) {
        case 0:
          v.erase(at, 1);
          break;
        case 1:
          v[at] = "{}[],:\" 0-a"[pick(11)];
          break;
        default:
          v.insert(at, 1, "{}[],:\" 0"[pick(9)]);
          break;
      }
    }
    const std::string a = pick(2) == 0 ? R"({"choices":)" + v + "," + usage + "}"
                                       : "{" + usage + R"(,"x":[)" + v + "]}";
    if (scan_answer_usage(a, Endpoint::kChat)) ++scanned;
    expect_answer_agrees(a);
    if (HasFailure()) break;
  }
  EXPECT_GT(scanned, kAnswers / 4);
}

// A non-streamed answer as providers send it: its usage is read by the scan, not by a parse.
TEST(AnswerScan, CommonAnswersAreScanned) {
  const std::string answer =
      R"({"id":"chatcmpl-9x8Yz","object":"chat.completion","created":1733390000,)"
      R"("model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant",)"
      R"("content":"Hello there, \"friend\".\nHow can I help?","refusal":null},)"
      R"("logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,)"
      R"("completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":4,)"
      R"("audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":3,"audio_tokens":0,)"
      R"("accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},)"
      R"("system_fingerprint":"fp_0ba0d124f1"})";
  const auto u = scan_answer_usage(answer, Endpoint::kChat);
  ASSERT_TRUE(u);
  EXPECT_TRUE(u->usable());
  EXPECT_EQ(u->prompt_tokens, 19);
  EXPECT_EQ(u->completion_tokens, 10);
  EXPECT_EQ(u->cached_tokens, 4);
  EXPECT_EQ(u->reasoning_tokens, 3);
  expect_answer_agrees(answer);

  const std::vector<std::string> common = {
      answer,
      R"({"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,)"
      R"(1.5e-05]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,)"
      R"("total_tokens":8}})",
      R"({"id":"cmpl-1","object":"text_completion","choices":[{"text":"abc","index":0,)"
      R"("logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,)"
      R"("completion_tokens":7,"total_tokens":12}})",
      R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,)"
      R"("prompt_tokens_details":null,"completion_tokens_details":null}})",
      R"({"choices":[]})",
      R"({"choices":[],"usage":null})",
  };
  for (const auto& a : common) {
    EXPECT_TRUE(scan_answer_usage(a, Endpoint::kEmbeddings)) << show(a);
    expect_answer_agrees(a);
  }
  EXPECT_TRUE(scan_answer_usage(common[2], Endpoint::kChat));
  // Embeddings: no completion count needed. A chat answer without one is the parse's to call
  // unreadable.
  const auto e = scan_answer_usage(common[1], Endpoint::kEmbeddings);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->usable());
  EXPECT_EQ(e->prompt_tokens, 8);
  EXPECT_FALSE(scan_answer_usage(common[1], Endpoint::kChat));
  EXPECT_FALSE(extract_usage(common[1], Endpoint::kChat).usable());
  EXPECT_FALSE(
      extract_usage(
          R"({"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":0}})")
          .usable());
}

// What decides the bill is never read differently from the parse: duplicates, fractions, signs,
// escaped keys, missing counts and non-counts are left to it.
TEST(AnswerScan, UnusualUsageIsLeftToTheParse) {
  const std::vector<std::string> left = {
      R"({"usage":{"prompt_tokens":1,"completion_tokens":2},"usage":null})",
      R"({"usage":null,"usage":{"prompt_tokens":1,"completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":1,"prompt_tokens":3,"completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":1.5,"completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":1e1,"completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":-1,"completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":"1","completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":1}})",
      R"({"usage":{"completion_tokens":2}})",
      R"({"us\u0061ge":{"prompt_tokens":1,"completion_tokens":2}})",
      R"({"usage":{"pr\u006fmpt_tokens":1,"completion_tokens":2}})",
      R"({"usage":{"prompt_tokens":1,"completion_tokens":2,)"
      R"("prompt_tokens_details":{"cached_tokens":null}}})",
      R"({"usage":{"prompt_tokens":1,"completion_tokens":2,)"
      R"("completion_tokens_details":{"reasoning_tokens":1,"reasoning_tokens":2}}})",
      R"({"usage":{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens_details":{},)"
      R"("prompt_tokens_details":{"cached_tokens":1}}})",
      R"({"usage":{"prompt_tokens":1,"completion_tokens":99999999999999999999}})",
      R"({"usage":{"prompt_tokens":1,"completion_tokens":2}})"
      R"({"usage":{"prompt_tokens":1,"completion_tokens":2}})",
      R"([{"usage":{"prompt_tokens":1,"completion_tokens":2}}])",
      "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2},\"x\":\"\xff\"}",
      // 0 output tokens: the parse looks for output (then the usage is not trusted)
      R"({"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":0}})",
      R"({"choices":[{"message":{"content":""}}],"usage":{"prompt_tokens":1,"completion_tokens":0}})",
  };
  for (const auto& a : left) {
    EXPECT_FALSE(scan_answer_usage(a, Endpoint::kChat)) << show(a);
    expect_answer_agrees(a);
  }
}

// Whitespace between any two tokens is read as the parse reads it, one byte or several; a byte
// that JSON does not take for whitespace there (a form feed, a vertical tab) is refused.
TEST(AnswerScan, WhitespaceBetweenAnyTokens) {
  const std::string answer =
      R"({"id":"c-1","choices":[{"index":0,"message":{"content":"a, b: {c}","x":[1,[],{},"]"]}}],)"
      R"("usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}})";
  std::vector<std::size_t> gaps;  // offsets between two tokens: next to a structural byte
  bool in_string = false;
  for (std::size_t i = 0; i < answer.size(); ++i) {
    const char c = answer[i];
    if (in_string) {
      in_string = c != '"';
      continue;
    }
    if (c == '"') in_string = true;
    if (std::string_view("{}[]:,").find(c) != std::string_view::npos) {
      gaps.push_back(i);
      gaps.push_back(i + 1);
    }
  }
  for (const std::size_t at : gaps) {
    for (const std::string ws : {" ", "\t", "\n", "\r", " \r\n\t  "}) {
      std::string a = answer;
      a.insert(at, ws);
      const auto u = scan_answer_usage(a, Endpoint::kChat);
      ASSERT_TRUE(u) << show(a);
      EXPECT_EQ(u->prompt_tokens, 3) << show(a);
      EXPECT_EQ(u->completion_tokens, 4) << show(a);
      EXPECT_EQ(u->cached_tokens, 1) << show(a);
      expect_answer_agrees(a);
    }
    for (const std::string bad : {"\f", "\v", " \f"}) {
      std::string a = answer;
      a.insert(at, bad);
      EXPECT_FALSE(scan_answer_usage(a, Endpoint::kChat)) << show(a);
      expect_answer_agrees(a);
    }
  }
}

// A string that is only skipped (the answer's text, a key of a skipped object) is checked as the
// parse checks it, at any length and wherever in it an escape, a control character or bad UTF-8
// comes: before, in and after the first 16 bytes and the 64-byte steps that follow.
TEST(AnswerScan, SkippedTextIsCheckedAtAnyLength) {
  struct Piece {
    std::string text;
    bool scanned;  // false: the scan must leave the answer to the parse
  };
  const std::vector<Piece> pieces = {
      {"", true},
      {R"(\")", true},
      {R"(\\n)", true},
      {R"(\u00e9)", true},
      {R"(\ud83d\ude00)", true},
      {"\xc3\xa9", true},
      {"\x01", false},
      {"\t", false},
      {R"(\x)", false},
      {R"(\u12g)", false},
      {R"(\ud800)", false},
      {R"(\ude00x)", false},
      {"\xff", false},
  };
  const std::string filler =
      "Order 48213-77 has not left the warehouse yet: the label was created but the parcel was "
      "never handed to the carrier. You can cancel it now from the Orders page, and the refund "
      "goes back to the card you paid with within three to five working days.";
  for (std::size_t len : {0, 1, 15, 16, 17, 63, 64, 65, 79, 80, 81, 143, 144, 200}) {
    for (std::size_t at : {0, 1, 14, 15, 16, 17, 31, 63, 64, 79, 80, 81, 95, 143, 144, 199, 200}) {
      if (at > len) continue;
      for (const Piece& piece : pieces) {
        std::string text = filler.substr(0, len);
        text.insert(at, piece.text);
        for (const std::string& a : {
                 R"({"choices":[{"message":{"content":")" + text +
                     R"("}}],"usage":{"prompt_tokens":1,"completion_tokens":2}})",
                 R"({"usage":{"prompt_tokens":1,"completion_tokens":2},"x":")" + text + R"("})",
                 // a key of an object that is only skipped, too
                 R"({"x":{"a":0,")" + text +
                     R"(":[]},"usage":{"prompt_tokens":1,"completion_tokens":2}})",
             }) {
          const auto u = scan_answer_usage(a, Endpoint::kChat);
          EXPECT_EQ(u.has_value(), piece.scanned) << show(a);
          if (u) {
            EXPECT_EQ(u->completion_tokens, 2) << show(a);
          }
          expect_answer_agrees(a);
        }
        // Unterminated: the text runs to the end of the body.
        const std::string cut =
            R"({"usage":{"prompt_tokens":1,"completion_tokens":2},"x":")" + text;
        EXPECT_FALSE(scan_answer_usage(cut, Endpoint::kChat)) << show(cut);
        expect_answer_agrees(cut);
      }
    }
  }
}

// Builds random events near the real shape, then damages some of them: whatever comes out, the
// scan and the parse must agree.
class EventGen {
 public:
  explicit EventGen(std::uint32_t seed) : rng_(seed) {}

  // A JSON string of any content, the scan's or not (more often not than in event()'s).
  std::string text() {
    std::string s = "\"";
    const int n = pick(0, 6);
    for (int i = 0; i < n; ++i) {
      const int last = chance(70) ? kCleanPieces - 1 : static_cast<int>(std::size(kPieces)) - 1;
      s += kPieces[static_cast<std::size_t>(pick(0, last))];
    }
    if (chance(10)) s += std::string(static_cast<std::size_t>(pick(1, 40)), 'z');
    return s + "\"";
  }
  std::string damaged(std::string s) { return damage(std::move(s)); }

  std::string event() {
    // The members of the real shape, each once, in a random order; sometimes one twice.
    std::vector<std::string> members;
    if (chance(90)) members.push_back(R"("choices":)" + choices());
    if (chance(60)) members.push_back(R"("usage":)" + usage());
    for (int i = pick(0, 3); i > 0; --i) members.push_back(key(kRootKeys) + ":" + value(2));
    if (chance(10) && !members.empty()) members.push_back(members[0]);
    std::shuffle(members.begin(), members.end(), rng_);
    std::string out = "{";
    for (std::size_t i = 0; i < members.size(); ++i) out += (i ? "," : "") + members[i];
    out += "}";
    if (chance(20)) out = damage(out);
    if (chance(5)) out = ws() + out + ws();
    return out;
  }

 private:
  // Keys of each level; the last one is written with an escape (and picked rarely).
  static constexpr std::string_view kRootKeys[] = {
      R"("id")",    R"("object")",  R"("created")", R"("model")", R"("system_fingerprint")",
      R"("usage")", R"("choices")", R"("x")",       R"("")",      R"("us\u0061ge")"};
  static constexpr std::string_view kChoiceKeys[] = {
      R"("index")",         R"("delta")",   R"("text")",  R"("logprobs")",
      R"("finish_reason")", R"("message")", R"("usage")", R"("d\u0065lta")"};
  static constexpr std::string_view kDeltaKeys[] = {
      R"("content")",           R"("role")",        R"("tool_calls")", R"("refusal")", R"("usage")",
      R"("reasoning_content")", R"("c\u006fntent")"};
  // Pieces of string content, including every escape and encoding that changes the byte count;
  // the first kCleanPieces are ones the scan reads itself.
  // clang-format off
  static constexpr std::string_view kPieces[] = {
      "a", "Hello", " ", "usage", "\\\"usage\\\":{", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n",
      "\\r", "\\t", "\\u0000", "\\u0041", "\\u00e9", "\\u07FF", "\\u0800", "\\u20ac", "\\uffff",
      "\\ud83d\\ude00", "\\uDBFF\\uDFFF", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "}", "]",
      ",", ":", "12345678", "abcdefghijklmnop",
      // not read by the scan (the parse decides)
      "\\ud83d", "\\ude00", "\\ud83d\\u0041", "\\u12", "\\uzzzz", "\\x", "\\", "\xff", "\xc0\xaf",
      "\xed\xa0\x80", "\xe2\x82", "\t", "\x01", "\x7f", "\""};
  // clang-format on
  static constexpr int kCleanPieces = 31;

  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool chance(int percent) { return pick(0, 99) < percent; }

  template <std::size_t N>
  std::string key(const std::string_view (&keys)[N]) {
    return std::string(keys[static_cast<std::size_t>(pick(0, chance(97) ? N - 2 : N - 1))]);
  }

  std::string ws() {
    static constexpr std::string_view kWs[] = {" ", "\n", "\r\n", "\t", "  "};
    return std::string(kWs[static_cast<std::size_t>(pick(0, 4))]);
  }

  std::string str() {
    std::string s = "\"";
    const int n = chance(20) ? 0 : pick(1, 6);
    for (int i = 0; i < n; ++i) {
      const int last = chance(97) ? kCleanPieces - 1 : static_cast<int>(std::size(kPieces)) - 1;
      s += kPieces[static_cast<std::size_t>(pick(0, last))];
    }
    if (chance(30)) s += std::string(static_cast<std::size_t>(pick(1, 20)), 'z');
    return s + "\"";
  }

  std::string number() {
    // clang-format off
    static constexpr std::string_view kNumbers[] = {
        "0", "-0", "1", "42", "-7", "1733390000", "0.5", "-0.0012", "1e5", "1E-7", "2e+3",
        "1.5e-05", "123456789012345678", "1.0e99",
        // the parse decides
        "01", "1.", ".5", "-", "1e", "1e400", "-1e400", "1e-400", "9223372036854775808",
        "18446744073709551616", "123456789012345678901234567890", "0.1234567890123456789012",
        "1.0e100", "+1"};
    // clang-format on
    const int last = chance(95) ? 13 : static_cast<int>(std::size(kNumbers)) - 1;
    return std::string(kNumbers[static_cast<std::size_t>(pick(0, last))]);
  }

  // A token count: mostly one the scan reads, else any number.
  std::string count() {
    static constexpr std::string_view kCounts[] = {"0", "1", "7", "42", "1024", "123456789"};
    if (chance(25)) return number();
    return std::string(kCounts[static_cast<std::size_t>(pick(0, std::size(kCounts) - 1))]);
  }

  std::string value(int depth) {
    const int kind = depth > 6 ? pick(0, 3) : pick(0, 5);
    switch (kind) {
      case 0:
        return str();
      case 1:
        return number();
      case 2: {
        static constexpr std::string_view kLiterals[] = {"null", "true", "false", "nul", "True"};
        return std::string(
            kLiterals[static_cast<std::size_t>(chance(95) ? pick(0, 2) : pick(3, 4))]);
      }
      case 3:
        return "null";
      case 4: {
        std::string out = "[";
        const int n = pick(0, 3);
        for (int i = 0; i < n; ++i) out += (i ? "," : "") + value(depth + 1);
        return out + "]";
      }
      default: {
        std::string out = "{";
        const int n = pick(0, 3);
        for (int i = 0; i < n; ++i) {
          out += (i ? "," : "") + key(kRootKeys) + ":" + value(depth + 1);
        }
        return out + "}";
      }
    }
  }

  std::string choices() {
    if (chance(5)) return value(2);
    std::string out = "[";
    const int n = chance(15) ? 0 : pick(1, 3);
    for (int i = 0; i < n; ++i) {
      if (i) out += ",";
      out += chance(90) ? choice() : value(3);
    }
    return out + "]";
  }

  std::string choice() {
    std::vector<std::string> members;
    if (chance(70)) members.push_back(R"("delta":)" + (chance(90) ? delta() : value(4)));
    if (chance(25)) members.push_back(R"("text":)" + (chance(80) ? str() : value(4)));
    for (int i = pick(0, 3); i > 0; --i) members.push_back(key(kChoiceKeys) + ":" + value(4));
    if (chance(5) && !members.empty()) members.push_back(members[0]);
    std::shuffle(members.begin(), members.end(), rng_);
    std::string out = "{";
    for (std::size_t i = 0; i < members.size(); ++i) out += (i ? "," : "") + members[i];
    return out + "}";
  }

  std::string delta() {
    std::vector<std::string> members;
    if (chance(75)) members.push_back(R"("content":)" + (chance(85) ? str() : value(5)));
    for (int i = pick(0, 2); i > 0; --i) members.push_back(key(kDeltaKeys) + ":" + value(5));
    if (chance(5) && !members.empty()) members.push_back(members[0]);
    std::shuffle(members.begin(), members.end(), rng_);
    std::string out = "{";
    for (std::size_t i = 0; i < members.size(); ++i) out += (i ? "," : "") + members[i];
    return out + "}";
  }

  std::string usage() {
    switch (pick(0, 9)) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
      case 5:
        return "null";
      case 6: {
        std::vector<std::string> members = {R"("prompt_tokens":)" + count()};
        if (chance(90)) members.push_back(R"("completion_tokens":)" + count());
        if (chance(50)) {
          members.push_back(R"("prompt_tokens_details":)" +
                            (chance(85) ? R"({"cached_tokens":)" + count() + "}" : value(3)));
        }
        if (chance(40)) {
          members.push_back(R"("completion_tokens_details":)" +
                            (chance(85) ? R"({"reasoning_tokens":)" + count() + "}" : value(3)));
        }
        if (chance(30)) members.push_back(R"("total_tokens":)" + count());
        if (chance(5)) members.push_back(members[0]);
        std::shuffle(members.begin(), members.end(), rng_);
        std::string out = "{";
        for (std::size_t i = 0; i < members.size(); ++i) out += (i ? "," : "") + members[i];
        return out + "}";
      }
      default:
        return value(2);
    }
  }

  std::string damage(std::string s) {
    if (s.empty()) return s;
    const auto at = static_cast<std::size_t>(pick(0, static_cast<int>(s.size()) - 1));
    switch (pick(0, 4)) {
      case 0:
        return s.substr(0, at);  // cut short
      case 1:
        return s.erase(at, 1);
      case 2: {
        static constexpr std::string_view kBytes[] = {"\"",   "\\", "{", "}",           "[",
                                                      "]",    ",",  ":", " ",           "\xff",
                                                      "\x01", "x",  "0", "\"usage\":{}"};
        return s.insert(at, kBytes[static_cast<std::size_t>(pick(0, std::size(kBytes) - 1))]);
      }
      case 3:
        return s + s;  // two events run together
      default:
        s[at] = static_cast<char>(pick(0, 255));
        return s;
    }
  }

  std::mt19937 rng_;
};

// The events of one stream scanned with a shared prefix give the parse's answer, whether the
// prefix matches, differs by a byte, or is followed by anything at all.
TEST(ChunkScan, StreamPrefixResumesWithTheSameAnswer) {
  ChunkPrefix prefix;
  const std::vector<std::string> stream = {
      delta_event(R"({"role":"assistant","content":""})"),
      delta_event(R"({"content":"Hello"})"),
      delta_event(R"({"content":" w\u00f6rld"})"),
      delta_event("{\"content\":\" caf\xc3\xa9\"}"),
      kHead + R"("choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})",
      kHead + R"("choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10}})",
      // the same start, then something the scan or the parse must refuse or read otherwise
      kHead + "}",
      kHead + R"("choices":[{"delta":{"content":"a"}}],"choices":[]})",
      kHead + R"("usage":null,"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}})",
      kHead + R"("choices":[{"delta":{"content":"a"}}]} x)",
      kHead + R"("choices":[{"delta":{"content":"a"}}],"x":"\xff"})",
      kHead + R"("ch\u006fices":[{"delta":{"content":"abc"}}]})",
      kHead + "\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}",
      kHead,
      kHead + R"("choices")",
      // another start, then the first one again
      R"({"id":"chatcmpl-2","choices":[{"delta":{"content":"xy"}}]})",
      R"({"id":"chatcmpl-2","choices":[{"delta":{"content":"xyz"}}]})",
      R"({"id":"chatcmpl-2","choices":[{"delta":{"content":"xyz"}}]   })",
      R"({"id":"chatcmpl-2",   "choices":[{"delta":{"content":"xyz"}}]})",
      R"({"id":"chatcmpl-3","choices":[{"delta":{"content":"xyz"}}]})",
      delta_event(R"({"content":"again"})"),
      delta_event(R"({"content":"again"})"),
  };
  for (const auto& e : stream) {
    const ChunkInfo parsed = parse_chunk(e);
    EXPECT_TRUE(same(inspect_chunk(e, prefix), parsed)) << show(e);
  }
  // The shared start was taken: the head up to "choices".
  EXPECT_EQ(prefix.bytes, kHead);
  const auto resumed = scan_chunk_with_usage(delta_event(R"({"content":"four"})"), prefix);
  ASSERT_TRUE(resumed);
  EXPECT_EQ(resumed->text_chars, 4u);
}

// Random events behind one of two starts, through one prefix, as a stream's would go.
TEST(ChunkScan, RandomStreamsAgreeWithTheParse) {
  EventGen gen(20261206);
  std::mt19937 pick(7);
  const std::string heads[] = {kHead, R"({"id":"c","created":1733390001,)", "{"};
  ChunkPrefix prefix;
  int resumed = 0;
  constexpr int kEvents = 40000;
  for (int i = 0; i < kEvents; ++i) {
    std::string e = gen.event();
    const std::string& head = heads[pick() % 3];
    if (!e.empty() && e[0] == '{') e = head + e.substr(1);
    const bool had = !prefix.bytes.empty() && e.size() > prefix.bytes.size() &&
                     e.compare(0, prefix.bytes.size(), prefix.bytes) == 0;
    const ChunkInfo parsed = parse_chunk(e);
    ASSERT_TRUE(same(inspect_chunk(e, prefix), parsed)) << "event " << i << ": " << show(e);
    if (had) ++resumed;
  }
  EXPECT_GT(resumed, kEvents / 10);
}

// The text events of a stream differ only in their text: once one was scanned, the next one of
// the same shape is read as that shape around its string. Texts of every kind, events that
// leave the shape anywhere else, and shapes with other output or usage around the text all give
// the parse's answer.
TEST(ChunkScan, StreamShapeAgreesWithTheParse) {
  EventGen gen(20261207);
  std::mt19937 pick(13);
  const std::string heads[] = {
      kHead + R"("choices":[{"index":0,"delta":{"content":)",
      kHead + R"("choices":[{"index":0,"delta":{"role":"assistant","content":)",
      kHead + R"("choices":[{"delta":{"tool_calls":[{"index":0}],"content":)",
      R"({"choices":[{"text":"abc","delta":{"content":)",
      "{\"model\":\"caf\xc3\xa9\",\"choices\":[{\"delta\":{\"content\":",
      R"({"choices":[{"delta":{"content":)",
  };
  const std::string tails[] = {
      R"(},"logprobs":null,"finish_reason":null}],"usage":null})",
      R"(},"finish_reason":null}]})",
      R"(,"refusal":"no"},"finish_reason":null}]})",
      R"(,"refusal":null}}]})",
      R"(}}],"usage":{"prompt_tokens":5,"completion_tokens":2}})",
      R"(}}],"usage":{"prompt_tokens":5}})",
      R"(}}]}  )",
      // not a shape: two choices, a duplicate, a second "choices", not JSON
      R"(}},{"delta":{"content":"second"}}]})",
      R"(,"content":"again"}}]})",
      R"(}}],"choices":[]})",
      R"(}}]})"
      "}",
  };
  int fitted = 0;
  constexpr int kStreams = 4000;
  for (int n = 0; n < kStreams; ++n) {
    ChunkPrefix prefix;
    std::size_t h = pick() % std::size(heads), t = pick() % std::size(tails);
    const int events = static_cast<int>(pick() % 16) + 1;
    for (int i = 0; i < events; ++i) {
      if (pick() % 10 == 0) h = pick() % std::size(heads);
      if (pick() % 10 == 0) t = pick() % std::size(tails);
      std::string e = heads[h] + gen.text() + tails[t];
      if (pick() % 20 == 0) e = gen.damaged(e);
      const bool shaped = !prefix.shape_head.empty() && prefix.shape_misses < 8;
      const ChunkInfo parsed = parse_chunk(e);
      ASSERT_TRUE(same(inspect_chunk(e, prefix), parsed)) << "stream " << n << ": " << show(e);
      if (shaped && prefix.shape_misses == 0) ++fitted;
    }
  }
  EXPECT_GT(fitted, kStreams);
}

// Streams one after another on a thread, each with its own id and time: what follows their
// prefix (the role event, a text event around its text, the finish event) is recalled from the
// streams before, for other prefixes too. Every event, recalled, fitted, damaged or changed
// anywhere after the prefix, gives the parse's answer.
TEST(ChunkScan, StreamsOfOneThreadAgreeWithTheParse) {
  EventGen gen(20261208);
  std::mt19937 pick(17);
  const std::string models[] = {R"("gpt-4o-mini")", R"("bench")", "\"caf\xc3\xa9\""};
  const std::string roles[] = {
      R"("choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})",
      R"("choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null}}]})",
      R"("choices":[{"index":0,"delta":{"role":"assistant","content":"\u00e9"}}]})",
      R"("choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0}]}}]})",
      R"("choices":[{"index":0,"delta":{"content":""}}],"usage":{"prompt_tokens":3}})",
  };
  const std::string mids[] = {
      R"("choices":[{"index":0,"delta":{"content":)",
      R"("choices":[{"index":0,"delta":{"role":"assistant","content":)",
      R"("choices":[{"delta":{"refusal":"no","content":)",
      R"("usage":null,"choices":[{"delta":{"content":)",
  };
  const std::string tails[] = {
      R"(},"finish_reason":null}]})",
      R"(},"logprobs":null,"finish_reason":null}],"usage":null})",
      R"(}}],"usage":{"prompt_tokens":5,"completion_tokens":2}})",
      R"(}},{"delta":{"content":"second"}}]})",
      R"(,"content":"again"}}]})",
  };
  const std::string finishes[] = {
      R"("choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})",
      R"("choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null})",
      R"("choices":[{"index":0,"delta":{"content":null},"finish_reason":"stop"}]})",
  };
  int fitted = 0;
  constexpr int kStreams = 3000;
  for (int n = 0; n < kStreams; ++n) {
    ChunkPrefix prefix;
    const std::string head = R"({"id":"chatcmpl-)" + std::to_string(pick() % 100000) +
                             R"(","created":)" + std::to_string(1733390000 + n) + R"(,"model":)" +
                             models[pick() % std::size(models)] + ",";
    std::vector<std::string> stream;
    stream.push_back(head + roles[pick() % std::size(roles)]);
    const std::size_t m = pick() % std::size(mids), t = pick() % std::size(tails);
    for (int i = static_cast<int>(pick() % 6); i > 0; --i) {
      stream.push_back(head + mids[m] + gen.text() + tails[t]);
    }
    stream.push_back(head + finishes[pick() % std::size(finishes)]);
    stream.push_back(head + R"("choices":[],"usage":{"prompt_tokens":)" +
                     std::to_string(pick() % 500) + R"(,"completion_tokens":)" +
                     std::to_string(pick() % 50) + "}}");
    for (auto& e : stream) {
      if (pick() % 25 == 0) e = gen.damaged(e);
      const bool shaped = !prefix.shape_head.empty() && prefix.shape_misses < 8;
      const ChunkInfo parsed = parse_chunk(e);
      ASSERT_TRUE(same(inspect_chunk(e, prefix), parsed)) << "stream " << n << ": " << show(e);
      if (shaped && prefix.shape_misses == 0) ++fitted;
    }
  }
  EXPECT_GT(fitted, kStreams / 4);
}

// The usage event that ends a stream is the same bytes in every stream of a thread but for its
// integers: it is recalled from an earlier stream's with the integers read in their places.
// Counts of every length, integers that are not plain (a sign, a fraction, a leading zero, too
// many digits), other integers around them and changes anywhere give the parse's answer.
TEST(ChunkScan, UsageEventsOfOneThreadAgreeWithTheParse) {
  EventGen gen(20261209);
  std::mt19937 pick(23);
  const std::string usages[] = {
      R"("choices":[],"usage":{"prompt_tokens":#,"completion_tokens":#,"total_tokens":#}})",
      R"("choices":[],"usage":{"prompt_tokens":#,"completion_tokens":#,"total_tokens":#,)"
      R"("prompt_tokens_details":{"cached_tokens":#,"audio_tokens":#},)"
      R"("completion_tokens_details":{"reasoning_tokens":#,"audio_tokens":#}}})",
      R"("choices":[],"usage":{"prompt_tokens":#,"completion_tokens":#,)"
      R"("prompt_tokens_details":{"cached_tokens":#},"completion_tokens_details":)"
      R"({"reasoning_tokens":#}}})",
      R"("choices":[{"index":#,"delta":{},"finish_reason":"stop"}],)"
      R"("usage":{"prompt_tokens":#,"completion_tokens":#}})",
      R"("usage":{"completion_tokens":#,"prompt_tokens":#},"choices":[]})",
      R"("choices":[],"usage":{"prompt_tokens":#,"completion_tokens":#,"x":[#,#,{"y":#}]}})",
      R"("choices":[],"usage":{"prompt_tokens":#,"completion_tokens":#,"prompt_tokens":#}})",
      R"("choices":[],"usage":{"prompt_tokens": # ,"completion_tokens":#}, "n":#})",
      R"("choices":[{"delta":{"content":"a#"}}],"usage":{"prompt_tokens":#,"completion_tokens":#}})",
  };
  const std::string numbers[] = {"0",  "7",  "19",   "400", "123456789012345678",
                                 "1",  "25", "3000", "9",   "1234567890123456789",
                                 "07", "-3", "3.0",  "3e2", "",
                                 "00", "9 ", "1.",   "0x1", "99999999999999999999"};
  int recallable = 0;
  constexpr int kStreams = 4000;
  for (int n = 0; n < kStreams; ++n) {
    ChunkPrefix prefix;
    const std::string head = R"({"id":"chatcmpl-)" + std::to_string(pick() % 100000) +
                             R"(","object":"chat.completion.chunk","created":)" +
                             std::to_string(1733390000 + n) + R"(,"model":"bench",)";
    std::string usage = usages[pick() % std::size(usages)];
    bool plain = true;
    for (std::size_t at = usage.find('#'); at != std::string::npos; at = usage.find('#')) {
      // Mostly plain counts (the first ten), sometimes anything.
      const std::size_t k = pick() % 4 == 0 ? pick() % std::size(numbers) : pick() % 10;
      plain = plain && k < 10;
      usage.replace(at, 1, numbers[k]);
    }
    if (plain) ++recallable;
    std::vector<std::string> stream = {
        head + R"("choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})",
        head + R"("choices":[{"index":0,"delta":{"content":")" + std::to_string(n) + R"("}}]})",
        head + R"("choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})",
        head + usage,
    };
    for (auto& e : stream) {
      if (pick() % 30 == 0) e = gen.damaged(e);
      const ChunkInfo parsed = parse_chunk(e);
      ASSERT_TRUE(same(inspect_chunk(e, prefix), parsed)) << "stream " << n << ": " << show(e);
    }
  }
  EXPECT_GT(recallable, kStreams / 4);
}

// A stream's first event is scanned as far as its prefix, or found to begin with an earlier
// stream's prefix with another id, time or model there: either way the prefix is the same
// bytes, and the answer the parse's. Values that are plain or escaped, non-ASCII, not JSON,
// integers of every kind, and other members around them.
TEST(ChunkScan, StreamPrefixesOfOneThreadAgreeWithTheParse) {
  std::mt19937 pick(29);
  struct Part {
    std::string text;
    bool valid;  // JSON that the scan takes
    bool ascii;
  };
  const Part ids[] = {{R"("chatcmpl-1")", true, true}, {R"("chatcmpl-123456")", true, true},
                      {R"("")", true, true},           {R"("a\"b")", true, true},
                      {R"("\u00e9")", true, true},     {"\"caf\xc3\xa9\"", true, false},
                      {"\"a\x01\"", false, true},      {R"("a)", false, true},
                      {R"(17)", true, true},           {R"(null)", true, true}};
  const Part createds[] = {{"1796551848", true, true}, {"0", true, true},
                           {"7", true, true},          {"123456789012345678", true, true},
                           {"07", false, true},        {"-5", true, true},
                           {"1.5", true, true},        {"1e3", true, true},
                           {"", false, true},          {"1234567890123456789", false, true}};
  const Part models[] = {{R"("bench")", true, true},
                         {R"("gpt-4o-mini")", true, true},
                         {R"("x")", true, true},
                         {"\"caf\xc3\xa9\"", true, false}};
  const std::string events[] = {
      R"("choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})",
      R"("choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]})",
      R"("choices":[],"usage":{"prompt_tokens":8,"completion_tokens":5}})",
  };
  int kept = 0;
  constexpr int kStreams = 4000;
  for (int n = 0; n < kStreams; ++n) {
    // Mostly the usual prefix with another id and time, sometimes anything.
    const bool usual = pick() % 3 != 0;
    const Part& id = usual ? ids[pick() % 3] : ids[pick() % std::size(ids)];
    const Part& created = usual ? createds[pick() % 4] : createds[pick() % std::size(createds)];
    const Part& model = models[pick() % (usual ? 3 : std::size(models))];
    std::string head = R"({"id":)" + id.text + R"(,"object":"chat.completion.chunk","created":)" +
                       created.text + R"(,"model":)" + model.text + ",";
    bool valid = id.valid && created.valid && model.valid;
    if (pick() % 10 == 0) head.insert(head.size() - 1, " ");
    if (pick() % 10 == 0) head += R"("system_fingerprint":"fp_)" + std::to_string(n) + R"(",)";
    if (pick() % 20 == 0) head.insert(1, R"("x":[1,2.5,"y"],)");
    if (pick() % 20 == 0) {
      head[pick() % head.size()] = '}';
      valid = false;  // not necessarily, but then the prefix is not checked below
    }
    ChunkPrefix prefix;
    for (int i = 0; i < 3; ++i) {
      const std::string e = head + events[pick() % std::size(events)];
      const ChunkInfo parsed = parse_chunk(e);
      ASSERT_TRUE(same(inspect_chunk(e, prefix), parsed)) << "stream " << n << ": " << show(e);
      if (i == 0 && valid) {
        const bool ascii = id.ascii && created.ascii && model.ascii;
        ASSERT_EQ(prefix.bytes, ascii ? head : std::string()) << "stream " << n << ": " << show(e);
        if (ascii) ++kept;
      }
    }
  }
  EXPECT_GT(kept, kStreams / 2);
}

// A stream whose events never fit a shape (a member that changes on every event after the
// text) stops trying one, and keeps the parse's answer.
TEST(ChunkScan, StreamWithoutAShapeStopsTrying) {
  ChunkPrefix prefix;
  for (int i = 0; i < 40; ++i) {
    const std::string e = delta_event(R"({"content":"x"})",
                                      R"(,"obfuscation":")" + std::string(i % 7 + 1, 'q') + "\"");
    EXPECT_TRUE(same(inspect_chunk(e, prefix), parse_chunk(e))) << show(e);
  }
  EXPECT_EQ(prefix.shape_misses, 8);
  const std::string kept = prefix.shape_head;
  inspect_chunk(delta_event(R"({"role":"assistant","content":"x"})"), prefix);
  EXPECT_EQ(prefix.shape_head, kept);
}

TEST(ChunkScan, RandomEventsAgreeWithTheParse) {
  EventGen gen(20261205);
  int scanned = 0, with_text = 0, answers_scanned = 0;
  constexpr int kEvents = 60000;
  for (int i = 0; i < kEvents; ++i) {
    const std::string e = gen.event();
    const ChunkInfo parsed = parse_chunk(e);
    const ChunkInfo inspected = inspect_chunk(e);
    ASSERT_TRUE(same(inspected, parsed)) << "event " << i << ": " << show(e);
    for (Endpoint ep : {Endpoint::kChat, Endpoint::kEmbeddings}) {
      const Usage answer = parse_answer_usage(e, ep);
      ASSERT_TRUE(same_usage(extract_usage(e, ep), answer)) << "event " << i << ": " << show(e);
      if (auto u = scan_answer_usage(e, ep)) {
        ASSERT_TRUE(same_usage(*u, answer)) << "event " << i << ": " << show(e);
        if (u->present) ++answers_scanned;
      }
    }
    if (auto s = scan_chunk(e)) {
      ASSERT_TRUE(same(*s, parsed)) << "event " << i << ": " << show(e);
      ++scanned;
      if (s->has_text) ++with_text;
    }
  }
  // The comparison means something only if the scan answers for many of them, text included.
  EXPECT_GT(scanned, kEvents / 5);
  EXPECT_GT(with_text, kEvents / 20);
  EXPECT_GT(answers_scanned, kEvents / 50);
}

// Buffered answers of one thread in a few shapes, with other values each time: strings of any
// text (escaped, non-ASCII, invalid UTF-8, control characters, quotes), integers of every kind,
// the counts among them, and now and then a damaged answer. Those read from a recalled shape
// (the same bytes with other values) and those scanned agree with the parse, for both kinds of
// endpoint; most answers are recalled.
TEST(AnswerScan, AnswersOfOneThreadAgreeWithTheParse) {
  EventGen gen(20261210);
  std::mt19937 pick(31);
  // '$': a string value, '#': an integer (a count inside "usage").
  const std::string shapes[] = {
      R"({"id":$,"object":"chat.completion","created":#,"model":$,"choices":[{"index":#,)"
      R"("message":{"role":$,"content":$},"finish_reason":$}],"usage":{"prompt_tokens":#,)"
      R"("completion_tokens":#,"total_tokens":#}})",
      R"({"id":$,"object":"chat.completion","created":#,"model":$,"choices":[{"index":#,)"
      R"("message":{"role":$,"content":$,"refusal":null,"annotations":[]},"logprobs":null,)"
      R"("finish_reason":$}],"usage":{"prompt_tokens":#,"completion_tokens":#,)"
      R"("total_tokens":#,"prompt_tokens_details":{"cached_tokens":#,"audio_tokens":#},)"
      R"("completion_tokens_details":{"reasoning_tokens":#,"audio_tokens":#,)"
      R"("accepted_prediction_tokens":#,"rejected_prediction_tokens":#}},)"
      R"("service_tier":$,"system_fingerprint":$})",
      R"({"object":"list","data":[{"object":"embedding","index":#,"embedding":[#,#,#]}],)"
      R"("model":$,"usage":{"prompt_tokens":#,"total_tokens":#}})",
      R"({"usage":{"completion_tokens":#,"prompt_tokens":#,"prompt_tokens":#},"id":$})",
      R"({"id":$, "choices":[{"text":$}] ,"usage":{"prompt_tokens": # ,"completion_tokens":#}})",
      R"({"id":$,"choices":[],"usage":null,"x":{"usage":{"prompt_tokens":#}}})",
  };
  const std::string numbers[] = {"0",  "7",     "19",  "400", "123456789012345678",
                                 "1",  "25",    "82",  "9",   "1796551848",
                                 "07", "-3",    "3.0", "3e2", "1234567890123456789",
                                 "00", "9 ",    "1.",  "0x1", "99999999999999999999",
                                 "",   "\"1\"", "null"};
  const std::string strings[] = {
      R"("bench")",
      R"("assistant")",
      R"("stop")",
      R"("chatcmpl-sim-1000")",
      R"("")",
      R"("The order has not left the warehouse yet.\nYou can cancel it now.")",
      R"("a \"quoted\" word and a \\ backslash and \u00e9 and \ud83d\ude00")",
      "\"caf\xc3\xa9 \xe2\x82\xac\"",
  };
  const std::size_t before = answers_recalled();
  constexpr int kAnswers = 6000;
  for (int n = 0; n < kAnswers; ++n) {
    std::string a = shapes[pick() % std::size(shapes)];
    for (std::size_t at = a.find_first_of("$#"); at != std::string::npos;
         at = a.find_first_of("$#", at)) {
      std::string v;
      if (a[at] == '#') {
        // Mostly plain integers (the first ten), sometimes anything.
        v = numbers[pick() % 4 == 0 ? pick() % std::size(numbers) : pick() % 10];
      } else {
        // Mostly the usual text, sometimes any string (EventGen::text) or a long one.
        const auto k = pick() % 10;
        v = k < 6   ? strings[pick() % std::size(strings)]
            : k < 9 ? gen.text()
                    : "\"" + std::string(pick() % 300, 'w') + "\"";
      }
      a.replace(at, 1, v);
      at += v.size();
    }
    if (pick() % 40 == 0) a = gen.damaged(a);
    expect_answer_agrees(a);
    if (HasFailure()) {
      ADD_FAILURE() << "answer " << n << ": " << show(a);
      break;
    }
  }
  EXPECT_GT(answers_recalled() - before, static_cast<std::size_t>(kAnswers / 2));
}

}  // namespace
}  // namespace bw::providers
