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

}  // namespace bw::loop
