// The translation matrix against real processes: `bellwether serve` in front of `bellwether sim`,
// which speaks OpenAI chat, OpenAI Responses, Anthropic Messages and Gemini natively. Every inbound
// API (chat completions, Responses, Messages) meets every upstream type (openai, anthropic,
// gemini), buffered and streamed, for text, tool calls, usage (cache tokens included) and errors.
#include <gtest/gtest.h>
#include <simdjson.h>

#include <chrono>
#include <string>
#include <vector>

#include "harness.h"

namespace bw::test {
namespace {

namespace dom = simdjson::dom;
using std::chrono::milliseconds;

constexpr const char* kKey = "sk-translate-0001";
constexpr const char* kUpstreamKey = "sk-upstream-secret-42";

struct Env {
  Sim sim;
  Gw gw;
};

Env& env() {
  static Env* e = [] {
    auto* e = new Env;
    e->sim = start_sim(R"(sim:
  workers: 2
  max_tokens: limit
  defaults: {ttft: {median_ms: 5, p99_ms: 5}, itl: {median_ms: 1, p99_ms: 1}, completion_tokens: 6}
  models:
    slow-up: {ttft: {median_ms: 30, p99_ms: 30}, itl: {median_ms: 400, p99_ms: 400}, completion_tokens: 3}
)");
    const std::string base = "http://127.0.0.1:" + std::to_string(e->sim.port);
    e->gw =
        start_gateway(R"(workers: 2
providers:
  oa: {type: openai, base_url: ")" +
                          base + R"(/v1", api_key_env: BW_TEST_UPSTREAM_KEY}
  an: {type: anthropic, base_url: ")" +
                          base + R"(/v1", api_key_env: BW_TEST_UPSTREAM_KEY}
  ge: {type: gemini, base_url: ")" +
                          base + R"(/v1beta", api_key_env: BW_TEST_UPSTREAM_KEY}
  az: {type: azure, base_url: ")" +
                          base + R"(", api_version: "2024-10-21", api_key_env: BW_TEST_UPSTREAM_KEY}
plans:
  bare: {limits: []}
model_groups:
  via-openai: {deployments: [{provider: oa, model: up-o}]}
  via-anthropic: {deployments: [{provider: an, model: up-a}]}
  via-gemini: {deployments: [{provider: ge, model: up-g}]}
  via-azure: {deployments: [{provider: az, model: my-deployment}]}
  e503-openai: {deployments: [{provider: oa, model: e503-o}]}
  e503-anthropic: {deployments: [{provider: an, model: e503-a}]}
  e503-gemini: {deployments: [{provider: ge, model: e503-g}]}
  e429-openai: {deployments: [{provider: oa, model: e429-o}]}
  e429-anthropic: {deployments: [{provider: an, model: e429-a}]}
  e429-gemini: {deployments: [{provider: ge, model: e429-g}]}
  slow-anthropic: {deployments: [{provider: an, model: slow-up}]}
  slow-gemini: {deployments: [{provider: ge, model: slow-up}]}
resilience:
  breaker: {consecutive_failures: 0, failure_rate: 0}
  retry: {max_attempts: 1}
keys:
  - {name: t, key: )" + std::string(kKey) +
                          R"(, plan: bare}
)",
                      {{"BW_TEST_UPSTREAM_KEY", kUpstreamKey}});
    return e;
  }();
  return *e;
}

int gw() {
  return env().gw.port;
}

const char* path_of(const std::string& inbound) {
  return inbound == "chat"        ? "/v1/chat/completions"
         : inbound == "responses" ? "/v1/responses"
                                  : "/v1/messages";
}

std::string body_for(const std::string& inbound, const std::string& model, bool stream, bool tools,
                     const std::string& text = "What is the weather in Paris?") {
  const std::string s = stream ? "true" : "false";
  const std::string msg = "\"" + text + "\"";
  if (inbound == "chat") {
    return "{\"model\":\"" + model + "\",\"stream\":" + s +
           (stream ? ",\"stream_options\":{\"include_usage\":true}" : "") +
           ",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\","
           "\"content\":" +
           msg + "}]" +
           (tools ? ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                    "\"parameters\":{\"type\":\"object\",\"properties\":{\"query\":{\"type\":"
                    "\"string\"}}}}}]"
                  : "") +
           "}";
  }
  if (inbound == "responses") {
    return "{\"model\":\"" + model + "\",\"stream\":" + s +
           ",\"instructions\":\"be brief\",\"input\":" + msg +
           (tools ? ",\"tools\":[{\"type\":\"function\",\"name\":\"get_weather\",\"parameters\":"
                    "{\"type\":\"object\",\"properties\":{\"query\":{\"type\":\"string\"}}}}]"
                  : "") +
           "}";
  }
  return "{\"model\":\"" + model + "\",\"max_tokens\":256,\"stream\":" + s +
         ",\"system\":\"be brief\",\"messages\":[{\"role\":\"user\",\"content\":" + msg + "}]" +
         (tools ? ",\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\","
                  "\"properties\":{\"query\":{\"type\":\"string\"}}}}]"
                : "") +
         "}";
}

HttpResponse post(const std::string& inbound, const std::string& body,
                  const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  return post_json(gw(), path_of(inbound), body, kKey, extra);
}

struct Json {
  dom::parser parser;
  dom::element root;
  bool ok = false;
  explicit Json(const std::string& s) { ok = parser.parse(s).get(root) == simdjson::SUCCESS; }
};

struct Event {
  std::string name;
  std::string data;
};
std::vector<Event> events_of(const std::string& body) {
  std::vector<Event> out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    std::string ev = body.substr(pos, end - pos);
    Event e;
    std::size_t lp = 0;
    while (lp < ev.size()) {
      auto le = ev.find('\n', lp);
      if (le == std::string::npos) le = ev.size();
      auto line = ev.substr(lp, le - lp);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.starts_with("event: ")) e.name = line.substr(7);
      if (line.starts_with("data: ")) e.data += line.substr(6);
      lp = le + 1;
    }
    if (!e.data.empty() || !e.name.empty()) out.push_back(std::move(e));
    pos = end + 2;
  }
  return out;
}

