// A read that fills less than its buffer makes the next read on that socket wait for readiness
// instead of failing at once (common/read_buffer.h with the project's epoll reactor). These
// tests hold the cases where waiting would hang: the peer's FIN (or urgent data) already there
// when the short read took the last bytes, a half-closing client, an upstream answer delimited
// by its close; and they count the failed reads that the waiting saves.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/read_buffer.h"
#include "http/client.h"
#include "http/server.h"
#include "loopback.h"
#include "running_server.h"

// Counts the reads of one descriptor that found nothing (EAGAIN). Asio's receive calls recv();
// this definition in the test program takes its place and passes the call on to the kernel.
namespace {
std::atomic<int> g_counted_fd{-1};
std::atomic<int> g_failed_reads{0};
}  // namespace

extern "C" ssize_t recv(int fd, void* buf, size_t len, int flags) {
  const long n = ::syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
  if (n < 0 && errno == EAGAIN && fd == g_counted_fd.load()) ++g_failed_reads;
  return static_cast<ssize_t>(n);
}

namespace bw::http {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// Far shorter than any deadline involved (the idle and keep-alive deadlines here are 30 s): a
// read that waited for an edge that never comes shows up as a timeout of the test's io_context.
constexpr auto kPrompt = std::chrono::seconds(10);

using test::connect_to;
using test::write_all;

void set_cork(int fd, bool on) {
  const int v = on ? 1 : 0;
  ASSERT_EQ(::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &v, sizeof v), 0);
}

// Writes `bytes` and the FIN in one TCP segment: corked, the data waits, and the FIN rides on
// it when the write side is shut.
void write_with_fin(int fd, const std::string& bytes) {
  set_cork(fd, true);
  ASSERT_TRUE(write_all(fd, bytes));
  ASSERT_EQ(::shutdown(fd, SHUT_WR), 0);
}

// ---- the reactor, on an Asio socket read with ReadBuffer ---------------------------------------

// An accepted Asio socket (`server`) and the raw peer that connected to it (`peer`).
struct Pair {
  asio::io_context ioc;
  tcp::socket server{ioc};
  int peer = -1;

  Pair() {
    tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    peer = connect_to(acceptor.local_endpoint().port());
    acceptor.accept(server);
    server.non_blocking(true);
  }
  ~Pair() {
    if (peer >= 0) ::close(peer);
  }

  // Runs `body` on the io_context; fails the test if it does not finish within kPrompt.
  void run(std::function<asio::awaitable<void>()> body) {
    bool finished = false;
    asio::co_spawn(ioc, body(), [&](std::exception_ptr e) {
      finished = true;
      if (e) std::rethrow_exception(e);
    });
    ioc.run_for(kPrompt);
    EXPECT_TRUE(finished) << "a read waited for readiness that never came";
  }
};

// One read of up to 64 bytes (a short read for everything these tests send).
asio::awaitable<std::string> read_once(tcp::socket& s, boost::system::error_code& ec) {
  char buf[64];
  auto [e, n] = co_await s.async_read_some(bw::ReadBuffer(asio::buffer(buf)), kNoThrow);
  ec = e;
  co_return std::string(buf, n);
}

// Lets the reactor collect what has arrived (with no read pending): the event and its flags are
// then in hand before the first read, which is the order in which a short read would spend the
// FIN's edge.
void collect_events(Pair& p) {
  // A timer keeps the io_context waiting in the reactor (which collects the socket's event)
  // until it expires.
  asio::steady_timer t(p.ioc, milliseconds(20));
  t.async_wait([](const boost::system::error_code&) {});
  p.ioc.run();
  p.ioc.restart();
}

// The last bytes and the FIN in one segment: the short read takes the bytes, and the read
// after it must still see the end of the stream. Either the event was collected before the
// first read (tried at once), or the read was waiting when the segment came.
TEST(ReadReadiness, FinWithTheLastBytesEndsTheNextRead) {
  for (bool reported_first : {true, false}) {
    SCOPED_TRACE(testing::Message() << "reported_first " << reported_first);
    Pair p;
    std::thread writer;
    if (reported_first) {
      write_with_fin(p.peer, "hello");
      collect_events(p);
    } else {
      writer = std::thread([fd = p.peer] {
        std::this_thread::sleep_for(milliseconds(20));
        write_with_fin(fd, "hello");
      });
    }
    std::vector<std::string> got;
    boost::system::error_code last;
    p.run([&]() -> asio::awaitable<void> {
      boost::system::error_code ec;
      got.push_back(co_await read_once(p.server, ec));
      EXPECT_FALSE(ec);
      co_await read_once(p.server, last);
    });
    if (writer.joinable()) writer.join();
    EXPECT_EQ(got, std::vector<std::string>{"hello"});
    EXPECT_EQ(last, asio::error::eof);
  }
}

