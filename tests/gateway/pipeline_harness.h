#pragma once
// In-process pipeline harness: a Shared wired as the gateway wires it (limits, routing,
// admission, budgets, metrics, access log), with a FakeClock, a fake upstream and a recording
// ResponseWriter. A request runs on the test thread's io_context; nothing leaves the process.
#include <gtest/gtest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"
#include "gateway/pipeline.h"
#include "gateway/shared.h"
#include "support/temp_dir.h"

namespace bw::gateway::test {

namespace asio = boost::asio;

struct Recorded {
  int status = 0;
  http::Headers headers;
  std::string body;
  bool streamed = false;
  bool ended = false;
  std::vector<std::string> writes;  // each write of a stream's body (a chunk, or the last one)
  std::string header(std::string_view name) const { return std::string(headers.get(name)); }
};

class RecordingWriter final : public http::ResponseWriter {
 public:
  explicit RecordingWriter(Recorded& out) : out_(out) {}
  asio::awaitable<bool> send(http::Response r) override {
    out_.status = r.status;
    out_.headers = std::move(r.headers);
    out_.body = std::move(r.body);
    started_ = true;
    co_return true;
  }
  asio::awaitable<bool> begin_stream(int status, const http::Headers& h) override {
    out_.status = status;
    out_.headers = h;
    out_.streamed = true;
    started_ = true;
    co_return true;
  }
  asio::awaitable<bool> write_chunk(std::string_view data) override {
    if (out_.writes.size() == fail_write_) co_return false;
    out_.body.append(data);
    out_.writes.emplace_back(data);
    co_return true;
  }
  asio::awaitable<bool> end_stream_with(std::string_view data) override {
    if (out_.writes.size() == fail_write_) co_return false;
    out_.body.append(data);
    out_.writes.emplace_back(data);
    out_.ended = true;
    co_return true;
  }
  // A stream's head, kept for start_stream (or start_stream_now).
  void stream_head(int status, std::span<const std::string_view> lines) override {
    head_status_ = status;
    head_ = http::Headers();
    for (const auto l : lines) head_.raw().append(l);
  }
  asio::awaitable<bool> start_stream(bool) override {
    co_return co_await begin_stream(head_status_, head_);
  }
  // With settle_at_once(): the writes that a connection's socket takes at once.
  std::optional<bool> start_stream_now(bool) override {
    if (!at_once_) return std::nullopt;
    out_.status = head_status_;
    out_.headers = head_;
    out_.streamed = true;
    started_ = true;
    return true;
  }
  std::optional<bool> write_chunk_pieces_now(std::span<const std::string_view> pieces,
                                             bool end) override {
    if (!at_once_ || out_.writes.size() == wait_write_) return std::nullopt;
    if (out_.writes.size() == fail_write_) return false;
    std::string joined;
    for (auto p : pieces) joined.append(p);
    out_.body.append(joined);
    out_.writes.push_back(std::move(joined));
    if (end) out_.ended = true;
    return true;
  }
  // The *_now writes settle at once, but for the write numbered `wait_write` (from 0), which
  // must be awaited (a socket that is full).
  void settle_at_once(std::size_t wait_write = kNone) {
    at_once_ = true;
    wait_write_ = wait_write;
  }
  // The write numbered `n` (from 0) fails: the client has gone.
  void fail_write(std::size_t n) { fail_write_ = n; }
  asio::awaitable<bool> end_stream() override {
    out_.ended = true;
    co_return true;
  }
  bool started() const override { return started_; }
  void close_after() override {}
  void abort() override {}
  void watch_disconnect(std::function<void()> on_gone) override { on_gone_ = std::move(on_gone); }
  // The client goes away (what the server's watch would report).
  void disconnect() {
    if (on_gone_) on_gone_();
  }