std::string str(simdjson::simdjson_result<dom::element> e) {
  std::string_view s;
  return e.get(s) == simdjson::SUCCESS ? std::string(s) : std::string();
}
std::int64_t num(simdjson::simdjson_result<dom::element> e) {
  std::int64_t v = -1;
  if (e.get(v) != simdjson::SUCCESS) v = -1;
  return v;
}

// What a buffered answer says, read in its own API's shape.
struct Answer {
  std::string text;
  std::string tool_name;
  std::string tool_args;
  std::int64_t input_tokens = -1;
  std::int64_t output_tokens = -1;
  std::int64_t cached = -1;
};

Answer read_buffered(const std::string& inbound, const std::string& body) {
  Answer a;
  Json j(body);
  EXPECT_TRUE(j.ok) << body;
  if (!j.ok) return a;
  auto r = j.root;
  if (inbound == "chat") {
    EXPECT_EQ(str(r["object"]), "chat.completion");
    auto m = r["choices"].at(0)["message"];
    a.text = str(m["content"]);
    if (m["tool_calls"].error() == simdjson::SUCCESS) {
      a.tool_name = str(m["tool_calls"].at(0)["function"]["name"]);
      a.tool_args = str(m["tool_calls"].at(0)["function"]["arguments"]);
    }
    a.input_tokens = num(r["usage"]["prompt_tokens"]);
    a.output_tokens = num(r["usage"]["completion_tokens"]);
    a.cached = num(r["usage"]["prompt_tokens_details"]["cached_tokens"]);
  } else if (inbound == "responses") {
    EXPECT_EQ(str(r["object"]), "response");
    dom::array out;
    EXPECT_EQ(r["output"].get(out), simdjson::SUCCESS) << body;
    for (auto item : out) {
      if (str(item["type"]) == "message") a.text += str(item["content"].at(0)["text"]);
      if (str(item["type"]) == "function_call") {
        a.tool_name = str(item["name"]);
        a.tool_args = str(item["arguments"]);
      }
    }
    a.input_tokens = num(r["usage"]["input_tokens"]);
    a.output_tokens = num(r["usage"]["output_tokens"]);
    a.cached = num(r["usage"]["input_tokens_details"]["cached_tokens"]);
  } else {
    EXPECT_EQ(str(r["type"]), "message");
    dom::array content;
    EXPECT_EQ(r["content"].get(content), simdjson::SUCCESS) << body;
    for (auto b : content) {
      if (str(b["type"]) == "text") a.text += str(b["text"]);
      if (str(b["type"]) == "tool_use") {
        a.tool_name = str(b["name"]);
        dom::element input;
        if (b["input"].get(input) == simdjson::SUCCESS) a.tool_args = simdjson::minify(input);
      }
    }
    a.input_tokens = num(r["usage"]["input_tokens"]) + num(r["usage"]["cache_read_input_tokens"]) +
                     num(r["usage"]["cache_creation_input_tokens"]);
    a.output_tokens = num(r["usage"]["output_tokens"]);
    a.cached = num(r["usage"]["cache_read_input_tokens"]);
  }
  return a;
}

