// Gateway core through real processes: `bellwether serve` in front of `bellwether sim`.
#include <gtest/gtest.h>
#include <signal.h>

#include <regex>
#include <thread>

#include "harness.h"

namespace bw::test {
namespace {

constexpr const char* kKey = "sk-test-core-0001";

std::string sim_yaml() {
  return R"(sim:
  workers: 2
  defaults: {ttft: {median_ms: 5}, itl: {median_ms: 2}, completion_tokens: 12}
  models:
    provider-fast: {ttft: {median_ms: 5}, itl: {median_ms: 1}, completion_tokens: 12}
    we"ird: {ttft: {median_ms: 1}, itl: {median_ms: 1}, completion_tokens: 3}
    slow-stream: {ttft: {median_ms: 20}, itl: {median_ms: 150}, completion_tokens: 12}
    cancel-me: {ttft: {median_ms: 10}, itl: {median_ms: 200}, completion_tokens: 60}
    stall: {stall_rate: 1.0}
)";
}

std::string gw_yaml(int sim_port) {
  auto base = "http://127.0.0.1:" + std::to_string(sim_port) + "/v1";
  return R"(server:
  max_body_bytes: 4KiB
  max_header_bytes: 8KiB
  max_headers: 50
  drain_timeout: 10s
admin:
  key: admin-key-0123456789abcdef
providers:
  sim:
    base_url: )" +
         base + R"(
    api_key_env: SIM_PROVIDER_KEY
  sim-timeout:
    base_url: )" +
         base + R"(
    first_byte_timeout: 400ms
model_groups:
  public-model:
    deployments: [{provider: sim, model: provider-fast}]
  weird:
    deployments: [{provider: sim, model: 'we"ird'}]
  slow:
    deployments: [{provider: sim, model: slow-stream}]
  cancel:
    deployments: [{provider: sim, model: cancel-me}]
  queued:
    deployments: [{provider: sim, model: cancel-me}]
    concurrency: {mode: fixed, initial: 1}
  stalled:
    deployments: [{provider: sim-timeout, model: stall}]
keys:
  - {name: tester, key: )" +
         std::string(kKey) + R"(}
)";
}

class GatewayCore : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    sim_ = new Sim(start_sim(sim_yaml()));
    gw_ = new Gw(start_gateway(gw_yaml(sim_->port), {{"SIM_PROVIDER_KEY", "provider-secret-xyz"}}));
  }
  static void TearDownTestSuite() {
    delete gw_;
    delete sim_;
  }
  static std::string sim_last() { return request(sim_->port, "GET", "/sim/last").body; }
  static std::string sim_stats() { return request(sim_->port, "GET", "/sim/stats").body; }
  static Sim* sim_;
  static Gw* gw_;
};
Sim* GatewayCore::sim_ = nullptr;
Gw* GatewayCore::gw_ = nullptr;

