// End-to-end SDK behaviour against a fake HTTP server on 127.0.0.1:0. Timing assertions use the
// real clock with generous upper bounds, because retries and limiters really wait.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <map>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "bellwether/asio.h"
#include "bellwether/client.h"
#include "fake_server.h"

namespace bellwether {
namespace {

using bwtest::Arrival;
using bwtest::chat_body;
using bwtest::Conn;
using bwtest::FakeServer;
using bwtest::model_of;
using bwtest::response;
using Clock = std::chrono::steady_clock;

ChatRequest hello(const std::string& model = "m") {
  ChatRequest r;
  r.model = model;
  r.messages = {{"user", "hello"}};
  return r;
}

ClientConfig config_for(const FakeServer& s) {
  ClientConfig c;
  c.base_url = s.url();
  c.api_key = "sk-test";
  c.retry.base_delay = millis(10);
  c.request_timeout = seconds(10);
  return c;
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

TEST(Client, BufferedChatSendsAuthPriorityAndParses) {
  FakeServer server([](const Arrival& a, Conn& c) {
    c.write(response(200, chat_body(model_of(a.body), "hi!"), {{"x-bellwether-model", "m-small"}}));
  });
  auto cfg = config_for(server);
  cfg.prices.set("m-small", {.input_per_mtok = 1e6, .output_per_mtok = 2e6});  // $1 / $2 per token
  Client client(cfg);
  auto req = hello();
  req.priority = 2;
  auto r = client.chat(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->content, "hi!");
  EXPECT_EQ(r->served_by, "m-small");
  EXPECT_EQ(r->usage.total_tokens, 15);
  EXPECT_DOUBLE_EQ(r->cost_usd, 10 * 1.0 + 5 * 2.0);
  EXPECT_EQ(r->attempts, 1);
  const auto arrivals = server.arrivals();
  ASSERT_EQ(arrivals.size(), 1u);
  EXPECT_EQ(arrivals[0].target, "/v1/chat/completions");
  EXPECT_EQ(arrivals[0].headers.at("authorization"), "Bearer sk-test");
  EXPECT_EQ(arrivals[0].headers.at("x-priority"), "2");
  EXPECT_EQ(arrivals[0].body, R"({"model":"m","messages":[{"role":"user","content":"hello"}]})");
  const auto m = client.metrics();
  EXPECT_EQ(m.requests, 1u);
  EXPECT_EQ(m.successes, 1u);
  EXPECT_DOUBLE_EQ(m.spend_usd, 20.0);
  EXPECT_DOUBLE_EQ(m.requests_per_minute, 1.0);
}

TEST(Client, RetryHonoursRetryAfter) {
  std::atomic<int> n{0};
  FakeServer server([&](const Arrival& a, Conn& c) {
    if (n++ == 0) {
      c.write(response(
          429, R"({"error":{"message":"slow down","type":"rate_limit_error","code":"rpm"}})",
          {{"Retry-After", "1"},
           {"x-ratelimit-remaining-requests", "0"},
           {"x-ratelimit-reset-requests", "20ms"}}));
    } else {
      c.write(response(200, chat_body(model_of(a.body), "ok")));
    }
  });
  Client client(config_for(server));
  const auto start = Clock::now();
  auto r = client.chat(hello());
  const double elapsed = seconds_between(start, Clock::now());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->attempts, 2);
  const auto arrivals = server.arrivals();
  ASSERT_EQ(arrivals.size(), 2u);
  const double gap = seconds_between(arrivals[0].at, arrivals[1].at);
  EXPECT_GE(gap, 1.0);  // Retry-After wins over the shorter x-ratelimit reset
  EXPECT_LT(gap, 1.5);
  EXPECT_LT(elapsed, 3.0);
  const auto m = client.metrics();
  EXPECT_EQ(m.responses_429, 1u);
  EXPECT_EQ(m.retries, 1u);
  EXPECT_EQ(m.successes, 1u);
  EXPECT_EQ(m.rate_limited, 0u);
}

TEST(Client, RateLimitResetHeaderUsedWithoutRetryAfter) {
  std::atomic<int> n{0};
  FakeServer server([&](const Arrival& a, Conn& c) {
    if (n++ == 0)
      c.write(
          response(429, "{}",
                   {{"x-ratelimit-remaining-tokens", "0"}, {"x-ratelimit-reset-tokens", "300ms"}}));
    else
      c.write(response(200, chat_body(model_of(a.body), "ok")));
  });
  Client client(config_for(server));
  auto r = client.chat(hello());
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto arrivals = server.arrivals();
  ASSERT_EQ(arrivals.size(), 2u);
  const double gap = seconds_between(arrivals[0].at, arrivals[1].at);
  EXPECT_GE(gap, 0.3);
  EXPECT_LT(gap, 1.0);
}

TEST(Client, RetryAfterBeyondPolicyEndsCallWithTypedError) {
  FakeServer server([&](const Arrival&, Conn& c) {
    c.write(response(429, R"({"error":{"message":"quota","type":"rate_limit_error"}})",
                     {{"Retry-After", "120"}}));
  });
  Client client(config_for(server));
  const auto start = Clock::now();
  auto r = client.chat(hello());
  ASSERT_FALSE(r.ok());
  // Ended at once, not after the 120 s: seconds of bound for a machine that stalls.
  EXPECT_LT(seconds_between(start, Clock::now()), 5.0);
  EXPECT_EQ(r.error().kind, ErrorKind::kRateLimited);
  EXPECT_EQ(r.error().status, 429);
  EXPECT_DOUBLE_EQ(r.error().retry_after_s, 120.0);
  EXPECT_EQ(r.error().message, "quota");
  EXPECT_EQ(r.error().attempts, 1);
  EXPECT_EQ(server.arrivals().size(), 1u);
  EXPECT_EQ(client.metrics().rate_limited, 1u);
}

TEST(Client, AttemptsAreBounded) {
  FakeServer server([&](const Arrival&, Conn& c) { c.write(response(500, "{}")); });
  auto cfg = config_for(server);
  cfg.retry.max_attempts = 3;
  cfg.breaker.enabled = false;
  Client client(cfg);
  auto r = client.chat(hello());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kServerError);
  EXPECT_EQ(r.error().attempts, 3);
  EXPECT_EQ(server.arrivals().size(), 3u);
  EXPECT_EQ(client.metrics().errors, 1u);
}

TEST(Client, BreakerOpensAfterFailuresAndRecoversAfterTimeout) {
  std::atomic<bool> healthy{false};
  FakeServer server([&](const Arrival& a, Conn& c) {
    if (healthy)
      c.write(response(200, chat_body(model_of(a.body), "ok")));
    else
      c.write(response(503, R"({"error":{"message":"down","type":"server_error"}})"));
  });
  auto cfg = config_for(server);
  cfg.retry.max_attempts = 1;
  cfg.breaker = {.enabled = true,
                 .failure_threshold = 3,
                 .open_duration = millis(300),
                 .half_open_max_probes = 1,
                 .success_threshold = 1};
  Client client(cfg);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(client.chat(hello()).error().kind, ErrorKind::kServerError);
  // Before the failure that opens the breaker: its open duration cannot have begun earlier, so
  // the lower bound below holds however long this thread is descheduled after it.
  const auto opened = Clock::now();
  EXPECT_EQ(client.chat(hello()).error().kind, ErrorKind::kServerError);
  EXPECT_EQ(client.breaker_state("m"), BreakerState::kOpen);
  auto refused = client.chat(hello());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kCircuitOpen);
  EXPECT_EQ(refused.error().attempts, 0);
  EXPECT_GT(refused.error().retry_after_s, 0.0);
  EXPECT_EQ(server.arrivals().size(), 3u);  // refused locally
  healthy = true;
  while (client.breaker_state("m") == BreakerState::kOpen &&
         seconds_between(opened, Clock::now()) < 20.0)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GE(seconds_between(opened, Clock::now()), 0.3);
  auto probe = client.chat(hello());
  ASSERT_TRUE(probe.ok()) << probe.error().message;
  EXPECT_EQ(client.breaker_state("m"), BreakerState::kClosed);
  const auto m = client.metrics();
  EXPECT_EQ(m.circuit_open, 1u);
  EXPECT_EQ(m.errors, 3u);
  EXPECT_EQ(m.successes, 1u);
}

