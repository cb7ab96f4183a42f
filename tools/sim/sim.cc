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
#include <ctime>
#include <mutex>
#include <random>
#include <unordered_map>

#include "api/chat.h"
#include "api/messages.h"
#include "api/responses.h"
#include "common/json_util.h"
#include "providers/gemini.h"

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

Result<ParsedRequest> parse_request(std::string_view path, std::string_view body) {
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

// ---------------------------------------------------------------------------------------------
// Native provider formats: OpenAI Responses, Anthropic Messages, Gemini generateContent (and chat
// completions with tools). The same latency models, capacities and fault injection as the chat
// path; the answers are built with the gateway's own codecs of each format.

enum class NativeFormat { kChatTools, kResponses, kMessages, kGemini };

struct NativeRequest {
  NativeFormat format = NativeFormat::kMessages;
  std::string model;
  bool stream = false;
  bool include_usage = false;
  bool count_tokens = false;
  std::int64_t max_tokens = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t candidates = 1;  // Gemini's candidateCount
  bool call_tool = false;
  std::string tool_name;
  bool cache_marked = false;
  api::ResponseMeta meta;
};

// Which native API a path is; the Gemini model comes from the path.
bool native_route(std::string_view path, std::string_view body, NativeFormat& f, std::string& model,
                  bool& stream, bool& count) {
  count = false;
  if (path == "/v1/responses") {
    f = NativeFormat::kResponses;
  } else if (path == "/v1/messages" || path == "/v1/messages/count_tokens") {
    f = NativeFormat::kMessages;
    count = path.ends_with("/count_tokens");
  } else if (path.starts_with("/v1beta/models/")) {
    auto rest = path.substr(15);
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) return false;
    auto method = rest.substr(colon + 1);
    if (method != "generateContent" && method != "streamGenerateContent") return false;
    f = NativeFormat::kGemini;
    model = std::string(rest.substr(0, colon));
    stream = method == "streamGenerateContent";
  } else if (path.starts_with("/openai/deployments/") && path.ends_with("/chat/completions")) {
    f = NativeFormat::kChatTools;  // Azure OpenAI: the deployment in the path
  } else if (path == "/v1/chat/completions" && body.find("\"tools\"") != std::string::npos) {
    f = NativeFormat::kChatTools;
  } else {
    return false;
  }
  return true;
}

Response native_error(NativeFormat f, int status, std::string_view message, double retry_after) {
  Response r;
  if (f == NativeFormat::kMessages) {
    r = Response::json(status == 503 ? 529 : status, api::anthropic_error_body(status, message));
  } else if (f == NativeFormat::kGemini) {
    const std::string_view gstatus = status == 429   ? "RESOURCE_EXHAUSTED"
                                     : status == 400 ? "INVALID_ARGUMENT"
                                     : status == 503 ? "UNAVAILABLE"
                                                     : "INTERNAL";
    JsonWriter j;
    j.begin_object()
        .key("error")
        .begin_object()
        .key("code")
        .value(status)
        .key("message")
        .value(message)
        .key("status")
        .value(gstatus);
    if (status == 429) {
      j.key("details")
          .begin_array()
          .begin_object()
          .key("@type")
          .value("type.googleapis.com/google.rpc.RetryInfo")
          .key("retryDelay")
          .value(std::to_string(static_cast<long>(std::ceil(retry_after))) + "s")
          .end_object()
          .end_array();
    }
    j.end_object().end_object();
    r = Response::json(status, j.take());
  } else {
    r = error_response(status,
                       status == 429   ? "requests"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error",
                       status == 429 ? "rate_limit_exceeded" : "", message);
  }
  if (retry_after >= 0 && f != NativeFormat::kGemini) {
    r.headers.add("retry-after", std::to_string(static_cast<long>(std::ceil(retry_after))));
  }
  return r;
}

