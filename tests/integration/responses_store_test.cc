// test-label: redis
// The Responses API's store in fleet mode, through real processes: one redis-server (free port,
// no persistence), two `bellwether serve` replicas sharing it, one zero-latency `bellwether sim`
// behind an anthropic-type provider (so every Responses answer is translated and stored by the
// gateway). A response created through replica A is continued through replica B; with Redis
// stopped, a continuation gets 503 response_store_unavailable in the OpenAI shape and the
// gateways stay up.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "harness.h"
#include "support/eventually.h"

namespace bw::test {
namespace {

using bw::testing::eventually;
using std::chrono::milliseconds;

constexpr const char* kKey = "sk-respstore-0001";
constexpr const char* kPath = "/v1/responses";
// Where a response of key t (no tenant: owner "key:t") is kept: key_prefix + the first 16 hex
// digits of SHA-256("key:t") + ":" + id.
constexpr const char* kKeyPrefix = "bw:resp:388a3de2bd1f00d1:";

std::string sh(const std::string& cmd) {
  return shell_output(cmd);
}

struct Redis {
  Redis() : port(free_port()), dir(temp_dir()) { start(); }
  void start() {
    proc.reset();
    proc.emplace(
        std::vector<std::string>{"/usr/bin/redis-server", "--port", std::to_string(port), "--bind",
                                 "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir},
        std::map<std::string, std::string>{}, std::string("redis-"));
    wait_for_port(port);
  }
  std::string cli(const std::string& args) const {
    return sh("redis-cli -p " + std::to_string(port) + " " + args + " 2>&1");
  }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port); }
  int port;
  std::string dir;
  std::optional<Process> proc;
};

struct Fleet {
  Redis redis;
  Sim sim;
  Gw a, b;
};

std::unique_ptr<Fleet> start_fleet() {
  auto f = std::make_unique<Fleet>();
  // Short answers that end by themselves (response.completed, not incomplete at the cap).
  f->sim = start_sim(
      "sim:\n  zero_latency: true\n  workers: 1\n  max_tokens: limit\n"
      "  defaults: {completion_tokens: 6}\n");
  const std::string yaml = R"(workers: 1
providers:
  an: {type: anthropic, base_url: "http://127.0.0.1:)" +
                           std::to_string(f->sim.port) + R"(/v1", api_key_env: BW_TEST_UPSTREAM_KEY}
redis:
  url: )" + f->redis.url() +
                           R"(
  timeout: 100ms
responses:
  ttl: 10m
plans:
  bare: {limits: []}
model_groups:
  claude: {deployments: [{provider: an, model: up-a}]}
keys:
  - {name: t, key: )" + std::string(kKey) +
                           R"(, plan: bare}
)";
  const std::map<std::string, std::string> env{{"BW_TEST_UPSTREAM_KEY", "sk-upstream-1"}};
  f->a = start_gateway(yaml, env);
  f->b = start_gateway(yaml, env);
  return f;
}

std::string response_id(const std::string& body) {
  static const std::regex re("\"id\":\"(resp_[A-Za-z0-9]+)\"");
  std::smatch m;
  return std::regex_search(body, m, re) ? m[1].str() : std::string();
}

std::string continuation(const std::string& id, const std::string& input, bool stream = false) {
  return "{\"model\":\"claude\",\"previous_response_id\":\"" + id + "\",\"input\":\"" + input +
         "\"" + (stream ? ",\"stream\":true" : "") + "}";
}

std::string last_upstream_body(const Fleet& f) {
  return request(f.sim.port, "GET", "/sim/last").body;
}

