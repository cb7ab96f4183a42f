#pragma once
// GroupCommitQueue: the write path of the ledgers. push() only queues (bounded; it never blocks on
// I/O, so it is safe on an event loop) and returns false at once when the queue is full or
// stopping. One writer thread takes everything queued, up to max_batch records, and hands it to
// the backend as one batch: one transaction, i.e. one fsync (SQLite) or one pipelined round trip
// (PostgreSQL), serves the whole batch. Each record's callback then runs exactly once, on the
// writer thread, with that record's own result.
// Thread safety: every public member may be called from any thread; the commit function runs on
// the writer thread only.
#include <pthread.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "common/light_mutex.h"
#include "common/result.h"

namespace bw::store {

struct GroupCommitStats {
  std::uint64_t records_committed = 0;
  std::uint64_t records_failed = 0;
  std::uint64_t commits = 0;  // transactions attempted
  std::uint64_t queue_full = 0;
  std::uint64_t max_batch = 0;
  std::size_t queue_depth = 0;
};

template <class Record>
class GroupCommitQueue {
 public:
  using Callback = std::function<void(const Result<Ok>&)>;
  struct Item {
    template <class R>
    requires std::constructible_from<Record, R&&> Item(R&& r, Callback d)
        : record(std::forward<R>(r)), done(std::move(d)) {}
    // A default T, made where the item is (push_made).
    template <class T>
    Item(std::in_place_type_t<T> t, Callback d) : record(t), done(std::move(d)) {}

    Record record;
    Callback done;
  };
  // The backend's outcome of one batch: one result per record, in order, and whether a
  // transaction was attempted at all (false when, e.g., no connection could be had).
  struct BatchOutcome {
    std::vector<Result<Ok>> results;
    bool transaction = true;
  };
  // A vector, not a deque: a record is a few hundred bytes, and a deque would allocate a node
  // for each one; the queue and the writer's batch swap vectors and keep their room.
  using Batch = std::vector<Item>;
  using CommitFn = std::function<BatchOutcome(const Batch& batch)>;

  GroupCommitQueue(std::size_t capacity, std::size_t max_batch)
      : capacity_(std::max<std::size_t>(capacity, 1)),
        max_batch_(std::max<std::size_t>(max_batch, 1)) {}
  GroupCommitQueue(const GroupCommitQueue&) = delete;
  GroupCommitQueue& operator=(const GroupCommitQueue&) = delete;
  ~GroupCommitQueue() { stop(); }

  // Starts the writer. `commit` may refer to its owner: the owner calls stop() before it goes.
  // `name` (at most 15 characters) names the writer thread, so that its CPU time and its waits
  // can be told apart from the event loop's (top -H, perf sched, /proc/<pid>/task/*/comm).
  void start(CommitFn commit, const char* name = "bw-ledger") {
    commit_ = std::move(commit);
    writer_ = std::thread([this, name] {
      pthread_setname_np(pthread_self(), name);
      writer_loop();
    });
  }

  // Commits everything still queued, then joins the writer. Idempotent.
  void stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    if (writer_.joinable()) writer_.join();
  }

  // wake = false: the writer is not woken (no futex wake, no context switch per record) until
  // kick(), flush(), stop(), or half a batch has piled up. Records queued that way and not
  // kicked yet (nobody waits for them) are taken once half a batch has piled up or kLazyWait
  // after the writer found them: larger batches, which cost less per record.
  // `record` is anything a Record is made from (one of a variant's types, say): the queue's item
  // is built from it in place, the record moved once. A refused record is left as it was.
  template <class R>
  [[nodiscard]] bool push(R&& record, Callback done, bool wake = true) {
    return enqueue([&] { queue_.emplace_back(std::forward<R>(record), std::move(done)); }, wake);
  }

  // Like push(), with the record made in the queue's own room instead of moved there: a default
  // T, on which `fill(T&)` then sets what it holds, under the queue's lock (it must not throw nor
  // push). A refused record is not made and `fill` not called.
  template <class T, class Fill>
  [[nodiscard]] bool push_made(Fill&& fill, Callback done, bool wake = true) {
    return enqueue(
        [&] {
          Item& item = queue_.emplace_back(std::in_place_type<T>, std::move(done));
          fill(*std::get_if<T>(&item.record));
        },
        wake);
  }

  void kick() {
    {
      std::lock_guard lock(mu_);
      urgent_ = true;
    }
    work_cv_.notify_one();
  }

  // Waits until every record queued before the call has been committed or has failed.
  void flush() {
    kick();
    std::unique_lock lock(mu_);
    const std::uint64_t target = enqueued_;
    done_cv_.wait(lock, [&] { return completed_ >= target; });
  }