 private:
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  Recorded& out_;
  bool started_ = false;
  int head_status_ = 0;
  http::Headers head_;
  bool at_once_ = false;
  std::size_t wait_write_ = kNone;
  std::size_t fail_write_ = kNone;
  std::function<void()> on_gone_;
};

// One attempt as the fake upstream saw it.
struct Seen {
  std::string target;
  std::string body;
};

class FakeUpstream final : public Upstream {
 public:
  using Answer = std::function<Result<http::UpstreamResponse>(const Seen&)>;
  explicit FakeUpstream(asio::io_context& io) : gate_(io) {}
  asio::awaitable<Result<http::UpstreamResponse>> send(
      const Provider&, const http::OutboundRequest& request) override {
    Seen s{std::string(request.target), request.body_text()};
    seen.push_back(s);
    if (held) {
      // Parked until release(); the request's cancel handle ends the wait too (client gone).
      ++parked;
      while (held && !(request.cancel && request.cancel->cancelled())) {
        gate_.expires_after(std::chrono::milliseconds(1));
        co_await gate_.async_wait(asio::as_tuple(asio::use_awaitable));
      }
      --parked;
    }
    if (request.cancel && request.cancel->cancelled()) {
      co_return make_error(499, "upstream_error", std::string(http::kUpstreamCancelled),
                           "cancelled");
    }
    if (throw_next) {
      throw_next = false;
      throw std::runtime_error("upstream exploded");
    }
    if (answers.empty()) co_return ok("m");
    auto a = answers.front();
    if (answers.size() > 1) answers.pop_front();
    co_return a(s);
  }

  // A buffered chat completion with usage.
  static http::UpstreamResponse ok(std::string model, int prompt = 7, int completion = 5) {
    http::UpstreamResponse::Canned c;
    c.status = 200;
    c.headers.add("content-type", "application/json");
    c.pieces.push_back(R"({"id":"chatcmpl-1","object":"chat.completion","model":")" + model +
                       R"(","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},)"
                       R"("finish_reason":"stop"}],"usage":{"prompt_tokens":)" +
                       std::to_string(prompt) + R"(,"completion_tokens":)" +
                       std::to_string(completion) + R"(,"total_tokens":)" +
                       std::to_string(prompt + completion) + "}}");
    return http::UpstreamResponse::canned(std::move(c));
  }
  static http::UpstreamResponse status(int code, std::string retry_after = {}) {
    http::UpstreamResponse::Canned c;
    c.status = code;
    c.headers.add("content-type", "application/json");
    if (!retry_after.empty()) c.headers.add("retry-after", retry_after);
    c.pieces.push_back(R"({"error":{"message":"upstream says no","type":"server_error"}})");
    return http::UpstreamResponse::canned(std::move(c));
  }
  static http::UpstreamResponse stream(std::vector<std::string> events,
                                       std::string fail_after = {}) {
    http::UpstreamResponse::Canned c;
    c.status = 200;
    c.headers.add("content-type", "text/event-stream");
    c.pieces = std::move(events);
    c.fail_after = std::move(fail_after);
    return http::UpstreamResponse::canned(std::move(c));
  }

  // Answers in order; the last one repeats.
  std::deque<Answer> answers;
  std::vector<Seen> seen;
  bool held = false;
  int parked = 0;
  bool throw_next = false;

 private:
  asio::steady_timer gate_;
};

inline const char* kKey = "sk-test-key-000001";
inline const char* kAdminKey = "sk-test-admin-0001";

class Pipeline {
 public:
  explicit Pipeline(const std::string& yaml) {
    dir_ = bw::testing::make_unique_dir("bw-gateway-test-");
    if (dir_.empty()) throw std::runtime_error("cannot create a test directory");
    log_path_ = (dir_ / "access.log").string();
    auto cfg = config::load_string("access_log: {path: " + log_path_ + "}\n" + yaml, "<test>");
    if (!cfg) throw std::runtime_error(cfg.error().message);
    cfg_ = *cfg;
    if (auto r = apply_config(sh, *cfg_); !r) throw std::runtime_error(r.error().message);
    sh.budgets = std::make_unique<cost::BudgetManager>(cfg_->cost_guard);
    declare_budgets(sh, *cfg_, {});
    sh.budget_store = std::make_unique<cost::LocalBudgetStore>(*sh.budgets);
    telemetry::GatewayMetricsOptions mo;
    sh.metrics = std::make_unique<telemetry::GatewayMetrics>(sh.registry, mo);
    sh.access_log = std::make_unique<AccessLog>(cfg_->access_log.path);
    auto up = std::make_unique<FakeUpstream>(io);
    upstream = up.get();
    sh.upstream = std::move(up);
    runtime_.store(std::make_shared<const Runtime>(cfg_, 0));
    sh.runtime = &runtime_;
  }
  // The configuration snapshot that the next requests use (a reload's).
  std::shared_ptr<const Runtime> runtime() const { return runtime_.load(); }
  void use_runtime(std::shared_ptr<const Runtime> rt) { runtime_.store(std::move(rt)); }
  std::shared_ptr<const config::Config> config() const { return cfg_; }

