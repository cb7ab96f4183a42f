// The request pipeline in process: a FakeClock, a fake upstream and a recording writer. Every
// test checks (Pipeline::send) that finish ran for every request and that nothing it gives back
// (permits, budget holds) is still held.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>

#include "gateway/admin.h"
#include "gateway/routes.h"
#include "pipeline_harness.h"

namespace bw::gateway::test {
namespace {

std::string bearer(const std::string& key) {
  return "Bearer " + key;
}

const std::string kBase = std::string(R"(listen: 127.0.0.1:0
workers: 1
admin: {key: )") + kAdminKey +
                          R"(}
providers:
  pa: {base_url: "http://127.0.0.1:9/v1"}
  pb: {base_url: "http://127.0.0.1:9/v1"}
model_groups:
  m:
    deployments: [{id: m-a, provider: pa, model: m}]
  pair:
    deployments:
      - {id: pair-a, provider: pa, model: pair-a}
      - {id: pair-b, provider: pb, model: pair-b}
  main:
    deployments: [{id: main-a, provider: pa, model: main}]
    fallbacks: [spare]
  spare:
    deployments: [{id: spare-a, provider: pb, model: spare}]
  one:
    deployments: [{id: one-a, provider: pa, model: one}]
    concurrency: {mode: fixed, initial: 1}
resilience:
  breaker: {consecutive_failures: 100, failure_rate: 0}
  retry: {max_attempts: 3, base: 1ms, cap: 2ms, deadline: 20s}
pricing:
  m: {input: 1, output: 2}
  one: {input: 1, output: 2}
plans:
  tight:
    limits: [{name: two-per-minute, rate: 2, period: minute}]
keys:
  - {name: tester, key: )" +
                          kKey + R"(}
  - {name: limited, key: sk-test-limited-0001, plan: tight}
  - {name: poor, key: sk-test-poor-000001, budget: {cap_usd: 0.000001, period: total}}
  - {name: rich, key: sk-test-rich-000001, budget: {cap_usd: 100, period: total}}
)";

bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

TEST(Pipeline, AnswersAndRecordsTheRequest) {
  Pipeline p(kBase);
  auto r = p.chat();
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-bellwether-model"), "m");
  EXPECT_EQ(r.header("x-bellwether-priority"), "1");
  EXPECT_FALSE(r.header("x-request-id").empty());
  EXPECT_TRUE(r.header("x-bellwether-fallback-from").empty());
  ASSERT_EQ(p.upstream->seen.size(), 1u);
  EXPECT_TRUE(has(p.upstream->seen[0].body, "\"model\":\"m\""));
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_TRUE(has(log[0], "\"status\":200")) << log[0];
  EXPECT_FALSE(has(log[0], "\"error\"")) << log[0];
}

TEST(Pipeline, MissingAndWrongKeysAre401InTheOpenAiShape) {
  Pipeline p(kBase);
  auto none = p.chat("m", {});
  EXPECT_EQ(none.status, 401);
  EXPECT_TRUE(has(none.body, R"("type":"invalid_request_error")")) << none.body;
  EXPECT_TRUE(has(none.body, R"("code":"invalid_api_key")")) << none.body;
  auto wrong = p.chat("m", {{"authorization", bearer("sk-nope")}});
  EXPECT_EQ(wrong.status, 401);
  EXPECT_TRUE(has(wrong.body, "Incorrect API key")) << wrong.body;
  EXPECT_TRUE(p.upstream->seen.empty());
}

// A thread remembers what a presented key found, per configuration snapshot: a snapshot without
// the key refuses it at once, and one with it (the same or a new one) takes it again.
TEST(Pipeline, AKeyIsLookedUpInTheSnapshotOfItsRequest) {
  Pipeline p(kBase);
  const auto with_key = p.runtime();
  EXPECT_EQ(p.chat().status, 200);
  auto cfg = std::make_shared<config::Config>(*p.config());
  std::erase_if(cfg->keys, [](const config::KeyConfig& k) { return k.name == "tester"; });
  p.use_runtime(std::make_shared<const Runtime>(cfg, 0));
  EXPECT_EQ(p.chat().status, 401);
  EXPECT_EQ(p.chat().status, 401);
  p.use_runtime(with_key);
  EXPECT_EQ(p.chat().status, 200);
  p.use_runtime(std::make_shared<const Runtime>(p.config(), 0));
  EXPECT_EQ(p.chat().status, 200);
}

// A presented key is matched against the keys this thread saw before by a compare of all its
// bytes: after the right key was taken, a key that differs from it in any one byte (the last
// ones included, which are compared as the key's last word) is refused, and the right key is
// still taken.
TEST(Pipeline, AKeyThatDiffersInAnyByteFromAKnownOneIsRefused) {
  Pipeline p(kBase);
  const std::string key = kKey;
  EXPECT_EQ(p.chat().status, 200);
  for (std::size_t i = 0; i < key.size(); ++i) {
    for (char c : std::string("0189aAzZ-_")) {
      if (c == key[i]) continue;
      std::string other = key;
      other[i] = c;
      EXPECT_EQ(p.chat("m", {{"authorization", bearer(other)}}).status, 401) << other;
    }
    EXPECT_EQ(p.chat().status, 200) << i;
  }
}

TEST(Pipeline, UnknownModelAndUrlAre404) {
  Pipeline p(kBase);
  auto model = p.chat("nope");
  EXPECT_EQ(model.status, 404);
  EXPECT_TRUE(has(model.body, R"("code":"model_not_found")")) << model.body;
  EXPECT_TRUE(has(model.body, R"("param":"model")")) << model.body;
  auto url = p.send("GET", "/v2/whatever");
  EXPECT_EQ(url.status, 404);
  EXPECT_TRUE(has(url.body, R"("code":"unknown_url")")) << url.body;
  auto method = p.send("GET", "/v1/chat/completions");
  EXPECT_EQ(method.status, 405);
  EXPECT_EQ(method.header("allow"), "POST");
}

TEST(Pipeline, RateLimitRefusalIs429WithRetryAfterAndNamesTheLimit) {
  Pipeline p(kBase);
  const std::vector<std::pair<std::string, std::string>> h = {
      {"authorization", bearer("sk-test-limited-0001")}};
  EXPECT_EQ(p.chat("m", h).status, 200);
  EXPECT_EQ(p.chat("m", h).status, 200);
  auto r = p.chat("m", h);
  EXPECT_EQ(r.status, 429);
  EXPECT_TRUE(has(r.body, R"("type":"rate_limit_exceeded")")) << r.body;
  EXPECT_FALSE(r.header("retry-after").empty());
  EXPECT_FALSE(r.header("x-ratelimit-limit-requests").empty());
  EXPECT_EQ(p.upstream->seen.size(), 2u);
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 3u);
  EXPECT_TRUE(has(log[2], R"("error":"rate_limited:two-per-minute")")) << log[2];
}

TEST(Pipeline, BudgetRefusalIs429InsufficientQuotaAndHoldsNothing) {
  Pipeline p(kBase);
  auto r = p.chat("m", {{"authorization", bearer("sk-test-poor-000001")}});
  EXPECT_EQ(r.status, 429);
  EXPECT_TRUE(has(r.body, R"("code":"insufficient_quota")")) << r.body;
  EXPECT_TRUE(p.upstream->seen.empty());
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_TRUE(has(log[0], R"("error":"budget:key:poor/total")")) << log[0];
}

TEST(Pipeline, BudgetIsSettledToTheActualCostOnSuccess) {
  Pipeline p(kBase);
  EXPECT_EQ(p.chat("m", {{"authorization", bearer("sk-test-rich-000001")}}).status, 200);
  auto snap = p.sh.budgets->snapshot("key:rich/total", p.clock.unix_millis());
  ASSERT_TRUE(snap);
  // 7 prompt tokens at $1/M and 5 completion tokens at $2/M.
  EXPECT_EQ(snap->spent_micro, 17);
  EXPECT_EQ(snap->reserved_micro, 0);
}

TEST(Pipeline, BudgetIsReleasedOnEveryExitPath) {
  Pipeline p(kBase);
  const std::vector<std::pair<std::string, std::string>> h = {
      {"authorization", bearer("sk-test-rich-000001")}};
  // Upstream error after retries, an upstream 400, an exception, a stream cut mid-way: the
  // harness checks after each that no reservation is left.
  p.upstream->answers = {[](const Seen&) -> Result<http::UpstreamResponse> {
    return make_error(502, "upstream_error", "upstream_connect_error", "refused");
  }};
  EXPECT_EQ(p.chat("m", h).status, 502);
  p.upstream->answers = {[](const Seen&) { return FakeUpstream::status(400); }};
  EXPECT_EQ(p.chat("m", h).status, 400);
  p.upstream->answers = {[](const Seen&) {
    return FakeUpstream::stream({"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"},
                                "upstream_reset");
  }};
  auto cut = p.chat("m", h, true);
  EXPECT_TRUE(cut.streamed);
  EXPECT_TRUE(has(cut.body, "upstream_reset")) << cut.body;
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 3u);
  EXPECT_TRUE(has(log[0], R"("error":"upstream_connect_error")")) << log[0];
  EXPECT_TRUE(has(log[1], R"("error":"upstream_400")")) << log[1];
  EXPECT_TRUE(has(log[2], R"("error":"upstream_reset")")) << log[2];
}

