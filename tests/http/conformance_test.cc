// HTTP conformance and bounds of the server as a client on a raw socket sees them: framing that
// is refused, buffers that stay bounded, HEAD, Host, absolute-form targets, and the report of
// every framing-level rejection.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "http/server.h"
#include "loopback.h"
#include "running_server.h"

namespace bw::http {
namespace {

using Clock = std::chrono::steady_clock;

using test::connect_to;
using test::write_all;

// Everything the server sends until it closes the connection or `limit` passes.
std::string read_until_close(int fd, std::chrono::milliseconds limit = std::chrono::seconds(3)) {
  std::string got;
  const auto end = Clock::now() + limit;
  char buf[8192];
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    const int ms = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count());
    if (::poll(&p, 1, std::max(ms, 1)) <= 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return got;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got + "<still open>";
}

// One request on a fresh connection; the whole answer up to the close.
std::string exchange(std::uint16_t port, std::string_view request) {
  int fd = connect_to(port);
  if (fd < 0) return "<no connection>";
  write_all(fd, request);
  ::shutdown(fd, SHUT_WR);
  auto got = read_until_close(fd);
  ::close(fd);
  return got;
}

int status_of(std::string_view response) {
  if (!response.starts_with("HTTP/1.1 ") || response.size() < 12) return 0;
  return std::atoi(std::string(response.substr(9, 3)).c_str());
}

// Answers every request with "<method> <target>" as a JSON string.
// What the server reported of the requests it refused (ServerOptions::on_rejection).
struct Rejections {
  struct Seen {
    int status;
    std::string reason;
    std::string peer;
    std::string method;
    std::string target;
    std::size_t bytes_in;
    std::size_t bytes_out;
  };
  std::vector<Seen> seen() {
    // Reported after the answer is written: give the worker a moment.
    for (int i = 0; i < 100; ++i) {
      {
        std::lock_guard lock(mu);
        if (!rejections.empty()) return rejections;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return {};
  }
  ServerOptions observed(ServerOptions o) {
    o.on_rejection = [this](const Rejection& r) {
      std::lock_guard lock(mu);
      rejections.push_back({r.status, std::string(r.reason), std::string(r.peer_ip),
                            std::string(r.method), std::string(r.target), r.bytes_in, r.bytes_out});
    };
    return o;
  }
  std::mutex mu;
  std::vector<Seen> rejections;
};

// Answers every request with "<method> <target>" as a JSON string.
struct EchoServer : Rejections, test::RunningServer {
  explicit EchoServer(ServerOptions o = defaults())
      : RunningServer(observed(std::move(o)),
                      [](Request& req, ResponseWriter& w) -> boost::asio::awaitable<void> {
                        co_await w.send(Response::json(200, "\"" + std::string(req.method) + " " +
                                                                std::string(req.target) + "\""));
                      }) {}
  static ServerOptions defaults() {
    ServerOptions o;
    o.port = 0;
    o.workers = 2;
    return o;
  }
};

constexpr std::string_view kChunkedHead =
    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

TEST(HttpBounds, EndlessChunkExtensionIsRefusedWithoutWaitingForTheBodyTimeout) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  int fd = connect_to(s.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, kChunkedHead));
  ASSERT_TRUE(write_all(fd, "1;ext="));
  const auto t0 = Clock::now();
  // 64 KiB of extension and no end of line; the server must answer long before its 30 s body
  // timeout and close the connection.
  write_all(fd, std::string(64 * 1024, 'a'));
  const auto got = read_until_close(fd);
  ::close(fd);
  EXPECT_EQ(status_of(got), 400) << got;
  EXPECT_NE(got.find("connection: close"), std::string::npos);
  EXPECT_EQ(got.find("<still open>"), std::string::npos);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  auto seen = s.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].status, 400);
  EXPECT_EQ(seen[0].reason, "chunk_line_too_long");
  EXPECT_EQ(seen[0].peer, "127.0.0.1");
  EXPECT_GT(seen[0].bytes_in, 4096u);
  EXPECT_GT(seen[0].bytes_out, 0u);
}

