#include "http/server.h"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <list>

#include "common/json_util.h"

namespace bw::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

class Session;

struct Server::Worker {
  // Destroyed bottom-up: the acceptor before its io_context, and the io_context (which destroys
  // suspended session coroutines) before the session list they unlink themselves from.
  std::list<Session*> sessions;  // touched only on this worker's thread
  asio::io_context ioc{1};
  std::unique_ptr<tcp::acceptor> acceptor;
};

namespace {

std::chrono::nanoseconds ns(Nanos n) {
  return std::chrono::nanoseconds(n);
}

// Maps a parse error to the status a client should see; 0 means close without answering.
int status_for_parse_error(const beast::error_code& ec) {
  if (ec == bhttp::error::header_limit) return 431;
  if (ec == bhttp::error::body_limit) return 413;
  if (ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
      ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
      ec == beast::error::timeout || ec == bhttp::error::partial_message) {
    return 0;
  }
  return 400;
}

std::string_view reason_for(int status) {
  switch (status) {
    case 400:
      return "The request could not be parsed as HTTP/1.1.";
    case 413:
      return "The request body is larger than the configured limit.";
    case 431:
      return "The request headers are larger than the configured limits.";
    default:
      return "Bad request.";
  }
}

}  // namespace

class Session final : public ResponseWriter {
 public:
  Session(Server& server, Server::Worker& worker, tcp::socket socket)
      : server_(server), worker_(worker), stream_(std::move(socket)) {
    worker_.sessions.push_back(this);
    it_ = std::prev(worker_.sessions.end());
    server_.active_.fetch_add(1);
  }
  ~Session() override {
    worker_.sessions.erase(it_);
    server_.active_.fetch_sub(1);
  }

  void cancel_if_idle() {
    if (idle_) {
      beast::error_code ec;
      stream_.socket().cancel(ec);
      stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    }
  }

  asio::awaitable<void> run() {
    const auto& opt = server_.options_;
    beast::error_code ec;
    stream_.socket().set_option(tcp::no_delay(true), ec);
    {
      auto ep = stream_.socket().remote_endpoint(ec);
      if (!ec) peer_ip_ = ep.address().to_string();
    }
    bool first = true;
    for (;;) {
      if (server_.draining_.load()) break;
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(opt.max_header_bytes));
      parser.body_limit(opt.max_body_bytes);
      // The first request gets the header timeout; a keep-alive wait gets the idle timeout plus
      // the header timeout, since the deadline covers the whole head.
      stream_.expires_after(ns(first ? opt.header_timeout : opt.idle_timeout + opt.header_timeout));
      idle_ = !first;
      auto [rec, n] = co_await bhttp::async_read_header(stream_, buffer_, parser, kNoThrow);
      idle_ = false;
      first = false;
      if (rec) {
        int status = status_for_parse_error(rec);
        if (status != 0) co_await send_protocol_error(status);
        break;
      }
      auto& head = parser.get();
      std::size_t count = 0;
      for (auto it = head.begin(); it != head.end(); ++it) ++count;
      if (count > opt.max_headers) {
        co_await send_protocol_error(431);
        break;
      }
      // Beast refuses Content-Length together with chunked; any other Transfer-Encoding (or both
      // headers at all) is refused here too, since an intermediary could read the body differently.
      if (head.count(bhttp::field::transfer_encoding) > 0 &&
          (head.count(bhttp::field::content_length) > 0 || !parser.chunked())) {
        co_await send_protocol_error(400);
        break;
      }
      if (auto cl = parser.content_length(); cl && *cl > opt.max_body_bytes) {
        co_await send_protocol_error(413);
        break;
      }
      if (bhttp::token_list{head[bhttp::field::expect]}.exists("100-continue")) {
        bhttp::response<bhttp::empty_body> cont{bhttp::status::continue_, 11};
        stream_.expires_after(ns(opt.write_timeout));
        co_await bhttp::async_write(stream_, cont, kNoThrow);
      }
      if (!parser.is_done()) {
        stream_.expires_after(ns(opt.body_timeout));
        auto [bec, bn] = co_await bhttp::async_read(stream_, buffer_, parser, kNoThrow);
        if (bec) {
          int status = status_for_parse_error(bec);
          if (status != 0) co_await send_protocol_error(status);
          break;
        }
      }
      stream_.expires_never();

      auto msg = parser.release();
      Request req;
      req.method = msg.method_string();
      req.target = msg.target();
      req.headers.reserve(count);
      for (const auto& f : msg) req.headers.emplace_back(f.name_string(), f.value());
      req.body = std::move(msg.body());
      req.peer_ip = peer_ip_;
      req.keep_alive = msg.keep_alive();
      keep_alive_ = req.keep_alive;
      started_ = false;
      finished_ = false;
      broken_ = false;

      server_.in_flight_.fetch_add(1);
      co_await server_.handler_(req, *this);
      server_.in_flight_.fetch_sub(1);
      if (!finished_ && !broken_) {
        // A handler that forgot to answer still answers.
        if (started_) {
          co_await end_stream();
        } else {
          co_await send(
              Response::json(500, openai_error_body("Internal error", "server_error", "")));
        }
      }
      if (broken_ || !keep_alive_ || server_.draining_.load()) break;
    }
    if (stream_.socket().is_open()) {
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
      stream_.close();
    }
  }

  asio::awaitable<bool> send(Response r) override {
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(r.status), 11};
    res.set(bhttp::field::server, server_.options_.server_name);
    for (const auto& [k, v] : r.headers.items()) res.insert(k, v);
    res.body() = std::move(r.body);
    res.keep_alive(keep_alive_ && !server_.draining_.load());
    res.prepare_payload();
    started_ = true;
    finished_ = true;
    stream_.expires_after(ns(server_.options_.write_timeout));
    auto [ec, n] = co_await bhttp::async_write(stream_, res, kNoThrow);
    stream_.expires_never();
    if (ec) broken_ = true;
    co_return !ec;
  }

  asio::awaitable<bool> begin_stream(int status, const Headers& headers) override {
    bhttp::response<bhttp::empty_body> res{static_cast<bhttp::status>(status), 11};
    res.set(bhttp::field::server, server_.options_.server_name);
    for (const auto& [k, v] : headers.items()) res.insert(k, v);
    res.keep_alive(keep_alive_ && !server_.draining_.load());
    res.chunked(true);
    bhttp::response_serializer<bhttp::empty_body> sr{res};
    started_ = true;
    stream_.expires_after(ns(server_.options_.write_timeout));
    auto [ec, n] = co_await bhttp::async_write_header(stream_, sr, kNoThrow);
    stream_.expires_never();
    if (ec) broken_ = true;
    co_return !ec;
  }

  asio::awaitable<bool> write_chunk(std::string_view data) override {
    if (broken_) co_return false;
    if (data.empty()) co_return true;  // an empty chunk would end the body
    stream_.expires_after(ns(server_.options_.write_timeout));
    auto [ec, n] =
        co_await asio::async_write(stream_, bhttp::make_chunk(asio::buffer(data)), kNoThrow);
    stream_.expires_never();
    if (ec) broken_ = true;
    co_return !ec;
  }

  asio::awaitable<bool> end_stream() override {
    finished_ = true;
    if (broken_) co_return false;
    stream_.expires_after(ns(server_.options_.write_timeout));
    auto [ec, n] = co_await asio::async_write(stream_, bhttp::make_chunk_last(), kNoThrow);
    stream_.expires_never();
    if (ec) broken_ = true;
    co_return !ec;
  }

  bool started() const override { return started_; }
  void close_after() override { keep_alive_ = false; }
  void abort() override {
    broken_ = true;
    keep_alive_ = false;
    beast::error_code ec;
    stream_.socket().set_option(asio::socket_base::linger(true, 0), ec);  // close → RST
    stream_.socket().close(ec);
  }

 private:
  asio::awaitable<void> send_protocol_error(int status) {
    keep_alive_ = false;
    auto body = openai_error_body(reason_for(status), "invalid_request_error",
                                  status == 413   ? "request_too_large"
                                  : status == 431 ? "request_header_fields_too_large"
                                                  : "bad_request");
    co_await send(Response::json(status, std::move(body)));
  }

  Server& server_;
  Server::Worker& worker_;
  std::list<Session*>::iterator it_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::string peer_ip_;
  bool idle_ = false;
  bool keep_alive_ = true;
  bool started_ = false;
  bool finished_ = false;
  bool broken_ = false;
};