TEST_F(GatewayCore, BufferedCompletionWithUsageAndRequestId) {
  auto r = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", false), kKey,
                     {{"X-Request-Id", "my-trace-42"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-request-id"), "my-trace-42");
  EXPECT_EQ(r.header("x-bellwether-model"), "public-model");
  EXPECT_NE(r.body.find("\"completion_tokens\":12"), std::string::npos) << r.body;
  // A generated id when the client sends none.
  auto r2 = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", false), kKey);
  EXPECT_EQ(r2.header("x-request-id").rfind("req_", 0), 0u);
}

// The head of a buffered answer, byte for byte: the gateway's headers, then the earlier phases'
// (the key's rate limits, the priority), the provider's content type, the framing; none of the
// provider's other headers (its x-request-id echo, its own server line, its content-length)
// pass. The remaining counts and reset times vary from request to request: masked.
TEST_F(GatewayCore, BufferedAnswerHeadBytes) {
  auto r = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", false), kKey,
                     {{"X-Request-Id", "head-bytes-1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string head = std::regex_replace(
      r.head, std::regex("(x-ratelimit-(remaining|reset)-(requests|tokens): )[^\r]*"), "$1*");
  EXPECT_EQ(head,
            "HTTP/1.1 200 OK\r\n"
            "server: bellwether\r\n"
            "x-request-id: head-bytes-1\r\n"
            "x-bellwether-model: public-model\r\n"
            "x-ratelimit-limit-requests: 400\r\n"
            "x-ratelimit-remaining-requests: *\r\n"
            "x-ratelimit-reset-requests: *\r\n"
            "x-ratelimit-limit-tokens: 5000000\r\n"
            "x-ratelimit-remaining-tokens: *\r\n"
            "x-ratelimit-reset-tokens: *\r\n"
            "x-bellwether-priority: 1\r\n"
            "content-type: application/json\r\n"
            "content-length: " +
                std::to_string(r.body.size()) +
                "\r\n"
                "connection: close\r\n"
                "\r\n");
}

// The head of a relayed stream, byte for byte: the gateway's headers, the earlier phases', the
// event-stream content type and no-cache, the chunked framing.
TEST_F(GatewayCore, StreamAnswerHeadBytes) {
  auto r = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", true), kKey,
                     {{"X-Request-Id", "head-bytes-2"}});
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string head = std::regex_replace(
      r.head, std::regex("(x-ratelimit-(remaining|reset)-(requests|tokens): )[^\r]*"), "$1*");
  EXPECT_EQ(head,
            "HTTP/1.1 200 OK\r\n"
            "server: bellwether\r\n"
            "x-request-id: head-bytes-2\r\n"
            "x-bellwether-model: public-model\r\n"
            "x-ratelimit-limit-requests: 400\r\n"
            "x-ratelimit-remaining-requests: *\r\n"
            "x-ratelimit-reset-requests: *\r\n"
            "x-ratelimit-limit-tokens: 5000000\r\n"
            "x-ratelimit-remaining-tokens: *\r\n"
            "x-ratelimit-reset-tokens: *\r\n"
            "x-bellwether-priority: 1\r\n"
            "content-type: text/event-stream\r\n"
            "cache-control: no-cache\r\n"
            "transfer-encoding: chunked\r\n"
            "connection: close\r\n"
            "\r\n");
  EXPECT_EQ(count(r.body, "data: [DONE]"), 1u);
}

TEST_F(GatewayCore, ModelMappingRewritesBodyAndStripsClientCredentials) {
  auto r = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", false), kKey);
  ASSERT_EQ(r.status, 200);
  auto last = sim_last();
  EXPECT_NE(last.find(R"(\"model\":\"provider-fast\")"), std::string::npos) << last;
  EXPECT_EQ(last.find(kKey), std::string::npos) << "client key leaked upstream";
  EXPECT_NE(last.find("\"authorization\":\"Bearer provider-secret-xyz\""), std::string::npos);
  // A provider model id that needs escaping stays valid JSON.
  auto w = post_json(gw_->port, "/v1/chat/completions", chat_body("weird", false), kKey);
  ASSERT_EQ(w.status, 200) << w.body;
  EXPECT_NE(w.body.find(R"("model":"we\"ird")"), std::string::npos) << w.body;
}

TEST_F(GatewayCore, StreamPassesEventsAndHidesUsageChunkUnlessAsked) {
  auto r = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", true), kKey);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "text/event-stream");
  EXPECT_EQ(r.header("transfer-encoding"), "chunked");
  EXPECT_EQ(count(r.body, "data: [DONE]"), 1u);
  EXPECT_EQ(count(r.body, "\"delta\":{\"content\""), 12u);
  EXPECT_EQ(r.body.find("\"usage\""), std::string::npos) << "usage chunk leaked: " << r.body;
  // The gateway asked upstream for usage anyway.
  EXPECT_NE(sim_last().find("include_usage"), std::string::npos);

  auto with_usage = std::string(
      R"({"model":"public-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]})");
  auto u = post_json(gw_->port, "/v1/chat/completions", with_usage, kKey);
  ASSERT_EQ(u.status, 200);
  EXPECT_EQ(count(u.body, "\"usage\":{\"prompt_tokens\""), 1u) << u.body;
}

TEST_F(GatewayCore, SseArrivesIncrementally) {
  StreamReader s(gw_->port, raw_post("/v1/chat/completions", chat_body("slow", true), kKey));
  std::vector<TimedChunk> chunks;
  TimedChunk c;
  double first_token = -1, last = 0;
  std::string all;
  while (s.read_some(c, std::chrono::seconds(5))) {
    all += c.data;
    if (first_token < 0 && c.data.find("\"content\":\"the\"") != std::string::npos)
      first_token = c.at_ms;
    last = c.at_ms;
    if (all.find("[DONE]") != std::string::npos) break;
  }
  ASSERT_GT(first_token, 0) << all;
  // 12 tokens 150 ms apart: the first arrives well before the last is generated.
  EXPECT_LT(first_token + 1000, last) << "first " << first_token << " last " << last;
}

TEST_F(GatewayCore, ClientDisconnectCancelsUpstream) {
  auto before = sim_stats();
  auto cancelled = [&](const std::string& stats) {
    auto p = stats.find("\"cancelled\":");
    return std::atoi(stats.c_str() + p + 12);
  };
  int c0 = cancelled(before);
  {
    StreamReader s(gw_->port, raw_post("/v1/chat/completions", chat_body("cancel", true), kKey));
    TimedChunk c;
    std::string all;
    while (all.find("\"content\":\"the\"") == std::string::npos && s.read_some(c)) all += c.data;
    s.close();
  }
  int c1 = c0;
  for (int i = 0; i < 400 && c1 == c0; ++i) {  // 20 s
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    c1 = cancelled(sim_stats());
  }
  EXPECT_EQ(c1, c0 + 1) << sim_stats();
}

// The number after "key": in a flat JSON document (from `from`); -1 when absent.
long long json_int(const std::string& doc, const std::string& key, std::size_t from = 0) {
  auto p = doc.find("\"" + key + "\":", from);
  if (p == std::string::npos || p == std::string::npos) return -1;
  return std::atoll(doc.c_str() + p + key.size() + 3);
}

// Polls `f` every 20 ms until it returns true or `limit` passes; returns the time it took.
template <class F>
std::chrono::milliseconds wait_for(F f, std::chrono::milliseconds limit) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!f() && std::chrono::steady_clock::now() - t0 < limit) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               t0);
}

