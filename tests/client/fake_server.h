#pragma once
// A tiny HTTP/1.1 server on 127.0.0.1:0 for SDK tests: one request per connection, a handler
// that writes raw response bytes, and a log of arrivals (time, target, headers, body).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bwtest {

struct Arrival {
  std::chrono::steady_clock::time_point at;
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

class Conn {
 public:
  explicit Conn(int fd) : fd_(fd) {}
  bool write(const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  }

 private:
  int fd_;
};

inline std::string response(int status, const std::string& body,
                            const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  std::string r = "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\n";
  for (const auto& [k, v] : headers) r += k + ": " + v + "\r\n";
  r += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  return r;
}

inline std::string chat_body(const std::string& model, const std::string& content,
                             int prompt_tokens = 10, int completion_tokens = 5) {
  return R"({"id":"chatcmpl-1","object":"chat.completion","model":")" + model +
         R"(","choices":[{"index":0,"message":{"role":"assistant","content":")" + content +
         R"("},"finish_reason":"stop"}],"usage":{"prompt_tokens":)" +
         std::to_string(prompt_tokens) + R"(,"completion_tokens":)" +
         std::to_string(completion_tokens) + R"(,"total_tokens":)" +
         std::to_string(prompt_tokens + completion_tokens) + "}}";
}

// Extracts "model":"..." from a request body without a JSON library.
inline std::string model_of(const std::string& body) {
  const auto k = body.find("\"model\":\"");
  if (k == std::string::npos) return {};
  const auto start = k + 9;
  return body.substr(start, body.find('"', start) - start);
}

class FakeServer {
 public:
  using Handler = std::function<void(const Arrival&, Conn&)>;

  explicit FakeServer(Handler handler) : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::listen(fd_, 256);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~FakeServer() {
    stop_ = true;
    acceptor_.join();
    std::vector<std::thread> workers;
    {
      std::lock_guard lock(mu_);
      workers.swap(workers_);
    }
    for (auto& t : workers) t.join();
    ::close(fd_);
  }

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::vector<Arrival> arrivals() const {
    std::lock_guard lock(mu_);
    return arrivals_;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      std::lock_guard lock(mu_);
      workers_.emplace_back([this, c] { serve(c); });
    }
  }

  void serve(int c) {
    std::string buf;
    char tmp[4096];
    std::size_t header_end = std::string::npos;
    while ((header_end = buf.find("\r\n\r\n")) == std::string::npos) {
      const ssize_t n = ::recv(c, tmp, sizeof(tmp), 0);
      if (n <= 0) {
        ::close(c);
        return;
      }
      buf.append(tmp, static_cast<std::size_t>(n));
    }
    Arrival a;
    a.at = std::chrono::steady_clock::now();
    const std::string head = buf.substr(0, header_end);
    std::size_t line_end = head.find("\r\n");
    const std::string request_line = head.substr(0, line_end);
    a.method = request_line.substr(0, request_line.find(' '));
    const auto t0 = request_line.find(' ') + 1;
    a.target = request_line.substr(t0, request_line.find(' ', t0) - t0);
    std::size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      auto e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      const std::string line = head.substr(pos, e - pos);
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(), ::tolower);
        std::string value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        a.headers[name] = value;
      }
      pos = e + 2;
    }
    std::size_t content_length = 0;
    if (auto it = a.headers.find("content-length"); it != a.headers.end())
      content_length = std::stoul(it->second);
    a.body = buf.substr(header_end + 4);
    while (a.body.size() < content_length) {
      const ssize_t n = ::recv(c, tmp, sizeof(tmp), 0);
      if (n <= 0) break;
      a.body.append(tmp, static_cast<std::size_t>(n));
    }
    {
      std::lock_guard lock(mu_);
      arrivals_.push_back(a);
    }
    Conn conn(c);
    handler_(a, conn);
    ::shutdown(c, SHUT_WR);
    ::close(c);
  }

  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  mutable std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<Arrival> arrivals_;
};

}  // namespace bwtest