// The events of one upstream read leave in one write, passed through byte for byte (the usage
// chunk the client did not ask for is held back); an event that arrives alone is written at once,
// on its own.
TEST(Pipeline, StreamWritesEachReadsEventsTogetherAndALoneEventAtOnce) {
  Pipeline p(kBase);
  const std::string role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
  const std::string a = "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n";
  const std::string b = "data: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\r\n\r\n";
  const std::string usage =
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
  const std::string done = "data: [DONE]\n\n";
  p.upstream->answers = {[&](const Seen&) {
    // Three reads: one event alone, four events and half of the next, the rest.
    return FakeUpstream::stream({role, a + b + usage + done.substr(0, 7), done.substr(7)});
  }};
  auto r = p.chat("m", {{"authorization", bearer(kKey)}}, true);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.ended);
  EXPECT_EQ(r.writes, (std::vector<std::string>{role, a + b, done})) << r.body;
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_TRUE(has(log[0], R"("completion_tokens":2)")) << log[0];
}

// Usage chunks that a client did not ask for are cut out of a read wherever they are; the rest
// leaves in one write, also with more stretches between them than one write takes.
TEST(Pipeline, StreamHidesEveryUsageChunkOfAReadAndWritesTheRestTogether) {
  Pipeline p(kBase);
  const std::string a = "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n";
  const std::string b = "data: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\n";
  auto usage = [](int n) {
    return "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":" +
           std::to_string(n) + "}}\n\n";
  };
  const std::string done = "data: [DONE]\n\n";
  p.upstream->answers = {[&](const Seen&) {
    return FakeUpstream::stream({a + usage(1) + b + usage(2) + a + usage(3) + b + usage(4) + a +
                                 usage(5) + b + usage(6) + done});
  }};
  auto r = p.chat("m", {{"authorization", bearer(kKey)}}, true);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.ended);
  EXPECT_EQ(r.writes, (std::vector<std::string>{a + b + a + b + a + b + done})) << r.body;
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_TRUE(has(log[0], R"("completion_tokens":6)")) << log[0];
}