// The same, assembled from a stream; also checks the stream's event grammar.
Answer read_stream(const std::string& inbound, const std::string& body) {
  Answer a;
  auto evs = events_of(body);
  EXPECT_FALSE(evs.empty());
  if (evs.empty()) return a;
  if (inbound == "chat") {
    EXPECT_EQ(evs.back().data, "[DONE]");
    for (const auto& e : evs) {
      if (e.data == "[DONE]") continue;
      Json j(e.data);
      EXPECT_TRUE(j.ok) << e.data;
      EXPECT_EQ(str(j.root["object"]), "chat.completion.chunk") << e.data;
      dom::array choices;
      if (j.root["choices"].get(choices) == simdjson::SUCCESS && choices.size() > 0) {
        auto d = choices.at(0)["delta"];
        a.text += str(d["content"]);
        dom::array calls;
        if (d["tool_calls"].get(calls) == simdjson::SUCCESS) {
          for (auto c : calls) {
            a.tool_name += str(c["function"]["name"]);
            a.tool_args += str(c["function"]["arguments"]);
          }
        }
      }
      dom::object usage;
      if (j.root["usage"].get(usage) == simdjson::SUCCESS) {
        a.input_tokens = num(j.root["usage"]["prompt_tokens"]);
        a.output_tokens = num(j.root["usage"]["completion_tokens"]);
        a.cached = num(j.root["usage"]["prompt_tokens_details"]["cached_tokens"]);
      }
    }
  } else if (inbound == "responses") {
    EXPECT_EQ(evs.front().name, "response.created");
    EXPECT_TRUE(evs.back().name == "response.completed" || evs.back().name == "response.incomplete")
        << evs.back().name;
    std::int64_t seq = 0;
    for (const auto& e : evs) {
      Json j(e.data);
      EXPECT_EQ(str(j.root["type"]), e.name);
      EXPECT_EQ(num(j.root["sequence_number"]), seq++);
      if (e.name == "response.output_text.delta") a.text += str(j.root["delta"]);
      if (e.name == "response.output_item.added" &&
          str(j.root["item"]["type"]) == "function_call") {
        a.tool_name = str(j.root["item"]["name"]);
      }
      if (e.name == "response.function_call_arguments.delta") a.tool_args += str(j.root["delta"]);
      if (e.name == "response.completed" || e.name == "response.incomplete") {
        auto u = j.root["response"]["usage"];
        a.input_tokens = num(u["input_tokens"]);
        a.output_tokens = num(u["output_tokens"]);
        a.cached = num(u["input_tokens_details"]["cached_tokens"]);
      }
    }
  } else {
    EXPECT_EQ(evs.front().name, "message_start");
    EXPECT_EQ(evs.back().name, "message_stop");
    std::int64_t input = 0;
    int open = -1;
    for (const auto& e : evs) {
      Json j(e.data);
      EXPECT_EQ(str(j.root["type"]), e.name);
      if (e.name == "message_start") {
        input = num(j.root["message"]["usage"]["input_tokens"]);
      } else if (e.name == "content_block_start") {
        EXPECT_EQ(open, -1) << "a block opened before the previous one stopped";
        open = static_cast<int>(num(j.root["index"]));
        if (str(j.root["content_block"]["type"]) == "tool_use") {
          a.tool_name = str(j.root["content_block"]["name"]);
        }
      } else if (e.name == "content_block_delta") {
        EXPECT_EQ(num(j.root["index"]), open);
        a.text += str(j.root["delta"]["text"]);
        a.tool_args += str(j.root["delta"]["partial_json"]);
      } else if (e.name == "content_block_stop") {
        EXPECT_EQ(num(j.root["index"]), open);
        open = -1;
      } else if (e.name == "message_delta") {
        auto u = j.root["usage"];
        a.output_tokens = num(u["output_tokens"]);
        if (u["input_tokens"].error() == simdjson::SUCCESS) input = num(u["input_tokens"]);
        a.cached = num(u["cache_read_input_tokens"]);
        a.input_tokens = input + std::max<std::int64_t>(0, a.cached) +
                         std::max<std::int64_t>(0, num(u["cache_creation_input_tokens"]));
      }
    }
  }
  return a;
}

const std::vector<std::string> kInbound = {"chat", "responses", "messages"};
const std::vector<std::string> kUpstream = {"via-openai", "via-anthropic", "via-gemini"};

