#include "sim.h"

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <unordered_map>

#include "common/json_util.h"

namespace bw::sim {

namespace asio = boost::asio;
using http::Request;
using http::Response;
using http::ResponseWriter;

std::int64_t estimate_text_tokens(std::size_t chars) {
  return static_cast<std::int64_t>((chars + 3) / 4);
}

namespace {

constexpr std::array<std::string_view, 16> kWords = {
    "the",    "gateway", "keeps", "the",    "service", "alive", "while", "traffic",
    "spikes", "and",     "the",   "budget", "holds",   "under", "load",  "today"};

// Requests and tokens in the last minute, in one-second buckets.
class MinuteWindow {
 public:
  // Adds if within limits; returns seconds until it would fit (0 = added).
  double try_add(std::int64_t now_s, std::int64_t requests, std::int64_t tokens, std::int64_t rpm,
                 std::int64_t tpm, std::int64_t& req_used, std::int64_t& tok_used) {
    std::lock_guard lock(mu_);
    roll(now_s);
    req_used = 0;
    tok_used = 0;
    for (const auto& b : buckets_) {
      req_used += b.requests;
      tok_used += b.tokens;
    }
    bool over = (rpm > 0 && req_used + requests > rpm) || (tpm > 0 && tok_used + tokens > tpm);
    if (over) {
      // The oldest non-empty bucket leaves the window first.
      for (std::int64_t age = 59; age >= 0; --age) {
        const auto& b = buckets_[static_cast<std::size_t>((now_s - age) % 60)];
        if (b.second == now_s - age && (b.requests > 0 || b.tokens > 0)) {
          return static_cast<double>(60 - age);
        }
      }
      return 1.0;
    }
    auto& cur = buckets_[static_cast<std::size_t>(now_s % 60)];
    cur.requests += requests;
    cur.tokens += tokens;
    req_used += requests;
    tok_used += tokens;
    return 0;
  }

 private:
  struct Bucket {
    std::int64_t second = -1;
    std::int64_t requests = 0;
    std::int64_t tokens = 0;
  };
  void roll(std::int64_t now_s) {
    for (std::int64_t s = now_s - 59; s <= now_s; ++s) {
      auto& b = buckets_[static_cast<std::size_t>(s % 60)];
      if (b.second != s && b.second < now_s - 59) b = Bucket{s, 0, 0};
      if (b.second != s && s == now_s) b = Bucket{s, 0, 0};
    }
  }
  std::mutex mu_;
  std::array<Bucket, 60> buckets_{};
};

struct ModelState {
  std::atomic<std::int64_t> in_flight{0};
  std::atomic<std::int64_t> max_in_flight{0};
  MinuteWindow window;
  // Self-hosted replicas (SimModelConfig::replicas): pods running now (-1 = from the config) and
  // sequences being generated.
  std::atomic<int> replicas{-1};
  std::atomic<std::int64_t> generating{0};
  std::atomic<std::int64_t> waiting{0};
};

struct Control {
  int error_status = 0;
  double error_rate = 0;
  double retry_after_s = 1;
  double latency_scale = 1;
};

}  // namespace

struct Simulator::State {
  config::SimConfig cfg;
  std::mutex mu;
  std::unordered_map<std::string, std::unique_ptr<ModelState>> models;
  Control control;
  std::string last_request;  // headers and body of the last request, for tests
  std::atomic<std::uint64_t> requests{0}, completed{0}, cancelled{0}, rejected{0}, errors{0},
      resets{0}, ids{0};
  std::atomic<std::int64_t> in_flight{0}, max_in_flight{0};