// A stream relayed the ways one can go: its reads at hand or awaited, its writes settling at
// once or awaited (a full socket), its client gone mid-way, its upstream cut.
struct StreamCase {
  std::vector<std::string> pieces;
  std::size_t at_hand = static_cast<std::size_t>(-1);  // Canned::at_hand
  bool at_once = true;                                 // RecordingWriter::settle_at_once
  std::size_t wait_write = static_cast<std::size_t>(-1);
  std::size_t fail_write = static_cast<std::size_t>(-1);
  std::string fail_after;
  // As piece `i` arrives (Canned::on_arrival): what the client got so far.
  std::function<void(std::size_t i, const Recorded& so_far)> on_arrival;
};

Recorded relay(Pipeline& p, const StreamCase& s, const std::string& key = kKey) {
  Recorded* out = nullptr;
  p.upstream->answers = {[&](const Seen&) {
    http::UpstreamResponse::Canned c;
    c.status = 200;
    c.headers.add("content-type", "text/event-stream");
    c.pieces = s.pieces;
    c.fail_after = s.fail_after;
    c.at_hand = s.at_hand;
    if (s.on_arrival) c.on_arrival = [&](std::size_t i) { s.on_arrival(i, *out); };
    return http::UpstreamResponse::canned(std::move(c));
  }};
  auto call = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("m", true),
                      {{"authorization", bearer(key)}});
  out = &call->out;
  if (s.at_once) call->w->settle_at_once(s.wait_write);
  call->w->fail_write(s.fail_write);
  EXPECT_TRUE(p.run_until([&] { return call->done; })) << "the request did not end";
  EXPECT_FALSE(call->failed) << "the request threw";
  p.check_invariants();
  return call->out;
}

