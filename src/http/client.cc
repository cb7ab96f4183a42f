#include "http/client.h"

#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/read_size.hpp>
#include <boost/beast/http/error.hpp>
#include <charconv>
#include <limits>
#include <list>
#include <optional>
#include <tuple>
#include <unordered_map>

#include "common/asio_direct.h"
#include "common/read_buffer.h"
#include "http/deadline.h"
#include "http/wire.h"

namespace bw::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
// The reads and writes of a request, awaited by the coroutine itself (a deferred operation): no
// coroutine frame per operation, as use_awaitable's initiation would be, and no executor work
// kept by the operation (common/asio_direct.h).
constexpr auto kDirect = bw::direct;

namespace {

Error upstream_error(std::string_view code, const std::string& what) {
  int status = code == kUpstreamTimeout ? 504 : 502;
  return make_error(status, "upstream_error", std::string(code), what);
}

Error classify(const beast::error_code& ec, const char* phase) {
  std::string what = std::string("upstream ") + phase + " failed: " + ec.message();
  if (ec == beast::error::timeout) return upstream_error(kUpstreamTimeout, what);
  return upstream_error(kUpstreamReset, what);
}

// Room taken from the thread's stash (common/buffer_stash.h) per request: the request line's
// and the framing lines' share of a request head; an upstream answer's headers.
constexpr std::size_t kHeadRoom = 64;
constexpr std::size_t kAnswerHeadRoom = 512;
// The least room of the buffer an answer's body of known length is read into (read_all): it is
// then taken from the stash's class of 8 KiB buffers, which at the usual sizes holds nothing but
// answer bodies, each given back as soon as its answer is sent; the one taken is the one given
// back last, its lines still in the core's caches. The class of the body's own size is shared
// with the buffers a request keeps until it ends (its head fields, the client's answer head),
// which are given back after the answer's body and were last written long before: at 256
// connections on a worker, the copy into such a buffer missed the core's L2 on every line
// (callgrind's cache simulation: ~8 of the ~110 L2 misses per request).
constexpr std::size_t kAnswerBodyRoom = 4096;

bool stale_connection_error(const beast::error_code& ec) {
  return ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == ssl::error::stream_truncated;
}

}  // namespace

struct PoolHost;

// One upstream connection with its reusable buffers; it is the UpstreamResponse while a
// response is being read, and sits in the pool in between.
struct UpstreamResponse::Impl {
  ClientPool::State* pool = nullptr;
  std::unique_ptr<tcp::socket> plain;
  std::unique_ptr<ssl::stream<tcp::socket>> tls;
  // Its block goes back to the thread's stash while the connection sits in the pool.
  beast::basic_flat_buffer<stash::ReadBlockAllocator<char>> buffer;
  Deadline deadline;
  // The pool's entry of the connection's upstream (its address stays put): found without a
  // lookup by key when the connection goes back or closes.
  PoolHost* host = nullptr;
  std::string out;  // request head
  Headers headers;
  std::optional<wire::ResponseParser> parser;
  ClientTimeouts timeouts;
  PoolLimits limits;
  Nanos last_used = 0;
  UpstreamCancel* cancel = nullptr;  // the request's cancel handle, while it has one
  std::unique_ptr<UpstreamResponse::Canned> canned;  // not from a connection (tests)
  std::size_t canned_next = 0;
  bool done = false;
  bool failed = false;
  bool pooled = false;  // it has been in the pool: a request on it may find it closed
  // read_all's body, filled by the parser's sink, while reading_all.
  std::string all;
  bool reading_all = false;

  tcp::socket& socket() { return tls ? tls->next_layer() : *plain; }

  // Takes the request of an attempt: false (nothing done) when it is cancelled.
  bool start(const OutboundRequest& request, const UpstreamOptions& opt) {
    if (UpstreamCancel* const handle = request.cancel) {
      if (handle->cancelled()) return false;
      handle->conn_ = this;
      cancel = handle;
    }
    timeouts = opt.timeouts;
    limits = opt.pool;
    done = false;
    failed = false;
    reading_all = false;
    return true;
  }

