#pragma once
// SingleFlight: concurrent identical misses wait for the first one instead of all going upstream.
// The first request of a key becomes the leader; the next ones (at most `max_waiters` per key)
// wait up to `max_wait` for its answer. When the leader finishes it hands its entry over; if it
// failed, was not cacheable, or its followers waited too long, they go upstream themselves (a
// follower never fails because its leader did). Streamed requests do not join (they are keyed
// apart and go upstream at once): a stream's answer exists only once the stream has ended.
// Thread safety: join() may be called from coroutines on any io_context; a follower's wake-up is
// posted to its own executor.
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include <boost/asio/awaitable.hpp>

#include "cache/cache.h"

namespace bw::cache {

class SingleFlight {
 public:
  struct Flight;

  // Held by the leader until its answer is known; done() (or the destructor, with no entry)
  // releases the followers.
  class Leader {
   public:
    Leader() = default;
    Leader(SingleFlight* owner, std::string key, std::shared_ptr<Flight> f)
        : owner_(owner), key_(std::move(key)), flight_(std::move(f)) {}
    Leader(Leader&& o) noexcept { *this = std::move(o); }
    Leader& operator=(Leader&& o) noexcept;
    ~Leader() { done(nullptr); }
    bool valid() const { return flight_ != nullptr; }
    void done(std::shared_ptr<const Entry> entry);

   private:
    SingleFlight* owner_ = nullptr;
    std::string key_;
    std::shared_ptr<Flight> flight_;
  };

  struct Joined {
    Leader leader;                       // valid: this request leads (go upstream, then done())
    std::shared_ptr<const Entry> entry;  // a follower served by its leader
    bool waited = false;                 // a follower that waited (served or not)
  };

  explicit SingleFlight(std::size_t max_waiters = 64) : max_waiters_(max_waiters) {}

  boost::asio::awaitable<Joined> join(const std::string& key, Nanos max_wait);

  std::size_t in_flight() const;

 private:
  void finish(const std::string& key, const std::shared_ptr<Flight>& f,
              std::shared_ptr<const Entry> entry);

  std::size_t max_waiters_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Flight>> flights_;
};

}  // namespace bw::cache
