// The coroutine half of Limiter (see limiter.h): it runs on an event loop, so it lives in
// bw_limits_io; the synchronous limiter stays free of Asio.
#include <algorithm>

#include "limits/limiter.h"

namespace bw::limits {

boost::asio::awaitable<Verdict> Limiter::check_async(const RequestScope& s, std::int64_t token_cost,
                                                     Nanos now) {
  if (has_async_store_.load(std::memory_order_acquire)) {
    if (std::shared_ptr<AsyncLimitStore> async = async_store_.load(std::memory_order_acquire)) {
      co_return co_await check_remote(std::move(async), s, token_cost, now);
    }
  }
  co_return check(s, token_cost, now);
}

boost::asio::awaitable<Verdict> Limiter::check_remote(std::shared_ptr<AsyncLimitStore> async,
                                                      const RequestScope& s,
                                                      std::int64_t token_cost, Nanos now) {
  token_cost = std::max<std::int64_t>(token_cost, 0);
  Verdict v;
  Gathered g;
  g.hold = snapshot();  // a copy: other coroutines on this thread may refresh the cache meanwhile
  gather(g, *g.hold, s, token_cost);
  if (g.checks.empty()) co_return v;
  const BatchResult r = co_await async->check_and_consume_async(g.checks, now);
  make_verdict(v, g.checks, r, token_cost);
  co_return v;
}

boost::asio::awaitable<void> Limiter::settle_async(Reservation& reservation,
                                                   std::int64_t actual_tokens, Nanos now) {
  if (has_async_store_.load(std::memory_order_acquire)) {
    if (std::shared_ptr<AsyncLimitStore> async = async_store_.load(std::memory_order_acquire)) {
      co_await settle_remote(std::move(async), reservation, actual_tokens, now);
      co_return;
    }
  }
  settle(reservation, actual_tokens, now);
}

boost::asio::awaitable<void> Limiter::settle_remote(std::shared_ptr<AsyncLimitStore> async,
                                                    Reservation& reservation,
                                                    std::int64_t actual_tokens, Nanos now) {
  if (reservation.settled) co_return;
  reservation.settled = true;
  actual_tokens = std::max<std::int64_t>(actual_tokens, 0);
  for (const ChargedLimit& c : reservation.token_limits) {
    co_await async->adjust_async(reservation.key(c), reservation.adjust_spec(c),
                                 actual_tokens - c.charged, now);
  }
}

}  // namespace bw::limits
