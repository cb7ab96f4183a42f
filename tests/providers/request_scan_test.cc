// parse_request reads the usual request body without a DOM parse (scan_request); these tests
// hold it to parse_request_full's answer on tricky and on random bodies, for every endpoint.
#include "providers/request_scan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "providers/openai.h"
#include "support/show_bytes.h"

namespace bw::providers {
namespace {

using namespace std::string_literals;

std::string show(std::string_view s) {
  return test::show_bytes(s, 400);
}

std::string describe(const LlmRequest& r) {
  auto span = [](const std::optional<BodyLayout::Span>& s) {
    return s ? std::to_string(s->begin) + "-" + std::to_string(s->end) : std::string("none");
  };
  const BodyLayout& l = r.layout;
  return "{model '" + r.model + "', stream " + std::to_string(r.stream) + ", usage " +
         std::to_string(r.client_wants_usage) + ", max_tokens " + std::to_string(r.max_tokens) +
         ", prompt_chars " + std::to_string(r.prompt_chars) + ", messages " +
         std::to_string(r.message_count) + ", images " + std::to_string(r.images) + ", choices " +
         std::to_string(r.choices) + ", layout " + std::to_string(l.recorded) + "/" +
         std::to_string(l.any_member) + "/" + std::to_string(l.stream_options) + "/" +
         std::to_string(l.escaped_key) + "/" + std::to_string(l.size) + "/" +
         std::to_string(l.close) + " model " + span(l.model) + " max " + span(l.max_tokens) +
         " mct " + span(l.max_completion_tokens) + "}";
}

// Every field of the answer, so that a difference in any of them fails.
testing::AssertionResult same(const LlmRequest& a, const LlmRequest& b) {
  if (a.endpoint == b.endpoint && describe(a) == describe(b) &&
      a.image_tokens_each == b.image_tokens_each) {
    return testing::AssertionSuccess();
  }
  return testing::AssertionFailure() << describe(a) << " != " << describe(b);
}

const Endpoint kEndpoints[] = {Endpoint::kChat, Endpoint::kCompletions, Endpoint::kEmbeddings};

// The scan, where it answers, and parse_request always give the parse's answer. Returns
// whether the scan answered for some endpoint; `accepted` is set when the parse accepted the body
// for some endpoint.
bool expect_agrees(const std::string& body, bool* accepted = nullptr) {
  bool any = false;
  for (Endpoint ep : kEndpoints) {
    const auto full = parse_request_full(ep, body);
    if (accepted && full.ok()) *accepted = true;
    const auto got = parse_request(ep, body);
    EXPECT_EQ(got.ok(), full.ok()) << show(body);
    if (got.ok() && full.ok()) {
      EXPECT_TRUE(same(*got, *full)) << show(body);
    } else if (!got.ok() && !full.ok()) {
      EXPECT_EQ(got.error().message, full.error().message) << show(body);
      EXPECT_EQ(got.error().param, full.error().param) << show(body);
    }
    if (auto scanned = scan_request(ep, body)) {
      any = true;
      EXPECT_TRUE(full.ok()) << "the scan took a body the parse refuses: " << show(body);
      if (full.ok()) {
        EXPECT_TRUE(same(*scanned, *full)) << show(body);
      }
    }
  }
  return any;
}

const std::string kBenchBody =
    R"({"model":"bench","messages":[{"role":"system","content":"You are a concise assistant."},)"
    R"({"role":"user","content":"Hello there. I ordered a pair of walking boots three weeks ago )"
    R"(and the tracking page has said 'label created' ever since."}],"max_tokens":128,)"
    R"("temperature":0.2})";

