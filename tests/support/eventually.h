#pragma once
// eventually(): polls a condition that another thread or process makes true, for tests that wait
// on real threads, sockets or processes (unit tests of pure code use a FakeClock instead).
#include <chrono>
#include <thread>

namespace bw::testing {

// Calls `pred` every `poll` until it returns true (then true) or `timeout` has passed (then false).
// The default timeout is generous: it costs nothing when the condition comes true (the call
// returns then), and a loaded 2-core CI machine may stall a process for seconds.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(20),
                std::chrono::milliseconds poll = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(poll);
  }
}

}  // namespace bw::testing