TEST(Client, SlidingWindowLimiterKeepsUnderRps) {
  FakeServer server(
      [](const Arrival& a, Conn& c) { c.write(response(200, chat_body(model_of(a.body), "ok"))); });
  auto cfg = config_for(server);
  cfg.window.requests_per_second = 5;
  Client client(cfg);
  std::vector<std::future<ChatResult>> results;
  std::mutex mu;
  std::atomic<int> done{0};
  std::promise<void> all;
  constexpr int kRequests = 12;
  const auto start = Clock::now();
  for (int i = 0; i < kRequests; ++i)
    client.chat_async(hello(), [&](ChatResult r) {
      EXPECT_TRUE(r.ok());
      if (++done == kRequests) all.set_value();
    });
  ASSERT_EQ(all.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  auto arrivals = server.arrivals();
  ASSERT_EQ(arrivals.size(), static_cast<std::size_t>(kRequests));
  std::sort(arrivals.begin(), arrivals.end(), [](auto& a, auto& b) { return a.at < b.at; });
  // At most 5 in any second, from the start: the k-th arrival not before k / 5 whole seconds
  // after it. A delivery delayed by a stalled thread only makes an arrival later, so the bounds
  // are exact; counting arrivals in every 900 ms window instead failed when an early one arrived
  // 100 ms late. 12 requests at 5/s need at least two full windows.
  for (int k = 5; k < kRequests; ++k) {
    EXPECT_GE(seconds_between(start, arrivals[static_cast<std::size_t>(k)].at),
              static_cast<double>(k / 5))
        << "arrival " << k << " came faster than 5 per second";
  }
}

TEST(Client, TokenBucketPacesAndWaitBoundRefuses) {
  FakeServer server(
      [](const Arrival& a, Conn& c) { c.write(response(200, chat_body(model_of(a.body), "ok"))); });
  auto cfg = config_for(server);
  cfg.token_bucket = {.rate_per_s = 10, .burst = 2};
  cfg.max_limiter_wait = millis(250);
  Client client(cfg);
  std::atomic<int> ok{0}, limited{0}, done{0};
  std::promise<void> all;
  for (int i = 0; i < 8; ++i)
    client.chat_async(hello(), [&](ChatResult r) {
      if (r.ok())
        ++ok;
      else if (r.error().kind == ErrorKind::kLocalRateLimited)
        ++limited;
      if (++done == 8) all.set_value();
    });
  ASSERT_EQ(all.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  // Burst 2 plus 10/s for a 250 ms wait bound: 2 + 2 (at 100 and 200 ms) fit, the rest would
  // wait beyond the bound. Scheduling jitter may let one more through.
  EXPECT_GE(ok.load(), 4);
  EXPECT_LE(ok.load(), 5);
  EXPECT_EQ(ok + limited, 8);
  EXPECT_EQ(client.metrics().local_limited, static_cast<std::uint64_t>(limited.load()));
}

TEST(Client, StreamingDeliversChunksIncrementally) {
  std::mutex mu;
  std::condition_variable cv;
  bool first_seen = false;
  FakeServer server([&](const Arrival&, Conn& c) {
    auto chunk = [](const std::string& payload) {
      const std::string event = "data: " + payload + "\n\n";
      char size[16];
      std::snprintf(size, sizeof(size), "%zx\r\n", event.size());
      return std::string(size) + event + "\r\n";
    };
    c.write(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        "x-bellwether-model: m\r\n\r\n");
    c.write(chunk(
        R"({"id":"s1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]})"));
    {
      // The rest is sent only once the client has handed the first chunk to the callback.
      std::unique_lock lock(mu);
      cv.wait_for(lock, std::chrono::seconds(5), [&] { return first_seen; });
    }
    c.write(chunk(
        R"({"id":"s1","model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]})"));
    c.write(chunk(
        R"({"id":"s1","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}})"));
    c.write(chunk("[DONE]"));
    c.write("0\r\n\r\n");
  });
  Client client(config_for(server));
  std::vector<std::string> pieces;
  auto r = client.chat_stream(hello(), [&](const ChatChunk& ch) {
    pieces.push_back(ch.content);
    std::lock_guard lock(mu);
    first_seen = true;
    cv.notify_all();
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(pieces, (std::vector<std::string>{"Hel", "lo", ""}));
  EXPECT_EQ(r->content, "Hello");
  EXPECT_EQ(r->finish_reason, "stop");
  EXPECT_EQ(r->chunks, 3u);
  EXPECT_EQ(r->usage.total_tokens, 5);
  const auto arrivals = server.arrivals();
  ASSERT_EQ(arrivals.size(), 1u);
  EXPECT_NE(arrivals[0].body.find(R"("stream":true)"), std::string::npos);
  EXPECT_EQ(arrivals[0].headers.at("accept"), "text/event-stream");
}

TEST(Client, StreamRequestAnsweredWithPlainJsonBecomesOneChunk) {
  FakeServer server([](const Arrival& a, Conn& c) {
    c.write(response(200, chat_body(model_of(a.body), "whole answer")));
  });
  Client client(config_for(server));
  std::vector<std::string> pieces;
  auto r = client.chat_stream(hello(), [&](const ChatChunk& ch) {
    pieces.push_back(ch.content);
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(pieces, (std::vector<std::string>{"whole answer"}));
  EXPECT_EQ(r->chunks, 1u);
  EXPECT_EQ(r->usage.total_tokens, 15);
}

TEST(Client, BudgetCapRefusesLocally) {
  FakeServer server([](const Arrival& a, Conn& c) {
    c.write(response(200, chat_body(model_of(a.body), "ok", 1000, 1000)));
  });
  auto cfg = config_for(server);
  cfg.prices.set("m", {.input_per_mtok = 10.0, .output_per_mtok = 30.0});
  cfg.budget_cap_usd = 0.05;
  Client client(cfg);
  auto req = hello();
  req.max_tokens = 100;  // estimate ~ 100 * 30e-6 = 0.003 USD, well under the cap
  auto first = client.chat(req);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_DOUBLE_EQ(first->cost_usd, 1000 * 10e-6 + 1000 * 30e-6);  // 0.04 USD actually spent
  auto second = client.chat(req);                                  // 0.04 + 0.003 fits
  ASSERT_TRUE(second.ok());
  auto third = client.chat(req);  // 0.08 already spent: refused before sending
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.error().kind, ErrorKind::kBudgetExceeded);
  EXPECT_EQ(third.error().attempts, 0);
  EXPECT_EQ(server.arrivals().size(), 2u);
  const auto m = client.metrics();
  EXPECT_EQ(m.budget_refused, 1u);
  EXPECT_DOUBLE_EQ(m.spend_usd, 0.08);
  EXPECT_DOUBLE_EQ(m.reserved_usd, 0.0);
}

TEST(Client, FallbackModelOn404And5xx) {
  FakeServer server([](const Arrival& a, Conn& c) {
    const auto model = model_of(a.body);
    if (model == "missing")
      c.write(response(404, R"({"error":{"message":"no such model"}})"));
    else if (model == "broken")
      c.write(response(502, "bad gateway"));
    else
      c.write(response(200, chat_body(model, "from " + model)));
  });
  auto cfg = config_for(server);
  cfg.fallback_models = {"broken", "good"};
  Client client(cfg);
  auto r = client.chat(hello("missing"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->content, "from good");
  EXPECT_EQ(r->attempts, 3);
  std::vector<std::string> order;
  for (const auto& a : server.arrivals()) order.push_back(model_of(a.body));
  EXPECT_EQ(order, (std::vector<std::string>{"missing", "broken", "good"}));
  EXPECT_EQ(client.metrics().fallbacks, 2u);

  auto per_request = hello("missing");
  per_request.fallback_models = {"good"};
  auto r2 = client.chat(per_request);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->attempts, 2);
}

TEST(Client, ErrorsAreTyped) {
  FakeServer server([](const Arrival&, Conn& c) {
    c.write(response(
        401,
        R"({"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}})"));
  });
  Client client(config_for(server));
  auto r = client.chat(hello());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kAuthentication);
  EXPECT_EQ(r.error().status, 401);
  EXPECT_EQ(r.error().code, "invalid_api_key");
  EXPECT_EQ(r.error().attempts, 1);
  ChatRequest empty;
  EXPECT_EQ(client.chat(empty).error().kind, ErrorKind::kInvalidRequest);

  ClientConfig unreachable;
  unreachable.base_url = "http://127.0.0.1:1";
  unreachable.retry.max_attempts = 2;
  unreachable.retry.base_delay = millis(1);
  Client c2(unreachable);
  EXPECT_EQ(c2.chat(hello()).error().kind, ErrorKind::kNetwork);
  ClientConfig bad_url;
  bad_url.base_url = "ftp://x";
  Client c3(bad_url);
  EXPECT_EQ(c3.chat(hello()).error().kind, ErrorKind::kInvalidRequest);
}

