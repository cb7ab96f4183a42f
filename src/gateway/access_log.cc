#include "gateway/access_log.h"

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>

#include "common/json_util.h"

namespace bw::gateway {

AccessLog::AccessLog(const std::string& path, std::size_t max_buffer_bytes)
    : max_(max_buffer_bytes) {
  if (path == "off") return;
  if (path == "-" || path.empty()) {
    out_ = stdout;
  } else {
    out_ = std::fopen(path.c_str(), "a");
    owns_ = out_ != nullptr;
  }
  if (out_) writer_ = std::thread([this] { run(); });
}

AccessLog::~AccessLog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (owns_) std::fclose(out_);
}

namespace {

// The line is written with a cursor into room made beforehand (line_bound): every field name is
// one fixed-size copy of its literal, with its comma and colon, and no append checks capacity.
template <std::size_t N>
char* lit(char* p, const char (&s)[N]) {
  std::memcpy(p, s, N - 1);
  return p + N - 1;
}

char* put_string(char* p, std::string_view s) {
  return write_json_string(p, s);
}

char* put_int(char* p, std::int64_t v) {
  return write_int(p, v);
}

char* put_uint(char* p, std::uint64_t v) {
  return write_uint(p, v);
}

char* put_bool(char* p, bool v) {
  return v ? lit(p, "true") : lit(p, "false");
}

// Milliseconds with six significant digits, as printf("%.6g") gives them, but formatted from
// an integer (picoseconds) rather than by the floating-point conversion.
char* put_ms(char* p, double ms) {
  const double ps = ms * 1e9;
  if (std::fabs(ps) < 9e18) return write_decimal(p, std::llround(ps), 9, 6);
  if (!std::isfinite(ms)) return lit(p, "null");
  return std::to_chars(p, p + 32, ms, std::chars_format::general, 6).ptr;
}

// Dollars from micro-dollars, exactly.
char* put_usd(char* p, std::int64_t micro) {
  return write_decimal(p, micro, 6);
}

// Room for every field name, separator and number of the longest line; the strings are added
// per record.
constexpr std::size_t kFixedBound = 2048;

}  // namespace

