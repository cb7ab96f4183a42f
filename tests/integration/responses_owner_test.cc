// test-label: redis
// Stored Responses belong to their owner, through real processes: `bellwether serve` in front of
// a zero-latency `bellwether sim` behind an anthropic-type provider (so every Responses answer is
// translated and stored by the gateway), with the in-process store, and two replicas sharing one
// redis-server. Owner = the key's tenant, or the key itself when it has none. A key of another
// owner that sends previous_response_id gets exactly the answer an unknown id gets (status,
// error body, headers), buffered or streamed, also when the group's cache is shared globally;
// a key of the same tenant continues the conversation. Behind an `openai` provider (passthrough,
// OpenAI stores the response), the gateway's marker of the owner decides the same way.
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>
#include <vector>

#include "harness.h"
#include "support/redis_server.h"

namespace bw::test {
namespace {

constexpr const char* kPath = "/v1/responses";
// Tenant acme: a and c; tenant globex: b; no tenant: d and e.
constexpr const char* kA = "sk-owner-acme-a-0001";
constexpr const char* kB = "sk-owner-globex-b-0002";
constexpr const char* kC = "sk-owner-acme-c-0003";
constexpr const char* kD = "sk-owner-solo-d-0004";
constexpr const char* kE = "sk-owner-solo-e-0005";
// Well-formed, and stored by nobody.
constexpr const char* kUnknownId = "resp_0123456789abcdefghijklmn";

// The five keys, each on the plan "bare".
std::string keys_yaml() {
  std::string y = "keys:\n";
  y += std::string("  - {name: a, key: ") + kA + ", tenant: acme, plan: bare}\n";
  y += std::string("  - {name: b, key: ") + kB + ", tenant: globex, plan: bare}\n";
  y += std::string("  - {name: c, key: ") + kC + ", tenant: acme, plan: bare}\n";
  y += std::string("  - {name: d, key: ") + kD + ", plan: bare}\n";
  y += std::string("  - {name: e, key: ") + kE + ", plan: bare}\n";
  return y;
}

std::string gateway_yaml(int sim_port, const std::string& redis_url) {
  std::string y = R"(workers: 1
providers:
  an: {type: anthropic, base_url: "http://127.0.0.1:)" +
                  std::to_string(sim_port) + R"(/v1", api_key_env: BW_TEST_UPSTREAM_KEY}
)";
  if (!redis_url.empty()) y += "redis:\n  url: " + redis_url + "\n  timeout: 200ms\n";
  y += R"(plans:
  bare: {limits: []}
model_groups:
  claude: {deployments: [{provider: an, model: up-a}]}
  claude-shared-cache:
    deployments: [{provider: an, model: up-a}]
    cache: {mode: exact, scope: global}
)" + keys_yaml();
  return y;
}

const std::map<std::string, std::string> kEnv{{"BW_TEST_UPSTREAM_KEY", "sk-upstream-1"}};

Sim start_quick_sim() {
  return start_sim(
      "sim:\n  zero_latency: true\n  workers: 1\n  max_tokens: limit\n"
      "  defaults: {completion_tokens: 6}\n");
}

std::string response_id(const std::string& body) {
  static const std::regex re("\"id\":\"(resp_[A-Za-z0-9]+)\"");
  std::smatch m;
  return std::regex_search(body, m, re) ? m[1].str() : std::string();
}

std::string continuation(const std::string& id, const std::string& input, bool stream = false,
                         const std::string& model = "claude") {
  return "{\"model\":\"" + model + "\",\"previous_response_id\":\"" + id + "\",\"input\":\"" +
         input + "\"" + (stream ? ",\"stream\":true" : "") + "}";
}

std::string create(int port, const std::string& key, const std::string& input,
                   const std::string& model = "claude") {
  auto r = post_json(port, kPath, "{\"model\":\"" + model + "\",\"input\":\"" + input + "\"}", key);
  EXPECT_EQ(r.status, 200) << r.body;
  const std::string id = response_id(r.body);
  EXPECT_FALSE(id.empty()) << r.body;
  return id;
}

// What a client can tell apart: status, header names, and the body with the id it sent and the
// request id (different for every request) masked.
struct Seen {
  int status = 0;
  std::set<std::string> headers;
  std::string body;
  bool operator==(const Seen&) const = default;
};

Seen seen(const HttpResponse& r, const std::string& id) {
  Seen s;
  s.status = r.status;
  for (const auto& [name, value] : r.headers) {
    if (name != "date") s.headers.insert(name);
  }
  s.body = r.body;
  for (std::size_t at = s.body.find(id); at != std::string::npos; at = s.body.find(id, at)) {
    s.body.replace(at, id.size(), "<id>");
  }
  s.body = std::regex_replace(s.body, std::regex("req_[0-9a-f]+"), "<request>");
  return s;
}

