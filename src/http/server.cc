#include "http/server.h"

#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/read_size.hpp>
#include <boost/beast/http/error.hpp>
#include <chrono>
#include <list>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <memory>

#include "common/json_util.h"
#include "http/deadline.h"
#include "http/wire.h"

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
  // Connections assigned to this worker: counted by the accepting thread when it picks this
  // worker, uncounted when the session ends. Read by every acceptor to balance.
  std::atomic<int> load{0};
  asio::io_context ioc{1};
  std::unique_ptr<tcp::acceptor> acceptor;
};

namespace {

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
      : server_(server), worker_(worker), socket_(std::move(socket)) {
    worker_.sessions.push_back(this);
    it_ = std::prev(worker_.sessions.end());
    server_.active_.fetch_add(1);
    deadline_.bind(
        socket_.get_executor(),
        [](void* self) {
          beast::error_code ec;
          static_cast<Session*>(self)->socket_.cancel(ec);
        },
        this);
    watch_after_.bind(
        socket_.get_executor(),
        [](void* self) {
          auto& s = *static_cast<Session*>(self);
          if (s.watch_ && s.watch_->active && !s.watch_->pending) s.arm_watch();
        },
        this);
  }
  ~Session() override {
    end_watch();
    worker_.sessions.erase(it_);
    server_.active_.fetch_sub(1);
    worker_.load.fetch_sub(1, std::memory_order_relaxed);
  }

  void cancel_if_idle() {
    if (idle_) {
      beast::error_code ec;
      socket_.cancel(ec);
      socket_.shutdown(tcp::socket::shutdown_both, ec);
    }
  }