TEST(Translation, TextBufferedAndStreamedInEveryPair) {
  for (const auto& in : kInbound) {
    for (const auto& model : kUpstream) {
      for (bool stream : {false, true}) {
        SCOPED_TRACE(in + " -> " + model + (stream ? " (stream)" : ""));
        auto r = post(in, body_for(in, model, stream, false));
        ASSERT_EQ(r.status, 200) << r.body;
        EXPECT_EQ(r.header("content-type").starts_with("text/event-stream"), stream);
        auto a = stream ? read_stream(in, r.body) : read_buffered(in, r.body);
        EXPECT_NE(a.text.find("the gateway keeps"), std::string::npos) << r.body;
        EXPECT_GT(a.input_tokens, 10) << r.body;
        EXPECT_EQ(a.output_tokens, 6) << r.body;
      }
    }
  }
}

TEST(Translation, ToolCallsInEveryPair) {
  for (const auto& in : kInbound) {
    for (const auto& model : kUpstream) {
      for (bool stream : {false, true}) {
        SCOPED_TRACE(in + " -> " + model + (stream ? " (stream)" : ""));
        auto r = post(in, body_for(in, model, stream, true));
        ASSERT_EQ(r.status, 200) << r.body;
        auto a = stream ? read_stream(in, r.body) : read_buffered(in, r.body);
        EXPECT_EQ(a.tool_name, "get_weather") << r.body;
        EXPECT_EQ(a.tool_args, "{\"query\":\"sim\"}") << r.body;
      }
    }
  }
}

TEST(Translation, ToolResultsRoundTripToEachProvider) {
  // The second turn of a tool call: the result goes back in each provider's own form.
  const std::string chat =
      R"({"model":"M","messages":[{"role":"user","content":"weather?"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"query\":\"Paris\"}"}}]},
      {"role":"tool","tool_call_id":"call_1","content":"sunny"}],
      "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]})";
  for (const auto& model : kUpstream) {
    std::string body = chat;
    body.replace(body.find("\"M\""), 3, "\"" + model + "\"");
    auto r = post("chat", body);
    ASSERT_EQ(r.status, 200) << model << r.body;
    auto a = read_buffered("chat", r.body);
    EXPECT_TRUE(a.tool_name.empty()) << "answered, no second call: " << r.body;
    auto last = request(env().sim.port, "GET", "/sim/last");
    if (model == "via-anthropic") {
      EXPECT_NE(last.body.find("tool_result"), std::string::npos) << last.body;
      EXPECT_NE(last.body.find("tool_use_id"), std::string::npos) << last.body;
    } else if (model == "via-gemini") {
      EXPECT_NE(last.body.find("functionResponse"), std::string::npos) << last.body;
    }
  }
}

TEST(Translation, UpstreamRequestsCarryEachProvidersAuthAndShape) {
  auto r = post("chat", body_for("chat", "via-anthropic", false, false));
  ASSERT_EQ(r.status, 200);
  Json last(request(env().sim.port, "GET", "/sim/last").body);
  ASSERT_TRUE(last.ok);
  EXPECT_EQ(str(last.root["path"]), "/v1/messages");
  EXPECT_EQ(str(last.root["headers"]["x-api-key"]), kUpstreamKey);
  EXPECT_FALSE(str(last.root["headers"]["anthropic-version"]).empty());
  EXPECT_TRUE(str(last.root["headers"]["authorization"]).empty());
  Json sent(str(last.root["body"]));
  EXPECT_GT(num(sent.root["max_tokens"]), 0);  // always sent
  EXPECT_EQ(str(sent.root["system"]), "be brief");

  r = post("chat", body_for("chat", "via-gemini", true, false));
  ASSERT_EQ(r.status, 200);
  Json g(request(env().sim.port, "GET", "/sim/last").body);
  EXPECT_EQ(str(g.root["path"]), "/v1beta/models/up-g:streamGenerateContent?alt=sse");
  EXPECT_EQ(str(g.root["headers"]["x-goog-api-key"]), kUpstreamKey);
  Json gb(str(g.root["body"]));
  EXPECT_EQ(str(gb.root["systemInstruction"]["parts"].at(0)["text"]), "be brief");
  EXPECT_EQ(str(gb.root["contents"].at(0)["role"]), "user");

  // Azure: the deployment in the path, api-version in the query, the key in api-key.
  for (const auto& in : kInbound) {
    r = post(in, body_for(in, "via-azure", false, false));
    ASSERT_EQ(r.status, 200) << in << r.body;
    EXPECT_NE(read_buffered(in, r.body).text.find("the gateway keeps"), std::string::npos);
    Json az(request(env().sim.port, "GET", "/sim/last").body);
    EXPECT_EQ(str(az.root["path"]),
              "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21");
    EXPECT_EQ(str(az.root["headers"]["api-key"]), kUpstreamKey);
  }

  // Same format: the Messages body reaches Anthropic unchanged (cache_control included).
  const std::string cached =
      R"({"model":"via-anthropic","max_tokens":64,"system":[{"type":"text","text":"a long document","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"}]})";
  r = post("messages", cached);
  ASSERT_EQ(r.status, 200) << r.body;
  Json m(request(env().sim.port, "GET", "/sim/last").body);
  EXPECT_NE(str(m.root["body"]).find("\"cache_control\":{\"type\":\"ephemeral\"}"),
            std::string::npos);
  EXPECT_TRUE(r.header("x-bellwether-dropped-params").empty());
}

