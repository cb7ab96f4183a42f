// Micro-benchmarks of the admission module.
//   acquire/release uncontended: the fast path a request takes when its group has a free slot.
//   push/pop at depth 10,000: queue work under a full backlog (one push + one pop per iteration).
#include <benchmark/benchmark.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "admission/admission_controller.h"
#include "admission/wait_queue.h"

namespace bw::admission {
namespace {

namespace asio = boost::asio;

void BM_TryAcquireRelease(benchmark::State& state) {
  AdmissionConfig c;
  c.default_limiter.initial = 64;
  AdmissionController ac(c);
  for (auto _ : state) {
    Permit p = ac.try_acquire("gpt-4.1");
    benchmark::DoNotOptimize(p.valid());
    p.complete(1'000'000, 200);
  }
}
BENCHMARK(BM_TryAcquireRelease);

// The full coroutine path: co_await acquire() with a free slot, then complete().
void BM_AcquireReleaseCoroutine(benchmark::State& state) {
  AdmissionConfig c;
  c.default_limiter.initial = 64;
  AdmissionController ac(c);
  asio::io_context io;
  constexpr int kBatch = 1000;
  for (auto _ : state) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          for (int i = 0; i < kBatch; ++i) {
            AdmitResult r = co_await ac.acquire("gpt-4.1", 1);
            r.permit.complete(1'000'000, 200);
          }
        },
        asio::detached);
    io.run();
    io.restart();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_AcquireReleaseCoroutine);

void BM_QueuePushPopAtDepth(benchmark::State& state) {
  const auto depth = static_cast<std::size_t>(state.range(0));
  QueueConfig c;
  c.max_size = depth + 1;
  WaitQueue<std::uint64_t> q(c);
  Nanos now = seconds(1);
  for (std::size_t i = 0; i < depth; ++i) q.push(static_cast<int>(i % 3), now, 0, i);
  std::uint64_t i = 0;
  for (auto _ : state) {
    now += 1000;
    q.push(static_cast<int>(i % 3), now, 0, i);
    auto d = q.pop(now);
    benchmark::DoNotOptimize(d);
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_QueuePushPopAtDepth)->Arg(10'000);

void BM_QueuePushCancelAtDepth(benchmark::State& state) {
  const auto depth = static_cast<std::size_t>(state.range(0));
  QueueConfig c;
  c.max_size = depth + 1;
  WaitQueue<std::uint64_t> q(c);
  Nanos now = seconds(1);
  for (std::size_t i = 0; i < depth; ++i) q.push(static_cast<int>(i % 3), now, 0, i);
  std::uint64_t i = 0;
  for (auto _ : state) {
    auto r = q.push(static_cast<int>(i % 3), now, 0, i);
    auto d = q.remove(r.handle, now);
    benchmark::DoNotOptimize(d);
    ++i;
  }
}
BENCHMARK(BM_QueuePushCancelAtDepth)->Arg(10'000);

}  // namespace
}  // namespace bw::admission
