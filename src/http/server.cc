#include "http/server.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
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
#include <utility>

#include "common/asio_direct.h"
#include "common/json_util.h"
#include "common/read_buffer.h"
#include "http/deadline.h"
#include "http/wire.h"

namespace bw::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
// The socket operations of a request, awaited by the coroutine itself: with use_awaitable each
// one is a coroutine of its own (its initiation), a frame allocated, pushed, resumed, popped
// and freed per read or write; a deferred operation is started from the awaiting coroutine's
// own suspension and its completion resumes that coroutine directly. bw::direct completes as
// as_tuple(deferred) does, without the executor work each operation would keep
// (common/asio_direct.h).
constexpr auto kDirect = bw::direct;

class Session;

struct Server::Worker {
  // Destroyed bottom-up: the acceptor before its io_context, and the io_context (which destroys
  // suspended session coroutines) before the session list they unlink themselves from.
  std::list<Session*> sessions;  // touched only on this worker's thread
  // Connections assigned to this worker: counted by the accepting thread when it picks this
  // worker, uncounted when the session ends. Read by every acceptor to balance.
  std::atomic<int> load{0};
  // One thread runs this io_context, and every socket of the worker (listener, client
  // connections, upstream pool, Redis) is created, used, cancelled and closed on that thread:
  // connections accepted elsewhere arrive as a descriptor in a post. So the reactor's per-socket
  // mutex guards nothing, and UNSAFE_IO drops it; the scheduler's and the reactor's registration
  // locks stay, so posts and timers from other threads (ledger commits, admission wake-ups,
  // drain, stop) remain safe. A socket operation started from another thread would race here.
  // The scheduler's lock is taken once per turn of the reactor, not per handler: a one-thread
  // io_context runs its handlers from a queue of the thread's own (src/common/scheduler.ipp).
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  std::unique_ptr<tcp::acceptor> acceptor;
};

void ResponseWriter::head(int status, std::span<const std::string_view> lines, std::size_t) {
  pending_ = std::make_unique<Response>();
  pending_->status = status;
  // Whole valid lines without framing headers: a list's own form.
  for (const auto l : lines) pending_->headers.raw().append(l);
}

asio::awaitable<bool> ResponseWriter::send_body(std::string body) {
  Response r = std::move(*pending_);
  pending_.reset();
  r.body = std::move(body);
  co_return co_await send(std::move(r));
}

void ResponseWriter::stream_head(int status, std::span<const std::string_view> lines) {
  pending_ = std::make_unique<Response>();
  pending_->status = status;
  for (const auto l : lines) pending_->headers.raw().append(l);
}

asio::awaitable<bool> ResponseWriter::start_stream(bool held) {
  const Response r = std::move(*pending_);
  pending_.reset();
  // An if, not ?: around the two co_awaits, which GCC 12 would both run.
  if (held) co_return co_await begin_stream_held(r.status, r.headers);
  co_return co_await begin_stream(r.status, r.headers);
}

