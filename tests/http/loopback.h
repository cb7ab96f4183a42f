#pragma once
// A test's raw client side of a loopback connection: connect, write every byte, read answers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/time.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bw::http::test {

// A connected socket to 127.0.0.1:port, or -1.
inline int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Writes all of `s` (without SIGPIPE on a closed peer); false when the socket fails first.
inline bool write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads answers until `count` complete ones (Content-Length bodies) came, the end of the stream,
// or a read that waited `timeout`; returns their bodies. With `closed`, reads on after them and
// says whether the server then closed the connection within `timeout`.
inline std::vector<std::string> read_answers(int fd, std::size_t count,
                                             std::chrono::seconds timeout, bool* closed = nullptr) {
  timeval tv{};
  tv.tv_sec = timeout.count();
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::vector<std::string> bodies;
  std::string got;
  char buf[4096];
  for (;;) {
    const auto head_end = got.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      const auto cl = got.find("content-length: ");
      if (cl == std::string::npos || cl > head_end) return bodies;
      const std::size_t len = std::stoul(got.substr(cl + 16));
      if (got.size() >= head_end + 4 + len) {
        bodies.push_back(got.substr(head_end + 4, len));
        got.erase(0, head_end + 4 + len);
        continue;
      }
    }
    if (bodies.size() == count && !closed) return bodies;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) {
      if (closed) *closed = n == 0 && got.empty();  // not a receive timeout
      return bodies;
    }
    got.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace bw::http::test
