#include "gateway/pipeline.h"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <random>

#include "common/clock.h"
#include "common/json_util.h"
#include "config/config.h"
#include "http/client.h"
#include "http/sse.h"
#include "providers/openai.h"

namespace bw::gateway {

namespace asio = boost::asio;
using http::Request;
using http::Response;
using http::ResponseWriter;
using providers::Endpoint;

namespace {

// ---------------------------------------------------------------------------------------------
// Per-request context: everything the phases share, and what the access log records at the end.
struct Ctx {
  Ctx(Shared& s, std::shared_ptr<const Runtime> r, Request& q, ResponseWriter& wr)
      : sh(s), rt(std::move(r)), req(q), w(wr) {}
  Shared& sh;
  std::shared_ptr<const Runtime> rt;
  Request& req;
  ResponseWriter& w;
  Nanos start = 0;
  std::string request_id;
  std::string client_ip;
  const KeyInfo* key = nullptr;
  providers::LlmRequest llm;
  const ModelGroup* group = nullptr;
  // Outcome, for the access log.
  int status = 0;
  std::string model_served;
  std::string upstream;
  std::string error_code;
  Nanos ttft = -1;
  providers::Usage usage;
  std::size_t bytes_out = 0;
  std::int64_t attempts = 0;
  bool cancelled = false;
};

std::string new_request_id() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "req_";
  auto a = rng(), b = rng();
  for (int i = 0; i < 16; ++i) id.push_back(kHex[(a >> (i * 4)) & 0xf]);
  for (int i = 0; i < 8; ++i) id.push_back(kHex[(b >> (i * 4)) & 0xf]);
  return id;
}

// A client-supplied x-request-id is kept if it is short and printable; else one is generated.
std::string request_id_for(const Request& req) {
  auto id = req.header("x-request-id");
  if (!id.empty() && id.size() <= 128 &&
      std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
    return std::string(id);
  }
  return new_request_id();
}

Response error_response(const Ctx& c, const Error& e) {
  auto r = Response::json(e.status, openai_error_body(e.message, e.type, e.code, e.param));
  r.headers.add("x-request-id", c.request_id);
  if (e.retry_after_s >= 0) {
    r.headers.add("retry-after",
                  std::to_string(static_cast<long>(std::ceil(std::max(e.retry_after_s, 0.0)))));
  }
  return r;
}

asio::awaitable<void> reply_error(Ctx& c, const Error& e) {
  c.status = e.status;
  if (c.error_code.empty()) c.error_code = e.code.empty() ? e.type : e.code;
  auto r = error_response(c, e);
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

void write_access_log(Ctx& c) {
  AccessRecord r;
  r.request_id = c.request_id;
  r.key_id = c.key ? std::string_view(c.key->cfg->name) : std::string_view{};
  r.method = c.req.method;
  r.path = c.req.path();
  r.client_ip = c.client_ip;
  r.model_requested = c.llm.model;
  r.model_served = c.model_served;
  r.upstream = c.upstream;
  r.error_code = c.error_code;
  r.status = c.status;
  r.stream = c.llm.stream;
  r.cancelled = c.cancelled;
  const Nanos now = SteadyClock::instance().now();
  r.latency_ms = static_cast<double>(now - c.start) / 1e6;
  r.ttft_ms = c.ttft >= 0 ? static_cast<double>(c.ttft) / 1e6 : -1;
  r.prompt_tokens = c.usage.prompt_tokens;
  r.completion_tokens = c.usage.completion_tokens;
  r.attempts = c.attempts;
  r.bytes_in = c.req.body.size();
  r.bytes_out = c.bytes_out;
  c.sh.access_log->log(r);
}

// ---------------------------------------------------------------------------------------------
// Phase 1: authenticate. The presented key is hashed and looked up by hash; the stored and
// computed hashes are compared in constant time.
Result<const KeyInfo*> authenticate(const Runtime& rt, const Request& req) {
  std::string_view presented;
  auto auth = req.header("authorization");
  if (auth.size() > 7 && http::iequals(auth.substr(0, 7), "bearer ")) {
    presented = auth.substr(7);
  } else if (auto k = req.header("x-api-key"); !k.empty()) {
    presented = k;
  }
  while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
  if (presented.empty()) {
    return make_error(401, "invalid_request_error", "invalid_api_key",
                      "You didn't provide an API key. Provide it in the Authorization header "
                      "(Authorization: Bearer YOUR_KEY) or in x-api-key.");
  }
  const std::string hash = config::sha256_hex(presented);
  const KeyInfo* key = rt.key_by_hash(hash);
  if (!key || CRYPTO_memcmp(key->cfg->secret_hash.data(), hash.data(), hash.size()) != 0) {
    return make_error(401, "invalid_request_error", "invalid_api_key",
                      "Incorrect API key provided.");
  }
  return key;
}

bool admin_authorized(const Runtime& rt, const Request& req) {
  const auto& want = rt.config().admin_key_hash;
  if (want.empty()) return false;
  std::string_view presented;
  auto auth = req.header("authorization");
  if (auth.size() > 7 && http::iequals(auth.substr(0, 7), "bearer ")) presented = auth.substr(7);
  if (presented.empty()) presented = req.header("x-api-key");
  if (presented.empty()) return false;
  const std::string hash = config::sha256_hex(presented);
  return hash.size() == want.size() &&
         CRYPTO_memcmp(hash.data(), want.data(), hash.size()) == 0;
}

// Phase 2: resolve the public model name to its group, and check the key may use it.
Result<const ModelGroup*> resolve(const Runtime& rt, const KeyInfo& key, const std::string& model) {
  const ModelGroup* g = rt.group(model);
  if (!g) {
    return make_error(404, "invalid_request_error", "model_not_found",
                      "The model '" + model + "' does not exist or you do not have access to it.",
                      "model");
  }
  const auto& allowed = key.cfg->allowed_models;
  if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), model) == allowed.end()) {
    return make_error(403, "permission_error", "model_not_allowed",
                      "This API key may not use the model '" + model + "'.", "model");
  }
  return g;
}

