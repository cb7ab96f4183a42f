#pragma once
// Deadlines for socket operations without a timer per operation. Every io_context gets one
// DeadlineService holding the armed deadlines in FIFO queues, one per duration: deadlines of
// the same duration are armed in time order, so each queue is sorted and only its head can be
// due. One steady_timer per io_context wakes for the earliest head; arming and disarming are a
// few pointer moves. The queues link nodes that the service keeps together, not the deadlines:
// disarming unlinks a node from its neighbours, and with hundreds of connections in flight the
// neighbouring deadlines are other connections' long cold objects, while the nodes are few and
// touched by every arm and disarm. A deadline that passes calls its owner's cancel function (the
// owner cancels its socket, so the pending operation completes with operation_aborted) and reads as
// expired() until it is armed or disarmed again.
// Thread safety: a DeadlineService and its Deadlines are used only on the one thread that runs
// the io_context, as every Bellwether worker does (one io_context per thread).
#include <array>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/clock.h"

namespace bw::http {

class DeadlineService;

// CLOCK_MONOTONIC_COARSE: a few milliseconds of resolution for a seventh of the cost of the
// precise clock. Deadlines and pool ages (seconds long) use it; it is read several times per
// request. Inside an io_context's run it is read once per turn of the thread's event loop
// (common/loop_turn.h): a deadline armed late in a turn counts from the turn's first read, at
// most the turn's length (a few milliseconds under load) early.
Nanos coarse_now();

class Deadline {
 public:
  using Cancel = void (*)(void* owner);
  Deadline() = default;
  ~Deadline() { disarm(); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  // Attaches to the service of `ex`'s io_context; `cancel(owner)` runs when the deadline passes.
  void bind(const boost::asio::any_io_executor& ex, Cancel cancel, void* owner);
  // Expires `duration` from now (a duration <= 0 or kNever-like huge value still arms).
  void arm(Nanos duration);
  void disarm();
  bool expired() const { return expired_; }
  bool armed() const { return node_ != nullptr; }

 private:
  friend class DeadlineService;

  // CLOCK_MONOTONIC_COARSE: a few milliseconds of resolution for a seventh of the cost of the
  // precise clock. Deadlines and pool ages (seconds long) use it; it is read several times per
  // request.
  Nanos coarse_now();
  struct Node;
  DeadlineService* service_ = nullptr;
  Cancel cancel_ = nullptr;
  void* owner_ = nullptr;
  Node* node_ = nullptr;  // its place in its queue while armed
  std::uint32_t queue_ = 0;
  bool expired_ = false;
};

// An armed deadline's place in its queue, 32 bytes: two to a cache line.
struct Deadline::Node {
  Nanos at = 0;
  Deadline* deadline = nullptr;
  Node* prev = nullptr;
  Node* next = nullptr;
};

class DeadlineService final : public boost::asio::execution_context::service {
 public:
  using key_type = DeadlineService;
  static boost::asio::execution_context::id id;

  explicit DeadlineService(boost::asio::execution_context& ctx);
  ~DeadlineService() override;

  // The service of the io_context behind `ex` (created on first use).
  static DeadlineService& of(const boost::asio::any_io_executor& ex);
  std::size_t armed() const { return armed_; }

 private:
  friend class Deadline;
  using Node = Deadline::Node;
  struct Queue {
    Nanos duration = 0;
    Node* head = nullptr;
    Node* tail = nullptr;
  };

  // The queue of `duration`: found through memo_, else by a scan (and remembered).
  struct Memo {
    Nanos duration = -1;  // no duration: armed ones are clamped to >= 0
    std::size_t queue = 0;
  };
  static constexpr std::size_t kMemoSlots = 32;

  void shutdown() override;
  std::size_t queue_for(Nanos duration);
  std::size_t find_queue(Nanos duration, Memo& m);
  void arm(Deadline& d, Nanos duration);
  void unlink(Deadline& d);
  Node* grow();  // a free node when the free list is empty
  void schedule(Nanos at);
  void on_timer();

  std::vector<Queue> queues_;
  // The nodes, in blocks that do not move; the free ones are listed through `next` and reused
  // last freed first (the warmest). As many as were armed at once; never given back.
  std::vector<std::unique_ptr<Node[]>> blocks_;
  Node* free_ = nullptr;
  // Durations to their queues, one slot per duration's hash: a proxied request arms ~6
  // deadlines of ~5 durations, and scanning the queues for each took ~80 instructions. An entry
  // names a queue that exists (queues_ never shrinks) and is trusted only while that queue still
  // has its duration (an emptied queue may be reused for another).
  std::array<Memo, kMemoSlots> memo_{};
  std::unique_ptr<boost::asio::steady_timer> timer_;
  Nanos timer_at_ = 0;  // when the pending wait fires; 0 = no wait pending
  std::size_t armed_ = 0;
  bool shut_down_ = false;
};

}  // namespace bw::http
