#pragma once
// HTTP/1.1 server: one io_context per worker thread, one SO_REUSEPORT listener per worker, one
// coroutine per connection. It enforces the protocol limits (header size and count, body size,
// header/body/idle timeouts) and the request-smuggling defences before a handler sees a request.
// Thread safety: start/stop/drain may be called from any thread; the handler runs on the worker
// that owns the connection, and the ResponseWriter is used only from that coroutine.
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "http/http.h"

namespace bw::http {

// A request refused at the HTTP framing level, before any handler ran: an oversized or malformed
// head, bad framing, a body over the limit, a timeout. The server has answered it (unless the
// client was silent) and closes the connection; the observer makes it visible (access log,
// metrics). Views are valid during the call only.
struct Rejection {
  int status = 0;           // the status sent; 0 when nothing could be sent
  std::string_view reason;  // a stable token, e.g. "chunk_line_too_long" (a metric label)
  std::string_view peer_ip;
  std::string_view method;   // empty if the request line was not complete
  std::string_view target;   // as received (raw bytes; escape before logging)
  std::size_t bytes_in = 0;  // bytes read for this request
  std::size_t bytes_out = 0;
};
using RejectionObserver = std::function<void(const Rejection&)>;

struct ServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;  // 0 picks a free port; see Server::port()
  int workers = 0;            // 0 = one per core
  std::size_t max_header_bytes = 64 * 1024;
  std::size_t max_headers = 100;
  std::size_t max_body_bytes = 10 * 1024 * 1024;
  // A chunk-size line with its extensions. The trailer section is bounded by max_header_bytes.
  // Together these bound the bytes a connection can make the server buffer unparsed.
  std::size_t max_chunk_line_bytes = 4 * 1024;
  Nanos header_timeout = seconds(10);  // whole request head, against slowloris
  Nanos body_timeout = seconds(30);
  Nanos idle_timeout = seconds(60);  // keep-alive wait for the next request
  Nanos write_timeout = seconds(30);
  std::string server_name = "bellwether";
  // Called on the connection's worker for every framing-level rejection; must not block.
  RejectionObserver on_rejection;
};