TEST(ResponsesStoreFleet, AResponseCreatedOnOneReplicaIsContinuedOnAnother) {
  auto f = start_fleet();
  auto first = post_json(f->a.port, kPath,
                         R"({"model":"claude","instructions":"answer in French",)"
                         R"("input":"My name is Ada and I like owls."})",
                         kKey);
  ASSERT_EQ(first.status, 200) << first.body;
  const std::string id = response_id(first.body);
  ASSERT_FALSE(id.empty()) << first.body;
  // Kept in Redis as JSON, with the configured TTL (10 minutes).
  EXPECT_NE(f->redis.cli(std::string("--raw GET ") + kKeyPrefix + id).find("I like owls"),
            std::string::npos);
  const long long pttl = std::atoll(f->redis.cli(std::string("PTTL ") + kKeyPrefix + id).c_str());
  EXPECT_GT(pttl, 500'000);
  EXPECT_LE(pttl, 600'000);

  auto second = post_json(f->b.port, kPath, continuation(id, "What do I like?"), kKey);
  ASSERT_EQ(second.status, 200) << second.body;
  std::string sent = last_upstream_body(*f);
  EXPECT_NE(sent.find("I like owls"), std::string::npos) << sent;       // A's input
  EXPECT_NE(sent.find("What do I like?"), std::string::npos) << sent;   // B's input
  EXPECT_NE(sent.find("answer in French"), std::string::npos) << sent;  // inherited system
  const std::string second_id = response_id(second.body);
  ASSERT_FALSE(second_id.empty());

  // A streamed continuation on A of B's response: stored before the stream's last event, so it
  // can be continued at once, on B again.
  auto streamed = post_json(f->a.port, kPath, continuation(second_id, "And my name?", true), kKey);
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  ASSERT_NE(streamed.body.find("response.completed"), std::string::npos) << streamed.body;
  const std::string third_id = response_id(streamed.body);
  ASSERT_FALSE(third_id.empty());
  auto fourth = post_json(f->b.port, kPath, continuation(third_id, "Thanks"), kKey);
  ASSERT_EQ(fourth.status, 200) << fourth.body;
  sent = last_upstream_body(*f);
  for (const char* turn : {"I like owls", "What do I like?", "And my name?", "Thanks"}) {
    EXPECT_NE(sent.find(turn), std::string::npos) << turn << " in " << sent;
  }

  // Unknown to the store: 404 previous_response_not_found, on either replica.
  for (int port : {f->a.port, f->b.port}) {
    auto unknown = post_json(port, kPath, continuation("resp_nope", "x"), kKey);
    EXPECT_EQ(unknown.status, 404) << unknown.body;
    EXPECT_NE(unknown.body.find("previous_response_not_found"), std::string::npos);
  }
  // Expired in Redis: the same 404.
  f->redis.cli(std::string("PEXPIRE ") + kKeyPrefix + id + " 1");
  ASSERT_TRUE(
      eventually([&] { return f->redis.cli(std::string("EXISTS ") + kKeyPrefix + id) == "0"; }));
  auto expired = post_json(f->b.port, kPath, continuation(id, "x"), kKey);
  EXPECT_EQ(expired.status, 404) << expired.body;
}

TEST(ResponsesStoreFleet, StoppedRedisAnswers503AndTheGatewaysStayUp) {
  auto f = start_fleet();
  auto first = post_json(f->a.port, kPath, R"({"model":"claude","input":"I like owls."})", kKey);
  ASSERT_EQ(first.status, 200) << first.body;
  const std::string id = response_id(first.body);
  ASSERT_FALSE(id.empty());

  // Stalled (SIGSTOP): only the 100 ms deadline ends the lookup.
  f->redis.proc->signal(SIGSTOP);
  auto t0 = std::chrono::steady_clock::now();
  auto stalled = post_json(f->b.port, kPath, continuation(id, "What do I like?"), kKey);
  const auto stalled_ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(stalled.status, 503) << stalled.body;
  EXPECT_NE(stalled.body.find("\"code\":\"response_store_unavailable\""), std::string::npos)
      << stalled.body;
  EXPECT_NE(stalled.body.find("\"error\":{"), std::string::npos) << stalled.body;
  EXPECT_EQ(stalled.header("retry-after"), "1");
  EXPECT_LT(stalled_ms, 3000);  // without its deadline it would hang for the client's 10 s
  f->redis.proc->signal(SIGCONT);

  // Stopped: refused connections fail fast, every time.
  f->redis.proc->signal(SIGKILL);
  f->redis.proc->wait();
  for (int i = 0; i < 3; ++i) {
    for (int port : {f->a.port, f->b.port}) {
      t0 = std::chrono::steady_clock::now();
      auto r = post_json(port, kPath, continuation(id, "What do I like?"), kKey);
      const auto ms =
          std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count();
      EXPECT_EQ(r.status, 503) << r.body;
      EXPECT_NE(r.body.find("response_store_unavailable"), std::string::npos) << r.body;
      EXPECT_LT(ms, 3000);  // a lookup without its deadline would hang for the client's 10 s
    }
  }
  // A request that needs no lookup is served (its store is skipped), and both replicas are up.
  auto fresh = post_json(f->a.port, kPath, R"({"model":"claude","input":"Hello"})", kKey);
  EXPECT_EQ(fresh.status, 200) << fresh.body;
  auto fresh_stream =
      post_json(f->b.port, kPath, R"({"model":"claude","input":"Hello","stream":true})", kKey);
  EXPECT_EQ(fresh_stream.status, 200);
  EXPECT_NE(fresh_stream.body.find("response.completed"), std::string::npos) << fresh_stream.body;
  for (Gw* g : {&f->a, &f->b}) {
    EXPECT_TRUE(g->proc.running());
    EXPECT_EQ(request(g->port, "GET", "/healthz").status, 200);
  }

  // Redis back (empty: no persistence): the id it lost is a plain 404, and new responses chain
  // across replicas again.
  f->redis.start();
  ASSERT_TRUE(eventually(
      [&] { return post_json(f->b.port, kPath, continuation(id, "x"), kKey).status == 404; },
      std::chrono::seconds(10)));
  auto again = post_json(f->a.port, kPath, R"({"model":"claude","input":"I like cats."})", kKey);
  ASSERT_EQ(again.status, 200);
  auto cont = post_json(f->b.port, kPath, continuation(response_id(again.body), "And?"), kKey);
  EXPECT_EQ(cont.status, 200) << cont.body;
  EXPECT_NE(last_upstream_body(*f).find("I like cats."), std::string::npos);
}

}  // namespace
}  // namespace bw::test
