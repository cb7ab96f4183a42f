#include "gateway/ledger_wait.h"

#include <spdlog/spdlog.h>

namespace bw::gateway {

namespace asio = boost::asio;

namespace {

// Bumped whenever an inbox goes. A per-thread cached inbox is used only while no inbox has gone
// since it was cached, so a loop created where a destroyed one was never finds the old inbox.
std::atomic<std::uint64_t> inbox_epoch{0};

// Requests whose commit arrived after their loop's shutdown: kept reachable on purpose (they
// can be neither resumed nor destroyed without their loop). The list itself is never destroyed,
// so that they stay reachable through the process's exit too.
std::mutex stranded_mu;
std::vector<void*>& stranded_handlers() {  // guarded by stranded_mu
  static auto* kept = new std::vector<void*>;
  return *kept;
}
std::atomic<std::uint64_t> stranded_count{0};

}  // namespace

struct LedgerInbox::Mailbox {
  struct Item {
    Resume resume;
    void* handler;
    Result<Ok> result;
  };

  std::atomic<int> refs{1};  // the inbox's, plus one per callback the ledger holds
  std::mutex mu;
  std::vector<Item> items;    // guarded by mu
  bool posted = false;        // guarded by mu: a drain is posted and has not taken items yet
  bool closed = false;        // guarded by mu: the loop shut down; nothing is posted to it again
  asio::any_io_executor ex;   // guarded by mu: set by the first of() on this loop
  std::vector<Item> running;  // the loop's thread only

  void drain() {
    {
      std::lock_guard lock(mu);
      running.swap(items);
      posted = false;
    }
    for (auto& item : running) item.resume(item.handler, &item.result);
    running.clear();
  }
};

LedgerInbox::LedgerInbox(asio::execution_context& ctx) : service(ctx), box_(new Mailbox) {}

LedgerInbox::~LedgerInbox() {
  inbox_epoch.fetch_add(1, std::memory_order_release);
  release(box_);
}

LedgerInbox& LedgerInbox::of(const asio::any_io_executor& ex) {
  struct Cached {
    const asio::execution_context* ctx = nullptr;
    LedgerInbox* inbox = nullptr;
    std::uint64_t epoch = 0;
  };
  thread_local Cached cached;
  asio::execution_context& ctx = asio::query(ex, asio::execution::context);
  // The loop of `ex` runs on this thread, so its inbox cannot go during this call; an inbox that
  // went before (perhaps at the same address) bumped the epoch first.
  const std::uint64_t epoch = inbox_epoch.load(std::memory_order_acquire);
  if (cached.ctx == &ctx && cached.epoch == epoch) return *cached.inbox;
  auto& inbox = asio::use_service<LedgerInbox>(ctx);
  {
    std::lock_guard lock(inbox.box_->mu);
    if (!inbox.box_->ex) inbox.box_->ex = ex;
  }
  cached = Cached{&ctx, &inbox, epoch};
  return inbox;
}

LedgerInbox::Mailbox* LedgerInbox::hold() {
  box_->refs.fetch_add(1, std::memory_order_relaxed);
  return box_;
}

void LedgerInbox::release(Mailbox* box) {
  if (box->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete box;
}

void LedgerInbox::deliver(Mailbox* box, Resume resume, void* handler, const Result<Ok>& r) {
  bool kept = false;
  {
    std::lock_guard lock(box->mu);
    if (box->closed) {
      kept = true;
    } else {
      box->items.push_back(Mailbox::Item{resume, handler, r});
      if (!box->posted) {
        box->posted = true;
        // Posted under the lock: the loop's shutdown takes it too, so the loop is still there.
        asio::post(box->ex, [box] { box->drain(); });
      }
    }
  }
  if (kept) {
    {
      std::lock_guard lock(stranded_mu);
      stranded_handlers().push_back(handler);
    }
    stranded_count.fetch_add(1, std::memory_order_relaxed);
    spdlog::error(
        "ledger: a commit completed after its event loop stopped; its request is dropped");
  }
  release(box);
}

void LedgerInbox::kick_after_round(cost::Ledger& ledger, const asio::any_io_executor& ex) {
  if (kick_posted_.load(std::memory_order_relaxed)) return;
  if (kick_posted_.exchange(true, std::memory_order_relaxed)) return;
  asio::post(ex, [this, &ledger] {
    kick_posted_.store(false, std::memory_order_relaxed);
    ledger.kick();
  });
}

std::uint64_t LedgerInbox::stranded() {
  return stranded_count.load(std::memory_order_relaxed);
}

void LedgerInbox::shutdown() {
  std::vector<Mailbox::Item> items;
  {
    std::lock_guard lock(box_->mu);
    box_->closed = true;
    items.swap(box_->items);
  }
  // The loop is going: the requests still waiting unwind now, the way the loop destroys its
  // other pending handlers.
  for (auto& item : items) item.resume(item.handler, nullptr);
}

}  // namespace bw::gateway