  ModelState& model_state(const std::string& name) {
    std::lock_guard lock(mu);
    auto& p = models[name];
    if (!p) p = std::make_unique<ModelState>();
    return *p;
  }
  const config::SimModelConfig& model_config(std::string_view name) const {
    for (const auto& m : cfg.models) {
      if (m.name == name) return m;
    }
    return cfg.defaults;
  }
  Control get_control() {
    std::lock_guard lock(mu);
    return control;
  }
};

namespace {

std::mt19937_64& rng() {
  thread_local std::mt19937_64 gen(std::random_device{}());
  return gen;
}

double uniform() {
  return std::uniform_real_distribution<double>(0, 1)(rng());
}

// Lognormal with the given median and p99 (z(0.99) = 2.326).
Nanos sample(const config::Distribution& d, double scale) {
  if (d.median_ms <= 0) return 0;
  double ms = d.median_ms;
  if (d.p99_ms > d.median_ms) {
    double sigma = std::log(d.p99_ms / d.median_ms) / 2.326;
    ms = d.median_ms * std::exp(sigma * std::normal_distribution<double>(0, 1)(rng()));
  }
  return static_cast<Nanos>(ms * scale * 1e6);
}

asio::awaitable<void> sleep_for(Nanos n) {
  if (n <= 0) co_return;
  asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::nanoseconds(n));
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
}

// Whether the client (the gateway) is still there; set from ResponseWriter::watch_disconnect.
struct ClientWatch {
  bool gone = false;
  asio::steady_timer* timer = nullptr;  // the generation sleep in progress
};

// Sleeps like a model generating, but stops as soon as the client goes away, as a real provider
// stops generating (and billing) when its client disconnects. False when the client went away.
asio::awaitable<bool> generate_for(ClientWatch& cw, Nanos n) {
  if (cw.gone) co_return false;
  if (n <= 0) co_return true;
  asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::nanoseconds(n));
  cw.timer = &t;
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
  cw.timer = nullptr;
  co_return !cw.gone;
}

struct ParsedRequest {
  std::string model;
  bool stream = false;
  bool include_usage = false;
  std::int64_t max_tokens = 0;
  std::int64_t prompt_tokens = 0;
  std::size_t inputs = 1;          // embeddings
  std::vector<std::string> texts;  // embeddings: each input's text
};

// A simulated embedding that means something: each lower-cased word (and each pair of adjacent
// words) adds a signed unit to one of kEmbeddingDims components picked by its hash, and the
// vector is normalised. Texts sharing most of their words are close (a paraphrase scores about
// 0.8-0.95 in cosine similarity), texts differing in one number are close but not identical, and
// unrelated texts are near orthogonal. Deterministic, so tests can rely on it.
constexpr std::size_t kEmbeddingDims = 128;
std::vector<double> embed_text(std::string_view text) {
  std::vector<double> v(kEmbeddingDims, 0.0);
  std::vector<std::string> words;
  std::string w;
  for (char ch : text) {
    const auto u = static_cast<unsigned char>(ch);
    if (std::isalnum(u)) {
      w.push_back(static_cast<char>(std::tolower(u)));
    } else if (!w.empty()) {
      words.push_back(std::move(w));
      w.clear();
    }
  }
  if (!w.empty()) words.push_back(std::move(w));
  auto add = [&](std::string_view s, double weight) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (char ch : s) {
      h ^= static_cast<unsigned char>(ch);
      h *= 1099511628211ull;
    }
    v[h % kEmbeddingDims] += (h >> 63) ? -weight : weight;
  };
  for (std::size_t i = 0; i < words.size(); ++i) {
    add(words[i], 1.0);
    if (i + 1 < words.size()) add(words[i] + " " + words[i + 1], 0.5);
  }
  double n = 0;
  for (double x : v) n += x * x;
  if (n == 0) {
    v[0] = 1;
    return v;
  }
  for (double& x : v) x /= std::sqrt(n);
  return v;
}

Result<ParsedRequest> parse_request(std::string_view path, const std::string& body) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return make_error(400, "invalid_request_error", "invalid_json", "Invalid JSON body");
  }
  ParsedRequest r;
  std::string_view model;
  if (doc["model"].get(model) != simdjson::SUCCESS) {
    return make_error(400, "invalid_request_error", "", "model is required", "model");
  }
  r.model = std::string(model);
  bool b = false;
  if (doc["stream"].get(b) == simdjson::SUCCESS) r.stream = b;
  if (doc["stream_options"]["include_usage"].get(b) == simdjson::SUCCESS) r.include_usage = b;
  std::int64_t mt = 0;
  if (doc["max_completion_tokens"].get(mt) == simdjson::SUCCESS ||
      doc["max_tokens"].get(mt) == simdjson::SUCCESS) {
    r.max_tokens = mt;
  }
  std::size_t chars = 0, messages = 0;
  if (path.ends_with("/chat/completions")) {
    simdjson::dom::array arr;
    if (doc["messages"].get(arr) == simdjson::SUCCESS) {
      for (auto m : arr) {
        ++messages;
        std::string_view content;
        if (m["content"].get(content) == simdjson::SUCCESS) chars += content.size();
      }
    }
    r.prompt_tokens = estimate_text_tokens(chars) + 4 * static_cast<std::int64_t>(messages) + 3;
  } else {
    auto input = doc[path.ends_with("/embeddings") ? "input" : "prompt"];
    std::string_view s;
    simdjson::dom::array arr;
    if (input.get(s) == simdjson::SUCCESS) {
      chars = s.size();
      r.texts.emplace_back(s);
    } else if (input.get(arr) == simdjson::SUCCESS) {
      r.inputs = 0;
      for (auto e : arr) {
        ++r.inputs;
        if (e.get(s) == simdjson::SUCCESS) {
          chars += s.size();
          r.texts.emplace_back(s);
        } else {
          r.texts.emplace_back();
        }
      }
    }
    r.prompt_tokens = std::max<std::int64_t>(1, estimate_text_tokens(chars));
  }
  return r;
}