TEST(HttpBounds, EndlessTrailerIsRefused) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  int fd = connect_to(s.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, std::string(kChunkedHead) + "2\r\n{}\r\n0\r\nx-trailer: "));
  write_all(fd, std::string(128 * 1024, 'a'));
  const auto got = read_until_close(fd);
  ::close(fd);
  EXPECT_EQ(status_of(got), 431) << got;
  auto seen = s.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].reason, "trailer_too_large");
}

TEST(HttpBounds, ChunkExtensionsWithinTheBoundAreAccepted) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  const auto got =
      exchange(s.server.port(), std::string(kChunkedHead) + "2;" + std::string(1000, 'e') +
                                    "\r\n{}\r\n0\r\n" + "x-t: 1\r\n\r\n");
  EXPECT_EQ(status_of(got), 200) << got;
}

TEST(HttpBounds, OversizedHeadIsRefusedAndReported) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  const auto got =
      exchange(s.server.port(),
               "GET / HTTP/1.1\r\nHost: x\r\nx-big: " + std::string(100 * 1024, 'a') + "\r\n\r\n");
  EXPECT_EQ(status_of(got), 431) << got.substr(0, 200);
  auto seen = s.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].reason, "header_too_large");
}

TEST(HttpBounds, HeaderTimeoutIsAnsweredAndReported) {
  auto o = EchoServer::defaults();
  o.header_timeout = 200 * kNanosPerMilli;
  EchoServer s(o);
  ASSERT_TRUE(s.started);
  int fd = connect_to(s.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n"));  // and never the blank line
  const auto got = read_until_close(fd);
  ::close(fd);
  EXPECT_EQ(status_of(got), 408) << got;
  auto seen = s.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].reason, "header_timeout");
}

TEST(HttpConformance, HeadAnswersCarryNoBody) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  int fd = connect_to(s.server.port());
  ASSERT_GE(fd, 0);
  // A HEAD and a GET on one connection: the GET's answer must start right after the HEAD's head.
  ASSERT_TRUE(write_all(fd,
                        "HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n"
                        "Connection: close\r\n\r\n"));
  const auto got = read_until_close(fd);
  ::close(fd);
  const auto first_end = got.find("\r\n\r\n");
  ASSERT_NE(first_end, std::string::npos) << got;
  EXPECT_EQ(status_of(got), 200);
  EXPECT_NE(got.substr(0, first_end).find("content-length: 9"), std::string::npos) << got;
  const auto second = got.substr(first_end + 4);
  EXPECT_TRUE(second.starts_with("HTTP/1.1 200")) << got;
  EXPECT_TRUE(second.ends_with("\"GET /y\"")) << got;
}

TEST(HttpConformance, TransferCodingsOtherThanExactlyChunkedAreRefused) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  for (std::string te : {"gzip, chunked", "chunked, chunked", "identity", "gzip"}) {
    const auto got =
        exchange(s.server.port(), "POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te +
                                      "\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
    EXPECT_EQ(status_of(got), 400) << te << ": " << got;
  }
  // Two fields that each say "chunked".
  auto got = exchange(s.server.port(),
                      "POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
  EXPECT_EQ(status_of(got), 400) << got;
  got = exchange(s.server.port(),
                 "POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n"
                 "\r\n2\r\n{}\r\n0\r\n\r\n");
  EXPECT_EQ(status_of(got), 200) << got;
  auto seen = s.seen();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen[0].reason, "bad_transfer_encoding");
}

TEST(HttpConformance, HostIsRequiredExactlyOnceInHttp11) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  EXPECT_EQ(status_of(exchange(s.server.port(), "GET / HTTP/1.1\r\n\r\n")), 400);
  EXPECT_EQ(status_of(exchange(s.server.port(), "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")),
            400);
  EXPECT_EQ(status_of(exchange(s.server.port(), "GET / HTTP/1.1\r\nHost: a\r\n\r\n")), 200);
  // HTTP/1.0 predates Host: optional there, but never twice.
  EXPECT_EQ(status_of(exchange(s.server.port(), "GET / HTTP/1.0\r\n\r\n")), 200);
  EXPECT_EQ(status_of(exchange(s.server.port(), "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n")),
            400);
}

