// The HTTP server session end to end: the input is what a client sends on one connection (the
// connection is one end of a socketpair that the server adopts; the input is written and the
// sending side closed), the output is every byte the server answers. Checks that the answer is a
// sequence of well-formed HTTP/1.1 responses and that the connection is always closed.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/awaitable.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "common/json_util.h"
#include "http/server.h"

namespace {

using namespace bw::http;

void check(bool ok) {
  if (!ok) std::abort();
}

Server& server() {
  static Server* s = [] {
    ServerOptions o;
    o.port = 0;
    o.workers = 1;
    o.max_header_bytes = 4096;
    o.max_headers = 20;
    o.max_body_bytes = 64 * 1024;
    o.max_chunk_line_bytes = 256;
    o.header_timeout = 2 * bw::kNanosPerSecond;
    o.body_timeout = 2 * bw::kNanosPerSecond;
    o.idle_timeout = 2 * bw::kNanosPerSecond;
    o.on_rejection = [](const Rejection& r) {
      check(!r.reason.empty());
      check(r.status == 0 || (r.status >= 400 && r.status < 500));
      // What the access log would write must be valid JSON text (escaped, UTF-8).
      std::string line = bw::json_string(r.target);
      check(line.size() >= 2);
    };
    // Echo: method, target and body size; a HEAD gets the same head without the body, a target
    // of "/stream" a chunked answer.
    auto* srv = new Server(o, [](Request& req, ResponseWriter& w) -> boost::asio::awaitable<void> {
      std::string body = bw::json_string(std::string(req.method) + " " + std::string(req.target) +
                                         " " + std::to_string(req.body.size()));
      if (req.path() == "/stream") {
        Headers h;
        if (!co_await w.begin_stream(200, h)) co_return;
        co_await w.write_chunk(body);
        co_await w.end_stream();
        co_return;
      }
      co_await w.send(Response::json(200, std::move(body)));
    });
    check(srv->start().ok());
    srv->run();
    return srv;
  }();
  return *s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  server().adopt(sv[0]);
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string out;
  char buf[16384];
  bool closed = false;
  if (in.empty()) ::shutdown(sv[1], SHUT_WR);
  // Write and read in turns so that neither side's socket buffer can fill up and block.
  while (!closed) {
    pollfd p{sv[1], static_cast<short>(POLLIN | (in.empty() ? 0 : POLLOUT)), 0};
    const int ready = ::poll(&p, 1, 5000);
    if (ready < 0 && errno == EINTR) continue;  // libFuzzer's timer signal
    if (ready <= 0) break;                      // the server must never hang on a closed input
    if ((p.revents & POLLOUT) && !in.empty()) {
      const ssize_t n = ::send(sv[1], in.data(), in.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) in.remove_prefix(static_cast<std::size_t>(n));
      if (n < 0 && errno != EAGAIN) in = {};
      if (in.empty()) ::shutdown(sv[1], SHUT_WR);
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = ::recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EAGAIN) {
        closed = true;
      }
    }
  }
  ::close(sv[1]);
  check(closed);
  // Every answer starts a response.
  if (!out.empty()) check(out.starts_with("HTTP/1.1 "));
  return 0;
}