TEST(Translation, CacheTokensReachEveryClientApi) {
  const std::string cached_messages =
      R"({"model":"via-anthropic","max_tokens":64,"system":[{"type":"text","text":"a long document about the gateway","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"summarise it"}]})";
  for (bool stream : {false, true}) {
    std::string body = cached_messages;
    if (stream) body.insert(1, "\"stream\":true,");
    auto r = post("messages", body);
    ASSERT_EQ(r.status, 200) << r.body;
    auto a = stream ? read_stream("messages", r.body) : read_buffered("messages", r.body);
    EXPECT_GT(a.cached, 0) << r.body;
    if (!stream) {
      Json j(r.body);
      EXPECT_GT(num(j.root["usage"]["cache_creation_input_tokens"]), 0) << r.body;
    }
  }
  // A long prompt (>= 1,024 tokens) is cached by Gemini; chat and Responses clients see it.
  const std::string long_text(5000, 'x');
  for (const auto& in : {std::string("chat"), std::string("responses")}) {
    for (bool stream : {false, true}) {
      auto r = post(in, body_for(in, "via-gemini", stream, false, long_text));
      ASSERT_EQ(r.status, 200) << r.body;
      auto a = stream ? read_stream(in, r.body) : read_buffered(in, r.body);
      EXPECT_GT(a.cached, 0) << in << " " << r.body;
      EXPECT_GT(a.input_tokens, a.cached);
    }
  }
}

TEST(Translation, UpstreamErrorsInEachClientsShape) {
  const int sim = env().sim.port;
  // Each status has its own deployments: a 429 makes the router cool its deployment down, and
  // the next request then gets the gateway's own 429 (the same shape, also asserted).
  for (const auto& [status, anthropic_type] : std::vector<std::pair<int, std::string>>{
           {503, "overloaded_error"}, {429, "rate_limit_error"}}) {
    request(
        sim, "POST", "/sim/control",
        "{\"error_status\":" + std::to_string(status) + ",\"error_rate\":1.0,\"retry_after_s\":7}");
    for (const std::string upstream : {"openai", "anthropic", "gemini"}) {
      const std::string model = "e" + std::to_string(status) + "-" + upstream;
      SCOPED_TRACE(model + " " + std::to_string(status));
      auto r = post("messages", body_for("messages", model, false, false));
      // A Messages client of an Anthropic provider gets Anthropic's own 529 (passthrough).
      const bool overloaded_529 = status == 503 && upstream == "anthropic";
      EXPECT_EQ(r.status, overloaded_529 ? 529 : status) << r.body;
      Json j(r.body);
      EXPECT_EQ(str(j.root["type"]), "error") << r.body;
      EXPECT_EQ(str(j.root["error"]["type"]), anthropic_type) << r.body;
      if (status == 429) {
        EXPECT_FALSE(r.header("retry-after").empty());
      }
      auto c = post("chat", body_for("chat", model, false, false));
      EXPECT_EQ(c.status, status);
      Json cj(c.body);
      EXPECT_FALSE(str(cj.root["error"]["message"]).empty()) << c.body;
      auto s = post("responses", body_for("responses", model, true, false));
      EXPECT_EQ(s.status, status);
      Json sj(s.body);
      EXPECT_FALSE(str(sj.root["error"]["message"]).empty()) << s.body;
    }
  }
  request(sim, "POST", "/sim/control", "{\"error_status\":0,\"error_rate\":0}");
}

