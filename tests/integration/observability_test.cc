// Observability through real processes: `bellwether serve` in front of `bellwether sim`, its
// GET /metrics checked by `promtool check metrics` and against exact counter values (the sim's
// token usage is deterministic), and a real Prometheus scraping the gateway every second with
// deploy/prometheus/rules.yml loaded, queried over its HTTP API.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "harness.h"
#include "support/eventually.h"

namespace bw::test {
namespace {

namespace fs = std::filesystem;
using Labels = std::map<std::string, std::string>;

constexpr const char* kMainKey = "sk-obs-main-0001";
constexpr const char* kTinyKey = "sk-obs-tiny-0001";
constexpr const char* kChat = "/v1/chat/completions";
constexpr const char* kPromtool = "/usr/bin/promtool";
constexpr const char* kPrometheus = "/usr/bin/prometheus";

// The repository root: the environment's BW_SOURCE_DIR if set, else the one this was built from
// (not __FILE__, which ccache may have rewritten to a relative path).
std::string source_dir() {
  if (const char* d = std::getenv("BW_SOURCE_DIR"); d && *d) return d;
  return BW_SOURCE_DIR;
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format (0.0.4), parsed just enough for exact assertions.
struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

struct Exposition {
  std::vector<Sample> samples;
  std::map<std::string, std::string> help;  // family -> help text
  std::map<std::string, std::string> type;  // family -> counter|gauge|histogram
};

Exposition parse_exposition(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      auto rest = line.substr(7);
      auto sp = rest.find(' ');
      auto name = rest.substr(0, sp);
      auto val = sp == std::string::npos ? std::string() : rest.substr(sp + 1);
      (line[2] == 'H' ? e.help : e.type)[name] = val;
      continue;
    }
    if (line[0] == '#') continue;
    Sample s;
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') s.name.push_back(line[i++]);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        std::string k, v;
        while (i < line.size() && line[i] != '=') k.push_back(line[i++]);
        i += 2;  // ="
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            ++i;
            v.push_back(line[i] == 'n' ? '\n' : line[i]);
          } else {
            v.push_back(line[i]);
          }
          ++i;
        }
        ++i;  // closing quote
        if (i < line.size() && line[i] == ',') ++i;
        s.labels[k] = v;
      }
      ++i;  // }
    }
    while (i < line.size() && line[i] == ' ') ++i;
    s.value = std::strtod(line.c_str() + i, nullptr);
    e.samples.push_back(std::move(s));
  }
  return e;
}

// Samples of `name` whose labels include every pair of `want`.
std::vector<Sample> select(const Exposition& e, const std::string& name, const Labels& want = {}) {
  std::vector<Sample> out;
  for (const auto& s : e.samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : want) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) ok = false;
    }
    if (ok) out.push_back(s);
  }
  return out;
}

// The value of exactly one sample; NaN (which fails any EXPECT_EQ/NEAR) when absent or ambiguous.
double value_of(const Exposition& e, const std::string& name, const Labels& want) {
  auto v = select(e, name, want);
  if (v.size() != 1) {
    ADD_FAILURE() << v.size() << " samples of " << name << " match the labels";
    return std::nan("");
  }
  return v.front().value;
}

std::string labels_text(const Labels& l) {
  std::string s = "{";
  for (const auto& [k, v] : l) s += (s.size() > 1 ? "," : "") + k + "=\"" + v + "\"";
  return s + "}";
}

struct CmdResult {
  int rc = -1;
  std::string output;
};

