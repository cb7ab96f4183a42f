#include "cost/alerts.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "store/key_crypto.h"
#include "support/eventually.h"

namespace bw::cost {
namespace {

using namespace std::chrono_literals;
using bw::testing::eventually;

constexpr std::int64_t kFeb1 = 1'769'904'000'000;  // 2026-02-01T00:00:00Z

BudgetAlert sample_alert() {
  return {"global/monthly", 0.8, 812'500'000, 1'000'000'000, kFeb1};
}

TEST(AlertPayload, ExactJsonAndSignature) {
  const std::string body = alert_payload_json(sample_alert());
  EXPECT_EQ(body, R"({"budget":"global/monthly","threshold":0.8,"spent_usd":812.5,"cap_usd":1000,)"
                  R"("period_end":"2026-02-01T00:00:00Z"})");
  BudgetAlert tiny{"key:k/daily", 1.0, 1, 10, kForeverUnixMs};
  EXPECT_EQ(alert_payload_json(tiny),
            R"({"budget":"key:k/daily","threshold":1,"spent_usd":0.000001,"cap_usd":0.00001,)"
            R"("period_end":"never"})");
  EXPECT_EQ(alert_signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(format_utc(kFeb1 + 3'723'000), "2026-02-01T01:02:03Z");
}

TEST(AlertBackoff, ExponentialAndCapped) {
  WebhookOptions o;
  o.initial_backoff = 100ms;
  o.backoff_multiplier = 2;
  o.max_backoff = 500ms;
  EXPECT_EQ(backoff_delay(o, 1), 0ms);
  EXPECT_EQ(backoff_delay(o, 2), 100ms);
  EXPECT_EQ(backoff_delay(o, 3), 200ms);
  EXPECT_EQ(backoff_delay(o, 4), 400ms);
  EXPECT_EQ(backoff_delay(o, 5), 500ms);
  EXPECT_EQ(backoff_delay(o, 30), 500ms);
}

// A tiny HTTP/1.1 server on 127.0.0.1:0 answering 500 to the first `failures` requests, then 200.
class TestServer {
 public:
  struct Request {
    std::string head;
    std::string body;
  };
  explicit TestServer(int failures) : failures_(failures) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~TestServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hook"; }
  int port() const { return port_; }

  // Waits (bounded) until `n` requests were answered.
  std::vector<Request> wait_for(std::size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, 20s, [&] { return requests_.size() >= n; });
    return requests_;
  }

 private:
  void run() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      Request req = read_request(c);
      const bool fail = served_++ < failures_;
      const std::string resp =
          fail ? "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
               : "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
      (void)::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      ::close(c);
      std::lock_guard lock(mu_);
      requests_.push_back(std::move(req));
      cv_.notify_all();
    }
  }
  static Request read_request(int c) {
    std::string data;
    char buf[2048];
    std::size_t header_end = std::string::npos;
    std::size_t content_length = 0;
    for (;;) {
      pollfd p{c, POLLIN, 0};
      if (::poll(&p, 1, 5000) <= 0) break;
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      data.append(buf, static_cast<std::size_t>(n));
      if (header_end == std::string::npos) {
        header_end = data.find("\r\n\r\n");
        if (header_end != std::string::npos) {
          const auto pos = data.find("Content-Length: ");
          if (pos != std::string::npos && pos < header_end) {
            content_length = std::stoul(data.substr(pos + 16));
          }
        }
      }
      if (header_end != std::string::npos && data.size() >= header_end + 4 + content_length) {
        break;
      }
    }
    if (header_end == std::string::npos) return {data, {}};
    return {data.substr(0, header_end), data.substr(header_end + 4)};
  }