const std::string& target_for(const Deployment& d, Endpoint e) {
  switch (e) {
    case Endpoint::kChat: return d.chat_target;
    case Endpoint::kCompletions: return d.completions_target;
    case Endpoint::kEmbeddings: return d.embeddings_target;
  }
  return d.chat_target;
}

// Request headers that are forwarded to a provider; everything else (the client's credentials,
// hop-by-hop headers, gateway controls such as x-priority) stays here.
constexpr std::array<std::string_view, 3> kForwardRequestHeaders = {"user-agent", "openai-beta",
                                                                    "accept-language"};
// Response headers passed back from a provider.
constexpr std::array<std::string_view, 3> kForwardResponseHeaders = {
    "openai-processing-ms", "openai-version", "x-ratelimit-limit-requests-provider"};

http::OutboundRequest build_upstream_request(const Ctx& c, const Deployment& d,
                                             std::string body) {
  http::OutboundRequest out;
  out.method = "POST";
  out.target = target_for(d, c.llm.endpoint);
  out.headers.add("content-type", "application/json");
  out.headers.add("accept", c.llm.stream ? "text/event-stream" : "application/json");
  out.headers.add("x-request-id", c.request_id);
  if (!d.provider->authorization.empty()) {
    out.headers.add("authorization", d.provider->authorization);
  }
  for (auto name : kForwardRequestHeaders) {
    if (auto v = c.req.header(name); !v.empty()) out.headers.add(std::string(name), std::string(v));
  }
  out.body = std::move(body);
  return out;
}

void copy_response_headers(const http::Headers& from, http::Headers& to) {
  for (const auto& [k, v] : from.items()) {
    for (auto name : kForwardResponseHeaders) {
      if (http::iequals(k, name)) to.add(k, v);
    }
  }
}

