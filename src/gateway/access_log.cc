#include "gateway/access_log.h"

#include <chrono>

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

void AccessLog::log(const AccessRecord& r) {
  if (!out_) return;
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  // Formatted into a per-thread buffer that keeps its capacity: no allocation per line. The
  // field names are literals: plain_key() copies them without the escaping scan.
  thread_local std::string line_buffer;
  JsonWriter j(std::move(line_buffer));
  j.begin_object()
      .plain_key("ts_ms")
      .value(static_cast<std::int64_t>(now_ms))
      .plain_key("request_id")
      .value(r.request_id)
      .plain_key("key_id")
      .value(r.key_id)
      .plain_key("client_ip")
      .value(r.client_ip)
      .plain_key("method")
      .value(r.method)
      .plain_key("path")
      .value(r.path)
      .plain_key("model")
      .value(r.model_requested)
      .plain_key("model_served")
      .value(r.model_served)
      .plain_key("upstream")
      .value(r.upstream)
      .plain_key("status")
      .value(r.status)
      .plain_key("stream")
      .value(r.stream)
      .plain_key("latency_ms")
      .value(r.latency_ms);
  if (r.ttft_ms >= 0) j.plain_key("ttft_ms").value(r.ttft_ms);
  j.plain_key("queue_ms").value(r.queue_ms);
  if (!r.wait_reason.empty()) j.plain_key("wait_reason").value(r.wait_reason);
  j.plain_key("prompt_tokens")
      .value(r.prompt_tokens)
      .plain_key("completion_tokens")
      .value(r.completion_tokens)
      .plain_key("cost_usd")
      .value(static_cast<double>(r.cost_micro_usd) / 1e6)
      .plain_key("attempts")
      .value(r.attempts)
      .plain_key("bytes_in")
      .value(static_cast<std::uint64_t>(r.bytes_in))
      .plain_key("bytes_out")
      .value(static_cast<std::uint64_t>(r.bytes_out));
  if (!r.cache.empty()) j.plain_key("cache").value(r.cache);
  if (r.cache_age_s >= 0) j.plain_key("cache_age_s").value(r.cache_age_s);
  if (r.cache_saved_micro_usd > 0) {
    j.plain_key("cache_saved_usd").value(static_cast<double>(r.cache_saved_micro_usd) / 1e6);
  }
  if (r.cache_similarity >= 0) j.plain_key("cache_similarity").value(r.cache_similarity);
  if (r.cached_tokens > 0) j.plain_key("cached_tokens").value(r.cached_tokens);
  if (r.priority >= 0) j.plain_key("priority").value(r.priority);
  if (r.priority_lowered) j.plain_key("priority_lowered").value(true);
  if (r.cancelled) j.plain_key("cancelled").value(true);
  if (!r.error_code.empty()) j.plain_key("error").value(r.error_code);
  if (!r.trace_id.empty()) j.plain_key("trace_id").value(r.trace_id);
  if (!r.span_id.empty()) j.plain_key("span_id").value(r.span_id);
  j.end_object();
  line_buffer = j.take();
  line_buffer.push_back('\n');
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (buffer_.size() + line_buffer.size() > max_) {
      dropped_.fetch_add(1);
      return;
    }
    buffer_ += line_buffer;
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