namespace {

// The answer to a request refused before its handler ran; status 0 = close without answering.
struct Refusal {
  int status = 0;
  std::string_view reason;  // a stable token: metric label and access-log field
  std::string_view code;    // the error body's code
  std::string_view message;
};

Refusal refusal(std::string_view reason) {
  if (reason == "too_many_headers" || reason == "header_too_large") {
    return {431, reason, "request_header_fields_too_large",
            "The request headers are larger than the configured limits."};
  }
  if (reason == "trailer_too_large") {
    return {431, reason, "request_header_fields_too_large",
            "The chunked body's trailer section is larger than the header limit."};
  }
  if (reason == "body_too_large") {
    return {413, reason, "request_too_large",
            "The request body is larger than the configured limit."};
  }
  if (reason == "chunk_line_too_long") {
    return {400, reason, "bad_request",
            "A chunk-size line (with its extensions) is longer than the limit."};
  }
  if (reason == "header_timeout" || reason == "body_timeout") {
    return {408, reason, "request_timeout", "The request was not received in time."};
  }
  if (reason == "bad_transfer_encoding") {
    return {400, reason, "bad_request",
            "Only 'Transfer-Encoding: chunked' (alone, without Content-Length) is accepted."};
  }
  if (reason == "multiple_content_length") {
    return {400, reason, "bad_request", "A request may carry one Content-Length with one value."};
  }
  if (reason == "missing_host" || reason == "duplicate_host") {
    return {400, reason, "bad_request", "An HTTP/1.1 request needs exactly one Host header."};
  }
  return {400, reason, "bad_request", "The request could not be parsed as HTTP/1.1."};
}

// The reason token for a parse or socket error; empty means the client went away (no answer,
// nothing to report).
std::string_view reason_for_error(const beast::error_code& ec, bool body_phase) {
  if (ec == bhttp::error::header_limit) {
    return body_phase ? "trailer_too_large" : "header_too_large";
  }
  if (ec == bhttp::error::body_limit) return "body_too_large";
  if (ec == beast::error::timeout) return body_phase ? "body_timeout" : "header_timeout";
  if (ec == bhttp::error::multiple_content_length) return "multiple_content_length";
  if (ec == bhttp::error::bad_transfer_encoding) return "bad_transfer_encoding";
  if (ec == bhttp::error::bad_chunk || ec == bhttp::error::bad_chunk_extension) {
    return "bad_chunk";
  }
  if (ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
      ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
      ec == bhttp::error::partial_message || ec == asio::error::broken_pipe) {
    return {};
  }
  return "bad_request";
}

// The field spans of the request head being parsed (wire::RequestParser's), needed only until
// the request is taken: a session takes the thread's spare list when its parse starts and gives
// it back once the request is taken, so that the list the next request's parse writes is the
// one the previous parse on the thread wrote (in the core's caches), not one per connection
// (cold at a few hundred connections per worker). A parse that waits for more bytes keeps it;
// a parse that starts meanwhile uses a list of its own.
using FieldSpans = std::vector<std::pair<std::size_t, std::size_t>>;
FieldSpans& spare_fields() {
  thread_local FieldSpans spare;
  return spare;
}

}  // namespace

class Session final : public ResponseWriter {
 public:
  Session(Server& server, Server::Worker& worker, tcp::socket socket)
      : server_(server), socket_(std::move(socket)), worker_(worker) {
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
          if (s.watching_ && !s.wait_pending()) s.arm_watch();
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
    open_connection();
    bool first = true;
    for (;;) {
      if (server_.draining_.load()) break;
      begin_request(first);
      first = false;
      // The request's reading, out of this frame but for the wait for its first bytes (a
      // keep-alive connection's idle wait): the parser lives on the stack of read_now(), which
      // settles a request that is at hand, and otherwise in read_rest()'s frame, which reads the
      // rest. This frame, held across the handler's wait, keeps neither the parser nor the
      // rare paths' temporaries (a refusal, 100-continue, an unanswered request).
      Read got = Read::kMore;
      if (buffer_.size() == 0) got = first_bytes(co_await read_op());
      if (got == Read::kMore) {
        asio::awaitable<Read> rest;
        got = read_now(rest);
        if (got == Read::kMore) got = co_await std::move(rest);
      }
      if (got != Read::kRequest) {
        if (!refusal_.empty()) co_await refuse();
        break;
      }

      server_.in_flight_.fetch_add(1);
      co_await server_.handler_(req_, *this);
      server_.in_flight_.fetch_sub(1);
      if (!answered()) co_await answer_unanswered();
      if (broken_ || !keep_alive_ || server_.draining_.load()) break;
      // The request's buffers go back to the thread's stash: the connection keeps none while it
      // waits for its next request, and the next request of any connection takes a warm one.
      req_.headers.clear();
      stash::release(req_.body.own());
      stash::release(arena_);
      stash::release(out_);
    }
    close_connection();
  }

  asio::awaitable<bool> send(Response r) override {
    started_ = true;
    finished_ = true;
    out_.clear();
    stash::room(out_, kHeadRoom + r.headers.wire().size() +
                          (r.body.size() <= kInlineBody ? r.body.size() : 0));
    wire::append_response_head(out_, r.status, server_.options_.server_name, r.headers,
                               static_cast<std::int64_t>(r.body.size()), response_keep_alive());
    if (broken_) co_return false;
    // A small body goes into the same buffer: one contiguous write.
    bool ok = false;
    if (head_only_ || r.body.size() <= kInlineBody) {
      if (!head_only_) out_.append(r.body);
      std::array<asio::const_buffer, 1> b{asio::buffer(out_)};
      if (wrote_now(b, ok)) co_return ok;
      co_return wrote(co_await start_write(b));
    }
    std::array<asio::const_buffer, 2> b{asio::buffer(out_), asio::buffer(r.body)};
    if (wrote_now(b, ok)) co_return ok;
    co_return wrote(co_await start_write(b));
  }