const std::string kRole = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const std::string kHe = "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\n";
const std::string kLlo = "data: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\n";
const std::string kUsage =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
const std::string kDone = "data: [DONE]\n\n";

// A short stream that came whole in one read leaves in one write, which ends the client's
// stream, whether that write settles at once or is awaited; its usage is billed.
TEST(Pipeline, AStreamInOneReadIsRelayedWholeInOneWriteAndBilled) {
  for (bool at_once : {true, false}) {
    SCOPED_TRACE(at_once ? "writes settle at once" : "writes awaited");
    Pipeline p(kBase);
    StreamCase s;
    s.pieces = {kRole + kHe + kLlo + kUsage + kDone};
    s.at_once = at_once;
    auto r = relay(p, s, "sk-test-rich-000001");
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(r.streamed);
    EXPECT_TRUE(r.ended);
    EXPECT_EQ(r.writes, (std::vector<std::string>{kRole + kHe + kLlo + kDone})) << r.body;
    auto log = p.access_log();
    ASSERT_EQ(log.size(), 1u);
    EXPECT_TRUE(has(log[0], R"("status":200)")) << log[0];
    EXPECT_TRUE(has(log[0], R"("prompt_tokens":3)")) << log[0];
    EXPECT_TRUE(has(log[0], R"("completion_tokens":2)")) << log[0];
    auto snap = p.sh.budgets->snapshot("key:rich/total", p.clock.unix_millis());
    ASSERT_TRUE(snap);
    EXPECT_GT(snap->spent_micro, 0);
    EXPECT_EQ(snap->reserved_micro, 0);
  }
}

// An event that arrives alone is written before the next one arrives, however the writes before
// it went (at once, awaited, one of them awaited).
TEST(Pipeline, AStreamEventThatArrivesAloneIsWrittenBeforeTheNextArrives) {
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(mode);
    Pipeline p(kBase);
    StreamCase s;
    s.pieces = {kRole, kHe, kLlo, kUsage + kDone};
    s.at_hand = 1;  // the first piece came with the head; each other one comes later
    s.at_once = mode != 1;
    if (mode == 2) s.wait_write = 1;
    std::vector<std::size_t> writes_at_arrival;
    s.on_arrival = [&](std::size_t, const Recorded& so_far) {
      writes_at_arrival.push_back(so_far.writes.size());
    };
    auto r = relay(p, s);
    EXPECT_EQ(writes_at_arrival, (std::vector<std::size_t>{1, 2, 3}));
    EXPECT_TRUE(r.ended);
    EXPECT_EQ(r.writes, (std::vector<std::string>{kRole, kHe, kLlo, kDone})) << r.body;
    auto log = p.access_log();
    ASSERT_EQ(log.size(), 1u);
    EXPECT_TRUE(has(log[0], R"("completion_tokens":2)")) << log[0];
  }
}