  int failures_;
  int served_ = 0;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Request> requests_;
  std::thread thread_;
};

std::string header_value(const std::string& head, const std::string& name) {
  const auto pos = head.find("\r\n" + name + ": ");
  if (pos == std::string::npos) return {};
  const auto start = pos + 4 + name.size();
  return head.substr(start, head.find("\r\n", start) - start);
}

TEST(WebhookSender, RetriesUntilDeliveredAndSigns) {
  TestServer server(/*failures=*/2);
  WebhookOptions o;
  o.url = server.url();
  o.secret = "s3cret";
  o.initial_backoff = 1ms;
  o.max_attempts = 5;
  WebhookSender sender(o);
  ASSERT_TRUE(sender.enqueue(sample_alert()));
  auto reqs = server.wait_for(3);
  ASSERT_EQ(reqs.size(), 3u);
  const std::string expected_body = alert_payload_json(sample_alert());
  for (const auto& r : reqs) {
    EXPECT_EQ(r.head.substr(0, 20), "POST /hook HTTP/1.1\r");
    EXPECT_EQ(r.body, expected_body);
    EXPECT_EQ(header_value(r.head, "Content-Type"), "application/json");
    EXPECT_EQ(header_value(r.head, "X-Bellwether-Signature"),
              "sha256=" + store::hmac_sha256_hex("s3cret", r.body));
  }
  ASSERT_TRUE(eventually([&] { return sender.stats().delivered == 1; }, 20s));
  const WebhookStats s = sender.stats();
  EXPECT_EQ(s.attempts, 3u);
  EXPECT_EQ(s.failed, 0u);
  EXPECT_EQ(s.dropped, 0u);
}

TEST(WebhookSender, GivesUpAfterMaxAttempts) {
  TestServer server(/*failures=*/1000);
  WebhookOptions o;
  o.url = server.url();
  o.initial_backoff = 1ms;
  o.max_attempts = 3;
  WebhookSender sender(o);
  ASSERT_TRUE(sender.enqueue(sample_alert()));
  ASSERT_TRUE(eventually([&] { return sender.stats().failed == 1; }, 20s));
  EXPECT_EQ(sender.stats().attempts, 3u);
  EXPECT_EQ(server.wait_for(3).size(), 3u);
  EXPECT_EQ(sender.stats().delivered, 0u);
}

TEST(WebhookSender, BoundedQueueNeverBlocks) {
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> posted{0};
  WebhookOptions o;
  o.url = "http://127.0.0.1:9/hook";
  o.queue_capacity = 2;
  WebhookSender sender(o, [&](const http::FetchRequest&) -> Result<http::FetchResponse> {
    ++posted;
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return release; });
    return http::FetchResponse{204, {}};
  });
  ASSERT_TRUE(sender.enqueue(sample_alert()));
  ASSERT_TRUE(eventually([&] { return posted.load() == 1; }, 20s));  // first one is in flight
  EXPECT_TRUE(sender.enqueue(sample_alert()));
  EXPECT_TRUE(sender.enqueue(sample_alert()));
  EXPECT_FALSE(sender.enqueue(sample_alert()));
  EXPECT_EQ(sender.stats().dropped, 1u);
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE(eventually([&] { return sender.stats().delivered == 3; }, 20s));
}

TEST(WebhookSender, TransportErrorsAreFailedAttempts) {
  // A port nobody listens on: bind one, close it, then connect; https too (no TLS listener).
  int port = 0;
  {
    TestServer s(0);
    port = s.port();
  }
  for (const char* scheme : {"http", "https"}) {
    WebhookOptions o;
    o.url = std::string(scheme) + "://127.0.0.1:" + std::to_string(port) + "/x";
    o.initial_backoff = 1ms;
    o.max_attempts = 2;
    o.timeout = millis(500);
    WebhookSender sender(o);
    ASSERT_TRUE(sender.enqueue(sample_alert()));
    ASSERT_TRUE(eventually([&] { return sender.stats().failed == 1; }, 20s)) << scheme;
    EXPECT_EQ(sender.stats().attempts, 2u);
  }
}

}  // namespace
}  // namespace bw::cost
