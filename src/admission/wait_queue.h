#pragma once
// WaitQueue<T>: the bounded priority queue of requests waiting for a concurrency slot.
//
// Order: strictly by effective priority, FIFO within a priority. A waiter's effective priority
// improves by one level per `aging` of waiting, down to P1 at best: a P2 request that has waited
// `aging` competes as P1 (ties go to the one that arrived first), so batch work is not starved by a
// stream of P1. P0 stays reserved for requests that arrived as P0: otherwise, once the backlog's
// wait exceeds `aging`, every older P1 would compete as P0 and go first, and P0 would wait as long
// as P1 does, however little of the capacity P0 itself needs.
// Deadline: each waiter leaves at min(arrival + max_wait[its priority], arrival + its own
// max_wait); expire() removes and reports them. Bound: `max_size` waiters. When full, an arrival
// evicts the NEWEST waiter of the LOWEST priority that is strictly lower than its own (that
// waiter is reported as shed); if there is none, the arrival is refused.
//
// Costs: push O(log n) (deadline index), pop O(1), remove (cancel) O(1) amortized, expire O(log n)
// per expired waiter. Memory is bounded by max_size slots (+ a deadline index of at most 2x).
//
// Pure and single threaded: no clock reads (every call takes `now`), no locks. The
// AdmissionController guards each queue with its group's mutex.
#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "admission/priority.h"
#include "common/clock.h"

namespace bw::admission {

// Aging lifts a waiter to this priority at most: P0 is for requests that arrived as P0.
constexpr int kBestAgedPriority = 1;

struct QueueConfig {
  std::size_t max_size = 10'000;  // waiters per queue
  // Longest wait per priority before the waiter is timed out.
  PerPriority<Nanos> max_wait{seconds(30), seconds(20), seconds(10)};
  // Waiting this long improves the effective priority by one level, down to P1 at best (P0 is
  // never reached by aging); 0 disables aging.
  Nanos aging = seconds(5);
};

// Identifies a waiter for O(1) removal; stays valid (and harmless) after the waiter left.
struct WaitHandle {
  std::uint32_t slot = UINT32_MAX;
  std::uint32_t generation = 0;
  bool valid() const { return slot != UINT32_MAX; }
};

template <class T>
struct Departed {
  T value;
  int priority = 0;  // priority it was queued with
  Nanos enqueued_at = 0;
  Nanos waited = 0;  // time in queue up to `now` of the call that removed it
};

enum class PushOutcome {
  kQueued,         // queued, nobody displaced
  kQueuedEvicted,  // queued; `evicted` holds the displaced lower-priority waiter
  kRefusedFull,    // not queued: full and nobody of lower priority to displace
};

template <class T>
struct PushResult {
  PushOutcome outcome = PushOutcome::kRefusedFull;
  WaitHandle handle;
  std::optional<Departed<T>> evicted;
};

template <class T>
class WaitQueue {
 public:
  explicit WaitQueue(QueueConfig config = {}) : config_(config) {
    if (config_.max_size == 0) config_.max_size = 1;
  }
  WaitQueue(const WaitQueue&) = delete;
  WaitQueue& operator=(const WaitQueue&) = delete;