  // A small body is written behind the head from its buffer; a larger one from where it is (a
  // gather write), not copied into the connection's buffer. A body in pieces (a client's body
  // with members replaced) is copied behind the head unless it is one piece: Asio gathers two
  // buffers in place, more through a 64-entry array in the operation, which costs more than
  // the copy into this buffer (sent and given back to the stash at once, so its lines are
  // warm again for the next request).
  static bool inline_body(const OutboundRequest& request, std::size_t body_size) {
    return body_size <= 256 || request.body_pieces.size() > 1 ||
           (!request.body_pieces.empty() && !request.body.empty());
  }
  // The request's bytes as written: the buffer's, and the body's from where it is unless it is
  // in the buffer (`inline_b`: inline_body()).
  std::array<asio::const_buffer, 2> request_buffers(const OutboundRequest& request,
                                                    bool inline_b) const {
    if (inline_b) return {asio::buffer(out), {}};
    const std::string_view body =
        request.body_pieces.empty() ? std::string_view(request.body) : request.body_pieces[0];
    return {asio::buffer(out), asio::buffer(body.data(), body.size())};
  }

  // write_request's result when it settled the write.
  static constexpr std::size_t kSettled = static_cast<std::size_t>(-1);
  // Prepares the answer's parser and writes the request as far as the socket takes it at once
  // (common/asio_direct.h's write_now; a TLS connection's, none). kSettled when that settled
  // the write, with `ec` its error; otherwise the bytes written, and write_rest writes the rest.
  std::size_t write_request(const Endpoint& ep, const OutboundRequest& request,
                            beast::error_code& ec) {
    out.clear();
    const std::size_t body_size = request.body_size();
    const bool inline_b = inline_body(request, body_size);
    std::size_t lines_size = request.headers.wire().size();
    for (const auto l : request.head_lines) lines_size += l.size();
    // At least the answer head's room: the buffer takes the answer's head once sent.
    stash::room(
        out, std::max(kAnswerHeadRoom, kHeadRoom + ep.host_header.size() + request.target.size() +
                                           lines_size + (inline_b ? body_size : 0)));
    wire::append_request_head(out, request.method, request.target, ep.host_header,
                              request.head_lines, request.headers, body_size);
    parser.emplace(headers);
    parser->header_limit(64 * 1024);
    parser->body_limit(boost::none);
    if (inline_b) {
      out.append(request.body);
      for (auto p : request.body_pieces) out.append(p);
    }
    auto b = request_buffers(request, inline_b);
    std::size_t written = 0;
    if (tls || !write_now(plain->native_handle(), b, ec, written)) return written;
    return kSettled;
  }

  // Sent (or failed): the answer's head gets a buffer of its own, and the request's goes back
  // to the thread's stash at once, warm, for the next request's head (and body) on the thread:
  // kept for the answer's head, it would go back only after the answer, long cold.
  void written() {
    headers.reserve(kAnswerHeadRoom);
    stash::release(out);
  }

  // Whether the parser has what a call asks for: the head, or the whole message.
  bool finished(bool header_only) const {
    return header_only ? parser->is_header_done() : parser->is_done();
  }

  enum class Until { kHead, kPiece, kEnd };
  // Runs the parser over the bytes already read. Returns true with `ec` set when that settles
  // the call: the head, some body bytes in the parser's in-place view (read_some, which
  // started a new view), the whole body
  // in its sink, or a parse error; false when more bytes must be read.
  bool settle(Until until, beast::error_code& ec) {
    auto& p = *parser;
    const bool header_only = until == Until::kHead;
    for (;;) {
      if (buffer.size() > 0 && !p.is_done()) {
        beast::error_code pec;
        const std::size_t used = p.put(buffer.data(), pec);
        buffer.consume(used);
        if (pec && pec != bhttp::error::need_more) {
          ec = pec;
          return true;
        }
        if (finished(header_only)) {
          ec = {};
          return true;
        }
        // Without eager parsing one put is one step (e.g. one chunk): the chunks already read
        // go into the same piece (one read of the socket, one piece for the caller), but no
        // more is read once the piece has bytes.
        if (!pec && used > 0 && buffer.size() > 0) continue;
        if (until == Until::kPiece && !p.in_place_body().empty()) {
          ec = {};
          return true;
        }
      }
      if (finished(header_only)) {
        ec = {};
        return true;
      }
      return false;
    }
  }