  GroupCommitStats stats() const {
    GroupCommitStats s;
    s.records_committed = records_committed_.load(std::memory_order_relaxed);
    s.records_failed = records_failed_.load(std::memory_order_relaxed);
    s.commits = commits_.load(std::memory_order_relaxed);
    s.queue_full = queue_full_.load(std::memory_order_relaxed);
    s.max_batch = max_batch_seen_.load(std::memory_order_relaxed);
    std::lock_guard lock(mu_);
    s.queue_depth = queue_.size();
    return s;
  }

 private:
  // push() and push_made(): `append` adds the item to the queue, under the lock, when there is
  // room; the writer is woken as `wake` and the queue's size say.
  template <class Append>
  bool enqueue(Append&& append, bool wake) {
    {
      std::lock_guard lock(mu_);
      if (stopping_ || queue_.size() >= capacity_) {
        queue_full_.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      append();
      ++enqueued_;
      if (!wake && queue_.size() < max_batch_ / 2) return true;
      urgent_ = true;
    }
    work_cv_.notify_one();
    return true;
  }

  void writer_loop() {
    Batch batch;
    for (;;) {
      {
        std::unique_lock lock(mu_);
        // Deferred pushes do not notify: the timeout bounds how long one can wait for a kick
        // that never came (its event loop stopped first).
        while (!stopping_ && queue_.empty()) work_cv_.wait_for(lock, kSafetyWake);
        if (queue_.empty()) return;  // stopping and drained
        // Only records that nobody waits for: a while longer, for a larger batch.
        if (!urgent_ && !stopping_ && queue_.size() < max_batch_ / 2) {
          work_cv_.wait_for(lock, kLazyWait, [&] {
            return urgent_ || stopping_ || queue_.size() >= max_batch_ / 2;
          });
        }
        urgent_ = false;
        if (queue_.size() <= max_batch_) {
          batch.swap(queue_);  // `batch` is empty: the whole queue without moving each record
        } else {
          const auto end = queue_.begin() + static_cast<std::ptrdiff_t>(max_batch_);
          batch.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(end));
          queue_.erase(queue_.begin(), end);
        }
      }
      const std::size_t n = batch.size();
      commit_batch(batch);
      {
        std::lock_guard lock(mu_);
        completed_ += n;
      }
      done_cv_.notify_all();
    }
  }

  void commit_batch(Batch& batch) {
    BatchOutcome out = commit_(batch);
    if (out.transaction) commits_.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t seen = max_batch_seen_.load(std::memory_order_relaxed);
    while (batch.size() > seen &&
           !max_batch_seen_.compare_exchange_weak(seen, batch.size(), std::memory_order_relaxed)) {
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const Result<Ok>& r = out.results[i];
      (r.ok() ? records_committed_ : records_failed_).fetch_add(1, std::memory_order_relaxed);
      if (batch[i].done) batch[i].done(r);
    }
    batch.clear();
    // The room of a burst is not kept: the two vectors take turns as the queue. The kept room is:
    // a queue that started empty would move its records at every doubling on its way back up
    // (~2,000 moves of a ~400-byte item for a batch of 2,000).
    if (batch.capacity() > kKeptCapacity) {
      Batch().swap(batch);
      batch.reserve(kKeptCapacity);
    }
  }

  static constexpr std::chrono::milliseconds kSafetyWake{10};
  // Each group commit costs about as much as 10-15 rows besides its rows (BEGIN and COMMIT with
  // six wal-index locks, i.e. fcntl calls, the lease and journal rows, page 1 and the parent
  // pages in the WAL): at 5 ms a gateway under callgrind's load committed ~20 rows at a time,
  // at 20 ms ~33 (ledger writer 11.6k -> 10.4k instructions per request). Such records are
  // durable already (a covered-row journal); only readers see them up to this much later.
  static constexpr std::chrono::milliseconds kLazyWait{20};
  // At ~40k covered rows a second a batch holds ~700 rows, often over 1,000: a vector kept at
  // 1,024 moved ~0.6 records per request on its way up again.
  static constexpr std::size_t kKeptCapacity = 2'048;
  const std::size_t capacity_;
  const std::size_t max_batch_;
  CommitFn commit_;

  // Taken by every push on the event loops (a LightMutex: no libpthread call when uncontended);
  // the condition variables that wait on it are _any ones. They are rarely used: the writer
  // waits on work_cv_ about once per batch, and a push notifies it only when it wakes the writer.
  mutable LightMutex mu_;
  std::condition_variable_any work_cv_;
  std::condition_variable_any done_cv_;
  Batch queue_;
  bool stopping_ = false;
  bool urgent_ = false;         // guarded by mu_: a record queued since the last take is waited for
  std::uint64_t enqueued_ = 0;  // guarded by mu_
  std::uint64_t completed_ = 0;  // guarded by mu_

  std::atomic<std::uint64_t> records_committed_{0};
  std::atomic<std::uint64_t> records_failed_{0};
  std::atomic<std::uint64_t> commits_{0};
  std::atomic<std::uint64_t> queue_full_{0};
  std::atomic<std::uint64_t> max_batch_seen_{0};

  std::thread writer_;
};

}  // namespace bw::store