// Phase 8 for a stream: pass events through one by one, counting usage on the way. The extra
// usage chunk is only shown to a client that asked for it.
asio::awaitable<void> relay_stream(Ctx& c, http::UpstreamResponse& up, http::Headers headers) {
  headers.set("content-type", "text/event-stream");
  headers.set("cache-control", "no-cache");
  if (!co_await c.w.begin_stream(200, headers)) {
    c.cancelled = true;
    up.abort();
    co_return;
  }
  c.status = 200;
  http::SseSplitter splitter;
  std::string out, scratch;
  std::size_t text_chars = 0, text_chunks = 0;
  bool saw_done = false;
  for (;;) {
    auto piece = co_await up.read_some();
    if (!piece) {
      // The upstream failed after bytes reached the client: no retry is possible. End the stream
      // cleanly with an error event so the client sees why it stopped.
      c.error_code = piece.error().code;
      std::string ev = "data: " + openai_error_body("The upstream stream failed: " +
                                                        piece.error().message,
                                                    "upstream_error", piece.error().code) +
                       "\n\n";
      c.bytes_out += ev.size();
      co_await c.w.write_chunk(ev);
      break;
    }
    if (piece->empty()) break;
    if (c.ttft < 0) c.ttft = SteadyClock::instance().now() - c.start;
    if (!splitter.feed(*piece)) {
      c.error_code = "sse_event_too_large";
      up.abort();
      break;
    }
    out.clear();
    std::string_view event;
    while (splitter.next(event)) {
      auto data = http::sse_data(event, scratch);
      auto info = providers::inspect_chunk(data);
      if (info.done) saw_done = true;
      if (info.has_text) {
        text_chars += info.text_chars;
        ++text_chunks;
      }
      if (info.usage.present) c.usage = info.usage;
      if (info.usage_only && !c.llm.client_wants_usage) continue;
      out.append(event);
    }
    splitter.compact();
    if (!out.empty()) {
      c.bytes_out += out.size();
      if (!co_await c.w.write_chunk(out)) {
        // The client went away: drop the upstream connection so the provider stops generating.
        c.cancelled = true;
        up.abort();
        break;
      }
    }
  }
  if (!c.usage.present) {
    // An abandoned or broken stream is charged for what was generated up to that point.
    c.usage.prompt_tokens = providers::estimate_prompt_tokens(c.llm);
    c.usage.completion_tokens =
        std::max<std::int64_t>(static_cast<std::int64_t>(text_chunks),
                               static_cast<std::int64_t>((text_chars + 3) / 4));
  }
  (void)saw_done;
  if (!c.cancelled) co_await c.w.end_stream();
}

// Phases 7 and 8: send to a deployment and answer. Deployments are tried in turn on connect
// errors; once the upstream has answered, its answer (success or error) goes to the client.
asio::awaitable<void> forward(Ctx& c) {
  const auto& deployments = c.group->deployments;
  thread_local std::size_t rr = 0;
  const std::size_t first = rr++;
  auto body = providers::rewrite_request(c.req.body, deployments[first % deployments.size()].cfg->model,
                                         c.llm.stream, 0);
  Error last = make_error(502, "upstream_error", "upstream_unavailable", "No upstream answered.");
  for (std::size_t i = 0; i < deployments.size(); ++i) {
    const Deployment& d = deployments[(first + i) % deployments.size()];
    if (i > 0) {
      body = providers::rewrite_request(c.req.body, d.cfg->model, c.llm.stream, 0);
    }
    if (!body) {
      co_await reply_error(c, body.error());
      co_return;
    }
    ++c.attempts;
    c.upstream = d.cfg->id;
    c.model_served = c.group->cfg->name;
    auto& pool = http::ClientPool::for_this_thread();
    auto resp = co_await pool.send(d.provider->endpoint,
                                   build_upstream_request(c, d, body.value()),
                                   d.provider->cfg->timeouts);
    if (!resp) {
      last = resp.error();
      if (resp.error().code == http::kUpstreamConnectError) continue;
      break;
    }
    auto& up = resp.value();
    http::Headers headers;
    headers.add("x-request-id", c.request_id);
    headers.add("x-bellwether-model", c.model_served);
    copy_response_headers(up.headers(), headers);
    const bool is_sse = up.headers().get("content-type").starts_with("text/event-stream");
    if (up.status() == 200 && c.llm.stream && is_sse) {
      co_await relay_stream(c, up, std::move(headers));
      co_return;
    }
    auto all = co_await up.read_all(c.rt->config().max_upstream_response_bytes);
    if (!all) {
      last = all.error();
      break;
    }
    if (c.ttft < 0) c.ttft = SteadyClock::instance().now() - c.start;
    if (up.status() == 200) c.usage = providers::extract_usage(*all);
    Response r;
    r.status = up.status();
    r.headers = std::move(headers);
    auto ct = up.headers().get("content-type");
    r.headers.set("content-type", ct.empty() ? "application/json" : std::string(ct));
    if (auto ra = up.headers().get("retry-after"); !ra.empty() && up.status() >= 400) {
      r.headers.add("retry-after", std::string(ra));
    }
    r.body = std::move(all.value());
    c.status = r.status;
    if (r.status >= 400) c.error_code = "upstream_" + std::to_string(r.status);
    c.bytes_out += r.body.size();
    co_await c.w.send(std::move(r));
    co_return;
  }
  co_await reply_error(c, last);
}