TEST(RequestScan, TopFieldsAreKnownByName) {
  const std::pair<std::string_view, TopField> known[] = {
      {"model", TopField::kModel},
      {"messages", TopField::kMessages},
      {"max_tokens", TopField::kMaxTokens},
      {"temperature", TopField::kNoText},
      {"stream", TopField::kStream},
      {"stream_options", TopField::kStreamOptions},
      {"max_completion_tokens", TopField::kMaxCompletionTokens},
      {"prompt", TopField::kPrompt},
      {"input", TopField::kInput},
      {"n", TopField::kN},
      {"best_of", TopField::kBestOf},
      {"metadata", TopField::kNoText},
      {"user", TopField::kNoText},
      {"logit_bias", TopField::kNoText},
      {"stop", TopField::kNoText},
      {"service_tier", TopField::kNoText},
      {"modalities", TopField::kNoText},
      {"reasoning_effort", TopField::kNoText},
      {"seed", TopField::kNoText},
      {"top_p", TopField::kNoText}};
  for (const auto& [name, field] : known) {
    EXPECT_EQ(top_field(name), field) << name;
    EXPECT_EQ(top_field(std::string(name) + "x"), TopField::kOther) << name;
    EXPECT_EQ(top_field(name.substr(1)), TopField::kOther) << name;
  }
  for (std::string_view other : {"", "N", "Model", "tools", "tool_choice", "x", "modex"}) {
    EXPECT_EQ(top_field(other), TopField::kOther) << other;
  }
}

TEST(RequestScan, CommonBodiesAreScanned) {
  for (const std::string& body :
       {kBenchBody, kBenchBody.substr(0, kBenchBody.size() - 1) + ",\"stream\":true}",
        R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"s,
        R"( { "model" : "m" , "messages" : [ { "role" : "user" , "content" : "h\n\"i\"" } ] ,)"
        R"( "stream" : true , "stream_options" : { "include_usage" : true } } )"s,
        R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},)"
        R"({"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]}],)"
        R"("tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",)"
        R"("properties":{"a":{"type":"integer","minimum":-3}},"required":["a"]}}}],)"
        R"("n":2,"max_completion_tokens":50,"user":"u-1"})"s,
        R"({"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c1",)"
        R"("type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},)"
        R"({"role":"tool","tool_call_id":"c1","content":"42 \u00e9\ud83d\ude00"}]})"s}) {
    EXPECT_TRUE(scan_request(Endpoint::kChat, body).has_value()) << show(body);
    expect_agrees(body);
  }
  EXPECT_TRUE(scan_request(Endpoint::kCompletions,
                           R"({"model":"m","prompt":["a",[1,2,3]],"best_of":3,"n":2})")
                  .has_value());
  EXPECT_TRUE(
      scan_request(Endpoint::kEmbeddings, R"({"model":"m","input":"some text"})").has_value());
}

TEST(RequestScan, TheBenchBodyReadsAsTheParseReadsIt) {
  const auto scanned = scan_request(Endpoint::kChat, kBenchBody);
  ASSERT_TRUE(scanned.has_value());
  EXPECT_EQ(scanned->model, "bench");
  EXPECT_EQ(scanned->max_tokens, 128);
  EXPECT_EQ(scanned->message_count, 2u);
  ASSERT_TRUE(scanned->layout.recorded);
  ASSERT_TRUE(scanned->layout.model.has_value());
  EXPECT_EQ(kBenchBody.substr(scanned->layout.model->begin,
                              scanned->layout.model->end - scanned->layout.model->begin),
            "\"bench\"");
  const auto rewritten = rewrite_request(kBenchBody, scanned->layout, "provider-x", false, 64);
  ASSERT_TRUE(rewritten.ok());
  const auto reference = rewrite_request(kBenchBody, "provider-x", false, 64);
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(*rewritten, *reference);
}

