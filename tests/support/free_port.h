#pragma once
// reserve_loopback_port(): a free 127.0.0.1 TCP port for a server that a test starts later (a
// child process, or a listener bound after the call), kept from every other test process.
//
// The kernel's free port is free only until the call returns: the servers bind it later, and
// ctest runs several test processes at once. Two of them may be handed the same port; a gateway
// or simulator binds it with SO_REUSEPORT, so both servers would listen on it, and each test
// would talk to whichever answered. A port is therefore reserved, for the whole life of the test
// process, under a name in the abstract Unix socket namespace ("bw-test-port-<port>"): a name
// is unique on the machine, is freed by the kernel when the process ends (also on a crash or a
// kill by ctest's timeout, and no file is left behind), and a port already reserved by any test
// process (this one included) is skipped. A server stopped and restarted on its port keeps it.
// tests/sdk/gateway.mjs reserves its ports under the same names.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>

namespace bw::testing {

// A port the kernel has free now (bound to 127.0.0.1:0, then released), or 0.
inline int kernel_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

// Reserves `port` for this process until it exits; false when a test process holds it already.
inline bool reserve_port(int port) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const std::string name = "bw-test-port-" + std::to_string(port);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path + 1, name.data(), name.size());  // sun_path[0] == 0: abstract
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0) {
    ::close(fd);
    return false;
  }
  return true;  // the descriptor stays open (close-on-exec) until the process exits
}

inline int reserve_loopback_port() {
  for (int tries = 0; tries < 1000; ++tries) {
    const int port = kernel_free_port();
    if (port > 0 && reserve_port(port)) return port;
  }
  throw std::runtime_error("no free loopback port could be reserved");
}

}  // namespace bw::testing