  // The reads of a call that settle() did not settle: the caller awaits read_op() itself, TLS
  // or plain (one deferred operation type), and hands its result to received(), until that
  // settles the call as settle() does. A read is then not a coroutine of its own (a frame
  // allocated, pushed, resumed, popped and freed per call that reads). A passed deadline reads
  // as beast::error::timeout.
  auto read_op() {
    DirectToken token;
    return asio::async_initiate<DirectToken, void(beast::error_code, std::size_t)>(
        [](auto handler, Impl* self) {
          if (self->tls) {
            self->tls->async_read_some(self->prepare_read(), std::move(handler));
          } else {
            // The read block is taken when the upstream's bytes are there, not while the
            // connection waits for them (one emptied before goes back to the thread's stash
            // now); a short read makes the next one wait for the upstream's next bytes instead
            // of trying (and failing) at once (common/read_buffer.h).
            self->release_empty_block();
            self->plain->async_read_some(
                LazyReadBuffer(self, &Impl::lazy_prepare, &Impl::lazy_unused, stash::kReadBlock),
                std::move(handler));
          }
        },
        token, this);
  }
  // At least 16 KiB per read: read_size alone offers 512 bytes to an empty buffer, which cut
  // a 1 KiB answer (or a burst of stream events) into several reads and writes.
  asio::mutable_buffer prepare_read() {
    return buffer.prepare(
        std::max<std::size_t>(beast::read_size(buffer, 64 * 1024), stash::kReadBlock));
  }
  // A plain read's buffer, asked for when the read is performed (an allocation that fails there
  // ends the process), and given back when that read brought nothing.
  static asio::mutable_buffer lazy_prepare(void* self) noexcept {
    return static_cast<Impl*>(self)->prepare_read();
  }
  static void lazy_unused(void* self) noexcept { static_cast<Impl*>(self)->release_empty_block(); }
  // Gives an emptied read block back to the thread's stash (a call only when there is one).
  void release_empty_block() noexcept {
    if (buffer.capacity() != 0 && buffer.size() == 0) buffer.shrink_to_fit();
  }

  // The write of a request's buffers, TLS or plain (one deferred operation type, awaited by
  // the caller as read_op is); a plain one writes as bw::async_write_all.
  template <std::size_t N>
  auto write_op(const std::array<asio::const_buffer, N>& buffers) {
    DirectToken token;
    return asio::async_initiate<DirectToken, void(beast::error_code, std::size_t)>(
        [](auto handler, Impl* self, const std::array<asio::const_buffer, N>& b) {
          if (self->tls) {
            asio::async_write(*self->tls, b, std::move(handler));
          } else {
            bw::async_write_all(*self->plain, b, std::move(handler));
          }
        },
        token, this, buffers);
  }

  bool received(Until until, const std::tuple<beast::error_code, std::size_t>& result,
                beast::error_code& ec) {
    const auto& [rec, n] = result;
    auto& p = *parser;
    if (deadline.expired()) {
      ec = beast::error::timeout;
      return true;
    }
    if (rec == asio::error::eof || rec == ssl::error::stream_truncated) {
      if (!p.got_some()) {
        ec = bhttp::error::end_of_stream;
        return true;
      }
      p.put_eof(ec);
      if (!ec && !finished(until == Until::kHead)) ec = bhttp::error::partial_message;
      return true;
    }
    if (rec) {
      ec = rec;
      return true;
    }
    buffer.commit(n);
    // The idle deadline bounds the gap between reads, not the whole body.
    if (until == Until::kEnd) deadline.arm(timeouts.idle);
    return settle(until, ec);
  }

  // Ends read_some (UpstreamResponse::read_some_now, read_some): the piece in the parser's
  // in-place view, or the error.
  Result<std::string_view> end_piece(const beast::error_code& ec) {
    const std::string_view piece = parser->in_place_body();
    parser->in_place(false);
    if (ec) {
      failed = true;
      return classify(ec, "body read");
    }
    if (parser->is_done() || piece.empty()) done = true;
    return piece;
  }

  // Ends read_all (UpstreamResponse::read_all_now, read_all): the body, or the error.
  Result<std::string> end_all(const beast::error_code& ec) {
    reading_all = false;
    parser->set_sink(nullptr, 0);
    if (ec) {
      failed = true;
      if (parser->sink_overflowed()) {
        drop();
        return upstream_error(kUpstreamReset, "upstream response larger than the limit");
      }
      return classify(ec, "body read");
    }
    done = true;
    return std::move(all);
  }

