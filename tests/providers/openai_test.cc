#include "providers/openai.h"

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <simdjson.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bw::providers {
namespace {

using namespace std::string_literals;
namespace dom = simdjson::dom;

// ---------------------------------------------------------------------------------------------
// JSON helpers: parse with simdjson (each document gets its own parser, so elements of two
// documents can be compared) and compare values semantically.

struct Doc {
  dom::parser parser;
  dom::element root;
  simdjson::error_code error = simdjson::SUCCESS;
  explicit Doc(const std::string& json) { error = parser.parse(json).get(root); }
};

bool json_equal(dom::element a, dom::element b);

bool members_equal(const std::vector<std::pair<std::string, dom::element>>& a,
                   const std::vector<std::pair<std::string, dom::element>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].first != b[i].first || !json_equal(a[i].second, b[i].second)) return false;
  }
  return true;
}

std::vector<std::pair<std::string, dom::element>> members(dom::element e) {
  std::vector<std::pair<std::string, dom::element>> out;
  dom::object obj = e.get_object().value_unsafe();
  for (auto f : obj) out.emplace_back(std::string(f.key), f.value);
  return out;
}

bool json_equal(dom::element a, dom::element b) {
  const bool a_num = a.is_number(), b_num = b.is_number();
  if (a_num || b_num) {
    if (!(a_num && b_num)) return false;
    if (a.is_int64() && b.is_int64()) return a.get_int64().value() == b.get_int64().value();
    if (a.is_uint64() && b.is_uint64()) return a.get_uint64().value() == b.get_uint64().value();
    return a.get_double().value() == b.get_double().value();
  }
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case dom::element_type::OBJECT:
      return members_equal(members(a), members(b));
    case dom::element_type::ARRAY: {
      dom::array x = a.get_array().value_unsafe();
      dom::array y = b.get_array().value_unsafe();
      if (x.size() != y.size()) return false;
      auto i = x.begin(), j = y.begin();
      for (; i != x.end(); ++i, ++j) {
        if (!json_equal(*i, *j)) return false;
      }
      return true;
    }
    case dom::element_type::STRING:
      return a.get_string().value() == b.get_string().value();
    case dom::element_type::BOOL:
      return a.get_bool().value() == b.get_bool().value();
    case dom::element_type::NULL_VALUE:
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------
// rewrite_request

// Checks one rewrite against its input: valid JSON, every top-level "model" is the provider
// model, stream_options and the output cap as asked, every other member unchanged and in order.
void check_output(const std::string& body, const std::string& output,
                  std::string_view provider_model, bool force, std::int64_t max_tokens) {
  SCOPED_TRACE("output: " + output);
  Doc in(body), out(output);
  ASSERT_EQ(in.error, simdjson::SUCCESS) << "bad test input";
  ASSERT_EQ(out.error, simdjson::SUCCESS)
      << "output is not valid JSON: " << simdjson::error_message(out.error);
  ASSERT_TRUE(out.root.is_object());

  auto is_replaced = [&](const std::string& key) {
    return key == "model" || (force && key == "stream_options") ||
           (max_tokens > 0 && (key == "max_tokens" || key == "max_completion_tokens"));
  };
  std::vector<std::pair<std::string, dom::element>> kept_in, kept_out;
  int models_in = 0, models_out = 0, caps_in = 0, caps_out = 0, so_out = 0;
  dom::element so_in_value;
  bool so_in = false;
  for (auto& [k, v] : members(in.root)) {
    if (k == "model") ++models_in;
    if (k == "max_tokens" || k == "max_completion_tokens") ++caps_in;
    if (k == "stream_options") {
      so_in = true;
      so_in_value = v;
    }
    if (!is_replaced(k)) kept_in.emplace_back(k, v);
  }
  for (auto& [k, v] : members(out.root)) {
    if (k == "model") {
      ++models_out;
      std::string_view m;
      EXPECT_EQ(v.get(m), simdjson::SUCCESS) << "model is not a string";
      EXPECT_EQ(m, provider_model);
    }
    if (max_tokens > 0 && (k == "max_tokens" || k == "max_completion_tokens")) {
      ++caps_out;
      std::int64_t n = 0;
      EXPECT_EQ(v.get(n), simdjson::SUCCESS) << k;
      EXPECT_EQ(n, max_tokens) << k;
    }
    if (force && k == "stream_options") {
      ++so_out;
      ASSERT_TRUE(v.is_object());
      bool include = false;
      EXPECT_EQ(v["include_usage"].get(include), simdjson::SUCCESS);
      EXPECT_TRUE(include);
      // The client's other stream options survive.
      std::vector<std::pair<std::string, dom::element>> opts_in, opts_out;
      if (so_in && so_in_value.is_object()) {
        for (auto& [ok, ov] : members(so_in_value)) {
          if (ok != "include_usage") opts_in.emplace_back(ok, ov);
        }
      }
      for (auto& [ok, ov] : members(v)) {
        if (ok != "include_usage") opts_out.emplace_back(ok, ov);
      }
      EXPECT_TRUE(members_equal(opts_in, opts_out)) << "stream_options changed";
    }
    if (!is_replaced(k)) kept_out.emplace_back(k, v);
  }
  EXPECT_EQ(models_out, models_in) << "top-level model keys added or lost";
  if (max_tokens > 0) {
    EXPECT_EQ(caps_out, std::max(caps_in, 1));
  }
  if (force) {
    EXPECT_EQ(so_out, 1);
  }
  EXPECT_TRUE(members_equal(kept_in, kept_out)) << "other members changed";
}

void check_rewrite(const std::string& body, std::string_view provider_model, bool force,
                   std::int64_t max_tokens) {
  SCOPED_TRACE("body: " + body + "\nprovider model: " + std::string(provider_model) +
               "\nforce_include_usage: " + (force ? "true" : "false") +
               "\nmax_tokens: " + std::to_string(max_tokens));
  auto r = rewrite_request(body, provider_model, force, max_tokens);
  ASSERT_TRUE(r) << r.error().message;
  check_output(body, *r, provider_model, force, max_tokens);
}

// The checker itself notices each kind of mistake.
TEST(RewriteRequest, CheckerCatchesMistakes) {
  EXPECT_NONFATAL_FAILURE(
      check_output(R"({"model":"a","x":1})", R"({"model":"b","x":2})", "b", false, 0),
      "other members changed");
  EXPECT_NONFATAL_FAILURE(
      check_output(R"({"model":"a","x":1,"y":2})", R"({"model":"b","y":2,"x":1})", "b", false, 0),
      "other members changed");
  EXPECT_NONFATAL_FAILURE(check_output(R"({"model":"a"})", R"({"model":"a"})", "b", false, 0),
                          "Which is: \"a\"");
  EXPECT_NONFATAL_FAILURE(
      check_output(R"({"model":"a","model":"a"})", R"({"model":"b"})", "b", false, 0),
      "top-level model keys added or lost");
  EXPECT_NONFATAL_FAILURE(
      check_output(R"({"m":{"model":"a"}})", R"({"m":{"model":"b"}})", "b", false, 0),
      "other members changed");
  EXPECT_NONFATAL_FAILURE(check_output(R"({"model":"a"})", R"({"model":"b"})", "b", true, 0),
                          "so_out");
  EXPECT_NONFATAL_FAILURE(
      check_output(R"({"model":"a","stream_options":{"include_usage":false}})",
                   R"({"model":"b","stream_options":{"include_usage":false}})", "b", true, 0),
      "include");
  EXPECT_NONFATAL_FAILURE(
      check_output(R"({"model":"a","stream_options":{"x":1}})",
                   R"({"model":"b","stream_options":{"include_usage":true}})", "b", true, 0),
      "stream_options changed");
  EXPECT_NONFATAL_FAILURE(check_output(R"({"model":"a","max_tokens":5})",
                                       R"({"model":"b","max_tokens":5})", "b", false, 9),
                          "max_tokens");
  EXPECT_NONFATAL_FAILURE(check_output(R"({"model":"a"})", R"({"model":"b"})", "b", false, 9),
                          "caps_out");
}

const std::vector<std::string>& provider_models() {
  static const std::vector<std::string> models = {
      "gpt-4o-2024-08-06",
      "",
      "quote\"inside",
      "back\\slash\\",
      "\\\"",
      "accents-éü-漢字-🦙",
      "tab\there\nnewline\r",
      "ctrl\x01\x1f",
      "slash/and:colon",
      "}],{\"model\":\"evil\"",
  };
  return models;
}

const std::vector<std::string>& bodies() {
  static const std::vector<std::string> b = {
      R"({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]})",
      R"({"messages":[{"role":"user","content":"hi"}],"model":"last"})",
      R"({"temperature":0.7,"model":"middle","n":1})",
      "{\n  \"model\" : \"gpt\" ,\n  \"messages\" : [ { \"role\" : \"user\" , \"content\" : "
      "\"x\" } ] ,\n  \"stream\" : true\n}\n",
      "\t{\r\n\"model\"\t:\t\"a\"\r\n}\r\n",
      "{}",
      "{ }",
      "{\n}",
      R"({"model":"a"})",
      // Nested "model" keys and strings that look like JSON.
      R"({"messages":[{"role":"user","content":"x","model":"keep-nested"}],)"
      R"("metadata":{"model":"keep2","deeper":{"model":["keep3"]}},"model":"top"})",
      R"({"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":)"
      R"({"type":"object","properties":{"model":{"type":"string"}}}}}]})",
      R"({"x":"model","model":"m","y":"\"model\":\"no\"","z":"}{][,:"})",
      R"({"s":"ends with backslash\\","model":"m","t":"\\\"","u":"\"}"})",
      R"({"model":"a\"b\\c\u00e9\ud83e\udd99","messages":[]})",
      // Duplicates.
      R"({"model":"a","x":1,"model":"b"})",
      R"({"model":"a","model":"b","model":"c"})",
      // Every kind of value.
      R"({"model":"m","i":-12,"u":18446744073709551615,"f":-1.5e-3,"g":2E+10,"t":true,)"
      R"("fa":false,"nu":null,"a":[],"o":{},"aa":[[1,[2,[3]]],{"k":[{}]}]})",
      R"({"model":{"not":"a string"},"x":[1,2]})",
      R"({"model":12345,"y":null})",
      R"({"model":null})",
      R"({"model":["a","b"]})",
      // Similar keys that are not model.
      R"({"models":["x"],"model_id":"y","Model":"z","model":"w"})",
      // Escaped keys: the DOM path.
      R"({"mod\u0065l":"escaped-key","messages":[{"role":"user","content":"hi"}]})",
      R"({"a\nb":1,"model":"m","c\"d":{"model":"nested"}})",
      R"({"model":"m","\u006dax_tokens":5})",
      R"({"model":"m","stream_opti\u006fns":{"x":1}})",
      // stream_options in every shape.
      R"({"model":"m","stream":true,"stream_options":{"include_usage":false}})",
      R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})",
      R"({"model":"m","stream":true,"stream_options":{"other":[1,{"a":"b"}],"x":"\u00e9"}})",
      R"({"model":"m","stream_options":{"other":1,"include_usage":false,"z":null}})",
      R"({"model":"m","stream_options":null})",
      R"({"model":"m","stream_options":{}})",
      R"({"stream_options":{"include_usage":false},"model":"m","stream":true})",
      // Output caps.
      R"({"model":"m","max_tokens":100})",
      R"({"model":"m","max_completion_tokens":100})",
      R"({"model":"m","max_tokens":100,"max_completion_tokens":200})",
      R"({"max_tokens":null,"model":"m"})",
      R"({"model":"m","max_tokens" : 9 , "n":2})",
      // Numbers next to the closing brace and whitespace in odd places.
      R"({"model":"m","n":1})",
      "{\"n\":1 ,\"model\":\"m\" ,\"k\":-0.0\n}",
      "{\"a\":[1 , 2 ,3 ] , \"model\" :\"m\"  }  \n",
      "{\"model\":\"m\",\"last\":true}",
      "{\"model\":\"m\",\"last\":null }",
  };
  return b;
}

