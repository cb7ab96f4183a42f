// The Client engine: one coroutine per call on a per-call strand of the Client's io_context.
// Asio and Beast are confined to this translation unit so the public headers stay light.
#include "bellwether/client.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace bellwether {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr Nanos kNever = std::numeric_limits<Nanos>::max();

Nanos now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::chrono::steady_clock::time_point to_time_point(Nanos ns) {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
}

ClientError make_error(ErrorKind kind, std::string message) {
  ClientError e;
  e.kind = kind;
  e.message = std::move(message);
  return e;
}

struct Url {
  bool tls = false;
  std::string host;
  std::string port;
  std::string prefix;  // path prefix without trailing '/'
};

std::optional<Url> parse_url(const std::string& text) {
  Url url;
  std::string_view rest = text;
  if (rest.starts_with("https://")) {
    url.tls = true;
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else {
    return std::nullopt;
  }
  const auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) url.prefix = std::string(rest.substr(slash));
  while (!url.prefix.empty() && url.prefix.back() == '/') url.prefix.pop_back();
  if (authority.empty()) return std::nullopt;
  if (authority.front() == '[') {  // IPv6 literal
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    url.host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (authority.starts_with(":")) url.port = std::string(authority.substr(1));
  } else {
    const auto colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) url.port = std::string(authority.substr(colon + 1));
  }
  if (url.port.empty()) url.port = url.tls ? "443" : "80";
  if (url.host.empty()) return std::nullopt;
  return url;
}

struct Connection {
  std::unique_ptr<beast::tcp_stream> tcp;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;  // bytes read past a response belong to the connection
  beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *tcp; }
};

// Receives a 2xx body incrementally; returning false aborts the exchange.
using BodySink = std::function<bool(std::string_view)>;

struct Exchange {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;   // whole body unless it went to the sink
  ClientError error;  // kind != kNone on transport failure or sink abort
  bool sink_aborted = false;
  bool streamed = false;  // the body went to the sink

  std::string header(std::string_view name) const {
    for (const auto& [k, v] : headers)
      if (k == name) return v;
    return {};
  }
};

ClientError transport_error(const boost::system::error_code& ec, std::string_view what) {
  const bool timeout = ec == beast::error::timeout;
  return make_error(timeout ? ErrorKind::kTimeout : ErrorKind::kNetwork,
                    std::string(what) + ": " + ec.message());
}

struct OpState {
  explicit OpState(asio::io_context& ioc) : strand(asio::make_strand(ioc)) {}
  asio::strand<asio::io_context::executor_type> strand;
  asio::cancellation_signal signal;
};

// State of one streamed attempt: turns SSE bytes into chunks for the user's callback.
struct StreamState {
  SseParser parser;
  const ChunkCallback* on_chunk = nullptr;
  ChatResponse response;
  std::size_t max_bytes = 0;
  bool done = false;
  bool user_stopped = false;
  ClientError error;

  explicit StreamState(std::size_t max)
      : parser(std::min<std::size_t>(max, 1 << 20)), max_bytes(max) {}

  bool feed(std::string_view bytes) {
    const auto status = parser.feed(bytes, [this](std::string_view data) {
      if (data == "[DONE]") {
        done = true;
        return true;
      }
      auto chunk = parse_chat_chunk(data);
      if (!chunk) {
        error = chunk.error();
        return false;
      }
      if (response.id.empty()) response.id = chunk->id;
      if (!chunk->model.empty()) response.model = chunk->model;
      if (!chunk->finish_reason.empty()) response.finish_reason = chunk->finish_reason;
      if (chunk->usage) {
        response.usage = *chunk->usage;
        response.has_usage = true;
      }
      response.content += chunk->content;
      if (response.content.size() > max_bytes) {
        error = make_error(ErrorKind::kProtocol, "stream content exceeds max_response_bytes");
        return false;
      }
      ++response.chunks;
      if (*on_chunk && !(*on_chunk)(*chunk)) {
        user_stopped = true;
        return false;
      }
      return true;
    });
    if (status == SseParser::Status::kTooLarge)
      error = make_error(ErrorKind::kProtocol, "stream event exceeds the size bound");
    return status == SseParser::Status::kOk;
  }
};

}  // namespace

