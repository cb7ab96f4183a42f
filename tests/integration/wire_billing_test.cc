// Budget bypasses where the gateway translates: clients of every API (chat completions,
// Messages, Responses), buffered and streamed, against Anthropic and Gemini upstreams served
// natively by billing_upstream.py, which bills like the real providers (every input token of the
// native body, every generated token of every candidate up to the cap it was sent, cache writes
// and reads, thoughts, tool-use prompts) and can answer without usage or with unreadable usage.
// Each request must be charged at least what the upstream billed, and a small cap must hold.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "support/eventually.h"

namespace bw::test {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kAdmin = "admin-key-wire-billing-0123456789";
constexpr const char* kBudgetKey = "sk-wire-budget-0001";  // cap kCapUsd
constexpr const char* kWideKey = "sk-wire-wide-0001";      // a budget that many requests fit
constexpr double kCapUsd = 0.05;

// Prices of every model below, USD per 1M tokens (= micro-USD per token).
constexpr double kInput = 1, kOutput = 10, kCacheRead = 0.1, kCacheWrite = 1.25;

using bw::testing::eventually;

// The models: "a..." are served by an Anthropic provider, "g..." by a Gemini one; the suffix
// selects the upstream's behaviour (billing_upstream.py).
const std::vector<std::string> kAnthropicModels = {"a",       "a-nousage",   "a-badusage",
                                                   "a-cache", "a-halfusage", "a-cutoff"};
const std::vector<std::string> kGeminiModels = {"g",           "g-nousage",   "g-badusage",
                                                "g-cache",     "g-think",     "g-tooluse",
                                                "g-lateusage", "g-halfusage", "g-cutoff"};
// "o..." are served by an OpenAI-compatible provider: "o-imgmini" bills images at gpt-4o-mini's
// rate (its price says so: image_tokens), "o-down" answers 503 and falls back to it.
const std::vector<std::string> kOpenAIModels = {"o-imgmini", "o-zerousage", "o-zerousage-toolonly",
                                                "o-empty", "o-down"};
constexpr std::int64_t kMiniImageTokens = 25'501;  // billing_upstream.py's "imgmini" rate

std::string gateway_yaml(int upstream_port, const std::string& ledger_path) {
  const std::string base = "http://127.0.0.1:" + std::to_string(upstream_port);
  std::string y = std::string("workers: 2\nadmin:\n  key: ") + kAdmin +
                  "\nproviders:\n  oa: {type: openai, base_url: \"" + base +
                  "/v1\"}\n  an: {type: anthropic, base_url: \"" + base +
                  "/v1\"}\n  ge: {type: gemini, base_url: \"" + base +
                  "/v1beta\"}\nplans:\n  bulk:\n    limits: [{name: rps, rate: 1000000, period: "
                  "second, burst: 1000000}]\nmodel_groups:\n";
  std::string prices = "pricing:\n";
  auto add = [&](const std::string& model, const char* provider) {
    y +=
        "  " + model + ":\n    deployments: [{provider: " + provider + ", model: " + model + "}]\n";
    if (model == "o-down") y += "    fallbacks: [o-imgmini]\n";
    prices += "  " + model + ": {input: 1, output: 10, cached_input: 0.1, cache_write: 1.25, " +
              "max_output_tokens: 4096" +
              (model == "o-imgmini" ? ", image_tokens: " + std::to_string(kMiniImageTokens) : "") +
              "}\n";
  };
  for (const auto& m : kAnthropicModels) add(m, "an");
  for (const auto& m : kGeminiModels) add(m, "ge");
  for (const auto& m : kOpenAIModels) add(m, "oa");
  y += "resilience:\n  retry: {max_attempts: 2, base: 10ms, cap: 50ms, deadline: 20s}\n";
  return y + prices + "ledger: {path: " + ledger_path +
         "}\nkeys:\n  - {name: capped, key: " + kBudgetKey +
         ", plan: bulk, budget: {cap_usd: " + std::to_string(kCapUsd) +
         ", period: total}}\n  - {name: wide, key: " + kWideKey +
         ", plan: bulk, budget: {cap_usd: 1000, period: total}}\n";
}

struct Billing {
  Process proc;
  int port = 0;
  // What the upstream billed so far, in micro-dollars at the gateway's prices.
  double billed_exact() const {
    auto r = request(port, "GET", "/billed");
    const double p = num(r.body, "prompt_tokens"), c = num(r.body, "completion_tokens");
    const double cw = num(r.body, "cache_write_tokens"), cr = num(r.body, "cache_read_tokens");
    return (p - cw - cr) * kInput + cw * kCacheWrite + cr * kCacheRead + c * kOutput;
  }
  std::int64_t billed_micros() const { return std::llround(std::ceil(billed_exact() - 1e-6)); }
  std::int64_t requests() const {
    return std::llround(num(request(port, "GET", "/billed").body, "requests"));
  }
};

struct Env {
  Billing up;
  Gw gw;
  std::string dir;
  std::string budget(const char* key) const {
    auto r = request(gw.port, "GET", "/admin/budgets", "",
                     {{"Authorization", std::string("Bearer ") + kAdmin}});
    return object_with(r.body, std::string("\"id\":\"key:") + key + "/total\"");
  }
  std::int64_t spent_micros(const char* key = "capped") const {
    return std::llround(num(budget(key), "spent_usd") * 1e6);
  }
  std::int64_t reserved_micros(const char* key = "capped") const {
    return std::llround(num(budget(key), "reserved_usd") * 1e6);
  }
  bool settled() const {
    return eventually(
        [&] { return reserved_micros("capped") == 0 && reserved_micros("wide") == 0; });
  }
};

Env start_env() {
  Env e;
  e.dir = temp_dir();
  e.up.port = free_port();
  e.up.proc = Process(
      {"/usr/bin/python3", std::string(BW_SOURCE_DIR) + "/tests/integration/billing_upstream.py",
       std::to_string(e.up.port)},
      {}, "billing-");
  if (!wait_for_port(e.up.port)) throw std::runtime_error("billing upstream did not start");
  e.gw = start_gateway(gateway_yaml(e.up.port, e.dir + "/ledger.db"));
  return e;
}

enum class Api { kChat, kMessages, kResponses };
const Api kApis[] = {Api::kChat, Api::kMessages, Api::kResponses};

const char* path_of(Api a) {
  return a == Api::kChat       ? "/v1/chat/completions"
         : a == Api::kMessages ? "/v1/messages"
                               : "/v1/responses";
}
const char* name_of(Api a) {
  return a == Api::kChat ? "chat" : a == Api::kMessages ? "messages" : "responses";
}

struct Shape {
  std::string system = "You are terse. Answer in one line.";
  std::string user = "What is the weather in Paris today?";
  std::string tool_description = "Looks up the weather of a city.";
  std::int64_t max_tokens = 300;  // 0: none (not for Messages, which requires it)
  int n = 0;                      // chat only; 0: not sent
  int images = 0;                 // inline images in the user turn
};

// A request of client API `api` with a system prompt, a user turn and a tool.
std::string body_of(Api api, const std::string& model, bool stream, const Shape& s) {
  const std::string schema =
      R"({"type":"object","properties":{"city":{"type":"string","description":"the city"}}})";
  std::string b = "{\"model\":\"" + model + "\",\"stream\":" + (stream ? "true" : "false");
  // A user turn of text and images, in each API's content blocks.
  const std::string png =
      "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJg"
      "gg==";
  std::string chat_user = "\"" + s.user + "\"", messages_user = chat_user,
              responses_user = chat_user;
  if (s.images > 0) {
    chat_user = "[{\"type\":\"text\",\"text\":\"" + s.user + "\"}";
    messages_user = chat_user;
    responses_user = "[{\"type\":\"input_text\",\"text\":\"" + s.user + "\"}";
    for (int i = 0; i < s.images; ++i) {
      chat_user +=
          ",{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64," + png + "\"}}";
      messages_user +=
          ",{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":"
          "\"image/png\",\"data\":\"" +
          png + "\"}}";
      responses_user +=
          ",{\"type\":\"input_image\",\"image_url\":\"data:image/png;base64," + png + "\"}";
    }
    chat_user += "]";
    messages_user += "]";
    responses_user += "]";
  }
  switch (api) {
    case Api::kChat:
      if (s.max_tokens > 0) b += ",\"max_tokens\":" + std::to_string(s.max_tokens);
      if (s.n > 0) b += ",\"n\":" + std::to_string(s.n);
      if (stream) b += R"(,"stream_options":{"include_usage":true})";
      b += R"(,"messages":[{"role":"system","content":")" + s.system +
           R"("},{"role":"user","content":)" + chat_user + "}]";
      b += R"(,"tools":[{"type":"function","function":{"name":"weather","description":")" +
           s.tool_description + R"(","parameters":)" + schema + "}}]";
      break;
    case Api::kMessages:
      b += ",\"max_tokens\":" + std::to_string(s.max_tokens);
      b += R"(,"system":[{"type":"text","text":")" + s.system +
           R"(","cache_control":{"type":"ephemeral"}}])";
      b += R"(,"messages":[{"role":"user","content":)" + messages_user + "}]";
      b += R"(,"tools":[{"name":"weather","description":")" + s.tool_description +
           R"(","input_schema":)" + schema + "}]";
      break;
    case Api::kResponses:
      if (s.max_tokens > 0) b += ",\"max_output_tokens\":" + std::to_string(s.max_tokens);
      b += R"(,"instructions":")" + s.system + R"(","input":[{"role":"user","content":)" +
           responses_user + "}]";
      b += R"(,"tools":[{"type":"function","name":"weather","description":")" + s.tool_description +
           R"(","parameters":)" + schema + "}]";
      break;
  }
  return b + "}";
}