  void close() {
    deadline.disarm();
    beast::error_code ec;
    socket().close(ec);
  }

  // Drops the connection: the upstream sees the request cancelled.
  void drop() {
    failed = true;
    beast::error_code ec;
    socket().shutdown(tcp::socket::shutdown_both, ec);
    close();
  }
};

// A request waiting for a connection slot; lives in the waiting coroutine's frame.
struct PoolWaiter {
  asio::steady_timer* timer = nullptr;
  bool woken = false;
};

// The pool's connections to one upstream (ClientPool::State::Host).
struct PoolHost {
  std::string key;
  std::vector<std::unique_ptr<UpstreamResponse::Impl>> idle;
  std::size_t open = 0;
  std::list<PoolWaiter*> waiters;  // FIFO; bounded by PoolLimits::max_pending

  // A connection became idle or a slot was freed: the longest waiter tries again.
  void wake_one() {
    if (waiters.empty()) return;
    PoolWaiter* w = waiters.front();
    waiters.pop_front();
    w->woken = true;
    w->timer->cancel();
  }
  void release_slot() {
    if (open > 0) --open;
    wake_one();
  }
};

struct ClientPool::State {
  using Waiter = PoolWaiter;
  using Host = PoolHost;
  // Node-based: Host addresses (and their key strings) stay put.
  std::unordered_map<std::string, Host> hosts;
  std::unique_ptr<ssl::context> tls_context;

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

  // The entry of the upstream last asked for, asked for again before the key is hashed: a
  // worker's requests mostly go to one upstream.
  Host* last_host = nullptr;

  Host& host(const std::string& key) {
    if (last_host && last_host->key == key) return *last_host;
    auto it = hosts.find(key);
    if (it == hosts.end()) {
      it = hosts.emplace(key, Host{}).first;
      it->second.key = key;
    }
    last_host = &it->second;
    return it->second;
  }

  void give_back(std::unique_ptr<UpstreamResponse::Impl> c, const PoolLimits& limits) {
    auto& h = *c->host;
    if (h.idle.size() >= limits.max_idle) {
      c->close();
      h.release_slot();
      return;
    }
    c->last_used = coarse_now();
    c->pooled = true;
    c->parser.reset();
    // An idle connection keeps no buffer but its socket's: the answer's headers go back to
    // the thread's stash, for the next request on any connection.
    c->headers.release();
    stash::release(c->out);
    c->release_empty_block();
    h.idle.push_back(std::move(c));
    h.wake_one();
  }

  std::unique_ptr<UpstreamResponse::Impl> take(Host& h, const PoolLimits& limits) {
    const Nanos now = coarse_now();
    while (!h.idle.empty()) {
      auto c = std::move(h.idle.back());
      h.idle.pop_back();
      if (now - c->last_used < limits.idle_timeout && c->socket().is_open()) return c;
      c->close();
      if (h.open > 0) --h.open;
    }
    return nullptr;
  }
};