  asio::awaitable<void> run() {
    const auto& opt = server_.options_;
    beast::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    {
      auto ep = socket_.remote_endpoint(ec);
      if (!ec) req_.peer_ip = ep.address().to_string();
    }
    bool first = true;
    for (;;) {
      if (server_.draining_.load()) break;
      wire::RequestParser parser(arena_, fields_, req_.body, opt.max_headers);
      parser.header_limit(static_cast<std::uint32_t>(opt.max_header_bytes));
      parser.body_limit(opt.max_body_bytes);
      parser.eager(true);
      // The first request gets the header timeout; a keep-alive wait gets the idle timeout plus
      // the header timeout, since the deadline covers the whole head.
      deadline_.arm(first ? opt.header_timeout : opt.idle_timeout + opt.header_timeout);
      idle_ = !first && buffer_.size() == 0;
      auto rec = co_await read(parser, false);
      idle_ = false;
      first = false;
      if (rec) {
        deadline_.disarm();
        int status = parser.too_many_fields() ? 431 : status_for_parse_error(rec);
        if (status != 0) co_await send_protocol_error(status);
        break;
      }
      // Beast refuses Content-Length together with chunked; any other Transfer-Encoding (or both
      // headers at all) is refused here too, since an intermediary could read the body differently.
      if (parser.has_transfer_encoding() && (parser.has_content_length() || !parser.chunked())) {
        deadline_.disarm();
        co_await send_protocol_error(400);
        break;
      }
      if (parser.expects_continue() && !parser.is_done()) {
        deadline_.arm(opt.write_timeout);
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        co_await asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                                   kNoThrow);
      }
      if (!parser.is_done()) {
        deadline_.arm(opt.body_timeout);
        auto bec = co_await read(parser, true);
        if (bec) {
          deadline_.disarm();
          int status = status_for_parse_error(bec);
          if (status != 0) co_await send_protocol_error(status);
          break;
        }
      }
      deadline_.disarm();

      req_.method = parser.method();
      req_.target = parser.target();
      parser.headers(req_.headers);
      req_.keep_alive = parser.keep_alive();
      keep_alive_ = req_.keep_alive;
      started_ = false;
      finished_ = false;
      broken_ = false;

      server_.in_flight_.fetch_add(1);
      co_await server_.handler_(req_, *this);
      server_.in_flight_.fetch_sub(1);
      end_watch();
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
      // A large request's buffers are not kept for the life of the connection.
      if (req_.body.capacity() > kKeepBytes) std::string().swap(req_.body);
      if (out_.capacity() > kKeepBytes) std::string().swap(out_);
    }
    deadline_.disarm();
    if (socket_.is_open()) {
      socket_.shutdown(tcp::socket::shutdown_send, ec);
      socket_.close(ec);
    }
  }

  asio::awaitable<bool> send(Response r) override {
    started_ = true;
    finished_ = true;
    out_.clear();
    wire::append_response_head(out_, r.status, server_.options_.server_name, r.headers,
                               static_cast<std::int64_t>(r.body.size()), response_keep_alive());
    // A small body goes into the same buffer: one contiguous write.
    if (r.body.size() <= kInlineBody) {
      out_.append(r.body);
      co_return co_await write(std::array<asio::const_buffer, 1>{asio::buffer(out_)});
    }
    co_return co_await write(
        std::array<asio::const_buffer, 2>{asio::buffer(out_), asio::buffer(r.body)});
  }

  asio::awaitable<bool> begin_stream(int status, const Headers& headers) override {
    started_ = true;
    out_.clear();
    wire::append_response_head(out_, status, server_.options_.server_name, headers, -1,
                               response_keep_alive());
    co_return co_await write(std::array<asio::const_buffer, 1>{asio::buffer(out_)});
  }

  asio::awaitable<bool> write_chunk(std::string_view data) override {
    if (broken_) co_return false;
    if (data.empty()) co_return true;  // an empty chunk would end the body
    char head[20];
    const std::size_t n = wire::chunk_header(head, data.size());
    co_return co_await write(std::array<asio::const_buffer, 3>{
        asio::buffer(head, n), asio::buffer(data.data(), data.size()), asio::buffer("\r\n", 2)});
  }

  asio::awaitable<bool> end_stream() override {
    finished_ = true;
    if (broken_) co_return false;
    co_return co_await write(std::array<asio::const_buffer, 1>{asio::buffer("0\r\n\r\n", 5)});
  }

  void watch_disconnect(std::function<void()> on_gone) override {
    if (broken_ || !socket_.is_open()) return;
    // Bytes already buffered are a pipelined request: EOF behind them cannot be seen.
    if (buffer_.size() > 0) return;
    if (!watch_) watch_ = std::make_shared<Watch>();
    watch_->on_gone = std::move(on_gone);
    watch_->active = true;
    // A request that is answered within kWatchAfter costs no socket operation: the readiness
    // wait starts only once it has taken that long (a queue wait, an upstream that generates).
    if (!watch_->pending) watch_after_.arm(kWatchAfter);
  }

  bool started() const override { return started_; }
  void close_after() override { keep_alive_ = false; }
  void abort() override {
    broken_ = true;
    keep_alive_ = false;
    deadline_.disarm();
    beast::error_code ec;
    socket_.set_option(asio::socket_base::linger(true, 0), ec);  // close → RST
    socket_.close(ec);
  }

 private:
  static constexpr std::size_t kInlineBody = 16 * 1024;
  static constexpr Nanos kWatchAfter = 20 * kNanosPerMilli;
  static constexpr std::size_t kKeepBytes = 256 * 1024;

  bool response_keep_alive() const { return keep_alive_ && !server_.draining_.load(); }

  // Disconnect watch: a readiness wait on the client socket while the handler runs. Its state
  // is shared with the wait's completion handler, which may run after the session is gone; the
  // handler touches the session only while `active`, which the session clears when the handler
  // returns and in its destructor (all on this worker's thread).
  struct Watch {
    bool active = false;   // a handler is running and wants to know
    bool pending = false;  // an async_wait is outstanding
    std::function<void()> on_gone;
  };

  void arm_watch() {
    watch_->pending = true;
    socket_.async_wait(tcp::socket::wait_read, [w = watch_, this](const beast::error_code& ec) {
      w->pending = false;
      if (!w->active || ec) return;
      char byte;
      const ssize_t n = ::recv(socket_.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) {  // a pipelined request: keep it for the next read, stop watching
        w->active = false;
        return;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        arm_watch();
        return;
      }
      // EOF or a reset: the client is gone.
      w->active = false;
      auto f = std::move(w->on_gone);
      w->on_gone = nullptr;
      if (f) f();
    });
  }

  void end_watch() {
    if (!watch_) return;
    watch_after_.disarm();
    watch_->active = false;
    watch_->on_gone = nullptr;
  }

  // Feeds the parser from the buffer and the socket until it has the head (whole = false) or
  // the whole message. Returns the parse or socket error; a deadline that passed reads as
  // beast::error::timeout.
  asio::awaitable<beast::error_code> read(wire::RequestParser& p, bool whole) {
    for (;;) {
      if (buffer_.size() > 0) {
        beast::error_code ec;
        const std::size_t used = p.put(buffer_.data(), ec);
        buffer_.consume(used);
        if (ec && ec != bhttp::error::need_more) co_return ec;
        if (!ec && (whole ? p.is_done() : p.is_header_done())) co_return beast::error_code{};
        if (!ec && used > 0 && buffer_.size() > 0) continue;
      }
      auto [ec, n] = co_await socket_.async_read_some(
          buffer_.prepare(beast::read_size(buffer_, 64 * 1024)), kNoThrow);
      if (deadline_.expired()) co_return beast::error::timeout;
      if (ec == asio::error::eof) {
        if (!p.got_some()) co_return bhttp::error::end_of_stream;
        beast::error_code eec;
        p.put_eof(eec);
        if (eec) co_return eec;
        if (whole ? p.is_done() : p.is_header_done()) co_return beast::error_code{};
        co_return bhttp::error::partial_message;
      }
      if (ec) co_return ec;
      buffer_.commit(n);
    }
  }

  template <class Buffers>
  asio::awaitable<bool> write(const Buffers& buffers) {
    if (broken_) co_return false;
    deadline_.arm(server_.options_.write_timeout);
    auto [ec, n] = co_await asio::async_write(socket_, buffers, kNoThrow);
    deadline_.disarm();
    if (ec) broken_ = true;
    co_return !ec;
  }

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
  tcp::socket socket_;
  Deadline deadline_;
  Deadline watch_after_;  // starts the disconnect watch of a request that runs long
  beast::flat_buffer buffer_;
  // Reused from request to request: the parser's arena and field spans, the request, the
  // response head.
  std::string arena_;
  std::vector<std::pair<std::size_t, std::size_t>> fields_;
  Request req_;
  std::string out_;
  std::shared_ptr<Watch> watch_;  // created at the first watch_disconnect of the connection
  bool idle_ = false;
  bool keep_alive_ = true;
  bool started_ = false;
  bool finished_ = false;
  bool broken_ = false;
};