  ~Pipeline() {
    sh.access_log.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // A request in flight (started by start(), driven by run_until()).
  struct Call {
    std::string method, target, body;
    std::vector<std::pair<std::string, std::string>> header_values;
    http::Request req;
    Recorded out;
    std::unique_ptr<RecordingWriter> w;
    bool done = false;
    std::exception_ptr failed;
  };

  std::unique_ptr<Call> start(std::string method, std::string target, std::string body,
                              std::vector<std::pair<std::string, std::string>> headers) {
    auto call = std::make_unique<Call>();
    call->method = std::move(method);
    call->target = std::move(target);
    call->body = std::move(body);
    call->header_values = std::move(headers);
    call->req.method = call->method;
    call->req.target = call->target;
    call->req.body = call->body;
    call->req.peer_ip = "127.0.0.1";
    for (const auto& [k, v] : call->header_values) call->req.headers.emplace_back(k, v);
    call->w = std::make_unique<RecordingWriter>(call->out);
    Call* c = call.get();
    asio::co_spawn(io, handle_request(sh, c->req, *c->w, false), [c](std::exception_ptr e) {
      c->done = true;
      c->failed = e;
    });
    return call;
  }

  // Runs the event loop until `pred` holds (bounded: a hung pipeline fails the test), or for
  // `limit` to see that something does not happen.
  template <class Pred>
  bool run_until(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      io.restart();
      io.run_one_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  // One request to completion.
  Recorded send(std::string method, std::string target, std::string body = {},
                std::vector<std::pair<std::string, std::string>> headers = {}) {
    auto call = start(std::move(method), std::move(target), std::move(body), std::move(headers));
    EXPECT_TRUE(run_until([&] { return call->done; })) << "the request did not end";
    EXPECT_FALSE(call->failed) << "the request threw";
    check_invariants();
    return call->out;
  }

  Recorded chat(const std::string& model = "m",
                std::vector<std::pair<std::string, std::string>> headers =
                    {{"authorization", std::string("Bearer ") + kKey}},
                bool stream = false) {
    return send("POST", "/v1/chat/completions", chat_body(model, stream), std::move(headers));
  }

  static std::string chat_body(const std::string& model, bool stream = false) {
    return R"({"model":")" + model + R"(","messages":[{"role":"user","content":"Hello there"}],)" +
           R"("max_tokens":5)" + (stream ? R"(,"stream":true)" : "") + "}";
  }

  // After every request: finish ran once for each request that entered the pipeline, and
  // nothing it should give back is still held.
  void check_invariants() {
    EXPECT_EQ(sh.requests.load(), sh.finished.load()) << "a request ended without finish";
    EXPECT_EQ(sh.admission->in_flight(), 0u) << "a permit was not released";
    for (const auto& b : sh.budgets->snapshots(clock.unix_millis())) {
      EXPECT_EQ(b.reserved_micro, 0) << "budget " << b.id << " still holds a reservation";
    }
  }

  // The access log's lines so far.
  std::vector<std::string> access_log() {
    sh.access_log->flush();
    std::ifstream in(log_path_);
    std::vector<std::string> lines;
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    return lines;
  }

  FakeClock clock;
  // Before `sh`: the fake upstream in `sh` holds a timer of `io`, so `io` must outlive it.
  asio::io_context io;
  Shared sh{clock};
  FakeUpstream* upstream = nullptr;

 private:
  std::filesystem::path dir_;
  std::string log_path_;
  std::shared_ptr<const config::Config> cfg_;
  std::atomic<std::shared_ptr<const Runtime>> runtime_;
};

}  // namespace bw::gateway::test