std::string completion_text(std::int64_t tokens) {
  std::string s;
  s.reserve(static_cast<std::size_t>(tokens) * 7);
  for (std::int64_t i = 0; i < tokens; ++i) {
    if (i) s.push_back(' ');
    s += kWords[static_cast<std::size_t>(i) % kWords.size()];
  }
  return s;
}

std::string usage_json(std::int64_t p, std::int64_t c) {
  return "{\"prompt_tokens\":" + std::to_string(p) + ",\"completion_tokens\":" + std::to_string(c) +
         ",\"total_tokens\":" + std::to_string(p + c) + "}";
}

void add_ratelimit_headers(http::Headers& h, const config::SimModelConfig& m, std::int64_t req_used,
                           std::int64_t tok_used) {
  if (m.rpm > 0) {
    h.add("x-ratelimit-limit-requests", std::to_string(m.rpm));
    h.add("x-ratelimit-remaining-requests",
          std::to_string(std::max<std::int64_t>(0, m.rpm - req_used)));
    h.add("x-ratelimit-reset-requests", "60s");
  }
  if (m.tpm > 0) {
    h.add("x-ratelimit-limit-tokens", std::to_string(m.tpm));
    h.add("x-ratelimit-remaining-tokens",
          std::to_string(std::max<std::int64_t>(0, m.tpm - tok_used)));
    h.add("x-ratelimit-reset-tokens", "60s");
  }
}

Response error_response(int status, std::string_view type, std::string_view code,
                        std::string_view message) {
  return Response::json(status, openai_error_body(message, type, code));
}

}  // namespace

// ---- self-hosted replicas ---------------------------------------------------------------------
namespace {

int replicas_now(ModelState& ms, const config::SimModelConfig& mc) {
  const int r = ms.replicas.load();
  return r < 0 ? mc.replicas : r;
}

// Holds a generation slot of a replica-modelled model while alive.
struct ReplicaSlot {
  ModelState* ms = nullptr;
  ReplicaSlot() = default;
  ReplicaSlot(const ReplicaSlot&) = delete;
  ReplicaSlot& operator=(const ReplicaSlot&) = delete;
  ~ReplicaSlot() {
    if (ms) ms->generating.fetch_sub(1);
  }
};

// Waits, like a model server's scheduler, until one of the running replicas has a free sequence
// slot. False when the client went away first. Polls: the replica count changes at run time.
asio::awaitable<bool> wait_for_replica(ModelState& ms, const config::SimModelConfig& mc,
                                       ClientWatch& cw, ReplicaSlot& slot) {
  if (mc.replica_concurrency <= 0) co_return true;
  ms.waiting.fetch_add(1);
  for (;;) {
    const std::int64_t cap = replicas_now(ms, mc) * mc.replica_concurrency;
    auto cur = ms.generating.load();
    while (cur < cap && !ms.generating.compare_exchange_weak(cur, cur + 1)) {
    }
    if (cur < cap) break;
    if (!co_await generate_for(cw, millis(5))) {
      ms.waiting.fetch_sub(1);
      co_return false;
    }
  }
  ms.waiting.fetch_sub(1);
  slot.ms = &ms;
  co_return true;
}

// GET /sim/replicas: {"model":{"replicas","generating","waiting"}} for replica-modelled models.
// POST /sim/replicas {"model":"m","replicas":N}: N pods run from now on.
asio::awaitable<bool> handle_replicas(Simulator::State& st, Request& req, ResponseWriter& w) {
  if (req.path() != "/sim/replicas") co_return false;
  if (req.method == "POST") {
    thread_local simdjson::dom::parser parser;
    simdjson::dom::element doc;
    std::string_view model;
    std::int64_t n = 0;
    if (parser.parse(req.body.data(), req.body.size()).get(doc) != simdjson::SUCCESS ||
        doc["model"].get(model) != simdjson::SUCCESS ||
        doc["replicas"].get(n) != simdjson::SUCCESS || n < 0 || n > 100000) {
      co_await w.send(error_response(400, "invalid_request_error", "invalid_json",
                                     "want {\"model\":\"name\",\"replicas\":N}"));
      co_return true;
    }
    st.model_state(std::string(model)).replicas.store(static_cast<int>(n));
  }
  JsonWriter j;
  j.begin_object();
  for (const auto& m : st.cfg.models) {
    if (m.replica_concurrency <= 0) continue;
    auto& ms = st.model_state(m.name);
    j.key(m.name).begin_object();
    j.key("replicas").value(replicas_now(ms, m));
    j.key("generating").value(ms.generating.load());
    j.key("waiting").value(ms.waiting.load());
    j.end_object();
  }
  j.end_object();
  co_await w.send(Response::json(200, j.take()));
  co_return true;
}

}  // namespace

