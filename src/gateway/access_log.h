#pragma once
// One JSON line per request. Lines are formatted on the worker and appended to a shared buffer;
// a background thread writes them out, so a slow disk or a full pipe never stalls a request.
// When the buffer is full, lines are dropped and counted (never blocking).
// Thread safety: log() may be called from any thread.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

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

class AccessLog {
 public:
  // path: "-" for stdout, "off" to disable, else a file opened for append.
  explicit AccessLog(const std::string& path, std::size_t max_buffer_bytes = 8 << 20);
  ~AccessLog();
  void log(const AccessRecord& r);
  // False when the log is off: log() would do nothing, so the caller need not build a record.
  bool enabled() const { return out_ != nullptr; }
  std::uint64_t dropped() const { return dropped_.load(); }
  void flush();

 private:
  void run();
  std::FILE* out_ = nullptr;
  bool owns_ = false;
  std::size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  static constexpr std::size_t kWakeBytes = 64 * 1024;
  static constexpr std::chrono::milliseconds kFlushInterval{50};
  std::string buffer_;
  bool wake_sent_ = false;
  bool stop_ = false;
  std::atomic<std::uint64_t> dropped_{0};
  std::thread writer_;
};

}  // namespace bw::gateway