void add_native_ratelimit_headers(NativeFormat f, http::Headers& h, const config::SimModelConfig& m,
                                  std::int64_t req_used, std::int64_t tok_used) {
  if (f == NativeFormat::kGemini) return;  // Gemini reports no rate-limit headers
  if (f != NativeFormat::kMessages) {
    add_ratelimit_headers(h, m, req_used, tok_used);
    return;
  }
  const auto reset_ms = SteadyClock::instance().unix_millis() + 60'000;
  std::time_t t = static_cast<std::time_t>(reset_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char reset[32];
  std::strftime(reset, sizeof reset, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (m.rpm > 0) {
    h.add("anthropic-ratelimit-requests-limit", std::to_string(m.rpm));
    h.add("anthropic-ratelimit-requests-remaining",
          std::to_string(std::max<std::int64_t>(0, m.rpm - req_used)));
    h.add("anthropic-ratelimit-requests-reset", reset);
  }
  if (m.tpm > 0) {
    h.add("anthropic-ratelimit-tokens-limit", std::to_string(m.tpm));
    h.add("anthropic-ratelimit-tokens-remaining",
          std::to_string(std::max<std::int64_t>(0, m.tpm - tok_used)));
    h.add("anthropic-ratelimit-tokens-reset", reset);
  }
}

// A Gemini body, read as far as the simulator needs it.
Result<api::Request> parse_gemini_body(std::string_view body) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return make_error(400, "invalid_request_error", "", "Invalid JSON payload received.");
  }
  api::Request r;
  simdjson::dom::array contents;
  if (doc["contents"].get(contents) != simdjson::SUCCESS) {
    return make_error(400, "invalid_request_error", "", "contents is not specified");
  }
  for (auto c : contents) {
    std::string_view role;
    if (c["role"].get(role) != simdjson::SUCCESS) role = "user";
    api::Message m{role == "model" ? api::Role::kAssistant : api::Role::kUser, {}};
    simdjson::dom::array parts;
    if (c["parts"].get(parts) != simdjson::SUCCESS) {
      return make_error(400, "invalid_request_error", "", "contents.parts must not be empty");
    }
    for (auto p : parts) {
      std::string_view text;
      if (p["text"].get(text) == simdjson::SUCCESS) {
        r.text_chars += text.size();
        m.parts.push_back(api::Part{.kind = api::Part::Kind::kText, .text = std::string(text)});
      }
      simdjson::dom::element e;
      if (p["functionResponse"].get(e) == simdjson::SUCCESS) {
        m.parts.push_back(api::Part{.kind = api::Part::Kind::kToolResult});
        r.text_chars += simdjson::minify(e).size();
      }
      if (p["functionCall"].get(e) == simdjson::SUCCESS) r.text_chars += simdjson::minify(e).size();
    }
    r.messages.push_back(std::move(m));
  }
  simdjson::dom::array sys;
  if (doc["systemInstruction"]["parts"].get(sys) == simdjson::SUCCESS) {
    for (auto p : sys) {
      std::string_view text;
      if (p["text"].get(text) == simdjson::SUCCESS) r.text_chars += text.size();
    }
  }
  simdjson::dom::array tools;
  if (doc["tools"].get(tools) == simdjson::SUCCESS) {
    for (auto t : tools) {
      simdjson::dom::array decls;
      if (t["functionDeclarations"].get(decls) != simdjson::SUCCESS) continue;
      for (auto d : decls) {
        std::string_view name;
        if (d["name"].get(name) == simdjson::SUCCESS)
          r.tools.push_back(api::Tool{.name = std::string(name)});
      }
    }
  }
  std::string_view mode;
  if (doc["toolConfig"]["functionCallingConfig"]["mode"].get(mode) == simdjson::SUCCESS &&
      mode == "NONE") {
    r.tool_choice.mode = api::ToolChoice::Mode::kNone;
  }
  std::int64_t mt = 0;
  if (doc["generationConfig"]["maxOutputTokens"].get(mt) == simdjson::SUCCESS) r.max_tokens = mt;
  std::int64_t candidates = 1;
  if (doc["generationConfig"]["candidateCount"].get(candidates) == simdjson::SUCCESS &&
      candidates > 1) {
    r.n = std::min<std::int64_t>(candidates, 8);  // Gemini's own limit is 8
  }
  return r;
}

