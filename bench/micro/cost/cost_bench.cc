// Cost guard micro-benchmarks.
//   BM_WorstCaseOverChain: the reservation's worst case over 1 or 3 prices of a fallback chain.
//   BM_ReserveSettle: reserve against 3 budgets + settle, 1 and 2 threads (shared budgets, the
//                     worst case for contention: every request hits the global budget).
//   BM_LedgerGroupCommit: records/s through SqliteLedger with synchronous=FULL, and how many
//                     records share one commit (fsync).
//   BM_LedgerRequest: one request's ledger work through SqliteLedger at its default durability
//                     (NORMAL): a reservation, then its settlement in the next group commit, 20
//                     requests per commit as at 64 connections in bench/load/isolated.sh.
//   BM_LedgerSchemaVariant: the same rows as plain SQL on the migrated schema, to price what the
//                     ledger's layout costs: 0 = the ledger's two statements, 1 = the same
//                     without the ledger_open index, 2 = one INSERT of an already settled row
//                     (what a request covered by a durable budget lease would write).
//   BM_LedgerCovered/N: one row already settled per request (a request a budget lease covers)
//                     through SqliteLedger, and its lease row lowered once per commit; N
//                     requests per commit (20, 64 and 150: the isolated benchmark's production
//                     row carries 20-50 at 64 connections and ~150 at 256).
//   BM_LedgerCoveredServed/N: the same with ids as the gateway makes them (the millisecond, then
//                     random digits; 30 requests a millisecond, in no order within it), N = 20,
//                     64 and 400 (the production row carried 300-450 per commit at 76a46ed);
//                     200 iterations.
// Instructions per request (load-independent), e.g.:
//   valgrind --tool=callgrind --callgrind-out-file=/dev/null build/release/bench/bw_bench_cost
//     --benchmark_filter='BM_LedgerSchemaVariant/0'
// minus a run with --benchmark_filter=none, divided by 10,000 (500 iterations of 20 requests).
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include "cost/budget_manager.h"
#include "cost/pricing.h"
#include "store/sqlite_db.h"
#include "store/sqlite_ledger.h"

#include "../../ledger/served_id.h"

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