struct Client::Impl : std::enable_shared_from_this<Client::Impl> {
  explicit Impl(ClientConfig c)
      : cfg(std::move(c)),
        work(asio::make_work_guard(ioc)),
        ssl_ctx(ssl::context::tls_client),
        bucket(cfg.token_bucket, now_ns()),
        window(cfg.window),
        cost(cfg.budget_cap_usd),
        rng(std::random_device{}()) {
    if (auto u = parse_url(cfg.base_url)) {
      url = *u;
    } else {
      config_error = make_error(ErrorKind::kInvalidRequest, "invalid base_url: " + cfg.base_url);
    }
    cfg.retry.max_attempts = std::max(1, cfg.retry.max_attempts);
    if (url.tls) {
      boost::system::error_code ec;
      ssl_ctx.set_default_verify_paths(ec);
      if (!cfg.ca_file.empty()) ssl_ctx.load_verify_file(cfg.ca_file, ec);
      if (ec) config_error = make_error(ErrorKind::kInvalidRequest, "TLS setup: " + ec.message());
      ssl_ctx.set_verify_mode(cfg.verify_tls ? ssl::verify_peer : ssl::verify_none);
    }
  }

  ClientConfig cfg;
  Url url;
  std::optional<ClientError> config_error;
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::vector<std::thread> threads;
  ssl::context ssl_ctx;

  std::mutex pool_mu;
  std::vector<std::unique_ptr<Connection>> idle;

  std::mutex limiter_mu;
  TokenBucket bucket;
  SlidingWindowLimiter window;

  mutable std::mutex metrics_mu;
  RateWindow rpm;

  mutable std::mutex breaker_mu;
  std::map<std::string, CircuitBreaker> breakers;

  CostTracker cost;

  std::mutex rng_mu;
  std::mt19937_64 rng;

  std::mutex ops_mu;
  std::map<std::uint64_t, std::shared_ptr<OpState>> ops;
  std::uint64_t next_op = 0;
  bool stopping = false;  // guarded by ops_mu
  std::atomic<bool> stopping_flag{false};

  std::atomic<std::uint64_t> n_requests{0}, n_successes{0}, n_rate_limited{0}, n_circuit_open{0},
      n_budget_refused{0}, n_local_limited{0}, n_errors{0}, n_responses_429{0}, n_retries{0},
      n_fallbacks{0}, n_prompt_tokens{0}, n_completion_tokens{0};

  double uniform() {
    std::lock_guard lock(rng_mu);
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  }

  // --- breakers --------------------------------------------------------------------------
  bool breaker_allow(const std::string& model, Nanos now) {
    std::lock_guard lock(breaker_mu);
    return breakers.try_emplace(model, cfg.breaker).first->second.allow(now);
  }
  void breaker_result(const std::string& model, Nanos now, int verdict) {  // 1 ok, -1 fail, 0 none
    std::lock_guard lock(breaker_mu);
    auto& b = breakers.try_emplace(model, cfg.breaker).first->second;
    if (verdict > 0)
      b.on_success(now);
    else if (verdict < 0)
      b.on_failure(now);
    else
      b.on_abandon();
  }
  Nanos earliest_reopen(const std::vector<std::string>& models, Nanos now) {
    std::lock_guard lock(breaker_mu);
    Nanos best = kNever;
    for (const auto& m : models) {
      auto it = breakers.find(m);
      if (it != breakers.end()) best = std::min(best, it->second.open_until() - now);
    }
    return best == kNever ? 0 : std::max<Nanos>(0, best);
  }