// A client that leaves mid-stream (a write fails) is logged as 499 and billed what was relayed:
// the prompt estimate and the text written, whichever way the reads and writes went.
TEST(Pipeline, AStreamWhoseClientLeavesMidWayIsBilledWhatWasRelayed) {
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(mode);
    Pipeline p(kBase);
    StreamCase s;
    s.pieces = {kRole + kHe, kLlo, kUsage + kDone};
    if (mode == 1) s.at_once = false;
    if (mode == 2) s.at_hand = 1;
    s.fail_write = 1;
    auto r = relay(p, s, "sk-test-rich-000001");
    EXPECT_FALSE(r.ended);
    EXPECT_EQ(r.writes, (std::vector<std::string>{kRole + kHe})) << r.body;
    auto log = p.access_log();
    ASSERT_EQ(log.size(), 1u);
    EXPECT_TRUE(has(log[0], R"("status":499)")) << log[0];
    EXPECT_TRUE(has(log[0], R"("error":"client_closed_request")")) << log[0];
    // Not the upstream's usage, which never came: the relayed text's (2 chunks by then).
    EXPECT_FALSE(has(log[0], R"("prompt_tokens":3)")) << log[0];
    EXPECT_TRUE(has(log[0], R"("completion_tokens":2)")) << log[0];
    auto snap = p.sh.budgets->snapshot("key:rich/total", p.clock.unix_millis());
    ASSERT_TRUE(snap);
    EXPECT_GT(snap->spent_micro, 0);
  }
}

// An upstream that breaks off, or ends without [DONE], gets the client an error event and the
// end of its stream, whichever way the reads and writes went.
TEST(Pipeline, AStreamCutOrTruncatedEndsWithAnErrorEvent) {
  for (int mode = 0; mode < 4; ++mode) {
    SCOPED_TRACE(mode);
    Pipeline p(kBase);
    StreamCase s;
    s.pieces = {kRole + kHe, kLlo};
    if (mode % 2 == 1) s.at_once = false;
    if (mode >= 2) s.fail_after = "upstream_reset";
    auto r = relay(p, s);
    EXPECT_TRUE(r.ended);
    ASSERT_EQ(r.writes.size(), 3u) << r.body;
    EXPECT_EQ(r.writes[0], kRole + kHe);
    EXPECT_EQ(r.writes[1], kLlo);
    const std::string code = mode >= 2 ? "upstream_reset" : "upstream_truncated";
    EXPECT_TRUE(has(r.writes[2], code)) << r.writes[2];
    auto log = p.access_log();
    ASSERT_EQ(log.size(), 1u);
    EXPECT_TRUE(has(log[0], "\"error\":\"" + code + "\"")) << log[0];
    EXPECT_TRUE(has(log[0], R"("completion_tokens":2)")) << log[0];
  }
}

TEST(Pipeline, FinishRunsWhenTheUpstreamThrows) {
  Pipeline p(kBase);
  p.upstream->throw_next = true;
  auto call = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("m"),
                      {{"authorization", bearer("sk-test-rich-000001")}});
  ASSERT_TRUE(p.run_until([&] { return call->done; }));
  EXPECT_TRUE(call->failed);  // rethrown after finish
  p.check_invariants();
  EXPECT_EQ(p.access_log().size(), 1u);
}

TEST(Pipeline, Upstream503IsRetriedThenPassedOn) {
  Pipeline p(kBase);
  p.upstream->answers = {[](const Seen&) { return FakeUpstream::status(503); }};
  auto r = p.chat();
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.header("x-bellwether-model"), "m");
  EXPECT_EQ(p.upstream->seen.size(), 3u);  // retry.max_attempts
  auto log = p.access_log();
  EXPECT_TRUE(has(log.back(), R"("error":"upstream_503")")) << log.back();
  EXPECT_TRUE(has(log.back(), R"("attempts":3)")) << log.back();
}

// A Retry-After longer than the backoff cap is not waited for while holding a slot: the client
// gets the answer and the provider's Retry-After at once.
TEST(Pipeline, Upstream503WithALongRetryAfterIsPassedOnAtOnce) {
  Pipeline p(kBase);
  p.upstream->answers = {[](const Seen&) { return FakeUpstream::status(503, "1"); }};
  auto r = p.chat();
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.header("retry-after"), "1");
  EXPECT_EQ(p.upstream->seen.size(), 1u);
}

