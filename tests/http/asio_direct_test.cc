// bw::direct, bw::async_write_all and bw::write_now (src/common/asio_direct.h): a coroutine's
// socket reads and writes complete with the same results as as_tuple(deferred) and
// asio::async_write; a write larger than the socket's send buffer goes on until every byte of
// every buffer is written; a coroutine on another io_context than its socket is resumed on its
// own io_context's thread; a write tried at once settles what the socket takes whole, and leaves
// the rest, in order, to the asynchronous write.
#include "common/asio_direct.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <cstddef>
#include <string>
#include <thread>
#include <tuple>

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// A connected loopback pair on `ioc`.
std::pair<tcp::socket, tcp::socket> connected(asio::io_context& ioc) {
  tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  tcp::socket a(ioc), b(ioc);
  a.connect(acceptor.local_endpoint());
  acceptor.accept(b);
  return {std::move(a), std::move(b)};
}

std::string pattern(std::size_t n, char seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + static_cast<char>(i % 61));
  return s;
}

// Reads `got.size()` bytes from `reader` into `got` (`read` counts them), at most `step` a read,
// in a coroutine on `ioc`.
void spawn_reader(asio::io_context& ioc, tcp::socket& reader, std::string& got, std::size_t& read,
                  std::size_t step) {
  asio::co_spawn(
      ioc,
      [&reader, &got, &read, step]() -> asio::awaitable<void> {
        while (read < got.size()) {
          auto [ec, n] = co_await reader.async_read_some(
              asio::buffer(got.data() + read, std::min<std::size_t>(got.size() - read, step)),
              bw::direct);
          if (ec) break;
          read += n;
        }
      },
      asio::detached);
}

// Writes `bufs` to `writer` with bw::async_write_all in a coroutine on `ioc`; its result goes to
// `wrote`.
template <std::size_t N>
void spawn_write_all(asio::io_context& ioc, tcp::socket& writer,
                     const std::array<asio::const_buffer, N>& bufs,
                     std::tuple<boost::system::error_code, std::size_t>& wrote) {
  asio::co_spawn(
      ioc,
      [&writer, bufs, &wrote]() -> asio::awaitable<void> {
        wrote = co_await bw::async_write_all(writer, bufs, bw::direct);
      },
      asio::detached);
}

TEST(AsioDirect, WriteAllWritesEveryByteOfEveryBufferPastTheSendBuffer) {
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  auto [writer, reader] = connected(ioc);
  writer.set_option(asio::socket_base::send_buffer_size(4096));
  reader.set_option(asio::socket_base::receive_buffer_size(4096));
  const std::string a = pattern(384 << 10, 'a'), b = "xyz", c = pattern((128 << 10) + 7, 'A');
  const std::string want = a + b + c;
  std::tuple<boost::system::error_code, std::size_t> wrote{asio::error::would_block, 0};
  std::string got(want.size(), '\0');
  std::size_t read = 0;
  const std::array<asio::const_buffer, 4> bufs{asio::buffer(a), asio::const_buffer(),
                                               asio::buffer(b), asio::buffer(c)};
  spawn_write_all(ioc, writer, bufs, wrote);
  spawn_reader(ioc, reader, got, read, 16384);
  ioc.run();
  EXPECT_FALSE(std::get<0>(wrote));
  EXPECT_EQ(std::get<1>(wrote), want.size());
  EXPECT_EQ(read, want.size());
  EXPECT_TRUE(got == want);
}

TEST(AsioDirect, WriteAllToAClosedPeerFails) {
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  auto [writer, reader] = connected(ioc);
  reader.close();
  const std::string big = pattern(8 << 20, 'q');
  std::tuple<boost::system::error_code, std::size_t> wrote{};
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        const std::array<asio::const_buffer, 1> bufs{asio::buffer(big)};
        wrote = co_await bw::async_write_all(writer, bufs, bw::direct);
      },
      asio::detached);
  ioc.run();
  EXPECT_TRUE(std::get<0>(wrote));
  EXPECT_LT(std::get<1>(wrote), big.size());
}

TEST(AsioDirect, WriteNowSettlesAWriteTheSocketTakesWhole) {
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  auto [writer, reader] = connected(ioc);
  std::array<asio::const_buffer, 4> bufs{asio::buffer("head:", 5), asio::const_buffer(),
                                         asio::buffer("body", 4), asio::buffer("\r\n", 2)};
  boost::system::error_code ec = asio::error::would_block;
  std::size_t written = 99;
  EXPECT_TRUE(bw::write_now(writer.native_handle(), bufs, ec, written));
  EXPECT_FALSE(ec);
  EXPECT_EQ(written, 11u);
  std::string got(11, '\0');
  asio::read(reader, asio::buffer(got));
  EXPECT_EQ(got, "head:body\r\n");
}

TEST(AsioDirect, WriteNowOfNothingWritesNothing) {
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  auto [writer, reader] = connected(ioc);
  std::array<asio::const_buffer, 2> bufs{};
  boost::system::error_code ec;
  std::size_t written = 99;
  EXPECT_TRUE(bw::write_now(writer.native_handle(), bufs, ec, written));
  EXPECT_FALSE(ec);
  EXPECT_EQ(written, 0u);
}