  // --- connections -----------------------------------------------------------------------
  std::unique_ptr<Connection> take_idle() {
    std::lock_guard lock(pool_mu);
    if (idle.empty()) return nullptr;
    auto c = std::move(idle.back());
    idle.pop_back();
    return c;
  }
  void give_back(std::unique_ptr<Connection> c) {
    std::lock_guard lock(pool_mu);
    if (idle.size() < cfg.max_idle_connections && !stopping_flag.load())
      idle.push_back(std::move(c));
  }

  std::string host_header() const {
    const bool default_port = (url.tls && url.port == "443") || (!url.tls && url.port == "80");
    const std::string host =
        url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
    return default_port ? host : host + ":" + url.port;
  }

  asio::awaitable<Result<std::unique_ptr<Connection>>> connect(Nanos deadline) {
    auto ex = co_await asio::this_coro::executor;
    tcp::resolver resolver(ex);
    auto [rec, endpoints] = co_await resolver.async_resolve(url.host, url.port, kUseTuple);
    if (rec) co_return transport_error(rec, "resolve " + url.host);
    auto conn = std::make_unique<Connection>();
    conn->tcp = std::make_unique<beast::tcp_stream>(ioc.get_executor());
    if (url.tls)
      conn->tls =
          std::make_unique<beast::ssl_stream<beast::tcp_stream>>(std::move(*conn->tcp), ssl_ctx);
    if (url.tls) conn->tcp.reset();
    auto& lowest = conn->lowest();
    lowest.expires_at(to_time_point(std::min(deadline, now_ns() + cfg.connect_timeout)));
    auto [cec, ep] = co_await lowest.async_connect(endpoints, kUseTuple);
    if (cec) co_return transport_error(cec, "connect " + url.host + ":" + url.port);
    lowest.socket().set_option(tcp::no_delay(true));
    if (conn->tls) {
      if (!SSL_set_tlsext_host_name(conn->tls->native_handle(), url.host.c_str()))
        co_return make_error(ErrorKind::kNetwork, "TLS: cannot set SNI host name");
      if (cfg.verify_tls) conn->tls->set_verify_callback(ssl::host_name_verification(url.host));
      auto [hec] = co_await conn->tls->async_handshake(ssl::stream_base::client, kUseTuple);
      if (hec) co_return transport_error(hec, "TLS handshake");
    }
    co_return std::move(conn);
  }

  template <class Stream>
  static asio::awaitable<boost::system::error_code> write_request(
      Stream& stream, http::request<http::string_body>& req) {
    auto [ec, n] = co_await http::async_write(stream, req, kUseTuple);
    (void)n;
    co_return ec;
  }

  template <class Stream>
  asio::awaitable<void> read_response(Stream& stream, Connection& conn, const BodySink* sink,
                                      Exchange& out, bool& received_any, bool& reusable) {
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(sink ? boost::optional<std::uint64_t>()
                           : boost::optional<std::uint64_t>(cfg.max_response_bytes));
    parser.header_limit(64 * 1024);
    auto [hec, hn] = co_await http::async_read_header(stream, conn.buffer, parser, kUseTuple);
    (void)hn;
    if (hec) {
      out.error = transport_error(hec, "read response header");
      co_return;
    }
    received_any = true;
    const auto& msg = parser.get();
    out.status = static_cast<int>(msg.result_int());
    for (const auto& field : msg) {
      std::string name(field.name_string());
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      out.headers.emplace_back(std::move(name), std::string(field.value()));
    }
    // A server that ignores "stream": true answers plain JSON; that body is buffered and turned
    // into a single chunk by the caller instead of being fed to the SSE parser.
    const std::string content_type(msg[http::field::content_type]);
    const bool to_sink = sink && out.status >= 200 && out.status < 300 &&
                         content_type.find("text/event-stream") != std::string::npos;
    out.streamed = to_sink;
    std::array<char, 16 * 1024> buf;
    while (!parser.is_done()) {
      parser.get().body().data = buf.data();
      parser.get().body().size = buf.size();
      auto [ec, n] = co_await http::async_read_some(stream, conn.buffer, parser, kUseTuple);
      (void)n;
      if (ec && ec != http::error::need_buffer) {
        out.error = ec == http::error::body_limit
                        ? make_error(ErrorKind::kProtocol, "response exceeds max_response_bytes")
                        : transport_error(ec, "read response body");
        co_return;
      }
      const std::size_t got = buf.size() - parser.get().body().size;
      if (got == 0) continue;
      if (to_sink) {
        if (!(*sink)(std::string_view(buf.data(), got))) {
          out.sink_aborted = true;
          co_return;
        }
      } else {
        out.body.append(buf.data(), got);
      }
    }
    reusable = parser.keep_alive();
  }