// The FIN after the short read (at once, or later): its own edge wakes the waiting read.
TEST(ReadReadiness, FinAfterAShortReadWakesTheNextRead) {
  for (int delay_ms : {0, 1, 20}) {
    Pair p;
    ASSERT_TRUE(write_all(p.peer, "hello"));
    collect_events(p);
    boost::system::error_code last;
    std::thread closer;  // joined before the pair's sockets close
    p.run([&]() -> asio::awaitable<void> {
      boost::system::error_code ec;
      EXPECT_EQ(co_await read_once(p.server, ec), "hello");
      closer = std::thread([fd = p.peer, delay_ms] {
        std::this_thread::sleep_for(milliseconds(delay_ms));
        ::shutdown(fd, SHUT_WR);
      });
      co_await read_once(p.server, last);
    });
    if (closer.joinable()) closer.join();
    EXPECT_EQ(last, asio::error::eof) << "delay " << delay_ms << " ms";
  }
}

// A short read, then the peer's next bytes a little later: they wake the waiting read, and the
// wait cost no failed read. Boost's own receive (a plain buffer) tries at once and fails once.
TEST(ReadReadiness, NextBytesAfterAShortReadWakeTheReadWithoutAFailedRead) {
  Pair p;
  ASSERT_TRUE(write_all(p.peer, "one"));
  collect_events(p);
  std::vector<std::string> got;
  int failed_plain = -1;
  int failed_while_waiting = -1;
  std::vector<std::thread> writers;  // joined before the pair's sockets close
  auto send_later = [fd = p.peer, &writers](std::string bytes) {
    writers.emplace_back([fd, bytes] {
      std::this_thread::sleep_for(milliseconds(20));
      write_all(fd, bytes);
    });
  };
  p.run([&]() -> asio::awaitable<void> {
    char buf[64];
    auto [e1, n1] = co_await p.server.async_read_some(asio::buffer(buf), kNoThrow);
    got.emplace_back(buf, n1);
    g_counted_fd = p.server.native_handle();
    g_failed_reads = 0;
    send_later("two");
    auto [e2, n2] = co_await p.server.async_read_some(asio::buffer(buf), kNoThrow);
    got.emplace_back(buf, n2);
    failed_plain = g_failed_reads.exchange(0);
    boost::system::error_code ec;
    send_later("three");
    got.push_back(co_await read_once(p.server, ec));  // short: the next read waits
    g_failed_reads = 0;
    send_later("four");
    got.push_back(co_await read_once(p.server, ec));
    failed_while_waiting = g_failed_reads.exchange(0);
    g_counted_fd = -1;
  });
  for (auto& w : writers) w.join();
  EXPECT_EQ(got, (std::vector<std::string>{"one", "two", "three", "four"}));
  EXPECT_EQ(failed_plain, 1);  // the count sees Asio's reads
  EXPECT_EQ(failed_while_waiting, 0);
}

// TCP urgent data: a read stops short at the urgent mark with bytes after it queued and their
// edge spent; the urgent data's report keeps the reads going.
TEST(ReadReadiness, UrgentDataDoesNotStallTheRead) {
  Pair p;
  set_cork(p.peer, true);
  ASSERT_TRUE(write_all(p.peer, "abc"));
  ASSERT_EQ(::send(p.peer, "X", 1, MSG_OOB), 1);
  ASSERT_TRUE(write_all(p.peer, "def"));
  set_cork(p.peer, false);
  collect_events(p);
  std::string got;
  p.run([&]() -> asio::awaitable<void> {
    while (got.size() < 6) {
      boost::system::error_code ec;
      got += co_await read_once(p.server, ec);
      if (ec) break;
    }
  });
  EXPECT_EQ(got, "abcdef");
}

// ---- the HTTP server: clients that half-close, keep-alive, pipelining --------------------------

// Answers every request with its target as a JSON string.
struct EchoServer : test::RunningServer {
  EchoServer()
      : RunningServer(options(), [](Request& req, ResponseWriter& w) -> asio::awaitable<void> {
          co_await w.send(Response::json(200, "\"" + std::string(req.target) + "\""));
        }) {}
  static ServerOptions options() {
    ServerOptions o = one_worker();
    o.idle_timeout = seconds(30);
    o.header_timeout = seconds(30);
    return o;
  }
};

std::string get(const std::string& path) {
  return "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
}

// Answers, each read waiting at most kPrompt.
std::vector<std::string> read_answers(int fd, std::size_t count, bool* closed = nullptr) {
  return test::read_answers(fd, count, std::chrono::duration_cast<std::chrono::seconds>(kPrompt),
                            closed);
}