// The access-log line of a request id ("" until it is written).
std::string access_line(const std::string& log_path, const std::string& request_id) {
  std::string log;
  wait_for(
      [&] {
        log = read_file(log_path);
        return log.find("\"" + request_id + "\"") != std::string::npos;
      },
      std::chrono::seconds(3));
  auto at = log.find("\"" + request_id + "\"");
  if (at == std::string::npos) return "";
  auto start = log.rfind('\n', at);
  start = start == std::string::npos ? 0 : start + 1;
  return log.substr(start, log.find('\n', at) - start);
}

// A buffered completion takes 12 s to generate (60 tokens x 200 ms). The client leaves after the
// upstream has started: the gateway notices at once and drops the upstream request, so the
// provider stops generating, instead of letting it run to the end for nobody.
TEST_F(GatewayCore, ClientDisconnectCancelsBufferedUpstream) {
  const long long c0 = json_int(sim_stats(), "cancelled");
  const long long r0 = json_int(sim_stats(), "requests");
  std::chrono::milliseconds noticed{};
  {
    StreamReader s(gw_->port, raw_post("/v1/chat/completions", chat_body("cancel", false), kKey,
                                       {{"X-Request-Id", "buffered-gone-1"}}));
    wait_for([&] { return json_int(sim_stats(), "requests") == r0 + 1; }, std::chrono::seconds(5));
    ASSERT_EQ(json_int(sim_stats(), "requests"), r0 + 1) << sim_stats();
    s.close();
    noticed = wait_for([&] { return json_int(sim_stats(), "cancelled") == c0 + 1; },
                       std::chrono::seconds(5));
  }
  EXPECT_EQ(json_int(sim_stats(), "cancelled"), c0 + 1) << sim_stats();
  EXPECT_LT(noticed.count(), 2000) << "the upstream ran on after the client had gone";
  auto line = access_line(gw_->access_log, "buffered-gone-1");
  EXPECT_NE(line.find("\"status\":499"), std::string::npos) << line;
  EXPECT_NE(line.find("\"cancelled\":true"), std::string::npos) << line;
  // The provider read the prompt: it is charged (estimated), nothing is charged as generated.
  EXPECT_GT(json_int(line, "prompt_tokens"), 0) << line;
  EXPECT_EQ(json_int(line, "completion_tokens"), 0) << line;
}