  // One HTTP exchange. A pooled connection the server closed while idle fails before any byte of
  // a response arrives; that case is retried once on a fresh connection, because the request
  // cannot have been processed.
  asio::awaitable<Exchange> exchange(std::string method, std::string target, std::string body,
                                     std::vector<std::pair<std::string, std::string>> headers,
                                     Nanos deadline, const BodySink* sink) {
    Exchange out;
    auto conn = take_idle();
    bool reused = conn != nullptr;
    for (int pass = 0; pass < 2; ++pass) {
      out = Exchange{};
      if (!conn) {
        auto c = co_await connect(deadline);
        if (!c) {
          out.error = c.error();
          co_return out;
        }
        conn = std::move(c.value());
        reused = false;
      }
      http::request<http::string_body> req{method == "GET" ? http::verb::get : http::verb::post,
                                           url.prefix + target, 11};
      req.set(http::field::host, host_header());
      req.set(http::field::user_agent, cfg.user_agent);
      if (!cfg.api_key.empty()) req.set(http::field::authorization, "Bearer " + cfg.api_key);
      for (const auto& [k, v] : headers) req.set(k, v);
      req.keep_alive(true);
      if (method != "GET") {
        req.set(http::field::content_type, "application/json");
        req.body() = body;
        req.prepare_payload();
      }
      conn->lowest().expires_at(to_time_point(deadline));
      bool received_any = false;
      bool reusable = false;
      boost::system::error_code wec;
      if (conn->tls) {
        wec = co_await write_request(*conn->tls, req);
        if (!wec) co_await read_response(*conn->tls, *conn, sink, out, received_any, reusable);
      } else {
        wec = co_await write_request(*conn->tcp, req);
        if (!wec) co_await read_response(*conn->tcp, *conn, sink, out, received_any, reusable);
      }
      if (wec) out.error = transport_error(wec, "write request");
      const bool failed = out.error.kind != ErrorKind::kNone;
      if (failed && reused && !received_any && pass == 0 && !stopping_flag.load() &&
          out.error.kind == ErrorKind::kNetwork) {
        conn.reset();
        continue;
      }
      if (!failed && !out.sink_aborted && reusable) {
        conn->lowest().expires_never();
        give_back(std::move(conn));
      }
      co_return out;
    }
    co_return out;
  }

  asio::awaitable<bool> sleep_for(Nanos delay) {
    if (delay <= 0) co_return !stopping_flag.load();
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(std::chrono::nanoseconds(delay));
    auto [ec] = co_await timer.async_wait(kUseTuple);
    co_return !ec && !stopping_flag.load();
  }

  // Waits for the local limiters. Returns the error to end the call with, if any.
  asio::awaitable<std::optional<ClientError>> acquire_local_slot(Nanos deadline) {
    const Nanos start = now_ns();
    while (true) {
      Nanos wait = 0;
      {
        std::lock_guard lock(limiter_mu);
        const Nanos now = now_ns();
        wait = bucket.try_acquire(now);
        if (wait == 0) {
          wait = window.try_acquire(now);
          if (wait > 0 && bucket.enabled()) bucket.refund();
        }
      }
      if (wait == 0) co_return std::nullopt;
      const Nanos now = now_ns();
      if (now + wait - start > cfg.max_limiter_wait || now + wait > deadline) {
        auto e = make_error(ErrorKind::kLocalRateLimited,
                            "client-side rate limit: no slot within max_limiter_wait");
        e.retry_after_s = static_cast<double>(wait) / 1e9;
        co_return e;
      }
      if (!co_await sleep_for(wait))
        co_return make_error(ErrorKind::kCancelled, "client shut down");
    }
  }

