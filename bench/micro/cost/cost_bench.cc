// Cost guard micro-benchmarks.
//   BM_ReserveSettle: reserve against 3 budgets + settle, 1 and 2 threads (shared budgets, the
//                     worst case for contention: every request hits the global budget).
//   BM_LedgerGroupCommit: records/s through SqliteLedger with synchronous=FULL, and how many
//                     records share one commit (fsync).
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <memory>

#include "cost/budget_manager.h"
#include "cost/pricing.h"
#include "store/sqlite_ledger.h"

namespace bw::cost {
namespace {

constexpr std::int64_t kNowMs = 1'767'225'600'000;

BudgetManager& shared_manager() {
  static BudgetManager* m = [] {
    auto* mgr = new BudgetManager();
    mgr->upsert_budget({"global/total", kMaxMicros, BudgetPeriod::kTotal});
    mgr->upsert_budget({"tenant:acme/monthly", kMaxMicros, BudgetPeriod::kMonthly});
    mgr->upsert_budget({"key:key_a/daily", kMaxMicros, BudgetPeriod::kDaily});
    return mgr;
  }();
  return *m;
}

void BM_ReserveSettle(benchmark::State& state) {
  BudgetManager& m = shared_manager();
  const std::vector<std::string> ids = {"global/total", "tenant:acme/monthly", "key:key_a/daily"};
  for (auto _ : state) {
    auto r = m.reserve(ids, 1'000, kNowMs);
    if (!r.ok()) state.SkipWithError("refused");
    auto out = m.settle(*r.reservation, 700, kNowMs);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ReserveSettle)->Threads(1)->Threads(2)->UseRealTime();

// Realistic sharing: every request hits the global and tenant budgets, but each thread has its own
// key budget.
void BM_ReserveSettleOwnKey(benchmark::State& state) {
  BudgetManager& m = shared_manager();
  const std::string key =
      key_budget_id("bench" + std::to_string(state.thread_index()), BudgetPeriod::kDaily);
  m.upsert_budget({key, kMaxMicros, BudgetPeriod::kDaily});
  const std::vector<std::string> ids = {"global/total", "tenant:acme/monthly", key};
  for (auto _ : state) {
    auto r = m.reserve(ids, 1'000, kNowMs);
    if (!r.ok()) state.SkipWithError("refused");
    auto out = m.settle(*r.reservation, 700, kNowMs);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ReserveSettleOwnKey)->Threads(1)->Threads(2)->UseRealTime();

void BM_WorstCaseEstimate(benchmark::State& state) {
  const PriceTable t = PriceTable::defaults();
  for (auto _ : state) {
    const ModelPrice* p = t.find("gpt-4.1");
    auto w = worst_case(*p, estimate_prompt_tokens(12'000, 6), 1024);
    benchmark::DoNotOptimize(w);
  }
}
BENCHMARK(BM_WorstCaseEstimate);

void BM_LedgerGroupCommit(benchmark::State& state) {
  char tmpl[] = "/tmp/bw_cost_bench_XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  store::SqliteLedgerOptions o;
  o.path = dir + "/bench.db";
  o.queue_capacity = 1 << 20;
  auto opened = store::SqliteLedger::open(o);
  if (!opened.ok()) {
    state.SkipWithError(opened.error().message.c_str());
    return;
  }
  auto& ledger = *opened;
  const std::int64_t burst = state.range(0);
  std::int64_t seq = 0;
  std::atomic<std::int64_t> acked{0};
  for (auto _ : state) {
    for (std::int64_t i = 0; i < burst; ++i) {
      LedgerReservation r{std::to_string(seq++), "key_a", "acme", "gpt-4.1",
                          {"global/total"},      1000,    kNowMs};
      while (!ledger->append_reservation(std::move(r), [&](const Result<Ok>&) { ++acked; })) {
      }
    }
    ledger->flush();
  }
  const LedgerStats s = ledger->stats();
  state.SetItemsProcessed(static_cast<std::int64_t>(s.records_committed));
  state.counters["records_per_commit"] = static_cast<double>(s.records_committed) /
                                         static_cast<double>(std::max<std::uint64_t>(s.commits, 1));
  state.counters["fsyncs"] = static_cast<double>(s.commits);
  state.counters["records/s"] =
      benchmark::Counter(static_cast<double>(s.records_committed), benchmark::Counter::kIsRate);
  opened->reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}
// Burst = records in flight at once (concurrent requests); 1 is the no-grouping baseline.
BENCHMARK(BM_LedgerGroupCommit)
    ->Arg(1)
    ->Arg(64)
    ->Arg(1024)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace bw::cost
