#include "common/secure_random.h"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace bw {

namespace {

// Only when getrandom is missing (ENOSYS: a kernel older than 3.17) or refused by a seccomp
// filter: the same pool through the device file.
bool read_urandom(unsigned char* p, std::size_t n) {
  const int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  while (n > 0) {
    const ssize_t got = ::read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      ::close(fd);
      return false;
    }
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  ::close(fd);
  return true;
}

struct Buffer {
  unsigned char bytes[kSecureRandomBlock];
  std::size_t next = kSecureRandomBlock;  // empty until first use
};

}  // namespace

void secure_random_fill(void* out, std::size_t n) {
  auto* p = static_cast<unsigned char*>(out);
  while (n > 0) {
    const ssize_t got = ::getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (read_urandom(p, n)) return;
      std::fputs("bellwether: no secure random source (getrandom and /dev/urandom failed)\n",
                 stderr);
      std::abort();
    }
    p += got;
    n -= static_cast<std::size_t>(got);
  }
}

std::uint8_t secure_random_byte() {
  thread_local Buffer buf;
  if (buf.next == kSecureRandomBlock) {
    secure_random_fill(buf.bytes, kSecureRandomBlock);
    buf.next = 0;
  }
  return buf.bytes[buf.next++];
}

void append_secure_alnum(std::string& out, std::size_t n) {
  static constexpr std::string_view kAlnum =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  static_assert(kAlnum.size() == 62);
  constexpr unsigned kLimit = 256 - 256 % 62;  // 248: the largest multiple of 62 that fits a byte
  out.reserve(out.size() + n);
  while (n > 0) {
    const unsigned b = secure_random_byte();
    if (b >= kLimit) continue;
    out.push_back(kAlnum[b % 62]);
    --n;
  }
}

}  // namespace bw