namespace {

asio::awaitable<void> accept_loop(Server& server, Server::Worker& worker) {
  for (;;) {
    auto [ec, socket] = co_await worker.acceptor->async_accept(kNoThrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !worker.acceptor->is_open()) co_return;
      // EMFILE and friends: back off briefly instead of spinning.
      asio::steady_timer t(worker.ioc, std::chrono::milliseconds(50));
      co_await t.async_wait(kNoThrow);
      continue;
    }
    auto session = std::make_shared<Session>(server, worker, std::move(socket));
    asio::co_spawn(
        worker.ioc, [session]() -> asio::awaitable<void> { co_await session->run(); },
        asio::detached);
  }
}

}  // namespace

Server::Server(ServerOptions options, Handler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {
  int n = options_.workers > 0
              ? options_.workers
              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 0; i < n; ++i) workers_.push_back(std::make_unique<Worker>());
}

Server::~Server() {
  stop();
}

Result<Ok> Server::start() {
  beast::error_code ec;
  auto addr = asio::ip::make_address(options_.host, ec);
  if (ec) {
    return make_error(500, "server_error", "", "invalid listen address '" + options_.host + "'");
  }
  std::uint16_t port = options_.port;
  for (auto& w : workers_) {
    auto acc = std::make_unique<tcp::acceptor>(w->ioc);
    tcp::endpoint ep(addr, port);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      int one = 1;
      if (::setsockopt(acc->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        ec.assign(errno, boost::system::system_category());
      }
    }
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return make_error(
          500, "server_error", "",
          "cannot listen on " + options_.host + ":" + std::to_string(port) + ": " + ec.message());
    }
    if (port == 0) port = acc->local_endpoint().port();
    w->acceptor = std::move(acc);
  }
  port_ = port;
  return Ok{};
}

void Server::run() {
  for (auto& w : workers_) {
    asio::co_spawn(w->ioc, accept_loop(*this, *w), asio::detached);
    threads_.emplace_back([w = w.get()] { w->ioc.run(); });
  }
}

void Server::begin_drain() {
  if (draining_.exchange(true)) return;
  for (auto& w : workers_) {
    asio::post(w->ioc, [w = w.get()] {
      beast::error_code ec;
      if (w->acceptor) w->acceptor->close(ec);
      for (auto* s : w->sessions) s->cancel_if_idle();
    });
  }
}

std::size_t Server::wait_drained(Nanos timeout) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(timeout);
  while (active_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return active_.load();
}

void Server::stop() {
  if (stopped_.exchange(true)) return;
  for (auto& w : workers_) w->ioc.stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

}  // namespace bw::http