  void head(int status, std::span<const std::string_view> lines, std::size_t body_size) override {
    started_ = true;
    finished_ = true;
    out_.clear();
    std::size_t size = 0;
    for (const auto l : lines) size += l.size();
    stash::room(out_, kHeadRoom + size + (body_size <= kInlineBody ? body_size : 0));
    wire::append_response_head(out_, status, server_.options_.server_name, lines,
                               static_cast<std::int64_t>(body_size), response_keep_alive());
  }

  std::optional<bool> send_body_now(std::string& body) override {
    if (broken_) return std::nullopt;  // send_body answers
    // As in send(): a small body goes into the same buffer, for one contiguous write.
    if (head_only_ || body.size() <= kInlineBody) {
      if (!head_only_) out_.append(body);
      stash::give(body);  // as a Response's would be
      std::array<asio::const_buffer, 1> b{asio::buffer(out_)};
      return write_or_keep(b);
    }
    // Kept until written: the rest of a write that does not settle at once may lie in it.
    body_ = std::move(body);
    std::array<asio::const_buffer, 2> b{asio::buffer(out_), asio::buffer(body_)};
    auto r = write_or_keep(b);
    if (r) stash::release(body_);
    return r;
  }

  asio::awaitable<bool> send_body(std::string body) override {
    if (!resume_) {
      if (auto r = send_body_now(body)) co_return *r;
    }
    // The rest of a write begun by send_body_now (here or by the caller); none when broken.
    bool ok = false;
    if (resume_) ok = wrote(co_await write_rest());
    stash::release(body_);
    stash::give(body);  // as a Response's would be
    co_return ok;
  }

  asio::awaitable<bool> begin_stream(int status, const Headers& headers) override {
    started_ = true;
    out_.clear();
    stash::room(out_, kHeadRoom + headers.wire().size());
    wire::append_response_head(out_, status, server_.options_.server_name, headers, -1,
                               response_keep_alive());
    if (broken_) co_return false;
    std::array<asio::const_buffer, 1> b{asio::buffer(out_)};
    if (bool ok = false; wrote_now(b, ok)) co_return ok;
    co_return wrote(co_await start_write(b));
  }

  void stream_head(int status, std::span<const std::string_view> lines) override {
    started_ = true;
    out_.clear();
    std::size_t size = 0;
    for (const auto l : lines) size += l.size();
    stash::room(out_, kHeadRoom + size);
    wire::append_response_head(out_, status, server_.options_.server_name, lines, -1,
                               response_keep_alive());
  }

  std::optional<bool> start_stream_now(bool held) override {
    // As begin_stream_held and begin_stream: a HEAD request's head leaves at once.
    if (held && !head_only_) {
      head_held_ = true;
      return !broken_;
    }
    if (broken_) return false;
    std::array<asio::const_buffer, 1> b{asio::buffer(out_)};
    return write_or_keep(b);
  }

  asio::awaitable<bool> start_stream(bool held) override {
    if (!resume_) {
      if (auto r = start_stream_now(held)) co_return *r;
    }
    co_return wrote(co_await write_rest());
  }

  asio::awaitable<bool> begin_stream_held(int status, const Headers& headers) override {
    if (head_only_) co_return co_await begin_stream(status, headers);
    started_ = true;
    out_.clear();
    stash::room(out_, kHeadRoom + headers.wire().size());
    wire::append_response_head(out_, status, server_.options_.server_name, headers, -1,
                               response_keep_alive());
    head_held_ = true;
    co_return !broken_;
  }

  asio::awaitable<bool> write_chunk(std::string_view data) override {
    if (broken_) co_return false;
    if (data.empty() || head_only_) co_return true;  // an empty chunk would end the body
    char head[20];
    const std::size_t n = wire::chunk_header(head, data.size());
    std::array<asio::const_buffer, 4> b{held_head(), asio::buffer(head, n),
                                        asio::buffer(data.data(), data.size()),
                                        asio::buffer("\r\n", 2)};
    if (bool ok = false; wrote_now(b, ok)) co_return ok;
    co_return wrote(co_await start_write(b));
  }

  asio::awaitable<bool> end_stream() override {
    finished_ = true;
    if (broken_) co_return false;
    if (head_only_) co_return true;
    std::array<asio::const_buffer, 2> b{held_head(), asio::buffer("0\r\n\r\n", 5)};
    if (bool ok = false; wrote_now(b, ok)) co_return ok;
    co_return wrote(co_await start_write(b));
  }