  void count_final(const ClientError& e) {
    switch (e.kind) {
      case ErrorKind::kRateLimited:
        ++n_rate_limited;
        break;
      case ErrorKind::kCircuitOpen:
        ++n_circuit_open;
        break;
      case ErrorKind::kBudgetExceeded:
        ++n_budget_refused;
        break;
      case ErrorKind::kLocalRateLimited:
        ++n_local_limited;
        break;
      default:
        ++n_errors;
        break;
    }
  }

  static asio::awaitable<ChatResult> run_chat(std::shared_ptr<Impl> self, ChatRequest req,
                                              ChunkCallback on_chunk, bool stream) {
    co_return co_await self->chat_flow(std::move(req), std::move(on_chunk), stream);
  }

  asio::awaitable<ChatResult> chat_flow(ChatRequest req, ChunkCallback on_chunk, bool stream) {
    const Nanos t0 = now_ns();
    ++n_requests;
    {
      std::lock_guard lock(metrics_mu);
      rpm.add(t0);
    }
    auto fail = [&](ClientError e) -> ChatResult {
      count_final(e);
      return e;
    };
    if (config_error) co_return fail(*config_error);
    if (req.model.empty()) co_return fail(make_error(ErrorKind::kInvalidRequest, "model is empty"));
    if (req.messages.empty())
      co_return fail(make_error(ErrorKind::kInvalidRequest, "messages is empty"));

    std::vector<std::string> models{req.model};
    for (const auto& m : req.fallback_models.empty() ? cfg.fallback_models : req.fallback_models)
      if (std::find(models.begin(), models.end(), m) == models.end()) models.push_back(m);
    const int priority = req.priority >= 0 ? req.priority : cfg.default_priority;

    // Reserve the worst case over the candidates: a fallback may be pricier than the primary.
    const std::int64_t prompt_est = estimate_prompt_tokens(req);
    const std::int64_t completion_est =
        req.max_tokens ? *req.max_tokens : cfg.completion_estimate_tokens;
    double estimate = 0;
    for (const auto& m : models)
      estimate = std::max(estimate, cfg.prices.cost(m, prompt_est, completion_est));
    if (!cost.try_reserve(estimate)) {
      auto e =
          make_error(ErrorKind::kBudgetExceeded,
                     "local budget cap would be exceeded (spent " + std::to_string(cost.spent()) +
                         " USD of " + std::to_string(cost.cap().value_or(0)) + " USD)");
      e.model = req.model;
      co_return fail(e);
    }

    const Nanos deadline = cfg.retry.total_deadline > 0 ? t0 + cfg.retry.total_deadline : kNever;
    std::vector<std::pair<std::string, std::string>> headers;
    if (priority >= 0) headers.emplace_back("X-Priority", std::to_string(std::min(priority, 2)));
    if (stream) headers.emplace_back("Accept", "text/event-stream");

    ClientError last;
    int attempts = 0;
    int delays = 0;
    std::size_t model_idx = 0;
    auto finish_error = [&](ClientError e) -> ChatResult {
      cost.release(estimate);
      e.attempts = attempts;
      return fail(std::move(e));
    };

    while (true) {
      if (stopping_flag.load())
        co_return finish_error(make_error(ErrorKind::kCancelled, "client shut down"));
      if (attempts >= cfg.retry.max_attempts) co_return finish_error(last);

      std::optional<std::size_t> chosen;
      const Nanos now = now_ns();
      for (std::size_t k = model_idx; k < models.size(); ++k) {
        if (breaker_allow(models[k], now)) {
          chosen = k;
          break;
        }
      }
      if (!chosen) {
        if (last.kind != ErrorKind::kNone) co_return finish_error(last);
        auto e =
            make_error(ErrorKind::kCircuitOpen, "circuit breaker open for every candidate model");
        e.model = models.back();
        e.retry_after_s = static_cast<double>(earliest_reopen(models, now)) / 1e9;
        co_return finish_error(e);
      }
      const std::string& model = models[*chosen];

      if (auto limited = co_await acquire_local_slot(deadline)) {
        breaker_result(model, now_ns(), 0);
        limited->model = model;
        co_return finish_error(*limited);
      }

      ++attempts;
      if (attempts > 1) ++n_retries;
      if (*chosen > 0) ++n_fallbacks;
      const Nanos attempt_deadline = std::min(deadline, now_ns() + cfg.request_timeout);
      const std::string body = serialize_chat_request(req, model, stream, cfg.include_stream_usage);

      std::optional<StreamState> st;
      BodySink sink;
      if (stream) {
        st.emplace(cfg.max_response_bytes);
        st->on_chunk = &on_chunk;
        sink = [&st](std::string_view bytes) { return st->feed(bytes); };
      }
      Exchange ex = co_await exchange("POST", "/v1/chat/completions", body, headers,
                                      attempt_deadline, stream ? &sink : nullptr);
      const Nanos after = now_ns();
      if (stopping_flag.load()) {
        breaker_result(model, after, 0);
        co_return finish_error(make_error(ErrorKind::kCancelled, "client shut down"));
      }
      auto rate_limits = parse_rate_limit_headers([&](std::string_view n) { return ex.header(n); });

      if (ex.sink_aborted) {
        // The server answered; the stream was stopped by the user or carried malformed data.
        breaker_result(model, after, st->user_stopped ? 1 : 0);
        ClientError e = st->user_stopped
                            ? make_error(ErrorKind::kCancelled, "stream stopped by callback")
                            : st->error;
        e.status = ex.status;
        e.model = model;
        co_return finish_error(e);
      }
      if (ex.error.kind != ErrorKind::kNone) {
        breaker_result(model, after, -1);
        last = ex.error;
        last.model = model;
        last.status = ex.status;
        if (st && st->response.chunks > 0) co_return finish_error(last);  // cannot replay a stream
      } else if (ex.status >= 200 && ex.status < 300) {
        ChatResponse resp;
        if (stream && ex.streamed) {
          resp = std::move(st->response);
        } else {
          auto parsed = parse_chat_response(ex.body);
          if (!parsed) {
            breaker_result(model, after, 0);
            ClientError e = parsed.error();
            e.status = ex.status;
            e.model = model;
            co_return finish_error(e);
          }
          resp = std::move(parsed.value());
          resp.raw_body = std::move(ex.body);
          if (stream) {
            ChatChunk whole;
            whole.id = resp.id;
            whole.model = resp.model;
            whole.role = "assistant";
            whole.content = resp.content;
            whole.finish_reason = resp.finish_reason;
            if (resp.has_usage) whole.usage = resp.usage;
            resp.chunks = 1;
            if (on_chunk && !on_chunk(whole)) {
              breaker_result(model, after, 1);
              auto e = make_error(ErrorKind::kCancelled, "stream stopped by callback");
              e.status = ex.status;
              e.model = model;
              co_return finish_error(e);
            }
          }
        }
        breaker_result(model, after, 1);
        resp.status = ex.status;
        resp.served_by = ex.header("x-bellwether-model");
        resp.attempts = attempts;
        resp.rate_limits = rate_limits;
        const std::string& priced = resp.served_by.empty() ? model : resp.served_by;
        resp.cost_usd = resp.has_usage ? cfg.prices.cost(priced, resp.usage) : 0;
        cost.settle(estimate, resp.cost_usd);
        n_prompt_tokens +=
            static_cast<std::uint64_t>(std::max<std::int64_t>(0, resp.usage.prompt_tokens));
        n_completion_tokens +=
            static_cast<std::uint64_t>(std::max<std::int64_t>(0, resp.usage.completion_tokens));
        ++n_successes;
        resp.latency = now_ns() - t0;
        co_return resp;
      } else {
        ClientError e = parse_error_response(ex.status, ex.body);
        e.model = model;
        const auto hint = server_wait_hint(rate_limits);
        if (hint) e.retry_after_s = static_cast<double>(*hint) / 1e9;
        if (ex.status == 429) {
          ++n_responses_429;
          breaker_result(model, after, 0);  // overloaded is not broken
          last = e;
          if (hint && *hint > cfg.retry.max_retry_after) co_return finish_error(last);
          model_idx = *chosen;
        } else if (ex.status == 404 || ex.status >= 500) {
          breaker_result(model, after, ex.status >= 500 ? -1 : 0);
          last = e;
          if (*chosen + 1 < models.size()) {
            model_idx = *chosen + 1;  // fall back at once: another model is another backend
            continue;
          }
          if (ex.status == 404) co_return finish_error(last);
          if (hint && *hint > cfg.retry.max_retry_after) co_return finish_error(last);
          model_idx = 0;
        } else {
          breaker_result(model, after, 1);  // a 4xx is the caller's fault, the server is fine
          co_return finish_error(e);
        }
      }

      if (attempts >= cfg.retry.max_attempts) co_return finish_error(last);
      const auto hint = server_wait_hint(rate_limits);
      const Nanos delay = retry_delay(cfg.retry, delays++, uniform(), hint);
      if (now_ns() + delay > deadline) {
        if (last.kind == ErrorKind::kNone) last = make_error(ErrorKind::kTimeout, "total deadline");
        co_return finish_error(last);
      }
      if (!co_await sleep_for(delay))
        co_return finish_error(make_error(ErrorKind::kCancelled, "client shut down"));
    }
  }