// With one slot taken, a second request waits in the queue. Its client leaves: it leaves the
// queue at once (counted as cancelled) and never reaches the upstream.
TEST_F(GatewayCore, QueuedRequestOfAGoneClientLeavesTheQueueAndIsNeverSent) {
  auto queue = [] {
    return request(gw_->port, "GET", "/v1/metrics/queue", "",
                   {{"Authorization", "Bearer admin-key-0123456789abcdef"}})
        .body;
  };
  auto cancelled_p1 = [&] {
    auto q = queue();
    return json_int(q, "p1", q.find("\"cancelled\":{"));
  };
  const long long r0 = json_int(sim_stats(), "requests");
  const long long c0 = json_int(sim_stats(), "cancelled");
  const long long q0 = cancelled_p1();
  ASSERT_GE(q0, 0) << queue();
  StreamReader first(gw_->port, raw_post("/v1/chat/completions", chat_body("queued", false), kKey,
                                         {{"X-Request-Id", "queued-first"}}));
  wait_for([&] { return json_int(sim_stats(), "requests") == r0 + 1; }, std::chrono::seconds(5));
  ASSERT_EQ(json_int(sim_stats(), "requests"), r0 + 1) << sim_stats();
  {
    StreamReader second(gw_->port, raw_post("/v1/chat/completions", chat_body("queued", false),
                                            kKey, {{"X-Request-Id", "queued-second"}}));
    wait_for([&] { return json_int(queue(), "queue_depth") == 1; }, std::chrono::seconds(5));
    ASSERT_EQ(json_int(queue(), "queue_depth"), 1) << queue();
    second.close();
    auto left =
        wait_for([&] { return json_int(queue(), "queue_depth") == 0; }, std::chrono::seconds(5));
    EXPECT_EQ(json_int(queue(), "queue_depth"), 0) << queue();
    EXPECT_LT(left.count(), 2000) << "the waiter stayed queued after its client had gone";
  }
  EXPECT_EQ(cancelled_p1(), q0 + 1) << queue();
  first.close();
  wait_for([&] { return json_int(sim_stats(), "cancelled") == c0 + 1; }, std::chrono::seconds(5));
  EXPECT_EQ(json_int(sim_stats(), "cancelled"), c0 + 1) << sim_stats();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(json_int(sim_stats(), "requests"), r0 + 1) << "the abandoned request was sent upstream";
  auto line = access_line(gw_->access_log, "queued-second");
  EXPECT_NE(line.find("\"status\":499"), std::string::npos) << line;
  EXPECT_NE(line.find("\"cancelled\":true"), std::string::npos) << line;
}

TEST_F(GatewayCore, UsageIsRecordedInAccessLog) {
  auto r = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", true, 7), kKey,
                     {{"X-Request-Id", "usage-check-1"}});
  ASSERT_EQ(r.status, 200);
  std::string log;
  for (int i = 0; i < 400 && log.find("usage-check-1") == std::string::npos; ++i) {  // 20 s
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    log = read_file(gw_->access_log);
  }
  auto line_start = log.find("usage-check-1");
  ASSERT_NE(line_start, std::string::npos);
  auto line = log.substr(log.rfind('\n', line_start) + 1);
  line = line.substr(0, line.find('\n'));
  EXPECT_NE(line.find("\"completion_tokens\":7"), std::string::npos) << line;
  EXPECT_NE(line.find("\"key_id\":\"tester\""), std::string::npos) << line;
  EXPECT_EQ(log.find(kKey), std::string::npos) << "secret in access log";
}

TEST_F(GatewayCore, ErrorStatusesUseOpenAiShape) {
  auto no_key = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", false), "");
  EXPECT_EQ(no_key.status, 401);
  EXPECT_NE(no_key.body.find("\"code\":\"invalid_api_key\""), std::string::npos);
  auto bad_key = post_json(gw_->port, "/v1/chat/completions", chat_body("public-model", false),
                           "nope-nope-nope");
  EXPECT_EQ(bad_key.status, 401);
  auto x_api = request(gw_->port, "POST", "/v1/chat/completions", chat_body("public-model", false),
                       {{"x-api-key", kKey}});
  EXPECT_EQ(x_api.status, 200);
  auto unknown_path = request(gw_->port, "GET", "/v1/nothing-here");
  EXPECT_EQ(unknown_path.status, 404);
  EXPECT_NE(unknown_path.body.find("\"error\":{\"message\""), std::string::npos);
  auto unknown_model =
      post_json(gw_->port, "/v1/chat/completions", chat_body("no-such", false), kKey);
  EXPECT_EQ(unknown_model.status, 404);
  EXPECT_NE(unknown_model.body.find("model_not_found"), std::string::npos);
  auto wrong_method = request(gw_->port, "GET", "/v1/chat/completions", "",
                              {{"Authorization", std::string("Bearer ") + kKey}});
  EXPECT_EQ(wrong_method.status, 405);
  EXPECT_EQ(wrong_method.header("allow"), "POST");
  auto missing_model = post_json(gw_->port, "/v1/chat/completions", R"({"messages":[]})", kKey);
  EXPECT_EQ(missing_model.status, 400);
  EXPECT_NE(missing_model.body.find("\"param\":\"model\""), std::string::npos);
  auto models = request(gw_->port, "GET", "/v1/models", "",
                        {{"Authorization", std::string("Bearer ") + kKey}});
  EXPECT_EQ(models.status, 200);
  EXPECT_NE(models.body.find("\"id\":\"public-model\""), std::string::npos);
  EXPECT_EQ(request(gw_->port, "GET", "/healthz").status, 200);
  EXPECT_EQ(request(gw_->port, "GET", "/readyz").status, 200);
}

