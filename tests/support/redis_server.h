#pragma once
// Test support: a throwaway redis-server on a free loopback port (no persistence, its own
// directory, killed by the destructor), and a synchronous admin command for assertions.
// Shared by the Redis limit-store and Redis budget tests. Header-only.
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "support/free_port.h"

namespace bw::test {

// A loopback port reserved for this test process (support/free_port.h).
inline int free_loopback_port() {
  return ::bw::testing::reserve_loopback_port();
}

class RedisServer {
 public:
  RedisServer() : port_(free_loopback_port()) {
    char tmpl[] = "/tmp/bw-redis-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    start();
  }
  ~RedisServer() {
    resume();
    stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  void start() {
    // The port is reserved against other test processes, not against every program: when it
    // was taken meanwhile, redis-server exits at once, and a new port is tried (a first start
    // only: a restarted server keeps the port its clients know).
    for (int attempt = 0;; ++attempt) {
      if (launch()) return;
      if (!first_start_ || attempt == 2 || pid_ > 0) break;
      port_ = free_loopback_port();
    }
    ADD_FAILURE() << "redis-server did not start on port " << port_ << ": " << log_text();
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void pause() {
    if (pid_ > 0) ::kill(pid_, SIGSTOP);  // never kill(-1): that would stop every process
  }
  void resume() {
    if (pid_ > 0) ::kill(pid_, SIGCONT);
  }

  redisContext* connect() const {
    timeval tv{1, 0};
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
    if (!c || c->err) {
      if (c) redisFree(c);
      return nullptr;
    }
    return c;
  }

  // Runs one admin command synchronously; returns the reply as text (integer as decimal).
  std::string command(const std::vector<std::string>& args) const {
    redisContext* c = connect();
    if (!c) return "<no connection>";
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
    std::string out = "<null>";
    if (r) {
      if (r->type == REDIS_REPLY_INTEGER) {
        out = std::to_string(r->integer);
      } else if (r->str) {
        out.assign(r->str, r->len);
      } else if (r->type == REDIS_REPLY_NIL) {
        out = "<nil>";
      }
      freeReplyObject(r);
    }
    redisFree(c);
    return out;
  }

  std::string log_text() const {
    std::ifstream in(dir_ + "/redis.log");
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }

 private:
  // Starts redis-server on port_; true when it answers. pid_ stays > 0 when it is running but
  // not answering yet after 5 s, -1 when it exited.
  bool launch() {
    const std::string port = std::to_string(port_);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // dies with the test, also on a crash or a timeout
      if (::getppid() != parent) ::_exit(127);
      ::execl("/usr/bin/redis-server", "redis-server", "--port", port.c_str(), "--bind",
              "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir_.c_str(), "--logfile",
              (dir_ + "/redis.log").c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 500; ++i) {  // up to 5 s for the server to answer
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (command({"PING"}) == "PONG") {
        first_start_ = false;
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  int port_;
  std::string dir_;
  pid_t pid_ = -1;
  bool first_start_ = true;
};

}  // namespace bw::test
