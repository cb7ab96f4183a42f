#include "http/deadline.h"

#include <boost/asio/detail/call_stack.hpp>
#include <boost/asio/detail/thread_context.hpp>
#include <boost/asio/detail/thread_info_base.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/query.hpp>
#include <chrono>
#include <cstdint>
#include <ctime>

#include "common/loop_turn.h"

namespace bw::http {

namespace asio = boost::asio;

asio::execution_context::id DeadlineService::id;

Nanos coarse_now() {
  // Read once per turn of the thread's event loop (common/loop_turn.h): a request arms ~6
  // deadlines and the pool stamps its connection, each read ~50 instructions through the vDSO.
  // Outside an io_context's run the clock is read every time.
  thread_local Nanos kept = 0;
  thread_local std::uint64_t kept_turn = 0;
  const std::uint64_t turn = loop::turn;
  // The thread is inside an io_context's run: thread_context::top_of_thread_call_stack(), read
  // inline (that function is compiled out of line with Asio: a call per read).
  using ThreadCallStack =
      asio::detail::call_stack<asio::detail::thread_context, asio::detail::thread_info_base>;
  if (kept_turn == turn && turn != 0 && ThreadCallStack::top() != nullptr) return kept;
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  kept = static_cast<Nanos>(ts.tv_sec) * kNanosPerSecond + ts.tv_nsec;
  kept_turn = turn;
  return kept;
}

void Deadline::bind(const asio::any_io_executor& ex, Cancel cancel, void* owner) {
  disarm();
  service_ = &DeadlineService::of(ex);
  cancel_ = cancel;
  owner_ = owner;
}

void Deadline::arm(Nanos duration) {
  expired_ = false;
  if (service_) service_->arm(*this, duration);
}

void Deadline::disarm() {
  expired_ = false;
  if (service_ && node_ != nullptr) service_->unlink(*this);
}

DeadlineService::DeadlineService(asio::execution_context& ctx)
    : asio::execution_context::service(ctx) {}

DeadlineService::~DeadlineService() = default;

DeadlineService& DeadlineService::of(const asio::any_io_executor& ex) {
  auto& ctx = asio::query(ex, asio::execution::context);
  auto& svc = asio::use_service<DeadlineService>(ctx);
  if (!svc.timer_ && !svc.shut_down_) svc.timer_ = std::make_unique<asio::steady_timer>(ex);
  return svc;
}

void DeadlineService::shutdown() {
  shut_down_ = true;
  // Deadlines still linked belong to objects destroyed with the io_context's handlers; forget
  // them so their destructors do not touch freed queues.
  for (auto& q : queues_) {
    for (Node* n = q.head; n != nullptr; n = n->next) {
      n->deadline->node_ = nullptr;
      n->deadline->service_ = nullptr;
    }
    q.head = q.tail = nullptr;
  }
  free_ = nullptr;
  blocks_.clear();
  armed_ = 0;
  timer_.reset();
}

void DeadlineService::arm(Deadline& d, Nanos duration) {
  if (d.node_ != nullptr) unlink(d);
  if (shut_down_) return;
  const Nanos now = coarse_now();
  // Clamp so that now + duration cannot overflow (callers may pass "never"-like values).
  constexpr Nanos kMax = Nanos{1} << 61;
  if (duration > kMax) duration = kMax;
  if (duration < 0) duration = 0;
  const std::size_t qi = queue_for(duration);
  Queue& q = queues_[qi];
  Node* const n = free_ ? free_ : grow();
  free_ = n->next;
  const Nanos at = now + duration;
  *n = Node{at, &d, q.tail, nullptr};
  if (q.tail) {
    q.tail->next = n;
  } else {
    q.head = n;
  }
  q.tail = n;
  d.node_ = n;
  d.queue_ = static_cast<std::uint32_t>(qi);
  ++armed_;
  if (timer_at_ == 0 || at < timer_at_) schedule(at);
}

[[gnu::noinline]] DeadlineService::Node* DeadlineService::grow() {
  // Blocks of 64 nodes (2 KiB), linked into the free list in order.
  constexpr std::size_t kBlock = 64;
  blocks_.push_back(std::make_unique<Node[]>(kBlock));
  Node* const b = blocks_.back().get();
  for (std::size_t i = 0; i + 1 < kBlock; ++i) b[i].next = &b[i + 1];
  return b;
}

std::size_t DeadlineService::queue_for(Nanos duration) {
  // Durations are mostly whole seconds (multiples of 2^9 * 5^9 ns): the high bits are folded
  // in before the multiplication, which alone put 10, 30 and 70 s in one slot.
  std::uint64_t h = static_cast<std::uint64_t>(duration);
  h = (h ^ (h >> 30)) * 0x9E3779B97F4A7C15ULL;
  Memo& m = memo_[static_cast<std::size_t>(h >> 59) % kMemoSlots];
  if (m.duration == duration && queues_[m.queue].duration == duration) [[likely]] {
    return m.queue;
  }
  return find_queue(duration, m);
}

[[gnu::noinline]] std::size_t DeadlineService::find_queue(Nanos duration, Memo& m) {
  std::size_t qi = 0;
  while (qi < queues_.size() && queues_[qi].duration != duration) ++qi;
  if (qi == queues_.size()) {
    // Reuse an empty queue before adding one (durations change with config reloads).
    qi = 0;
    while (qi < queues_.size() && queues_[qi].head != nullptr) ++qi;
    if (qi == queues_.size()) queues_.emplace_back();
    queues_[qi].duration = duration;
  }
  m.duration = duration;
  m.queue = qi;
  return qi;
}

void DeadlineService::unlink(Deadline& d) {
  Node* const n = d.node_;
  Queue& q = queues_[d.queue_];
  if (n->prev) {
    n->prev->next = n->next;
  } else {
    q.head = n->next;
  }
  if (n->next) {
    n->next->prev = n->prev;
  } else {
    q.tail = n->prev;
  }
  n->next = free_;
  free_ = n;
  d.node_ = nullptr;
  --armed_;
}

void DeadlineService::schedule(Nanos at) {
  if (!timer_) return;
  timer_at_ = at;
  const Nanos now = coarse_now();
  timer_->expires_after(std::chrono::nanoseconds(at > now ? at - now : 0));
  timer_->async_wait([this, at](const boost::system::error_code& ec) {
    if (ec || at != timer_at_) return;  // replaced by an earlier wait, or shut down
    on_timer();
  });
}

void DeadlineService::on_timer() {
  timer_at_ = 0;
  const Nanos now = coarse_now();
  Nanos next = 0;
  for (std::size_t qi = 0; qi < queues_.size(); ++qi) {
    while (queues_[qi].head != nullptr && queues_[qi].head->at <= now) {
      Deadline& d = *queues_[qi].head->deadline;
      unlink(d);
      d.expired_ = true;
      d.cancel_(d.owner_);
    }
    if (Node* h = queues_[qi].head; h != nullptr && (next == 0 || h->at < next)) next = h->at;
  }
  // A cancel callback may have armed (and scheduled) a later deadline meanwhile.
  if (next != 0 && (timer_at_ == 0 || next < timer_at_)) schedule(next);
}

}  // namespace bw::http