// Past the send buffer: the bytes the socket took are dropped from the buffers, and an
// asynchronous write of what is left delivers the rest, every byte once and in order.
TEST(AsioDirect, WriteNowPastTheSendBufferLeavesTheRestToTheAsynchronousWrite) {
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  auto [writer, reader] = connected(ioc);
  const std::string a = pattern(100, 'a'), b = pattern(32 << 20, 'b'), c = pattern(333, 'c');
  const std::string want = a + b + c;
  std::array<asio::const_buffer, 3> bufs{asio::buffer(a), asio::buffer(b), asio::buffer(c)};
  boost::system::error_code ec;
  std::size_t now = 0;
  ASSERT_FALSE(bw::write_now(writer.native_handle(), bufs, ec, now));
  EXPECT_FALSE(ec);
  EXPECT_GT(now, 0u);
  EXPECT_LT(now, want.size());
  // Another try takes what the peer has drained meanwhile, if anything.
  std::size_t again = 0;
  EXPECT_FALSE(bw::write_now(writer.native_handle(), bufs, ec, again));
  EXPECT_FALSE(ec);
  std::size_t left = 0;
  for (const auto& x : bufs) left += x.size();
  EXPECT_EQ(now + again + left, want.size());
  std::tuple<boost::system::error_code, std::size_t> wrote{asio::error::would_block, 0};
  std::string got(want.size(), '\0');
  std::size_t read = 0;
  spawn_write_all(ioc, writer, bufs, wrote);
  spawn_reader(ioc, reader, got, read, 1 << 20);
  ioc.run();
  EXPECT_FALSE(std::get<0>(wrote));
  EXPECT_EQ(std::get<1>(wrote), left);
  EXPECT_EQ(read, want.size());
  EXPECT_TRUE(got == want);
}

// A socket that cannot send fails at once with the error the asynchronous write reports (and
// no SIGPIPE, which would end this test).
TEST(AsioDirect, WriteNowOnAShutDownSocketFailsWithBrokenPipe) {
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  auto [writer, reader] = connected(ioc);
  writer.shutdown(tcp::socket::shutdown_send);
  std::array<asio::const_buffer, 1> bufs{asio::buffer("x", 1)};
  boost::system::error_code ec;
  std::size_t written = 99;
  EXPECT_TRUE(bw::write_now(writer.native_handle(), bufs, ec, written));
  EXPECT_EQ(ec, asio::error::broken_pipe);
  EXPECT_EQ(written, 0u);
  std::tuple<boost::system::error_code, std::size_t> wrote{};
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        wrote = co_await bw::async_write_all(writer, bufs, bw::direct);
      },
      asio::detached);
  ioc.run();
  EXPECT_EQ(std::get<0>(wrote), ec);
}

TEST(AsioDirect, ReadOfAClosedPeerEndsWithEof) {
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  auto [a, b] = connected(ioc);
  const std::array<asio::const_buffer, 1> hello{asio::buffer("hello", 5)};
  asio::write(a, hello);
  a.shutdown(tcp::socket::shutdown_send);
  std::string got;
  boost::system::error_code last;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        char buf[64];
        for (;;) {
          auto [ec, n] = co_await b.async_read_some(asio::buffer(buf), bw::direct);
          got.append(buf, n);
          if (ec) {
            last = ec;
            break;
          }
        }
      },
      asio::detached);
  ioc.run();
  EXPECT_EQ(got, "hello");
  EXPECT_EQ(last, asio::error::eof);
}

// The coroutine runs on `home`, its socket on `io`: each completion is handed to `home`'s thread
// (the operation keeps both executors' work, as Asio's own does), never run on `io`'s.
TEST(AsioDirect, ACoroutineOnAnotherIoContextResumesOnItsOwnThread) {
  asio::io_context io;  // locking: its reactor is used from both threads
  asio::io_context home;
  auto [writer, reader] = connected(io);
  const std::string data = pattern(256 << 10, 'k');
  std::thread::id home_thread;
  int wrong_thread = 0;
  std::size_t read = 0, written = 0;
  auto home_guard = asio::make_work_guard(home);
  std::thread home_runner([&] {
    home_thread = std::this_thread::get_id();
    home.run();
  });
  asio::co_spawn(
      home,
      [&]() -> asio::awaitable<void> {
        const std::array<asio::const_buffer, 2> bufs{
            asio::buffer(data.data(), 1000), asio::buffer(data.data() + 1000, data.size() - 1000)};
        auto [ec, n] = co_await bw::async_write_all(writer, bufs, bw::direct);
        if (std::this_thread::get_id() != home_thread) ++wrong_thread;
        if (!ec) written = n;
      },
      asio::detached);
  asio::co_spawn(
      home,
      [&]() -> asio::awaitable<void> {
        std::string buf(4096, '\0');
        while (read < data.size()) {
          auto [ec, n] = co_await reader.async_read_some(asio::buffer(buf), bw::direct);
          if (std::this_thread::get_id() != home_thread) ++wrong_thread;
          if (ec) break;
          read += n;
        }
        home_guard.reset();
      },
      asio::detached);
  auto io_guard = asio::make_work_guard(io);
  std::thread io_runner([&] { io.run(); });
  home_runner.join();
  io_guard.reset();
  io.stop();
  io_runner.join();
  EXPECT_EQ(wrong_thread, 0);
  EXPECT_EQ(written, data.size());
  EXPECT_EQ(read, data.size());
}

}  // namespace
