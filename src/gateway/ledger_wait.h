#pragma once
// How a request waits for the ledger's group commit of its record (cost/ledger.h) without a post
// per record.
//
// The ledger's commit callbacks run on its writer thread, one per record of a group commit.
// LedgerInbox hands the waiting requests back to their event loop: the first record of a batch
// posts one handler to the loop, and that handler resumes every request queued by then. One
// post per batch and loop instead of one per record: the writer takes the loop's scheduler lock
// and allocates an operation once.
//
// Lifetime (the inbox is an io_context service, so it lives exactly as long as its loop):
//  - A commit that completes while the loop is stopped is queued; if the loop never runs again,
//    the loop's shutdown destroys the waiting requests (their coroutines unwind) instead of
//    leaking them.
//  - A commit that completes after the loop's shutdown touches neither the loop nor the freed
//    inbox: the callbacks share the inbox's mailbox, which lives until the last callback ran. Such
//    a request can neither be resumed nor destroyed without its loop, so it is kept (never
//    freed) and counted (stranded()). The gateway flushes the ledger before its loops go, so
//    this only happens when a ledger outlives the loops that wait for it.
// Thread safety: of() and kick_after_round() on the loop's thread; the callbacks on any thread.
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "common/asio_frames.h"
#include "common/result.h"
#include "cost/ledger.h"

namespace bw::gateway {

class LedgerInbox final : public boost::asio::execution_context::service {
 public:
  using key_type = LedgerInbox;
  static inline boost::asio::execution_context::id id;
  // Runs the waiting request `handler` (and frees it) with `r`; r == nullptr: destroys it
  // without running it (its loop is shutting down).
  using Resume = void (*)(void* handler, const Result<Ok>* r);

  explicit LedgerInbox(boost::asio::execution_context& ctx);
  ~LedgerInbox() override;

  // The inbox of the loop that `ex` runs on (created at its first use). Call it on that loop's
  // thread: after the first call on a thread the lookup is a compare of a per-thread pointer.
  static LedgerInbox& of(const boost::asio::any_io_executor& ex);

  // A callback's share of the inbox: hold one per callback handed to the ledger (from before
  // the append until deliver, or release it when the ledger refused the record).
  struct Mailbox;
  Mailbox* hold();
  static void release(Mailbox* box);
  // Any thread: `resume(handler, &r)` runs on the loop, in the order delivered. Releases the
  // hold taken for this callback.
  static void deliver(Mailbox* box, Resume resume, void* handler, const Result<Ok>& r);

  // Wakes the ledger's writer once per event-loop round instead of once per record: the records
  // this loop queues with Wake::kDeferred while it runs its ready handlers reach the writer
  // together, as one group commit.
  void kick_after_round(cost::Ledger& ledger, const boost::asio::any_io_executor& ex);

  // Requests whose commit arrived after their loop's shutdown (kept, never run nor freed).
  static std::uint64_t stranded();

 private:
  void shutdown() override;

  Mailbox* box_;
  std::atomic<bool> kick_posted_{false};
};

// A waiting request's handler lives in a block of the loop thread's frame pool (common/
// asio_frames.h): it is made and freed on that thread, like the coroutine frames it resumes.
struct PooledHandlerDelete {
  template <class Handler>
  void operator()(Handler* h) const {
    h->~Handler();
    frame_pool::deallocate(h, sizeof(Handler));
  }
};
template <class Handler>
using PooledHandler = std::unique_ptr<Handler, PooledHandlerDelete>;

template <class Handler>
Handler* new_pooled_handler(Handler&& handler) {
  void* p = frame_pool::allocate(sizeof(Handler), alignof(Handler));
  return new (p) Handler(std::move(handler));
}

// Resumes the request waiting in `handler` (it owns it) with the record's result.
template <class Handler>
void resume_ledger_handler(void* handler, const Result<Ok>* r) {
  PooledHandler<Handler> own(static_cast<Handler*>(handler));
  if (r) (*own)(*r);
}

// Waits for the ledger's group commit of one record (the callback runs on the writer thread).
// `append(callback)` queues the record with Wake::kDeferred and says whether the queue took it.
// Not a coroutine of its own: the caller's co_await runs `append` at once (the loop's executor
// comes from the handler), without a frame of this function's own to allocate and unwind. Await
// the result in the same full expression: `append` may refer to the caller's locals.
template <class Append>
auto ledger_wait(cost::Ledger& ledger, Append append) {
  namespace asio = boost::asio;
  return asio::async_initiate<decltype(asio::use_awaitable), void(Result<Ok>)>(
      [&ledger](auto handler, Append append) {
        using Handler = decltype(handler);
        const asio::any_io_executor ex = asio::get_associated_executor(handler);
        // Owned by the callback, which runs exactly once when the queue took the record (or
        // here when it did not): bare pointers keep the callback within std::function's own
        // room, with no allocation for it nor for a shared count.
        Handler* h = new_pooled_handler(std::move(handler));
        LedgerInbox& inbox = LedgerInbox::of(ex);
        LedgerInbox::Mailbox* box = inbox.hold();
        const bool ok = append([h, box](const Result<Ok>& r) {
          LedgerInbox::deliver(box, &resume_ledger_handler<Handler>, h, r);
        });
        if (ok) {
          inbox.kick_after_round(ledger, ex);
        } else {
          LedgerInbox::release(box);
          // Owned by the posted handler, so that a loop that never runs it again frees it.
          asio::post(ex, [own = PooledHandler<Handler>(h)]() mutable {
            (*own)(Result<Ok>(make_error(503, "server_error", "ledger_busy", "ledger queue full")));
          });
        }
      },
      asio::use_awaitable, std::move(append));
}

}  // namespace bw::gateway
