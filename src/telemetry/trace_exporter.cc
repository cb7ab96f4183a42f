#include "telemetry/trace_exporter.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "http/fetch.h"

namespace bw::telemetry {
namespace {

TraceExporter::PostFn http_post_fn(const TraceExporterOptions& o) {
  return [endpoint = o.endpoint, headers = o.headers, ca = o.ca_file,
          timeout = o.timeout](const std::string& body) -> Result<int> {
    http::FetchRequest req;
    req.method = "POST";
    req.url = endpoint;
    req.headers = headers;
    req.headers.emplace_back("Content-Type", "application/json");
    req.body = body;
    req.ca_file = ca;
    req.timeout = timeout;
    req.max_body = 64 * 1024;
    auto r = http::fetch(req);
    if (!r) return r.error();
    return r->status;
  };
}

}  // namespace

TraceExporter::TraceExporter(TraceExporterOptions options)
    : TraceExporter(options, http_post_fn(options)) {}

TraceExporter::TraceExporter(TraceExporterOptions options, PostFn post)
    : options_(std::move(options)), post_(std::move(post)) {
  worker_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "bw-traces");
    run();
  });
}

TraceExporter::~TraceExporter() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

bool TraceExporter::submit(FinishedTrace trace) {
  const std::size_t n = trace.spans.size();
  bool wake = false;
  {
    std::lock_guard lk(mu_);
    if (stop_ || queued_spans_ + n > options_.queue_capacity) {
      dropped_full_.fetch_add(n, std::memory_order_relaxed);
      if (options_.dropped_queue_full_counter) options_.dropped_queue_full_counter->add(n);
      return false;
    }
    queued_spans_ += n;
    queue_.push_back(std::move(trace));
    wake = queued_spans_ >= options_.max_batch_spans;
  }
  if (wake) cv_.notify_one();
  return true;
}

TraceExporterStats TraceExporter::stats() const {
  TraceExporterStats s;
  s.exported_spans = exported_.load(std::memory_order_relaxed);
  s.dropped_queue_full = dropped_full_.load(std::memory_order_relaxed);
  s.dropped_export_failed = dropped_failed_.load(std::memory_order_relaxed);
  s.batches_sent = batches_.load(std::memory_order_relaxed);
  s.batches_failed = batches_failed_.load(std::memory_order_relaxed);
  return s;
}

void TraceExporter::flush() {
  std::unique_lock lk(mu_);
  flush_requested_ = true;
  cv_.notify_one();
  idle_cv_.wait(lk, [&] { return (queue_.empty() && !sending_) || stop_; });
}

bool TraceExporter::send(std::vector<FinishedTrace>& batch, std::size_t spans) {
  auto status = post_(encode_otlp_json(options_.resource, batch));
  const bool ok = status && *status >= 200 && *status < 300;
  if (ok) {
    exported_.fetch_add(spans, std::memory_order_relaxed);
    batches_.fetch_add(1, std::memory_order_relaxed);
    if (options_.exported_counter) options_.exported_counter->add(spans);
  } else {
    dropped_failed_.fetch_add(spans, std::memory_order_relaxed);
    if (options_.dropped_export_failed_counter) options_.dropped_export_failed_counter->add(spans);
    batches_failed_.fetch_add(1, std::memory_order_relaxed);
  }
  // A line when the collector starts and stops failing, not one per batch: the counters tell how
  // many spans were lost.
  if (ok == failing_) {
    failing_ = !ok;
    if (failing_) {
      spdlog::warn("trace export to {} failing ({}); spans are dropped until it recovers",
                   options_.endpoint,
                   status ? "HTTP " + std::to_string(*status) : status.error().message);
    } else {
      spdlog::info("trace export to {} recovered", options_.endpoint);
    }
  }
  batch.clear();
  return ok;
}

void TraceExporter::run() {
  const auto interval = std::chrono::nanoseconds(options_.flush_interval);
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait_for(lk, interval, [&] {
      return stop_ || flush_requested_ || queued_spans_ >= options_.max_batch_spans;
    });
    if (queue_.empty()) {
      flush_requested_ = false;
      idle_cv_.notify_all();
      if (stop_) return;
      continue;
    }
    // Take at most one batch; the rest waits for the next round (which starts at once when a
    // full batch is still queued).
    std::vector<FinishedTrace> batch;
    std::size_t spans = 0;
    while (!queue_.empty() &&
           (batch.empty() || spans + queue_.front().spans.size() <= options_.max_batch_spans)) {
      spans += queue_.front().spans.size();
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    queued_spans_ -= spans;
    sending_ = true;
    lk.unlock();
    const bool ok = send(batch, spans);
    lk.lock();
    sending_ = false;
    if (stop_ && !ok) {
      // Shutting down and the collector is not answering: drop the rest rather than wait one
      // timeout per batch.
      dropped_failed_.fetch_add(queued_spans_, std::memory_order_relaxed);
      if (options_.dropped_export_failed_counter) {
        options_.dropped_export_failed_counter->add(queued_spans_);
      }
      queue_.clear();
      queued_spans_ = 0;
    }
    if (queue_.empty()) {
      flush_requested_ = false;
      idle_cv_.notify_all();
    }
  }
}

}  // namespace bw::telemetry