TEST(RequestScan, TrickyBodiesAgreeWithTheParse) {
  const std::vector<std::string> bodies = {
      // Not an object, not JSON, not UTF-8, trailing bytes.
      "",
      "[]",
      "\"x\"",
      "{",
      "{}",
      "{} x",
      "{}}",
      R"({"model":"m")",
      "{\"model\":\"m\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}",
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\xa9\"}]}",
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\"}]}",
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\x01\"}]}",
      "\xef\xbb\xbf{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}",
      R"({"model":"m","messages":[{"role":"user","content":"a"}]}  )"
      "\n",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],})",
      R"({"model":"m","messages":[{"role":"user","content":"a"},]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}]}{})",
      // The model.
      R"({"messages":[{"role":"user","content":"a"}]})",
      R"({"model":"","messages":[{"role":"user","content":"a"}]})",
      R"({"model":null,"messages":[{"role":"user","content":"a"}]})",
      R"({"model":7,"messages":[{"role":"user","content":"a"}]})",
      R"({"model":"\u0062ench","messages":[{"role":"user","content":"a"}]})",
      R"({"mod\u0065l":"bench","messages":[{"role":"user","content":"a"}]})",
      R"({"model":")" + std::string(256, 'm') + R"(","messages":[{"role":"user","content":"a"}]})",
      R"({"model":")" + std::string(257, 'm') + R"(","messages":[{"role":"user","content":"a"}]})",
      // Duplicate keys at any depth.
      R"({"model":"m","model":"m","messages":[{"role":"user","content":"a"}]})",
      R"({"model":"m","messages":[{"role":"user","role":"user","content":"a"}]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"tools":[{"a":1,"a":2}]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{"a":1,"\u0061":2}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{"a":{"b":1},"b":{"b":1}}})",
      // Keys of one size that differ, and that repeat after others of that size; long keys.
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{"ab":1,"ac":2,"ad":3}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{"ab":1,"ac":2,"ab":3}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{"a":1,"bc":2,"d":3,"a":4}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{")" + std::string(70, 'k') +
          R"(":1,")" + std::string(64, 'k') + R"(":2}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{")" + std::string(70, 'k') +
          R"(":1,")" + std::string(64, 'k') + R"(":2,")" + std::string(70, 'k') + R"(":3}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{")" + std::string(63, 'k') +
          R"(":1,")" + std::string(63, 'k') + R"(":2}})",
      R"({"messages":[{"role":"user","content":"a"}],"model":"m","stream":false,"model":"m"})",
      // Stream and stream_options.
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"stream":1})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"stream":null})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"stream":false})",
      R"({"model":"m","input":"a","stream":true})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"stream_options":null})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"stream_options":true})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"stream_options":{}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],)"
      R"("stream_options":{"include_usage":false,"x":[1]}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],)"
      R"("stream_options":{"include_usage":"yes"}})",
      // Output caps.
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":0})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":-1})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":-0})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":1.0})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":1e2})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":"5"})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":null})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":01})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":999999999999999999})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":9223372036854775807})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":9223372036854775808})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],)"
      R"("max_completion_tokens":5,"max_tokens":"x"})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],)"
      R"("max_completion_tokens":null,"max_tokens":7})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],)"
      R"("max_completion_tokens":"x","max_tokens":7})",
      // Choices.
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"n":0})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"n":128})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"n":129})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"n":2.5})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"n":null,"best_of":4})",
      R"({"model":"m","input":"a","n":3})",
      R"({"model":"m","input":"a","n":300})",
      R"({"model":"m","prompt":"a","n":3,"best_of":2})",
      // Messages.
      R"({"model":"m","messages":[]})",
      R"({"model":"m","messages":null})",
      R"({"model":"m","messages":{}})",
      R"({"model":"m","messages":["a"]})",
      R"({"model":"m","messages":[{"content":"a"}]})",
      R"({"model":"m","messages":[{"role":1,"content":"a"}]})",
      R"({"model":"m","messages":[{"role":"user"}]})",
      R"({"model":"m","messages":[{"role":"user","content":null}]})",
      R"({"model":"m","messages":[{"role":"user","content":7}]})",
      R"({"model":"m","messages":[{"role":"user","content":{"a":"b"}}]})",
      R"({"model":"m","messages":[{"role":"user","content":[]}]})",
      R"({"model":"m","messages":[{"role":"user","content":["a",["b",1],2,null,true]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"input_text","text":"ab"}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"t\u0065xt","text":"ab"}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":7,"text":"ab"}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"text":"ab","type":"text"}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio",)"
      R"("input_audio":{"data":"QUJD","format":"wav"}}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"file","n":1.5}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"file","n":-0}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"file","n":-12}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":"a","name":"bob","x":[1,{"y":null}]}]})",
      R"({"model":"m","messages":[{"role":"user","content":"a","x":1.5}]})",
      R"({"model":"m","messages":[{"role":"user","content":"a","x":[1.5]}]})",
      // Prompts and inputs.
      R"({"model":"m","prompt":null})",
      R"({"model":"m","prompt":[1,2,3]})",
      R"({"model":"m","prompt":[[1,2],[3]]})",
      R"({"model":"m","prompt":{"a":1}})",
      R"({"model":"m","input":["a","bc"]})",
      R"({"model":"m","input":7})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"prompt":"p","input":"i"})",
      // Other top-level members, priced by their JSON: strings with escapes minify writes
      // differently.
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":"\u00e9\/\n"})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":["\u00e9\/\n\"\\"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],)"
      R"("x":["\u0000\u0001\u0008\u0009\u000a\u000b\u000c\u000d\u001f\u0020\u0022\u005c\u007f"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":["\ud83d\ude00\u20ac"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":["\ud83d"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":["\ude00"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":["\ud83d\u0041"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":["\x"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":["\u12"]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":{"a":[true,false,null,0,-1]}})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":[1e5]})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":7,"y":true,"z":null})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"temperature":1.5e300})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"temperature":1.5e3000})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"temperature":-})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"temperature":.5})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"temperature":1.})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"seed":tru})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"seed":truex})",
      R"({"model":"m","messages":[{"role":"user","content":"a"}],"":1})",
  };
  int scanned = 0;
  for (const auto& body : bodies) scanned += expect_agrees(body) ? 1 : 0;
  EXPECT_GT(scanned, 40);
}

