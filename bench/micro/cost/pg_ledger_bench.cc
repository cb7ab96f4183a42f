// PgLedger throughput: records/s acknowledged (committed) with a fixed number of records in
// flight, like concurrent requests each waiting for their reservation before forwarding.
// Needs a PostgreSQL server: BW_BENCH_PG="postgresql://postgres@127.0.0.1:5432/bench" (the
// benchmark migrates it and truncates the ledger table); skipped when unset.
#include <benchmark/benchmark.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>

#include "store/pg_ledger.h"

namespace bw::cost {
namespace {

void BM_PgLedgerInFlight(benchmark::State& state) {
  const char* uri = std::getenv("BW_BENCH_PG");
  if (!uri || !*uri) {
    state.SkipWithError("set BW_BENCH_PG to a PostgreSQL connection string");
    return;
  }
  store::PgLedgerOptions o;
  o.db.conninfo = uri;
  auto opened = store::PgLedger::open(o);
  if (!opened.ok()) {
    state.SkipWithError(opened.error().message.c_str());
    return;
  }
  {
    auto c = store::PgConn::connect(o.db);
    if (c.ok()) (void)c->exec("TRUNCATE ledger");
  }
  auto& ledger = *opened;
  const std::int64_t window = state.range(0);
  std::mutex mu;
  std::condition_variable cv;
  std::int64_t in_flight = 0;
  std::int64_t failed = 0;
  std::int64_t seq = 0;
  for (auto _ : state) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return in_flight < window; });
      ++in_flight;
    }
    LedgerReservation r{"b" + std::to_string(seq++),
                        "key_a",
                        "acme",
                        "gpt-4.1",
                        {"global/total"},
                        1000,
                        1'767'225'600'000};
    auto done = [&](const Result<Ok>& res) {
      std::lock_guard lock(mu);
      --in_flight;
      if (!res.ok()) ++failed;
      cv.notify_one();
    };
    if (!ledger->append_reservation(std::move(r), done)) {
      std::lock_guard lock(mu);
      --in_flight;
      ++failed;
    }
  }
  ledger->flush();
  const LedgerStats s = ledger->stats();
  state.SetItemsProcessed(state.iterations());
  state.counters["records_per_commit"] = static_cast<double>(s.records_committed) /
                                         static_cast<double>(std::max<std::uint64_t>(s.commits, 1));
  state.counters["failed"] = static_cast<double>(failed);
}
BENCHMARK(BM_PgLedgerInFlight)->Arg(1)->Arg(64)->UseRealTime();

}  // namespace
}  // namespace bw::cost