TEST_F(GatewayCore, BodyAndHeaderLimits) {
  // 413 is decided from Content-Length before the body is read.
  std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                     std::string(kKey) + "\r\nContent-Length: 100000\r\n\r\n";
  auto big = raw_request(gw_->port, head);
  EXPECT_EQ(big.status, 413);
  EXPECT_TRUE(big.closed);
  // Chunked bodies are limited while they are read.
  std::string chunked =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
      "chunked\r\n\r\n2000\r\n" +
      std::string(0x2000, 'a') + "\r\n0\r\n\r\n";
  EXPECT_EQ(raw_request(gw_->port, chunked).status, 413);
  auto huge_header = request(gw_->port, "GET", "/healthz", "", {{"X-Big", std::string(9000, 'h')}});
  EXPECT_EQ(huge_header.status, 431);
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i < 60; ++i) many.emplace_back("X-H" + std::to_string(i), "v");
  EXPECT_EQ(request(gw_->port, "GET", "/healthz", "", many).status, 431);
}

TEST_F(GatewayCore, SmugglingDefences) {
  std::string cl_te =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: "
      "chunked\r\n\r\n0\r\n\r\n";
  auto r1 = raw_request(gw_->port, cl_te);
  EXPECT_EQ(r1.status, 400);
  EXPECT_TRUE(r1.closed);
  std::string bad_chunk =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
      "chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
  auto r2 = raw_request(gw_->port, bad_chunk);
  EXPECT_EQ(r2.status, 400);
  EXPECT_TRUE(r2.closed);
  std::string te_gzip =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc";
  EXPECT_EQ(raw_request(gw_->port, te_gzip).status, 400);
  std::string bad_header = "GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n";
  EXPECT_EQ(raw_request(gw_->port, bad_header).status, 400);
  std::string two_cl =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: "
      "4\r\n\r\nabcd";
  EXPECT_EQ(raw_request(gw_->port, two_cl).status, 400);
}

TEST_F(GatewayCore, MalformedJson) {
  auto truncated = post_json(gw_->port, "/v1/chat/completions",
                             R"({"model":"public-model","messages":[{"role":"user")", kKey);
  EXPECT_EQ(truncated.status, 400);
  EXPECT_NE(truncated.body.find("invalid_json"), std::string::npos);
  std::string deep = R"({"model":"public-model","messages":[{"role":"user","content":"x"}],"x":)" +
                     std::string(1500, '[') + std::string(1500, ']') + "}";
  auto nested = post_json(gw_->port, "/v1/chat/completions", deep, kKey);
  EXPECT_EQ(nested.status, 400) << nested.body;
  std::string bad_utf8 =
      "{\"model\":\"public-model\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}";
  auto utf = post_json(gw_->port, "/v1/chat/completions", bad_utf8, kKey);
  EXPECT_EQ(utf.status, 400);
  EXPECT_NE(utf.body.find("UTF-8"), std::string::npos) << utf.body;
  auto not_object = post_json(gw_->port, "/v1/chat/completions", "[1,2]", kKey);
  EXPECT_EQ(not_object.status, 400);
}

TEST_F(GatewayCore, UpstreamTimeoutIs504) {
  auto t0 = std::chrono::steady_clock::now();
  auto r = post_json(gw_->port, "/v1/chat/completions", chat_body("stalled", false), kKey);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_EQ(r.status, 504) << r.body;
  EXPECT_NE(r.body.find("upstream_timeout"), std::string::npos);
  EXPECT_LT(ms, 3000);
}