TEST(RewriteRequest, ManyInputsAllOptionCombinations) {
  for (const auto& body : bodies()) {
    for (const auto& model : provider_models()) {
      for (bool force : {false, true}) {
        for (std::int64_t max_tokens : {std::int64_t{0}, std::int64_t{1}, std::int64_t{77},
                                        std::int64_t{1'000'000'000'000}}) {
          check_rewrite(body, model, force, max_tokens);
        }
      }
    }
  }
}

// The splice from parse_request's recorded layout gives exactly the bytes of the scan.
TEST(RewriteRequest, LayoutSpliceMatchesScanByteForByte) {
  for (const auto& body : bodies()) {
    SCOPED_TRACE("body: " + body);
    const BodyLayout layout = body_layout(body);
    // Bodies with a duplicate model are not recorded (parse_request refuses them).
    if (body.find("\"model\":\"b\"") == std::string::npos) {
      EXPECT_TRUE(layout.recorded);
      EXPECT_EQ(layout.size, body.size());
      EXPECT_EQ(body[layout.close], '}');
    }
    for (const auto& model : provider_models()) {
      for (bool force : {false, true}) {
        for (std::int64_t max_tokens : {std::int64_t{0}, std::int64_t{77}}) {
          auto scanned = rewrite_request(body, model, force, max_tokens);
          auto spliced = rewrite_request(body, layout, model, force, max_tokens);
          ASSERT_TRUE(scanned);
          ASSERT_TRUE(spliced);
          EXPECT_EQ(*spliced, *scanned);
        }
      }
    }
  }
}

