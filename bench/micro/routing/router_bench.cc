// pick + start + finish cycle on a 3-deployment group, as the forward phase does per attempt.
// Run: build-routing/bench/bw_bench_routing --benchmark_min_time=1
#include <benchmark/benchmark.h>

#include <memory>

#include "common/clock.h"
#include "routing/router.h"

namespace bw::routing {
namespace {

std::unique_ptr<Router> make_router(BalancerKind kind) {
  RouterConfig c;
  ModelGroupConfig g;
  g.name = "gpt-4.1";
  g.balancer = kind;
  g.deployments = {{"a", "sim-a", "gpt-4.1", 2, 1'000'000'000, 0},
                   {"b", "sim-b", "gpt-4.1", 1, 0, 0},
                   {"c", "sim-c", "gpt-4.1", 1, 0, 0}};
  c.groups.push_back(g);
  auto r = std::make_unique<Router>();
  if (!r->reload(c).ok()) std::abort();
  return r;
}

template <BalancerKind Kind>
void BM_PickFinish(benchmark::State& state) {
  static std::unique_ptr<Router> router;
  if (state.thread_index() == 0) router = make_router(Kind);
  Rng rng(1234 + static_cast<std::uint64_t>(state.thread_index()));
  const Clock& clock = SteadyClock::instance();
  Outcome o;
  o.kind = OutcomeKind::kSuccess;
  o.latency_ns = millis(120);
  o.tokens = 300;
  for (auto _ : state) {
    const Nanos now = clock.now();
    PickResult p = router->pick("gpt-4.1", now, 0, rng);
    if (!p.ticket) {
      state.SkipWithError("no deployment");
      break;
    }
    router->on_start(*p.ticket, now);
    router->on_finish(*p.ticket, o, now, rng);
  }
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_PickFinish<BalancerKind::kP2cPeakEwma>)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_PickFinish<BalancerKind::kWeightedRoundRobin>)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_PickFinish<BalancerKind::kLeastOutstanding>)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace bw::routing