// The provider's headers are read whatever the case of their names: the ones passed to the
// client (openai-processing-ms, openai-version, x-ratelimit-limit-requests-provider) in the
// provider's order and no others, its rate-limit headers learned by the admission queue; a
// name that only starts like a wanted one is neither.
TEST(Pipeline, ProviderHeadersArePassedOnAndLearnedInAnyCase) {
  Pipeline p(kBase);
  for (const bool stream : {false, true}) {
    p.upstream->answers = {[stream](const Seen&) -> Result<http::UpstreamResponse> {
      http::UpstreamResponse::Canned c;
      c.status = 200;
      c.headers.add("content-type", stream ? "text/event-stream" : "application/json");
      c.headers.add("OpenAI-Version", "2020-10-01");
      c.headers.add("X-Request-Id", "from-the-provider");
      c.headers.add("Openai-Processing-MS", "42");
      c.headers.add("openai-processing", "no");
      c.headers.add("Retry-After-Whatever", "no");
      c.headers.add("X-RateLimit-Limit-Requests-Provider", "9");
      c.headers.add("X-RATELIMIT-LIMIT-REQUESTS", "100");
      c.headers.add("x-RateLimit-Remaining-Requests", "3");
      c.headers.add("Anthropic-RateLimit-Tokens-Limit", "5000");
      if (stream) {
        c.pieces = {"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":"
                    "1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n"};
      } else {
        c.pieces = {R"({"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,)"
                    R"("message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],)"
                    R"("usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}})"};
      }
      return http::UpstreamResponse::canned(std::move(c));
    }};
    auto r = stream ? p.chat("m", {{"authorization", bearer(kKey)}}, true) : p.chat();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("openai-version"), "2020-10-01");
    EXPECT_EQ(r.header("openai-processing-ms"), "42");
    EXPECT_EQ(r.header("x-ratelimit-limit-requests-provider"), "9");
    EXPECT_NE(r.header("x-request-id"), "from-the-provider");
    std::vector<std::string> passed;
    for (auto [n, v] : r.headers.items()) {
      if (n.starts_with("openai") || n.starts_with("OpenAI") || n.starts_with("Openai") ||
          n.starts_with("X-RateLimit") || n.starts_with("Retry") || n.starts_with("Anthropic") ||
          n.starts_with("X-RATE") || n.starts_with("x-RateLimit")) {
        passed.emplace_back(n);
      }
    }
    EXPECT_EQ(passed, (std::vector<std::string>{"OpenAI-Version", "Openai-Processing-MS",
                                                "X-RateLimit-Limit-Requests-Provider"}))
        << (stream ? "stream" : "buffered");
    const auto snap = p.sh.admission->snapshot();
    const auto row = std::find_if(snap.deployments.begin(), snap.deployments.end(),
                                  [](const auto& d) { return d.deployment == "m-a"; });
    ASSERT_NE(row, snap.deployments.end());
    EXPECT_TRUE(row->learned_fresh);
    EXPECT_EQ(row->learned_remaining_requests, 3);
  }
}

TEST(Pipeline, RetryGoesToTheOtherDeployment) {
  Pipeline p(kBase);
  p.upstream->answers = {[](const Seen&) { return FakeUpstream::status(502); },
                         [](const Seen&) { return FakeUpstream::ok("x"); }};
  auto r = p.chat("pair");
  EXPECT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(p.upstream->seen.size(), 2u);
  // The two attempts went to the two deployments.
  EXPECT_NE(has(p.upstream->seen[0].body, "pair-a"), has(p.upstream->seen[1].body, "pair-a"));
  EXPECT_EQ(r.header("x-bellwether-model"), "pair");
  auto log = p.access_log();
  EXPECT_TRUE(has(log.back(), R"("attempts":2)")) << log.back();
}

TEST(Pipeline, FallbackModelIsNamedInTheHeaders) {
  Pipeline p(kBase);
  p.upstream->answers = {[](const Seen& s) -> Result<http::UpstreamResponse> {
    if (has(s.body, "\"model\":\"main\"")) return FakeUpstream::status(503);
    return FakeUpstream::ok("spare");
  }};
  auto r = p.chat("main");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-bellwether-model"), "spare");
  EXPECT_EQ(r.header("x-bellwether-fallback-from"), "main");
  // The fallback is counted, and its tokens are the model's that served them.
  const std::string text = p.sh.registry.expose();
  EXPECT_TRUE(has(text, "bellwether_fallbacks_total{from=\"main\",to=\"spare\"} 1\n")) << text;
  EXPECT_TRUE(has(text, "bellwether_tokens_total{model=\"spare\",type=\"prompt\"} 7\n")) << text;
  EXPECT_FALSE(has(text, "bellwether_tokens_total{model=\"main\"")) << text;
}