UpstreamResponse::UpstreamResponse(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UpstreamResponse UpstreamResponse::canned(Canned answer) {
  auto impl = std::make_unique<Impl>();
  impl->headers = std::move(answer.headers);
  impl->canned = std::make_unique<Canned>(std::move(answer));
  return UpstreamResponse(std::move(impl));
}

UpstreamResponse::~UpstreamResponse() {
  if (!impl_ || impl_->canned) return;
  auto& im = *impl_;
  if (im.cancel) {
    im.cancel->conn_ = nullptr;
    im.cancel = nullptr;
  }
  im.deadline.disarm();
  if (im.done && !im.failed && im.parser && im.parser->is_done() && im.parser->keep_alive()) {
    im.pool->give_back(std::move(impl_), im.limits);
  } else {
    im.close();
    im.host->release_slot();
  }
}

UpstreamResponse::UpstreamResponse(UpstreamResponse&&) noexcept = default;
UpstreamResponse& UpstreamResponse::operator=(UpstreamResponse&& o) noexcept {
  if (this != &o) {
    UpstreamResponse old(std::move(*this));  // released at the end of this scope
    impl_ = std::move(o.impl_);
  }
  return *this;
}

int UpstreamResponse::status() const {
  if (impl_->canned) return impl_->canned->status;
  return impl_->parser->status();
}
const Headers& UpstreamResponse::headers() const {
  return impl_->headers;
}
std::string_view UpstreamResponse::content_type() const {
  if (impl_->canned) return impl_->headers.get("content-type");
  return impl_->parser->content_type();
}
std::string_view UpstreamResponse::retry_after() const {
  if (impl_->canned) return impl_->headers.get("retry-after");
  return impl_->parser->retry_after();
}

UpstreamCancel::~UpstreamCancel() {
  if (conn_) conn_->cancel = nullptr;
}

void UpstreamCancel::cancel() {
  cancelled_ = true;
  if (!conn_) return;
  conn_->drop();  // pending I/O completes with an error; the slot is released with the response
}

void UpstreamResponse::abort() {
  impl_->failed = true;
  if (impl_->canned) return;
  impl_->drop();
}

std::optional<Result<std::string_view>> UpstreamResponse::read_some_now() {
  auto& im = *impl_;
  if (im.canned) {
    if (im.failed) return upstream_error(kUpstreamReset, "upstream connection closed");
    if (im.canned_next < im.canned->pieces.size()) {
      if (im.canned_next >= im.canned->at_hand) return std::nullopt;  // on its way
      return std::string_view(im.canned->pieces[im.canned_next++]);
    }
    if (!im.canned->fail_after.empty()) {
      im.failed = true;
      return upstream_error(im.canned->fail_after, "upstream body read failed");
    }
    im.done = true;
    return std::string_view{};
  }
  if (im.done || im.parser->is_done()) {
    im.done = true;
    return std::string_view{};
  }
  if (im.failed) return upstream_error(kUpstreamReset, "upstream connection closed");
  // The piece is left in the connection's read buffer, its chunks' framing decoded in place:
  // the buffer does not move until the next read, which only the next call starts.
  im.parser->in_place(true);
  beast::error_code ec;
  if (!im.settle(Impl::Until::kPiece, ec)) return std::nullopt;  // read_some reads on
  return im.end_piece(ec);
}

asio::awaitable<Result<std::string_view>> UpstreamResponse::read_some() {
  if (auto now = read_some_now()) co_return std::move(*now);
  auto& im = *impl_;
  if (im.canned) {  // the next piece arrives
    if (im.canned->on_arrival) im.canned->on_arrival(im.canned_next);
    im.canned->at_hand = im.canned_next + 1;
    co_return std::move(*read_some_now());
  }
  // The parser is in place (read_some_now) and needs bytes from the upstream.
  im.deadline.arm(im.timeouts.idle);
  beast::error_code ec;
  for (;;) {
    const auto r = co_await im.read_op();
    if (im.received(Impl::Until::kPiece, r, ec)) break;
  }
  im.deadline.disarm();
  co_return im.end_piece(ec);
}

bool UpstreamResponse::body_at_hand() const {
  const auto& im = *impl_;
  if (im.canned) {
    if (im.canned_next < im.canned->pieces.size()) return im.canned_next < im.canned->at_hand;
    return !im.canned->fail_after.empty();
  }
  return im.done || im.failed || im.parser->is_done() || im.buffer.size() > 0;
}

bool UpstreamResponse::complete() const {
  const auto& im = *impl_;
  if (im.canned) {
    return !im.failed && im.canned_next >= im.canned->pieces.size() &&
           im.canned->fail_after.empty();
  }
  return !im.failed && (im.done || im.parser->is_done());
}

std::optional<Result<std::string>> UpstreamResponse::read_all_now(std::size_t limit) {
  auto& im = *impl_;
  if (im.canned) {
    std::string out;
    for (; im.canned_next < im.canned->pieces.size(); ++im.canned_next) {
      out += im.canned->pieces[im.canned_next];
    }
    if (!im.canned->fail_after.empty()) {
      return Result<std::string>(
          upstream_error(im.canned->fail_after, "upstream body read failed"));
    }
    if (out.size() > limit) {
      return Result<std::string>(
          upstream_error(kUpstreamReset, "upstream response larger than the limit"));
    }
    im.done = true;
    return Result<std::string>(std::move(out));
  }
  if (im.failed) {
    im.reading_all = false;
    im.parser->set_sink(nullptr, 0);
    return Result<std::string>(upstream_error(kUpstreamReset, "upstream connection closed"));
  }
  if (!im.reading_all) {
    im.reading_all = true;
    im.all.clear();
    if (auto cl = im.parser->content_length(); cl && *cl <= limit) {
      im.all = stash::take(std::max(static_cast<std::size_t>(*cl), kAnswerBodyRoom));
    }
    im.parser->set_sink(&im.all, limit);
    im.parser->eager(true);
  }
  // No deadline: nothing is read here.
  beast::error_code ec;
  if (!im.parser->is_done() && !im.settle(Impl::Until::kEnd, ec)) return std::nullopt;
  return im.end_all(ec);
}

asio::awaitable<Result<std::string>> UpstreamResponse::read_all(std::size_t limit) {
  if (auto now = read_all_now(limit)) co_return std::move(*now);
  // The body's start is in the parser's sink (Impl::all); the rest needs reads.
  auto& im = *impl_;
  im.deadline.arm(im.timeouts.idle);
  beast::error_code ec;
  for (;;) {
    const auto r = co_await im.read_op();
    if (im.received(Impl::Until::kEnd, r, ec)) break;
  }
  im.deadline.disarm();
  co_return im.end_all(ec);
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
    authority = authority.substr(close + 1);  // "" or ":port"
    if (!authority.empty() && !authority.starts_with(':')) {
      return make_error(400, "invalid_request_error", "", "unexpected text after ']' in URL");
    }
  } else if (auto colon = authority.find(':'); colon != std::string_view::npos) {
    if (authority.find(':', colon + 1) != std::string_view::npos) {
      return make_error(400, "invalid_request_error", "",
                        "an IPv6 address in a URL must be in brackets, e.g. http://[::1]:8080");
    }
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
  return make(ep.tls, std::string(host), ep.port, std::string(path));
}

Endpoint Endpoint::make(bool tls, std::string host, std::uint16_t port, std::string base_path) {
  Endpoint ep;
  ep.tls = tls;
  ep.host = std::move(host);
  ep.port = port;
  ep.base_path = std::move(base_path);
  const bool v6 = ep.host.find(':') != std::string::npos;
  const std::string bracketed = v6 ? "[" + ep.host + "]" : ep.host;
  const bool default_port = ep.port == (ep.tls ? 443 : 80);
  ep.host_header = default_port ? bracketed : bracketed + ":" + std::to_string(ep.port);
  ep.key = (ep.tls ? "https://" : "http://") + bracketed + ":" + std::to_string(ep.port);
  return ep;
}

ClientPool::ClientPool() : state_(std::make_unique<State>()) {}
ClientPool::~ClientPool() = default;

ClientPool& ClientPool::for_this_thread() {
  thread_local ClientPool pool;
  return pool;
}

std::size_t ClientPool::idle_connections() const {
  std::size_t n = 0;
  for (const auto& [k, h] : state_->hosts) n += h.idle.size();
  return n;
}

namespace {

// At namespace scope: GCC 12 crashes (ICE in force_type_die) on a local class inside a
// coroutine when building with -g.
void cancel_resolver(void* r) {
  static_cast<tcp::resolver*>(r)->cancel();
}

void cancel_connection(void* c) {
  beast::error_code ec;
  static_cast<UpstreamResponse::Impl*>(c)->socket().cancel(ec);
}

asio::awaitable<Result<std::unique_ptr<UpstreamResponse::Impl>>> connect(ClientPool::State& st,
                                                                         const Endpoint& ep,
                                                                         const ClientTimeouts& t) {
  auto ex = co_await asio::this_coro::executor;
  auto c = std::make_unique<UpstreamResponse::Impl>();
  if (ep.tls) {
    c->tls = std::make_unique<ssl::stream<tcp::socket>>(ex, st.tls());
  } else {
    c->plain = std::make_unique<tcp::socket>(ex);
  }
  c->deadline.bind(ex, &cancel_connection, c.get());
  // The deadline covers resolving too: a resolver is cancelled like a socket.
  tcp::resolver resolver(ex);
  Deadline resolve_deadline;
  resolve_deadline.bind(ex, &cancel_resolver, &resolver);
  resolve_deadline.arm(t.connect);
  auto [rec, results] = co_await resolver.async_resolve(ep.host, std::to_string(ep.port), kNoThrow);
  const bool resolve_timed_out = resolve_deadline.expired();
  resolve_deadline.disarm();
  if (resolve_timed_out) {
    co_return upstream_error(kUpstreamTimeout,
                             "resolving upstream host '" + ep.host + "' timed out");
  }
  if (rec) {
    co_return upstream_error(kUpstreamConnectError,
                             "cannot resolve upstream host '" + ep.host + "': " + rec.message());
  }
  c->deadline.arm(t.connect);
  auto [cec, endpoint] = co_await asio::async_connect(c->socket(), results, kNoThrow);
  if (c->deadline.expired()) cec = beast::error::timeout;
  if (cec) {
    c->deadline.disarm();
    const auto code = cec == beast::error::timeout ? kUpstreamTimeout : kUpstreamConnectError;
    co_return upstream_error(code, "cannot connect to upstream " + ep.host + ":" +
                                       std::to_string(ep.port) + ": " + cec.message());
  }
  beast::error_code ec;
  c->socket().set_option(tcp::no_delay(true), ec);
  if (ep.tls) {
    if (!SSL_set_tlsext_host_name(c->tls->native_handle(), ep.host.c_str())) {
      c->deadline.disarm();
      co_return upstream_error(kUpstreamConnectError, "cannot set TLS SNI");
    }
    c->tls->set_verify_callback(ssl::host_name_verification(ep.host));
    auto [hec] = co_await c->tls->async_handshake(ssl::stream_base::client, kNoThrow);
    if (c->deadline.expired()) hec = beast::error::timeout;
    if (hec) {
      c->deadline.disarm();
      const auto code = hec == beast::error::timeout ? kUpstreamTimeout : kUpstreamConnectError;
      co_return upstream_error(code, "TLS handshake with " + ep.host + " failed: " + hec.message());
    }
  }
  c->deadline.disarm();
  co_return std::move(c);
}

}  // namespace

namespace {

// Waits until `host` has an idle connection or a free slot, at most `timeout` in all and only
// when fewer than limits.max_pending requests already wait. False when it gave up.
asio::awaitable<bool> wait_for_slot(ClientPool::State::Host& host, const PoolLimits& limits,
                                    Nanos timeout) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(timeout);
  for (;;) {
    if (!host.idle.empty() || host.open < limits.max_connections) co_return true;
    if (host.waiters.size() >= limits.max_pending) co_return false;
    if (std::chrono::steady_clock::now() >= deadline) co_return false;
    asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
    ClientPool::State::Waiter me{&timer, false};
    auto pos = host.waiters.insert(host.waiters.end(), &me);
    // Unlinks this waiter however the wait ends (expiry, cancellation, frame destruction).
    struct Unlink {
      ClientPool::State::Host& h;
      ClientPool::State::Waiter& w;
      std::list<ClientPool::State::Waiter*>::iterator it;
      ~Unlink() {
        if (!w.woken) h.waiters.erase(it);
      }
    } unlink{host, me, pos};
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (!me.woken) co_return false;  // timed out or cancelled
  }
}

}  // namespace

