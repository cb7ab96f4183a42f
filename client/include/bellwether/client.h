#pragma once
// Bellwether C++ client SDK: an OpenAI-compatible chat completions client with client-side rate
// limiting, a circuit breaker per model, retries (exponential backoff with full jitter honouring
// Retry-After and x-ratelimit-*), fallback models, per-request priority (X-Priority), cost
// tracking with an optional local budget cap, and a metrics snapshot.
//
// Threading: a Client owns its I/O threads (ClientConfig::io_threads). All public methods are
// thread-safe. Callbacks (completion and per-chunk) run on a Client I/O thread: keep them short
// and never call a blocking method (chat, chat_stream, get) from inside one — those calls detect
// it and return ErrorKind::kInvalidRequest instead of deadlocking. Every completion callback is
// invoked exactly once, also on shutdown (with ErrorKind::kCancelled). No exception escapes.
//
// For asio::awaitable / use_future style calls include "bellwether/asio.h".
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bellwether/codec.h"
#include "bellwether/cost.h"
#include "bellwether/metrics.h"
#include "bellwether/policy.h"
#include "bellwether/types.h"

namespace bellwether {

struct ClientConfig {
  // scheme://host[:port][/prefix]; API paths ("/v1/chat/completions") are appended to it.
  std::string base_url = "http://127.0.0.1:8080";
  std::string api_key;  // sent as "Authorization: Bearer <key>"; empty = no header
  int io_threads = 1;
  Nanos connect_timeout = seconds(5);
  Nanos request_timeout = seconds(120);  // one attempt: connect to last byte
  std::size_t max_response_bytes = 16u << 20;
  std::size_t max_idle_connections = 64;  // keep-alive pool bound
  bool verify_tls = true;
  std::string ca_file;        // extra CA bundle (PEM); empty = system default paths
  int default_priority = -1;  // 0..2 sent as X-Priority; -1 = no header
  RetryPolicy retry;
  BreakerConfig breaker;                 // one breaker per model
  TokenBucketConfig token_bucket;        // rate_per_s 0 = off
  SlidingWindowConfig window;            // rpm/rps 0 = off
  Nanos max_limiter_wait = seconds(30);  // longer local waits fail with kLocalRateLimited
  std::vector<std::string> fallback_models;
  PriceTable prices;
  std::optional<double> budget_cap_usd;           // nullopt = no local cap
  std::int64_t completion_estimate_tokens = 256;  // used when max_tokens is unset
  bool include_stream_usage = true;               // ask for stream_options.include_usage
  std::string user_agent = "bellwether-cpp/0.1";
};

using ChunkCallback = std::function<bool(const ChatChunk&)>;  // false = stop the stream
using ChatCallback = std::function<void(ChatResult)>;
using HttpCallback = std::function<void(Result<HttpResponse>)>;

class Client {
 public:
  explicit Client(ClientConfig config);
  // shutdown(), then joins the I/O threads. Must not run on a Client I/O thread (i.e. do not
  // destroy the Client from one of its own callbacks).
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Blocking calls (not from a callback).
  ChatResult chat(const ChatRequest& request);
  ChatResult chat_stream(const ChatRequest& request, ChunkCallback on_chunk);
  Result<HttpResponse> get(const std::string& path);

  // Asynchronous calls: return at once; `done` runs once on an I/O thread.
  void chat_async(ChatRequest request, ChatCallback done);
  void chat_stream_async(ChatRequest request, ChunkCallback on_chunk, ChatCallback done);
  void get_async(std::string path, HttpCallback done);

  MetricsSnapshot metrics() const;
  BreakerState breaker_state(const std::string& model) const;
  const ClientConfig& config() const;

  // Cancels in-flight calls (they complete with kCancelled) and refuses new ones. Idempotent.
  void shutdown();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace bellwether