// A request its own group answered: its tokens and spend are the group's, and no fallback counts.
TEST(Pipeline, AnAnswerOfTheRoutedGroupCountsNoFallback) {
  Pipeline p(kBase);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(p.chat().status, 200);
  const std::string text = p.sh.registry.expose();
  EXPECT_FALSE(has(text, "bellwether_fallbacks_total{")) << text;
  EXPECT_TRUE(has(text, "bellwether_tokens_total{model=\"m\",type=\"prompt\"} 14\n")) << text;
  EXPECT_TRUE(has(text, "bellwether_tokens_total{model=\"m\",type=\"completion\"} 10\n")) << text;
  // 2 x (7 x $1 + 5 x $2) per million tokens.
  EXPECT_TRUE(has(text, "bellwether_cost_usd_total{model=\"m\"} 3.4e-05\n")) << text;
}

// A capacity fallback answers a request that the cost guard reserved for before admission: the
// reservation covers its price, and it is sent its own output limit as max_tokens.
TEST(Pipeline, ACapacityFallbackIsReservedAtItsPriceAndSentItsOwnOutputLimit) {
  Pipeline p(R"(listen: 127.0.0.1:0
workers: 1
providers:
  pa: {base_url: "http://127.0.0.1:9/v1"}
model_groups:
  narrow:
    deployments: [{id: narrow-a, provider: pa, model: narrow}]
    concurrency: {mode: fixed, initial: 1}
    capacity_fallbacks: {p0: [pricey], p1: [pricey], p2: [pricey]}
  pricey:
    deployments: [{id: pricey-a, provider: pa, model: pricey}]
pricing:
  narrow: {input: 1, output: 2}
  pricey: {input: 100, output: 1000, max_output_tokens: 3}
keys:
  - {name: rich, key: sk-test-rich-000001, budget: {cap_usd: 100, period: total}}
)");
  p.upstream->held = true;
  const std::vector<std::pair<std::string, std::string>> h = {
      {"authorization", bearer("sk-test-rich-000001")}};
  auto first = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("narrow"), h);
  ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 1; }));
  auto second = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("narrow"), h);
  ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 2; }));
  // "Hello there": ceil(11/3) + 4 + 3 = 11 prompt tokens; max_tokens 5, pricey's limit 3.
  // Both holds are at pricey's worst case (11*100 + 3*1000), not narrow's (11*1 + 5*2 = 21):
  // either request may end up on pricey.
  auto snap = p.sh.budgets->snapshot("key:rich/total", p.clock.unix_millis());
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->reserved_micro, 2 * (11 * 100 + 3 * 1000));
  ASSERT_EQ(p.upstream->seen.size(), 2u);
  EXPECT_TRUE(has(p.upstream->seen[0].body, R"("model":"narrow")")) << p.upstream->seen[0].body;
  EXPECT_TRUE(has(p.upstream->seen[0].body, R"("max_tokens":5)")) << p.upstream->seen[0].body;
  EXPECT_TRUE(has(p.upstream->seen[1].body, R"("model":"pricey")")) << p.upstream->seen[1].body;
  EXPECT_TRUE(has(p.upstream->seen[1].body, R"("max_tokens":3)")) << p.upstream->seen[1].body;
  p.upstream->held = false;
  ASSERT_TRUE(p.run_until([&] { return first->done && second->done; }));
  EXPECT_EQ(first->out.status, 200);
  EXPECT_EQ(second->out.status, 200);
  EXPECT_EQ(second->out.header("x-bellwether-capacity-fallback-from"), "narrow");
  p.check_invariants();
  snap = p.sh.budgets->snapshot("key:rich/total", p.clock.unix_millis());
  EXPECT_EQ(snap->reserved_micro, 0) << "settling left part of a reservation held";
}