namespace {

Error cancelled_error() {
  return make_error(499, "upstream_error", std::string(kUpstreamCancelled),
                    "the client closed the connection; the upstream request was cancelled");
}

// A connection for an attempt when the pool has no idle one: one that comes back within the
// pool's bounds (wait_for_slot), or a new one. A coroutine of its own, as the rare paths of an
// attempt are: send()'s frame, held across the upstream's answer, keeps none of their state.
asio::awaitable<Result<std::unique_ptr<UpstreamResponse::Impl>>> open_or_wait(
    ClientPool::State& st, ClientPool::State::Host& host, const Endpoint& ep,
    const UpstreamOptions& opt) {
  // Every slot busy: wait (FIFO, bounded in count and time) for one to come back.
  if (host.open >= opt.pool.max_connections) {
    if (!co_await wait_for_slot(host, opt.pool, opt.timeouts.connect)) {
      co_return make_error(503, "upstream_error", std::string(kUpstreamConnectionLimit),
                           "all " + std::to_string(opt.pool.max_connections) +
                               " connections of this worker to " + ep.host +
                               " are busy; retry later");
    }
    if (auto conn = st.take(host, opt.pool)) co_return std::move(conn);
  }
  ++host.open;  // counted while connecting, so concurrent connects respect the bound
  auto c = co_await connect(st, ep, opt.timeouts);
  if (!c) {
    if (host.open > 0) --host.open;
    co_return c.error();
  }
  c.value()->pool = &st;
  c.value()->host = &host;
  co_return std::move(c);
}

// The rest of a request's write that write_request() began: every byte after the `written`
// first, under the connect + first-byte deadline. The write's error (a deadline that passed reads
// as beast::error::timeout).
asio::awaitable<beast::error_code> write_rest(UpstreamResponse::Impl& c,
                                              const OutboundRequest& request, std::size_t written,
                                              Nanos timeout) {
  auto b = c.request_buffers(request, c.inline_body(request, request.body_size()));
  drop_written(b, written);
  c.deadline.arm(timeout);
  auto [ec, n] = co_await c.write_op(b);
  if (c.deadline.expired()) ec = beast::error::timeout;
  co_return ec;
}

// The end of an attempt that failed with `ec` in `phase`: the connection is closed (its pool
// slot released). Nothing when the attempt is to be made again on a fresh connection.
std::optional<Result<UpstreamResponse>> failed_attempt(
    std::unique_ptr<UpstreamResponse::Impl>& conn, const OutboundRequest& request, bool first,
    const beast::error_code& ec, const char* phase) {
  // A pooled connection the server already closed fails before any response byte; that request
  // never reached the server, so it is sent once more on a fresh connection.
  const bool again = first && conn->pooled && stale_connection_error(ec);
  conn->failed = true;
  UpstreamResponse{std::move(conn)};  // closes it and releases its pool slot
  if (request.cancel && request.cancel->cancelled()) {
    return Result<UpstreamResponse>(cancelled_error());
  }
  if (again) return std::nullopt;
  return Result<UpstreamResponse>(classify(ec, phase));
}

}  // namespace