TEST(Translation, GatewayErrorsInEachClientsShape) {
  auto r = post_json(gw(), "/v1/messages", body_for("messages", "via-anthropic", false, false), "",
                     {{"x-api-key", "sk-wrong"}});
  EXPECT_EQ(r.status, 401);
  Json j(r.body);
  EXPECT_EQ(str(j.root["type"]), "error");
  EXPECT_EQ(str(j.root["error"]["type"]), "authentication_error");
  // The key in x-api-key, as the Anthropic SDK and Claude Code send it.
  r = post_json(gw(), "/v1/messages", body_for("messages", "via-anthropic", false, false), "",
                {{"x-api-key", kKey}});
  EXPECT_EQ(r.status, 200) << r.body;
  r = post("messages", body_for("messages", "no-such-model", false, false));
  EXPECT_EQ(r.status, 404);
  Json nf(r.body);
  EXPECT_EQ(str(nf.root["error"]["type"]), "not_found_error");
}

TEST(Translation, BadInputGetsEachFormatsErrorShape) {
  struct Case {
    std::string inbound, body, what;
  };
  const std::vector<Case> cases = {
      {"messages",
       R"({"model":"via-anthropic","max_tokens":5,"messages":[{"role":"user","content":[{"type":"bogus"}]}]})",
       "malformed block"},
      {"messages",
       R"({"model":"via-anthropic","max_tokens":5,"messages":[{"role":"wizard","content":"x"}]})",
       "unknown role"},
      {"messages",
       R"({"model":"via-anthropic","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_x","content":"r"}]}]})",
       "tool result without call"},
      {"messages",
       R"({"model":"via-anthropic","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"http://169.254.169.254/latest"}}]}]})",
       "private image url"},
      {"responses",
       R"({"model":"via-gemini","input":[{"type":"message","role":"user","content":[{"type":"input_bogus"}]}]})",
       "malformed block"},
      {"responses", R"({"model":"via-gemini","input":[{"role":"wizard","content":"x"}]})",
       "unknown role"},
      {"responses",
       R"({"model":"via-gemini","input":[{"type":"function_call_output","call_id":"call_x","output":"r"}]})",
       "tool result without call"},
      {"responses",
       R"({"model":"via-gemini","input":[{"role":"user","content":[{"type":"input_image","image_url":"http://10.0.0.5/cat.png"}]}]})",
       "private image url"},
      {"chat",
       R"({"model":"via-anthropic","messages":[{"role":"user","content":[{"type":"bogus"}]}]})",
       "malformed block"},
      {"chat", R"({"model":"via-anthropic","messages":[{"role":"wizard","content":"x"}]})",
       "unknown role"},
      {"chat",
       R"({"model":"via-anthropic","messages":[{"role":"tool","tool_call_id":"call_x","content":"r"}]})",
       "tool result without call"},
      {"chat",
       R"({"model":"via-openai","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://127.0.0.1:9/x.png"}}]}]})",
       "private image url"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.inbound + ": " + c.what);
    auto r = post(c.inbound, c.body);
    EXPECT_EQ(r.status, 400) << r.body;
    Json j(r.body);
    ASSERT_TRUE(j.ok) << r.body;
    if (c.inbound == "messages") {
      EXPECT_EQ(str(j.root["type"]), "error") << r.body;
      EXPECT_EQ(str(j.root["error"]["type"]), "invalid_request_error") << r.body;
    } else {
      EXPECT_EQ(str(j.root["error"]["type"]), "invalid_request_error") << r.body;
    }
  }
}

TEST(Translation, DroppedParamsAreNamedOrRefusedWhenStrict) {
  const std::string body =
      R"({"model":"via-anthropic","seed":7,"logit_bias":{"1":1},"messages":[{"role":"user","content":"hi"}]})";
  auto r = post("chat", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const auto dropped = r.header("x-bellwether-dropped-params");
  EXPECT_NE(dropped.find("seed"), std::string::npos) << dropped;
  EXPECT_NE(dropped.find("logit_bias"), std::string::npos) << dropped;
  std::string strict = body;
  strict.insert(1, "\"strict_params\":true,");
  r = post("chat", strict);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("seed"), std::string::npos);
  // The same fields to an OpenAI upstream pass through untouched: nothing dropped.
  r = post("chat",
           R"({"model":"via-openai","seed":7,"messages":[{"role":"user","content":"hi"}]})");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.header("x-bellwether-dropped-params").empty());
}