// The pieces of the splice for a gather write are the bytes of the scan, in order; a provider
// model that needs escaping is declined (the caller takes rewrite_request).
TEST(RewriteRequest, SplicePiecesMatchScanByteForByte) {
  int spliced_count = 0;
  for (const auto& body : bodies()) {
    SCOPED_TRACE("body: " + body);
    const BodyLayout layout = body_layout(body);
    for (const auto& model : provider_models()) {
      for (bool force : {false, true}) {
        for (std::int64_t max_tokens : {std::int64_t{0}, std::int64_t{77}}) {
          auto scanned = rewrite_request(body, model, force, max_tokens);
          ASSERT_TRUE(scanned);
          SplicedBody s;
          if (!splice_request(body, layout, model, force, max_tokens, s)) {
            const bool plain = model.find_first_of("\"\\") == std::string::npos &&
                               std::all_of(model.begin(), model.end(), [](char ch) {
                                 const auto u = static_cast<unsigned char>(ch);
                                 return u >= 0x20 && u < 0x80;
                               });
            EXPECT_FALSE(layout.recorded && !layout.escaped_key && plain &&
                         !(force && layout.stream_options));
            continue;
          }
          ++spliced_count;
          std::string joined;
          for (std::size_t i = 0; i < s.count; ++i) joined.append(s.pieces[i]);
          EXPECT_EQ(joined, *scanned);
          EXPECT_EQ(s.size, joined.size());
        }
      }
    }
  }
  EXPECT_GT(spliced_count, 100);
}