TEST(HttpConformance, AbsoluteFormTargetsAreAccepted) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  auto got =
      exchange(s.server.port(),
               "GET http://gw.example:8080/v1/models?a=1 HTTP/1.1\r\nHost: gw.example\r\n\r\n");
  EXPECT_EQ(status_of(got), 200) << got;
  EXPECT_TRUE(got.ends_with("\"GET /v1/models?a=1\"")) << got;
  got = exchange(s.server.port(), "GET HTTPS://gw.example HTTP/1.1\r\nHost: gw.example\r\n\r\n");
  EXPECT_TRUE(got.ends_with("\"GET /\"")) << got;
  got = exchange(s.server.port(), "GET http://gw.example?q HTTP/1.1\r\nHost: gw.example\r\n\r\n");
  EXPECT_TRUE(got.ends_with("\"GET /?q\"")) << got;
}

TEST(HttpConformance, TwoContentLengthsAreRefusedEvenWhenEqual) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  EXPECT_EQ(status_of(exchange(s.server.port(),
                               "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                               "Content-Length: 2\r\n\r\n{}")),
            400);
  EXPECT_EQ(status_of(exchange(s.server.port(),
                               "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n{}")),
            400);
  EXPECT_EQ(status_of(exchange(s.server.port(),
                               "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")),
            200);
  auto seen = s.seen();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen[0].reason, "multiple_content_length");
}

// Writes `pieces` one by one, 20 ms apart, so that the server reads them apart.
bool write_pieces(int fd, const std::vector<std::string>& pieces) {
  for (const auto& piece : pieces) {
    if (!write_all(fd, piece)) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// A head that arrives whole, and one in pieces (refused after reads that follow its first).
TEST(HttpBounds, ARefusalReportsTheRequestsMethodAndTarget) {
  struct Case {
    std::vector<std::string> pieces;
    std::string reason, method, target;
  };
  const std::vector<Case> cases = {
      {{"POST /v1/x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"},
       "multiple_content_length",
       "POST",
       "/v1/x?y"},
      {{"PUT /a/b HTTP/1.1\r\nHost: a\r\n", "Host: b\r\n\r\n"}, "duplicate_host", "PUT", "/a/b"},
  };
  for (const auto& c : cases) {
    EchoServer s;
    ASSERT_TRUE(s.started);
    int fd = connect_to(s.server.port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_pieces(fd, c.pieces));
    const auto got = read_until_close(fd);
    ::close(fd);
    EXPECT_EQ(status_of(got), 400) << got;
    auto seen = s.seen();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].reason, c.reason);
    EXPECT_EQ(seen[0].method, c.method);
    EXPECT_EQ(seen[0].target, c.target);
  }
}

// Answers every request with its body.
struct BodyEchoServer : test::RunningServer {
  BodyEchoServer()
      : RunningServer(EchoServer::defaults(),
                      [](Request& req, ResponseWriter& w) -> boost::asio::awaitable<void> {
                        Response r;
                        r.status = 200;
                        r.body = std::string(req.body.view());
                        co_await w.send(std::move(r));
                      }) {}
};