TEST(RequestScan, DeepAndWideBodiesAgreeWithTheParse) {
  for (int depth : {1, 5, 10, 11, 12, 13, 14, 15, 16, 20, 40, 63, 64, 65, 70, 200}) {
    std::string nested;
    for (int i = 0; i < depth; ++i) nested += "[";
    nested += "1";
    for (int i = 0; i < depth; ++i) nested += "]";
    expect_agrees(R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":)" + nested + "}");
    std::string objects;
    for (int i = 0; i < depth; ++i) objects += "{\"k\":";
    objects += "\"v\"";
    for (int i = 0; i < depth; ++i) objects += "}";
    expect_agrees(R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":)" + objects +
                  "}");
  }
  for (int keys : {15, 16, 17, 31, 32, 33, 40}) {
    std::string object = "{";
    for (int i = 0; i < keys; ++i) {
      object += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
    }
    expect_agrees(R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":)" + object + "}");
    expect_agrees(R"({"model":"m","messages":[{"role":"user","content":"a"}],"x":)" + object +
                  ",\"k0\":1}}");
  }
  std::string long_text(200000, 'a');
  for (std::size_t i = 0; i < long_text.size(); i += 97) long_text[i] = ' ';
  expect_agrees(R"({"model":"m","messages":[{"role":"user","content":")" + long_text + "\"}]}");
}

// Random bodies: request-like objects with random members, values, escapes, numbers,
// whitespace, duplicates and damage.
class Generator {
 public:
  explicit Generator(std::uint32_t seed) : rng_(seed) {}