Result<NativeRequest> parse_native(NativeFormat f, const Request& req,
                                   const std::string& model_in_path, bool stream, bool count) {
  Result<api::Request> decoded = make_error(400, "invalid_request_error", "", "unreachable");
  switch (f) {
    case NativeFormat::kMessages:
      if (req.header("anthropic-version").empty()) {
        return make_error(400, "invalid_request_error", "",
                          "anthropic-version: header is required");
      }
      decoded = api::decode_messages_request(req.body, !count);
      break;
    case NativeFormat::kResponses:
      decoded = api::decode_responses_request(req.body);
      break;
    case NativeFormat::kChatTools:
      if (req.path().starts_with("/openai/") &&
          req.target.find("api-version=") == std::string_view::npos) {
        return make_error(404, "invalid_request_error", "", "api-version is required");
      }
      decoded = api::decode_chat_request(req.body);
      break;
    case NativeFormat::kGemini:
      decoded = parse_gemini_body(req.body);
      break;
  }
  if (!decoded) return decoded.error();
  auto& r = *decoded;
  NativeRequest n;
  n.format = f;
  n.count_tokens = count;
  n.model = f == NativeFormat::kGemini ? model_in_path : r.model;
  n.stream = f == NativeFormat::kGemini ? stream : r.stream;
  n.include_usage = r.stream_usage;
  n.max_tokens = r.max_tokens;
  if (f == NativeFormat::kGemini) n.candidates = r.n;
  n.prompt_tokens =
      estimate_text_tokens(r.text_chars) + 4 * static_cast<std::int64_t>(r.messages.size()) + 3;
  bool answered = false;
  if (!r.messages.empty()) {
    for (const auto& p : r.messages.back().parts) {
      answered = answered || p.kind == api::Part::Kind::kToolResult;
    }
  }
  if (!r.tools.empty() && r.tool_choice.mode != api::ToolChoice::Mode::kNone && !answered) {
    n.call_tool = true;
    n.tool_name = r.tool_choice.mode == api::ToolChoice::Mode::kNamed ? r.tool_choice.name
                                                                      : r.tools.front().name;
  }
  for (const auto& p : r.system) n.cache_marked = n.cache_marked || !p.cache_control.empty();
  for (const auto& t : r.tools) n.cache_marked = n.cache_marked || !t.cache_control.empty();
  for (const auto& m : r.messages) {
    for (const auto& p : m.parts) n.cache_marked = n.cache_marked || !p.cache_control.empty();
  }
  if (f == NativeFormat::kResponses) n.meta = api::response_meta(r, n.model);
  return n;
}

// Deterministic cache accounting: Anthropic reads half of a prompt that carries cache_control
// markers from its cache and writes a quarter; the others cache half of a prompt of 1,024 tokens
// or more (OpenAI's and Gemini's implicit caching threshold).
api::Usage native_usage(const NativeRequest& n, std::int64_t completion) {
  api::Usage u;
  u.present = true;
  u.prompt_tokens = n.prompt_tokens;
  u.completion_tokens = completion;
  if (n.format == NativeFormat::kMessages) {
    if (n.cache_marked) {
      u.cached_tokens = n.prompt_tokens / 2;
      u.cache_write_tokens = n.prompt_tokens / 4;
    }
  } else if (n.prompt_tokens >= 1024) {
    u.cached_tokens = n.prompt_tokens / 2;
  }
  return u;
}

std::unique_ptr<api::StreamEncoder> native_encoder(const NativeRequest& n) {
  switch (n.format) {
    case NativeFormat::kMessages:
      return api::make_messages_stream_encoder(n.model);
    case NativeFormat::kResponses:
      return std::make_unique<api::ResponsesStreamEncoder>(n.meta);
    default:
      return api::make_chat_stream_encoder(n.model, n.include_usage);
  }
}

std::string native_body(const NativeRequest& n, const api::Response& r) {
  switch (n.format) {
    case NativeFormat::kMessages:
      return api::encode_messages_response(r, n.model);
    case NativeFormat::kResponses:
      return api::encode_responses_response(r, n.meta);
    case NativeFormat::kGemini:
      return providers::encode_gemini_response(r, n.model);
    case NativeFormat::kChatTools:
      return api::encode_chat_response(r, n.model);
  }
  return {};
}