// A model the deployment names as the client did is sent as the client's own bytes.
TEST(RewriteRequest, SpliceKeepsAnUnchangedModelInPlace) {
  const std::string body = R"({"model":"m","messages":[]})";
  SplicedBody s;
  ASSERT_TRUE(splice_request(body, body_layout(body), "m", false, 0, s));
  ASSERT_EQ(s.count, 1u);
  EXPECT_EQ(s.pieces[0].data(), body.data());
  ASSERT_TRUE(splice_request(body, body_layout(body), "other", false, 0, s));
  std::string joined;
  for (std::size_t i = 0; i < s.count; ++i) joined.append(s.pieces[i]);
  EXPECT_EQ(joined, R"({"model":"other","messages":[]})");
}

TEST(RewriteRequest, LayoutRecordedByParseRequest) {
  const std::string body =
      " {\"model\" : \"gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"x\\\"\"}],"
      "\"max_completion_tokens\":10 ,\"stream\":true} ";
  auto r = parse_request(Endpoint::kChat, body);
  ASSERT_TRUE(r) << r.error().message;
  const auto& l = r->layout;
  ASSERT_TRUE(l.recorded);
  ASSERT_TRUE(l.model && l.max_completion_tokens);
  EXPECT_FALSE(l.max_tokens);
  EXPECT_EQ(body.substr(l.model->begin, l.model->end - l.model->begin), "\"gpt\"");
  EXPECT_EQ(body.substr(l.max_completion_tokens->begin,
                        l.max_completion_tokens->end - l.max_completion_tokens->begin),
            "10");
  auto out = rewrite_request(body, l, "up", true, 5);
  ASSERT_TRUE(out);
  EXPECT_EQ(
      *out,
      " {\"model\" : \"up\",\"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"x\\\"\"}],"
      "\"max_completion_tokens\":5 ,\"stream\":true,\"stream_options\":{\"include_usage\":true}} ");
  // A layout of another body is not used: the body is scanned.
  const std::string other = R"({"model":"a","x":1})";
  auto again = rewrite_request(other, l, "b", false, 0);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, R"({"model":"b","x":1})");
  // Escaped keys and a stream_options to merge go through the DOM path, as with the scan.
  EXPECT_TRUE(body_layout(R"({"mod\u0065l":"a"})").escaped_key);
  EXPECT_TRUE(body_layout(R"({"stream_options":{}})").stream_options);
  EXPECT_FALSE(body_layout("[1]").recorded);
}

TEST(RewriteRequest, FastPathSplicesBytesInPlace) {
  // Nothing but `model` changes: every other byte (including whitespace) stays.
  auto r =
      rewrite_request("{ \"model\" : \"gpt-4o\" ,\n \"temperature\" : 0.50 }", "up\"x", false, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "{ \"model\" : \"up\\\"x\" ,\n \"temperature\" : 0.50 }");
  r = rewrite_request(R"({"model":"a","max_tokens":10})", "b", false, 5);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, R"({"model":"b","max_tokens":5})");
}

TEST(RewriteRequest, AddsStreamOptionsAndMaxTokens) {
  auto r = rewrite_request(R"({"model":"a","stream":true})", "b", true, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, R"({"model":"b","stream":true,"stream_options":{"include_usage":true}})");
  r = rewrite_request(R"({"model":"a"})", "b", false, 64);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, R"({"model":"b","max_tokens":64})");
  r = rewrite_request("{}", "b", true, 64);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, R"({"stream_options":{"include_usage":true},"max_tokens":64})");
  r = rewrite_request("{}", "b", false, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "{}");
}