// ---------------------------------------------------------------------------------------------
// The pipeline of one LLM request, in phase order.
asio::awaitable<void> handle_llm(Ctx& c, Endpoint endpoint) {
  // 1 authenticate
  auto key = authenticate(*c.rt, c.req);
  if (!key) co_return co_await reply_error(c, key.error());
  c.key = *key;

  auto parsed = providers::parse_request(endpoint, c.req.body);
  if (!parsed) co_return co_await reply_error(c, parsed.error());
  c.llm = std::move(parsed.value());

  // 2 resolve
  auto group = resolve(*c.rt, *c.key, c.llm.model);
  if (!group) co_return co_await reply_error(c, group.error());
  c.group = *group;

  // 3 cache, 4 rate limit, 5 cost guard, 6 admission: see the modules wired in gateway.cc.

  // 7 forward and 8 respond
  co_await forward(c);
}

asio::awaitable<void> send_json(Ctx& c, int status, std::string body) {
  auto r = Response::json(status, std::move(body));
  r.headers.add("x-request-id", c.request_id);
  c.status = status;
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

struct Route {
  std::string_view path;
  std::string_view method;
};
constexpr std::array<Route, 9> kRoutes = {{{"/v1/chat/completions", "POST"},
                                           {"/v1/completions", "POST"},
                                           {"/v1/embeddings", "POST"},
                                           {"/v1/models", "GET"},
                                           {"/healthz", "GET"},
                                           {"/readyz", "GET"},
                                           {"/v1/metrics/queue", "GET"},
                                           {"/metrics", "GET"},
                                           {"/admin/status", "GET"}}};

}  // namespace

asio::awaitable<void> handle_request(Shared& sh, Request& req, ResponseWriter& w,
                                     bool admin_listener) {
  Ctx c{sh, sh.runtime->load(), req, w};
  c.start = SteadyClock::instance().now();
  c.request_id = request_id_for(req);
  c.client_ip = req.peer_ip;
  sh.requests.fetch_add(1, std::memory_order_relaxed);
  const auto path = req.path();
  const auto& cfg = c.rt->config();
  const bool admin_here = admin_listener || cfg.admin_listen.empty();

  const Route* route = nullptr;
  bool path_known = false;
  for (const auto& r : kRoutes) {
    if (r.path == path) {
      path_known = true;
      if (r.method == req.method) route = &r;
    }
  }
  if (admin_listener && !path.starts_with("/admin/") && path != "/healthz") route = nullptr;
  if (path.starts_with("/admin/") && !admin_here) route = nullptr, path_known = false;

  if (!route) {
    if (path_known) {
      auto r = error_response(c, make_error(405, "invalid_request_error", "method_not_allowed",
                                            "Method " + std::string(req.method) +
                                                " is not allowed on " + std::string(path) + "."));
      for (const auto& rt : kRoutes) {
        if (rt.path == path) r.headers.add("allow", std::string(rt.method));
      }
      c.status = 405;
      co_await w.send(std::move(r));
    } else {
      co_await reply_error(c, make_error(404, "invalid_request_error", "unknown_url",
                                         "Unknown request URL: " + std::string(req.method) + " " +
                                             std::string(path) + "."));
    }
  } else if (path == "/healthz") {
    co_await send_json(c, 200, "{\"status\":\"ok\"}");
  } else if (path == "/readyz") {
    if (sh.draining.load()) {
      co_await send_json(c, 503, "{\"status\":\"draining\"}");
    } else {
      co_await send_json(c, 200, "{\"status\":\"ready\"}");
    }
  } else if (path == "/v1/models") {
    auto key = authenticate(*c.rt, req);
    if (!key) {
      co_await reply_error(c, key.error());
    } else {
      co_await send_json(c, 200, c.rt->models_json());
    }
  } else if (path == "/v1/chat/completions") {
    co_await handle_llm(c, Endpoint::kChat);
  } else if (path == "/v1/completions") {
    co_await handle_llm(c, Endpoint::kCompletions);
  } else if (path == "/v1/embeddings") {
    co_await handle_llm(c, Endpoint::kEmbeddings);
  } else if (path.starts_with("/admin/")) {
    if (!admin_authorized(*c.rt, req)) {
      co_await reply_error(c, make_error(401, "invalid_request_error", "invalid_admin_key",
                                         "The admin API needs the admin (master) key."));
    } else {
      JsonWriter j;
      j.begin_object()
          .key("config").value(cfg.source)
          .key("requests").value(sh.requests.load())
          .key("model_groups").value(static_cast<std::int64_t>(cfg.model_groups.size()))
          .key("keys").value(static_cast<std::int64_t>(cfg.keys.size()))
          .end_object();
      co_await send_json(c, 200, j.take());
    }
  } else {
    co_await reply_error(c, make_error(404, "invalid_request_error", "unknown_url",
                                       "Not available yet: " + std::string(path)));
  }
  // 9 settle: always runs, also after errors and disconnects.
  write_access_log(c);
}

}  // namespace bw::gateway