namespace {

asio::awaitable<void> handle(std::shared_ptr<Simulator::State> st, Request& req,
                             ResponseWriter& w) {
  const auto path = req.path();
  if (req.method == "GET" && path == "/sim/stats") {
    JsonWriter j;
    j.begin_object()
        .key("requests")
        .value(st->requests.load())
        .key("completed")
        .value(st->completed.load())
        .key("cancelled")
        .value(st->cancelled.load())
        .key("rejected_429")
        .value(st->rejected.load())
        .key("errors")
        .value(st->errors.load())
        .key("resets")
        .value(st->resets.load())
        .key("in_flight")
        .value(st->in_flight.load())
        .key("max_in_flight")
        .value(st->max_in_flight.load())
        .end_object();
    co_await w.send(Response::json(200, j.take()));
    co_return;
  }
  if (co_await handle_replicas(*st, req, w)) co_return;
  if (req.method == "GET" && path == "/sim/last") {
    std::string last;
    {
      std::lock_guard lock(st->mu);
      last = st->last_request;
    }
    co_await w.send(Response::json(200, std::move(last)));
    co_return;
  }
  if (req.method == "POST" && path == "/sim/control") {
    thread_local simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (parser.parse(req.body.data(), req.body.size()).get(doc) != simdjson::SUCCESS) {
      co_await w.send(error_response(400, "invalid_request_error", "invalid_json", "bad JSON"));
      co_return;
    }
    Control c;
    std::int64_t status = 0;
    double d = 0;
    if (doc["error_status"].get(status) == simdjson::SUCCESS)
      c.error_status = static_cast<int>(status);
    if (doc["error_rate"].get(d) == simdjson::SUCCESS) c.error_rate = d;
    if (doc["retry_after_s"].get(d) == simdjson::SUCCESS) c.retry_after_s = d;
    if (doc["latency_scale"].get(d) == simdjson::SUCCESS) c.latency_scale = d;
    {
      std::lock_guard lock(st->mu);
      st->control = c;
    }
    co_await w.send(Response::json(200, "{\"ok\":true}"));
    co_return;
  }
  if (req.method == "GET" && path == "/v1/models") {
    JsonWriter j;
    j.begin_object().key("object").value("list").key("data").begin_array();
    for (const auto& m : st->cfg.models) {
      j.begin_object()
          .key("id")
          .value(m.name)
          .key("object")
          .value("model")
          .key("owned_by")
          .value("sim")
          .end_object();
    }
    j.end_array().end_object();
    co_await w.send(Response::json(200, j.take()));
    co_return;
  }
  const bool chat = path == "/v1/chat/completions";
  const bool completions = path == "/v1/completions";
  const bool embeddings = path == "/v1/embeddings";
  if (!chat && !completions && !embeddings) {
    co_await w.send(error_response(404, "invalid_request_error", "not_found", "Unknown path"));
    co_return;
  }
  if (req.method != "POST") {
    co_await w.send(error_response(405, "invalid_request_error", "method_not_allowed", "Use POST"));
    co_return;
  }
  st->requests.fetch_add(1);
  {
    std::string rec = "{\"path\":" + json_string(path) + ",\"headers\":{";
    bool first = true;
    for (const auto& [k, v] : req.headers) {
      if (!first) rec += ",";
      first = false;
      std::string lower(k);
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      append_json_string(rec, lower);
      rec += ":";
      append_json_string(rec, v);
    }
    rec += "},\"body\":";
    append_json_string(rec, req.body);
    rec += "}";
    std::lock_guard lock(st->mu);
    st->last_request = std::move(rec);
  }
  auto parsed = parse_request(path, req.body);
  if (!parsed) {
    st->errors.fetch_add(1);
    co_await w.send(error_response(parsed.error().status, parsed.error().type, parsed.error().code,
                                   parsed.error().message));
    co_return;
  }
  auto& p = *parsed;
  const auto& mc = st->model_config(p.model);
  const Control ctl = st->get_control();
  const double scale = st->cfg.zero_latency ? 0.0 : ctl.latency_scale;
  // "length" mode: max_tokens is the length; "limit" mode: a real model's natural length, cut.
  const std::int64_t completion = embeddings          ? 0
                                  : p.max_tokens <= 0 ? mc.completion_tokens
                                  : st->cfg.max_tokens_is_limit
                                      ? std::min(p.max_tokens, mc.completion_tokens)
                                      : p.max_tokens;
  const bool truncated =
      p.max_tokens > 0 && (!st->cfg.max_tokens_is_limit || p.max_tokens < mc.completion_tokens);

  if (p.prompt_tokens > mc.context_window) {
    st->errors.fetch_add(1);
    co_await w.send(error_response(400, "invalid_request_error", "context_length_exceeded",
                                   "This model's maximum context length is " +
                                       std::to_string(mc.context_window) + " tokens."));
    co_return;
  }

  // Fault injection: a header wins over runtime control, which wins over config rates.
  std::string_view fault = req.header("x-sim-fault");
  if (fault.empty() && ctl.error_status > 0 && uniform() < ctl.error_rate) {
    fault = ctl.error_status == 429 ? "429" : (ctl.error_status == 503 ? "503" : "500");
  }
  if (fault.empty() && mc.error_rate > 0 && uniform() < mc.error_rate) fault = "500";
  if (fault.empty() && mc.stall_rate > 0 && uniform() < mc.stall_rate) fault = "stall";
  if (fault.empty() && mc.reset_rate > 0 && uniform() < mc.reset_rate) fault = "reset";

  if (fault == "429") {
    st->rejected.fetch_add(1);
    double ra = ctl.retry_after_s;
    if (auto h = req.header("x-sim-retry-after"); !h.empty())
      ra = std::atof(std::string(h).c_str());
    auto r =
        error_response(429, "requests", "rate_limit_exceeded", "Rate limit reached (simulated)");
    r.headers.add("retry-after", std::to_string(static_cast<long>(std::ceil(ra))));
    co_await w.send(std::move(r));
    co_return;
  }
  if (fault == "500" || fault == "503" || fault == "502") {
    st->errors.fetch_add(1);
    int status = fault == "500" ? 500 : (fault == "502" ? 502 : 503);
    auto r = error_response(status, "server_error", "", "The server had an error (simulated)");
    if (status == 503) r.headers.add("retry-after", "1");
    co_await w.send(std::move(r));
    co_return;
  }
  ClientWatch cw;
  w.watch_disconnect([&cw] {
    cw.gone = true;
    if (cw.timer) cw.timer->cancel();
  });
  if (fault == "slow_headers") co_await sleep_for(seconds(2) + sample(mc.ttft, 1.0));
  if (fault == "stall") {
    // Never answers; the caller's timeout must fire. Bounded so the process cannot leak forever,
    // and over when the caller gives up.
    co_await generate_for(cw, seconds(600));
    co_return;
  }

  // Capacity, like a provider's tier limits.
  auto& ms = st->model_state(p.model);
  std::int64_t req_used = 0, tok_used = 0;
  const std::int64_t now_s = SteadyClock::instance().now() / kNanosPerSecond;
  const std::int64_t in_flight = ms.in_flight.fetch_add(1) + 1;
  // In flight means "being generated": the count drops before the last bytes are written, since
  // the caller may start its next request the moment it has them.
  struct Guard {
    ModelState& m;
    Simulator::State& s;
    bool released = false;
    void release() {
      if (released) return;
      released = true;
      m.in_flight.fetch_sub(1);
      s.in_flight.fetch_sub(1);
    }
    ~Guard() { release(); }
  } guard{ms, *st};
  {
    auto total = st->in_flight.fetch_add(1) + 1;
    auto prev = st->max_in_flight.load();
    while (total > prev && !st->max_in_flight.compare_exchange_weak(prev, total)) {
    }
    auto mprev = ms.max_in_flight.load();
    while (in_flight > mprev && !ms.max_in_flight.compare_exchange_weak(mprev, in_flight)) {
    }
  }
  double wait_s = 0;
  if (mc.max_concurrency > 0 && in_flight > mc.max_concurrency) {
    wait_s = 1;
  } else if (mc.rpm > 0 || mc.tpm > 0) {
    wait_s = ms.window.try_add(now_s, 1, p.prompt_tokens + completion, mc.rpm, mc.tpm, req_used,
                               tok_used);
  }
  ReplicaSlot replica_slot;
  if (wait_s <= 0 && !co_await wait_for_replica(ms, mc, cw, replica_slot)) {
    st->cancelled.fetch_add(1);
    co_return;
  }
  if (wait_s > 0) {
    st->rejected.fetch_add(1);
    auto r = error_response(429, "requests", "rate_limit_exceeded",
                            "Rate limit reached for " + p.model + " (simulated)");
    r.headers.add("retry-after", std::to_string(static_cast<long>(std::ceil(wait_s))));
    add_ratelimit_headers(r.headers, mc, req_used, tok_used);
    co_await w.send(std::move(r));
    co_return;
  }

  const std::string id = "chatcmpl-sim-" + std::to_string(st->ids.fetch_add(1));
  const auto created = SteadyClock::instance().unix_millis() / 1000;
  http::Headers h;
  add_ratelimit_headers(h, mc, req_used, tok_used);
  if (auto rid = req.header("x-request-id"); !rid.empty()) h.add("x-request-id", std::string(rid));

  if (embeddings) {
    co_await sleep_for(sample(mc.ttft, scale) / 4);
    std::string body = "{\"object\":\"list\",\"data\":[";
    for (std::size_t i = 0; i < p.inputs; ++i) {
      if (i) body += ",";
      body += "{\"object\":\"embedding\",\"index\":" + std::to_string(i) + ",\"embedding\":[";
      const auto v = embed_text(i < p.texts.size() ? std::string_view(p.texts[i]) : "");
      char num[32];
      for (std::size_t k = 0; k < v.size(); ++k) {
        if (k) body += ",";
        std::snprintf(num, sizeof num, "%.6f", v[k]);
        body += num;
      }
      body += "]}";
    }
    body += "],\"model\":" + json_string(p.model) +
            ",\"usage\":{\"prompt_tokens\":" + std::to_string(p.prompt_tokens) +
            ",\"total_tokens\":" + std::to_string(p.prompt_tokens) + "}}";
    auto r = Response::json(200, std::move(body));
    for (const auto& [k, v] : h.items()) r.headers.add(k, v);
    guard.release();
    co_await w.send(std::move(r));
    st->completed.fetch_add(1);
    co_return;
  }

  const bool reset = fault == "reset";
  if (!p.stream) {
    Nanos total = sample(mc.ttft, scale);
    for (std::int64_t i = 1; i < completion && scale > 0; ++i) total += sample(mc.itl, scale);
    if (!co_await generate_for(cw, total)) {
      st->cancelled.fetch_add(1);
      co_return;
    }
    if (reset) {
      st->resets.fetch_add(1);
      w.abort();  // the connection is reset without an answer
      co_return;
    }
    std::string text = completion_text(completion);
    std::string body;
    if (chat) {
      body = "{\"id\":\"" + id +
             "\",\"object\":\"chat.completion\",\"created\":" + std::to_string(created) +
             ",\"model\":" + json_string(p.model) +
             ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":" +
             json_string(text) + "},\"finish_reason\":\"" + (truncated ? "length" : "stop") +
             "\"}],\"usage\":" + usage_json(p.prompt_tokens, completion) + "}";
    } else {
      body = "{\"id\":\"" + id +
             "\",\"object\":\"text_completion\",\"created\":" + std::to_string(created) +
             ",\"model\":" + json_string(p.model) +
             ",\"choices\":[{\"index\":0,\"text\":" + json_string(text) +
             ",\"finish_reason\":\"stop\"}],\"usage\":" + usage_json(p.prompt_tokens, completion) +
             "}";
    }
    auto r = Response::json(200, std::move(body));
    for (const auto& [k, v] : h.items()) r.headers.add(k, v);
    guard.release();
    co_await w.send(std::move(r));
    st->completed.fetch_add(1);
    co_return;
  }

  h.add("content-type", "text/event-stream");
  h.add("cache-control", "no-cache");
  if (!co_await generate_for(cw, sample(mc.ttft, scale)) || !co_await w.begin_stream(200, h)) {
    st->cancelled.fetch_add(1);
    co_return;
  }
  const std::string prefix =
      chat ? "data: {\"id\":\"" + id +
                 "\",\"object\":\"chat.completion.chunk\",\"created\":" + std::to_string(created) +
                 ",\"model\":" + json_string(p.model) + ",\"choices\":["
           : "data: {\"id\":\"" + id +
                 "\",\"object\":\"text_completion\",\"created\":" + std::to_string(created) +
                 ",\"model\":" + json_string(p.model) + ",\"choices\":[";
  std::string batch;  // zero-latency mode sends the whole stream in one write
  auto emit = [&](std::string event) -> asio::awaitable<bool> {
    if (scale <= 0) {
      batch += event;
      co_return true;
    }
    co_return co_await w.write_chunk(event);
  };
  if (chat) {
    if (!co_await emit(prefix +
                       "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}," +
                       "\"finish_reason\":null}]}\n\n")) {
      st->cancelled.fetch_add(1);
      co_return;
    }
  }
  const std::int64_t reset_at = reset ? std::max<std::int64_t>(1, completion / 2) : -1;
  for (std::int64_t i = 0; i < completion; ++i) {
    if (i > 0) co_await sleep_for(sample(mc.itl, scale));
    if (i == reset_at) {
      if (!batch.empty()) co_await w.write_chunk(batch);
      st->resets.fetch_add(1);
      w.abort();  // mid-stream reset: no terminating chunk, the connection is reset
      co_return;
    }
    std::string word(kWords[static_cast<std::size_t>(i) % kWords.size()]);
    if (i) word.insert(word.begin(), ' ');
    std::string ev = chat ? prefix + "{\"index\":0,\"delta\":{\"content\":" + json_string(word) +
                                "},\"finish_reason\":null}]}\n\n"
                          : prefix + "{\"index\":0,\"text\":" + json_string(word) +
                                ",\"finish_reason\":null}]}\n\n";
    if (!co_await emit(std::move(ev))) {
      st->cancelled.fetch_add(1);
      co_return;
    }
  }
  std::string tail = chat ? prefix + "{\"index\":0,\"delta\":{},\"finish_reason\":\"" +
                                (truncated ? "length" : "stop") + "\"}]}\n\n"
                          : prefix + "{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n";
  if (p.include_usage) {
    tail += prefix + "],\"usage\":" + usage_json(p.prompt_tokens, completion) + "}\n\n";
  }
  tail += "data: [DONE]\n\n";
  batch += tail;
  guard.release();
  if (!co_await w.write_chunk(batch) || !co_await w.end_stream()) {
    st->cancelled.fetch_add(1);
    co_return;
  }
  st->completed.fetch_add(1);
}

}  // namespace

Simulator::Simulator(config::SimConfig cfg)
    : cfg_(std::move(cfg)), state_(std::make_shared<State>()) {
  state_->cfg = cfg_;
}

Simulator::~Simulator() {
  stop();
}

http::Handler Simulator::handler() {
  auto st = state_;
  return [st](Request& req, ResponseWriter& w) -> asio::awaitable<void> {
    co_await handle(st, req, w);
  };
}

Result<std::uint16_t> Simulator::start(const std::string& listen_override) {
  http::ServerOptions opt;
  const std::string listen = listen_override.empty() ? cfg_.listen : listen_override;
  if (!config::parse_listen(listen, opt.host, opt.port)) {
    return make_error(500, "config_error", "", "bad sim listen address '" + listen + "'");
  }
  opt.workers = cfg_.workers;
  opt.server_name = "bellwether-sim";
  opt.idle_timeout = seconds(600);
  server_ = std::make_unique<http::Server>(opt, handler());
  auto r = server_->start();
  if (!r) return r.error();
  server_->run();
  return server_->port();
}

void Simulator::stop() {
  if (server_) server_->stop();
}

http::Server* Simulator::server() {
  return server_.get();
}

}  // namespace bw::sim