std::string show(const Seen& s) {
  std::string out = std::to_string(s.status) + " [";
  for (const auto& h : s.headers) out += h + " ";
  return out + "] " + s.body;
}

// `key` continues `id` and gets exactly what it gets for an id nobody stored, buffered and
// streamed; nothing of the stored conversation is in the answer.
void expect_not_found_like_unknown(int port, const std::string& key, const std::string& id,
                                   const std::string& model = "claude") {
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streamed" : "buffered");
    const auto stranger =
        post_json(port, kPath, continuation(id, "What do I like?", stream, model), key);
    const auto unknown =
        post_json(port, kPath, continuation(kUnknownId, "What do I like?", stream, model), key);
    EXPECT_EQ(stranger.status, 404) << stranger.body;
    EXPECT_NE(stranger.body.find("\"code\":\"previous_response_not_found\""), std::string::npos)
        << stranger.body;
    EXPECT_EQ(stranger.body.find("owls"), std::string::npos) << stranger.body;
    const Seen a = seen(stranger, id), b = seen(unknown, kUnknownId);
    EXPECT_TRUE(a == b) << "stranger: " << show(a) << "\nunknown:  " << show(b);
  }
}

std::string last_upstream_body(const Sim& sim) {
  return request(sim.port, "GET", "/sim/last").body;
}

TEST(ResponsesOwner, AnotherTenantGetsTheUnknownIdAnswerAndTheSameTenantContinues) {
  Sim sim = start_quick_sim();
  Gw gw = start_gateway(gateway_yaml(sim.port, ""), kEnv);

  const std::string id = create(gw.port, kA, "My name is Ada and I like owls.");
  ASSERT_FALSE(id.empty());
  // Another tenant: as if the id did not exist.
  expect_not_found_like_unknown(gw.port, kB, id);
  // The refusals did not remove it: a key of the owner's tenant continues it, with its turns.
  auto same_tenant = post_json(gw.port, kPath, continuation(id, "What do I like?"), kC);
  ASSERT_EQ(same_tenant.status, 200) << same_tenant.body;
  std::string sent = last_upstream_body(sim);
  EXPECT_NE(sent.find("I like owls"), std::string::npos) << sent;
  EXPECT_NE(sent.find("What do I like?"), std::string::npos) << sent;
  // And what c stored belongs to acme too: a continues it, b still cannot.
  const std::string c_id = response_id(same_tenant.body);
  ASSERT_FALSE(c_id.empty());
  auto back = post_json(gw.port, kPath, continuation(c_id, "And my name?", true), kA);
  ASSERT_EQ(back.status, 200) << back.body;
  EXPECT_NE(back.body.find("response.completed"), std::string::npos) << back.body;
  expect_not_found_like_unknown(gw.port, kB, c_id);

  // A key without a tenant owns its responses alone: another tenantless key and a tenant's key
  // get the unknown-id answer, the key itself continues.
  const std::string d_id = create(gw.port, kD, "I like owls, says d.");
  ASSERT_FALSE(d_id.empty());
  expect_not_found_like_unknown(gw.port, kE, d_id);
  expect_not_found_like_unknown(gw.port, kA, d_id);
  auto own = post_json(gw.port, kPath, continuation(d_id, "What do I like?"), kD);
  EXPECT_EQ(own.status, 200) << own.body;
  EXPECT_NE(last_upstream_body(sim).find("says d."), std::string::npos);
  // Nor can a tenantless key continue a tenant's response.
  expect_not_found_like_unknown(gw.port, kD, id);
}

// A globally shared cache holds a's continuation; b sending the very same body must not be
// answered from it (that would hand b the continuation of a conversation it may not read).
TEST(ResponsesOwner, AGloballySharedCacheDoesNotAnswerAnotherTenantsContinuation) {
  Sim sim = start_quick_sim();
  Gw gw = start_gateway(gateway_yaml(sim.port, ""), kEnv);
  const std::string model = "claude-shared-cache";
  const std::string id = create(gw.port, kA, "My name is Ada and I like owls.", model);
  ASSERT_FALSE(id.empty());
  const std::string body = continuation(id, "What do I like?", false, model);
  auto first = post_json(gw.port, kPath, body, kA);
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.header("x-bellwether-cache"), "miss");
  // The owner's tenant may be served from the cache.
  auto again = post_json(gw.port, kPath, body, kC);
  EXPECT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.header("x-bellwether-cache"), "hit");
  // Another tenant gets the unknown-id answer, not the cached continuation.
  auto stranger = post_json(gw.port, kPath, body, kB);
  EXPECT_EQ(stranger.status, 404) << stranger.body;
  EXPECT_NE(stranger.header("x-bellwether-cache"), "hit");
  expect_not_found_like_unknown(gw.port, kB, id, model);
}