  asio::awaitable<bool> end_stream_with(std::string_view data) override {
    if (broken_) {
      finished_ = true;
      co_return false;
    }
    if (data.empty() || head_only_) co_return co_await end_stream();
    finished_ = true;
    char head[20];
    const std::size_t n = wire::chunk_header(head, data.size());
    std::array<asio::const_buffer, 4> b{held_head(), asio::buffer(head, n),
                                        asio::buffer(data.data(), data.size()),
                                        asio::buffer("\r\n0\r\n\r\n", 7)};
    if (bool ok = false; wrote_now(b, ok)) co_return ok;
    co_return wrote(co_await start_write(b));
  }

  std::optional<bool> write_chunk_pieces_now(std::span<const std::string_view> pieces,
                                             bool end) override {
    std::size_t size = 0;
    for (auto p : pieces) size += p.size();
    // The rare cases go as write_chunk and end_stream_with do (write_chunk_pieces).
    if (pieces.size() > kMaxChunkPieces || size == 0 || broken_ || head_only_) return std::nullopt;
    if (end) finished_ = true;
    RestBuffers buffers{};  // unused ones stay empty
    buffers[0] = held_head();
    buffers[1] = asio::buffer(chunk_head_, wire::chunk_header(chunk_head_, size));
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      buffers[2 + i] = asio::buffer(pieces[i].data(), pieces[i].size());
    }
    buffers[2 + pieces.size()] = end ? asio::buffer("\r\n0\r\n\r\n", 7) : asio::buffer("\r\n", 2);
    return write_or_keep(buffers);
  }

  asio::awaitable<bool> write_chunk_pieces(std::span<const std::string_view> pieces,
                                           bool end) override {
    if (!resume_) {
      if (auto r = write_chunk_pieces_now(pieces, end)) co_return *r;
      if (!resume_) co_return co_await ResponseWriter::write_chunk_pieces(pieces, end);
    }
    co_return wrote(co_await write_rest());
  }

  void watch_disconnect(std::function<void()> on_gone) override {
    if (broken_ || !socket_.is_open()) return;
    // Bytes already buffered are a pipelined request: EOF behind them cannot be seen.
    if (buffer_.size() > 0) return;
    on_gone_ = std::move(on_gone);
    watching_ = true;
    // A wait that an earlier request started and that is still pending watches for this one.
    if (wait_pending()) {
      watch_->active = true;
      return;
    }
    // A request that is answered within kWatchAfter costs no socket operation: the readiness
    // wait starts only once it has taken that long (a queue wait, an upstream that generates).
    watch_after_.arm(kWatchAfter);
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
  // A body up to this size is copied behind the head into the connection's buffer (one write of
  // one buffer); a larger one is written from where it is, with the head in a gather write. A
  // copy costs more than the gather: the buffer's lines are written cold at many connections.
  static constexpr std::size_t kInlineBody = 256;
  // The buffers of the largest write (write_chunk_pieces').
  using RestBuffers = std::array<asio::const_buffer, kMaxChunkPieces + 3>;
  // The least a read of the client offers (read_size alone offers 512 bytes to an empty buffer:
  // three reads for a 1 KiB request). Kept per connection, so it bounds idle memory too.
  static constexpr std::size_t kReadBytes = 4 * 1024;
  static constexpr Nanos kWatchAfter = 20 * kNanosPerMilli;
  // The status line, the server name and the framing lines of a response head.
  static constexpr std::size_t kHeadRoom = 128;
  // The request's head fields (the parser's arena) of a usual request.
  static constexpr std::size_t kArenaRoom = 512;

  bool response_keep_alive() const { return keep_alive_ && !server_.draining_.load(); }

  // The head that begin_stream_held kept back, once (an empty buffer when there is none).
  asio::const_buffer held_head() {
    if (!head_held_) return asio::const_buffer();
    head_held_ = false;
    return asio::buffer(out_);
  }

  // Disconnect watch: a readiness wait on the client socket while the handler runs, started
  // once the handler has run kWatchAfter. The wait's state is shared with its completion
  // handler, which may run after the session is gone; the handler touches the session only
  // while `active`, which the session clears when the handler returns and in its destructor
  // (all on this worker's thread). A request answered sooner touches only the session's own
  // members (on_gone_, watching_): the shared state, like the socket's wait, is cold by then at
  // hundreds of connections.
  struct Watch {
    bool active = false;   // the wait is for a handler that is running
    bool pending = false;  // an async_wait is outstanding
  };

  // Whether a readiness wait may still be pending: wait_started_ says when it cannot be (read
  // without touching watch_, which only requests that ran long have used).
  bool wait_pending() const { return wait_started_ && watch_->pending; }

  void arm_watch() {
    if (!watch_) watch_ = std::make_shared<Watch>();
    watch_->active = true;
    watch_->pending = true;
    wait_started_ = true;
    auto ready = [w = watch_, this](const beast::error_code& ec) {
      w->pending = false;
      if (!w->active) return;  // the handler returned (the session may be gone)
      wait_started_ = false;
      if (ec) return;
      char byte;
      const ssize_t n = ::recv(socket_.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) {  // a pipelined request: keep it for the next read, stop watching
        w->active = false;
        watching_ = false;
        return;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        arm_watch();
        return;
      }
      // EOF or a reset: the client is gone.
      w->active = false;
      watching_ = false;
      auto f = std::move(on_gone_);
      on_gone_ = nullptr;
      if (f) f();
    };
    // The wait's memory comes from the thread's frame lists (common/asio_frames.h), as that of
    // the I/O the coroutines await does.
    socket_.async_wait(
        tcp::socket::wait_read,
        asio::bind_allocator(frame_pool::HandlerAllocator<void>(), std::move(ready)));
  }

  void end_watch() {
    if (!watching_ && !wait_started_) return;
    watch_after_.disarm();
    watching_ = false;
    on_gone_ = nullptr;
    if (wait_started_) watch_->active = false;
  }

  // A request's reads: feed() runs the parser over the bytes already read, and while it asks
  // for more, run() awaits read_op() itself and hands its result to received(). A read is then
  // one deferred operation awaited by run(), not a coroutine of its own (a frame allocated,
  // pushed, resumed, popped and freed per head or body read). Both steps return true when they
  // settle the call, with `ec` the parse or socket error (a deadline that passed reads as
  // beast::error::timeout): the head (whole = false) or the whole message is in the parser.
  bool feed(wire::RequestParser& p, bool whole, beast::error_code& ec) {
    while (buffer_.size() > 0) {
      if (!p.got_some()) stash::room(arena_, kArenaRoom);
      const std::size_t used = p.put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec && ec != bhttp::error::need_more) return true;
      // Beast bounds the head by header_limit but neither a chunk-size line nor the trailer
      // section; unbounded, one connection could make this buffer grow until the body timeout.
      // (With eager parsing, a head-phase put can already be inside the body.)
      if (ec == bhttp::error::need_more && p.is_header_done()) {
        overflow_ = overlong_pending(
            std::string_view(static_cast<const char*>(buffer_.data().data()), buffer_.size()));
        if (!overflow_.empty()) {
          ec = bhttp::error::buffer_overflow;
          return true;
        }
        if (!whole) {  // the head is complete
          ec = {};
          return true;
        }
      }
      if (!ec && (whole ? p.is_done() : p.is_header_done())) return true;
      if (ec || used == 0) break;
    }
    ec = {};
    return false;
  }

  // A read that fills less than the buffer makes the next one wait for the client's next bytes
  // instead of trying (and failing) at once (common/read_buffer.h).
  auto read_op()
      -> decltype(std::declval<tcp::socket&>().async_read_some(std::declval<ReadBuffer>(),
                                                               kDirect)) {
    return socket_.async_read_some(ReadBuffer(buffer_.prepare(std::max<std::size_t>(
                                       beast::read_size(buffer_, 64 * 1024), kReadBytes))),
                                   kDirect);
  }

  bool received(wire::RequestParser& p, bool whole,
                const std::tuple<beast::error_code, std::size_t>& result, beast::error_code& ec) {
    const auto& [rec, n] = result;
    if (deadline_.expired()) {
      ec = beast::error::timeout;
      return true;
    }
    if (rec == asio::error::eof) {
      if (!p.got_some()) {
        ec = bhttp::error::end_of_stream;
        return true;
      }
      p.put_eof(ec);
      if (!ec && !(whole ? p.is_done() : p.is_header_done())) ec = bhttp::error::partial_message;
      return true;
    }
    if (rec) {
      ec = rec;
      return true;
    }
    buffer_.commit(n);
    bytes_in_ += n;
    return feed(p, whole, ec);
  }

  // A write is wrote_now (the caller has checked broken_): the bytes the socket takes at once,
  // which settles the write unless its send buffer is full, without the write deadline or a
  // suspension (common/asio_direct.h's write_now); true with `ok` the write's result when it
  // settled it. Otherwise the rest is start_write and wrote(its result), under the write
  // deadline: the callers await the socket's write directly (a deferred operation, started when
  // awaited), without a coroutine frame of its own per write.
  template <std::size_t N>
  bool wrote_now(std::array<asio::const_buffer, N>& buffers, bool& ok) {
    beast::error_code ec;
    std::size_t n = 0;
    const bool settled = write_now(socket_.native_handle(), buffers, ec, n);
    bytes_out_ += n;
    if (!settled) return false;
    if (ec) broken_ = true;
    ok = !ec;
    return true;
  }
  // A write of a *_now call: its result when it settled at once; otherwise the rest waits in
  // rest_ for the call's awaited namesake, which writes it (write_rest).
  template <std::size_t N>
  std::optional<bool> write_or_keep(std::array<asio::const_buffer, N>& buffers) {
    static_assert(N <= std::tuple_size_v<decltype(rest_)>);
    bool ok = false;
    if (wrote_now(buffers, ok)) return ok;
    rest_ = {};
    std::copy(buffers.begin(), buffers.end(), rest_.begin());
    resume_ = true;
    return std::nullopt;
  }
  auto write_rest() -> decltype(bw::async_write_all(std::declval<tcp::socket&>(),
                                                    std::declval<const RestBuffers&>(), kDirect)) {
    resume_ = false;
    return start_write(rest_);
  }

  template <class Buffers>
  auto start_write(const Buffers& buffers)
      -> decltype(bw::async_write_all(std::declval<tcp::socket&>(), buffers, kDirect)) {
    deadline_.arm(server_.options_.write_timeout);
    return bw::async_write_all(socket_, buffers, kDirect);
  }
  bool wrote(const std::tuple<beast::error_code, std::size_t>& result) {
    deadline_.disarm();
    bytes_out_ += std::get<1>(result);
    if (std::get<0>(result)) broken_ = true;
    return !std::get<0>(result);
  }

  // Bytes the parser could not use yet in the body phase: a chunk-size line (with extensions)
  // or, after the last chunk, the trailer section. Returns the reason if one is over its bound.
  std::string_view overlong_pending(std::string_view pending) const {
    const auto& o = server_.options_;
    if (pending.size() <= o.max_chunk_line_bytes) return {};
    std::string_view line = pending;
    if (line.starts_with("\r\n")) line.remove_prefix(2);  // the end of the previous chunk
    const auto eol = line.find("\r\n");
    if (eol == std::string_view::npos || eol > o.max_chunk_line_bytes) {
      return "chunk_line_too_long";
    }
    // A complete line the parser did not take is the last chunk's: the trailers follow.
    if (pending.size() > o.max_header_bytes) return "trailer_too_large";
    return {};
  }

  // Framing the parser accepted but Bellwether refuses (see docs/security.md).
  static std::string_view framing_problem(const wire::RequestParser& p) {
    if (p.has_transfer_encoding() &&
        (p.has_content_length() || !p.chunked() || !p.transfer_encoding_is_chunked_only())) {
      return "bad_transfer_encoding";
    }
    if (p.host_fields() > 1) return "duplicate_host";
    if (p.host_fields() == 0 && p.http_version() >= 11) return "missing_host";
    return {};
  }

  // How reading a request ended: the request is in req_; the parse needs bytes that are not
  // read yet (read_rest reads them); or the connection ends, refused with refusal_ (empty when
  // the client went away or stayed silent: nothing to answer or report).
  enum class Read : std::uint8_t { kRequest, kMore, kClosed };

  void open_connection() {
    beast::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    auto ep = socket_.remote_endpoint(ec);
    if (!ec) req_.peer_ip = ep.address().to_string();
  }

  void begin_request(bool first) {
    const auto& opt = server_.options_;
    // The first request gets the header timeout; a keep-alive wait gets the idle timeout plus
    // the header timeout, since the deadline covers the whole head.
    deadline_.arm(first ? opt.header_timeout : opt.idle_timeout + opt.header_timeout);
    idle_ = !first && buffer_.size() == 0;
    bytes_in_ = buffer_.size();  // a pipelined request's bytes were read with the previous one
    bytes_out_ = 0;
    head_only_ = false;
    overflow_ = {};
  }

  // The read of a request's first bytes, into an empty buffer: kMore when they came (the parse
  // follows), as received() would take them before the parser has seen a byte.
  Read first_bytes(const std::tuple<beast::error_code, std::size_t>& result) {
    const auto& [rec, n] = result;
    const bool expired = deadline_.expired();
    if (!rec && !expired) {
      buffer_.commit(n);
      bytes_in_ += n;
      return Read::kMore;
    }
    idle_ = false;
    deadline_.disarm();
    // A keep-alive connection that stays silent until its deadline is not a rejection; at EOF
    // the reason is empty too. Nothing was read: the refusal names no method or target.
    if (!expired) refusal_ = reason_for_error(rec, false);
    return Read::kClosed;
  }

  // The parse of the bytes at hand, with the parser on this function's stack: the request when
  // they hold all of it, or a refusal. Otherwise (kMore) `rest` is read_rest() with a copy of
  // the parser, to be awaited.
  Read read_now(asio::awaitable<Read>& rest) {
    const auto& opt = server_.options_;
    if (fields_.capacity() == 0) fields_.swap(spare_fields());
    wire::RequestParser p(arena_, fields_, req_.body.own(), opt.max_headers);
    // A body that arrives whole with its head stays in buffer_, which is not read into again
    // before the handler returns.
    p.in_place(&req_.body);
    p.header_limit(static_cast<std::uint32_t>(opt.max_header_bytes));
    p.body_limit(opt.max_body_bytes);
    p.eager(true);
    beast::error_code ec;
    if (!feed(p, false, ec)) {
      rest = read_rest(p);
      return Read::kMore;
    }
    if (const Read got = head_read(p, ec); got != Read::kRequest) return got;
    if (!p.is_done()) {
      // 100-continue is answered by read_rest.
      if (!p.expects_continue()) {
        deadline_.arm(opt.body_timeout);
        if (feed(p, true, ec)) return ec ? body_refused(p, ec) : take(p);
      }
      rest = read_rest(p);
      return Read::kMore;
    }
    return take(p);
  }

  // What read_now left: the rest of the head, then 100-continue and the body, reading as the
  // parse asks (a parser whose body read_now began is fed again first: no byte is lost).
  asio::awaitable<Read> read_rest(wire::RequestParser p) {
    const auto& opt = server_.options_;
    beast::error_code ec;
    if (!p.is_header_done()) {
      for (;;) {
        const auto r = co_await read_op();
        if (received(p, false, r, ec)) break;
      }
      if (const Read got = head_read(p, ec); got != Read::kRequest) co_return got;
    }
    if (!p.is_done()) {
      if (p.expects_continue()) {
        deadline_.arm(opt.write_timeout);
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        co_await asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                                   kNoThrow);
      }
      deadline_.arm(opt.body_timeout);
      if (!feed(p, true, ec)) {
        for (;;) {
          const auto r = co_await read_op();
          if (received(p, true, r, ec)) break;
        }
      }
      if (ec) co_return body_refused(p, ec);
    }
    co_return take(p);
  }

  // The head's read ended with `ec`: kRequest when the head is complete and its framing
  // accepted (the body follows), else the refusal.
  Read head_read(const wire::RequestParser& p, const beast::error_code& ec) {
    idle_ = false;
    if (ec) {
      deadline_.disarm();
      // A keep-alive connection that stays silent until its deadline is not a rejection.
      if (ec == beast::error::timeout && !p.got_some()) return closed(p, {});
      return closed(p, p.too_many_fields()  ? std::string_view("too_many_headers")
                       : !overflow_.empty() ? overflow_
                                            : reason_for_error(ec, false));
    }
    if (const auto bad = framing_problem(p); !bad.empty()) {
      deadline_.disarm();
      return closed(p, bad);
    }
    return Read::kRequest;
  }

  Read body_refused(const wire::RequestParser& p, const beast::error_code& ec) {
    deadline_.disarm();
    return closed(p, !overflow_.empty() ? overflow_ : reason_for_error(ec, true));
  }

  Read closed(const wire::RequestParser& p, std::string_view reason) {
    refusal_ = reason;
    refused_method_ = p.method();  // views into arena_
    refused_target_ = p.target();
    return Read::kClosed;
  }

  // The parsed request into req_, for the handler.
  Read take(const wire::RequestParser& p) {
    deadline_.disarm();
    req_.method = p.method();
    req_.target = p.target();
    p.headers(req_.headers);
    req_.header_names = p.header_names();
    req_.header_names_count = req_.headers.size();
    req_.authorization_at = p.authorization_at();
    // The spans are read: back to the thread (or freed when it has a list already).
    if (FieldSpans& spare = spare_fields(); spare.capacity() == 0) {
      fields_.swap(spare);
    } else {
      FieldSpans().swap(fields_);
    }
    req_.keep_alive = p.keep_alive();
    keep_alive_ = req_.keep_alive;
    // RFC 9110 9.3.2: a HEAD answer has the GET answer's head and no body.
    head_only_ = req_.method == "HEAD";
    started_ = false;
    finished_ = false;
    broken_ = false;
    head_held_ = false;
    return Read::kRequest;
  }

  // Answers a request refused at the framing level with refusal_ (not empty), reports it and
  // leaves the connection to be closed.
  asio::awaitable<void> refuse() {
    keep_alive_ = false;
    const Refusal r = refusal(refusal_);
    if (r.status != 0) {
      head_only_ = false;
      co_await send(
          Response::json(r.status, openai_error_body(r.message, "invalid_request_error", r.code)));
    }
    if (server_.options_.on_rejection) {
      Rejection rej;
      rej.status = r.status;
      rej.reason = r.reason;
      rej.peer_ip = req_.peer_ip;
      rej.method = refused_method_;
      rej.target = refused_target_;
      rej.bytes_in = bytes_in_;
      rej.bytes_out = bytes_out_;
      server_.options_.on_rejection(rej);
    }
  }

  // After the handler: whether its answer is complete (or cannot be: the client is gone).
  bool answered() {
    end_watch();
    if (resume_) {
      // A write that a *_now call began was never finished: the answer is cut short.
      resume_ = false;
      stash::release(body_);
      broken_ = true;
    }
    return finished_ || broken_;
  }

  // A handler that forgot to answer still answers.
  asio::awaitable<void> answer_unanswered() {
    if (started_) {
      co_await end_stream();
    } else {
      co_await send(Response::json(500, openai_error_body("Internal error", "server_error", "")));
    }
  }

  void close_connection() {
    deadline_.disarm();
    if (socket_.is_open()) {
      beast::error_code ec;
      socket_.shutdown(tcp::socket::shutdown_send, ec);
      socket_.close(ec);
    }
  }

  // The members a request reads or writes come first, in as few cache lines as they fit (at a
  // few hundred connections per worker a connection's lines are cold at each request's start and
  // again when it is answered); the rest, which only some requests touch, follow.
  Server& server_;
  tcp::socket socket_;
  Deadline deadline_;
  Deadline watch_after_;  // starts the disconnect watch of a request that runs long
  beast::flat_buffer buffer_;
  // Reused from request to request: the parser's arena and field spans, the request, the
  // response head.
  std::string arena_;
  FieldSpans fields_;  // while a parse has it (spare_fields)
  Request req_;
  std::string out_;
  std::size_t bytes_in_ = 0;   // read for the current request
  std::size_t bytes_out_ = 0;  // written for the current request
  std::string_view overflow_;  // the bound a body-phase read exceeded, if any
  bool resume_ = false;        // rest_ holds the rest of a write (below)
  bool idle_ = false;
  bool head_only_ = false;  // the current request is a HEAD: heads only, no body bytes
  bool keep_alive_ = true;
  bool started_ = false;
  bool finished_ = false;
  bool head_held_ = false;  // begin_stream_held's head waits in out_ for the first write
  bool broken_ = false;
  // The disconnect watch of the running handler: its callback, whether it is on, and whether a
  // wait was started that may still be pending (watch_->pending says).
  bool watching_ = false;
  bool wait_started_ = false;
  std::function<void()> on_gone_;

  Server::Worker& worker_;
  std::list<Session*>::iterator it_;
  std::shared_ptr<Watch> watch_;  // created at the first wait of the connection
  // Why the connection is closed (read_now, read_rest), and the refused request's start line.
  std::string_view refusal_;
  std::string_view refused_method_;
  std::string_view refused_target_;
  // The rest of a write that a *_now call began and its awaited namesake finishes (resume_),
  // the chunk-size line and the body it may point into.
  RestBuffers rest_{};
  char chunk_head_[20];
  std::string body_;
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
    // Named so that each event loop's CPU time can be told apart (top -H, /proc/<pid>/task/*/comm).
    threads_.emplace_back([w = w.get(), i = threads_.size()] {
      const std::string name = "bw-worker-" + std::to_string(i);
      pthread_setname_np(pthread_self(), name.c_str());
      w->ioc.run();
    });
  }
}

void Server::adopt(int fd) {
  Worker& w = *workers_.front();
  w.load.fetch_add(1, std::memory_order_relaxed);
  asio::post(w.ioc, [this, &w, fd] {
    tcp::socket s(w.ioc);
    beast::error_code ec;
    s.assign(tcp::v4(), fd, ec);
    if (ec) {
      ::close(fd);
      w.load.fetch_sub(1, std::memory_order_relaxed);
      return;
    }
    spawn_session(*this, w, std::move(s));
  });
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