asio::awaitable<void> handle_native(std::shared_ptr<Simulator::State> st, Request& req,
                                    ResponseWriter& w, NativeFormat fmt, std::string path_model,
                                    bool path_stream, bool count) {
  if (req.method != "POST") {
    co_await w.send(native_error(fmt, 405, "Use POST", -1));
    co_return;
  }
  st->requests.fetch_add(1);
  {
    std::string rec = "{\"path\":" + json_string(req.target) + ",\"headers\":{";
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
  auto parsed = parse_native(fmt, req, path_model, path_stream, count);
  if (!parsed) {
    st->errors.fetch_add(1);
    co_await w.send(native_error(fmt, parsed.error().status, parsed.error().message, -1));
    co_return;
  }
  auto& n = *parsed;
  if (n.count_tokens) {
    co_await w.send(
        Response::json(200, "{\"input_tokens\":" + std::to_string(n.prompt_tokens) + "}"));
    co_return;
  }
  const auto& mc = st->model_config(n.model);
  const Control ctl = st->get_control();
  const double scale = st->cfg.zero_latency ? 0.0 : ctl.latency_scale;
  std::int64_t completion = n.max_tokens <= 0 ? mc.completion_tokens
                            : st->cfg.max_tokens_is_limit
                                ? std::min(n.max_tokens, mc.completion_tokens)
                                : n.max_tokens;
  bool truncated =
      n.max_tokens > 0 && (!st->cfg.max_tokens_is_limit || n.max_tokens < mc.completion_tokens);
  if (n.call_tool) {
    completion = 12;
    truncated = false;
  }
  if (n.prompt_tokens > mc.context_window) {
    st->errors.fetch_add(1);
    co_await w.send(native_error(fmt, 400,
                                 "prompt is too long: the model's maximum context length is " +
                                     std::to_string(mc.context_window) +
                                     " tokens (context exceeded)",
                                 -1));
    co_return;
  }
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
    co_await w.send(native_error(fmt, 429, "Rate limit reached (simulated)", ra));
    co_return;
  }
  if (fault == "500" || fault == "503" || fault == "502") {
    st->errors.fetch_add(1);
    const int status = fault == "500" ? 500 : (fault == "502" ? 502 : 503);
    co_await w.send(native_error(
        fmt, status,
        status == 503 ? "Overloaded (simulated)" : "The server had an error (simulated)",
        status == 503 ? 1.0 : -1.0));
    co_return;
  }
  ClientWatch cw;
  w.watch_disconnect([&cw] {
    cw.gone = true;
    if (cw.timer) cw.timer->cancel();
  });
  if (fault == "slow_headers") co_await sleep_for(seconds(2) + sample(mc.ttft, 1.0));
  if (fault == "stall") {
    co_await generate_for(cw, seconds(600));
    co_return;
  }
  auto& ms = st->model_state(n.model);
  std::int64_t req_used = 0, tok_used = 0;
  const std::int64_t now_s = SteadyClock::instance().now() / kNanosPerSecond;
  const std::int64_t in_flight = ms.in_flight.fetch_add(1) + 1;
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
    wait_s = ms.window.try_add(now_s, 1, n.prompt_tokens + completion, mc.rpm, mc.tpm, req_used,
                               tok_used);
  }
  if (wait_s > 0) {
    st->rejected.fetch_add(1);
    auto r = native_error(fmt, 429, "Rate limit reached for " + n.model + " (simulated)", wait_s);
    add_native_ratelimit_headers(fmt, r.headers, mc, req_used, tok_used);
    co_await w.send(std::move(r));
    co_return;
  }
  http::Headers h;
  add_native_ratelimit_headers(fmt, h, mc, req_used, tok_used);
  if (auto rid = req.header("x-request-id"); !rid.empty()) h.add("x-request-id", std::string(rid));

  api::Response answer;
  answer.id =
      (fmt == NativeFormat::kMessages ? "msg_sim_" : "sim-") + std::to_string(st->ids.fetch_add(1));
  answer.model = n.model;
  answer.usage = native_usage(n, completion);
  answer.finish = n.call_tool ? api::FinishReason::kToolCalls
                  : truncated ? api::FinishReason::kLength
                              : api::FinishReason::kStop;
  const std::string call_id = (fmt == NativeFormat::kMessages ? "toolu_sim_" : "call_sim_") +
                              std::to_string(st->ids.load());
  const std::string call_args = "{\"query\":\"sim\"}";
  if (n.call_tool) {
    answer.content.push_back(api::Part{.kind = api::Part::Kind::kToolCall,
                                       .id = call_id,
                                       .name = n.tool_name,
                                       .arguments = call_args});
  } else {
    answer.content.push_back(
        api::Part{.kind = api::Part::Kind::kText, .text = completion_text(completion)});
  }
  const bool reset = fault == "reset";
  if (n.candidates > 1) {
    // Every candidate is generated (the same text here) and billed; a stream carries them all in
    // each chunk, each with its index.
    for (std::int64_t i = 1; i < n.candidates; ++i) {
      answer.more_choices.push_back({answer.content, answer.finish});
    }
    answer.usage.completion_tokens = completion * n.candidates;
  }
  if (!n.stream) {
    Nanos total = sample(mc.ttft, scale);
    for (std::int64_t i = 1; i < completion && scale > 0; ++i) total += sample(mc.itl, scale);
    if (!co_await generate_for(cw, total)) {
      st->cancelled.fetch_add(1);
      co_return;
    }
    if (reset) {
      st->resets.fetch_add(1);
      w.abort();
      co_return;
    }
    auto r = Response::json(200, native_body(n, answer));
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
  std::string batch;  // zero-latency mode sends the whole stream in one write
  auto emit = [&](std::string event) -> asio::awaitable<bool> {
    if (scale <= 0) {
      batch += event;
      co_return true;
    }
    co_return co_await w.write_chunk(event);
  };
  auto enc = fmt == NativeFormat::kGemini ? nullptr : native_encoder(n);
  using K = api::StreamEvent::Kind;
  std::string out;
  if (enc) {
    api::StreamEvent start{.kind = K::kStart, .id = answer.id};
    if (fmt == NativeFormat::kMessages) {
      start.usage = answer.usage;  // Anthropic reports the input side in message_start
      start.usage.completion_tokens = 1;
    }
    enc->on_event(start, out);
  }
  const std::int64_t pieces = n.call_tool ? 2 : completion;
  const std::int64_t reset_at = reset ? std::max<std::int64_t>(1, pieces / 2) : -1;
  for (std::int64_t i = 0; i < pieces; ++i) {
    if (i > 0) co_await sleep_for(sample(mc.itl, scale));
    if (i == reset_at) {
      if (!batch.empty()) co_await w.write_chunk(batch);
      st->resets.fetch_add(1);
      w.abort();
      co_return;
    }
    if (n.call_tool) {
      if (enc && i == 0) {
        enc->on_event(
            api::StreamEvent{
                .kind = K::kToolCallStart, .index = 0, .id = call_id, .name = n.tool_name},
            out);
        enc->on_event(
            api::StreamEvent{.kind = K::kToolArgsDelta, .index = 0, .text = call_args.substr(0, 9)},
            out);
      } else if (enc) {
        enc->on_event(
            api::StreamEvent{.kind = K::kToolArgsDelta, .index = 0, .text = call_args.substr(9)},
            out);
      }
    } else {
      std::string word(kWords[static_cast<std::size_t>(i) % kWords.size()]);
      if (i) word.insert(word.begin(), ' ');
      if (enc) {
        enc->on_event(api::StreamEvent{.kind = K::kTextDelta, .text = word}, out);
      } else if (i + 1 < pieces) {
        out = "data: " + providers::encode_gemini_chunk(word, nullptr, n.model, n.candidates) +
              "\r\n\r\n";
      } else {
        api::Response last = answer;
        last.content.clear();
        out = "data: " + providers::encode_gemini_chunk(word, &last, n.model, n.candidates) +
              "\r\n\r\n";
      }
    }
    if (!out.empty() && !co_await emit(std::move(out))) {
      st->cancelled.fetch_add(1);
      co_return;
    }
    out.clear();
  }
  if (enc) {
    enc->on_event(api::StreamEvent{.kind = K::kFinish, .finish = answer.finish}, out);
    enc->on_event(api::StreamEvent{.kind = K::kUsage, .usage = answer.usage}, out);
    enc->finish(out);
  } else if (n.call_tool || pieces == 0) {
    out =
        "data: " + providers::encode_gemini_chunk("", &answer, n.model, n.candidates) + "\r\n\r\n";
  }
  batch += out;
  guard.release();
  if (!co_await w.write_chunk(batch) || !co_await w.end_stream()) {
    st->cancelled.fetch_add(1);
    co_return;
  }
  st->completed.fetch_add(1);
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
  {
    NativeFormat fmt{};
    std::string native_model;
    bool native_stream = false, count = false;
    if (native_route(path, req.body, fmt, native_model, native_stream, count)) {
      co_await handle_native(st, req, w, fmt, std::move(native_model), native_stream, count);
      co_return;
    }
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
