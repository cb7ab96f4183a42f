// Budget leases in the pipeline: with a ledger whose group commits are held, a request covered
// by its budget set's lease is forwarded without waiting for any commit, and its answer (or a
// stream's last event) waits for its own row's commit.
#include <gtest/gtest.h>

#include <string>
#include <variant>

#include "pipeline_harness.h"
#include "support/ledger_without_rows.h"

namespace bw::gateway::test {
namespace {

// Keeps every record queued until commit(): nothing is durable before the test says so.
class HeldLedger final : public bw::testing::LedgerWithoutRows {
 public:
  using Record = std::variant<cost::LedgerReservation, cost::LedgerSettlement, cost::LedgerCovered>;
  bool append_reservation(cost::LedgerReservation r, cost::LedgerCallback done, Wake) override {
    queue.emplace_back(std::move(r), std::move(done));
    return true;
  }
  bool append_settlement(cost::LedgerSettlement s, cost::LedgerCallback done, Wake) override {
    queue.emplace_back(std::move(s), std::move(done));
    return true;
  }
  bool append_covered(cost::LedgerCovered&& c, cost::LedgerCallback done, Wake) override {
    queue.emplace_back(std::move(c), std::move(done));
    return true;
  }
  bool supports_leases() const override { return true; }
  void kick() override { ++kicks; }
  void flush() override {}

  void commit() {
    auto batch = std::move(queue);
    queue.clear();
    for (auto& [rec, done] : batch) {
      committed.push_back(rec);
      if (done) done(Ok{});
    }
  }
  template <class T>
  int count(const std::vector<std::pair<Record, cost::LedgerCallback>>& q) const {
    int n = 0;
    for (const auto& [r, d] : q) n += std::holds_alternative<T>(r);
    return n;
  }
  template <class T>
  int queued() const {
    return count<T>(queue);
  }
  template <class T>
  int done() const {
    int n = 0;
    for (const auto& r : committed) n += std::holds_alternative<T>(r);
    return n;
  }

  std::vector<std::pair<Record, cost::LedgerCallback>> queue;
  std::vector<Record> committed;
  int kicks = 0;
};

const char* kLeaseYaml = R"(
workers: 1
providers:
  pa: {base_url: "http://127.0.0.1:9/v1"}
model_groups:
  m: {deployments: [{id: m-a, provider: pa, model: m}]}
pricing:
  m: {input: 1, output: 2}
budgets:
  lease: {enabled: true, slice_usd: 1}
keys:
  - {name: rich, key: sk-test-rich-000001, budget: {cap_usd: 100, period: total}}
)";

struct LeasePipeline {
  // idle_close_ms 0: a lease closes when it goes quiet, without a timer.
  explicit LeasePipeline(std::int64_t idle_close_ms = 0) : p(kLeaseYaml) {
    auto l = std::make_unique<HeldLedger>();
    ledger = l.get();
    p.sh.ledger = std::move(l);
    cost::LeaseOptions o;
    o.enabled = true;
    o.idle_close_ms = idle_close_ms;
    p.sh.leases = std::make_unique<cost::LeaseBook>(*p.sh.budgets, *p.sh.ledger, o);
  }
  ~LeasePipeline() { p.sh.leases.reset(); }
  std::unique_ptr<Pipeline::Call> start(bool stream = false) {
    return p.start("POST", "/v1/chat/completions", Pipeline::chat_body("m", stream),
                   {{"authorization", "Bearer sk-test-rich-000001"}});
  }
  // Two requests at once: the first reserves the per-request way, the second opens a lease;
  // both wait for the commit of their row, then reach the (held) upstream.
  void open_lease(std::unique_ptr<Pipeline::Call>& a, std::unique_ptr<Pipeline::Call>& b) {
    p.upstream->held = true;
    a = start();
    ASSERT_TRUE(p.run_until([&] { return ledger->queue.size() == 1; }));
    b = start();
    ASSERT_TRUE(p.run_until([&] { return ledger->queue.size() == 2; }));
    EXPECT_EQ(p.upstream->parked, 0) << "forwarded before its row was committed";
    ledger->commit();
    ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 2; }));
    ASSERT_EQ(p.sh.leases->stats().open_now, 1u);
  }

  Pipeline p;
  HeldLedger* ledger = nullptr;
};