TEST_F(GatewayCore, EmbeddingsAndCompletions) {
  auto e = post_json(gw_->port, "/v1/embeddings", R"({"model":"public-model","input":["a","bb"]})",
                     kKey);
  ASSERT_EQ(e.status, 200) << e.body;
  EXPECT_EQ(count(e.body, "\"object\":\"embedding\""), 2u);
  auto c = post_json(gw_->port, "/v1/completions",
                     R"({"model":"public-model","prompt":"Say hi","max_tokens":4})", kKey);
  ASSERT_EQ(c.status, 200) << c.body;
  EXPECT_NE(c.body.find("\"completion_tokens\":4"), std::string::npos);
}

// `max_tokens: limit` (the embedded default): the model's own length, cut at max_tokens.
TEST(SimMaxTokens, LimitModeCutsTheNaturalLength) {
  auto sim = start_sim(R"(sim:
  max_tokens: limit
  defaults: {ttft: {median_ms: 1}, itl: {median_ms: 1}, completion_tokens: 12}
)");
  auto longer = post_json(sim.port, "/v1/chat/completions", chat_body("m", false, 100), "k");
  ASSERT_EQ(longer.status, 200) << longer.body;
  EXPECT_NE(longer.body.find("\"completion_tokens\":12,"), std::string::npos) << longer.body;
  EXPECT_NE(longer.body.find("\"finish_reason\":\"stop\""), std::string::npos) << longer.body;
  auto shorter = post_json(sim.port, "/v1/chat/completions", chat_body("m", false, 5), "k");
  ASSERT_EQ(shorter.status, 200) << shorter.body;
  EXPECT_NE(shorter.body.find("\"completion_tokens\":5,"), std::string::npos) << shorter.body;
  EXPECT_NE(shorter.body.find("\"finish_reason\":\"length\""), std::string::npos);
  // The default ("length"): max_tokens is the length.
  auto sim2 = start_sim(R"(sim:
  defaults: {ttft: {median_ms: 1}, itl: {median_ms: 1}, completion_tokens: 12}
)");
  auto exact = post_json(sim2.port, "/v1/chat/completions", chat_body("m", false, 30), "k");
  ASSERT_EQ(exact.status, 200) << exact.body;
  EXPECT_NE(exact.body.find("\"completion_tokens\":30,"), std::string::npos) << exact.body;
}

TEST(GatewayLifecycle, GracefulDrainOnSigterm) {
  auto sim = start_sim(sim_yaml());
  auto gw = start_gateway(gw_yaml(sim.port), {{"SIM_PROVIDER_KEY", "provider-secret-xyz"}});
  StreamReader s(gw.port, raw_post("/v1/chat/completions", chat_body("slow", true), kKey));
  TimedChunk c;
  std::string all;
  ASSERT_TRUE(s.read_some(c));
  all += c.data;
  gw.proc.signal(SIGTERM);
  // New connections are refused while the in-flight stream finishes (polled for: the signal is
  // handled when the gateway's threads next run, which on a loaded machine may take a while).
  int status = -1;
  wait_for(
      [&] {
        status = request(gw.port, "GET", "/healthz", "", {}, std::chrono::milliseconds(500)).status;
        return status == 0;
      },
      std::chrono::seconds(10));
  EXPECT_EQ(status, 0);
  while (all.find("\r\n0\r\n\r\n") == std::string::npos && s.read_some(c)) all += c.data;
  EXPECT_NE(all.find("[DONE]"), std::string::npos) << "in-flight stream was cut";
  EXPECT_NE(all.find("0\r\n\r\n"), std::string::npos);
  EXPECT_EQ(gw.proc.wait(), 0) << gw.proc.stderr_text();
}

