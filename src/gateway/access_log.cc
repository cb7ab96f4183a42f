#include "gateway/access_log.h"

#include <chrono>
#include <cmath>

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

// The line is written with a cursor into room made beforehand (`bound`): every field name is
// one fixed-size copy of its literal (write_literal), with its comma and colon, and no append
// checks capacity.

char* put_bool(char* p, bool v) {
  return v ? write_literal(p, "true") : write_literal(p, "false");
}

// Milliseconds with six significant digits, as printf("%.6g") gives them, but formatted from
// an integer (picoseconds) rather than by the floating-point conversion.
char* put_ms(char* p, double ms) {
  const double ps = ms * 1e9;
  if (std::fabs(ps) < 9e18) return write_decimal(p, std::llround(ps), 9, 6);
  return write_double(p, ms);
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
  p = write_literal(p, "{\"ts_ms\":");
  p = write_int(p, static_cast<std::int64_t>(now_ms));
  p = write_literal(p, ",\"request_id\":");
  p = write_json_string(p, r.request_id);
  p = write_literal(p, ",\"key_id\":");
  p = write_json_string(p, r.key_id);
  p = write_literal(p, ",\"client_ip\":");
  p = write_json_string(p, r.client_ip);
  p = write_literal(p, ",\"method\":");
  p = write_json_string(p, r.method);
  p = write_literal(p, ",\"path\":");
  p = write_json_string(p, r.path);
  p = write_literal(p, ",\"model\":");
  p = write_json_string(p, r.model_requested);
  p = write_literal(p, ",\"model_served\":");
  p = write_json_string(p, r.model_served);
  p = write_literal(p, ",\"upstream\":");
  p = write_json_string(p, r.upstream);
  p = write_literal(p, ",\"status\":");
  p = write_int(p, r.status);
  p = write_literal(p, ",\"stream\":");
  p = put_bool(p, r.stream);
  p = write_literal(p, ",\"latency_ms\":");
  p = put_ms(p, r.latency_ms);
  if (r.ttft_ms >= 0) {
    p = write_literal(p, ",\"ttft_ms\":");
    p = put_ms(p, r.ttft_ms);
  }
  p = write_literal(p, ",\"queue_ms\":");
  p = put_ms(p, r.queue_ms);
  if (!r.wait_reason.empty()) {
    p = write_literal(p, ",\"wait_reason\":");
    p = write_json_string(p, r.wait_reason);
  }
  p = write_literal(p, ",\"prompt_tokens\":");
  p = write_int(p, r.prompt_tokens);
  p = write_literal(p, ",\"completion_tokens\":");
  p = write_int(p, r.completion_tokens);
  p = write_literal(p, ",\"cost_usd\":");
  p = put_usd(p, r.cost_micro_usd);
  p = write_literal(p, ",\"attempts\":");
  p = write_int(p, r.attempts);
  p = write_literal(p, ",\"bytes_in\":");
  p = write_uint(p, r.bytes_in);
  p = write_literal(p, ",\"bytes_out\":");
  p = write_uint(p, r.bytes_out);
  if (!r.cache.empty()) {
    p = write_literal(p, ",\"cache\":");
    p = write_json_string(p, r.cache);
  }
  if (r.cache_age_s >= 0) {
    p = write_literal(p, ",\"cache_age_s\":");
    p = write_int(p, r.cache_age_s);
  }
  if (r.cache_saved_micro_usd > 0) {
    p = write_literal(p, ",\"cache_saved_usd\":");
    p = put_usd(p, r.cache_saved_micro_usd);
  }
  if (r.cache_similarity >= 0) {
    p = write_literal(p, ",\"cache_similarity\":");
    p = write_double(p, r.cache_similarity);
  }
  if (r.cached_tokens > 0) {
    p = write_literal(p, ",\"cached_tokens\":");
    p = write_int(p, r.cached_tokens);
  }
  if (r.priority >= 0) {
    p = write_literal(p, ",\"priority\":");
    p = write_int(p, r.priority);
  }
  if (r.priority_lowered) p = write_literal(p, ",\"priority_lowered\":true");
  if (r.cancelled) p = write_literal(p, ",\"cancelled\":true");
  if (!r.error_code.empty()) {
    p = write_literal(p, ",\"error\":");
    p = write_json_string(p, r.error_code);
  }
  if (!r.trace_id.empty()) {
    p = write_literal(p, ",\"trace_id\":");
    p = write_json_string(p, r.trace_id);
  }
  if (!r.span_id.empty()) {
    p = write_literal(p, ",\"span_id\":");
    p = write_json_string(p, r.span_id);
  }
  p = write_literal(p, "}\n");
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