TEST(LeasePipeline, ACoveredRequestIsForwardedWithoutALedgerCommit) {
  LeasePipeline t;
  std::unique_ptr<Pipeline::Call> a, b;
  t.open_lease(a, b);
  auto& p = t.p;
  // The third request is covered: forwarded at once although nothing more is committed.
  auto c = t.start();
  ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 3; }))
      << "a covered request waited for the ledger";
  EXPECT_TRUE(t.ledger->queue.empty());
  EXPECT_EQ(p.sh.leases->stats().covered, 2u);  // b (the opener) and c

  // The answers come back: the covered ones wait for their own row before they are written.
  p.upstream->held = false;
  ASSERT_TRUE(p.run_until([&] { return a->done && t.ledger->queued<cost::LedgerCovered>() == 2; }));
  EXPECT_EQ(a->out.status, 200);  // the per-request path: settled after its answer, as before
  EXPECT_EQ(b->out.status, 0) << "answered before its ledger row was committed";
  EXPECT_EQ(c->out.status, 0) << "answered before its ledger row was committed";
  t.ledger->commit();
  ASSERT_TRUE(p.run_until([&] { return b->done && c->done; }));
  EXPECT_EQ(b->out.status, 200);
  EXPECT_EQ(c->out.status, 200);
  // Quiet: the lease closed, nothing is held.
  EXPECT_EQ(p.sh.leases->stats().open_now, 0u);
  EXPECT_EQ(p.sh.leases->stats().closed, 1u);
  t.ledger->commit();
  p.check_invariants();
  auto snap = p.sh.budgets->snapshot("key:rich/total", p.clock.unix_millis());
  // 7 prompt + 5 completion tokens at 1 and 2 micro-USD per token each (FakeUpstream::ok).
  EXPECT_EQ(snap->spent_micro, 3 * (7 * 1 + 5 * 2));
  EXPECT_EQ(t.ledger->done<cost::LedgerCovered>(), 2);
  EXPECT_EQ(t.ledger->done<cost::LedgerReservation>(), 2);  // a's row and the lease's
  EXPECT_EQ(t.ledger->done<cost::LedgerSettlement>(), 2);   // a's settlement, the lease's close
}

TEST(LeasePipeline, ACoveredStreamWaitsForItsRowOnlyBeforeItsLastEvent) {
  LeasePipeline t;
  auto& p = t.p;
  p.upstream->answers = {
      [](const Seen&) { return FakeUpstream::ok("m"); },
      [](const Seen&) { return FakeUpstream::ok("m"); },
      [](const Seen&) {
        return FakeUpstream::stream(
            {"data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n",
             "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n"
             "data: [DONE]\n\n"});
      }};
  std::unique_ptr<Pipeline::Call> a, b;
  t.open_lease(a, b);
  auto c = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("m", true),
                   {{"authorization", "Bearer sk-test-rich-000001"}});
  ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 3; }));
  p.upstream->held = false;
  ASSERT_TRUE(p.run_until([&] { return t.ledger->queued<cost::LedgerCovered>() == 2; }));
  // The first token and the usage event left; [DONE] waits for the row.
  EXPECT_TRUE(c->out.streamed);
  EXPECT_NE(c->out.body.find("hel"), std::string::npos) << c->out.body;
  EXPECT_EQ(c->out.body.find("[DONE]"), std::string::npos) << c->out.body;
  EXPECT_FALSE(c->out.ended);
  t.ledger->commit();
  ASSERT_TRUE(p.run_until([&] { return a->done && b->done && c->done; }));
  EXPECT_NE(c->out.body.find("[DONE]"), std::string::npos) << c->out.body;
  t.ledger->commit();
  p.check_invariants();
}

// A burst near the cap: the lease's hold is taken before its row is committed, and the requests
// that arrive meanwhile reserve the rest the per-request way. One that finds no room then waits
// for the lease and is covered by it, instead of being refused for room the lease holds for it.
TEST(LeasePipeline, ARequestRefusedWhileItsLeaseOpensIsCoveredByIt) {
  LeasePipeline t;
  auto& p = t.p;
  p.upstream->held = true;
  const std::string budget = "key:rich/total";
  auto reserved = [&] {
    return p.sh.budgets->snapshot(budget, p.clock.unix_millis())->reserved_micro;
  };
  auto a = t.start();
  ASSERT_TRUE(p.run_until([&] { return t.ledger->queue.size() == 1; }));
  const cost::Micros w = reserved();  // one request's worst case
  ASSERT_GT(w, 0);
  // Room for five: a holds one, the lease half of the other four (two), the rest two.
  ASSERT_TRUE(p.sh.budgets->upsert_budget({budget, 5 * w, cost::BudgetPeriod::kTotal}));
  auto b = t.start();
  ASSERT_TRUE(p.run_until([&] { return t.ledger->queue.size() == 2; }));
  ASSERT_EQ(reserved(), 3 * w) << "the lease holds two requests";
  auto c = t.start();
  auto d = t.start();
  ASSERT_TRUE(p.run_until([&] { return t.ledger->queue.size() == 4; }));
  EXPECT_EQ(reserved(), 5 * w);
  // No room left: e waits for the lease instead of being refused.
  auto e = t.start();
  p.run_until([&] { return e->done; }, std::chrono::milliseconds(50));
  EXPECT_FALSE(e->done) << e->out.status << " " << e->out.body;
  t.ledger->commit();
  ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 5; }))
      << "e: " << e->out.status << " " << e->out.body;
  EXPECT_EQ(p.sh.leases->stats().covered, 2u);  // b (the opener) and e
  EXPECT_TRUE(t.ledger->queue.empty()) << "e was covered without a row of its own";
  // A sixth finds neither room nor a lease being opened: refused at once, as before.
  auto f = t.start();
  ASSERT_TRUE(p.run_until([&] { return f->done; }));
  EXPECT_EQ(f->out.status, 429) << f->out.body;
  p.upstream->held = false;
  ASSERT_TRUE(p.run_until([&] { return t.ledger->queued<cost::LedgerCovered>() == 2; }));
  t.ledger->commit();
  ASSERT_TRUE(p.run_until([&] { return a->done && b->done && c->done && d->done && e->done; }));
  for (auto* call : {&a, &b, &c, &d, &e}) EXPECT_EQ((*call)->out.status, 200) << (*call)->out.body;
  t.ledger->commit();
  p.check_invariants();
}