void AccessLog::log(const AccessRecord& r) {
  if (!out_) return;
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const std::string_view strings[] = {r.request_id,  r.key_id,          r.client_ip,    r.method,
                                      r.path,        r.model_requested, r.model_served, r.upstream,
                                      r.wait_reason, r.cache,           r.error_code,   r.trace_id,
                                      r.span_id};
  std::size_t bound = kFixedBound;
  for (std::string_view s : strings) bound += json_string_max_size(s.size());
  // A per-thread buffer that keeps its size: no allocation (nor clearing) per line.
  thread_local std::string line;
  if (line.size() < bound) line.resize(bound);
  char* const begin = line.data();
  char* p = begin;
  p = lit(p, "{\"ts_ms\":");
  p = put_int(p, static_cast<std::int64_t>(now_ms));
  p = lit(p, ",\"request_id\":");
  p = put_string(p, r.request_id);
  p = lit(p, ",\"key_id\":");
  p = put_string(p, r.key_id);
  p = lit(p, ",\"client_ip\":");
  p = put_string(p, r.client_ip);
  p = lit(p, ",\"method\":");
  p = put_string(p, r.method);
  p = lit(p, ",\"path\":");
  p = put_string(p, r.path);
  p = lit(p, ",\"model\":");
  p = put_string(p, r.model_requested);
  p = lit(p, ",\"model_served\":");
  p = put_string(p, r.model_served);
  p = lit(p, ",\"upstream\":");
  p = put_string(p, r.upstream);
  p = lit(p, ",\"status\":");
  p = put_int(p, r.status);
  p = lit(p, ",\"stream\":");
  p = put_bool(p, r.stream);
  p = lit(p, ",\"latency_ms\":");
  p = put_ms(p, r.latency_ms);
  if (r.ttft_ms >= 0) {
    p = lit(p, ",\"ttft_ms\":");
    p = put_ms(p, r.ttft_ms);
  }
  p = lit(p, ",\"queue_ms\":");
  p = put_ms(p, r.queue_ms);
  if (!r.wait_reason.empty()) {
    p = lit(p, ",\"wait_reason\":");
    p = put_string(p, r.wait_reason);
  }
  p = lit(p, ",\"prompt_tokens\":");
  p = put_int(p, r.prompt_tokens);
  p = lit(p, ",\"completion_tokens\":");
  p = put_int(p, r.completion_tokens);
  p = lit(p, ",\"cost_usd\":");
  p = put_usd(p, r.cost_micro_usd);
  p = lit(p, ",\"attempts\":");
  p = put_int(p, r.attempts);
  p = lit(p, ",\"bytes_in\":");
  p = put_uint(p, r.bytes_in);
  p = lit(p, ",\"bytes_out\":");
  p = put_uint(p, r.bytes_out);
  if (!r.cache.empty()) {
    p = lit(p, ",\"cache\":");
    p = put_string(p, r.cache);
  }
  if (r.cache_age_s >= 0) {
    p = lit(p, ",\"cache_age_s\":");
    p = put_int(p, r.cache_age_s);
  }
  if (r.cache_saved_micro_usd > 0) {
    p = lit(p, ",\"cache_saved_usd\":");
    p = put_usd(p, r.cache_saved_micro_usd);
  }
  if (r.cache_similarity >= 0) {
    p = lit(p, ",\"cache_similarity\":");
    p = std::isfinite(r.cache_similarity)
            ? std::to_chars(p, p + 32, r.cache_similarity, std::chars_format::general, 6).ptr
            : lit(p, "null");
  }
  if (r.cached_tokens > 0) {
    p = lit(p, ",\"cached_tokens\":");
    p = put_int(p, r.cached_tokens);
  }
  if (r.priority >= 0) {
    p = lit(p, ",\"priority\":");
    p = put_int(p, r.priority);
  }
  if (r.priority_lowered) p = lit(p, ",\"priority_lowered\":true");
  if (r.cancelled) p = lit(p, ",\"cancelled\":true");
  if (!r.error_code.empty()) {
    p = lit(p, ",\"error\":");
    p = put_string(p, r.error_code);
  }
  if (!r.trace_id.empty()) {
    p = lit(p, ",\"trace_id\":");
    p = put_string(p, r.trace_id);
  }
  if (!r.span_id.empty()) {
    p = lit(p, ",\"span_id\":");
    p = put_string(p, r.span_id);
  }
  p = lit(p, "}\n");
  const auto size = static_cast<std::size_t>(p - begin);
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (buffer_.size() + size > max_) {
      dropped_.fetch_add(1);
      return;
    }
    buffer_.append(begin, size);
    // The writer wakes by itself every kFlushInterval; it is woken early only once enough has
    // piled up, so a busy gateway does not pay a futex wake (and a writer context switch) per
    // line.
    wake = buffer_.size() >= kWakeBytes && !wake_sent_;
    if (wake) wake_sent_ = true;
  }
  if (wake) cv_.notify_one();
}

void AccessLog::flush() {
  std::string chunk;
  {
    std::lock_guard lock(mu_);
    chunk.swap(buffer_);
  }
  if (!chunk.empty()) std::fwrite(chunk.data(), 1, chunk.size(), out_);
  std::fflush(out_);
}

void AccessLog::run() {
  std::string chunk;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, kFlushInterval, [&] { return stop_ || buffer_.size() >= kWakeBytes; });
      chunk.swap(buffer_);
      wake_sent_ = false;
      if (stop_ && chunk.empty()) break;
    }
    if (!chunk.empty()) {
      std::fwrite(chunk.data(), 1, chunk.size(), out_);
      std::fflush(out_);
      chunk.clear();
    }
  }
  std::fflush(out_);
}

}  // namespace bw::gateway