TEST(GatewayLifecycle, ReloadOnSighupKeepsOldConfigWhenInvalid) {
  auto sim = start_sim(sim_yaml());
  auto gw = start_gateway(gw_yaml(sim.port), {{"SIM_PROVIDER_KEY", "provider-secret-xyz"}});
  auto body = chat_body("public-model", false);
  ASSERT_EQ(post_json(gw.port, "/v1/chat/completions", body, kKey).status, 200);
  // Swap the key.
  auto text = read_file(gw.config_path);
  auto swapped = text;
  swapped.replace(swapped.find(kKey), std::string(kKey).size(), "sk-rotated-key-0002");
  write_file(gw.config_path, swapped);
  gw.proc.signal(SIGHUP);
  int status = 0;
  for (int i = 0; i < 1000; ++i) {  // 20 s at least
    status = post_json(gw.port, "/v1/chat/completions", body, "sk-rotated-key-0002").status;
    if (status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(status, 200);
  EXPECT_EQ(post_json(gw.port, "/v1/chat/completions", body, kKey).status, 401);
  // An invalid file is refused and the running config stays.
  write_file(gw.config_path, swapped + "\nnot_a_key: 1\n");
  gw.proc.signal(SIGHUP);
  std::string err;
  for (int i = 0; i < 1000 && err.find("reload failed") == std::string::npos; ++i) {  // 20 s
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    err = gw.proc.stderr_text();
  }
  EXPECT_NE(err.find("reload failed"), std::string::npos) << err;
  EXPECT_NE(err.find("not_a_key: unknown key"), std::string::npos) << err;
  EXPECT_EQ(post_json(gw.port, "/v1/chat/completions", body, "sk-rotated-key-0002").status, 200);
}

// `bellwether --version` names the release and the commit the binary was built from, and the
// running gateway exports the same pair as bellwether_build_info's labels.
TEST_F(GatewayCore, VersionFlagAndBuildInfoNameTheSameBuild) {
  Process v({binary(), "--version"});
  ASSERT_EQ(v.wait(), 0) << v.stderr_text();
  const std::string out = v.stdout_text();
  const std::string prefix = "bellwether 0.1.0 (commit ";
  ASSERT_EQ(out.rfind(prefix, 0), 0u) << out;
  const auto close = out.find(')', prefix.size());
  ASSERT_NE(close, std::string::npos) << out;
  const std::string commit = out.substr(prefix.size(), close - prefix.size());
  // A checkout's build names its commit (12 hex digits, "-dirty" with uncommitted changes).
  const std::string hex = commit.substr(0, commit.find('-'));
  EXPECT_TRUE(commit == "unknown" ||
              (hex.size() == 12 && hex.find_first_not_of("0123456789abcdef") == std::string::npos &&
               (hex.size() == commit.size() || commit.substr(12) == "-dirty")))
      << commit;
  const auto m = request(gw_->port, "GET", "/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("bellwether_build_info{version=\"0.1.0\",commit=\"" + commit + "\"} 1\n"),
            std::string::npos)
      << m.body.substr(0, 600);
}

TEST(CheckConfig, ReportsFileLineAndKey) {
  auto dir = temp_dir();
  auto path = dir + "/bad.yaml";
  write_file(path,
             "listen: 127.0.0.1:8080\n"
             "providers:\n"
             "  p: {base_url: 'http://127.0.0.1:1/v1'}\n"
             "model_groups:\n"
             "  m:\n"
             "    deployments: [{provider: p}]\n"
             "    fallbacks: [nope]\n");
  Process p({binary(), "check-config", path});
  EXPECT_EQ(p.wait(), 1);
  EXPECT_NE(p.stderr_text().find(path +
                                 ":7: model_groups.m.fallbacks: 'nope' is not another model group"),
            std::string::npos)
      << p.stderr_text();

  write_file(path, "listen: 127.0.0.1:8080\nserver:\n  max_body_bytes: lots\n");
  Process p2({binary(), "check-config", path});
  EXPECT_EQ(p2.wait(), 1);
  EXPECT_NE(p2.stderr_text().find(path + ":3: server.max_body_bytes: expected a size"),
            std::string::npos)
      << p2.stderr_text();

  write_file(path, "listen: 127.0.0.1:8080\nlsiten: typo\n");
  Process p3({binary(), "check-config", path});
  EXPECT_EQ(p3.wait(), 1);
  EXPECT_NE(p3.stderr_text().find(path + ":2: lsiten: unknown key"), std::string::npos)
      << p3.stderr_text();

  write_file(path,
             "providers:\n  p:\n    base_url: http://127.0.0.1:1/v1\n    api_key_env: "
             "BW_SURELY_UNSET_VAR\n");
  Process p4({binary(), "check-config", path});
  EXPECT_EQ(p4.wait(), 1);
  EXPECT_NE(p4.stderr_text().find(
                ":4: providers.p.api_key_env: environment variable BW_SURELY_UNSET_VAR is not set"),
            std::string::npos)
      << p4.stderr_text();

  write_file(path, "listen: 127.0.0.1:8080\n");
  Process ok({binary(), "check-config", path});
  EXPECT_EQ(ok.wait(), 0);
}

}  // namespace
}  // namespace bw::test