TEST(RewriteRequest, MergesIntoExistingStreamOptions) {
  auto r = rewrite_request(
      R"({"model":"a","stream_options":{"include_usage":false,"extra":[1]},"stream":true})", "b",
      true, 0);
  ASSERT_TRUE(r);
  Doc d(*r);
  ASSERT_EQ(d.error, simdjson::SUCCESS) << *r;
  bool include = false;
  EXPECT_EQ(d.root["stream_options"]["include_usage"].get(include), simdjson::SUCCESS);
  EXPECT_TRUE(include);
  EXPECT_EQ(d.root["stream_options"]["extra"].get_array().size(), 1u);
  std::string_view m;
  EXPECT_EQ(d.root["model"].get(m), simdjson::SUCCESS);
  EXPECT_EQ(m, "b");
  // Not forced: left exactly as it was.
  r = rewrite_request(R"({"model":"a","stream_options":{"include_usage":false}})", "b", false, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, R"({"model":"b","stream_options":{"include_usage":false}})");
}

TEST(RewriteRequest, EscapedModelKeyIsTreatedAsModel) {
  auto r = rewrite_request(R"({"mod\u0065l":"client","x":1})", "provider", false, 0);
  ASSERT_TRUE(r);
  Doc d(*r);
  ASSERT_EQ(d.error, simdjson::SUCCESS) << *r;
  std::string_view m;
  EXPECT_EQ(d.root["model"].get(m), simdjson::SUCCESS);
  EXPECT_EQ(m, "provider");
  EXPECT_EQ(r->find("client"), std::string::npos);
}

TEST(RewriteRequest, NestedModelKeysAreNotChanged) {
  auto r = rewrite_request(
      R"({"messages":[{"role":"user","content":"c","model":"inner"}],"model":"outer"})", "p", false,
      0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, R"({"messages":[{"role":"user","content":"c","model":"inner"}],"model":"p"})");
}

TEST(RewriteRequest, DuplicateTopLevelModelsAreAllReplaced) {
  auto r = rewrite_request(R"({"model":"a","x":1,"model":"b"})", "p", false, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, R"({"model":"p","x":1,"model":"p"})");
  // The same through the DOM path (an escaped key forces it).
  r = rewrite_request(R"({"model":"a","\u0078":1,"model":"b"})", "p", false, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->find("\"a\""), std::string::npos) << *r;
  EXPECT_EQ(r->find("\"b\""), std::string::npos) << *r;
}

