#include "http/client.h"

#include <openssl/ssl.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <charconv>
#include <chrono>
#include <unordered_map>

namespace bw::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

namespace {

std::chrono::nanoseconds ns(Nanos n) {
  return std::chrono::nanoseconds(n);
}

Error upstream_error(std::string_view code, const std::string& what) {
  int status = code == kUpstreamTimeout ? 504 : 502;
  return make_error(status, "upstream_error", std::string(code), what);
}

Error classify(const beast::error_code& ec, const char* phase) {
  std::string what = std::string("upstream ") + phase + " failed: " + ec.message();
  if (ec == beast::error::timeout) return upstream_error(kUpstreamTimeout, what);
  return upstream_error(kUpstreamReset, what);
}

struct Conn {
  std::unique_ptr<beast::tcp_stream> tcp;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
  std::string key;
  Nanos last_used = 0;

  beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *tcp; }
  // Runs f on whichever stream this connection has.
  template <class F>
  auto with_stream(F&& f) {
    return tls ? f(*tls) : f(*tcp);
  }
};

bool stale_connection_error(const beast::error_code& ec) {
  return ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == ssl::error::stream_truncated;
}

}  // namespace

struct ClientPool::State {
  std::unordered_map<std::string, std::vector<std::unique_ptr<Conn>>> idle;
  std::unordered_map<std::string, std::size_t> open;
  std::unique_ptr<ssl::context> tls_context;
  ClientLimits limits;

  ssl::context& tls() {
    if (!tls_context) {
      tls_context = std::make_unique<ssl::context>(ssl::context::tls_client);
      tls_context->set_default_verify_paths();
      tls_context->set_verify_mode(ssl::verify_peer);
      tls_context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                               ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                               ssl::context::no_tlsv1_1);
    }
    return *tls_context;
  }

  void closed(const std::string& key) {
    auto it = open.find(key);
    if (it != open.end() && it->second > 0) --it->second;
  }

  void give_back(std::unique_ptr<Conn> c) {
    auto& list = idle[c->key];
    if (list.size() >= limits.max_idle_per_host) {
      closed(c->key);
      return;
    }
    c->last_used = SteadyClock::instance().now();
    list.push_back(std::move(c));
  }

  std::unique_ptr<Conn> take(const std::string& key) {
    auto it = idle.find(key);
    if (it == idle.end()) return nullptr;
    auto& list = it->second;
    const Nanos now = SteadyClock::instance().now();
    while (!list.empty()) {
      auto c = std::move(list.back());
      list.pop_back();
      if (now - c->last_used < limits.pool_idle_timeout && c->lowest().socket().is_open()) {
        return c;
      }
      closed(key);
    }
    return nullptr;
  }
};

struct UpstreamResponse::Impl {
  std::shared_ptr<ClientPool::State> pool;
  std::unique_ptr<Conn> conn;
  bhttp::response_parser<bhttp::buffer_body> parser;
  ClientTimeouts timeouts;
  Headers headers;
  int status = 0;
  bool done = false;
  bool failed = false;
  std::array<char, 16 * 1024> chunk{};

  ~Impl() {
    if (!conn) return;
    if (done && !failed && parser.is_done() && parser.get().keep_alive()) {
      pool->give_back(std::move(conn));
    } else {
      beast::error_code ec;
      conn->lowest().socket().close(ec);
      pool->closed(conn->key);
    }
  }
};

