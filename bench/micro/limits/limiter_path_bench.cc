// The gateway's whole rate-limit phase for one request, with the limit set of
// bench/load/limits_overhead.sh (a key with 4 never-rejecting limits: gcra requests/s, token_bucket
// requests/min, a token limit, a sliding_window requests/day, given as key overrides on an empty
// plan): check + settle, synchronously and through the *_async forms the gateway calls, plus the
// x-ratelimit-* header formatting. `allocs/req` counts heap allocations (malloc and friends) per
// iteration, measured on the benchmark's own threads.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "limits/limiter.h"
#include "limits/memory_limit_store.h"

// Allocation counter: every allocation of the process goes through these (operator new included),
// so the count covers the standard library and Asio's frame allocator too.
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}
namespace {
thread_local std::uint64_t t_allocs = 0;
}
extern "C" {
void* malloc(std::size_t n) {
  ++t_allocs;
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t m) {
  ++t_allocs;
  return __libc_calloc(n, m);
}
void* realloc(void* p, std::size_t n) {
  ++t_allocs;
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
  ++t_allocs;
  return __libc_memalign(a, n);
}
void* memalign(std::size_t a, std::size_t n) {
  ++t_allocs;
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  ++t_allocs;
  void* p = __libc_memalign(a, n);
  if (!p) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}

namespace bw::limits {
namespace {

namespace asio = boost::asio;

LimitSpec spec(std::string name, Algorithm a, std::int64_t rate, Period period,
               Unit unit = Unit::kRequests, std::int64_t burst = 0) {
  LimitSpec s;
  s.name = std::move(name);
  s.algorithm = a;
  s.rate = rate;
  s.period = period;
  s.unit = unit;
  s.burst = burst;
  return s;
}

// The "four-limits" key of limits_overhead.sh.
const std::vector<LimitSpec>& load_test_overrides() {
  static const std::vector<LimitSpec> v = {
      spec("rps", Algorithm::kGcra, 1'000'000'000, Period::kSecond, Unit::kRequests, 1'000'000),
      spec("rpm", Algorithm::kTokenBucket, 1'000'000'000, Period::kMinute),
      spec("tpm", Algorithm::kGcra, 1'000'000'000'000, Period::kMinute, Unit::kTokens),
      spec("rpd", Algorithm::kSlidingWindow, 1'000'000'000'000, Period::kDay),
  };
  return v;
}

const Plan& empty_plan() {
  static const Plan p = [] {
    Plan plan;
    plan.name = "none";
    return plan;
  }();
  return p;
}

Limiter& path_limiter() {
  static Limiter limiter(std::make_shared<const LimiterConfig>(),
                         std::make_shared<MemoryLimitStore>());
  return limiter;
}

struct Request {
  std::string key, ip;
  RequestScope scope;
  explicit Request(bool shared, int thread) {
    key = shared ? "four-limits" : "four-limits-" + std::to_string(thread);
    ip = shared ? "127.0.0.1" : "127.0.0." + std::to_string(thread + 1);
    scope.key_id = key;
    scope.tenant_id = "default";
    scope.client_ip = ip;
    scope.endpoint = "/v1/chat/completions";
    scope.model = "bench";
    scope.plan = &empty_plan();
    scope.key_overrides = &load_test_overrides();
  }
};

constexpr std::int64_t kReserve = 4 + 5;  // prompt estimate + max_tokens of the load test's body
constexpr std::int64_t kActual = 3 + 5;

void report(benchmark::State& state, std::uint64_t allocs) {
  state.SetItemsProcessed(state.iterations());
  state.counters["allocs/req"] = benchmark::Counter(
      static_cast<double>(allocs) / static_cast<double>(std::max<std::int64_t>(
                                        1, static_cast<std::int64_t>(state.iterations()))),
      benchmark::Counter::kAvgThreads);
}

void run_sync(benchmark::State& state, bool shared) {
  Limiter& limiter = path_limiter();
  Request rq(shared, state.thread_index());
  Nanos now = 1000 * kNanosPerSecond;
  for (int i = 0; i < 100; ++i) {  // warm up: buckets exist, thread caches filled
    Verdict v = limiter.check(rq.scope, kReserve, now += 1000);
    limiter.settle(v.reservation, kActual, now);
  }
  const std::uint64_t before = t_allocs;
  for (auto _ : state) {
    now += 1000;
    Verdict v = limiter.check(rq.scope, kReserve, now);
    benchmark::DoNotOptimize(v.allowed);
    limiter.settle(v.reservation, kActual, now);
  }
  report(state, t_allocs - before);
}

void BM_CheckSettleLoadSet(benchmark::State& state) {
  run_sync(state, false);
}
void BM_CheckSettleLoadSetSharedKey(benchmark::State& state) {
  run_sync(state, true);
}
BENCHMARK(BM_CheckSettleLoadSet)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_CheckSettleLoadSetSharedKey)->Threads(2)->UseRealTime();

// What the gateway does: co_await check_async, later co_await settle_async, inside a coroutine on
// the worker's io_context (no async store: the in-process path).
void BM_CheckSettleLoadSetAsync(benchmark::State& state) {
  Limiter& limiter = path_limiter();
  Request rq(false, state.thread_index());
  asio::io_context ioc(1);
  std::uint64_t allocs = 0;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        Nanos now = 1000 * kNanosPerSecond;
        for (int i = 0; i < 100; ++i) {
          Verdict v = co_await limiter.check_async(rq.scope, kReserve, now += 1000);
          co_await limiter.settle_async(v.reservation, kActual, now);
        }
        const std::uint64_t before = t_allocs;
        for (auto _ : state) {
          now += 1000;
          Verdict v = co_await limiter.check_async(rq.scope, kReserve, now);
          benchmark::DoNotOptimize(v.allowed);
          co_await limiter.settle_async(v.reservation, kActual, now);
        }
        allocs = t_allocs - before;
      },
      asio::detached);
  ioc.run();
  report(state, allocs);
}
BENCHMARK(BM_CheckSettleLoadSetAsync)->Threads(1)->Threads(2)->UseRealTime();

Verdict header_verdict() {
  Verdict v;
  v.requests = RateHeaders{true, 1'001'000'000, 1'000'999'999, 1 * kNanosPerMilli};
  v.tokens = RateHeaders{true, 1'000'000'000'000, 999'999'999'991, 540 * kNanosPerMilli + 1};
  return v;
}

// Today's gateway code (pipeline.cc rate_limit()): six std::string pairs added to a header list,
// later serialised into the response head.
void BM_RateHeadersGatewayStyle(benchmark::State& state) {
  const Verdict v = header_verdict();
  std::vector<std::pair<std::string, std::string>> extra;
  std::string head;
  head.reserve(1024);
  const std::uint64_t before = t_allocs;
  for (auto _ : state) {
    extra = {};
    if (v.requests.present) {
      extra.emplace_back("x-ratelimit-limit-requests", std::to_string(v.requests.limit));
      extra.emplace_back("x-ratelimit-remaining-requests", std::to_string(v.requests.remaining));
      extra.emplace_back("x-ratelimit-reset-requests", format_reset(v.requests.reset_after));
    }
    if (v.tokens.present) {
      extra.emplace_back("x-ratelimit-limit-tokens", std::to_string(v.tokens.limit));
      extra.emplace_back("x-ratelimit-remaining-tokens", std::to_string(v.tokens.remaining));
      extra.emplace_back("x-ratelimit-reset-tokens", format_reset(v.tokens.reset_after));
    }
    head.clear();
    for (const auto& [name, value] : extra) {
      head.append(name).append(": ").append(value).append("\r\n");
    }
    benchmark::DoNotOptimize(head.data());
  }
  report(state, t_allocs - before);
}
BENCHMARK(BM_RateHeadersGatewayStyle);

// append_rate_headers into a response head that already has room (the gateway reuses its buffer).
void BM_AppendRateHeaders(benchmark::State& state) {
  const Verdict v = header_verdict();
  std::string head;
  head.reserve(1024);
  const std::uint64_t before = t_allocs;
  for (auto _ : state) {
    head.clear();
    append_rate_headers(head, v);
    benchmark::DoNotOptimize(head.data());
  }
  report(state, t_allocs - before);
}
BENCHMARK(BM_AppendRateHeaders);

// The production row of bench/load (lib.sh prod_policy_yaml): a key on a plan of rps, rpm and tpm
// GCRA limits and a daily request quota, its limits prepared ahead as the gateway's runtime
// prepares them, checked into a request's kept Lazy<Verdict>, its headers written and its tokens
// settled: what phase_rate_limit::try_now and finish do per request.
void BM_PreparedPlanPath(benchmark::State& state) {
  static const Plan plan = [] {
    Plan p;
    p.name = "prod";
    p.daily_requests = 1'000'000'000;
    p.limits = {spec("rps", Algorithm::kGcra, 1'000'000, Period::kSecond),
                spec("rpm", Algorithm::kGcra, 60'000'000, Period::kMinute),
                spec("tpm", Algorithm::kGcra, 1'000'000'000'000, Period::kMinute, Unit::kTokens)};
    for (LimitSpec& s : p.limits) s.scope = Scope::kKey;
    return p;
  }();
  Limiter& limiter = path_limiter();
  Request rq(false, state.thread_index());
  RequestScope& scope = rq.scope;
  scope.plan = &plan;
  scope.key_overrides = nullptr;
  const PreparedLimits ready(&plan, nullptr, scope.key_id, scope.tenant_id);
  scope.prepared = &ready;
  std::string head;
  head.reserve(1024);
  // The limiter outlives a run: each run's time goes on from the previous one's.
  static std::atomic<Nanos> last{1000 * kNanosPerSecond};
  Nanos now = last.load();
  auto one = [&] {
    now += 20'000;
    Lazy<Verdict> verdict;  // a request's own (its context is made afresh)
    limiter.check(scope, kReserve, now, verdict);
    head.clear();
    append_rate_headers(head, verdict.get());
    benchmark::DoNotOptimize(head.data());
    limiter.settle(verdict.mut().reservation, kActual, now);
  };
  for (int i = 0; i < 100; ++i) one();
  const std::uint64_t before = t_allocs;
  for (auto _ : state) one();
  report(state, t_allocs - before);
  Nanos seen = last.load();
  while (seen < now && !last.compare_exchange_weak(seen, now)) {
  }
}
BENCHMARK(BM_PreparedPlanPath)->Threads(1)->Threads(2)->UseRealTime();

// The whole phase as the gateway will run it: check_async, the six headers, settle_async.
void BM_RateLimitPhase(benchmark::State& state) {
  Limiter& limiter = path_limiter();
  Request rq(false, state.thread_index());
  asio::io_context ioc(1);
  std::uint64_t allocs = 0;
  std::string head;
  head.reserve(1024);
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        Nanos now = 1000 * kNanosPerSecond;
        for (int i = 0; i < 100; ++i) {
          Verdict v = co_await limiter.check_async(rq.scope, kReserve, now += 1000);
          co_await limiter.settle_async(v.reservation, kActual, now);
        }
        const std::uint64_t before = t_allocs;
        for (auto _ : state) {
          now += 1000;
          Verdict v = co_await limiter.check_async(rq.scope, kReserve, now);
          head.clear();
          append_rate_headers(head, v);
          benchmark::DoNotOptimize(head.data());
          co_await limiter.settle_async(v.reservation, kActual, now);
        }
        allocs = t_allocs - before;
      },
      asio::detached);
  ioc.run();
  report(state, allocs);
}
BENCHMARK(BM_RateLimitPhase)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace bw::limits
