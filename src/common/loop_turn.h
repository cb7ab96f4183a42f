#pragma once
// The event loop's turns, per thread: the project's epoll reactor (src/common/epoll_reactor.ipp)
// adds one each time its epoll_wait returns, before the completions it found run. A value read
// once per turn (a coarse clock) may be kept while the count stays the same and the thread is
// inside an io_context's run: the handlers of one turn run back to back, a few milliseconds at
// most under load.
// Thread safety: per thread.
#include <cstdint>

namespace bw::loop {

inline thread_local std::uint64_t turn = 0;

// True while the thread runs the handlers of a turn of a one-thread io_context's run() (the
// project's scheduler, src/common/scheduler.ipp, sets it when the reactor task returns and clears
// it when run() starts and ends): every handler since the reactor's last return followed it on
// this thread, so a reading taken in this turn is no older than the turn. False outside run(),
// before its first turn, and in loops of several threads, run_one() or poll(), which keep
// nothing.
inline thread_local bool in_turn = false;

// One reading kept for the rest of this thread's turn, e.g. of a clock: taken at its first use
// in a turn (so never earlier than the reactor's return that began the turn, nor than any
// completion that turn runs), reused by later uses in the same turn, taken anew outside one.
// Declare it thread_local.
class TurnReading {
 public:
  // The reading kept in this turn, else read() (kept).
  template <class Read>
  std::int64_t get(Read&& read) {
    if (in_turn && turn_ == turn) return value_;
    return keep(read());
  }
  // Keeps `value`, read just now by other means: later uses in this turn get it (so that a
  // fresh reading followed by a kept one never goes back).
  std::int64_t keep(std::int64_t value) {
    value_ = value;
    turn_ = turn;
    return value;
  }

 private:
  std::int64_t value_ = 0;
  std::uint64_t turn_ = 0;
};

}  // namespace bw::loop