// Chat's n: the simulator's Gemini generates candidateCount candidates, each a choice of the
// answer, buffered or streamed (each chunk carries every candidate with its index); Anthropic
// cannot, and refuses n > 1 with 400 (param n).
TEST(Translation, ChatNIsGeminiCandidatesAndRefusedWhereItCannotBe) {
  const std::string body =
      R"({"model":"via-gemini","n":3,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]})";
  auto r = post("chat", body);
  ASSERT_EQ(r.status, 200) << r.body;
  Json j(r.body);
  dom::array choices;
  ASSERT_EQ(j.root["choices"].get(choices), simdjson::SUCCESS) << r.body;
  ASSERT_EQ(choices.size(), 3u) << r.body;
  std::int64_t i = 0;
  std::string text;
  for (auto c : choices) {
    EXPECT_EQ(num(c["index"]), i++);
    text = str(c["message"]["content"]);
    EXPECT_FALSE(text.empty()) << r.body;
  }
  EXPECT_EQ(num(j.root["usage"]["completion_tokens"]), 3 * 4) << r.body;
  EXPECT_TRUE(r.header("x-bellwether-dropped-params").empty());

  // Streamed: chat.completion.chunk events of the three choices, each choice's deltas under its
  // index, each choice opened by its role and closed by its own finish_reason, and one usage
  // chunk (of every candidate) before [DONE].
  std::string streamed = body;
  streamed.insert(1, R"("stream":true,"stream_options":{"include_usage":true},)");
  auto s = post("chat", streamed);
  ASSERT_EQ(s.status, 200) << s.body;
  ASSERT_TRUE(s.header("content-type").starts_with("text/event-stream"));
  std::vector<std::string> texts(3);
  std::vector<int> roles(3, 0), finishes(3, 0);
  int usage_chunks = 0, done = 0;
  for (const auto& e : events_of(s.body)) {
    if (e.data == "[DONE]") {
      ++done;
      continue;
    }
    Json c(e.data);
    ASSERT_TRUE(c.ok) << e.data;
    EXPECT_EQ(str(c.root["object"]), "chat.completion.chunk") << e.data;
    EXPECT_EQ(done, 0) << "an event after [DONE]";
    dom::array cs;
    ASSERT_EQ(c.root["choices"].get(cs), simdjson::SUCCESS) << e.data;
    if (cs.size() == 0) {
      ++usage_chunks;
      EXPECT_EQ(num(c.root["usage"]["completion_tokens"]), 3 * 4) << e.data;
      continue;
    }
    for (auto ch : cs) {
      const std::int64_t k = num(ch["index"]);
      ASSERT_TRUE(k >= 0 && k < 3) << e.data;
      const auto at = static_cast<std::size_t>(k);
      EXPECT_EQ(finishes[at], 0) << "a delta after the choice's finish: " << e.data;
      if (str(ch["delta"]["role"]) == "assistant") ++roles[at];
      texts[at] += str(ch["delta"]["content"]);
      if (!str(ch["finish_reason"]).empty()) ++finishes[at];
    }
  }
  EXPECT_EQ(done, 1) << s.body;
  EXPECT_EQ(usage_chunks, 1) << s.body;
  for (std::size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(roles[k], 1) << "choice " << k << ": " << s.body;
    EXPECT_EQ(finishes[k], 1) << "choice " << k << ": " << s.body;
    EXPECT_EQ(texts[k], text) << "choice " << k;
  }

  for (bool stream : {false, true}) {
    auto refused =
        post("chat", body_for("chat", "via-anthropic", stream, false).insert(1, "\"n\":2,"));
    EXPECT_EQ(refused.status, 400) << stream << " " << refused.body;
    Json e(refused.body);
    EXPECT_EQ(str(e.root["error"]["param"]), "n") << refused.body;
    EXPECT_EQ(str(e.root["error"]["type"]), "invalid_request_error") << refused.body;
  }
}

TEST(Translation, CountTokens) {
  auto r = post_json(
      gw(), "/v1/messages/count_tokens",
      R"({"model":"via-anthropic","messages":[{"role":"user","content":"Hello, world, how are you today?"}]})",
      kKey);
  ASSERT_EQ(r.status, 200) << r.body;
  Json j(r.body);
  EXPECT_GT(num(j.root["input_tokens"]), 5);
}