// The frame of this coroutine is held across the upstream's answer, the longest wait of a
// request: at hundreds of requests in flight it is cold when the answer comes. It keeps the
// connection, the attempt and the read of the answer's head; the rest of an attempt runs in
// functions, and its rare paths (a connection to open or to wait for, a write that the socket
// did not take at once) in coroutines of their own.
asio::awaitable<Result<UpstreamResponse>> ClientPool::send(const Endpoint& ep,
                                                           const OutboundRequest& request,
                                                           const UpstreamOptions& opt) {
  auto& host = state_->host(ep.key);
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (request.cancel && request.cancel->cancelled()) co_return cancelled_error();
    std::unique_ptr<UpstreamResponse::Impl> conn = state_->take(host, opt.pool);
    if (!conn) {
      auto c = co_await open_or_wait(*state_, host, ep, opt);
      if (!c) co_return c.error();
      conn = std::move(c.value());
    }
    if (!conn->start(request, opt)) {
      UpstreamResponse{std::move(conn)};  // back to the pool (or closed), nothing sent
      co_return cancelled_error();
    }
    // A plain connection takes the request at once unless its send buffer is full (a
    // suspension, the write's operation and its deadline saved: common/asio_direct.h's
    // write_now); the rest, or a TLS connection's request, is written asynchronously under the
    // deadline. A response whose head never comes is bounded by connect + first byte from there.
    beast::error_code ec;
    if (const std::size_t written = conn->write_request(ep, request, ec);
        written != UpstreamResponse::Impl::kSettled) {
      ec = co_await write_rest(*conn, request, written,
                               opt.timeouts.connect + opt.timeouts.first_byte);
    }
    conn->written();
    if (ec) {
      if (auto end = failed_attempt(conn, request, attempt == 0, ec, "write")) {
        co_return std::move(*end);
      }
      continue;
    }
    conn->deadline.arm(opt.timeouts.first_byte);
    if (!conn->settle(UpstreamResponse::Impl::Until::kHead, ec)) {
      for (;;) {
        const auto r = co_await conn->read_op();
        if (conn->received(UpstreamResponse::Impl::Until::kHead, r, ec)) break;
      }
    }
    conn->deadline.disarm();
    if (ec) {
      if (auto end = failed_attempt(conn, request, attempt == 0, ec, "response")) {
        co_return std::move(*end);
      }
      continue;
    }
    if (conn->parser->is_done()) conn->done = true;
    co_return UpstreamResponse(std::move(conn));
  }
  co_return upstream_error(kUpstreamReset, "upstream closed the connection");
}

}  // namespace bw::http