CmdResult run_cmd(const std::string& cmd) {
  CmdResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int st = ::pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// Metric families and their types as listed in docs/metrics.md ("| `name` | type | ...").
std::map<std::string, std::string> documented_families() {
  std::map<std::string, std::string> out;
  std::istringstream in(read_file(source_dir() + "/docs/metrics.md"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("| `bellwether_", 0) != 0) continue;
    auto end = line.find('`', 3);
    auto name = line.substr(3, end - 3);
    auto rest = line.substr(end + 1);  // " | type | ..."
    auto a = rest.find('|'), b = rest.find('|', a + 1);
    auto type = rest.substr(a + 1, b - a - 1);
    type.erase(0, type.find_first_not_of(' '));
    type.erase(type.find_last_not_of(' ') + 1);
    out[name] = type;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Deterministic traffic. The sim counts prompt = ceil(chars/4) + 4*messages + 3 for chat and
// max(1, ceil(chars/4)) for completions/embeddings; completion = max_tokens, else the model's 7.
constexpr std::int64_t kSimCompletion = 7;

std::string sim_yaml() {
  return R"(sim:
  workers: 2
  zero_latency: true
  defaults: {completion_tokens: 7}
  models:
    sim-broken: {error_rate: 1.0}
)";
}

// Prices chosen so every request costs a whole number of micro-dollars: $1 and $2 per million.
std::string gw_yaml(int sim_port) {
  return R"(workers: 2
providers:
  sim: {base_url: "http://127.0.0.1:)" +
         std::to_string(sim_port) + R"(/v1"}
plans:
  bare: {limits: []}
model_groups:
  obs-model:
    deployments: [{provider: sim, model: sim-obs}]
  broken:
    deployments: [{provider: sim, model: sim-broken}]
  obs-other:
    deployments: [{provider: sim, model: sim-obs}]
pricing:
  obs-model: {input: 1, output: 2}
  obs-other: {input: 1, output: 2}
  broken: {input: 1, output: 2}
cost_guard: {budget_metrics_per_key: true}
keys:
  - {name: main, key: )" +
         std::string(kMainKey) + R"(, plan: bare, default_priority: 1, max_priority: 0}
  - name: tiny
    key: )" +
         std::string(kTinyKey) +
         R"(
    plan: bare
    default_priority: 1
    max_priority: 0
    limits: [{name: tiny-rpm, rate: 2, period: minute}]
)";
}

std::int64_t ceil4(std::size_t chars) {
  return static_cast<std::int64_t>((chars + 3) / 4);
}

struct Call {
  std::string path;
  std::string body;
  std::string key;
  int status;               // expected HTTP status
  std::string model;        // expected `model` label ("" when no group was resolved)
  std::int64_t prompt = 0;  // expected usage (only for 200s)
  std::int64_t completion = 0;
  bool stream = false;
};

std::string msg(const std::string& role, const std::string& content) {
  return R"({"role":")" + role + R"(","content":")" + content + "\"}";
}

std::vector<Call> golden_calls() {
  std::vector<Call> c;
  const std::string hello = "Hello there";  // 11 chars: 3 + 4 + 3 = 10 prompt tokens
  // Buffered chat, max_tokens 5.
  c.push_back({kChat, chat_body("obs-model", false, 5, hello), kMainKey, 200, "obs-model", 10, 5});
  // Buffered chat, two messages, no max_tokens: 35 chars -> 9 + 8 + 3 = 20.
  c.push_back({kChat,
               R"({"model":"obs-model","messages":[)" + msg("system", "You are terse.") + "," +
                   msg("user", "Count to three please") + "]}",
               kMainKey, 200, "obs-model", ceil4(14 + 21) + 8 + 3, kSimCompletion});
  // Legacy completions: 16 chars -> 4, max_tokens 11.
  c.push_back({"/v1/completions",
               R"({"model":"obs-model","prompt":"Once upon a time","max_tokens":11})", kMainKey,
               200, "obs-model", 4, 11});
  // Streams: usage comes from the usage chunk the gateway asks for.
  c.push_back({kChat, chat_body("obs-model", true, 0, hello), kMainKey, 200, "obs-model", 10,
               kSimCompletion, true});
  c.push_back(
      {kChat,
       R"({"model":"obs-model","stream":true,"stream_options":{"include_usage":true},"max_tokens":9,"messages":[)" +
           msg("user", "abcdefghijklmnopq") + "]}",
       kMainKey, 200, "obs-model", ceil4(17) + 4 + 3, 9, true});
  // Embeddings: 10 chars -> 3 prompt tokens, no completion.
  c.push_back({"/v1/embeddings", R"({"model":"obs-model","input":"abcdefghij"})", kMainKey, 200,
               "obs-model", 3, 0});
  // The tiny key: two pass, two are refused by its 2-per-minute limit.
  for (int i = 0; i < 2; ++i) {
    c.push_back({kChat, chat_body("obs-model", false, 0, hello), kTinyKey, 200, "obs-model", 10,
                 kSimCompletion});
  }
  for (int i = 0; i < 2; ++i) {
    c.push_back({kChat, chat_body("obs-model", false, 0, hello), kTinyKey, 429, "obs-model"});
  }
  // 401 without a key and with a wrong key, 404 for an unknown model.
  c.push_back({kChat, chat_body("obs-model", false, 0, hello), "", 401, ""});
  c.push_back({kChat, chat_body("obs-model", false, 0, hello), "sk-not-a-real-key", 401, ""});
  c.push_back({kChat, chat_body("no-such-model", false, 0, hello), kMainKey, 404, ""});
  // 5xx: the sim model fails every request with 500 (not a retried status by default).
  for (int i = 0; i < 2; ++i) {
    c.push_back({kChat, chat_body("broken", false, 0, hello), kMainKey, 500, "broken"});
  }
  return c;
}