// Fleet mode: the owner travels with the entry in Redis, so every replica checks it; an entry
// written before entries had owners is continued by nobody.
TEST(ResponsesOwner, TheOwnerIsCheckedOnEveryReplicaThroughRedis) {
  RedisServer redis;
  Sim sim = start_quick_sim();
  Gw one = start_gateway(gateway_yaml(sim.port, redis.url()), kEnv);
  Gw two = start_gateway(gateway_yaml(sim.port, redis.url()), kEnv);

  const std::string id = create(one.port, kA, "My name is Ada and I like owls.");
  ASSERT_FALSE(id.empty());
  // Kept under a key of its owner (the first 16 hex digits of SHA-256("tenant:acme")), with the
  // owner in the value.
  const std::string acme = "bw:resp:cef41eed96b2cb03:";
  EXPECT_NE(redis.command({"GET", acme + id}).find("\"owner\":\"tenant:acme\""), std::string::npos);
  for (int port : {one.port, two.port}) expect_not_found_like_unknown(port, kB, id);
  auto same_tenant = post_json(two.port, kPath, continuation(id, "What do I like?"), kC);
  ASSERT_EQ(same_tenant.status, 200) << same_tenant.body;
  EXPECT_NE(last_upstream_body(sim).find("I like owls"), std::string::npos);

  // A value of the previous format (no owner): not found for anyone, its own tenant included.
  const std::string old_id = "resp_oldformat0123456789abcd";
  for (const std::string& key : {"bw:resp:" + old_id, acme + old_id}) {
    redis.command({"SET", key,
                   R"({"v":1,"system":[],"conversation":[{"role":"user","parts":[)"
                   R"({"kind":"text","text":"I like owls"}]}]})"});
  }
  for (const char* key : {kA, kB, kD}) expect_not_found_like_unknown(two.port, key, old_id);
}

// Behind an `openai` provider a Responses request passes through and OpenAI (here the sim, which
// serves /v1/responses natively) stores the response under the gateway's provider key. The
// gateway keeps a marker of whose it is: only its owner's previous_response_id is passed on; any
// other key, and any id the gateway never saw, gets the unknown-id 404 without reaching the
// provider, unless responses.forward_unknown_ids says to pass unknown ids through.
std::string openai_yaml(int sim_port, const std::string& redis_url, bool forward_unknown) {
  std::string y = R"(workers: 1
providers:
  oa: {type: openai, base_url: "http://127.0.0.1:)" +
                  std::to_string(sim_port) + R"(/v1", api_key_env: BW_TEST_UPSTREAM_KEY}
)";
  if (!redis_url.empty()) y += "redis:\n  url: " + redis_url + "\n  timeout: 200ms\n";
  if (forward_unknown) y += "responses: {forward_unknown_ids: true}\n";
  y += R"(plans:
  bare: {limits: []}
model_groups:
  gpt: {deployments: [{provider: oa, model: up-o}]}
  gpt-shared-cache:
    deployments: [{provider: oa, model: up-o}]
    cache: {mode: exact, scope: global}
)" + keys_yaml();
  return y;
}

std::int64_t sim_requests(const Sim& sim) {
  const auto r = request(sim.port, "GET", "/sim/stats");
  static const std::regex re("\"requests\":([0-9]+)");
  std::smatch m;
  EXPECT_TRUE(std::regex_search(r.body, m, re)) << r.body;
  return m.empty() ? -1 : std::stoll(m[1].str());
}

// Creates a response through the passthrough, buffered or streamed; the id the client sees is
// the provider's.
std::string create_passthrough(int port, const std::string& key, bool stream,
                               const std::string& model = "gpt") {
  auto r = post_json(port, kPath,
                     "{\"model\":\"" + model + "\",\"input\":\"I like owls.\"" +
                         (stream ? ",\"stream\":true" : "") + "}",
                     key);
  EXPECT_EQ(r.status, 200) << r.body;
  if (stream) {
    EXPECT_NE(r.body.find("response.completed"), std::string::npos) << r.body;
  }
  const std::string id = response_id(r.body);
  EXPECT_FALSE(id.empty()) << r.body;
  return id;
}

// `key` continues `id`: refused exactly as an unknown id, and the provider never sees it.
void expect_refused_before_the_provider(const Sim& sim, int port, const std::string& key,
                                        const std::string& id, const std::string& model = "gpt") {
  const std::int64_t before = sim_requests(sim);
  expect_not_found_like_unknown(port, key, id, model);
  EXPECT_EQ(sim_requests(sim), before) << "the provider was asked";
}