// One request; the budget charged for it must be at least what the upstream billed for it.
void charged_at_least_billed(Env& e, Api api, const std::string& model, bool stream,
                             const Shape& shape = {}) {
  const std::string what = std::string(name_of(api)) + (stream ? " streamed" : " buffered") +
                           " -> " + model + " (max_tokens " + std::to_string(shape.max_tokens) +
                           ")";
  const auto spent_before = e.spent_micros("wide");
  const double billed_before = e.up.billed_exact();
  auto r = post_json(e.gw.port, path_of(api), body_of(api, model, stream, shape), kWideKey);
  ASSERT_EQ(r.status, 200) << what << ": " << r.body;
  if (stream && model.ends_with("-cutoff")) {
    // The client is told; what was generated up to the break is still charged.
    EXPECT_NE(r.body.find("ended before it was complete"), std::string::npos)
        << what << ": " << r.body;
  } else if (stream) {
    EXPECT_EQ(r.body.find("upstream_truncated"), std::string::npos) << what << ": " << r.body;
    EXPECT_EQ(r.body.find("\"error\":{"), std::string::npos) << what << ": " << r.body;
  }
  ASSERT_TRUE(e.settled()) << what;
  const auto spent = e.spent_micros("wide") - spent_before;
  const double billed = e.up.billed_exact() - billed_before;
  EXPECT_GT(billed, 0) << what;
  EXPECT_GE(static_cast<double>(spent), billed - 1e-6) << what << ": charged too little";
}

