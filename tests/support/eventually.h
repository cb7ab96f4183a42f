#pragma once
// eventually(): polls a condition that another thread or process makes true, for tests that wait
// on real threads, sockets or processes (unit tests of pure code use a FakeClock instead).
#include <chrono>
#include <thread>

namespace bw::testing {

// Calls `pred` every `poll` until it returns true (then true) or `timeout` has passed (then false).
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(5),
                std::chrono::milliseconds poll = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(poll);
  }
}

}  // namespace bw::testing
