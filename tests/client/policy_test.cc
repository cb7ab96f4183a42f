// Pure policy and codec tests: fake time, no I/O.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bellwether/client.h"

namespace bellwether {
namespace {

TEST(TokenBucket, BurstThenRefillAtRate) {
  TokenBucket b({.rate_per_s = 10, .burst = 3}, 0);
  EXPECT_EQ(b.try_acquire(0), 0);
  EXPECT_EQ(b.try_acquire(0), 0);
  EXPECT_EQ(b.try_acquire(0), 0);
  EXPECT_EQ(b.try_acquire(0), millis(100));  // one token per 100 ms
  EXPECT_EQ(b.try_acquire(millis(50)), millis(50));
  EXPECT_EQ(b.try_acquire(millis(100)), 0);
  EXPECT_DOUBLE_EQ(b.available(millis(100) + seconds(10)), 3.0);  // capped at burst
}

TEST(TokenBucket, DisabledAlwaysAdmits) {
  TokenBucket b({.rate_per_s = 0, .burst = 1}, 0);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(b.try_acquire(0), 0);
}

TEST(TokenBucket, RefundReturnsToken) {
  TokenBucket b({.rate_per_s = 1, .burst = 1}, 0);
  EXPECT_EQ(b.try_acquire(0), 0);
  b.refund();
  EXPECT_EQ(b.try_acquire(0), 0);
  EXPECT_EQ(b.try_acquire(0), seconds(1));
}

TEST(SlidingWindow, PerSecondLimitWaitsForOldestToLeave) {
  SlidingWindowLimiter w({.requests_per_minute = 0, .requests_per_second = 2});
  EXPECT_EQ(w.try_acquire(0), 0);
  EXPECT_EQ(w.try_acquire(millis(100)), 0);
  EXPECT_EQ(w.try_acquire(millis(200)), millis(800));
  EXPECT_EQ(w.try_acquire(seconds(1)), 0);  // the entry at 0 has left (window is (now-1s, now])
  EXPECT_EQ(w.try_acquire(seconds(1)), millis(100));
  EXPECT_EQ(w.in_last_second(seconds(1)), 2);
}

TEST(SlidingWindow, PerMinuteAndPerSecondTogether) {
  SlidingWindowLimiter w({.requests_per_minute = 3, .requests_per_second = 2});
  EXPECT_EQ(w.try_acquire(0), 0);
  EXPECT_EQ(w.try_acquire(0), 0);
  EXPECT_EQ(w.try_acquire(0), seconds(1));
  EXPECT_EQ(w.try_acquire(seconds(2)), 0);
  // Three in the minute: the next slot opens when the first leaves at 60 s.
  EXPECT_EQ(w.try_acquire(seconds(3)), seconds(57));
  EXPECT_EQ(w.in_last_minute(seconds(3)), 3);
  EXPECT_EQ(w.try_acquire(seconds(60)), 0);
}

TEST(CircuitBreaker, OpensAfterThresholdAndRecoversAfterTimeout) {
  CircuitBreaker b({.enabled = true,
                    .failure_threshold = 3,
                    .open_duration = seconds(10),
                    .half_open_max_probes = 1,
                    .success_threshold = 1});
  EXPECT_TRUE(b.allow(0));
  b.on_failure(0);
  b.on_failure(0);
  b.on_success(0);  // success resets the consecutive count
  b.on_failure(1);
  b.on_failure(2);
  EXPECT_EQ(b.state(2), BreakerState::kClosed);
  b.on_failure(3);
  EXPECT_EQ(b.state(3), BreakerState::kOpen);
  EXPECT_FALSE(b.allow(seconds(10)));
  EXPECT_TRUE(b.allow(seconds(10) + 3));  // half-open: one probe
  EXPECT_FALSE(b.allow(seconds(10) + 3));
  b.on_failure(seconds(11));  // failed probe reopens for a full open_duration
  EXPECT_EQ(b.state(seconds(20)), BreakerState::kOpen);
  EXPECT_TRUE(b.allow(seconds(21)));
  b.on_success(seconds(21));
  EXPECT_EQ(b.state(seconds(21)), BreakerState::kClosed);
}

TEST(CircuitBreaker, AbandonedProbeFreesSlot) {
  CircuitBreaker b({.enabled = true, .failure_threshold = 1, .open_duration = seconds(1)});
  b.on_failure(0);
  EXPECT_TRUE(b.allow(seconds(1)));
  EXPECT_FALSE(b.allow(seconds(1)));
  b.on_abandon();
  EXPECT_TRUE(b.allow(seconds(1)));
}

TEST(Retry, FullJitterBackoffBounds) {
  RetryPolicy p;
  p.base_delay = millis(100);
  p.max_delay = seconds(1);
  EXPECT_EQ(backoff_delay(p, 0, 0.0), 0);
  EXPECT_EQ(backoff_delay(p, 0, 0.5), millis(50));
  EXPECT_EQ(backoff_delay(p, 2, 0.5), millis(200));
  EXPECT_EQ(backoff_delay(p, 10, 0.5), millis(500));  // capped by max_delay
}

TEST(Retry, ServerHintPrecedence) {
  RateLimitInfo info;
  EXPECT_FALSE(server_wait_hint(info).has_value());
  info.remaining_requests = 5;
  info.reset_requests = seconds(6);
  EXPECT_FALSE(server_wait_hint(info).has_value());  // not exhausted: no hint
  info.remaining_requests = 0;
  EXPECT_EQ(server_wait_hint(info), seconds(6));
  info.remaining_tokens = 0;
  info.reset_tokens = seconds(9);
  EXPECT_EQ(server_wait_hint(info), seconds(9));
  info.retry_after_s = 2;
  EXPECT_EQ(server_wait_hint(info), seconds(2));
  RetryPolicy p;
  p.base_delay = millis(100);
  EXPECT_EQ(retry_delay(p, 0, 0.0, seconds(2)), seconds(2));
  EXPECT_EQ(retry_delay(p, 0, 0.5, seconds(2)), seconds(2) + millis(50));
  p.honor_retry_after = false;
  EXPECT_EQ(retry_delay(p, 0, 0.5, seconds(2)), millis(50));
}

TEST(Parse, GoDurations) {
  EXPECT_EQ(parse_go_duration("1s"), seconds(1));
  EXPECT_EQ(parse_go_duration("6m0s"), seconds(360));
  EXPECT_EQ(parse_go_duration("20ms"), millis(20));
  EXPECT_EQ(parse_go_duration("1.5s"), millis(1500));
  EXPECT_EQ(parse_go_duration("1h2m3s"), seconds(3723));
  EXPECT_EQ(parse_go_duration("250us"), 250'000);
  EXPECT_EQ(parse_go_duration("7"), seconds(7));
  EXPECT_FALSE(parse_go_duration("").has_value());
  EXPECT_FALSE(parse_go_duration("abc").has_value());
  EXPECT_FALSE(parse_go_duration("5x").has_value());
  EXPECT_FALSE(parse_go_duration("5s3").has_value());
}

TEST(Parse, RetryAfter) {
  EXPECT_EQ(parse_retry_after("1"), 1.0);
  EXPECT_EQ(parse_retry_after(" 2.5 "), 2.5);
  EXPECT_FALSE(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").has_value());
  EXPECT_FALSE(parse_retry_after("-1").has_value());
}

TEST(RateWindow, CountsLastSixtySeconds) {
  RateWindow w;
  w.add(seconds(0));
  w.add(seconds(10), 2);
  w.add(seconds(59));
  EXPECT_EQ(w.last_minute(seconds(59)), 4u);
  EXPECT_EQ(w.last_minute(seconds(60)), 3u);  // second 0 rolled out
  EXPECT_EQ(w.last_minute(seconds(70)), 1u);
  EXPECT_EQ(w.last_minute(seconds(500)), 0u);
}

TEST(Cost, PriceTableAndBudget) {
  PriceTable prices;
  prices.set("gpt", {.input_per_mtok = 2.0, .output_per_mtok = 8.0});
  EXPECT_DOUBLE_EQ(prices.cost("gpt", Usage{1'000'000, 500'000, 0}), 6.0);
  EXPECT_DOUBLE_EQ(prices.cost("unknown", Usage{1000, 1000, 0}), 0.0);
  CostTracker t(1.0);
  EXPECT_TRUE(t.try_reserve(0.6));
  EXPECT_FALSE(t.try_reserve(0.5));
  t.settle(0.6, 0.2);
  EXPECT_DOUBLE_EQ(t.spent(), 0.2);
  EXPECT_DOUBLE_EQ(t.reserved(), 0.0);
  EXPECT_TRUE(t.try_reserve(0.8));
  t.release(0.8);
  EXPECT_FALSE(t.try_reserve(0.81));
}

TEST(Codec, SerializeRequest) {
  ChatRequest r;
  r.model = "m";
  r.messages = {{"user", "hi \"there\""}};
  r.max_tokens = 7;
  EXPECT_EQ(
      serialize_chat_request(r, "m2", false),
      R"({"model":"m2","messages":[{"role":"user","content":"hi \"there\""}],"max_tokens":7})");
  EXPECT_EQ(serialize_chat_request(r, "m", true),
            R"({"model":"m","messages":[{"role":"user","content":"hi \"there\""}],"max_tokens":7,)"
            R"("stream":true,"stream_options":{"include_usage":true}})");
}

TEST(Codec, ParseResponseAndError) {
  auto r = parse_chat_response(
      R"({"id":"x","model":"m","choices":[{"message":{"content":"hello"},"finish_reason":"stop"}],)"
      R"("usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->content, "hello");
  EXPECT_EQ(r->usage.completion_tokens, 4);
  EXPECT_TRUE(r->has_usage);
  EXPECT_FALSE(parse_chat_response("{not json").ok());
  EXPECT_EQ(parse_chat_response("{not json").error().kind, ErrorKind::kProtocol);
  auto e = parse_error_response(
      429,
      R"({"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rpm"}})");
  EXPECT_EQ(e.kind, ErrorKind::kRateLimited);
  EXPECT_EQ(e.message, "slow down");
  EXPECT_EQ(e.type, "rate_limit_error");
  EXPECT_EQ(e.code, "rpm");
  EXPECT_EQ(parse_error_response(502, "<html>bad gateway</html>").message,
            "HTTP 502: <html>bad gateway</html>");
}

TEST(Sse, ParsesEventsSplitAtEveryByte) {
  const std::string wire =
      ": keep-alive\r\n\r\n"
      "data: {\"a\":1}\r\n\r\n"
      "event: x\ndata: line1\ndata: line2\n\n"
      "data:[DONE]\n\n";
  std::vector<std::string> whole, split;
  SseParser p1, p2;
  ASSERT_EQ(p1.feed(wire,
                    [&](std::string_view d) {
                      whole.emplace_back(d);
                      return true;
                    }),
            SseParser::Status::kOk);
  for (char c : wire)
    ASSERT_EQ(p2.feed(std::string_view(&c, 1),
                      [&](std::string_view d) {
                        split.emplace_back(d);
                        return true;
                      }),
              SseParser::Status::kOk);
  const std::vector<std::string> expected{"{\"a\":1}", "line1\nline2", "[DONE]"};
  EXPECT_EQ(whole, expected);
  EXPECT_EQ(split, expected);
}

TEST(Sse, BoundAndStop) {
  SseParser small(8);
  EXPECT_EQ(small.feed("data: 0123456789\n\n", [](std::string_view) { return true; }),
            SseParser::Status::kTooLarge);
  SseParser p;
  int n = 0;
  EXPECT_EQ(p.feed("data: 1\n\ndata: 2\n\n", [&](std::string_view) { return ++n < 1; }),
            SseParser::Status::kStopped);
  EXPECT_EQ(n, 1);
}

TEST(Codec, ParseChunk) {
  auto c = parse_chat_chunk(
      R"({"id":"c","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"He"},"finish_reason":null}]})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->content, "He");
  EXPECT_EQ(c->role, "assistant");
  EXPECT_FALSE(c->usage.has_value());
  auto u = parse_chat_chunk(
      R"({"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}})");
  ASSERT_TRUE(u.ok());
  ASSERT_TRUE(u->usage.has_value());
  EXPECT_EQ(u->usage->total_tokens, 3);
}

}  // namespace
}  // namespace bellwether
