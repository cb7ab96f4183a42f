#pragma once
// Ships finished traces to an OpenTelemetry collector over OTLP/HTTP with the JSON encoding
// (POST <endpoint>, Content-Type: application/json; the collector's default path is /v1/traces).
//
// Contract
//  - submit() never blocks and never does I/O: it moves the trace into a bounded queue and
//    returns false (counted as dropped "queue_full") when the queue is full. Call it from the
//    request path freely.
//  - One exporter thread sends batches of at most `max_batch_spans` spans, when a batch is full
//    or `flush_interval` has passed. Each POST is bounded by `timeout`. A failed POST (connection
//    refused, timeout, non-2xx) drops its batch and counts its spans ("export_failed"): telemetry
//    never piles up behind a slow or absent collector, and never fails a request.
//  - The destructor sends what is queued within one more `timeout`, then stops.
//  - Thread safety: submit() and stats() may be called from any thread.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "telemetry/metrics.h"
#include "telemetry/tracing.h"

namespace bw::telemetry {

struct TraceExporterOptions {
  std::string endpoint;  // http(s)://host:port/v1/traces
  std::vector<std::pair<std::string, std::string>> headers;
  std::string ca_file;
  std::vector<Attribute> resource;    // service.name and the like
  std::size_t queue_capacity = 4096;  // spans waiting to be sent
  std::size_t max_batch_spans = 512;
  Nanos flush_interval = millis(1000);
  Nanos timeout = millis(2000);
  // Optional Prometheus counters kept in step with stats() (spans).
  Counter* exported_counter = nullptr;
  Counter* dropped_queue_full_counter = nullptr;
  Counter* dropped_export_failed_counter = nullptr;
};

struct TraceExporterStats {
  std::uint64_t exported_spans = 0;
  std::uint64_t dropped_queue_full = 0;     // spans refused by submit()
  std::uint64_t dropped_export_failed = 0;  // spans of batches the collector did not take
  std::uint64_t batches_sent = 0;
  std::uint64_t batches_failed = 0;
};

class TraceExporter {
 public:
  // Sends one encoded batch; returns the HTTP status, or an error for a transport failure.
  using PostFn = std::function<Result<int>(const std::string& body)>;

  explicit TraceExporter(TraceExporterOptions options);
  // For tests: a custom transport instead of HTTP.
  TraceExporter(TraceExporterOptions options, PostFn post);
  ~TraceExporter();
  TraceExporter(const TraceExporter&) = delete;
  TraceExporter& operator=(const TraceExporter&) = delete;

  bool submit(FinishedTrace trace);
  TraceExporterStats stats() const;
  // Blocks until everything submitted so far was sent or dropped (tests, shutdown).
  void flush();

 private:
  void run();
  bool send(std::vector<FinishedTrace>& batch, std::size_t spans);

  TraceExporterOptions options_;
  PostFn post_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<FinishedTrace> queue_;
  std::size_t queued_spans_ = 0;
  bool sending_ = false;
  bool flush_requested_ = false;
  bool failing_ = false;  // exporter thread only
  bool stop_ = false;
  std::atomic<std::uint64_t> exported_{0}, dropped_full_{0}, dropped_failed_{0}, batches_{0},
      batches_failed_{0};
  std::thread worker_;
};

}  // namespace bw::telemetry