  const QueueConfig& config() const { return config_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::size_t depth(int priority) const { return lists_[priority].count; }

  // Queues `value`. `max_wait` (<= 0: none) can only shorten the priority's configured maximum.
  // On kRefusedFull the value is dropped; callers that need it back should check would_accept().
  PushResult<T> push(int priority, Nanos now, Nanos max_wait, T value) {
    priority = clamp_priority(priority);
    PushResult<T> r;
    if (size_ >= config_.max_size) {
      const int victim = lowest_nonempty_below(priority);
      if (victim < 0) {
        r.outcome = PushOutcome::kRefusedFull;
        return r;
      }
      r.evicted = take(lists_[victim].tail, now);
      r.outcome = PushOutcome::kQueuedEvicted;
    } else {
      r.outcome = PushOutcome::kQueued;
    }
    Nanos wait = config_.max_wait[priority];
    if (max_wait > 0 && max_wait < wait) wait = max_wait;
    const std::uint32_t s = allocate();
    Slot& e = slots_[s];
    e.value = std::move(value);
    e.priority = priority;
    e.enqueued_at = now;
    e.deadline = now + wait;
    link_tail(s);
    deadlines_.push_back(DeadlineEntry{e.deadline, s, e.generation});
    std::push_heap(deadlines_.begin(), deadlines_.end(), later_first);
    ++size_;
    r.handle = WaitHandle{s, e.generation};
    return r;
  }

  // True when push(priority, ...) would be queued (possibly by evicting someone).
  bool would_accept(int priority) const {
    return size_ < config_.max_size || lowest_nonempty_below(clamp_priority(priority)) >= 0;
  }

  // Removes the waiter that should run next. Does not look at deadlines: call expire() first.
  std::optional<Departed<T>> pop(Nanos now) {
    const int best = best_list(now);
    if (best < 0) return std::nullopt;
    return take(lists_[best].head, now);
  }

  // The waiter pop() would remove, left in place (nullptr when empty).
  const T* peek(Nanos now) const {
    const int best = best_list(now);
    return best < 0 ? nullptr : &slots_[lists_[best].head].value;
  }

  // Removes a waiter (client went away). Returns it if it was still queued.
  std::optional<Departed<T>> remove(WaitHandle h, Nanos now) {
    if (!contains(h)) return std::nullopt;
    return take(h.slot, now);
  }

  bool contains(WaitHandle h) const {
    return h.slot < slots_.size() && slots_[h.slot].generation == h.generation &&
           slots_[h.slot].queued;
  }

  // Removes every waiter whose deadline is <= now, calling on_expired(Departed<T>&&) for each,
  // earliest deadline first. Returns how many left.
  template <class F>
  std::size_t expire(Nanos now, F&& on_expired) {
    std::size_t n = 0;
    while (!deadlines_.empty()) {
      const DeadlineEntry top = deadlines_.front();
      if (is_live(top) && top.deadline > now) break;
      std::pop_heap(deadlines_.begin(), deadlines_.end(), later_first);
      deadlines_.pop_back();
      if (!is_live(top)) continue;
      on_expired(take(top.slot, now));
      ++n;
    }
    return n;
  }

  // Earliest deadline among queued waiters, if any.
  std::optional<Nanos> next_deadline() {
    drop_stale_deadlines();
    if (deadlines_.empty()) return std::nullopt;
    return deadlines_.front().deadline;
  }

  // Effective priority of a queued waiter at `now` (for tests and introspection).
  std::optional<int> effective_priority(WaitHandle h, Nanos now) const {
    if (!contains(h)) return std::nullopt;
    return effective_priority(slots_[h.slot], now);
  }

 private:
  static constexpr std::uint32_t kNone = UINT32_MAX;

  struct Slot {
    T value{};
    Nanos enqueued_at = 0;
    Nanos deadline = 0;
    std::uint32_t prev = kNone;
    std::uint32_t next = kNone;  // also links the free list
    std::uint32_t generation = 0;
    int priority = 0;
    bool queued = false;
  };
  struct List {
    std::uint32_t head = kNone;
    std::uint32_t tail = kNone;
    std::size_t count = 0;
  };
  // Lazily deleted: removal bumps the slot's generation, which turns its entry stale.
  struct DeadlineEntry {
    Nanos deadline;
    std::uint32_t slot;
    std::uint32_t generation;
  };
  static bool later_first(const DeadlineEntry& a, const DeadlineEntry& b) {
    return a.deadline > b.deadline;
  }

  int effective_priority(const Slot& e, Nanos now) const {
    if (config_.aging <= 0 || e.priority <= kBestAgedPriority) return e.priority;
    const Nanos levels = (now - e.enqueued_at) / config_.aging;
    return levels >= e.priority - kBestAgedPriority ? kBestAgedPriority
                                                    : e.priority - static_cast<int>(levels);
  }

  int best_list(Nanos now) const {
    int best = -1;
    int best_eff = kNumPriorities;
    Nanos best_enq = 0;
    for (int p = 0; p < kNumPriorities; ++p) {
      const std::uint32_t h = lists_[p].head;
      if (h == kNone) continue;
      // The head is the oldest of its list, hence also the most aged: comparing heads suffices.
      const int eff = effective_priority(slots_[h], now);
      if (eff < best_eff || (eff == best_eff && slots_[h].enqueued_at < best_enq)) {
        best = p;
        best_eff = eff;
        best_enq = slots_[h].enqueued_at;
      }
    }
    return best;
  }

  int lowest_nonempty_below(int priority) const {
    for (int p = kNumPriorities - 1; p > priority; --p) {
      if (lists_[p].count > 0) return p;
    }
    return -1;
  }

  bool is_live(const DeadlineEntry& d) const {
    const Slot& e = slots_[d.slot];
    return e.queued && e.generation == d.generation;
  }

  void drop_stale_deadlines() {
    while (!deadlines_.empty() && !is_live(deadlines_.front())) {
      std::pop_heap(deadlines_.begin(), deadlines_.end(), later_first);
      deadlines_.pop_back();
    }
  }

  std::uint32_t allocate() {
    if (free_ != kNone) {
      const std::uint32_t s = free_;
      free_ = slots_[s].next;
      return s;
    }
    slots_.emplace_back();
    return static_cast<std::uint32_t>(slots_.size() - 1);
  }

  void link_tail(std::uint32_t s) {
    Slot& e = slots_[s];
    List& l = lists_[e.priority];
    e.queued = true;
    e.prev = l.tail;
    e.next = kNone;
    if (l.tail != kNone) {
      slots_[l.tail].next = s;
    } else {
      l.head = s;
    }
    l.tail = s;
    ++l.count;
  }

  Departed<T> take(std::uint32_t s, Nanos now) {
    Slot& e = slots_[s];
    assert(e.queued);
    List& l = lists_[e.priority];
    if (e.prev != kNone) {
      slots_[e.prev].next = e.next;
    } else {
      l.head = e.next;
    }
    if (e.next != kNone) {
      slots_[e.next].prev = e.prev;
    } else {
      l.tail = e.prev;
    }
    --l.count;
    --size_;
    Departed<T> d{std::move(e.value), e.priority, e.enqueued_at, now - e.enqueued_at};
    e.value = T{};
    e.queued = false;
    ++e.generation;
    e.prev = kNone;
    e.next = free_;
    free_ = s;
    compact_deadlines();
    return d;
  }

  // Keeps the lazily deleted index within 2x the live size so memory stays bounded.
  void compact_deadlines() {
    if (deadlines_.size() <= 2 * size_ + 64) return;
    std::erase_if(deadlines_, [this](const DeadlineEntry& d) { return !is_live(d); });
    std::make_heap(deadlines_.begin(), deadlines_.end(), later_first);
  }

  QueueConfig config_;
  std::vector<Slot> slots_;
  std::vector<DeadlineEntry> deadlines_;
  PerPriority<List> lists_{};
  std::uint32_t free_ = kNone;
  std::size_t size_ = 0;
};

}  // namespace bw::admission