// Anthropic's own count_tokens refuses a field it does not know (400 invalid_request_error,
// "<field>: Extra inputs are not permitted"). The gateway cannot know every field Anthropic
// takes (a newer one is valid there), so it treats an unknown field on count_tokens as
// /v1/messages treats one that a translated route cannot carry: the answer names it in
// x-bellwether-dropped-params, and with strict_params (body or header) the request is refused
// with 400 invalid_request_error in Anthropic's error shape, naming it.
TEST(Translation, CountTokensTreatsUnknownFieldsAsMessagesDoes) {
  const std::string plain =
      R"({"model":"via-gemini","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]})";
  std::string unknown = plain;
  unknown.insert(1, R"("frobnicate":{"level":3},)");
  std::string strict = unknown;
  strict.insert(1, R"("strict_params":true,)");
  const char* kCount = "/v1/messages/count_tokens";

  auto count = post_json(gw(), kCount, unknown, kKey);
  ASSERT_EQ(count.status, 200) << count.body;
  EXPECT_EQ(count.header("x-bellwether-dropped-params"), "frobnicate");
  auto message = post("messages", unknown);
  ASSERT_EQ(message.status, 200) << message.body;
  EXPECT_EQ(message.header("x-bellwether-dropped-params"), "frobnicate");
  // The unknown field is not counted.
  auto known = post_json(gw(), kCount, plain, kKey);
  ASSERT_EQ(known.status, 200) << known.body;
  EXPECT_EQ(known.body, count.body);
  EXPECT_TRUE(known.header("x-bellwether-dropped-params").empty());

  const std::vector<std::pair<std::string, std::string>> strict_header{
      {"x-bellwether-strict-params", "true"}};
  for (const auto& [what, r] : std::vector<std::pair<std::string, HttpResponse>>{
           {"count_tokens, body", post_json(gw(), kCount, strict, kKey)},
           {"count_tokens, header", post_json(gw(), kCount, unknown, kKey, strict_header)},
           {"messages, body", post("messages", strict)}}) {
    EXPECT_EQ(r.status, 400) << what << ": " << r.body;
    Json e(r.body);
    ASSERT_TRUE(e.ok) << what << ": " << r.body;
    EXPECT_EQ(str(e.root["type"]), "error") << what << ": " << r.body;
    EXPECT_EQ(str(e.root["error"]["type"]), "invalid_request_error") << what << ": " << r.body;
    EXPECT_NE(str(e.root["error"]["message"]).find("frobnicate"), std::string::npos)
        << what << ": " << r.body;
  }
  // strict_params alone is no reason to refuse.
  std::string strict_known = plain;
  strict_known.insert(1, R"("strict_params":true,)");
  auto ok = post_json(gw(), kCount, strict_known, kKey, strict_header);
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(ok.body, known.body);
}

TEST(Translation, PreviousResponseIdContinuesAStoredConversation) {
  auto first =
      post("responses",
           R"({"model":"via-anthropic","store":true,"input":"My name is Ada and I like owls."})");
  ASSERT_EQ(first.status, 200) << first.body;
  Json j(first.body);
  const std::string id = str(j.root["id"]);
  ASSERT_TRUE(id.starts_with("resp_")) << first.body;
  auto second = post("responses", "{\"model\":\"via-anthropic\",\"previous_response_id\":\"" + id +
                                      "\",\"input\":\"What do I like?\"}");
  ASSERT_EQ(second.status, 200) << second.body;
  Json last(request(env().sim.port, "GET", "/sim/last").body);
  const std::string sent = str(last.root["body"]);
  EXPECT_NE(sent.find("I like owls"), std::string::npos) << sent;
  EXPECT_NE(sent.find("the gateway keeps"), std::string::npos) << sent;  // the first answer
  EXPECT_NE(sent.find("What do I like?"), std::string::npos) << sent;
  auto unknown = post(
      "responses", R"({"model":"via-anthropic","previous_response_id":"resp_nope","input":"x"})");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
}

// The first translated event leaves the gateway before the upstream sends its second one: the
// simulator's events are 400 ms apart, so a buffering translator would show its first byte
// 400 ms late.
TEST(Translation, StreamsAreTranslatedEventByEvent) {
  for (const auto& [in, model] :
       std::vector<std::pair<std::string, std::string>>{{"chat", "slow-anthropic"},
                                                        {"messages", "slow-gemini"},
                                                        {"responses", "slow-anthropic"}}) {
    SCOPED_TRACE(in + " -> " + model);
    StreamReader reader(gw(), raw_post(path_of(in), body_for(in, model, true, false), kKey));
    TimedChunk chunk;
    double first_text = -1, last = 0;
    std::string all;
    while (reader.read_some(chunk, std::chrono::seconds(5))) {
      all += chunk.data;
      last = chunk.at_ms;
      if (first_text < 0 &&
          (chunk.data.find("\"the\"") != std::string::npos ||
           chunk.data.find("the") != std::string::npos) &&
          (chunk.data.find("delta") != std::string::npos)) {
        first_text = chunk.at_ms;
      }
      if (all.find("[DONE]") != std::string::npos ||
          all.find("message_stop") != std::string::npos ||
          all.find("response.completed") != std::string::npos) {
        break;
      }
    }
    ASSERT_GE(first_text, 0) << all;
    EXPECT_LT(first_text, 300) << all;  // before the upstream's second word (30 + 400 ms)
    EXPECT_GT(last, 700) << all;        // and the stream itself took its time
  }
}

}  // namespace
}  // namespace bw::test