// The cost guard's reservation over a model group's answer chain (its covering prices, built at
// load): 1 = a group without a dearer fallback (the common case); 3 = gpt-4.1, claude-sonnet-4.5
// and gemini-2.5-flash, of which claude-sonnet-4.5 covers gpt-4.1, so 2 are computed.
void BM_WorstCaseOverChain(benchmark::State& state) {
  const PriceTable t = PriceTable::defaults();
  std::vector<const ModelPrice*> chain{t.find("gpt-4.1"), t.find("claude-sonnet-4.5"),
                                       t.find("gemini-2.5-flash")};
  chain = covering_prices(chain);
  chain.resize(std::min<std::size_t>(chain.size(), static_cast<std::size_t>(state.range(0))));
  for (auto _ : state) {
    const std::int64_t prompt = estimate_prompt_tokens(12'000, 6);
    Micros worst = 0;
    for (const ModelPrice* p : chain) {
      worst = std::max(worst, worst_case_micros(*p, prompt, completion_token_limit(*p, 1024)));
    }
    benchmark::DoNotOptimize(worst);
  }
  state.counters["prices"] = static_cast<double>(chain.size());
}
BENCHMARK(BM_WorstCaseOverChain)->Arg(1)->Arg(3);

// A fresh directory for one benchmark's database, removed with everything in it at the end.
struct BenchDir {
  std::string path = make();
  ~BenchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  static std::string make() {
    char tmpl[] = "/tmp/bw_cost_bench_XXXXXX";
    return ::mkdtemp(tmpl);
  }
};

void BM_LedgerGroupCommit(benchmark::State& state) {
  const BenchDir dir;
  store::SqliteLedgerOptions o;
  o.path = dir.path + "/bench.db";
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
}
// Burst = records in flight at once (concurrent requests); 1 is the no-grouping baseline.
BENCHMARK(BM_LedgerGroupCommit)
    ->Arg(1)
    ->Arg(64)
    ->Arg(1024)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

constexpr int kRequestsPerCommit = 20;

// A time-ordered id like the gateway's: the ledger's primary key grows at one end.
std::string request_id(std::int64_t seq) {
  char id[48];
  std::snprintf(id, sizeof id, "req_%011llx%013llx",
                static_cast<unsigned long long>(kNowMs + seq / 20),
                static_cast<unsigned long long>(seq * 2654435761ULL & 0xfffffffffffffULL));
  return id;
}

void BM_LedgerRequest(benchmark::State& state) {
  const BenchDir dir;
  store::SqliteLedgerOptions o;
  o.path = dir.path + "/bench.db";
  o.synchronous_full = false;
  o.queue_capacity = 1 << 16;
  auto opened = store::SqliteLedger::open(o);
  if (!opened.ok()) {
    state.SkipWithError(opened.error().message.c_str());
    return;
  }
  auto& ledger = *opened;
  std::int64_t seq = 0;
  for (auto _ : state) {
    // This batch's reservations share a commit with the previous batch's settlements.
    for (int i = 0; i < kRequestsPerCommit; ++i) {
      LedgerReservation r{request_id(seq + i),
                          "key_a",
                          "acme",
                          "gpt-4.1",
                          {"key:key_a/total", "global/monthly"},
                          11'100,
                          kNowMs};
      if (!ledger->append_reservation(
              std::move(r), [](const Result<Ok>&) {}, Ledger::Wake::kDeferred)) {
        state.SkipWithError("queue full");
      }
      if (seq >= kRequestsPerCommit) {
        LedgerSettlement s{request_id(seq + i - kRequestsPerCommit),
                           LedgerStatus::kSettled,
                           11'000,
                           10,
                           10,
                           kNowMs + 5};
        if (!ledger->append_settlement(
                std::move(s), [](const Result<Ok>&) {}, Ledger::Wake::kDeferred)) {
          state.SkipWithError("queue full");
        }
      }
    }
    seq += kRequestsPerCommit;
    ledger->kick();
    ledger->flush();
  }
  state.SetItemsProcessed(seq);
}
// A fixed count, so that a callgrind run's instructions divide by a known number of requests.
BENCHMARK(BM_LedgerRequest)->Iterations(500)->Unit(benchmark::kMicrosecond);

// An id as the gateway makes it: the millisecond, then 52 random bits; `per_ms` requests start in
// each millisecond, their ids in no order within it (about 30 at the isolated benchmark's rate).
std::string served_request_id(std::int64_t seq, std::int64_t per_ms) {
  return bench::served_request_id_at(seq, kNowMs + seq / per_ms);
}

// `served`: ids as served_request_id() makes them at 30 a millisecond; else time-ordered.
void ledger_covered(benchmark::State& state, bool served) {
  const BenchDir dir;
  store::SqliteLedgerOptions o;
  o.path = dir.path + "/bench.db";
  o.synchronous_full = false;
  o.queue_capacity = 1 << 16;
  auto opened = store::SqliteLedger::open(o);
  if (!opened.ok()) {
    state.SkipWithError(opened.error().message.c_str());
    return;
  }
  auto& ledger = *opened;
  const int per_commit = static_cast<int>(state.range(0));
  LedgerReservation lease{
      "lease:bench-1", "key_a", "acme", "", {"key:key_a/total", "global/monthly"},
      kMaxMicros / 4,  kNowMs,  true};
  if (!ledger->append_reservation(std::move(lease), [](const Result<Ok>&) {})) {
    state.SkipWithError("queue full");
  }
  ledger->flush();
  const auto party = std::make_shared<const LedgerParty>(
      LedgerParty{"key_a", "acme", {"key:key_a/total", "global/monthly"}});
  std::int64_t seq = 0;
  for (auto _ : state) {
    for (int i = 0; i < per_commit; ++i) {
      LedgerCovered c;
      c.request_id = served ? served_request_id(seq + i, 30) : request_id(seq + i);
      c.lease_id = "lease:bench-1";
      c.party = party;  // as the gateway's rows: the key's strings, shared
      c.model = "gpt-4.1";
      c.reserved_micro = 11'100;
      c.actual_micro = 11'000;
      c.prompt_tokens = 10;
      c.completion_tokens = 10;
      c.created_unix_ms = kNowMs;
      c.settled_unix_ms = kNowMs + 5;
      if (!ledger->append_covered(
              std::move(c), [](const Result<Ok>&) {}, Ledger::Wake::kDeferred)) {
        state.SkipWithError("queue full");
      }
    }
    seq += per_commit;
    ledger->kick();
    ledger->flush();
  }
  state.SetItemsProcessed(seq);
}
void BM_LedgerCovered(benchmark::State& state) {
  ledger_covered(state, false);
}
BENCHMARK(BM_LedgerCovered)
    ->Arg(kRequestsPerCommit)
    ->Arg(64)
    ->Arg(150)
    ->Iterations(500)
    ->Unit(benchmark::kMicrosecond);

void BM_LedgerCoveredServed(benchmark::State& state) {
  ledger_covered(state, true);
}
BENCHMARK(BM_LedgerCoveredServed)
    ->Arg(kRequestsPerCommit)
    ->Arg(64)
    ->Arg(400)
    ->Iterations(200)
    ->Unit(benchmark::kMicrosecond);

void BM_LedgerSchemaVariant(benchmark::State& state) {
  const int variant = static_cast<int>(state.range(0));
  const BenchDir dir;
  auto db = store::SqliteDb::open(dir.path + "/bench.db", false);
  if (!db.ok() || !store::migrate(*db).ok() ||
      !db->exec("PRAGMA ignore_check_constraints=ON").ok() ||
      (variant == 1 && !db->exec("DROP INDEX ledger_open").ok())) {
    state.SkipWithError("open");
    return;
  }
  auto ins = store::Statement::prepare(
      *db, variant == 2 ? "INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets,"
                          " reserved_micro, actual_micro, prompt_tokens, completion_tokens, status,"
                          " created_unix_ms, settled_unix_ms)"
                          " VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, 10, 10, 'settled', ?7, ?7)"
                        : "INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets,"
                          " reserved_micro, status, created_unix_ms)"
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7)");
  auto upd = store::Statement::prepare(
      *db,
      "UPDATE ledger SET status = ?2, actual_micro = ?3, prompt_tokens = ?4,"
      " completion_tokens = ?5, settled_unix_ms = ?6 WHERE request_id = ?1 AND status = 'open'");
  auto begin = store::Statement::prepare(*db, "BEGIN IMMEDIATE");
  auto commit = store::Statement::prepare(*db, "COMMIT");
  if (!ins.ok() || !upd.ok() || !begin.ok() || !commit.ok()) {
    state.SkipWithError("prepare");
    return;
  }
  std::int64_t seq = 0;
  const auto step = [&](store::Statement& st) {
    const int rc = st.step();
    st.reset();
    return rc;
  };
  for (auto _ : state) {
    step(*begin);
    for (int i = 0; i < kRequestsPerCommit; ++i) {
      const std::string id = request_id(seq + i);
      ins->bind_static(1, id)
          .bind_static(2, "key_a")
          .bind_static(3, "acme")
          .bind_static(4, "gpt-4.1")
          .bind_static(5, "key:key_a/total\nglobal/monthly")
          .bind(6, variant == 2 ? 11'000 : 11'100)
          .bind(7, kNowMs);
      if (step(*ins) != 101) state.SkipWithError("insert");  // SQLITE_DONE
      if (variant == 2 || seq < kRequestsPerCommit) continue;
      const std::string prev = request_id(seq + i - kRequestsPerCommit);
      upd->bind_static(1, prev)
          .bind_static(2, "settled")
          .bind(3, 11'000)
          .bind(4, 10)
          .bind(5, 10)
          .bind(6, kNowMs + 5);
      if (step(*upd) != 101) state.SkipWithError("update");
    }
    step(*commit);
    seq += kRequestsPerCommit;
  }
  state.SetItemsProcessed(seq);
}
BENCHMARK(BM_LedgerSchemaVariant)
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Iterations(500)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace bw::cost