  std::string body() {
    std::string out;
    ws(out);
    out += '{';
    static const char* kTop[] = {"model",
                                 "messages",
                                 "prompt",
                                 "input",
                                 "max_tokens",
                                 "max_completion_tokens",
                                 "n",
                                 "best_of",
                                 "stream",
                                 "stream_options",
                                 "temperature",
                                 "tools",
                                 "tool_choice",
                                 "user",
                                 "metadata",
                                 "x",
                                 "mod\\u0065l",
                                 "stop",
                                 "response_format"};
    std::vector<std::string> keys(std::begin(kTop), std::end(kTop));
    std::shuffle(keys.begin(), keys.end(), rng_);
    keys.resize(static_cast<std::size_t>(pick(7)));
    if (chance(2)) keys.insert(keys.begin(), "model");
    if (chance(2)) keys.insert(keys.begin() + (keys.empty() ? 0 : 1), "messages");
    if (chance(10) && !keys.empty())
      keys.push_back(keys[static_cast<std::size_t>(pick(keys.size()))]);
    bool first = true;
    for (const auto& key : keys) member(out, first, key, top_value(key));
    ws(out);
    out += '}';
    ws(out);
    damage(out);
    return out;
  }

 private:
  int pick(std::size_t n) { return static_cast<int>(rng_() % n); }
  bool chance(int one_in) { return pick(static_cast<std::size_t>(one_in)) == 0; }

  void ws(std::string& out) {
    static const char* kWs[] = {"", "", "", "", " ", "\n", "\t ", "\r\n  "};
    out += kWs[pick(std::size(kWs))];
  }

  void member(std::string& out, bool& first, const std::string& key, const std::string& v) {
    if (!first) out += ',';
    first = false;
    ws(out);
    out += '"' + key + '"';
    ws(out);
    out += ':';
    ws(out);
    out += v;
    ws(out);
  }

  std::string model() {
    static const char* kModels[] = {"\"m\"", "\"bench\"",    "\"\"",           "7",
                                    "null",  "\"b\\u0065\"", "\"gpt-4o-mini\""};
    return chance(3) ? kModels[pick(std::size(kModels))] : "\"m\"";
  }

  std::string text() {
    static const char* kPieces[] = {"a",
                                    "hello ",
                                    "\\n",
                                    "\\\"",
                                    "\\\\",
                                    "\\/",
                                    "\\u00e9",
                                    "\\u0000",
                                    "\\u001f",
                                    "\\u0022",
                                    "\\u005c",
                                    "\\u007f",
                                    "\\ud83d\\ude00",
                                    "\\ud83d",
                                    "\\ude00",
                                    "\xc3\xa9",
                                    "\xe2\x82\xac",
                                    "\xff",
                                    "\x01",
                                    "\t",
                                    "usage",
                                    "0123456789abcdef",
                                    "\\b\\f\\r\\t",
                                    "\\x"};
    std::string s = "\"";
    const int n = pick(6);
    for (int i = 0; i < n; ++i) {
      // Mostly plain pieces: a body with one bad piece is refused whole.
      s += chance(12) ? kPieces[pick(std::size(kPieces))] : kPieces[pick(3)];
    }
    if (chance(3)) s += std::string(static_cast<std::size_t>(pick(40)), 'x');
    if (chance(4)) s += kPieces[3 + pick(4)];  // an escape minify writes back
    return s + "\"";
  }

  std::string number() {
    if (chance(2)) return std::to_string(pick(140));
    static const char* kNumbers[] = {"0",
                                     "1",
                                     "7",
                                     "128",
                                     "129",
                                     "-1",
                                     "-0",
                                     "1.5",
                                     "2.0",
                                     "1e2",
                                     "1E+2",
                                     "-3e-2",
                                     "01",
                                     "1.",
                                     "99999999999999999999",
                                     "123456789012345678",
                                     "-"};
    return kNumbers[pick(std::size(kNumbers))];
  }