  static asio::awaitable<Result<HttpResponse>> run_get(std::shared_ptr<Impl> self,
                                                       std::string path) {
    if (self->config_error) co_return *self->config_error;
    Exchange ex =
        co_await self->exchange("GET", path, {}, {}, now_ns() + self->cfg.request_timeout, nullptr);
    if (ex.error.kind != ErrorKind::kNone) co_return ex.error;
    HttpResponse r;
    r.status = ex.status;
    r.headers = std::move(ex.headers);
    r.body = std::move(ex.body);
    co_return r;
  }

  template <class T>
  // `op` is a parameter so that the cancellation signal outlives the coroutine frame, which
  // clears its slot on completion.
  static asio::awaitable<void> guarded(std::shared_ptr<Impl> self,
                                       [[maybe_unused]] std::shared_ptr<OpState> op,
                                       std::uint64_t id, asio::awaitable<Result<T>> body,
                                       std::function<void(Result<T>)> done) {
    co_await asio::this_coro::throw_if_cancelled(false);
    std::optional<Result<T>> result;
    try {
      result.emplace(co_await std::move(body));
    } catch (const std::exception& e) {
      result.emplace(make_error(
          self->stopping_flag.load() ? ErrorKind::kCancelled : ErrorKind::kProtocol, e.what()));
    }
    {
      std::lock_guard lock(self->ops_mu);
      self->ops.erase(id);
    }
    try {
      done(std::move(*result));
    } catch (...) {
      // A throwing user callback must not unwind through the I/O thread.
    }
  }