UpstreamResponse::UpstreamResponse(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
UpstreamResponse::~UpstreamResponse() = default;
UpstreamResponse::UpstreamResponse(UpstreamResponse&&) noexcept = default;
UpstreamResponse& UpstreamResponse::operator=(UpstreamResponse&&) noexcept = default;

int UpstreamResponse::status() const {
  return impl_->status;
}
const Headers& UpstreamResponse::headers() const {
  return impl_->headers;
}

void UpstreamResponse::abort() {
  impl_->failed = true;
  if (impl_->conn) {
    beast::error_code ec;
    impl_->conn->lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    impl_->conn->lowest().socket().close(ec);
  }
}

asio::awaitable<Result<std::string_view>> UpstreamResponse::read_some() {
  auto& im = *impl_;
  for (;;) {
    if (im.done || im.parser.is_done()) {
      im.done = true;
      co_return std::string_view{};
    }
    if (im.failed) co_return upstream_error(kUpstreamReset, "upstream connection closed");
    auto& body = im.parser.get().body();
    body.data = im.chunk.data();
    body.size = im.chunk.size();
    im.conn->lowest().expires_after(ns(im.timeouts.idle));
    auto [ec, n] = co_await im.conn->with_stream(
        [&](auto& s) { return bhttp::async_read_some(s, im.conn->buffer, im.parser, kNoThrow); });
    im.conn->lowest().expires_never();
    if (ec == bhttp::error::need_buffer) ec = {};
    if (ec) {
      im.failed = true;
      co_return classify(ec, "body read");
    }
    const std::size_t got = im.chunk.size() - body.size;
    if (im.parser.is_done()) im.done = true;
    if (got > 0) co_return std::string_view(im.chunk.data(), got);
  }
}

asio::awaitable<Result<std::string>> UpstreamResponse::read_all(std::size_t limit) {
  std::string out;
  for (;;) {
    auto piece = co_await read_some();
    if (!piece) co_return piece.error();
    if (piece->empty()) co_return out;
    if (out.size() + piece->size() > limit) {
      abort();
      co_return upstream_error(kUpstreamReset, "upstream response larger than the limit");
    }
    out.append(*piece);
  }
}

Result<Endpoint> Endpoint::parse(std::string_view url) {
  Endpoint ep;
  std::string_view rest;
  if (url.starts_with("http://")) {
    rest = url.substr(7);
    ep.port = 80;
  } else if (url.starts_with("https://")) {
    rest = url.substr(8);
    ep.tls = true;
    ep.port = 443;
  } else {
    return make_error(400, "invalid_request_error", "", "URL must start with http:// or https://");
  }
  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  std::string_view host = authority;
  if (!authority.empty() && authority.front() == '[') {  // [v6]:port
    auto close = authority.find(']');
    if (close == std::string_view::npos) {
      return make_error(400, "invalid_request_error", "", "bad IPv6 address in URL");
    }
    host = authority.substr(1, close - 1);
    authority = authority.substr(close + 1);
    if (authority.starts_with(':'))
      authority = authority.substr(0);
    else
      authority = {};
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    authority = authority.substr(colon);
  } else {
    authority = {};
  }
  if (!authority.empty()) {  // ":port"
    auto digits = authority.substr(1);
    unsigned port = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec != std::errc{} || p != digits.data() + digits.size() || port == 0 || port > 65535) {
      return make_error(400, "invalid_request_error", "", "bad port in URL");
    }
    ep.port = static_cast<std::uint16_t>(port);
  }
  if (host.empty()) return make_error(400, "invalid_request_error", "", "URL has no host");
  ep.host = std::string(host);
  ep.base_path = std::string(path);
  return ep;
}

std::string Endpoint::pool_key() const {
  return (tls ? "https://" : "http://") + host + ":" + std::to_string(port);
}

ClientPool::ClientPool() : state_(std::make_unique<State>()) {}
ClientPool::~ClientPool() = default;

ClientPool& ClientPool::for_this_thread() {
  thread_local ClientPool pool;
  return pool;
}

std::size_t ClientPool::idle_connections() const {
  std::size_t n = 0;
  for (const auto& [k, v] : state_->idle) n += v.size();
  return n;
}

