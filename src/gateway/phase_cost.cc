// Phase 6: the cost guard. Estimate the worst case, maybe downgrade near a cap, reserve against
// every budget that applies (one BudgetStore: in process or Redis), and make the reservation
// durable in the ledger before anything is forwarded. finish settles the hold to the actual
// cost, or releases it when nothing was billed.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "common/same_text.h"
#include "gateway/ledger_wait.h"
#include "gateway/phases.h"

namespace bw::gateway {

namespace asio = boost::asio;

namespace {

// One writer wake-up per event-loop round for the records queued with Wake::kDeferred.
void kick_after_round(cost::Ledger& ledger, const asio::any_io_executor& ex) {
  LedgerInbox::of(ex).kick_after_round(ledger, ex);
}

asio::awaitable<Result<Ok>> ledger_commit(cost::Ledger& ledger, cost::LedgerReservation rec) {
  co_return co_await ledger_wait(ledger, [&](cost::LedgerCallback done) {
    return ledger.append_reservation(std::move(rec), std::move(done),
                                     cost::Ledger::Wake::kDeferred);
  });
}

// An answer that cost more than its reservation (an upstream that ignores max_tokens, a prompt
// the estimate undercounts): at most one line per 10 s with the count since the last, since a
// model the estimate does not fit would otherwise log every request.
void warn_overshoot(const Ctx& c, cost::Micros over) {
  static std::atomic<std::int64_t> next_ms{0};
  static std::atomic<std::uint64_t> quiet{0};
  const std::int64_t now = c.sh.clock.unix_millis();
  std::int64_t due = next_ms.load(std::memory_order_relaxed);
  if (now < due || !next_ms.compare_exchange_strong(due, now + 10'000)) {
    quiet.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  spdlog::warn(
      "request {} cost {} micro-USD more than its reservation ({} more such requests since the "
      "last line)",
      c.request_id, over, quiet.exchange(0));
}

Error ledger_unavailable(const char* what) {
  Error e = errors::make(errors::kLedgerUnavailable,
                         std::string("Spend cannot be recorded right now; ") + what);
  e.retry_after_s = 1;
  return e;
}

Error budget_refused(const cost::BudgetRefusal& ref, std::int64_t now_ms) {
  Error e = errors::make(errors::kInsufficientQuota,
                         "The budget '" + ref.budget_id + "' would be exceeded by this request " +
                             "(cap $" + std::to_string(static_cast<double>(ref.cap_micro) / 1e6) +
                             (ref.reset_unix_ms >= cost::kForeverUnixMs
                                  ? "); its period is total: it does not reset."
                                  : "); it resets at " + utc_iso8601(ref.reset_unix_ms) + "."));
  if (ref.reset_unix_ms > now_ms && ref.reset_unix_ms < now_ms + 400LL * 86400 * 1000) {
    e.retry_after_s = static_cast<double>(ref.reset_unix_ms - now_ms) / 1000.0;
  }
  return e;
}

// A cheaper model near a cap (the store's soft threshold), when the key has not opted out.
void maybe_downgrade(Ctx& c, std::int64_t now_ms) {
  if (!c.sh.budget_store->may_downgrade()) return;
  const auto& cfg = c.rt->config();
  auto cheaper = c.sh.budget_store->should_downgrade(c.key->budget_ids, c.route_model,
                                                     c.key->cfg->downgrade_opt_out, now_ms);
  if (!cheaper) return;
  const ModelGroup* g = c.rt->group(*cheaper);
  const cost::ModelPrice* p = cfg.prices.find(*cheaper);
  if (!g || !p) return;
  c.extra.add("x-bellwether-downgraded-from", c.route_model);
  c.sh.metrics->downgrades.with({c.route_model, *cheaper}).inc();
  c.route_model = *cheaper;
  c.group = g;
  c.price = p;
  phase_resolve::apply_image_bound(c);  // the cheaper model may bill images dearer
}

// The most the request can cost, whichever model of its chain answers (the routed model, a
// fallback, a capacity fallback): the largest worst case over the chain's covering prices.
// Embeddings produce no output tokens. Everything else is capped per choice at the requested cap
// under each model's own output limit, which is what forward sends that model as max_tokens.
cost::Micros worst_case(Ctx& c, const AnswerChain& chain) {
  const std::int64_t prompt_estimate = providers::estimate_prompt_tokens(c.llm);
  const bool embeddings = c.llm.endpoint == providers::Endpoint::kEmbeddings;
  if (!embeddings) {
    c.completion_cap = c.llm.max_tokens > 0 ? c.llm.max_tokens : c.group->cfg->max_output_tokens;
    c.forced_max_tokens = cost::completion_token_limit(*c.price, c.completion_cap);
  }
  auto worst_at = [&](const cost::ModelPrice& p) {
    if (embeddings) return cost::cost_micros(p, prompt_estimate, 0);
    // n (or best_of) choices are all generated and billed.
    const std::int64_t completion =
        providers::completion_reservation(c.llm, cost::completion_token_limit(p, c.completion_cap));
    return cost::worst_case_micros(p, prompt_estimate, completion);
  };
  if (chain.prices.empty()) return worst_at(*c.price);
  cost::Micros worst = 0;
  for (const cost::ModelPrice* p : chain.prices) worst = std::max(worst, worst_at(*p));
  return worst;
}

// The lease-closing timer of one event loop. It is an io_context service, so whether the timer is
// armed lives and dies with its loop: a loop destroyed while the timer was pending destroys its
// handler unrun, and a flag kept outside the loop (per thread) would stay set, so that a later
// loop on the same thread never armed the timer again and never closed its quiet leases.
class LeaseCloseTimer final : public asio::execution_context::service {
 public:
  using key_type = LeaseCloseTimer;
  static inline asio::execution_context::id id;
  explicit LeaseCloseTimer(asio::execution_context& ctx) : service(ctx) {}
  bool armed = false;  // the loop's thread only

 private:
  void shutdown() override {}
};

// A lease went quiet: close it if it stays quiet for the idle time (one timer per event loop at
// a time, re-armed while a quiet lease is left waiting).
void close_leases_later(Shared& sh, const asio::any_io_executor& ex) {
  if (!sh.leases) return;
  auto& state = asio::use_service<LeaseCloseTimer>(asio::query(ex, asio::execution::context));
  if (state.armed) return;
  state.armed = true;
  auto timer = std::make_shared<asio::steady_timer>(
      ex, std::chrono::milliseconds(sh.leases->options().idle_close_ms));
  // The handler runs on the loop, which owns `state`: the service outlives every handler.
  timer->async_wait([timer, &sh, &state, ex](const boost::system::error_code& ec) {
    state.armed = false;
    if (ec || !sh.leases) return;
    std::size_t closed = 0;
    const bool waiting = sh.leases->close_idle(sh.clock.unix_millis(), false, &closed);
    // Only close rows need the writer now: a kick for nothing would cut short the batch of
    // journaled covered rows that it lets grow (Wake::kDeferred).
    if (closed > 0) sh.ledger->kick();
    if (waiting) close_leases_later(sh, ex);
  });
}

// The request no longer counts among its budget set's requests in flight (lease.h).
void leave_lease_set(Ctx& c) {
  if (c.lease_set.empty()) return;
  c.sh.leases->end_plain(c.lease_set);
  c.lease_set.clear();
}

// Several requests of the set are in flight: take a slice of its headroom as one hold and one
// durable lease row, and cover this request from it. nullopt: no lease (near the cap, or the
// slice does not fit), take the per-request path.
asio::awaitable<std::optional<Verdict>> open_lease(Ctx& c, const cost::LeaseSet& set,
                                                   cost::Micros worst, std::int64_t now_ms) {
  auto& book = *c.sh.leases;
  const cost::Micros size = book.lease_size(set, worst, now_ms);
  auto res = size > 0 ? c.sh.budgets->reserve(set.budgets, size, now_ms) : cost::ReserveResult{};
  if (!res.ok()) {
    book.open_failed(set.key);
    co_return std::nullopt;
  }
  cost::LedgerReservation rec;
  rec.request_id = book.next_lease_id();
  rec.key_id = set.key_id;
  rec.tenant_id = set.tenant_id;
  rec.budgets = res.reservation->budget_ids();
  rec.reserved_micro = size;
  rec.created_unix_ms = now_ms;
  rec.lease = true;
  std::string id = rec.request_id;
  auto committed = co_await ledger_commit(*c.sh.ledger, std::move(rec));
  if (!committed) {
    c.sh.budgets->release(*res.reservation);
    book.open_failed(set.key);
    leave_lease_set(c);
    co_return Verdict(ledger_unavailable("the request was not sent."));
  }
  book.install(set, std::move(id), std::move(*res.reservation), worst, c.lease_claim,
               c.sh.clock.unix_millis());
  c.lease_set.clear();  // counted among the lease's requests now
  c.reserved_unix_ms = now_ms;
  co_return Verdict(Ok{});
}

// The longest a refused request waits for the lease its set is opening (one commit, normally a
// few milliseconds); after it, the request is refused as before.
constexpr std::chrono::milliseconds kLeaseOpenWait{2000};

// A request whose reservation was refused while a lease of its set is being opened: the lease's
// hold (taken before its row's commit) may be what took the room, and the lease will cover
// requests once it is installed. Waits until it is installed or its opening failed (bounded).
// False: no lease is being opened.
asio::awaitable<bool> wait_for_lease(Ctx& c) {
  // The book may run `wake` on another loop's thread: the cancel is posted to this request's loop,
  // and only while this coroutine still owns the timer.
  struct Waiter {
    std::mutex mu;
    asio::steady_timer* timer = nullptr;
  };
  auto w = std::make_shared<Waiter>();
  asio::steady_timer timer(co_await asio::this_coro::executor, kLeaseOpenWait);
  w->timer = &timer;
  struct Detach {
    Waiter& w;
    ~Detach() {
      std::lock_guard lock(w.mu);
      w.timer = nullptr;
    }
  } detach{*w};
  const bool waiting = c.sh.leases->wait_for_open(c.lease_set, [w] {
    std::lock_guard lock(w->mu);
    if (!w->timer) return;
    asio::post(w->timer->get_executor(), [w] {
      std::lock_guard inner(w->mu);
      if (w->timer) w->timer->cancel();
    });
  });
  if (!waiting) co_return false;
  co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  co_return true;
}

// Whether a covered request's row bills anything (settled) or not (released).
bool covered_billed(const Ctx& c) {
  return c.usage.prompt_tokens + c.usage.completion_tokens > 0;
}
cost::LedgerStatus covered_status(bool billed) {
  return billed ? cost::LedgerStatus::kSettled : cost::LedgerStatus::kReleased;
}
cost::Micros covered_actual(const Ctx& c, bool billed) {
  return billed ? c.cost_micro : 0;
}

// The strings of the request's covered row (covered_row), for the journal's room.
cost::LedgerCoveredText covered_text(const Ctx& c) {
  if (const auto& party = c.key->ledger_party) {
    return {c.request_id, party->key_id, party->tenant_id, c.route_model, &party->budgets};
  }
  return {c.request_id, c.key->cfg->name, c.key->cfg->tenant, c.route_model, &c.key->budget_ids};
}

// A covered request's one ledger row, already settled (or released when nothing was billed),
// set on a default row; LeaseBook::settle adds the lease's part.
void fill_covered_row(const Ctx& c, std::int64_t now_ms, cost::LedgerCovered& row) {
  const bool billed = covered_billed(c);
  row.request_id = c.request_id;
  if (c.key->ledger_party) {
    row.party = c.key->ledger_party;  // key, tenant and budgets: shared, not copied
  } else {
    row.set_party(c.key->cfg->name, c.key->cfg->tenant, c.key->budget_ids);
  }
  row.model = c.route_model;
  row.status = covered_status(billed);
  row.actual_micro = covered_actual(c, billed);
  row.prompt_tokens = c.usage.prompt_tokens;
  row.completion_tokens = c.usage.completion_tokens;
  row.created_unix_ms = c.reserved_unix_ms;
  row.settled_unix_ms = now_ms;
}

cost::LedgerCovered covered_row(const Ctx& c, std::int64_t now_ms) {
  cost::LedgerCovered row;
  fill_covered_row(c, now_ms, row);
  return row;
}

// What follows a covered row's settlement, whether or not it was waited for.
void after_covered(Ctx& c, const cost::LeaseBook::Settled& out, bool committed,
                   const asio::any_io_executor& ex) {
  auto& sh = c.sh;
  if (out.quiet) close_leases_later(sh, ex);
  if (!committed) {
    spdlog::error(
        "ledger: the row of {} (covered by a budget lease) was not recorded; its lease covers "
        "no more requests and stays held at its reserved amount until reconciled",
        c.request_id);
  }
  if (out.outcome.overshoot_micro > 0) warn_overshoot(c, out.outcome.overshoot_micro);
  if (sh.webhooks) {
    for (const auto& a : out.outcome.alerts) sh.webhooks->enqueue(a);
  }
}

// A covered request's row, with the lease row lowered by its cost in the same transaction, not
// waited for (finish: the answer is gone already, or there was none).
asio::awaitable<void> settle_covered(Ctx& c) {
  auto& sh = c.sh;
  const std::int64_t now_ms = sh.clock.unix_millis();
  const auto ex = co_await asio::this_coro::executor;
  const cost::LeaseBook::Settled out =
      sh.leases->settle(c.lease_claim, covered_row(c, now_ms), {}, now_ms);
  if (out.queued) kick_after_round(*sh.ledger, ex);
  after_covered(c, out, out.queued, ex);
}

}  // namespace

// Everything up to the reservation decides without a coroutine: the price, whether any budget
// applies, a downgrade, the worst case and, with leases, the lease's share. A request that a
// lease covers (the common case under load) is done here; run() takes the rest from where this
// left it (c.cost_step).
std::optional<Verdict> phase_cost::try_now(Ctx& c) {
  auto& sh = c.sh;
  const auto& cfg = c.rt->config();
  c.price = c.group != nullptr && same_text(c.route_model, c.group->cfg->name)
                ? c.group->price
                : cfg.prices.find(c.route_model);
  if (!sh.budget_store) return Ok{};
  if (c.key->budget_ids.empty()) return Ok{};
  if (!c.price) {
    return Verdict(errors::make(errors::kModelNotPriced,
                                "The model '" + c.route_model +
                                    "' has no price, so its spend cannot be held to a budget. Add "
                                    "it to the pricing table."));
  }
  // The turn's reading: the reservation and its row are dated by it, and so is its period.
  const std::int64_t now_ms = sh.clock.turn_unix_millis();
  maybe_downgrade(c, now_ms);
  const AnswerChain& chain =
      c.group->answers[static_cast<std::size_t>(std::clamp(c.priority.priority, 0, 2))];
  // A fallback without a price could answer at any price: refused like an unpriced model.
  if (!chain.unpriced.empty()) {
    return Verdict(errors::make(errors::kModelNotPriced,
                                "The model '" + chain.unpriced + "', a fallback of '" +
                                    c.route_model +
                                    "', has no price, so its spend cannot be held to a budget. "
                                    "Add it to the pricing table."));
  }
  Ctx::CostStep& step = c.cost_step;
  step.worst = worst_case(c, chain);
  step.now_ms = now_ms;
  step.open_lease = false;
  if (sh.leases) {
    const cost::LeaseSet& set = c.key->lease_set;
    const auto begin = sh.leases->begin(set, step.worst, now_ms, c.lease_claim);
    if (begin == cost::LeaseBook::Begin::kCovered) {
      c.reserved_unix_ms = now_ms;
      return Ok{};  // the lease row holds it: no ledger wait
    }
    c.lease_set = set.key;
    step.open_lease = begin == cost::LeaseBook::Begin::kOpen;
  }
  return std::nullopt;
}

// After try_now returned nullopt: a lease to open, or the per-request reservation and its
// ledger row.
asio::awaitable<Verdict> phase_cost::run(Ctx& c) {
  auto& sh = c.sh;
  const std::int64_t now_ms = c.cost_step.now_ms;
  const cost::Micros worst = c.cost_step.worst;
  if (c.cost_step.open_lease) {
    if (auto v = co_await open_lease(c, c.key->lease_set, worst, now_ms)) co_return std::move(*v);
  }
  auto res =
      co_await sh.budget_store->reserve(c.key->budget_ids, worst, c.budget.mut(), now_ms, c.now());
  // Refused while the set's lease is being opened (or was installed since the refusal): wait
  // for the lease and take a share of it. A burst that arrives during the lease's commit would
  // otherwise be refused for room the lease holds for it. Bounded: at most two such waits.
  for (int waits = 0; !res.ok && sh.leases && !c.lease_set.empty() && waits < 2; ++waits) {
    const bool waited = co_await wait_for_lease(c);
    const std::int64_t later_ms = sh.clock.unix_millis();
    if (sh.leases->cover_plain(c.key->lease_set, worst, later_ms, c.lease_claim)) {
      c.lease_set.clear();  // counted among the lease's requests now
      c.reserved_unix_ms = later_ms;
      co_return Ok{};
    }
    if (!waited) break;
    res = co_await sh.budget_store->reserve(c.key->budget_ids, worst, c.budget.mut(), later_ms,
                                            c.now());
  }
  if (!res.ok) {
    leave_lease_set(c);
    c.outcome.set(OutcomeKind::kBudget, res.refusal.budget_id);
    sh.metrics->budget_refusals.with({res.refusal.budget_id}).inc();
    co_return budget_refused(res.refusal, now_ms);
  }
  if (!sh.ledger) co_return Ok{};
  cost::LedgerReservation rec;
  rec.request_id = c.request_id;
  rec.key_id = c.key->cfg->name;
  rec.tenant_id = c.key->cfg->tenant;
  rec.model = c.route_model;
  rec.budgets = c.budget->budget_ids();
  rec.reserved_micro = c.budget->amount();
  rec.created_unix_ms = now_ms;
  auto committed = co_await ledger_commit(*sh.ledger, std::move(rec));
  if (!committed) {
    co_await sh.budget_store->release(c.budget.mut(), c.now());
    leave_lease_set(c);
    co_return ledger_unavailable("the request was not sent.");
  }
  c.reservation_logged = true;
  co_return Ok{};
}

void phase_cost::compute_cost(Ctx& c) {
  if (c.cost_computed) return;
  c.cost_computed = true;
  const auto tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
  if (c.price && tokens > 0) {
    c.cost_micro = cost::cost_micros(*c.price, c.usage.prompt_tokens, c.usage.completion_tokens,
                                     c.usage.cached_tokens, c.usage.cache_write_tokens);
  }
}

bool phase_cost::settle_needed(const Ctx& c) {
  return c.budget->active() || c.lease_claim.active() || !c.lease_set.empty();
}

// With a journal (the SQLite ledger, `durability: process`) the row is durable once appended:
// the answer goes on without waiting for the commit, and without a coroutine. Nobody waits for
// the row, so the writer is not kicked either: it takes the rows in larger batches (its own
// wake-up, or half a batch queued), which cost it less per row.
std::optional<cost::LedgerCovered> phase_cost::settle_before_answer_now(
    Ctx& c, const asio::any_io_executor& ex) {
  if (!c.lease_claim.active()) return std::nullopt;
  auto& sh = c.sh;
  compute_cost(c);
  const std::int64_t now_ms = sh.clock.turn_unix_millis();  // the covered row's date
  if (!sh.ledger->journal_room_for(covered_text(c))) return covered_row(c, now_ms);
  // The row is made in the ledger's queue, journaled.
  struct Fill {
    const Ctx& c;
    std::int64_t now_ms;
  } fill{c, now_ms};
  const cost::LedgerCoveredFill journaled_row{[](void* context, cost::LedgerCovered& row) {
                                                const auto& f = *static_cast<const Fill*>(context);
                                                fill_covered_row(f.c, f.now_ms, row);
                                                row.to_journal = true;
                                              },
                                              &fill};
  const bool billed = covered_billed(c);
  const cost::LeaseBook::Settled out = sh.leases->settle_with(
      c.lease_claim, covered_status(billed), covered_actual(c, billed), journaled_row, {}, now_ms);
  if (out.quiet || !out.queued || out.outcome.overshoot_micro > 0 ||
      (sh.webhooks && !out.outcome.alerts.empty())) {
    after_covered(c, out, out.queued, ex);
  }
  return std::nullopt;
}

// Without journal room: the covered row (built by settle_before_answer_now) is queued in the
// ledger wait's own initiation, one coroutine frame (this one) for the whole wait.
asio::awaitable<void> phase_cost::settle_before_answer(Ctx& c, cost::LedgerCovered row) {
  auto& sh = c.sh;
  const std::int64_t now_ms = row.settled_unix_ms;
  cost::LeaseBook::Settled out;
  const auto r = co_await ledger_wait(*sh.ledger, [&](cost::LedgerCallback done) {
    out = sh.leases->settle(c.lease_claim, std::move(row), std::move(done), now_ms);
    return out.queued;
  });
  const bool committed = r.ok();
  if (!committed && out.queued) sh.leases->commit_failed(out.lease, sh.clock.unix_millis());
  if (out.quiet || !committed || out.outcome.overshoot_micro > 0 ||
      (sh.webhooks && !out.outcome.alerts.empty())) {
    after_covered(c, out, committed, co_await asio::this_coro::executor);
  }
}

// The actual cost goes to the budgets and the ledger; the unused reservation is released;
// crossed alert thresholds go to the webhook sender. Call after compute_cost.
asio::awaitable<void> phase_cost::settle(Ctx& c) {
  if (c.lease_claim.active()) {
    co_await settle_covered(c);
    co_return;
  }
  const auto tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
  auto& sh = c.sh;
  const std::int64_t now_ms = sh.clock.unix_millis();
  cost::LedgerSettlement rec;
  rec.request_id = c.request_id;
  rec.prompt_tokens = c.usage.prompt_tokens;
  rec.completion_tokens = c.usage.completion_tokens;
  rec.settled_unix_ms = now_ms;
  // The budget counters move before the ledger row closes: a rebuild of lost Redis counters in
  // between still sees the row open and counts it as reserved (redis_budget.h).
  if (tokens == 0) {
    co_await sh.budget_store->release(c.budget.mut(), c.now());
    rec.status = cost::LedgerStatus::kReleased;
  } else {
    auto out = co_await sh.budget_store->settle(c.budget.mut(), c.cost_micro, now_ms, c.now());
    rec.status = cost::LedgerStatus::kSettled;
    rec.actual_micro = c.cost_micro;
    if (out.overshoot_micro > 0) warn_overshoot(c, out.overshoot_micro);
    if (sh.webhooks) {
      for (const auto& a : out.alerts) sh.webhooks->enqueue(a);
    }
  }
  if (sh.ledger && c.reservation_logged) {
    if (sh.ledger->append_settlement(std::move(rec), {}, cost::Ledger::Wake::kDeferred)) {
      kick_after_round(*sh.ledger, co_await asio::this_coro::executor);
    } else {
      spdlog::error(
          "ledger queue full: settlement of {} not recorded (the reservation stays "
          "counted until reconciled)",
          c.request_id);
    }
  }
  leave_lease_set(c);
}

}  // namespace bw::gateway