// rewrite_request's fast path assumes a body that parse_request has validated (the pipeline
// always parses first); what is not an object at all is still refused.
TEST(RewriteRequest, NonObjectsAreRefused) {
  for (std::string bad : {"", "[]", "[{\"model\":\"a\"}]", "\"model\"", "{\"model\":\"a\"",
                          "not json", "null", "{\"model\":\"a\\\"}"}) {
    for (bool force : {false, true}) {
      auto r = rewrite_request(bad, "p", force, 0);
      EXPECT_FALSE(r) << bad << " -> " << (r ? *r : "");
      if (!r) {
        EXPECT_EQ(r.error().status, 400);
        EXPECT_EQ(r.error().code, "invalid_json");
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// parse_request

TEST(ParseRequest, ChatBasics) {
  auto r = parse_request(
      Endpoint::kChat, R"({"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},)"
                       R"("max_completion_tokens":50,"max_tokens":70,"messages":[)"
                       R"({"role":"system","content":"abc"},)"
                       R"({"role":"user","content":[{"type":"text","text":"defg"},"hi"]}]})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->endpoint, Endpoint::kChat);
  EXPECT_EQ(r->model, "gpt-4o");
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->client_wants_usage);
  EXPECT_EQ(r->max_tokens, 50);  // max_completion_tokens wins
  EXPECT_EQ(r->message_count, 2u);
  EXPECT_EQ(r->prompt_chars, 3u + 4u + 2u);
  EXPECT_EQ(estimate_prompt_tokens(*r), (9 + 2) / 3 + 4 * 2 + 3);
}

TEST(ParseRequest, DefaultsAndOtherEndpoints) {
  auto r = parse_request(Endpoint::kChat, R"({"model":"m","messages":[{"role":"user"}]})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->stream);
  EXPECT_FALSE(r->client_wants_usage);
  EXPECT_EQ(r->max_tokens, 0);
  auto c =
      parse_request(Endpoint::kCompletions, R"({"model":"m","prompt":"12345","max_tokens":3})");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->prompt_chars, 5u);
  EXPECT_EQ(c->max_tokens, 3);
  auto e = parse_request(Endpoint::kEmbeddings, R"({"model":"m","input":["ab","cde"]})");
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->prompt_chars, 5u);
  auto escaped = parse_request(Endpoint::kEmbeddings, R"({"mod\u0065l":"esc","input":"x"})");
  ASSERT_TRUE(escaped) << escaped.error().message;
  EXPECT_EQ(escaped->model, "esc");
}

struct BadCase {
  Endpoint endpoint;
  std::string body;
  std::string param;
  std::string code;
};

TEST(ParseRequest, Errors) {
  const std::vector<BadCase> cases = {
      {Endpoint::kChat, R"({"messages":[{"role":"user","content":"x"}]})", "model", ""},
      {Endpoint::kChat, R"({"model":"","messages":[{"role":"user"}]})", "model", ""},
      {Endpoint::kChat, R"({"model":5,"messages":[{"role":"user"}]})", "model", ""},
      {Endpoint::kChat, R"({"model":null,"messages":[{"role":"user"}]})", "model", ""},
      {Endpoint::kChat, R"({"model":")" + std::string(257, 'x') + R"(","messages":[]})", "model",
       ""},
      {Endpoint::kChat, R"([{"model":"m"}])", "", "invalid_json"},
      {Endpoint::kChat, R"("model")", "", "invalid_json"},
      {Endpoint::kChat, "null", "", "invalid_json"},
      {Endpoint::kChat, "", "", "invalid_json"},
      {Endpoint::kChat, R"({"model":"m",})", "", "invalid_json"},
      {Endpoint::kChat, "{\"model\":\"\xff\xfe\",\"messages\":[]}", "", "invalid_json"},
      {Endpoint::kChat, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\"}]}",
       "", "invalid_json"},
      {Endpoint::kChat, R"({"model":"m"})", "messages", ""},
      {Endpoint::kChat, R"({"model":"m","messages":[]})", "messages", ""},
      {Endpoint::kChat, R"({"model":"m","messages":["x"]})", "messages", ""},
      {Endpoint::kChat, R"({"model":"m","messages":[{"content":"x"}]})", "messages", ""},
      {Endpoint::kChat, R"({"model":"m","stream":"yes","messages":[{"role":"u"}]})", "stream", ""},
      {Endpoint::kChat, R"({"model":"m","stream_options":1,"messages":[{"role":"u"}]})",
       "stream_options", ""},
      {Endpoint::kChat, R"({"model":"m","max_tokens":0,"messages":[{"role":"u"}]})", "max_tokens",
       ""},
      {Endpoint::kChat, R"({"model":"m","max_tokens":-5,"messages":[{"role":"u"}]})", "max_tokens",
       ""},
      {Endpoint::kChat, R"({"model":"m","max_completion_tokens":1.5,"messages":[{"role":"u"}]})",
       "max_completion_tokens", ""},
      {Endpoint::kCompletions, R"({"model":"m"})", "prompt", ""},
      {Endpoint::kEmbeddings, R"({"model":"m"})", "input", ""},
      {Endpoint::kEmbeddings, R"({"model":"m","input":"x","stream":true})", "stream", ""},
  };
  for (const auto& c : cases) {
    auto r = parse_request(c.endpoint, c.body);
    ASSERT_FALSE(r) << c.body;
    EXPECT_EQ(r.error().status, 400) << c.body;
    EXPECT_EQ(r.error().type, "invalid_request_error") << c.body;
    EXPECT_EQ(r.error().param, c.param) << c.body;
    EXPECT_EQ(r.error().code, c.code) << c.body;
  }
}

TEST(ParseRequest, InvalidUtf8SaysSo) {
  auto r = parse_request(Endpoint::kChat, "{\"model\":\"m\xff\",\"messages\":[{\"role\":\"u\"}]}");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("UTF-8"), std::string::npos) << r.error().message;
}

std::string nested_body(std::size_t depth) {
  // The root object is one level; `depth - 1` arrays inside it.
  std::string open(depth - 1, '['), close(depth - 1, ']');
  return R"({"model":"m","messages":[{"role":"u"}],"x":)" + open + "1" + close + "}";
}

TEST(ParseRequest, Depth) {
  EXPECT_TRUE(parse_request(Endpoint::kChat, nested_body(kMaxJsonDepth)));
  auto r = parse_request(Endpoint::kChat, nested_body(kMaxJsonDepth + 1));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, "invalid_json");
  EXPECT_NE(r.error().message.find("64"), std::string::npos) << r.error().message;
  // Deeper than the parser itself allows.
  auto deep = parse_request(Endpoint::kChat, nested_body(5000));
  ASSERT_FALSE(deep);
  EXPECT_EQ(deep.error().code, "invalid_json");
  EXPECT_NE(deep.error().message.find("deep"), std::string::npos) << deep.error().message;
}

// ---------------------------------------------------------------------------------------------
// usage