TEST(Client, ShutdownCancelsInFlightCalls) {
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  FakeServer server([&](const Arrival&, Conn&) {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(5), [&] { return release; });
  });
  std::promise<ChatResult> result;
  {
    Client client(config_for(server));
    client.chat_async(hello(), [&](ChatResult r) { result.set_value(std::move(r)); });
    while (server.arrivals().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    client.shutdown();
    auto f = result.get_future();
    ASSERT_EQ(f.wait_for(std::chrono::seconds(3)), std::future_status::ready);
    auto r = f.get();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::kCancelled);
    std::promise<ChatResult> after;
    client.chat_async(hello(), [&](ChatResult r2) { after.set_value(std::move(r2)); });
    EXPECT_EQ(after.get_future().get().error().kind, ErrorKind::kCancelled);
  }
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
}

TEST(Client, AwaitableAdapter) {
  FakeServer server([](const Arrival& a, Conn& c) {
    c.write(response(200, chat_body(model_of(a.body), "awaited")));
  });
  Client client(config_for(server));
  boost::asio::io_context ioc;
  std::string content;
  boost::asio::co_spawn(
      ioc,
      [&]() -> boost::asio::awaitable<void> {
        ChatResult r = co_await async_chat(client, hello(), boost::asio::use_awaitable);
        content = r.ok() ? r->content : r.error().message;
      },
      [](std::exception_ptr) {});
  ioc.run();
  EXPECT_EQ(content, "awaited");
}

TEST(Client, RawGet) {
  FakeServer server(
      [](const Arrival&, Conn& c) { c.write(response(200, R"({"queue_depth":7})")); });
  Client client(config_for(server));
  auto r = client.get("/v1/metrics/queue");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"({"queue_depth":7})");
  EXPECT_EQ(r->header("Content-Type"), "application/json");
  EXPECT_EQ(server.arrivals().at(0).method, "GET");
}

}  // namespace
}  // namespace bellwether
