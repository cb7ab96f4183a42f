// Phase 4: the response cache (docs/cache.md). The exact key is a hash of the scope (tenant by
// default), the public model, the inbound API, stream or not, and the canonical body. A miss may
// wait for an identical request already in flight (single-flight, buffered only); a semantic
// group also embeds the prompt through its embeddings model group (a request of its own:
// authenticated, limited and billed as the caller) and looks for a close enough earlier prompt
// with the same parameters. A hit is served after the rate limit counted it, at $0 and with no
// tokens reserved; a miss's answer is captured on its way to the client and stored by finish,
// a stream only once it ended normally.
#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <boost/asio/this_coro.hpp>
#include <cmath>
#include <cstring>

#include "cache/key.h"
#include "cache/redis_cache.h"
#include "common/json_util.h"
#include "gateway/phases.h"
#include "gateway/pipeline.h"
#include "gateway/translate.h"
#include "http/sse.h"

namespace bw::gateway {

namespace asio = boost::asio;
using Status = CacheState::Status;

std::string_view CacheState::status_text() const {
  switch (status) {
    case Status::kOff:
      return "";
    case Status::kBypass:
      return "bypass";
    case Status::kMiss:
      return "miss";
    case Status::kHit:
      return "hit";
  }
  return "";
}

namespace {

config::CacheModeConfig effective(const config::ModelGroupConfig& g, const config::KeyConfig& k) {
  auto c = g.cache;
  const auto& o = k.cache;
  if (o.has_mode && (o.value.mode == "off" || c.mode != "off")) {
    // A key can turn the cache off, or down from semantic to exact, never on for a group
    // whose operator left it off.
    if (o.value.mode == "off" || o.value.mode == "exact") c.mode = o.value.mode;
  }
  if (o.has_ttl) c.ttl = o.value.ttl;
  if (o.has_max_entry_bytes) c.max_entry_bytes = o.value.max_entry_bytes;
  if (o.has_eligibility) c.eligibility = o.value.eligibility;
  if (o.has_scope) c.scope = o.value.scope;
  return c;
}

bool has_token(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    auto comma = list.find(',');
    auto item = list.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (http::iequals(item, token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

std::string_view api_of(const Ctx& c) {
  return c.req.path();
}

bool semantic_mode(const Ctx& c) {
  return c.cache->cfg.mode == "semantic" && c.llm.endpoint != providers::Endpoint::kEmbeddings &&
         c.sh.semantic != nullptr;
}

// A ResponseWriter that keeps the answer of an internal request (the prompt's embedding).
class CaptureWriter final : public http::ResponseWriter {
 public:
  int status = 0;
  std::string body;
  asio::awaitable<bool> send(http::Response r) override {
    status = r.status;
    body = std::move(r.body);
    co_return true;
  }
  asio::awaitable<bool> begin_stream(int s, const http::Headers&) override {
    status = s;
    co_return true;
  }
  asio::awaitable<bool> write_chunk(std::string_view d) override {
    body.append(d);
    co_return true;
  }
  asio::awaitable<bool> end_stream() override { co_return true; }
  bool started() const override { return status != 0; }
  void close_after() override {}
  void abort() override {}
};

std::vector<float> parse_embedding(std::string_view body) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::vector<float> v;
  if (parser.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS) return v;
  simdjson::dom::array arr;
  if (doc["data"].at(0)["embedding"].get(arr) != simdjson::SUCCESS) return v;
  for (auto x : arr) {
    double d = 0;
    if (x.get(d) != simdjson::SUCCESS) return {};
    v.push_back(static_cast<float>(d));
  }
  return v;
}

// The prompt's embedding through the configured embeddings group, as the caller.
asio::awaitable<std::vector<float>> embed(Ctx& c, const std::string& text) {
  http::Request er;
  er.method = "POST";
  er.target = "/v1/embeddings";
  std::string body = "{\"model\":";
  append_json_string(body, c.cache->cfg.embeddings_model);
  body += ",\"input\":";
  append_json_string(body, text);
  body += "}";
  er.body = std::move(body);
  er.peer_ip = c.req.peer_ip;
  for (auto name : {"authorization", "x-api-key", "x-priority"}) {
    if (auto v = c.req.header(name); !v.empty()) er.headers.emplace_back(name, v);
  }
  CaptureWriter w;
  co_await handle_request(c.sh, er, w, false);
  if (w.status != 200) co_return std::vector<float>{};
  co_return parse_embedding(w.body);
}

std::string semantic_record(const std::string& partition, const std::vector<float>& v) {
  std::string out;
  const std::uint64_t n = partition.size();
  out.append(reinterpret_cast<const char*>(&n), sizeof n);
  out.append(partition);
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  return out;
}

}  // namespace

bool semantic_record_parse(std::string_view rec, std::string& partition, std::vector<float>& v) {
  std::uint64_t n = 0;
  if (rec.size() < sizeof n) return false;
  std::memcpy(&n, rec.data(), sizeof n);
  rec.remove_prefix(sizeof n);
  if (n > rec.size() || (rec.size() - n) % sizeof(float) != 0) return false;
  partition.assign(rec.substr(0, n));
  rec.remove_prefix(n);
  v.resize(rec.size() / sizeof(float));
  std::memcpy(v.data(), rec.data(), rec.size());
  return true;
}

std::optional<Verdict> phase_cache::try_now(Ctx& c) {
  if (!c.sh.cache || c.group->cfg->cache.mode == "off") return Ok{};
  auto& cs = c.cache.mut();
  cs.cfg = effective(*c.group->cfg, *c.key->cfg);
  if (cs.cfg.mode == "off") return Ok{};
  cs.status = Status::kBypass;
  // A previous_response_id the store did not expand for this caller (unknown, another owner's, or
  // the caller's response stored by OpenAI) is answered "not found" by forward, or passed to
  // OpenAI's own store: never from the cache, whose scope can be wider than a stored response's
  // owner (`scope: global`).
  if (c.canon && !c.canon->previous_response_id.empty() && !c.history_expanded) return Ok{};
  // The request's own say: no-store = neither read nor write; no-cache = refresh (write only).
  const auto cc = c.req.header("cache-control");
  const auto xb = c.req.header("x-bellwether-cache");
  const bool no_store = has_token(cc, "no-store") || http::iequals(xb, "bypass") ||
                        http::iequals(xb, "off") || http::iequals(xb, "no-store");
  const bool no_cache =
      has_token(cc, "no-cache") || http::iequals(xb, "refresh") || http::iequals(xb, "no-cache");
  if (no_store) return Ok{};
  if (cs.cfg.eligibility == "deterministic" &&
      !cache::deterministic(c.req.body, c.llm.endpoint == providers::Endpoint::kEmbeddings))
    return Ok{};
  auto canonical = cache::canonical_body(c.req.body);
  if (!canonical) return Ok{};
  const auto scope =
      cache::scope_id(*cache::parse_scope(cs.cfg.scope), c.key->cfg->tenant, c.key->cfg->name);
  cs.key = cache::make_key({scope, c.llm.model, api_of(c), c.llm.stream}, *canonical);
  if (c.llm.stream && c.llm.endpoint != providers::Endpoint::kEmbeddings) {
    cs.buffered_key = cache::make_key({scope, c.llm.model, api_of(c), false}, *canonical);
  }
  cs.write = true;
  cs.read = !no_cache;
  cs.status = Status::kMiss;
  if (semantic_mode(c)) {
    auto params = cache::canonical_body(c.req.body, true);
    if (params) {
      cs.partition = cache::make_key({scope, c.llm.model, api_of(c), c.llm.stream}, *params);
    }
  }
  return std::nullopt;
}

namespace {

// The lookup itself: exact, then semantic, then a single-flight join.
asio::awaitable<Verdict> lookup(Ctx& c) {
  auto& cs = c.cache.mut();
  auto& sh = c.sh;
  if (cs.read) {
    auto got = co_await sh.cache->get(cs.key);
    if (got.entry) {
      cs.entry = std::move(got.entry);
      cs.status = Status::kHit;
      co_return Ok{};
    }
    // A stream may be served from the same request's buffered answer, replayed as a stream of
    // the client's API (with its usage).
    if (!cs.buffered_key.empty()) {
      auto buffered = co_await sh.cache->get(cs.buffered_key);
      if (buffered.entry && buffered.entry->kind == cache::Entry::Kind::kBody) {
        // With the usage chunk, like a stored stream: serve() drops it for a chat client that
        // did not ask for it.
        auto events = stream_of_answer(c.inbound, buffered.entry->body, c.llm.model, true,
                                       &c.response_meta.get());
        if (events) {
          auto e = std::make_shared<cache::Entry>(*buffered.entry);
          e->kind = cache::Entry::Kind::kStream;
          e->content_type = "text/event-stream";
          e->body = std::move(*events);
          std::shared_ptr<const cache::Entry> entry = std::move(e);
          // Kept under the stream's own key for what is left of the answer's TTL, so that the
          // next streamed hit is a plain replay instead of another decode and encode.
          const Nanos left =
              cs.cfg.ttl - (sh.clock.unix_millis() - entry->created_unix_ms) * kNanosPerMilli;
          if (cs.write && left > 0) co_await sh.cache->put(cs.key, entry, left);
          cs.entry = std::move(entry);
          cs.status = Status::kHit;
          co_return Ok{};
        }
      }
    }
    // Semantic: the nearest earlier prompt with the same model, scope and parameters.
    if (semantic_mode(c) && !cs.partition.empty() &&
        !http::iequals(c.req.header("x-bellwether-cache"), "exact")) {
      const std::string text = cache::prompt_text(c.req.body);
      if (!text.empty()) cs.embedding = co_await embed(c, text);
      if (!cs.embedding.empty()) {
        auto m = sh.semantic->search(cs.embedding, cs.partition,
                                     static_cast<float>(cs.cfg.threshold), c.now());
        if (m) {
          auto near = co_await sh.cache->get(m->key);
          if (near.entry) {
            cs.entry = std::move(near.entry);
            cs.similarity = m->similarity;
            cs.status = Status::kHit;
            co_return Ok{};
          }
        }
      }
    }
    // Single-flight (buffered answers only): wait for an identical request in flight.
    const auto& store_cfg = c.rt->config().cache;
    if (!c.llm.stream && sh.single_flight && store_cfg.single_flight_wait > 0) {
      auto joined = co_await sh.single_flight->join(cs.key, store_cfg.single_flight_wait);
      if (joined.entry) {
        cs.entry = std::move(joined.entry);
        cs.status = Status::kHit;
        co_return Ok{};
      }
      cs.leader = std::move(joined.leader);
    }
  }
  cs.capturing = cs.write;
  co_return Ok{};
}

}  // namespace

asio::awaitable<Verdict> phase_cache::run(Ctx& c) {
  const auto span = tracing::start(c, "bellwether.cache");
  auto v = co_await lookup(c);
  tracing::end_cache(c, span, c.cache->status_text());
  co_return v;
}

void phase_cache::note(Ctx& c) {
  if (c.cache->status == Status::kOff || c.cache->status == Status::kHit) return;
  c.extra.add("x-bellwether-cache", c.cache->status_text());
}

bool phase_cache::hit(const Ctx& c) {
  return c.cache->status == Status::kHit;
}

asio::awaitable<void> phase_cache::serve(Ctx& c) {
  const auto& e = *c.cache->entry;
  auto& m = *c.sh.metrics;
  m.cache_hits.get().inc();
  http::Headers h;
  h.reserve(256 + c.extra.wire().size());
  h.add("x-request-id", c.request_id);
  h.add("x-bellwether-model", e.model_served.empty() ? c.llm.model : e.model_served);
  h.add("x-bellwether-cache", "hit");
  const auto age_ms = std::max<std::int64_t>(0, c.sh.clock.unix_millis() - e.created_unix_ms);
  h.add("x-bellwether-cache-age", std::to_string(age_ms / 1000));
  if (c.cache->similarity >= 0) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4f", static_cast<double>(c.cache->similarity));
    h.add("x-bellwether-cache-similarity", buf);
  }
  h.append(c.extra);
  c.model_served = e.model_served;
  c.status = 200;
  if (e.kind == cache::Entry::Kind::kBody) {
    http::Response r;
    r.status = 200;
    r.headers = std::move(h);
    r.headers.add("content-type", e.content_type.empty() ? std::string_view("application/json")
                                                         : std::string_view(e.content_type));
    r.body = e.body;
    c.ttft = c.now() - c.start;
    c.bytes_out += r.body.size();
    co_await c.w.send(std::move(r));
    co_return;
  }
  // A stored stream: every event as the upstream sent it; the usage chunk only to a client that
  // asked for it, as on a miss.
  h.add("content-type", "text/event-stream");
  h.add("cache-control", "no-cache");
  // The whole replay is at hand: the head, the events and the end leave in one write.
  if (!co_await c.w.begin_stream_held(200, h)) {
    c.cancelled = true;
    co_return;
  }
  // A chat client that did not ask for usage does not get the usage chunk (as on a miss).
  std::string out = c.inbound == api::Format::kChat && !c.llm.client_wants_usage
                        ? without_usage_chunks(e.body)
                        : e.body;
  c.ttft = c.now() - c.start;
  c.bytes_out += out.size();
  if (!co_await c.w.end_stream_with(out)) c.cancelled = true;
}

void phase_cache::capture_body(Ctx& c, int status, std::string_view content_type,
                               std::string_view body) {
  if (!c.cache->capturing) return;
  auto& cs = c.cache.mut();
  cs.capturing = false;
  if (status != 200 || body.size() > cs.cfg.max_entry_bytes) return;
  cs.captured.assign(body);
  cs.content_type.assign(content_type);
  cs.complete = true;
}

void phase_cache::capture_event(Ctx& c, std::string_view event) {
  if (!c.cache->capturing) return;
  auto& cs = c.cache.mut();
  if (cs.captured.size() + event.size() > cs.cfg.max_entry_bytes) {
    cs.capturing = false;  // too large to keep: the stream goes on, uncached
    cs.captured.clear();
    cs.captured.shrink_to_fit();
    return;
  }
  cs.captured.append(event);
}

void phase_cache::capture_stream_end(Ctx& c, bool complete) {
  if (!c.cache->capturing) return;
  auto& cs = c.cache.mut();
  cs.capturing = false;
  // Only a stream that ended with [DONE], uncut and not cancelled, is an answer.
  cs.complete = complete && !c.cancelled && !c.client_gone && c.outcome.none();
  cs.content_type = "text/event-stream";
  if (!cs.complete) cs.captured.clear();
}

bool phase_cache::capturing(const Ctx& c) {
  return c.cache->capturing;
}

std::string phase_cache::without_usage_chunks(std::string_view events) {
  std::string out, scratch;
  out.reserve(events.size());
  http::SseSplitter splitter(events.size() + 1);
  splitter.feed(events);
  std::string_view event;
  while (splitter.next(event)) {
    if (providers::inspect_chunk(http::sse_data(event, scratch)).usage_only) continue;
    out.append(event);
  }
  return out;
}

bool phase_cache::store_needed(const Ctx& c) {
  return c.cache->complete && c.cache->write && c.status == 200;
}

namespace {
// release's work for a request with a cache state, out of line: a request without one (most)
// returns before the registers this saves.
[[gnu::noinline]] void release_state(Ctx& c) {
  c.cache.mut().leader.done(nullptr);
  if (c.cache->status == CacheState::Status::kMiss && c.sh.metrics)
    c.sh.metrics->cache_misses.get().inc();
}
}  // namespace

void phase_cache::release(Ctx& c) {
  if (c.cache.used()) release_state(c);
}

asio::awaitable<void> phase_cache::store(Ctx& c) {
  auto& cs = c.cache.mut();
  auto e = std::make_shared<cache::Entry>();
  e->kind = c.llm.stream ? cache::Entry::Kind::kStream : cache::Entry::Kind::kBody;
  e->content_type = std::move(cs.content_type);
  e->body = std::move(cs.captured);
  e->created_unix_ms = c.sh.clock.unix_millis();
  e->prompt_tokens = c.usage.prompt_tokens;
  e->completion_tokens = c.usage.completion_tokens;
  e->cost_micro = c.cost_micro;
  e->model_served = c.model_served;
  cs.complete = false;
  std::shared_ptr<const cache::Entry> entry = std::move(e);
  cs.leader.done(entry);
  if (c.sh.metrics) c.sh.metrics->cache_misses.get().inc();
  co_await c.sh.cache->put(cs.key, entry, cs.cfg.ttl);
  if (!cs.embedding.empty() && c.sh.semantic) {
    c.sh.semantic->add(cs.embedding, cs.partition, cs.key, c.now() + cs.cfg.ttl);
    if (c.sh.cache->backend() == "redis") {
      // Fleet mode: the vector is kept beside the entry, so that a restarted replica rebuilds
      // its index from Redis (gateway.cc).
      auto* rc = static_cast<cache::RedisCache*>(c.sh.cache.get());
      co_await rc->set_raw("sem:" + cs.key, semantic_record(cs.partition, cs.embedding),
                           cs.cfg.ttl);
    }
  }
}

}  // namespace bw::gateway