// The timer that closes a quiet lease belongs to its event loop. A loop that is destroyed while
// the timer is pending (its handler destroyed, never run) must not keep a later loop on the same
// thread from arming its own timer: that loop's quiet leases would never close.
TEST(LeasePipeline, AQuietLeaseClosesAfterAnEarlierLoopDiedWithItsTimerPending) {
  constexpr std::int64_t kIdleMs = 20;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "the loop that dies with its timer pending" : "the next loop");
    LeasePipeline t(kIdleMs);
    auto& p = t.p;
    std::unique_ptr<Pipeline::Call> a, b;
    t.open_lease(a, b);
    p.upstream->held = false;
    ASSERT_TRUE(
        p.run_until([&] { return a->done && t.ledger->queued<cost::LedgerCovered>() == 1; }));
    t.ledger->commit();
    // b's row is committed: b ends, and its lease goes quiet (the close timer is armed now).
    ASSERT_TRUE(p.run_until([&] { return b->done; }));
    EXPECT_EQ(b->out.status, 200);
    ASSERT_EQ(p.sh.leases->stats().open_now, 1u);
    if (round == 0) continue;  // destroyed before its timer fired
    p.clock.advance(millis(kIdleMs));
    EXPECT_TRUE(p.run_until([&] { return p.sh.leases->stats().open_now == 0; }))
        << "the quiet lease was never closed";
    EXPECT_EQ(p.sh.leases->stats().closed, 1u);
    t.ledger->commit();
    p.check_invariants();
  }
}

// The close timer of a quiet lease wakes the ledger's writer only when it closed a lease (its
// close row is queued): a wake-up for nothing would cut short the batch of covered rows that the
// writer lets grow.
TEST(LeasePipeline, TheCloseTimerKicksTheLedgerOnlyWhenItClosesALease) {
  constexpr std::int64_t kIdleMs = 20;
  LeasePipeline t(kIdleMs);
  auto& p = t.p;
  std::unique_ptr<Pipeline::Call> a, b;
  t.open_lease(a, b);
  p.upstream->held = false;
  ASSERT_TRUE(p.run_until([&] { return a->done && t.ledger->queued<cost::LedgerCovered>() == 1; }));
  t.ledger->commit();
  ASSERT_TRUE(p.run_until([&] { return b->done; }));
  ASSERT_EQ(p.sh.leases->stats().open_now, 1u);
  // The timer fires several times (real time) while the book's clock stands still: the lease
  // has not been quiet for the idle time, nothing closes, nothing is kicked.
  const int kicks = t.ledger->kicks;
  EXPECT_FALSE(p.run_until([] { return false; }, std::chrono::milliseconds(5 * kIdleMs)));
  EXPECT_EQ(p.sh.leases->stats().open_now, 1u);
  EXPECT_EQ(t.ledger->kicks, kicks) << "the writer was woken with nothing to write";
  // Quiet long enough: the next firing closes it and kicks the ledger for its close row.
  p.clock.advance(millis(kIdleMs));
  ASSERT_TRUE(p.run_until([&] { return p.sh.leases->stats().open_now == 0; }));
  EXPECT_EQ(t.ledger->queued<cost::LedgerSettlement>(), 1);
  EXPECT_EQ(t.ledger->kicks, kicks + 1);
  t.ledger->commit();
  p.check_invariants();
}

}  // namespace
}  // namespace bw::gateway::test