// Reads until the server has sent `want` bytes or `limit` passed.
std::string read_bytes(int fd, std::size_t want,
                       std::chrono::milliseconds limit = std::chrono::seconds(3)) {
  std::string got;
  const auto end = Clock::now() + limit;
  char buf[256];
  while (got.size() < want && Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, std::min(sizeof buf, want - got.size()), 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

TEST(HttpConformance, ExpectContinueIsAnsweredBeforeTheBodyIsSent) {
  BodyEchoServer s;
  ASSERT_TRUE(s.started);
  int fd = connect_to(s.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd,
                        "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                        "Content-Length: 5\r\n\r\n"));
  constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  EXPECT_EQ(read_bytes(fd, kContinue.size()), kContinue);
  ASSERT_TRUE(write_all(fd, "hello"));
  // A body sent with its head gets no interim answer: the next answer is the final one.
  ASSERT_TRUE(write_all(fd,
                        "POST /f HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                        "Content-Length: 3\r\n\r\nabc"));
  const auto bodies = test::read_answers(fd, 2, std::chrono::seconds(3));
  ::close(fd);
  EXPECT_EQ(bodies, (std::vector<std::string>{"hello", "abc"}));
}

// Heads and bodies that arrive in several reads, each followed on the same connection by a
// request that arrives whole.
TEST(HttpConformance, ARequestInPiecesIsReadWhole) {
  BodyEchoServer s;
  ASSERT_TRUE(s.started);
  int fd = connect_to(s.server.port());
  ASSERT_GE(fd, 0);
  const std::vector<std::vector<std::string>> requests = {
      {"POST /p HTT", "P/1.1\r\nHost: x\r\nContent-Le", "ngth: 10\r\n\r\n01234", "56789"},
      {"POST /q HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"},
      {"POST /r HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n", "wx", "yz"},
      {std::string(kChunkedHead) + "2\r\n{}", "\r\n3\r\n[1]\r\n", "0\r\n\r\n"},
      {"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n!"},
  };
  for (const auto& pieces : requests) ASSERT_TRUE(write_pieces(fd, pieces));
  const auto bodies = test::read_answers(fd, requests.size(), std::chrono::seconds(3));
  ::close(fd);
  EXPECT_EQ(bodies, (std::vector<std::string>{"0123456789", "abc", "wxyz", "{}[1]", "!"}));
}

// Resident set size of this process in bytes.
std::size_t rss_bytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return static_cast<std::size_t>(resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// 100 connections each send an endless chunk extension (1 MiB each, unless the server cuts them
// off first). The server's memory stays within 32 MiB of where it started, every connection is
// refused and closed, and a normal request is answered within 100 ms meanwhile.
TEST(HttpBounds, HundredEndlessChunkExtensionsKeepMemoryBoundedAndServeOthers) {
  EchoServer s;
  ASSERT_TRUE(s.started);
  const std::size_t rss_before = rss_bytes();
  constexpr int kConns = 100;
  constexpr std::size_t kPerConn = 1 << 20;
  std::vector<int> fds;
  std::vector<std::size_t> sent(kConns, 0);
  std::vector<bool> done(kConns, false);
  for (int i = 0; i < kConns; ++i) {
    int fd = connect_to(s.server.port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_all(fd, std::string(kChunkedHead) + "1;a="));
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
    fds.push_back(fd);
  }
  const std::string junk(16 * 1024, 'a');
  std::size_t peak = rss_before;
  int open = kConns;
  bool probed = false;
  std::chrono::microseconds probe_time{0};
  std::string probe;
  const auto end = Clock::now() + std::chrono::seconds(10);
  for (int pass = 0; open > 0 && Clock::now() < end; ++pass) {
    for (int i = 0; i < kConns; ++i) {
      if (done[i]) continue;
      if (sent[i] < kPerConn) {
        const ssize_t n = ::send(fds[i], junk.data(), junk.size(), MSG_NOSIGNAL);
        if (n > 0) sent[i] += static_cast<std::size_t>(n);
      }
      char buf[4096];
      const ssize_t r = ::recv(fds[i], buf, sizeof buf, 0);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        done[i] = true;
        --open;
      }
    }
    peak = std::max(peak, rss_bytes());
    if (!probed && pass == 2) {  // in the middle of the flood
      probed = true;
      const auto t0 = Clock::now();
      probe = exchange(s.server.port(), "GET /probe HTTP/1.1\r\nHost: x\r\n\r\n");
      probe_time = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0);
    }
  }
  for (int fd : fds) ::close(fd);
  EXPECT_EQ(open, 0) << "connections the server did not close";
  EXPECT_LT(peak - rss_before, std::size_t{32} << 20)
      << "RSS grew from " << rss_before << " to " << peak;
  ASSERT_TRUE(probed);
  EXPECT_TRUE(probe.ends_with("\"GET /probe\"")) << probe;
  EXPECT_LT(probe_time, std::chrono::milliseconds(100));
  std::printf("rss before %zu KiB, peak %zu KiB; normal request answered in %lld us\n",
              rss_before >> 10, peak >> 10, static_cast<long long>(probe_time.count()));
}

}  // namespace
}  // namespace bw::http