TEST(ExtractUsage, Values) {
  auto u =
      extract_usage(R"({"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,)"
                    R"("total_tokens":46,"prompt_tokens_details":{"cached_tokens":5}}})");
  EXPECT_TRUE(u.present);
  EXPECT_EQ(u.prompt_tokens, 12);
  EXPECT_EQ(u.completion_tokens, 34);
  EXPECT_EQ(u.cached_tokens, 5);

  u = extract_usage(R"({"usage":{"prompt_tokens":7}})");
  EXPECT_TRUE(u.present);
  EXPECT_TRUE(u.unreadable) << "OpenAI always sends both counts";
  EXPECT_FALSE(u.usable());
  EXPECT_EQ(u.prompt_tokens, 7);
  EXPECT_EQ(u.completion_tokens, 0);
  EXPECT_EQ(u.cached_tokens, 0);

  for (std::string_view none : {R"({"choices":[]})", R"({"usage":null})", R"({"usage":5})",
                                "not json", "", R"([{"usage":{"prompt_tokens":1}}])"}) {
    auto n = extract_usage(none);
    EXPECT_FALSE(n.present) << none;
    EXPECT_EQ(n.prompt_tokens, 0) << none;
  }
}

// A count that is there but is not a non-negative number is not trusted (the answer is then
// charged an estimate); a number with a fraction is rounded up; details that only lower the bill
// or inform read as 0 when they are not counts.
TEST(ExtractUsage, UnreadableCountsAreNotTrusted) {
  for (std::string_view bad : {R"({"usage":{"prompt_tokens":"12","completion_tokens":34}})",
                               R"({"usage":{"prompt_tokens":12,"completion_tokens":"34"}})",
                               R"({"usage":{"prompt_tokens":-12,"completion_tokens":34}})",
                               R"({"usage":{"prompt_tokens":12,"completion_tokens":-1.5}})",
                               R"({"usage":{"prompt_tokens":12,"completion_tokens":null}})",
                               R"({"usage":{"prompt_tokens":12,"completion_tokens":true}})",
                               R"({"usage":{"prompt_tokens":12,"completion_tokens":{"n":34}}})",
                               R"({"usage":{"completion_tokens":34}})", R"({"usage":{}})"}) {
    const auto u = extract_usage(bad);
    EXPECT_TRUE(u.present) << bad;
    EXPECT_TRUE(u.unreadable) << bad;
    EXPECT_FALSE(u.usable()) << bad;
  }
  // An embeddings answer has no completion count.
  auto e =
      extract_usage(R"({"usage":{"prompt_tokens":8,"total_tokens":8}})", Endpoint::kEmbeddings);
  EXPECT_TRUE(e.usable());
  EXPECT_EQ(e.prompt_tokens, 8);
  EXPECT_FALSE(extract_usage(R"({"usage":{"prompt_tokens":"8"}})", Endpoint::kEmbeddings).usable());
  auto u = extract_usage(R"({"usage":{"prompt_tokens":12.2,"completion_tokens":3e1}})");
  EXPECT_TRUE(u.usable());
  EXPECT_EQ(u.prompt_tokens, 13);
  EXPECT_EQ(u.completion_tokens, 30);
  u = extract_usage(R"({"usage":{"prompt_tokens":12,"completion_tokens":18446744073709551615}})");
  EXPECT_TRUE(u.usable());
  EXPECT_EQ(u.completion_tokens, INT64_MAX);
  u = extract_usage(R"({"usage":{"prompt_tokens":12,"completion_tokens":3,)"
                    R"("prompt_tokens_details":null,"completion_tokens_details":{)"
                    R"("reasoning_tokens":"2"}}})");
  EXPECT_TRUE(u.usable());
  EXPECT_EQ(u.cached_tokens, 0);
  u = extract_usage(R"({"usage":{"prompt_tokens":12,"completion_tokens":3,)"
                    R"("prompt_tokens_details":{"cached_tokens":-5}}})");
  EXPECT_TRUE(u.usable());
  EXPECT_EQ(u.cached_tokens, 0) << "a negative cached count must not lower the bill";
  // A stream's usage event: the scan leaves such counts to the same reader.
  const auto info = inspect_chunk(R"({"choices":[],"usage":{"prompt_tokens":-7,)"
                                  R"("completion_tokens":9}})");
  EXPECT_TRUE(info.usage.present);
  EXPECT_TRUE(info.usage.unreadable);
}