TEST(Pipeline, StreamIsRelayedWithUsageCounted) {
  Pipeline p(kBase);
  p.upstream->answers = {[](const Seen&) {
    return FakeUpstream::stream(
        {"data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n",
         "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
         "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,"
         "\"total_tokens\":5}}\n\ndata: [DONE]\n\n"});
  }};
  auto r = p.chat("m", {{"authorization", bearer(kKey)}}, true);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.streamed);
  EXPECT_TRUE(r.ended);
  EXPECT_TRUE(has(r.body, "hel")) << r.body;
  EXPECT_TRUE(has(r.body, "[DONE]")) << r.body;
  auto log = p.access_log();
  EXPECT_TRUE(has(log.back(), R"("prompt_tokens":3)")) << log.back();
}

TEST(Pipeline, ClientGoneWhileQueuedIsCancelledAndReleasesEverything) {
  Pipeline p(kBase);
  p.upstream->held = true;
  const std::vector<std::pair<std::string, std::string>> h = {
      {"authorization", bearer("sk-test-rich-000001")}};
  auto first = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("one"), h);
  ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 1; }));
  auto second = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("one"), h);
  ASSERT_TRUE(p.run_until([&] { return p.sh.admission->queued() == 1; }));
  second->w->disconnect();
  ASSERT_TRUE(p.run_until([&] { return second->done; }));
  EXPECT_EQ(second->out.status, 499);
  EXPECT_EQ(p.upstream->seen.size(), 1u);  // the queued one never reached the upstream
  p.upstream->held = false;
  ASSERT_TRUE(p.run_until([&] { return first->done; }));
  EXPECT_EQ(first->out.status, 200);
  p.check_invariants();
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 2u);
  EXPECT_TRUE(has(log[0], R"("error":"admission")")) << log[0];
}

TEST(Pipeline, ClientGoneDuringTheUpstreamAttemptSettlesThePrompt) {
  Pipeline p(kBase);
  p.upstream->held = true;
  auto call = p.start("POST", "/v1/chat/completions", Pipeline::chat_body("m"),
                      {{"authorization", bearer("sk-test-rich-000001")}});
  ASSERT_TRUE(p.run_until([&] { return p.upstream->parked == 1; }));
  call->w->disconnect();
  ASSERT_TRUE(p.run_until([&] { return call->done; }));
  p.check_invariants();
  auto snap = p.sh.budgets->snapshot("key:rich/total", p.clock.unix_millis());
  ASSERT_TRUE(snap);
  EXPECT_GT(snap->spent_micro, 0);  // the estimated prompt is charged
  auto log = p.access_log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_TRUE(has(log[0], R"("status":499)")) << log[0];
  EXPECT_TRUE(has(log[0], R"("error":"client_closed_request")")) << log[0];
}

// Every route, known or not, under every method, on both listeners: finish runs exactly once
// per request (Pipeline::send checks requests == finished after each). A new early return that
// skips finish fails here.
TEST(Pipeline, FinishRunsForEveryRouteAndMethod) {
  Pipeline p(kBase);
  std::vector<std::string> paths;
  for (const auto& r : kRoutes) paths.emplace_back(r.path);
  for (const char* a :
       {"/admin/status", "/admin/breakers", "/admin/keys", "/admin/keys/k1",
        "/admin/keys/k1/rotate", "/admin/spend", "/admin/budgets", "/admin/dead-letters",
        "/admin/dead-letters/1", "/admin/dead-letters/1/replay", "/admin/nope", "/nope"}) {
    paths.emplace_back(a);
  }
  int n = 0;
  for (const auto& path : paths) {
    for (const char* method : {"GET", "POST", "PATCH", "DELETE"}) {
      for (const auto& key : {std::string(kKey), std::string(kAdminKey), std::string()}) {
        std::vector<std::pair<std::string, std::string>> h;
        if (!key.empty()) h.emplace_back("authorization", bearer(key));
        auto r = p.send(method, path, Pipeline::chat_body("m"), h);
        EXPECT_NE(r.status, 0) << method << " " << path << ": no answer";
        ++n;
      }
    }
  }
  EXPECT_EQ(p.sh.finished.load(), static_cast<std::uint64_t>(n));
}

}  // namespace
}  // namespace bw::gateway::test