namespace {

void spawn_session(Server& server, Server::Worker& worker, tcp::socket socket) {
  auto session = std::make_shared<Session>(server, worker, std::move(socket));
  asio::co_spawn(
      worker.ioc, [session]() -> asio::awaitable<void> { co_await session->run(); },
      asio::detached);
}

}  // namespace

// SO_REUSEPORT spreads connections by a hash of their addresses, which leaves one worker with
// noticeably more of a few dozen keep-alive connections than another (its requests then queue
// longer: a p99 tail). Each acceptor therefore gives a new connection to the least loaded worker
// when that worker holds fewer connections than its own; the socket moves by its descriptor
// (one cross-thread post per connection, none per request).
Server::Worker& Server::pick_worker(Worker& self) {
  Worker* best = &self;
  int best_load = self.load.load(std::memory_order_relaxed);
  for (auto& w : workers_) {
    const int l = w->load.load(std::memory_order_relaxed);
    if (l < best_load) {
      best = w.get();
      best_load = l;
    }
  }
  best->load.fetch_add(1, std::memory_order_relaxed);
  return *best;
}

asio::awaitable<void> Server::accept_loop(Server& server, Worker& worker) {
  for (;;) {
    auto [ec, socket] = co_await worker.acceptor->async_accept(kNoThrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !worker.acceptor->is_open()) co_return;
      // EMFILE and friends: back off briefly instead of spinning.
      asio::steady_timer t(worker.ioc, std::chrono::milliseconds(50));
      co_await t.async_wait(kNoThrow);
      continue;
    }
    Worker& target = server.pick_worker(worker);
    if (&target == &worker) {
      spawn_session(server, worker, std::move(socket));
      continue;
    }
    const auto protocol = socket.local_endpoint(ec).protocol();
    const int fd = ec ? -1 : socket.release(ec);
    if (fd < 0 || ec) {  // the peer is already gone, or the descriptor cannot be detached
      target.load.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    asio::post(target.ioc, [&server, &target, protocol, fd] {
      tcp::socket moved(target.ioc);
      beast::error_code aec;
      moved.assign(protocol, fd, aec);
      if (aec) {
        ::close(fd);
        target.load.fetch_sub(1, std::memory_order_relaxed);
        return;
      }
      spawn_session(server, target, std::move(moved));
    });
  }
}

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

double Server::event_loop_lag_s() {
  const double last = static_cast<double>(lag_ns_.exchange(0)) / 1e9;
  if (stopped_.load()) return last;
  const auto posted = std::chrono::steady_clock::now();
  for (auto& w : workers_) {
    // A handler still queued when the io_context is destroyed is dropped, never run.
    asio::post(w->ioc, [this, posted] {
      const std::int64_t d = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now() - posted)
                                 .count();
      auto prev = lag_ns_.load();
      while (d > prev && !lag_ns_.compare_exchange_weak(prev, d)) {
      }
    });
  }
  return last;
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