  std::string value(int depth) {
    switch (pick(depth > 4 ? 6 : 8)) {
      case 0:
      case 1:
        return text();
      case 2:
        return number();
      case 3:
        return chance(2) ? "true" : (chance(2) ? "false" : "null");
      case 4:
        return chance(2) ? "[]" : "{}";
      case 5:
        return text();
      case 6: {
        std::string out = "[";
        const int n = pick(4);
        for (int i = 0; i < n; ++i) {
          if (i) out += ',';
          ws(out);
          out += value(depth + 1);
        }
        return out + "]";
      }
      default: {
        std::string out = "{";
        static const char* kKeys[] = {"a", "b", "type", "text", "url", "c\\u0064", "include_usage"};
        const int n = pick(4);
        bool first = true;
        for (int i = 0; i < n; ++i) {
          member(out, first, kKeys[pick(chance(4) ? std::size(kKeys) : 4)], value(depth + 1));
        }
        return out + "}";
      }
    }
  }

  std::string part() {
    switch (pick(6)) {
      case 0:
        return R"({"type":"text","text":)" + text() + "}";
      case 1:
        return R"({"type":"image_url","image_url":{"url":"https://x/a.png"}})";
      case 2:
        return R"({"type":"input_text","text":)" + text() + "}";
      case 3:
        return R"({"type":"input_audio","input_audio":{"data":"QUJD","n":)" + number() + "}}";
      case 4:
        return text();
      default:
        return value(3);
    }
  }

  std::string content() {
    switch (pick(4)) {
      case 0:
      case 1:
        return text();
      case 2: {
        std::string out = "[";
        const int n = pick(4);
        for (int i = 0; i < n; ++i) {
          if (i) out += ',';
          out += part();
        }
        return out + "]";
      }
      default:
        return value(3);
    }
  }

  std::string messages() {
    if (chance(10)) return value(2);
    std::string out = "[";
    const int n = pick(4);
    static const char* kRoles[] = {"\"system\"", "\"user\"", "\"assistant\"", "\"tool\"", "1"};
    for (int i = 0; i < n; ++i) {
      if (i) out += ',';
      ws(out);
      std::string m = "{";
      bool first = true;
      if (!chance(10)) member(m, first, "role", kRoles[pick(chance(8) ? std::size(kRoles) : 4)]);
      if (!chance(5)) member(m, first, "content", content());
      if (chance(4)) member(m, first, "name", text());
      if (chance(6)) member(m, first, "tool_calls", value(3));
      if (chance(20)) member(m, first, "role", "\"user\"");
      out += m + "}";
    }
    return out + "]";
  }

  std::string top_value(const std::string& key) {
    if (key == "model") return model();
    if (key == "messages") return messages();
    if (key == "prompt" || key == "input") return chance(2) ? text() : content();
    if (key == "max_tokens" || key == "max_completion_tokens" || key == "n" || key == "best_of") {
      return chance(4) ? value(1) : number();
    }
    if (key == "stream") return chance(3) ? value(1) : (chance(2) ? "true" : "false");
    if (key == "stream_options") {
      return chance(3) ? value(1) : R"({"include_usage":)" + value(2) + "}";
    }
    return value(1);
  }

  void damage(std::string& out) {
    if (!chance(8) || out.empty()) return;
    const auto at = static_cast<std::size_t>(pick(out.size()));
    switch (pick(3)) {
      case 0:
        out.resize(at);
        break;
      case 1:
        out[at] = static_cast<char>(pick(256));
        break;
      default:
        out.insert(at, 1, "{}[],:\"\\ 0"[pick(11)]);
        break;
    }
  }

  std::mt19937 rng_;
};

TEST(RequestScan, RandomBodiesAgreeWithTheParse) {
  Generator gen(20261206);
  int scanned = 0, accepted = 0;
  constexpr int kBodies = 60000;
  for (int i = 0; i < kBodies; ++i) {
    bool ok = false;
    if (expect_agrees(gen.body(), &ok)) ++scanned;
    accepted += ok ? 1 : 0;
    if (HasFailure()) break;
  }
  // The scan answers for most of the bodies the parse accepts (the rest are unusual), and the
  // parse accepts a good share of them.
  EXPECT_GT(accepted, kBodies / 20);
  EXPECT_GT(scanned, accepted / 2) << accepted;
}

}  // namespace
}  // namespace bw::providers