// `key` continues `id`: passed through to the provider, id unchanged.
void expect_passed_on(const Sim& sim, int port, const std::string& key, const std::string& id,
                      bool stream = false) {
  const std::int64_t before = sim_requests(sim);
  auto r = post_json(port, kPath, continuation(id, "What do I like?", stream, "gpt"), key);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(sim_requests(sim), before + 1);
  const std::string sent = last_upstream_body(sim);
  EXPECT_NE(sent.find("previous_response_id"), std::string::npos) << sent;
  EXPECT_NE(sent.find(id), std::string::npos) << sent;
}

TEST(ResponsesOwner, AResponseStoredByOpenAIIsPassedOnForItsOwnerOnly) {
  Sim sim = start_quick_sim();
  Gw gw = start_gateway(openai_yaml(sim.port, "", false), kEnv);
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "created streamed" : "created buffered");
    const std::string id = create_passthrough(gw.port, kA, stream);
    ASSERT_FALSE(id.empty());
    // Another tenant, a tenantless key: the unknown-id answer, nothing sent upstream.
    expect_refused_before_the_provider(sim, gw.port, kB, id);
    expect_refused_before_the_provider(sim, gw.port, kD, id);
    // The owner's tenant: passed on to OpenAI, which holds the turns; buffered and streamed.
    expect_passed_on(sim, gw.port, kA, id);
    expect_passed_on(sim, gw.port, kC, id, true);
  }
  // What a tenantless key creates is that key's alone.
  const std::string d_id = create_passthrough(gw.port, kD, false);
  ASSERT_FALSE(d_id.empty());
  expect_refused_before_the_provider(sim, gw.port, kE, d_id);
  expect_refused_before_the_provider(sim, gw.port, kA, d_id);
  expect_passed_on(sim, gw.port, kD, d_id);
  // `store: false`: OpenAI keeps nothing, so neither does the gateway.
  auto unstored =
      post_json(gw.port, kPath, R"({"model":"gpt","input":"I like owls.","store":false})", kA);
  ASSERT_EQ(unstored.status, 200) << unstored.body;
  const std::string unstored_id = response_id(unstored.body);
  ASSERT_FALSE(unstored_id.empty());
  expect_refused_before_the_provider(sim, gw.port, kA, unstored_id);
}

// A globally shared cache must not pass another tenant's continuation of a marked response.
TEST(ResponsesOwner, AGloballySharedCacheDoesNotPassAnotherTenantsOpenAIContinuation) {
  Sim sim = start_quick_sim();
  Gw gw = start_gateway(openai_yaml(sim.port, "", false), kEnv);
  const std::string model = "gpt-shared-cache";
  const std::string id = create_passthrough(gw.port, kA, false, model);
  ASSERT_FALSE(id.empty());
  auto own = post_json(gw.port, kPath, continuation(id, "What do I like?", false, model), kA);
  ASSERT_EQ(own.status, 200) << own.body;
  expect_refused_before_the_provider(sim, gw.port, kB, id, model);
}

TEST(ResponsesOwner, ForwardUnknownIdsPassesIdsTheGatewayNeverSaw) {
  Sim sim = start_quick_sim();
  Gw gw = start_gateway(openai_yaml(sim.port, "", true), kEnv);
  expect_passed_on(sim, gw.port, kB, kUnknownId);
  expect_passed_on(sim, gw.port, kD, kUnknownId, true);
  // The owner's own responses pass as before.
  const std::string id = create_passthrough(gw.port, kA, true);
  ASSERT_FALSE(id.empty());
  expect_passed_on(sim, gw.port, kC, id);
}

// Fleet mode: the marker is in Redis, so every replica knows whose the response is.
TEST(ResponsesOwner, AMarkerOfOpenAIIsSeenByEveryReplicaThroughRedis) {
  RedisServer redis;
  Sim sim = start_quick_sim();
  Gw one = start_gateway(openai_yaml(sim.port, redis.url(), false), kEnv);
  Gw two = start_gateway(openai_yaml(sim.port, redis.url(), false), kEnv);
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "created streamed" : "created buffered");
    const std::string id = create_passthrough(one.port, kA, stream);
    ASSERT_FALSE(id.empty());
    const std::string raw = redis.command({"GET", "bw:resp:cef41eed96b2cb03:" + id});
    EXPECT_NE(raw.find("\"upstream\":true"), std::string::npos) << raw;
    EXPECT_EQ(raw.find("owls"), std::string::npos) << raw;
    for (int port : {one.port, two.port}) {
      expect_refused_before_the_provider(sim, port, kB, id);
    }
    expect_passed_on(sim, two.port, kC, id);
  }
}

}  // namespace
}  // namespace bw::test
