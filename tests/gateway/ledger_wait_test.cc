// Waiting for the ledger's group commit: one post per batch and loop, waiters resumed in order,
// and nothing leaked or touched after the loop is gone.
#include "gateway/ledger_wait.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <cstddef>
#include <memory>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#include "support/ledger_without_rows.h"

namespace bw::gateway {
namespace {

namespace asio = boost::asio;

// Keeps the callbacks until the test completes them (as the writer thread would).
class HeldLedger final : public bw::testing::LedgerWithoutRows {
 public:
  bool append_reservation(cost::LedgerReservation, cost::LedgerCallback done, Wake) override {
    return take(std::move(done));
  }
  bool append_settlement(cost::LedgerSettlement, cost::LedgerCallback done, Wake) override {
    return take(std::move(done));
  }
  bool append_covered(cost::LedgerCovered&&, cost::LedgerCallback done, Wake) override {
    return take(std::move(done));
  }
  void kick() override { ++kicks; }
  void flush() override {}

  bool take(cost::LedgerCallback done) {
    if (full) return false;
    callbacks.push_back(std::move(done));
    return true;
  }
  // Runs every held callback on another thread, like the writer does after a group commit.
  void commit_on_writer_thread() {
    auto batch = std::move(callbacks);
    callbacks.clear();
    std::thread([&batch] {
      for (auto& cb : batch) cb(Ok{});
    }).join();
  }

  bool full = false;
  int kicks = 0;
  std::vector<cost::LedgerCallback> callbacks;
};

struct Waiter {
  bool resumed = false;
  int status = 0;
  bool frame_gone = false;
};

// Sets `gone` when the coroutine frame that holds it is destroyed.
struct FrameProbe {
  bool* gone;
  ~FrameProbe() { *gone = true; }
};

asio::awaitable<void> wait_for_commit(HeldLedger& ledger, int id, std::vector<int>& order,
                                      Waiter& w) {
  FrameProbe probe{&w.frame_gone};
  auto r = co_await ledger_wait(ledger, [&](cost::LedgerCallback done) {
    return ledger.append_reservation({}, std::move(done), cost::Ledger::Wake::kDeferred);
  });
  w.resumed = true;
  w.status = r ? 200 : r.error().status;
  order.push_back(id);
}

TEST(LedgerWait, OneBatchResumesEveryWaiterInOrderAfterOneKick) {
  asio::io_context io;
  HeldLedger ledger;
  std::vector<int> order;
  Waiter w[3];
  for (int i = 0; i < 3; ++i) {
    asio::co_spawn(io, wait_for_commit(ledger, i, order, w[i]), asio::detached);
  }
  io.poll();
  ASSERT_EQ(ledger.callbacks.size(), 3u);
  EXPECT_EQ(ledger.kicks, 1);  // one wake-up for the round's three records
  EXPECT_FALSE(w[0].resumed);
  ledger.commit_on_writer_thread();
  EXPECT_EQ(io.poll(), 1u);  // one drain resumes all three
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  for (auto& x : w) {
    EXPECT_EQ(x.status, 200);
    EXPECT_TRUE(x.frame_gone);
  }
}

TEST(LedgerWait, AFullQueueAnswers503) {
  asio::io_context io;
  HeldLedger ledger;
  ledger.full = true;
  std::vector<int> order;
  Waiter w;
  asio::co_spawn(io, wait_for_commit(ledger, 0, order, w), asio::detached);
  io.run();
  EXPECT_TRUE(w.resumed);
  EXPECT_EQ(w.status, 503);
  EXPECT_EQ(ledger.kicks, 0);
}

TEST(LedgerWait, ACommitForAStoppedLoopUnwindsItsRequestWhenTheLoopGoes) {
  auto io = std::make_unique<asio::io_context>();
  HeldLedger ledger;
  std::vector<int> order;
  Waiter w;
  asio::co_spawn(*io, wait_for_commit(ledger, 0, order, w), asio::detached);
  io->poll();
  ASSERT_EQ(ledger.callbacks.size(), 1u);
  io->stop();
  ledger.commit_on_writer_thread();  // its drain is posted to a loop that never runs again
  const auto stranded = LedgerInbox::stranded();
  io.reset();
  EXPECT_FALSE(w.resumed);
  EXPECT_TRUE(w.frame_gone);  // destroyed with the loop, not leaked
  EXPECT_EQ(LedgerInbox::stranded(), stranded);
}

TEST(LedgerWait, ACommitAfterTheLoopIsGoneTouchesNeitherLoopNorInbox) {
  auto io = std::make_unique<asio::io_context>();
  HeldLedger ledger;
  std::vector<int> order;
  Waiter w;
  asio::co_spawn(*io, wait_for_commit(ledger, 0, order, w), asio::detached);
  io->poll();
  ASSERT_EQ(ledger.callbacks.size(), 1u);
  const auto stranded = LedgerInbox::stranded();
  io.reset();
  // Scribble over the freed loop's memory: a callback that still used it would crash here.
  {
    std::vector<std::unique_ptr<char[]>> fill;
    for (int i = 0; i < 64; ++i) fill.push_back(std::make_unique<char[]>(sizeof(asio::io_context)));
    for (auto& f : fill) std::fill_n(f.get(), sizeof(asio::io_context), '\xff');
  }
  ledger.commit_on_writer_thread();
  EXPECT_FALSE(w.resumed);
  EXPECT_EQ(LedgerInbox::stranded(), stranded + 1);
}

TEST(LedgerWait, ALoopWhereADestroyedOneWasGetsItsOwnInbox) {
  // Two loops one after the other at the same address, used from the same thread: the second
  // must not find the first one's inbox.
  alignas(asio::io_context) std::byte storage[sizeof(asio::io_context)];
  HeldLedger ledger;
  std::vector<int> order;
  Waiter first;
  {
    auto* io = new (storage) asio::io_context;
    asio::co_spawn(*io, wait_for_commit(ledger, 0, order, first), asio::detached);
    io->poll();
    ledger.commit_on_writer_thread();
    io->poll();
    EXPECT_TRUE(asio::has_service<LedgerInbox>(*io));
    io->~io_context();
  }
  ASSERT_EQ(order, std::vector<int>{0});
  Waiter second;
  {
    auto* io = new (storage) asio::io_context;
    EXPECT_FALSE(asio::has_service<LedgerInbox>(*io));
    asio::co_spawn(*io, wait_for_commit(ledger, 1, order, second), asio::detached);
    io->poll();
    EXPECT_TRUE(asio::has_service<LedgerInbox>(*io));
    ledger.commit_on_writer_thread();
    io->poll();
    io->~io_context();
  }
  EXPECT_EQ(order, (std::vector<int>{0, 1}));
  EXPECT_EQ(second.status, 200);
}

}  // namespace
}  // namespace bw::gateway
