#include "http/server.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "loopback.h"
#include "running_server.h"
#include "support/eventually.h"

namespace bw::http {
namespace {

using bw::testing::eventually;
using test::connect_to;
using test::write_all;

// Connects to 127.0.0.1:port, sends one keep-alive GET and returns the response body; the
// connection stays open in `fd`.
std::string get_on_new_connection(std::uint16_t port, int& fd) {
  fd = connect_to(port);
  if (fd < 0) return "";
  if (!write_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")) return "";
  auto bodies = test::read_answers(fd, 1, std::chrono::seconds(30));
  return bodies.empty() ? "" : bodies.front();
}

// Keep-alive connections are spread evenly over the workers whatever SO_REUSEPORT's hash does:
// connections opened one after another alternate between the two workers.
TEST(Server, NewConnectionsGoToTheLeastLoadedWorker) {
  ServerOptions o;
  o.port = 0;
  o.workers = 2;
  Server server(o, [](Request&, ResponseWriter& w) -> boost::asio::awaitable<void> {
    std::ostringstream id;
    id << std::this_thread::get_id();
    co_await w.send(Response::json(200, "\"" + id.str() + "\""));
  });
  ASSERT_TRUE(server.start().ok());
  server.run();
  for (int round = 0; round < 2; ++round) {  // the second round after every connection closed
    std::map<std::string, int> per_worker;
    std::vector<int> fds(40, -1);
    for (int& fd : fds) ++per_worker[get_on_new_connection(server.port(), fd)];
    ASSERT_EQ(per_worker.size(), 2u) << "round " << round;
    for (const auto& [id, n] : per_worker) {
      EXPECT_FALSE(id.empty());
      EXPECT_EQ(n, 20) << "round " << round << " worker " << id;
    }
    for (int fd : fds) ::close(fd);
    for (int i = 0; i < 2000 && server.active_connections() > 0; ++i) {  // 20 s
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(server.active_connections(), 0u);
  }
  server.begin_drain();
  server.stop();
}

// ---- the disconnect watch ---------------------------------------------------------------------

// Answers, each read bounded far above the handlers' work here: a server that never answers
// fails the test instead of hanging it.
std::vector<std::string> read_responses(int fd, std::size_t count) {
  return test::read_answers(fd, count, std::chrono::seconds(30));
}

// A handler that watches its client and then "works" for `work` (ended early if the client goes
// away); it answers with its path. Counts the disconnects it was told of.
struct Disconnects {
  std::atomic<int> disconnects{0};
  std::atomic<int> watching{0};  // handlers that have started watching their client
};
struct WatchingServer : Disconnects, test::RunningServer {
  // How long the handler works on a request.
  using Work = std::function<std::chrono::milliseconds(const Request&)>;
  explicit WatchingServer(std::chrono::milliseconds work)
      : WatchingServer(Work([work](const Request&) { return work; })) {}
  explicit WatchingServer(Work work)
      : RunningServer(
            one_worker(),
            [this, work](Request& req, ResponseWriter& w) -> boost::asio::awaitable<void> {
              auto ex = co_await boost::asio::this_coro::executor;
              boost::asio::steady_timer t(ex, work(req));
              bool gone = false;
              w.watch_disconnect([&] {
                gone = true;
                t.cancel();
              });
              ++watching;
              co_await t.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
              if (gone) {
                ++disconnects;
                co_return;
              }
              co_await w.send(Response::json(200, "\"" + std::string(req.target) + "\""));
            }) {}
};

TEST(ServerWatch, ClientThatClosesIsNoticedWhileTheHandlerRuns) {
  WatchingServer ws(std::chrono::seconds(5));
  ASSERT_TRUE(ws.started);
  int fd = connect_to(ws.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
  // Closed once the handler watches (polled for: a fixed sleep may end before it runs).
  ASSERT_TRUE(eventually([&] { return ws.watching.load() == 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  ::close(fd);
  while (ws.disconnects.load() == 0 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // Noticed while the handler works (5 s), not when its work ends; the bound leaves a stalled
  // machine seconds.
  EXPECT_EQ(ws.disconnects.load(), 1);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

// Two requests in one write: the second is already buffered when the first runs; both are
// answered in order and no disconnect is reported.
TEST(ServerWatch, PipelinedRequestsAreAnsweredAndNeverReadAsGone) {
  WatchingServer ws(std::chrono::milliseconds(60));
  ASSERT_TRUE(ws.started);
  int fd = connect_to(ws.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(
      write_all(fd, "GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(read_responses(fd, 2), (std::vector<std::string>{"\"/one\"", "\"/two\""}));
  // The second request arrives while the first is being handled, after the watch started.
  ASSERT_TRUE(write_all(fd, "GET /three HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  ASSERT_TRUE(write_all(fd, "GET /four HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(read_responses(fd, 2), (std::vector<std::string>{"\"/three\"", "\"/four\""}));
  EXPECT_EQ(ws.disconnects.load(), 0);
  ::close(fd);
}

// Every request of a keep-alive connection is watched, whether the one before it was answered
// before its watch started (under 20 ms) or after (its readiness wait still pending when the
// next request came); a request answered before its client closes is not told of it, and the
// one running when it closes is, within a second.
TEST(ServerWatch, EachRequestOfAKeepAliveConnectionIsWatched) {
  auto gone_within = [](WatchingServer& ws, int expected, std::chrono::milliseconds limit) {
    const auto t0 = std::chrono::steady_clock::now();
    while (ws.disconnects.load() < expected && std::chrono::steady_clock::now() - t0 < limit)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return ws.disconnects.load() == expected;
  };
  // Works for the milliseconds its path names.
  WatchingServer ws([](const Request& req) {
    return std::chrono::milliseconds(std::stoi(std::string(req.target.substr(1))));
  });
  ASSERT_TRUE(ws.started);
  for (const char* last : {"/1", "/80"}) {  // the last answered before and after its wait began
    int fd = connect_to(ws.server.port());
    ASSERT_GE(fd, 0);
    for (const std::string path : {"/80", "/1", "/80", "/80", "/1", last}) {
      ASSERT_TRUE(write_all(fd, "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"));
      EXPECT_EQ(read_responses(fd, 1), (std::vector<std::string>{"\"" + path + "\""}));
    }
    // Closed between requests: nobody is told.
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(ws.disconnects.load(), 0) << last;
  }
  for (const char* before : {"/1", "/80"}) {
    int fd = connect_to(ws.server.port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_all(fd, std::string("GET ") + before + " HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(read_responses(fd, 1).size(), 1u);
    const int seen = ws.disconnects.load();
    const int watching = ws.watching.load();
    ASSERT_TRUE(write_all(fd, "GET /5000 HTTP/1.1\r\nHost: x\r\n\r\n"));
    // Closed once the handler of /5000 watches (polled for, not assumed after a sleep).
    ASSERT_TRUE(eventually([&] { return ws.watching.load() == watching + 1; })) << before;
    ::close(fd);
    // Noticed within the 5 s of work, with seconds left for a stalled machine.
    EXPECT_TRUE(gone_within(ws, seen + 1, std::chrono::seconds(3))) << before;
  }
}

// A chunk given in pieces goes out as the pieces joined: one chunk of their total size, the held
// head in front of the first, the end of the body after the last; more pieces than a write
// takes, or none with bytes, are handled like write_chunk and end_stream_with.
TEST(Server, AChunkInPiecesIsTheirJoinedBytes) {
  ServerOptions o;
  o.port = 0;
  o.workers = 1;
  Server server(o, [](Request&, ResponseWriter& w) -> boost::asio::awaitable<void> {
    Headers h;
    h.add("content-type", "text/event-stream");
    co_await w.begin_stream_held(200, h);
    const std::string_view three[] = {"data: a\n\n", "", "data: b\n\n"};
    co_await w.write_chunk_pieces(three, false);
    const std::string_view empty[] = {"", ""};
    co_await w.write_chunk_pieces(empty, false);
    const std::string_view many[] = {"1", "2", "3", "4", "5", "6"};
    co_await w.write_chunk_pieces(many, false);
    const std::string_view last[] = {"data: c\n\n", "data: [DONE]\n\n"};
    co_await w.write_chunk_pieces(last, true);
  });
  ASSERT_TRUE(server.start().ok());
  server.run();
  int fd = connect_to(server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string got;
  char buf[4096];
  while (got.find("\r\n0\r\n\r\n") == std::string::npos) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  const auto body = got.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos) << got;
  EXPECT_NE(got.find("transfer-encoding: chunked"), std::string::npos) << got;
  EXPECT_EQ(got.substr(body + 4),
            "12\r\ndata: a\n\ndata: b\n\n\r\n6\r\n123456\r\n17\r\ndata: c\n\ndata: "
            "[DONE]\n\n\r\n0\r\n\r\n");
  server.stop();
}

// ---- writes past the socket's send buffer -------------------------------------------------------

std::string big_body(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + static_cast<char>(i % 23));
  return s;
}

// An answer larger than the socket takes at once reaches a client that reads late, every byte in
// order, and the connection then serves its next request.
TEST(Server, AnAnswerLargerThanTheSendBufferReachesALateReaderWhole) {
  const std::string body = big_body(4 << 20);
  test::RunningServer rs(test::RunningServer::one_worker(),
                         [&](Request&, ResponseWriter& w) -> boost::asio::awaitable<void> {
                           Response r;
                           r.body = body;
                           co_await w.send(std::move(r));
                         });
  ASSERT_TRUE(rs.started);
  int fd = connect_to(rs.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the send buffer fills
  auto got = read_responses(fd, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0] == body);
  ASSERT_TRUE(write_all(fd, "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"));
  got = read_responses(fd, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0] == body);
  ::close(fd);
}

// A client that stops reading holds a write only until the write timeout: the write that the
// socket could not take whole fails then, and the connection is closed.
TEST(Server, AClientThatStopsReadingIsDroppedAtTheWriteTimeout) {
  const std::string chunk = big_body(32 << 20);
  std::atomic<int> result{-1};
  std::atomic<std::int64_t> took_ms{0};
  ServerOptions o = test::RunningServer::one_worker();
  o.write_timeout = 300 * kNanosPerMilli;
  test::RunningServer rs(o, [&](Request&, ResponseWriter& w) -> boost::asio::awaitable<void> {
    Headers h;
    h.add("content-type", "text/event-stream");
    co_await w.begin_stream(200, h);
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = co_await w.write_chunk(chunk);
    took_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    result = ok ? 1 : 0;
  });
  ASSERT_TRUE(rs.started);
  int fd = connect_to(rs.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  const auto t0 = std::chrono::steady_clock::now();
  while (result.load() < 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(result.load(), 0);
  EXPECT_GE(took_ms.load(), 250);
  EXPECT_LT(took_ms.load(), 5000);
  ::close(fd);
}

// Reads from `fd` until `want` bytes came or the server closed; at most 30 s a read.
std::string read_bytes(int fd, std::size_t want) {
  timeval tv{};
  tv.tv_sec = 30;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  std::string buf(1 << 16, '\0');
  while (got.size() < want) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n <= 0) break;
    got.append(buf.data(), static_cast<std::size_t>(n));
  }
  return got;
}

std::string hex(std::size_t n) {
  std::ostringstream o;
  o << std::hex << n;
  return o.str();
}

// The *_now writes settle at once what the socket takes; a write past the send buffer returns
// nothing and its awaited namesake writes the rest: the client gets every byte once, in order.
TEST(Server, NowWritesSettleAtOnceOrLeaveTheRestToTheirAwaitedCall) {
  const std::string big = big_body(8 << 20);
  std::atomic<int> fast_paths{0}, rest_paths{0}, failures{0};
  test::RunningServer rs(test::RunningServer::one_worker(),
                         [&](Request& req, ResponseWriter& w) -> boost::asio::awaitable<void> {
                           if (req.target == "/body") {
                             const std::string_view lines[] = {"content-type: text/plain\r\n"};
                             w.head(200, lines, big.size());
                             std::string body = big;
                             if (w.send_body_now(body)) {
                               ++failures;  // 8 MiB do not fit a send buffer
                               co_return;
                             }
                             if (!co_await w.send_body(std::move(body))) ++failures;
                             ++rest_paths;
                             co_return;
                           }
                           const std::string_view lines[] = {"content-type: text/event-stream\r\n"};
                           w.stream_head(200, lines);
                           auto started = w.start_stream_now(true);  // held: nothing to write yet
                           if (!started || !*started) ++failures;
                           const std::string_view small[] = {"data: a\n\n", "data: b\n\n"};
                           if (auto r = w.write_chunk_pieces_now(small, false); r && *r) {
                             ++fast_paths;
                           } else {
                             ++failures;
                           }
                           const std::string_view large[] = {"data: ", big, "\n\n"};
                           if (w.write_chunk_pieces_now(large, true)) {
                             ++failures;
                             co_return;
                           }
                           if (!co_await w.write_chunk_pieces(large, true)) ++failures;
                           ++rest_paths;
                         });
  ASSERT_TRUE(rs.started);
  int fd = connect_to(rs.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the send buffer fills
  const std::string body = "12\r\ndata: a\n\ndata: b\n\n\r\n" + hex(big.size() + 8) +
                           "\r\ndata: " + big + "\n\n\r\n0\r\n\r\n";
  std::string got = read_bytes(fd, 1);
  const auto head_end = got.find("\r\n\r\n");
  // The head came first, with the first chunk.
  ASSERT_NE(head_end, std::string::npos);
  got += read_bytes(fd, head_end + 4 + body.size() - got.size());
  EXPECT_NE(got.find("transfer-encoding: chunked"), std::string::npos);
  EXPECT_TRUE(got.substr(head_end + 4) == body);
  ASSERT_TRUE(write_all(fd, "GET /body HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto bodies = read_responses(fd, 1);
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_TRUE(bodies[0] == big);
  ::close(fd);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(fast_paths.load(), 1);
  EXPECT_EQ(rest_paths.load(), 2);
}

// A handler that leaves a *_now write unfinished (its awaited call never made) has cut its
// answer short: the connection is closed after the bytes that were written.
TEST(Server, AnUnfinishedNowWriteClosesTheConnection) {
  const std::string big = big_body(8 << 20);
  test::RunningServer rs(test::RunningServer::one_worker(),
                         [&](Request&, ResponseWriter& w) -> boost::asio::awaitable<void> {
                           const std::string_view lines[] = {"content-type: text/plain\r\n"};
                           w.head(200, lines, big.size());
                           std::string body = big;
                           (void)w.send_body_now(body);
                           co_return;
                         });
  ASSERT_TRUE(rs.started);
  int fd = connect_to(rs.server.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string got = read_bytes(fd, big.size() * 2);  // until the server closes
  EXPECT_GT(got.size(), 0u);
  EXPECT_LT(got.size(), big.size());
  ::close(fd);
}

// ---- the field spans of a parse ---------------------------------------------------------------

// A request head that arrives in pieces keeps its parse's field list while other connections'
// requests are parsed and answered on the same worker (their parses use the worker's spare list
// meanwhile): every request sees its own header fields.
TEST(Server, AHeadThatWaitsForItsRestKeepsItsFieldsWhileOthersAreParsed) {
  test::RunningServer rs(test::RunningServer::one_worker(),
                         [](Request& req, ResponseWriter& w) -> boost::asio::awaitable<void> {
                           std::string echo = "\"";
                           for (const auto& [name, value] : req.headers) {
                             echo.append(name).append("=").append(value).append(";");
                           }
                           echo += "\"";
                           co_await w.send(Response::json(200, std::move(echo)));
                         });
  ASSERT_TRUE(rs.started);
  const int a = connect_to(rs.server.port());
  const int b = connect_to(rs.server.port());
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  const std::string head_a = "GET /a HTTP/1.1\r\nHost: a\r\nX-One: a1\r\nX-Two: a2\r\nX-Thr";
  ASSERT_TRUE(write_all(a, head_a));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server reads the piece
  for (int i = 0; i < 3; ++i) {
    const std::string n = std::to_string(i);
    ASSERT_TRUE(
        write_all(b, "GET /b HTTP/1.1\r\nHost: b\r\nX-B: " + n + "\r\nX-More: m" + n + "\r\n\r\n"));
    EXPECT_EQ(read_responses(b, 1),
              (std::vector<std::string>{"\"Host=b;X-B=" + n + ";X-More=m" + n + ";\""}));
  }
  ASSERT_TRUE(write_all(a, "ee: a3\r\nX-Four: a4\r\n\r\n"));
  EXPECT_EQ(read_responses(a, 1),
            (std::vector<std::string>{"\"Host=a;X-One=a1;X-Two=a2;X-Three=a3;X-Four=a4;\""}));
  // Both connections go on as usual.
  ASSERT_TRUE(write_all(a, "GET /a HTTP/1.1\r\nHost: a\r\nX-Again: 1\r\n\r\n"));
  EXPECT_EQ(read_responses(a, 1), (std::vector<std::string>{"\"Host=a;X-Again=1;\""}));
  ASSERT_TRUE(write_all(b, "GET /b HTTP/1.1\r\nHost: b\r\n\r\n"));
  EXPECT_EQ(read_responses(b, 1), (std::vector<std::string>{"\"Host=b;\""}));
  ::close(a);
  ::close(b);
}

}  // namespace
}  // namespace bw::http