  template <class T>
  void spawn(asio::awaitable<Result<T>> body, std::function<void(Result<T>)> done) {
    std::shared_ptr<OpState> op;
    std::uint64_t id = 0;
    {
      std::lock_guard lock(ops_mu);
      if (!stopping) {
        op = std::make_shared<OpState>(ioc);
        id = next_op++;
        ops.emplace(id, op);
      }
    }
    if (!op) {
      asio::post(ioc, [done = std::move(done)]() {
        try {
          done(make_error(ErrorKind::kCancelled, "client shut down"));
        } catch (...) {
        }
      });
      return;
    }
    auto slot = op->signal.slot();
    asio::co_spawn(op->strand,
                   guarded<T>(shared_from_this(), op, id, std::move(body), std::move(done)),
                   asio::bind_cancellation_slot(slot, [op](std::exception_ptr) {}));
  }

  void shutdown() {
    std::lock_guard lock(ops_mu);
    if (stopping) return;
    stopping = true;
    stopping_flag.store(true);
    for (auto& [id, op] : ops) {
      asio::post(op->strand, [op = op]() { op->signal.emit(asio::cancellation_type::terminal); });
    }
    std::lock_guard pool_lock(pool_mu);
    idle.clear();
  }

  template <class T>
  Result<T> block(const std::function<void(std::function<void(Result<T>)>)>& start) {
    if (ioc.get_executor().running_in_this_thread())
      return make_error(ErrorKind::kInvalidRequest,
                        "blocking Client call from a Client callback would deadlock");
    std::promise<Result<T>> promise;
    auto future = promise.get_future();
    start([&promise](Result<T> r) { promise.set_value(std::move(r)); });
    return future.get();
  }
};

