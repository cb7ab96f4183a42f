#pragma once
// One JSON line per request. Each thread that logs formats its lines straight into a buffer of
// its own (a ring with one writer and one reader: no lock, no copy per line); a background thread
// writes the buffers out in batches, so a slow disk or a full pipe never stalls a request. When a
// thread's buffer is full, its lines are dropped and counted (never blocking). The lines of one
// thread keep their order; those of different threads interleave batch by batch. Every line
// logged before flush() or the destructor is written by it.
// Thread safety: log() may be called from any thread; the log must outlive every call.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bw::gateway {

struct AccessRecord {
  std::string_view request_id;
  std::string_view key_id;
  std::string_view method;
  std::string_view path;
  std::string_view model_requested;
  std::string_view model_served;
  std::string_view upstream;
  std::string_view error_code;
  std::string_view client_ip;
  std::string_view trace_id;  // hex; the caller's or the gateway's trace
  std::string_view span_id;   // hex; the request's span (when traces are recorded)
  int status = 0;
  int priority = -1;
  bool priority_lowered = false;
  bool stream = false;
  bool cancelled = false;
  // Durations in nanoseconds, written as milliseconds with six significant digits (ttft < 0:
  // none).
  std::int64_t latency_ns = 0;
  std::int64_t ttft_ns = -1;
  std::int64_t queue_ns = 0;
  std::string_view wait_reason;  // "" when the request did not wait
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  std::int64_t cost_micro_usd = 0;
  std::int64_t attempts = 0;
  std::size_t bytes_in = 0;
  std::size_t bytes_out = 0;
  // Response cache: hit | miss | bypass ("" when off); a hit's entry age, the cost it saved and
  // (semantic) its similarity. cached_tokens: the provider's own prompt cache.
  std::string_view cache;
  std::int64_t cache_age_s = -1;
  std::int64_t cache_saved_micro_usd = 0;
  double cache_similarity = -1;
  std::int64_t cached_tokens = 0;
};

// The decimal text of a Unix time in milliseconds, as write_int writes it, at `p` (room for 24
// bytes); returns the end. The line's time stamp: its second is formatted once per second per
// thread.
char* write_unix_ms(char* p, std::int64_t ms);

// A duration of `ns` nanoseconds as milliseconds with six significant digits, the text
// write_decimal(p, ns, 6, 6) writes (no exponent, no trailing zeros; half to even, as
// printf("%.6g") rounds), at `p` (room for kDecimalMaxSize bytes); returns the end. The line's
// latencies, with fewer steps than write_decimal's general ones.
char* write_ms(char* p, std::int64_t ns);

// Dollars from micro-dollars, exactly: the text write_decimal(p, micro, 6) writes, at `p` (room
// for kDecimalMaxSize bytes); returns the end. A request's cost, below a dollar, in a few steps.
char* write_usd(char* p, std::int64_t micro);

class AccessLog {
 public:
  // path: "-" for stdout, "off" to disable, else a file opened for append. Each thread that
  // logs has a buffer of a quarter of max_buffer_bytes (a power of two, at least 64 KiB); a
  // thread that ends leaves its buffer to the next thread that starts logging.
  explicit AccessLog(const std::string& path, std::size_t max_buffer_bytes = 8 << 20);
  ~AccessLog();
  void log(const AccessRecord& r);
  // False when the log is off: log() would do nothing, so the caller need not build a record.
  bool enabled() const { return out_ != nullptr; }
  std::uint64_t dropped() const { return dropped_.load(); }
  // The threads' buffers: at most as many as threads have logged at one time.
  std::size_t buffers();
  // Writes every line logged so far (by the time of the call) and flushes the file.
  void flush();
  // Where the calling thread's last line ended in its buffer (lines written after the writer
  // has taken every line start the buffer again: a busy log touches only what piles up between
  // two batches). For tests.
  std::size_t buffer_offset();

  struct Ring;

 private:
  Ring& ring();  // this thread's buffer
  void run();
  void drain();                     // with drain_mu_ held
  void reserve(std::size_t bytes);  // with drain_mu_ held
  std::FILE* out_ = nullptr;
  bool owns_ = false;
  std::size_t ring_bytes_;
  std::size_t wake_bytes_;
  // The file's blocks are reserved kReserveBytes ahead of its end (its size unchanged): growing
  // into reserved blocks costs the writer ~30 % less system time than allocating them per write.
  // fd_ is -1 for stdout, or once the file system refuses.
  static constexpr std::size_t kReserveBytes = 8 << 20;
  int fd_ = -1;
  std::size_t reserved_ = 0;  // bytes that can still be appended into reserved blocks
  const std::uint64_t id_;    // this log in the threads' memos of their buffers
  std::mutex mu_;             // rings_, stop_; the writer's sleep
  std::condition_variable cv_;
  // The writer is woken early once a thread's buffer holds this much (a quarter of the buffer at
  // most): at ~30k lines a second, 256 KiB is a wake-up (a futex call on the event loop, two
  // context switches and a write) every ~20 ms instead of every ~5 ms.
  static constexpr std::size_t kWakeBytes = 256 * 1024;
  static constexpr std::chrono::milliseconds kFlushInterval{50};
  std::vector<std::shared_ptr<Ring>> rings_;  // only grows (a ring is reused, never removed)
  bool stop_ = false;
  std::atomic<bool> wake_sent_{false};
  std::mutex drain_mu_;  // one reader of the rings at a time (the writer, flush())
  std::atomic<std::uint64_t> dropped_{0};
  std::thread writer_;
};

}  // namespace bw::gateway