class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  // A complete response. Returns false if the client is gone.
  virtual boost::asio::awaitable<bool> send(Response response) = 0;
  // A chunked response whose body follows in write_chunk calls; each chunk is flushed at once.
  virtual boost::asio::awaitable<bool> begin_stream(int status, const Headers& headers) = 0;
  virtual boost::asio::awaitable<bool> write_chunk(std::string_view data) = 0;
  virtual boost::asio::awaitable<bool> end_stream() = 0;
  // begin_stream whose head may wait for the first write_chunk (or end_stream), so that both
  // leave in one write. For a caller that has that chunk at hand: the head is not delayed.
  virtual boost::asio::awaitable<bool> begin_stream_held(int status, const Headers& headers) {
    co_return co_await begin_stream(status, headers);
  }
  // The last chunk and the end of the body (one write where the writer can).
  virtual boost::asio::awaitable<bool> end_stream_with(std::string_view data) {
    if (!co_await write_chunk(data)) co_return false;
    co_return co_await end_stream();
  }
  // write_chunk (or end_stream_with when `end`) of the pieces joined, for a caller whose chunk
  // lies in several places: a writer that can sends them in one write without joining them.
  // At most kMaxChunkPieces pieces.
  static constexpr std::size_t kMaxChunkPieces = 4;
  virtual boost::asio::awaitable<bool> write_chunk_pieces(std::span<const std::string_view> pieces,
                                                          bool end) {
    std::string joined;
    for (auto p : pieces) joined.append(p);
    // An if, not ?: around the two co_awaits, which GCC 12 would both run.
    if (end) co_return co_await end_stream_with(joined);
    co_return co_await write_chunk(joined);
  }
  // send() in two steps, for a caller whose header lines lie in several places: `head` takes
  // the status and the header lines (pieces of whole "name: value\r\n" lines that Headers::add
  // would accept, none of them a framing header, in order) at once, without the caller joining
  // them into a Headers list first; `send_body` sends them with `body`, which has the
  // `body_size` bytes announced. Nothing else is written between the two. The default joins the
  // lines into a Response for send().
  virtual void head(int status, std::span<const std::string_view> lines, std::size_t body_size);
  virtual boost::asio::awaitable<bool> send_body(std::string body);
  // begin_stream in two steps, likewise: `stream_head` takes the status and the header lines
  // (as head() takes them); `start_stream` then starts the chunked body, its head leaving at
  // once, or with the first chunk (or end_stream) when `held`, as begin_stream_held's. Nothing
  // else is written between the two. The default joins the lines into a Headers list for
  // begin_stream or begin_stream_held.
  virtual void stream_head(int status, std::span<const std::string_view> lines);
  virtual boost::asio::awaitable<bool> start_stream(bool held);
  // send_body, start_stream and write_chunk_pieces without a coroutine, for a caller whose
  // bytes are at hand: each does what its awaited namesake does and returns the result when that
  // settles at once (the socket took every byte, or failed, or nothing had to be written).
  // Nothing when it did not: the caller then awaits the namesake with the same arguments, which
  // writes what is left (the bytes of `pieces` stay where they are until it completes; a body
  // may have been taken from `body`). A writer without such a path returns nothing and writes
  // nothing.
  virtual std::optional<bool> send_body_now(std::string& body) {
    (void)body;
    return std::nullopt;
  }
  virtual std::optional<bool> start_stream_now(bool held) {
    (void)held;
    return std::nullopt;
  }
  virtual std::optional<bool> write_chunk_pieces_now(std::span<const std::string_view> pieces,
                                                     bool end) {
    (void)pieces;
    (void)end;
    return std::nullopt;
  }
  // True once any byte of the response has been written.
  virtual bool started() const = 0;
  // Ask to close the connection after this response.
  virtual void close_after() = 0;
  // Drops the connection at once with a TCP reset; nothing more is written (fault injection).
  virtual void abort() = 0;
  // Calls `on_gone` once if the client closes or resets the connection while the handler runs
  // (before, during or after the response head), noticed from 20 ms after this call on (a
  // request answered sooner costs no watch at all). The call comes from the connection's event
  // loop, never from inside this function, and never after the handler has returned. A
  // pipelined byte from the client ends the watch (EOF can no longer be seen behind it). A
  // client that half-closes its sending side reads as gone, as in nginx and Envoy. One callback
  // per request: a second call replaces the first. Writers without a connection ignore it.
  virtual void watch_disconnect(std::function<void()> on_gone) { (void)on_gone; }

 private:
  std::unique_ptr<Response> pending_;  // the default head()'s and stream_head()'s, until used
};

using Handler = std::function<boost::asio::awaitable<void>(Request&, ResponseWriter&)>;

class Server {
 public:
  Server(ServerOptions options, Handler handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds every worker's listener. Fails with a message if the address cannot be bound.
  Result<Ok> start();
  // Runs the worker threads; returns immediately.
  void run();
  // Serves an already connected stream descriptor (e.g. one end of a socketpair) as if it had
  // been accepted; the server owns it from now on. For in-memory tests and the fuzzer.
  void adopt(int fd);
  // Stops accepting, closes idle keep-alive connections and lets in-flight requests finish.
  void begin_drain();
  // Waits until no connection is active or the deadline passes; returns the number still active.
  std::size_t wait_drained(Nanos timeout);
  // Stops the workers and joins them.
  void stop();

  std::uint16_t port() const { return port_; }
  std::size_t active_connections() const { return active_.load(); }
  std::size_t in_flight_requests() const { return in_flight_.load(); }
  bool draining() const { return draining_.load(); }
  int workers() const { return static_cast<int>(workers_.size()); }
  // Event-loop lag: posts a probe to every worker and returns the longest delay the previous
  // probes waited before running, in seconds (0 before the first). Call it periodically from
  // one thread (the scaler's); a loop blocked by CPU-heavy work shows here first.
  double event_loop_lag_s();

  struct Worker;

 private:
  // Declaration order matters: sessions destroyed with the workers still touch the counters.
  ServerOptions options_;
  Handler handler_;
  std::atomic<std::size_t> active_{0};
  std::atomic<std::size_t> in_flight_{0};
  std::atomic<bool> draining_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<std::int64_t> lag_ns_{0};
  std::uint16_t port_ = 0;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;

  // Picks the worker for a connection accepted by `self` (the least loaded) and counts it there.
  Worker& pick_worker(Worker& self);
  static boost::asio::awaitable<void> accept_loop(Server& server, Worker& worker);

  friend class Session;
};

}  // namespace bw::http