Client::Client(ClientConfig config) : impl_(std::make_shared<Impl>(std::move(config))) {
  const int n = std::max(1, impl_->cfg.io_threads);
  for (int i = 0; i < n; ++i)
    impl_->threads.emplace_back([impl = impl_.get()] { impl->ioc.run(); });
}

Client::~Client() {
  impl_->shutdown();
  impl_->work.reset();
  for (auto& t : impl_->threads) t.join();
}

void Client::shutdown() {
  impl_->shutdown();
}

void Client::chat_async(ChatRequest request, ChatCallback done) {
  impl_->spawn<ChatResponse>(Impl::run_chat(impl_, std::move(request), {}, false), std::move(done));
}

void Client::chat_stream_async(ChatRequest request, ChunkCallback on_chunk, ChatCallback done) {
  impl_->spawn<ChatResponse>(Impl::run_chat(impl_, std::move(request), std::move(on_chunk), true),
                             std::move(done));
}

void Client::get_async(std::string path, HttpCallback done) {
  impl_->spawn<HttpResponse>(Impl::run_get(impl_, std::move(path)), std::move(done));
}

ChatResult Client::chat(const ChatRequest& request) {
  return impl_->block<ChatResponse>(
      [&](ChatCallback done) { chat_async(request, std::move(done)); });
}

ChatResult Client::chat_stream(const ChatRequest& request, ChunkCallback on_chunk) {
  return impl_->block<ChatResponse>(
      [&](ChatCallback done) { chat_stream_async(request, std::move(on_chunk), std::move(done)); });
}

Result<HttpResponse> Client::get(const std::string& path) {
  return impl_->block<HttpResponse>([&](HttpCallback done) { get_async(path, std::move(done)); });
}

MetricsSnapshot Client::metrics() const {
  MetricsSnapshot s;
  const Impl& i = *impl_;
  s.requests = i.n_requests.load();
  s.successes = i.n_successes.load();
  s.rate_limited = i.n_rate_limited.load();
  s.circuit_open = i.n_circuit_open.load();
  s.budget_refused = i.n_budget_refused.load();
  s.local_limited = i.n_local_limited.load();
  s.errors = i.n_errors.load();
  s.responses_429 = i.n_responses_429.load();
  s.retries = i.n_retries.load();
  s.fallbacks = i.n_fallbacks.load();
  s.prompt_tokens = i.n_prompt_tokens.load();
  s.completion_tokens = i.n_completion_tokens.load();
  {
    std::lock_guard lock(i.metrics_mu);
    s.requests_per_minute = static_cast<double>(impl_->rpm.last_minute(now_ns()));
  }
  s.spend_usd = i.cost.spent();
  s.reserved_usd = i.cost.reserved();
  s.budget_cap_usd = i.cost.cap();
  return s;
}

BreakerState Client::breaker_state(const std::string& model) const {
  std::lock_guard lock(impl_->breaker_mu);
  auto it = impl_->breakers.find(model);
  if (it == impl_->breakers.end()) return BreakerState::kClosed;
  return it->second.state(now_ns());
}

const ClientConfig& Client::config() const {
  return impl_->cfg;
}

}  // namespace bellwether
