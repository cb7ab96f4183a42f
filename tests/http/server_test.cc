#include "http/server.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace bw::http {
namespace {

// Connects to 127.0.0.1:port, sends one keep-alive GET and returns the response body; the
// connection stays open in `fd`.
std::string get_on_new_connection(std::uint16_t port, int& fd) {
  fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return "";
  const std::string req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) return "";
  std::string got;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return "";
    got.append(buf, static_cast<std::size_t>(n));
    const auto head_end = got.find("\r\n\r\n");
    if (head_end == std::string::npos) continue;
    const auto cl = got.find("content-length: ");
    if (cl == std::string::npos) return "";
    const std::size_t len = std::stoul(got.substr(cl + 16));
    if (got.size() >= head_end + 4 + len) return got.substr(head_end + 4, len);
  }
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
    for (int i = 0; i < 200 && server.active_connections() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(server.active_connections(), 0u);
  }
  server.begin_drain();
  server.stop();
}

}  // namespace
}  // namespace bw::http