// Providers' and clients' JSON parsers keep the last of duplicate keys: the usage billed is the
// one the client reads, never an earlier (smaller) copy.
TEST(ExtractUsage, DuplicateKeysReadTheLast) {
  auto u = extract_usage(R"({"usage":{"prompt_tokens":1,"completion_tokens":1},"choices":[],)"
                         R"("usage":{"prompt_tokens":100,"completion_tokens":50}})");
  EXPECT_TRUE(u.present);
  EXPECT_EQ(u.prompt_tokens, 100);
  EXPECT_EQ(u.completion_tokens, 50);
  u = extract_usage(R"({"usage":{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens":100,)"
                    R"("completion_tokens":50,"prompt_tokens_details":{"cached_tokens":90},)"
                    R"("prompt_tokens_details":{"cached_tokens":0}}})");
  EXPECT_EQ(u.prompt_tokens, 100);
  EXPECT_EQ(u.completion_tokens, 50);
  EXPECT_EQ(u.cached_tokens, 0);
  // A stream's usage event, as the relay reads it.
  const auto info =
      inspect_chunk(R"({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1},)"
                    R"("usage":{"prompt_tokens":7,"completion_tokens":9}})");
  EXPECT_TRUE(info.usage.present);
  EXPECT_EQ(info.usage.prompt_tokens, 7);
  EXPECT_EQ(info.usage.completion_tokens, 9);
}

// Output reported as no output tokens is not free: the count is not trusted. An empty answer
// with 0 output tokens is.
TEST(ExtractUsage, GeneratedOutputWithZeroCompletionTokensIsNotTrusted) {
  const std::string usage = R"("usage":{"prompt_tokens":12,"completion_tokens":0}})";
  for (
      std::string_view out :
      {R"({"choices":[{"index":0,"message":{"role":"assistant","content":"Hello"}}],)",
       R"({"choices":[{"index":0,"message":{"role":"assistant","content":null,)"
       R"("tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}],)",
       R"({"choices":[{"index":0,"message":{"role":"assistant","content":null,)"
       R"("refusal":"I cannot"}}],)",
       R"({"choices":[{"index":0,"message":{"content":""}},{"index":1,"message":{"content":"x"}}],)",
       R"({"choices":[{"index":0,"text":"abc"}],)"}) {
    const auto u = extract_usage(std::string(out) + usage);
    EXPECT_TRUE(u.present) << out;
    EXPECT_FALSE(u.usable()) << out;
  }
  for (std::string_view empty :
       {R"({"choices":[{"index":0,"message":{"role":"assistant","content":""}}],)",
        R"({"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[],)"
        R"("refusal":null}}],)",
        R"({"choices":[],)", R"({)"}) {
    const auto u = extract_usage(std::string(empty) + usage);
    EXPECT_TRUE(u.usable()) << empty;
    EXPECT_EQ(u.completion_tokens, 0) << empty;
  }
  // Counted output is trusted as it is.
  EXPECT_TRUE(extract_usage(R"({"choices":[{"message":{"content":"Hello"}}],)"
                            R"("usage":{"prompt_tokens":12,"completion_tokens":1}})")
                  .usable());
}

// A tool call's delta is generated output too (not text): the relay counts it.
TEST(InspectChunk, ToolCallsAndRefusalsAreOutput) {
  auto call = inspect_chunk(
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]})");
  EXPECT_TRUE(call.other_output);
  EXPECT_FALSE(call.has_text);
  auto refusal = inspect_chunk(R"({"choices":[{"index":0,"delta":{"refusal":"no"}}]})");
  EXPECT_TRUE(refusal.other_output);
  for (std::string_view none :
       {R"({"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null}}]})",
        R"({"choices":[{"index":0,"delta":{"tool_calls":[ ]}}]})",
        R"({"choices":[{"index":0,"delta":{"content":"hi"}}]})"}) {
    EXPECT_FALSE(inspect_chunk(none).other_output) << none;
    EXPECT_FALSE(parse_chunk(none).other_output) << none;
  }
}

TEST(InspectChunk, DoneTextAndUsageOnly) {
  EXPECT_TRUE(inspect_chunk("[DONE]").done);
  auto text = inspect_chunk(R"({"choices":[{"index":0,"delta":{"content":"Hello"}}]})");
  EXPECT_FALSE(text.done);
  EXPECT_TRUE(text.has_text);
  EXPECT_EQ(text.text_chars, 5u);
  EXPECT_FALSE(text.usage.present);
  auto usage = inspect_chunk(R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}})");
  EXPECT_TRUE(usage.usage_only);
  EXPECT_TRUE(usage.usage.present);
  EXPECT_EQ(usage.usage.prompt_tokens, 3);
  EXPECT_EQ(usage.usage.completion_tokens, 4);
  auto both = inspect_chunk(
      R"({"choices":[{"text":"abc"}],"usage":{"prompt_tokens":1,"completion_tokens":2}})");
  EXPECT_FALSE(both.usage_only);
  EXPECT_TRUE(both.usage.present);
  EXPECT_EQ(both.text_chars, 3u);
}

}  // namespace
}  // namespace bw::providers