namespace {

asio::awaitable<Result<std::unique_ptr<Conn>>> connect(ClientPool::State& st, const Endpoint& ep,
                                                       const std::string& key,
                                                       const ClientTimeouts& t) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto [rec, results] = co_await resolver.async_resolve(ep.host, std::to_string(ep.port), kNoThrow);
  if (rec) {
    co_return upstream_error(kUpstreamConnectError,
                             "cannot resolve upstream host '" + ep.host + "': " + rec.message());
  }
  auto c = std::make_unique<Conn>();
  c->key = key;
  if (ep.tls) {
    c->tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(ex, st.tls());
  } else {
    c->tcp = std::make_unique<beast::tcp_stream>(ex);
  }
  auto& low = c->lowest();
  low.expires_after(ns(t.connect));
  auto [cec, endpoint] = co_await low.async_connect(results, kNoThrow);
  if (cec) {
    const auto code = cec == beast::error::timeout ? kUpstreamTimeout : kUpstreamConnectError;
    co_return upstream_error(code, "cannot connect to upstream " + ep.host + ":" +
                                       std::to_string(ep.port) + ": " + cec.message());
  }
  beast::error_code ec;
  low.socket().set_option(tcp::no_delay(true), ec);
  if (ep.tls) {
    if (!SSL_set_tlsext_host_name(c->tls->native_handle(), ep.host.c_str())) {
      co_return upstream_error(kUpstreamConnectError, "cannot set TLS SNI");
    }
    c->tls->set_verify_callback(ssl::host_name_verification(ep.host));
    auto [hec] = co_await c->tls->async_handshake(ssl::stream_base::client, kNoThrow);
    if (hec) {
      co_return upstream_error(kUpstreamConnectError,
                               "TLS handshake with " + ep.host + " failed: " + hec.message());
    }
  }
  low.expires_never();
  ++st.open[key];
  co_return std::move(c);
}

}  // namespace

asio::awaitable<Result<UpstreamResponse>> ClientPool::send(const Endpoint& ep,
                                                           const OutboundRequest& request,
                                                           const ClientTimeouts& t) {
  auto& st = *state_;
  st.limits = limits_;
  const std::string key = ep.pool_key();

  bhttp::request<bhttp::string_body> req;
  req.version(11);
  req.method_string(request.method);
  req.target(request.target);
  req.set(bhttp::field::host, ep.host);
  for (const auto& [k, v] : request.headers.items()) req.insert(k, v);
  req.body() = request.body;
  req.keep_alive(true);
  req.prepare_payload();

  // A pooled connection the server already closed fails before any response byte; that request
  // never reached the server, so it is sent once more on a fresh connection.
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::unique_ptr<Conn> conn = st.take(key);
    const bool reused = conn != nullptr;
    if (!conn) {
      if (st.open[key] >= limits_.max_connections_per_host) {
        co_return make_error(503, "upstream_error", "upstream_connection_limit",
                             "too many upstream connections to " + ep.host);
      }
      auto c = co_await connect(st, ep, key, t);
      if (!c) co_return c.error();
      conn = std::move(c.value());
    }
    auto shared_state = std::shared_ptr<State>(state_.get(), [](State*) {});
    auto impl = std::make_unique<UpstreamResponse::Impl>();
    impl->pool = shared_state;
    impl->conn = std::move(conn);
    impl->timeouts = t;
    impl->parser.body_limit(boost::none);
    impl->parser.header_limit(64 * 1024);

    auto& c = *impl->conn;
    c.lowest().expires_after(ns(t.connect + t.first_byte));
    auto [wec, wn] =
        co_await c.with_stream([&](auto& s) { return bhttp::async_write(s, req, kNoThrow); });
    if (wec) {
      impl->failed = true;
      if (reused && attempt == 0 && stale_connection_error(wec)) continue;
      co_return classify(wec, "write");
    }
    c.lowest().expires_after(ns(t.first_byte));
    auto [hec, hn] = co_await c.with_stream(
        [&](auto& s) { return bhttp::async_read_header(s, c.buffer, impl->parser, kNoThrow); });
    c.lowest().expires_never();
    if (hec) {
      impl->failed = true;
      if (reused && attempt == 0 && stale_connection_error(hec)) continue;
      co_return classify(hec, "response");
    }
    const auto& head = impl->parser.get();
    impl->status = static_cast<int>(head.result_int());
    for (const auto& f : head)
      impl->headers.add(std::string(f.name_string()), std::string(f.value()));
    if (impl->parser.is_done()) impl->done = true;
    co_return UpstreamResponse(std::move(impl));
  }
  co_return upstream_error(kUpstreamReset, "upstream closed the connection");
}

}  // namespace bw::http
