// RedisLimitStore round trips against a local redis-server started here (loopback, temp dir):
// one request = one EVALSHA checking 3 limits (gcra, token bucket, sliding window).
//   BM_RedisCheck/threads:N        one request at a time per thread (latency bound)
//   BM_RedisCheckPipelined/...     16 requests in flight per thread (pipelining)
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "limits/redis_limit_store.h"

namespace bw::limits {
namespace {

namespace asio = boost::asio;

struct Server {
  int port = 0;
  pid_t pid = -1;
  std::string dir;
};

Server& server() {
  static Server s;
  static std::once_flag once;
  std::call_once(once, [] {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    s.port = ntohs(a.sin_port);
    char tmpl[] = "/tmp/bw-redis-bench-XXXXXX";
    s.dir = ::mkdtemp(tmpl);
    const std::string port = std::to_string(s.port);
    s.pid = ::fork();
    if (s.pid == 0) {
      ::execl("/usr/bin/redis-server", "redis-server", "--port", port.c_str(), "--bind",
              "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.dir.c_str(), "--logfile",
              (s.dir + "/redis.log").c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 500; ++i) {
      timeval tv{1, 0};
      redisContext* c = redisConnectWithTimeout("127.0.0.1", s.port, tv);
      const bool ok = c && !c->err;
      if (c) redisFree(c);
      if (ok) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::atexit([] {
      ::kill(server().pid, SIGKILL);
      ::waitpid(server().pid, nullptr, 0);
      std::error_code ec;
      std::filesystem::remove_all(server().dir, ec);
    });
  });
  return s;
}

LimitSpec make(std::string name, Algorithm a) {
  LimitSpec s;
  s.name = std::move(name);
  s.algorithm = a;
  s.rate = 1'000'000'000;
  s.period = Period::kSecond;
  return s;
}

void run_bench(benchmark::State& state, int in_flight) {
  asio::io_context ioc;
  RedisLimitStoreOptions o;
  o.url = "redis://127.0.0.1:" + std::to_string(server().port);
  o.timeout = kNanosPerSecond;
  auto store = *RedisLimitStore::create(o);
  const LimitSpec g = make("g", Algorithm::kGcra), t = make("t", Algorithm::kTokenBucket),
                  w = make("w", Algorithm::kSlidingWindow);
  const std::string key = "bench-" + std::to_string(state.thread_index());
  const LimitCheck checks[] = {{key + ":g", &g, 1}, {key + ":t", &t, 1}, {key + ":w", &w, 1}};
  std::int64_t rejected = 0;
  while (state.KeepRunningBatch(in_flight)) {
    int left = in_flight;
    for (int i = 0; i < in_flight; ++i) {
      asio::co_spawn(
          ioc,
          [&]() -> asio::awaitable<void> {
            const BatchResult r =
                co_await store->check_and_consume_async(checks, SteadyClock::instance().now());
            if (!r.allowed) ++rejected;
            if (--left == 0) ioc.stop();
          },
          asio::detached);
    }
    ioc.restart();
    ioc.run();
  }
  state.counters["round_trips/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["failures"] = static_cast<double>(store->stats().failures + rejected);
}

void BM_RedisCheck(benchmark::State& state) {
  run_bench(state, 1);
}
void BM_RedisCheckPipelined(benchmark::State& state) {
  run_bench(state, 16);
}
BENCHMARK(BM_RedisCheck)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_RedisCheckPipelined)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace bw::limits