// A client that sends its request and half-closes gets its answer and the connection closed at
// once, not at the keep-alive deadline: with the request and the FIN in one segment, written
// one after the other, or the FIN later; as the connection's first request, and after a
// keep-alive request whose short read made the connection wait for the next one.
TEST(ReadReadinessServer, HalfClosingClientIsAnsweredAndClosedPromptly) {
  EchoServer es;
  ASSERT_TRUE(es.started);
  enum Fin { kOneSegment, kRightAfter, kLater };
  for (Fin fin : {kOneSegment, kRightAfter, kLater}) {
    for (bool keep_alive_first : {false, true}) {
      SCOPED_TRACE(testing::Message() << "fin " << fin << " keep_alive_first " << keep_alive_first);
      const int fd = connect_to(es.server.port());
      ASSERT_GE(fd, 0);
      if (keep_alive_first) {
        ASSERT_TRUE(write_all(fd, get("/first")));
        EXPECT_EQ(read_answers(fd, 1), std::vector<std::string>{"\"/first\""});
        std::this_thread::sleep_for(milliseconds(10));  // the server waits for the next request
      }
      const auto t0 = Clock::now();
      if (fin == kOneSegment) {
        write_with_fin(fd, get("/last"));
      } else {
        ASSERT_TRUE(write_all(fd, get("/last")));
        if (fin == kLater) std::this_thread::sleep_for(milliseconds(20));
        ASSERT_EQ(::shutdown(fd, SHUT_WR), 0);
      }
      bool closed = false;
      EXPECT_EQ(read_answers(fd, 1, &closed), std::vector<std::string>{"\"/last\""});
      EXPECT_TRUE(closed);
      EXPECT_LT(Clock::now() - t0, kPrompt);
      ::close(fd);
    }
  }
}

// Keep-alive requests a little apart: each read of a request is short, and the next request
// wakes the waiting read.
TEST(ReadReadinessServer, KeepAliveRequestsAfterShortReadsAreServed) {
  EchoServer es;
  ASSERT_TRUE(es.started);
  const int fd = connect_to(es.server.port());
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 5; ++i) {
    const std::string path = "/" + std::to_string(i);
    ASSERT_TRUE(write_all(fd, get(path)));
    EXPECT_EQ(read_answers(fd, 1), std::vector<std::string>{"\"" + path + "\""});
    std::this_thread::sleep_for(milliseconds(5 * i));
  }
  ::close(fd);
}

// Pipelined requests with the FIN behind them in one segment: all are answered in order, then
// the connection is closed.
TEST(ReadReadinessServer, PipelinedRequestsWithTheFinAreAllAnswered) {
  EchoServer es;
  ASSERT_TRUE(es.started);
  const int fd = connect_to(es.server.port());
  ASSERT_GE(fd, 0);
  write_with_fin(fd, get("/a") + get("/b") + get("/c"));
  bool closed = false;
  EXPECT_EQ(read_answers(fd, 3, &closed), (std::vector<std::string>{"\"/a\"", "\"/b\"", "\"/c\""}));
  EXPECT_TRUE(closed);
  ::close(fd);
}

// ---- the upstream client: an answer delimited by the upstream's close --------------------------

// An upstream that reads one request and answers without a Content-Length, then closes: the
// whole answer and the FIN in one segment, or the head, the body and the close apart.
TEST(ReadReadinessClient, CloseDelimitedAnswerCompletesPromptly) {
  for (bool one_segment : {true, false}) {
    SCOPED_TRACE(testing::Message() << "one_segment " << one_segment);
    asio::io_context ioc;
    tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const auto port = acceptor.local_endpoint().port();
    std::thread upstream([&acceptor, one_segment] {
      boost::system::error_code ec;
      tcp::socket s = acceptor.accept(ec);
      if (ec) return;
      const int fd = s.native_handle();
      std::string req;
      char buf[4096];
      while (req.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) return;
        req.append(buf, static_cast<std::size_t>(n));
      }
      const std::string head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n";
      if (one_segment) {
        write_with_fin(fd, head + "hello, world");
      } else {
        write_all(fd, head);
        std::this_thread::sleep_for(milliseconds(20));
        write_all(fd, "hello, ");
        std::this_thread::sleep_for(milliseconds(20));
        write_all(fd, "world");
        std::this_thread::sleep_for(milliseconds(20));
        ::shutdown(fd, SHUT_WR);
      }
      std::this_thread::sleep_for(milliseconds(50));
    });
    ClientPool pool;
    const auto ep = Endpoint::make(false, "127.0.0.1", port, "");
    UpstreamOptions opt;
    opt.timeouts.connect = seconds(30);
    opt.timeouts.first_byte = seconds(30);
    opt.timeouts.idle = seconds(30);
    std::optional<std::string> body;
    bool finished = false;
    const auto t0 = Clock::now();
    asio::co_spawn(
        ioc,
        [&]() -> asio::awaitable<void> {
          OutboundRequest r;
          r.method = "GET";
          r.target = "/";
          auto resp = co_await pool.send(ep, r, opt);
          if (!resp) {
            ADD_FAILURE() << resp.error().message;
            co_return;
          }
          auto all = co_await resp->read_all(1024);
          if (all) body = std::string(*all);
        },
        [&](std::exception_ptr) {
          finished = true;
          ioc.stop();
        });
    ioc.run_for(kPrompt);
    EXPECT_TRUE(finished) << "the answer's end was not seen";
    EXPECT_EQ(body, std::optional<std::string>("hello, world"));
    EXPECT_LT(Clock::now() - t0, kPrompt);
    acceptor.close();
    upstream.join();
  }
}

}  // namespace
}  // namespace bw::http
