// Rate-limit micro-benchmarks: one request checked against 4 limits, and memory per tracked key.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <memory>
#include <string>
#include <vector>

#include "limits/limiter.h"
#include "limits/memory_limit_store.h"

namespace bw::limits {
namespace {

LimitSpec spec(std::string name, Scope scope, std::int64_t rate, Unit unit, Period period) {
  LimitSpec s;
  s.name = std::move(name);
  s.scope = scope;
  s.rate = rate;
  s.unit = unit;
  s.period = period;
  return s;
}

// Huge rates: the benchmark measures the check path, not rejections.
std::shared_ptr<const LimiterConfig> four_limits() {
  return std::make_shared<const LimiterConfig>(LimiterConfig{{
      spec("global-rps", Scope::kGlobal, 1'000'000'000, Unit::kRequests, Period::kSecond),
      spec("ip-rps", Scope::kIp, 1'000'000'000, Unit::kRequests, Period::kSecond),
      spec("rpm", Scope::kKey, 1'000'000'000, Unit::kRequests, Period::kMinute),
      spec("tpm", Scope::kKey, 1'000'000'000'000, Unit::kTokens, Period::kMinute),
  }});
}

Limiter& shared_limiter() {
  static Limiter limiter(four_limits(), std::make_shared<MemoryLimitStore>());
  return limiter;
}

// Four limits per request. Threads:2 with distinct keys contend only on the global limit; with
// shared keys every limit is contended.
void run_checks(benchmark::State& state, bool shared_keys) {
  Limiter& limiter = shared_limiter();
  const std::string key =
      shared_keys ? "key-shared" : "key-" + std::to_string(state.thread_index());
  const std::string ip =
      shared_keys ? "10.0.0.1" : "10.0.1." + std::to_string(state.thread_index());
  RequestScope s;
  s.key_id = key;
  s.tenant_id = "tenant";
  s.client_ip = ip;
  s.endpoint = "/v1/chat/completions";
  s.model = "gpt-4o";
  Nanos now = 1000 * kNanosPerSecond;
  for (auto _ : state) {
    now += 1000;
    Verdict v = limiter.check(s, 100, now);
    benchmark::DoNotOptimize(v.allowed);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Check4Limits(benchmark::State& state) {
  run_checks(state, false);
}
void BM_Check4LimitsSharedKeys(benchmark::State& state) {
  run_checks(state, true);
}
BENCHMARK(BM_Check4Limits)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_Check4LimitsSharedKeys)->Threads(2)->UseRealTime();

// Store only: one GCRA bucket, single threaded (the arithmetic + lock + hash lookup).
void BM_StoreSingleCheck(benchmark::State& state) {
  MemoryLimitStore store;
  const LimitSpec s = spec("rps", Scope::kKey, 1'000'000'000, Unit::kRequests, Period::kSecond);
  const LimitCheck c[] = {{"p\x1frps\x1fkey\x1fk1", &s, 1}};
  Nanos now = 1000 * kNanosPerSecond;
  for (auto _ : state) {
    now += 1000;
    benchmark::DoNotOptimize(store.check_and_consume(c, now).allowed);
  }
}
BENCHMARK(BM_StoreSingleCheck);

// Heap bytes per tracked GCRA bucket with 1,000,000 distinct keys (keys typical of ip-rps).
void BM_MemoryPerKey1M(benchmark::State& state) {
  for (auto _ : state) {
    const std::size_t before = mallinfo2().uordblks;
    auto store = std::make_unique<MemoryLimitStore>();
    const LimitSpec s = spec("ip-rps", Scope::kIp, 20, Unit::kRequests, Period::kSecond);
    std::string key;
    for (int i = 0; i < 1'000'000; ++i) {
      key =
          "c\x1fip-rps\x1fip\x1f"
          "10." +
          std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." +
          std::to_string(i & 255);
      const LimitCheck c[] = {{key, &s, 1}};
      benchmark::DoNotOptimize(store->check_and_consume(c, 1000 * kNanosPerSecond).allowed);
    }
    const std::size_t entries = store->size();
    const std::size_t after = mallinfo2().uordblks;
    state.counters["entries"] = static_cast<double>(entries);
    state.counters["bytes_per_key"] = static_cast<double>(after - before) / entries;
    state.counters["MB_total"] = static_cast<double>(after - before) / 1e6;
  }
}
BENCHMARK(BM_MemoryPerKey1M)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace bw::limits