std::string status_class(int s) {
  return std::to_string(s / 100) + "xx";
}

class Stack {
 public:
  Stack() : sim_(start_sim(sim_yaml())), gw_(start_gateway(gw_yaml(sim_.port))) {}
  int port() const { return gw_.port; }
  int sim_port() const { return sim_.port; }

 private:
  Sim sim_;
  Gw gw_;
};

// ---------------------------------------------------------------------------------------------
TEST(Observability, MetricsAreValidAndExactAfterMixedTraffic) {
  Stack st;
  const auto calls = golden_calls();
  std::map<std::tuple<std::string, std::string, std::string>, double> want_requests;
  std::map<std::string, double> want_duration_count;  // by endpoint, for obs-model
  std::int64_t prompt = 0, completion = 0, cost_micro = 0, streams = 0, ok_upstream = 0;
  for (const auto& c : calls) {
    auto r = post_json(st.port(), c.path, c.body, c.key);
    ASSERT_EQ(r.status, c.status) << c.path << " " << c.body << " -> " << r.body;
    if (c.status == 200) {
      // The sim's own usage numbers, as returned to the client where they are visible.
      if (!c.stream) {
        EXPECT_NE(r.body.find("\"prompt_tokens\":" + std::to_string(c.prompt) + ","),
                  std::string::npos)
            << r.body;
      }
      prompt += c.prompt;
      completion += c.completion;
      cost_micro += c.prompt * 1 + c.completion * 2;
      streams += c.stream ? 1 : 0;
      ++ok_upstream;
    }
    want_requests[{c.path, c.model, status_class(c.status)}] += 1;
    if (c.model == "obs-model") want_duration_count[c.path] += 1;
  }

  auto resp = request(st.port(), "GET", "/metrics");
  ASSERT_EQ(resp.status, 200);
  EXPECT_EQ(resp.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const std::string text = resp.body;

  // promtool: the exposition parses and passes its lint rules.
  if (::access(kPromtool, X_OK) != 0)
    GTEST_FAIL() << kPromtool << " missing (apt-get install prometheus)";
  auto dir = temp_dir();
  write_file(dir + "/metrics.txt", text);
  auto pt = run_cmd(std::string(kPromtool) + " check metrics < " + dir + "/metrics.txt");
  EXPECT_EQ(pt.rc, 0) << pt.output;
  EXPECT_EQ(pt.output, "") << "promtool lint findings:\n" << pt.output;

  auto e = parse_exposition(text);

  // Every documented family has HELP and TYPE, with the documented type.
  auto documented = documented_families();
  ASSERT_GE(documented.size(), 20u) << "could not read the family table of docs/metrics.md";
  for (const auto& [name, type] : documented) {
    EXPECT_TRUE(e.help.count(name)) << "# HELP missing for " << name;
    ASSERT_TRUE(e.type.count(name)) << "# TYPE missing for " << name;
    EXPECT_EQ(e.type[name], type) << name;
  }
  // And nothing is exported that the reference does not list.
  for (const auto& [name, type] : e.type) {
    EXPECT_TRUE(documented.count(name)) << name << " is exported but not in docs/metrics.md";
  }

  // bellwether_requests_total: exactly the expected series (summed over priority), nothing else.
  std::map<std::tuple<std::string, std::string, std::string>, double> got_requests;
  for (const auto& s : select(e, "bellwether_requests_total")) {
    got_requests[{s.labels.at("endpoint"), s.labels.at("model"), s.labels.at("status_class")}] +=
        s.value;
    // Authenticated requests carry the key's priority (P1 here; its spelling is checked in
    // PriorityLabelValuesAreSpelledAsDocumented), unauthenticated ones none.
    const auto& prio = s.labels.at("priority");
    EXPECT_TRUE(prio.empty() || prio == "1" || prio == "p1") << labels_text(s.labels);
  }
  EXPECT_EQ(got_requests, want_requests);
  // The 404 (a key, no model) carries the priority; the two 401s (no key) do not.
  EXPECT_EQ(select(e, "bellwether_requests_total", {{"model", ""}, {"priority", ""}}).size(), 1u);
  EXPECT_EQ(value_of(e, "bellwether_requests_total", {{"model", ""}, {"priority", ""}}), 2);

  // Tokens and money.
  EXPECT_EQ(value_of(e, "bellwether_tokens_total", {{"model", "obs-model"}, {"type", "prompt"}}),
            static_cast<double>(prompt));
  EXPECT_EQ(
      value_of(e, "bellwether_tokens_total", {{"model", "obs-model"}, {"type", "completion"}}),
      static_cast<double>(completion));
  EXPECT_EQ(select(e, "bellwether_tokens_total").size(), 2u)
      << "no token series for failed requests";
  EXPECT_NEAR(value_of(e, "bellwether_cost_usd_total", {{"model", "obs-model"}}),
              static_cast<double>(cost_micro) * 1e-6, 1e-12);
  EXPECT_EQ(select(e, "bellwether_cost_usd_total").size(), 1u);

  // Rate limits, upstream attempts, latency histograms.
  EXPECT_EQ(value_of(e, "bellwether_rate_limited_total", {{"limit", "tiny-rpm"}}), 2);
  EXPECT_EQ(value_of(e, "bellwether_upstream_requests_total",
                     {{"deployment", "obs-model/sim/0"}, {"status_class", "2xx"}}),
            static_cast<double>(ok_upstream));
  EXPECT_EQ(value_of(e, "bellwether_upstream_requests_total",
                     {{"deployment", "broken/sim/0"}, {"status_class", "5xx"}}),
            2);
  EXPECT_EQ(value_of(e, "bellwether_ttft_seconds_count", {{"model", "obs-model"}}),
            static_cast<double>(streams));
  for (const auto& [path, n] : want_duration_count) {
    EXPECT_EQ(value_of(e, "bellwether_request_duration_seconds_count",
                       {{"endpoint", path}, {"model", "obs-model"}}),
              n)
        << path;
  }
  EXPECT_EQ(value_of(e, "bellwether_request_duration_seconds_count",
                     {{"endpoint", kChat}, {"model", "broken"}}),
            2);
  // Histogram _count always equals its +Inf bucket.
  for (const auto& s : e.samples) {
    if (!s.name.ends_with("_count")) continue;
    auto base = s.name.substr(0, s.name.size() - 6);
    if (e.type[base] != "histogram") continue;
    Labels inf = s.labels;
    inf["le"] = "+Inf";
    EXPECT_EQ(value_of(e, base + "_bucket", inf), s.value) << s.name << labels_text(s.labels);
  }
  // Gauges present from the start.
  EXPECT_EQ(value_of(e, "bellwether_in_flight", {}), 0);
  EXPECT_EQ(value_of(e, "bellwether_breaker_state", {{"deployment", "obs-model/sim/0"}}), 0);
  EXPECT_EQ(value_of(e, "bellwether_build_info", {}), 1);
  EXPECT_GE(value_of(e, "bellwether_replicas_recommended", {{"target", "gateway"}}), 1);

  // The queue endpoint (client key) carries the scaler's recommendation.
  auto q = request(st.port(), "GET", "/v1/metrics/queue", "",
                   {{"Authorization", std::string("Bearer ") + kMainKey}});
  ASSERT_EQ(q.status, 200) << q.body;
  EXPECT_NE(q.body.find("\"recommended_replicas\":1,"), std::string::npos) << q.body;
  EXPECT_NE(q.body.find("\"scaling\":{\"reason\":"), std::string::npos) << q.body;
  EXPECT_NE(q.body.find("\"gateway\":{\"target\":\"gateway\",\"scalable\":true,"),
            std::string::npos)
      << q.body;
  EXPECT_EQ(request(st.port(), "GET", "/v1/metrics/queue").status, 401);

  // A second scrape counts the first one (recorded after it was answered).
  auto e2 = parse_exposition(request(st.port(), "GET", "/metrics").body);
  EXPECT_EQ(value_of(e2, "bellwether_requests_total",
                     {{"endpoint", "/metrics"}, {"status_class", "2xx"}}),
            1);
}

// docs/metrics.md: "`priority` is `p0`/`p1`/`p2`" (also the spelling of /v1/metrics/queue and of
// deploy/prometheus/rules_test.yml).
TEST(Observability, PriorityLabelValuesAreSpelledAsDocumented) {
  Stack st;
  auto r = post_json(st.port(), kChat, chat_body("obs-model", false, 3), kMainKey);
  ASSERT_EQ(r.status, 200) << r.body;
  auto e = parse_exposition(request(st.port(), "GET", "/metrics").body);
  std::set<std::string> depth;
  for (const auto& s : select(e, "bellwether_queue_depth")) depth.insert(s.labels.at("priority"));
  EXPECT_EQ(depth, (std::set<std::string>{"p0", "p1", "p2"}));
  EXPECT_EQ(
      select(e, "bellwether_requests_total", {{"model", "obs-model"}, {"priority", "p1"}}).size(),
      1u);
  EXPECT_EQ(select(e, "bellwether_queue_wait_seconds_count", {{"priority", "p1"}}).size(), 1u);
}

// Time to first token: one series per model and one per priority, each counting its own streams
// (the series are resolved once per group and priority, then read from there).
TEST(Observability, TimeToFirstTokenSeriesCountByModelAndByPriority) {
  Stack st;
  const std::vector<std::pair<std::string, std::string>> p0 = {{"x-priority", "0"}};
  const std::vector<std::pair<std::string, std::string>> p2 = {{"x-priority", "2"}};
  // obs-model: 2 at P1, 1 at P0; obs-other: 1 at P0, 3 at P2; one buffered (no TTFT).
  struct Stream {
    std::string model;
    const std::vector<std::pair<std::string, std::string>>* prio;
    int times;
  };
  const Stream streams[] = {{"obs-model", nullptr, 2},
                            {"obs-model", &p0, 1},
                            {"obs-other", &p0, 1},
                            {"obs-other", &p2, 3}};
  for (const auto& s : streams) {
    for (int i = 0; i < s.times; ++i) {
      auto r = post_json(st.port(), kChat, chat_body(s.model, true, 3), kMainKey,
                         s.prio ? *s.prio : std::vector<std::pair<std::string, std::string>>{});
      ASSERT_EQ(r.status, 200) << r.body;
    }
  }
  ASSERT_EQ(post_json(st.port(), kChat, chat_body("obs-other", false, 3), kMainKey, p2).status,
            200);
  auto e = parse_exposition(request(st.port(), "GET", "/metrics").body);
  EXPECT_EQ(value_of(e, "bellwether_ttft_seconds_count", {{"model", "obs-model"}}), 3);
  EXPECT_EQ(value_of(e, "bellwether_ttft_seconds_count", {{"model", "obs-other"}}), 4);
  EXPECT_EQ(select(e, "bellwether_ttft_seconds_count").size(), 2u);
  EXPECT_EQ(value_of(e, "bellwether_ttft_priority_seconds_count", {{"priority", "p0"}}), 2);
  EXPECT_EQ(value_of(e, "bellwether_ttft_priority_seconds_count", {{"priority", "p1"}}), 2);
  EXPECT_EQ(value_of(e, "bellwether_ttft_priority_seconds_count", {{"priority", "p2"}}), 3);
  EXPECT_EQ(select(e, "bellwether_ttft_priority_seconds_count").size(), 3u);
  EXPECT_EQ(value_of(e, "bellwether_request_priority_duration_seconds_count", {{"priority", "p2"}}),
            4);
}

// The endpoint label must not take client-chosen values: every unknown URL would otherwise add
// a series (up to the 1000-series cap, after which legitimate new series land in __overflow__).
TEST(Observability, UnknownUrlsDoNotCreateEndpointSeries) {
  Stack st;
  double before = 0;
  for (const auto& s : select(parse_exposition(request(st.port(), "GET", "/metrics").body),
                              "bellwether_requests_total")) {
    before += s.value;
  }
  std::vector<std::string> probes;
  for (int i = 0; i < 5; ++i) {
    probes.push_back("/probe-" + std::to_string(i) + "-x" + std::to_string(::getpid()));
    EXPECT_EQ(request(st.port(), "GET", probes.back()).status, 404);
  }
  EXPECT_EQ(request(st.port(), "GET", "/admin/no-such-thing-" + std::to_string(::getpid())).status,
            401);
  auto e = parse_exposition(request(st.port(), "GET", "/metrics").body);
  double after = 0;
  std::set<std::string> endpoints;
  for (const auto& s : select(e, "bellwether_requests_total")) {
    after += s.value;
    endpoints.insert(s.labels.at("endpoint"));
  }
  // Still counted (5 probes, the admin probe and the first scrape)...
  EXPECT_EQ(after - before, 7);
  // ...but not under their own path.
  for (const auto& p : probes) EXPECT_EQ(endpoints.count(p), 0u) << "series for " << p;
  for (const auto& ep : endpoints) {
    EXPECT_EQ(ep.find("no-such-thing"), std::string::npos) << "series for " << ep;
  }
}

// ---------------------------------------------------------------------------------------------
// Real Prometheus: scrapes the gateway every second and evaluates deploy/prometheus/rules.yml.

std::string url_encode(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

struct PromValue {
  std::size_t series = 0;  // number of series in the result vector
  double ts = 0;           // of the first one
  double value = std::nan("");
  std::string raw;
};

// Instant query; optional evaluation time (unix seconds).
PromValue prom_query(int port, const std::string& q, double at = 0) {
  std::string path = "/api/v1/query?query=" + url_encode(q);
  if (at > 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "&time=%.3f", at);
    path += buf;
  }
  PromValue v;
  auto r = request(port, "GET", path);
  v.raw = r.body;
  if (r.status != 200 || r.body.find("\"status\":\"success\"") == std::string::npos) return v;
  v.series = count(r.body, "\"value\":[");
  auto p = r.body.find("\"value\":[");
  if (p == std::string::npos) return v;
  p += 9;
  v.ts = std::strtod(r.body.c_str() + p, nullptr);
  auto q1 = r.body.find('"', p);
  if (q1 == std::string::npos) return v;
  v.value = std::strtod(r.body.c_str() + q1 + 1, nullptr);
  return v;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

TEST(Observability, PrometheusScrapesAndRecordingRuleMatchesGeneratedTokens) {
  if (::access(kPrometheus, X_OK) != 0)
    GTEST_FAIL() << kPrometheus << " missing (apt-get install prometheus)";
  const auto t_begin = std::chrono::steady_clock::now();
  Stack st;

  // The rules, with the recording group's 30 s interval compressed to 1 s (the expressions are
  // untouched), so the rule is evaluated within this test's time bound.
  std::string rules = read_file(source_dir() + "/deploy/prometheus/rules.yml");
  ASSERT_EQ(count(rules, "interval: 30s"), 1u) << "rules.yml changed shape; update this test";
  ASSERT_NE(rules.find("record: bellwether:tokens_per_second:rate1m"), std::string::npos);
  rules.replace(rules.find("interval: 30s"), 13, "interval: 1s");
  auto dir = temp_dir();
  write_file(dir + "/rules.yml", rules);
  auto check = run_cmd(std::string(kPromtool) + " check rules " + dir + "/rules.yml");
  ASSERT_EQ(check.rc, 0) << check.output;
  write_file(dir + "/prometheus.yml", R"(global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [")" + dir + R"(/rules.yml"]
scrape_configs:
  - job_name: bellwether
    static_configs:
      - targets: ["127.0.0.1:)" + std::to_string(st.port()) +
                                          R"("]
)");
  const int prom_port = free_port();
  Process prom({kPrometheus, "--config.file=" + dir + "/prometheus.yml",
                "--storage.tsdb.path=" + dir + "/data",
                "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"},
               {}, "prom-");
  ASSERT_TRUE(
      bw::testing::eventually([&] { return request(prom_port, "GET", "/-/ready").status == 200; },
                              std::chrono::seconds(15)))
      << prom.stderr_text();
  // The gateway target is up (one successful scrape). Prometheus hands new static targets to
  // the scrape manager after its 5 s discovery throttle.
  ASSERT_TRUE(bw::testing::eventually(
      [&] { return prom_query(prom_port, "up{job=\"bellwether\"} == 1").series == 1; },
      std::chrono::seconds(15)))
      << prom.stderr_text();

  // Steady load: 20 requests/s for 12 s, each 10 prompt + 20 completion tokens.
  constexpr int kRps = 20, kSeconds = 12, kMaxTokens = 20;
  constexpr std::int64_t kTokensPerRequest = 10 + kMaxTokens;
  const auto body = chat_body("obs-model", false, kMaxTokens, "Hello there");
  const double load_start = unix_now();
  const auto t0 = std::chrono::steady_clock::now();
  int ok = 0;
  for (int i = 0; i < kRps * kSeconds; ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::milliseconds(1000 / kRps) * i);
    ok += post_json(st.port(), kChat, body, kMainKey).status == 200 ? 1 : 0;
  }
  const double load_end = unix_now();
  ASSERT_EQ(ok, kRps * kSeconds);
  const double generated_rate =
      static_cast<double>(ok * kTokensPerRequest) / (load_end - load_start);

  // 1. The raw counter, seen through Prometheus in the middle of the load, runs at the
  //    generated rate.
  auto mid = prom_query(prom_port, "sum(rate(bellwether_tokens_total{model=\"obs-model\"}[5s]))",
                        load_start + 8);
  ASSERT_EQ(mid.series, 1u) << mid.raw;
  EXPECT_GT(mid.value, generated_rate / 2) << mid.raw;
  EXPECT_LT(mid.value, generated_rate * 2) << mid.raw;

  // 2. The recording rule, once evaluated after the last request was scraped. Its range is one
  //    minute and the whole load lies inside it, so it must equal all tokens / 60 s: the
  //    generated rate averaged over the rule's window.
  const std::string rule = "bellwether:tokens_per_second:rate1m{model=\"obs-model\"}";
  PromValue rec;
  ASSERT_TRUE(bw::testing::eventually(
      [&] {
        rec = prom_query(prom_port, "timestamp(" + rule + ")");
        return rec.series == 1 && rec.value >= load_end + 2.5;
      },
      std::chrono::seconds(10)))
      << rec.raw;
  const double eval_ts = rec.value;
  rec = prom_query(prom_port, rule, eval_ts);
  ASSERT_EQ(rec.series, 1u) << rec.raw;
  ASSERT_LT(eval_ts - 60, load_start) << "the rule's window no longer covers the whole load";
  const double window_rate = static_cast<double>(ok * kTokensPerRequest) / 60.0;
  std::printf(
      "generated %.1f tokens/s during the load; rate(5s) mid-load %.1f; recording rule "
      "%.2f tokens/s vs %.2f expected over its 1 m window (ratio %.3f)\n",
      generated_rate, mid.value, rec.value, window_rate, rec.value / window_rate);
  // rate() extrapolates by at most about one scrape interval at each end: a few per cent here
  // (measured 1.05); double counting or a lost scrape would leave this band.
  EXPECT_GT(rec.value, window_rate * 0.8) << rec.raw;
  EXPECT_LT(rec.value, window_rate * 1.25) << rec.raw;
  // Only the model that had traffic has a series.
  EXPECT_EQ(prom_query(prom_port, "bellwether:tokens_per_second:rate1m", eval_ts).series, 1u);
  // Another rule of the same file, fed by a gauge: evaluated and present.
  auto rep = prom_query(prom_port, "bellwether:replicas_recommended:max");
  EXPECT_EQ(rep.series, 1u) << rep.raw;
  EXPECT_GE(rep.value, 1) << rep.raw;

  prom.signal(SIGTERM);
  EXPECT_EQ(prom.wait(std::chrono::seconds(10)), 0) << prom.stderr_text();
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
  std::printf("test took %.1f s\n", took);
  EXPECT_LT(took, 60);
}

}  // namespace
}  // namespace bw::test