// ---- every pair, every usage shape -------------------------------------------------------------

TEST(BudgetBypassWire, EveryTranslatedAnswerIsChargedAtLeastWhatTheUpstreamBilled) {
  auto e = start_env();
  std::vector<std::string> models = kAnthropicModels;
  models.insert(models.end(), kGeminiModels.begin(), kGeminiModels.end());
  for (const auto& model : models) {
    for (Api api : kApis) {
      for (bool stream : {false, true}) {
        if (!model.ends_with("-cache")) {
          charged_at_least_billed(e, api, model, stream);
          continue;
        }
        // A long system prompt, written to the provider's cache the first time, read the second
        // time (a fresh one for each pair, so that each writes once).
        Shape cached;
        cached.system = std::string(name_of(api)) + (stream ? " streamed " : " buffered ") +
                        std::string(20'000, 'c');
        charged_at_least_billed(e, api, model, stream, cached);
        charged_at_least_billed(e, api, model, stream, cached);
      }
    }
  }
  // Images: each billed as many tokens as a large image costs, whatever the client API.
  Shape pictures;
  pictures.images = 8;
  for (const char* model : {"a", "g", "a-nousage", "g-nousage"}) {
    for (Api api : kApis) {
      for (bool stream : {false, true}) charged_at_least_billed(e, api, model, stream, pictures);
    }
  }
  // Without a client cap (chat and Responses): the gateway's cap is forced on the upstream.
  Shape uncapped;
  uncapped.max_tokens = 0;
  for (const char* model : {"a", "g", "g-nousage", "a-nousage"}) {
    for (Api api : {Api::kChat, Api::kResponses}) {
      for (bool stream : {false, true}) charged_at_least_billed(e, api, model, stream, uncapped);
    }
  }
  auto metrics = request(e.gw.port, "GET", "/metrics").body;
  // Answers without usage and with unreadable usage were counted as such.
  for (const char* m :
       {"a-nousage", "a-badusage", "a-halfusage", "g-nousage", "g-badusage", "g-halfusage"}) {
    EXPECT_NE(metrics.find(std::string("bellwether_usage_missing_total{model=\"") + m + "\"}"),
              std::string::npos)
        << m;
  }
  EXPECT_EQ(metrics.find("bellwether_usage_missing_total{model=\"g-lateusage\"}"),
            std::string::npos)
      << "a Gemini stream's final usage after its finishReason chunk was not read";
}

// Whether the comma-separated `list` holds `field`.
bool lists(const std::string& list, const std::string& field) {
  std::size_t from = 0;
  for (;;) {
    const auto comma = list.find(',', from);
    auto item = list.substr(from, comma == std::string::npos ? std::string::npos : comma - from);
    while (!item.empty() && item.front() == ' ') item.erase(0, 1);
    if (item == field) return true;
    if (comma == std::string::npos) return false;
    from = comma + 1;
  }
}

// Chat completions' n: Gemini generates the choices (candidateCount), buffered or streamed, and
// returns them all; every candidate is charged (the upstream bills each). Anthropic has no
// equivalent: it refuses n > 1 with a 400 that names n, before anything is billed.
TEST(BudgetBypassWire, ChatNChoicesAreGeneratedByGeminiAndRefusedWhereTheyCannotBe) {
  auto e = start_env();
  Shape three;
  three.n = 3;
  three.max_tokens = 100;
  for (bool stream : {false, true}) {
    const auto billed_before = e.up.billed_micros();
    auto r = post_json(e.gw.port, path_of(Api::kChat), body_of(Api::kChat, "a", stream, three),
                       kWideKey);
    EXPECT_EQ(r.status, 400) << stream << ": " << r.body;
    EXPECT_NE(r.body.find(R"("type":"invalid_request_error")"), std::string::npos) << r.body;
    EXPECT_NE(r.body.find(R"("param":"n")"), std::string::npos) << r.body;
    ASSERT_TRUE(e.settled());
    EXPECT_EQ(e.up.billed_micros(), billed_before) << "a refused request reached the upstream";
    EXPECT_EQ(e.reserved_micros("wide"), 0);
  }
  // n: 1 is what a single answer is: served as before.
  Shape one = three;
  one.n = 1;
  for (const char* model : {"a", "g"}) {
    for (bool stream : {false, true}) charged_at_least_billed(e, Api::kChat, model, stream, one);
  }
  // Gemini: three candidates, three choices, all charged (strict params too: n is not a dropped
  // parameter any more). The stream sends one candidate after another, each with its index.
  for (bool stream : {false, true}) {
    for (bool strict : {false, true}) {
      SCOPED_TRACE(std::string(stream ? "streamed" : "buffered") + (strict ? ", strict" : ""));
      const auto spent_before = e.spent_micros("wide");
      const double billed_before = e.up.billed_exact();
      auto r = post_json(
          e.gw.port, path_of(Api::kChat), body_of(Api::kChat, "g", stream, three), kWideKey,
          strict ? std::vector<std::pair<std::string, std::string>>{{"x-bellwether-strict-params",
                                                                     "true"}}
                 : std::vector<std::pair<std::string, std::string>>{});
      ASSERT_EQ(r.status, 200) << r.body;
      EXPECT_FALSE(lists(r.header("x-bellwether-dropped-params"), "n"))
          << r.header("x-bellwether-dropped-params");
      for (int i = 0; i < 3; ++i) {
        EXPECT_NE(r.body.find("\"index\":" + std::to_string(i)), std::string::npos) << r.body;
      }
      EXPECT_EQ(r.body.find("\"index\":3"), std::string::npos) << r.body;
      ASSERT_TRUE(e.settled());
      const double billed = e.up.billed_exact() - billed_before;
      EXPECT_GE(billed, 3 * 100 * kOutput) << "the upstream was not asked for three candidates";
      EXPECT_GE(static_cast<double>(e.spent_micros("wide") - spent_before), billed - 1e-6);
    }
  }
}

// ---- the cap holds -----------------------------------------------------------------------------

// Sends `body` until the budget refuses it (at most `max` times); the settled spend and what the
// upstream billed must both stay within the cap, and the spend must cover what was billed.
void attack_until_refused(Env& e, Api api, const std::string& body, int max,
                          const std::string& what) {
  int ok = 0, refused = 0;
  for (int i = 0; i < max && refused == 0; ++i) {
    auto r = post_json(e.gw.port, path_of(api), body, kBudgetKey);
    if (r.status == 200) ++ok;
    if (r.status == 429) ++refused;
    ASSERT_TRUE(r.status == 200 || r.status == 429) << what << ": " << r.status << " " << r.body;
  }
  ASSERT_TRUE(e.settled()) << what;
  const auto cap = std::llround(kCapUsd * 1e6);
  const auto spent = e.spent_micros();
  const auto billed = e.up.billed_micros();
  std::printf(
      "[ %s ] %d served, %d refused; settled %lld, upstream billed %lld, cap %lld (micro-$)\n",
      what.c_str(), ok, refused, static_cast<long long>(spent), static_cast<long long>(billed),
      static_cast<long long>(cap));
  EXPECT_EQ(refused, 1) << what << ": the cap was never reached";
  EXPECT_LE(spent, cap) << what;
  EXPECT_LE(billed, cap) << what << ": the provider billed more than the cap";
  EXPECT_GE(spent, billed) << what;
}

struct Attack {
  const char* name;
  const char* model_suffix;
  Shape shape;
  bool stream = false;
};

std::vector<Attack> attacks() {
  std::vector<Attack> out;
  Shape plain;
  plain.max_tokens = 2000;  // 20,000 micro-$ of output a request
  out.push_back({"plain", "", plain});
  out.push_back({"plain streamed", "", plain, true});
  out.push_back({"no usage", "-nousage", plain});
  out.push_back({"no usage streamed", "-nousage", plain, true});
  Shape tools;  // 400 KB of tool description: ~100k input tokens = $0.10 a request
  tools.max_tokens = 1;
  tools.tool_description = std::string(400'000, 'd');
  out.push_back({"tools", "", tools});
  Shape system;  // 400 KB of system prompt
  system.max_tokens = 1;
  system.system = std::string(400'000, 's');
  out.push_back({"system", "", system, true});
  Shape images;  // 40 images: 30,600 input tokens a request
  images.max_tokens = 1;
  images.images = 40;
  out.push_back({"images", "", images});
  Shape uncapped;  // no client cap: 4096 tokens a request unless the upstream is sent the cap
  uncapped.max_tokens = 0;
  out.push_back({"no max_tokens", "", uncapped});
  return out;
}

void attack_all(const char* prefix) {
  for (const auto& a : attacks()) {
    for (Api api : kApis) {
      if (api == Api::kMessages && a.shape.max_tokens == 0) continue;  // required there
      auto e = start_env();
      const std::string model = std::string(prefix) + a.model_suffix;
      attack_until_refused(e, api, body_of(api, model, a.stream, a.shape), 10,
                           std::string(a.name) + ", " + name_of(api) + " -> " + model);
    }
  }
}

TEST(BudgetBypassWire, ACapHoldsAgainstAnAnthropicUpstream) {
  attack_all("a");
}

TEST(BudgetBypassWire, ACapHoldsAgainstAGeminiUpstream) {
  attack_all("g");
}

// ---- output reported as free ------------------------------------------------------------------

// An OpenAI-compatible answer with generated output and completion_tokens (output_tokens) 0 is
// unreadable usage: charged an estimate of what was sent and received, counted and logged. An
// empty answer with 0 output tokens is believed.
TEST(BudgetBypassWire, OutputReportedAsZeroTokensIsChargedAnEstimate) {
  auto e = start_env();
  for (Api api : kApis) {
    for (bool stream : {false, true}) charged_at_least_billed(e, api, "o-zerousage", stream);
  }
  Shape uncapped;
  uncapped.max_tokens = 0;
  for (bool stream : {false, true}) {
    charged_at_least_billed(e, Api::kChat, "o-zerousage", stream, uncapped);
    charged_at_least_billed(e, Api::kChat, "o-zerousage-toolonly", stream);
    charged_at_least_billed(e, Api::kMessages, "o-zerousage-toolonly", stream);
    // Nothing generated: the prompt is charged, and the usage is not called missing.
    const auto spent_before = e.spent_micros("wide");
    auto r = post_json(e.gw.port, path_of(Api::kChat),
                       body_of(Api::kChat, "o-empty", stream, Shape{}), kWideKey);
    ASSERT_EQ(r.status, 200) << r.body;
    ASSERT_TRUE(e.settled());
    EXPECT_GT(e.spent_micros("wide"), spent_before);
  }
  auto metrics = request(e.gw.port, "GET", "/metrics").body;
  for (const char* m : {"o-zerousage", "o-zerousage-toolonly"}) {
    EXPECT_NE(metrics.find(std::string("bellwether_usage_missing_total{model=\"") + m + "\"}"),
              std::string::npos)
        << m;
  }
  EXPECT_EQ(metrics.find("bellwether_usage_missing_total{model=\"o-empty\"}"), std::string::npos);
}

TEST(BudgetBypassWire, ACapHoldsAgainstOutputReportedAsZeroTokens) {
  Shape plain;
  plain.max_tokens = 2000;
  for (Api api : kApis) {
    for (bool stream : {false, true}) {
      auto e = start_env();
      attack_until_refused(
          e, api, body_of(api, "o-zerousage", stream, plain), 10,
          std::string("zero usage, ") + name_of(api) + (stream ? " streamed" : ""));
    }
  }
}

// ---- images at the model's own rate ------------------------------------------------------------

// A gpt-4o-mini-like model bills an image at about 16 times the default bound; its price entry
// says so (image_tokens), and every client API reserves each image at it, also when the model
// only answers as the fallback of one with the default bound.
TEST(BudgetBypassWire, ACapHoldsForImagesAtTheModelsOwnRate) {
  Shape one_image;  // ~25,600 micro-$ a request: the second passes the cap if images are 1,600
  one_image.max_tokens = 1;
  one_image.images = 1;
  for (const char* model : {"o-imgmini", "o-down"}) {
    for (Api api : kApis) {
      for (bool stream : {false, true}) {
        auto e = start_env();
        attack_until_refused(
            e, api, body_of(api, model, stream, one_image), 10,
            std::string("images, ") + name_of(api) + " -> " + model + (stream ? " streamed" : ""));
      }
    }
  }
  auto e = start_env();
  Shape two_images;
  two_images.images = 2;
  for (Api api : kApis) {
    for (bool stream : {false, true}) {
      charged_at_least_billed(e, api, "o-imgmini", stream, two_images);
    }
  }
}

}  // namespace
}  // namespace bw::test
