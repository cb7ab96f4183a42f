#include "cache/single_flight.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <vector>

namespace bw::cache {

namespace asio = boost::asio;

struct SingleFlight::Flight {
  bool done = false;
  std::shared_ptr<const Entry> entry;
  // Each follower's timer lives on the follower's executor; the leader posts the wake-up there.
  std::vector<std::pair<asio::any_io_executor, std::shared_ptr<asio::steady_timer>>> waiters;
};

SingleFlight::Leader& SingleFlight::Leader::operator=(Leader&& o) noexcept {
  if (this != &o) {
    done(nullptr);
    owner_ = o.owner_;
    key_ = std::move(o.key_);
    flight_ = std::move(o.flight_);
    o.owner_ = nullptr;
  }
  return *this;
}

void SingleFlight::Leader::done(std::shared_ptr<const Entry> entry) {
  if (!flight_) return;
  owner_->finish(key_, flight_, std::move(entry));
  flight_.reset();
  owner_ = nullptr;
}

void SingleFlight::finish(const std::string& key, const std::shared_ptr<Flight>& f,
                          std::shared_ptr<const Entry> entry) {
  decltype(f->waiters) waiters;
  {
    std::lock_guard lock(mu_);
    f->done = true;
    f->entry = std::move(entry);
    waiters.swap(f->waiters);
    if (auto it = flights_.find(key); it != flights_.end() && it->second == f) flights_.erase(it);
  }
  for (auto& [ex, timer] : waiters) {
    // Moving the expiry to the past also completes a wait that has not started yet.
    asio::post(ex, [t = timer] { t->expires_at(asio::steady_timer::time_point::min()); });
  }
}

asio::awaitable<SingleFlight::Joined> SingleFlight::join(const std::string& key, Nanos max_wait) {
  Joined out;
  std::shared_ptr<Flight> f;
  std::shared_ptr<asio::steady_timer> timer;
  {
    std::lock_guard lock(mu_);
    auto it = flights_.find(key);
    if (it == flights_.end()) {
      f = std::make_shared<Flight>();
      flights_.emplace(key, f);
      out.leader = Leader(this, key, f);
      co_return out;
    }
    f = it->second;
    if (f->waiters.size() >= max_waiters_ || max_wait <= 0) co_return out;  // go upstream
  }
  auto ex = co_await asio::this_coro::executor;
  timer = std::make_shared<asio::steady_timer>(ex, std::chrono::nanoseconds(max_wait));
  {
    std::lock_guard lock(mu_);
    if (f->done) {
      out.entry = f->entry;
      out.waited = true;
      co_return out;
    }
    f->waiters.emplace_back(ex, timer);
  }
  co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
  std::lock_guard lock(mu_);
  out.waited = true;
  if (f->done) {
    out.entry = f->entry;
  } else {
    // Timed out: leave the list so the leader does not post to a timer nobody waits on.
    std::erase_if(f->waiters, [&](const auto& w) { return w.second == timer; });
  }
  co_return out;
}

std::size_t SingleFlight::in_flight() const {
  std::lock_guard lock(mu_);
  return flights_.size();
}

}  // namespace bw::cache
