#include "cost/alerts.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>

#include "common/json_util.h"
#include "cost/key_crypto.h"

namespace bw::cost {

namespace {

// Exact decimal USD from micros ("812.5", "0.000001"), no float rounding.
std::string usd_decimal(Micros m) {
  std::string out;
  if (m < 0) {
    out.push_back('-');
    m = m == kMinMicros ? kMaxMicros : -m;
  }
  out += std::to_string(m / kMicrosPerUsd);
  Micros frac = m % kMicrosPerUsd;
  if (frac != 0) {
    std::string digits = std::to_string(frac);
    digits.insert(0, 6 - digits.size(), '0');
    while (!digits.empty() && digits.back() == '0') digits.pop_back();
    out.push_back('.');
    out += digits;
  }
  return out;
}

}  // namespace

std::string format_utc(std::int64_t unix_ms) {
  if (unix_ms == kForeverUnixMs) return "never";
  using namespace std::chrono;
  const std::int64_t day_start = utc_day_start(unix_ms);
  const year_month_day ymd{sys_days{days{day_start / kMillisPerDay}}};
  const std::int64_t secs = (unix_ms - day_start) / 1000;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<int>(secs / 3600), static_cast<int>(secs / 60 % 60),
                static_cast<int>(secs % 60));
  return buf;
}

std::string alert_payload_json(const BudgetAlert& alert) {
  JsonWriter w;
  w.begin_object();
  w.key("budget").value(alert.budget_id);
  w.key("threshold").value(alert.threshold);
  w.key("spent_usd").raw(usd_decimal(alert.spent_micro));
  w.key("cap_usd").raw(usd_decimal(alert.cap_micro));
  w.key("period_end").value(format_utc(alert.period_end_unix_ms));
  w.end_object();
  return w.take();
}

std::string alert_signature(std::string_view secret, std::string_view body) {
  return "sha256=" + hmac_sha256_hex(secret, body);
}

// --- HTTP POST -----------------------------------------------------------------------------------

namespace {

struct ParsedUrl {
  std::string host;
  std::string port = "80";
  std::string path = "/";
};

bool parse_http_url(const std::string& url, ParsedUrl& out) {
  constexpr std::string_view kScheme = "http://";
  if (url.compare(0, kScheme.size(), kScheme) != 0) return false;
  std::string_view rest = std::string_view(url).substr(kScheme.size());
  const auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) out.path = std::string(rest.substr(slash));
  if (authority.empty()) return false;
  if (authority.front() == '[') {  // [v6]:port
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return false;
    out.host = std::string(authority.substr(1, close - 1));
    if (close + 1 < authority.size() && authority[close + 1] == ':') {
      out.port = std::string(authority.substr(close + 2));
    }
  } else {
    const auto colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) out.port = std::string(authority.substr(colon + 1));
  }
  return !out.host.empty() && !out.port.empty();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

bool wait_fd(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (rc < 0 && errno == EINTR) continue;
    return rc > 0;
  }
}

}  // namespace

HttpPostResult http_post(const std::string& url, std::string_view body,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         const HttpPostOptions& options) {
  ParsedUrl u;
  if (!parse_http_url(url, u))
    return {0, "unsupported or malformed URL (only http:// is supported)"};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (const int rc = ::getaddrinfo(u.host.c_str(), u.port.c_str(), &hints, &res); rc != 0) {
    return {0, std::string("resolve: ") + gai_strerror(rc)};
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);

  std::string request =
      "POST " + u.path + " HTTP/1.1\r\nHost: " + u.host + ":" + u.port +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\nConnection: close\r\nUser-Agent: bellwether-alerts\r\n";
  for (const auto& [k, v] : headers) request += k + ": " + v + "\r\n";
  request += "\r\n";
  request.append(body);

  std::string last_error = "no address";
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (fd.get() < 0) {
      last_error = std::string("socket: ") + std::strerror(errno);
      continue;
    }
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last_error = std::string("connect: ") + std::strerror(errno);
        continue;
      }
      if (!wait_fd(fd.get(), POLLOUT, options.connect_timeout)) {
        last_error = "connect timeout";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last_error = std::string("connect: ") + std::strerror(err);
        continue;
      }
    }
    std::size_t sent = 0;
    while (sent < request.size()) {
      const ssize_t n =
          ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<std::size_t>(n);
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (!wait_fd(fd.get(), POLLOUT, options.io_timeout)) return {0, "send timeout"};
      } else {
        return {0, std::string("send: ") + std::strerror(errno)};
      }
    }
    // Only the status line matters; cap what we read so a hostile server cannot hold memory.
    std::string response;
    char buf[1024];
    while (response.find("\r\n") == std::string::npos && response.size() < 8192) {
      const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
      if (n > 0) {
        response.append(buf, static_cast<std::size_t>(n));
      } else if (n == 0) {
        break;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (!wait_fd(fd.get(), POLLIN, options.io_timeout)) return {0, "receive timeout"};
      } else {
        return {0, std::string("recv: ") + std::strerror(errno)};
      }
    }
    // "HTTP/1.1 200 OK"
    if (response.size() < 12 || response.compare(0, 5, "HTTP/") != 0) {
      return {0, "malformed response"};
    }
    const auto sp = response.find(' ');
    int status = 0;
    if (sp == std::string::npos ||
        std::from_chars(response.data() + sp + 1, response.data() + response.size(), status).ec !=
            std::errc()) {
      return {0, "malformed status line"};
    }
    return {status, {}};
  }
  return {0, last_error};
}

// --- WebhookSender -------------------------------------------------------------------------------

std::chrono::milliseconds backoff_delay(const WebhookOptions& options, int attempt) {
  if (attempt <= 1) return std::chrono::milliseconds(0);
  const double base = static_cast<double>(options.initial_backoff.count());
  const double d = base * std::pow(std::max(options.backoff_multiplier, 1.0), attempt - 2);
  const double cap = static_cast<double>(options.max_backoff.count());
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::min(d, cap)));
}

WebhookSender::WebhookSender(WebhookOptions options, Poster poster)
    : options_(std::move(options)), poster_(std::move(poster)) {
  thread_ = std::thread([this] { run(); });
}

WebhookSender::~WebhookSender() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool WebhookSender::enqueue(const BudgetAlert& alert) {
  if (options_.url.empty()) return false;
  std::string body = alert_payload_json(alert);
  {
    std::lock_guard lock(mu_);
    if (stopping_ || queue_.size() >= options_.queue_capacity) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(std::move(body));
  }
  cv_.notify_one();
  return true;
}

WebhookStats WebhookSender::stats() const {
  return {delivered_.load(), failed_.load(), dropped_.load(), attempts_.load()};
}

void WebhookSender::run() {
  for (;;) {
    std::string body;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      body = std::move(queue_.front());
      queue_.pop_front();
    }
    (deliver(body) ? delivered_ : failed_).fetch_add(1, std::memory_order_relaxed);
  }
}

bool WebhookSender::deliver(const std::string& body) {
  const std::vector<std::pair<std::string, std::string>> headers = {
      {"X-Bellwether-Signature", alert_signature(options_.secret, body)}};
  const int attempts = std::max(options_.max_attempts, 1);
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    if (attempt > 1) {
      // Sleep on this thread only, and wake at once on shutdown.
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, backoff_delay(options_, attempt), [&] { return stopping_; })) {
        return false;
      }
    }
    attempts_.fetch_add(1, std::memory_order_relaxed);
    const HttpPostResult r = poster_(options_.url, body, headers, options_.http);
    if (r.status >= 200 && r.status < 300) return true;
  }
  return false;
}

}  // namespace bw::cost
