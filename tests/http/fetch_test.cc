#include "http/fetch.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace bw::http {
namespace {

TEST(HttpFetch, ParsesUrls) {
  auto u = parse_url("https://10.0.0.1:6443/apis?x=1");
  ASSERT_TRUE(u);
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->host, "10.0.0.1");
  EXPECT_EQ(u->port, "6443");
  EXPECT_EQ(u->target, "/apis?x=1");
  u = parse_url("http://[::1]/");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, "80");
  EXPECT_FALSE(parse_url("http://:80/"));
  EXPECT_FALSE(parse_url("http://h:8x/"));
  EXPECT_FALSE(parse_url("http://user@h/"));
  EXPECT_EQ(url_encode("max(a{b=\"c\"})"), "max%28a%7Bb%3D%22c%22%7D%29");
}

TEST(HttpFetch, TimesOutOnASilentServer) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 4), 0);  // accepts in the kernel backlog, never answers
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  FetchRequest req;
  req.url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/";
  req.timeout = millis(200);
  const auto r = fetch(req);
  ::close(fd);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, "timeout");
}

}  // namespace
}  // namespace bw::http
