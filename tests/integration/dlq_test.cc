// The dead-letter queue through real processes: `bellwether serve` in front of one `bellwether sim`
// per deployment. Both deployments (the model and its fallback) are broken at run time with
// POST /sim/control, so that a request fails after every retry and fallback; the DLQ is then read,
// replayed and pruned through the admin API, and its counters through GET /metrics.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace bw::test {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr const char* kAdminKey = "admin-key-dlq-0123456789abcdef";
constexpr const char* kClientKey = "sk-test-dlq-client-01";    // enterprise plan: P1 by default
constexpr const char* kBatchKey = "sk-test-dlq-batch-01";      // default_priority 2
constexpr const char* kMeteredKey = "sk-test-dlq-metered-01";  // P2, two requests a minute
constexpr const char* kChat = "/v1/chat/completions";
constexpr const char* kBreak = R"({"error_status":503,"error_rate":1.0})";
constexpr const char* kHeal = R"({"error_rate":0})";

// ---- tiny JSON helpers (flat documents written by the gateway's own JsonWriter) ---------------

// The string value after "key": in `doc`, unescaped; nullopt when absent or not a string.
std::optional<std::string> json_str(const std::string& doc, const std::string& key,
                                    std::size_t from = 0) {
  auto p = doc.find("\"" + key + "\":\"", from);
  if (p == std::string::npos) return std::nullopt;
  p += key.size() + 4;
  std::string out;
  auto put_utf8 = [&](std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  };
  auto hex4 = [&](std::size_t at) {
    return static_cast<std::uint32_t>(std::strtoul(doc.substr(at, 4).c_str(), nullptr, 16));
  };
  while (p < doc.size() && doc[p] != '"') {
    char ch = doc[p++];
    if (ch != '\\') {
      out += ch;
      continue;
    }
    char e = doc[p++];
    switch (e) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'u': {
        std::uint32_t cp = hex4(p);
        p += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && doc.compare(p, 2, "\\u") == 0) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4(p + 2) - 0xDC00);
          p += 6;
        }
        put_utf8(cp);
        break;
      }
      default:
        out += e;  // \" \\ \/
    }
  }
  return out;
}

double json_num(const std::string& doc, const std::string& key, std::size_t from = 0) {
  auto p = doc.find("\"" + key + "\":", from);
  if (p == std::string::npos) return std::nan("");
  return std::strtod(doc.c_str() + p + key.size() + 3, nullptr);
}

bool json_null(const std::string& doc, const std::string& key) {
  return doc.find("\"" + key + "\":null") != std::string::npos;
}

// The flat entry objects of a GET /admin/dead-letters answer, in order.
std::vector<std::string> list_entries(const std::string& doc) {
  std::vector<std::string> out;
  auto p = doc.find("\"data\":[");
  if (p == std::string::npos) return out;
  for (p = doc.find("{\"id\":", p); p != std::string::npos; p = doc.find("{\"id\":", p + 1)) {
    out.push_back(doc.substr(p, doc.find('}', p) - p + 1));
  }
  return out;
}

// ---- processes
// -----------------------------------------------------------------------------------

std::string sim_yaml() {
  return "sim:\n  workers: 2\n  defaults: {ttft: {median_ms: 5}, itl: {median_ms: 1}, "
         "completion_tokens: 4}\n  models:\n    m: {completion_tokens: 4}\n";
}

std::int64_t sim_requests(const Sim& s) {
  auto r = request(s.port, "GET", "/sim/stats");
  EXPECT_EQ(r.status, 200) << r.body;
  return static_cast<std::int64_t>(json_num(r.body, "requests"));
}

void sim_control(const Sim& s, const std::string& json) {
  auto r = request(s.port, "POST", "/sim/control", json, {{"Content-Type", "application/json"}});
  ASSERT_EQ(r.status, 200) << r.body;
}

// Model `batch` on sim A falls back to model `spare` on sim B. Breakers are off, so that a healed
// deployment takes the very next request (the breaker itself is tested in resilience_test.cc).
struct Env {
  std::string dir;
  Sim a, b;
  Gw gw;
};

Env start(int max_entries = 100) {
  Env e;
  e.dir = temp_dir();
  e.a = start_sim(sim_yaml());
  e.b = start_sim(sim_yaml());
  auto provider = [](const std::string& name, const Sim& s) {
    return "  " + name + ": {base_url: \"http://127.0.0.1:" + std::to_string(s.port) + "/v1\"}\n";
  };
  e.gw = start_gateway(std::string("workers: 2\nadmin: {key: ") + kAdminKey + "}\n" +
                       "keys:\n  - {name: tester, key: " + kClientKey + "}\n" +
                       "  - {name: batcher, key: " + kBatchKey + ", default_priority: 2}\n" +
                       "  - {name: metered, key: " + kMeteredKey +
                       ", default_priority: 2, limits: [{name: two-per-minute, rate: 2, "
                       "period: minute}]}\n" +
                       "providers:\n" + provider("pa", e.a) + provider("pb", e.b) +
                       R"(model_groups:
  batch:
    deployments:
      - {id: batch-a, provider: pa, model: m}
    fallbacks: [spare]
  spare:
    deployments:
      - {id: spare-b, provider: pb, model: m}
resilience:
  breaker: {consecutive_failures: 0, failure_rate: 0}
  retry: {max_attempts: 3, base: 10ms, cap: 50ms, deadline: 20s}
dead_letter: {path: )" +
                       e.dir + "/dlq.db, max_entries: " + std::to_string(max_entries) +
                       ", max_bytes: 1048576}\n");
  return e;
}

void break_all(const Env& e) {
  sim_control(e.a, kBreak);
  sim_control(e.b, kBreak);
}
void heal_all(const Env& e) {
  sim_control(e.a, kHeal);
  sim_control(e.b, kHeal);
}

Headers admin_auth() {
  return {{"Authorization", std::string("Bearer ") + kAdminKey}};
}

HttpResponse admin(const Env& e, const std::string& method, const std::string& path) {
  return request(e.gw.port, method, path, "", admin_auth());
}

// A request body with bytes a re-serialisation would change (spacing, escapes, UTF-8), so that
// "stored as received" is really checked.
std::string odd_body(const std::string& tag) {
  return "{ \"model\" : \"batch\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"" + tag +
         ": summarise \\\"Q3\\\" \\\\ report\\nline 2 \xC3\xBC\\u00e9 \xE2\x82\xAC\"}],"
         "  \"max_tokens\": 5 }";
}

// ---- 1: what lands in the queue, and what does not
// ------------------------------------------------

TEST(DeadLetterQueue, FailedBatchRequestIsStoredAndInteractiveOneIsNot) {
  Env e = start();
  break_all(e);

  // P1 (the key's plan default): fails the same way, is not a batch request, is not kept.
  auto p1 = post_json(e.gw.port, kChat, odd_body("interactive"), kClientKey);
  EXPECT_GE(p1.status, 500) << p1.body;
  // Also P1 when asked for explicitly by the batch key.
  auto p1b = post_json(e.gw.port, kChat, odd_body("interactive"), kBatchKey, {{"X-Priority", "1"}});
  EXPECT_GE(p1b.status, 500) << p1b.body;
  auto l = admin(e, "GET", "/admin/dead-letters");
  ASSERT_EQ(l.status, 200) << l.body;
  EXPECT_TRUE(list_entries(l.body).empty()) << l.body;
  EXPECT_EQ(json_num(l.body, "size"), 0) << l.body;
  EXPECT_EQ(json_num(l.body, "added_total"), 0) << l.body;

  // P2 through the header, from the P1 key.
  const std::int64_t a0 = sim_requests(e.a), b0 = sim_requests(e.b);
  const std::string sent = odd_body("batch-header");
  auto p2 = post_json(e.gw.port, kChat, sent, kClientKey, {{"X-Priority", "2"}});
  EXPECT_GE(p2.status, 500) << p2.body;
  // It went everywhere before giving up: the deployment of the model and the fallback's.
  EXPECT_GE(sim_requests(e.a) - a0, 1);
  EXPECT_GE(sim_requests(e.b) - b0, 1);

  // P2 through the key's default priority.
  const std::string sent2 = odd_body("batch-default");
  auto p2b = post_json(e.gw.port, kChat, sent2, kBatchKey);
  EXPECT_GE(p2b.status, 500) << p2b.body;

  l = admin(e, "GET", "/admin/dead-letters");
  ASSERT_EQ(l.status, 200) << l.body;
  auto entries = list_entries(l.body);
  ASSERT_EQ(entries.size(), 2u) << l.body;
  EXPECT_EQ(json_num(l.body, "size"), 2) << l.body;
  EXPECT_EQ(json_num(l.body, "added_total"), 2) << l.body;
  EXPECT_EQ(json_num(l.body, "dropped_total"), 0) << l.body;
  EXPECT_EQ(l.body.find("\"body\""), std::string::npos) << "the list carries no bodies: " << l.body;
  EXPECT_EQ(json_str(entries[0], "key_id"), "tester") << entries[0];
  EXPECT_EQ(json_str(entries[1], "key_id"), "batcher") << entries[1];
  const auto id = static_cast<std::int64_t>(json_num(entries[0], "id"));
  EXPECT_GT(json_num(entries[1], "id"), static_cast<double>(id)) << "oldest first: " << l.body;

  auto g = admin(e, "GET", "/admin/dead-letters/" + std::to_string(id));
  ASSERT_EQ(g.status, 200) << g.body;
  EXPECT_EQ(json_num(g.body, "id"), static_cast<double>(id)) << g.body;
  EXPECT_EQ(json_str(g.body, "key_id"), "tester") << g.body;
  EXPECT_EQ(json_str(g.body, "model"), "batch") << g.body;
  EXPECT_EQ(json_str(g.body, "endpoint"), kChat) << g.body;
  EXPECT_EQ(json_str(g.body, "body"), sent) << g.body;
  const auto error = json_str(g.body, "error").value_or("");
  EXPECT_NE(error.find("503"), std::string::npos) << g.body;
  EXPECT_GE(json_num(g.body, "attempts"), 2) << "the model and its fallback: " << g.body;
  EXPECT_GT(json_num(g.body, "created_unix_ms"), 1.6e12) << g.body;
  EXPECT_TRUE(json_null(g.body, "replayed_unix_ms")) << g.body;
  // The key is recorded by name; its secret is nowhere.
  EXPECT_EQ(g.body.find(kClientKey), std::string::npos) << g.body;

  auto g2 = admin(e, "GET",
                  "/admin/dead-letters/" +
                      std::to_string(static_cast<std::int64_t>(json_num(entries[1], "id"))));
  ASSERT_EQ(g2.status, 200) << g2.body;
  EXPECT_EQ(json_str(g2.body, "body"), sent2) << g2.body;
  EXPECT_EQ(g2.body.find(kBatchKey), std::string::npos) << g2.body;

  // A batch request that succeeds is not kept either.
  heal_all(e);
  auto ok = post_json(e.gw.port, kChat, odd_body("fine"), kBatchKey);
  EXPECT_EQ(ok.status, 200) << ok.body;
  l = admin(e, "GET", "/admin/dead-letters");
  EXPECT_EQ(json_num(l.body, "added_total"), 2) << l.body;
}

// ---- 2: replay ---------------------------------------------------------------------------------

TEST(DeadLetterQueue, ReplayFailsWhileBrokenAndSucceedsAfterRecovery) {
  Env e = start();
  break_all(e);
  const std::string sent = odd_body("replay-me");
  auto f = post_json(e.gw.port, kChat, sent, kBatchKey);
  ASSERT_GE(f.status, 500) << f.body;
  auto l = admin(e, "GET", "/admin/dead-letters");
  auto entries = list_entries(l.body);
  ASSERT_EQ(entries.size(), 1u) << l.body;
  const std::string path = "/admin/dead-letters/" +
                           std::to_string(static_cast<std::int64_t>(json_num(entries[0], "id")));

  // Still broken: the replay runs the whole pipeline, fails the same way, and says so.
  const std::int64_t a0 = sim_requests(e.a), b0 = sim_requests(e.b);
  auto r1 = admin(e, "POST", path + "/replay");
  EXPECT_GE(r1.status, 500) << r1.body;
  EXPECT_LT(r1.status, 600) << r1.body;
  EXPECT_NE(r1.body.find("\"error\""), std::string::npos) << r1.body;
  EXPECT_GE(sim_requests(e.a) - a0, 1) << "the replay reached the model's deployment";
  EXPECT_GE(sim_requests(e.b) - b0, 1) << "and its fallback";
  auto g = admin(e, "GET", path);
  ASSERT_EQ(g.status, 200) << "the entry stays after a failed replay: " << g.body;
  EXPECT_TRUE(json_null(g.body, "replayed_unix_ms")) << g.body;
  EXPECT_EQ(json_str(g.body, "body"), sent) << g.body;
  // A failed replay does not add a second copy of itself.
  l = admin(e, "GET", "/admin/dead-letters");
  EXPECT_EQ(list_entries(l.body).size(), 1u) << l.body;
  EXPECT_EQ(json_num(l.body, "added_total"), 1) << l.body;

  // Recovered: the replay's answer is the pipeline's answer, a completion.
  heal_all(e);
  auto r2 = admin(e, "POST", path + "/replay");
  ASSERT_EQ(r2.status, 200) << r2.body;
  EXPECT_NE(r2.body.find("\"chat.completion\""), std::string::npos) << r2.body;
  EXPECT_NE(r2.body.find("\"choices\""), std::string::npos) << r2.body;
  EXPECT_EQ(r2.header("x-bellwether-model"), "batch") << "the model itself is back";
  g = admin(e, "GET", path);
  ASSERT_EQ(g.status, 200) << g.body;
  EXPECT_FALSE(json_null(g.body, "replayed_unix_ms")) << g.body;
  EXPECT_GT(json_num(g.body, "replayed_unix_ms"), json_num(g.body, "created_unix_ms")) << g.body;

  // The replay ran as the original key: it shows up under that key in the access log (the
  // failure and both replays; the admin calls themselves carry no client key).
  std::string log;
  for (int i = 0; i < 1000 && count(log, "\"batcher\"") < 3; ++i) {     // 20 s
    if (i) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the log is buffered
    log = read_file(e.gw.access_log);
  }
  EXPECT_EQ(count(log, "\"batcher\""), 3u) << log;
}

TEST(DeadLetterQueue, ReplayCountsAgainstTheOriginalKeysLimits) {
  Env e = start();
  break_all(e);
  ASSERT_GE(post_json(e.gw.port, kChat, odd_body("metered"), kMeteredKey).status, 500);  // 1 of 2
  auto entries = list_entries(admin(e, "GET", "/admin/dead-letters").body);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(json_str(entries[0], "key_id"), "metered") << entries[0];
  const std::string path = "/admin/dead-letters/" +
                           std::to_string(static_cast<std::int64_t>(json_num(entries[0], "id")));
  heal_all(e);
  auto r1 = admin(e, "POST", path + "/replay");  // 2 of 2
  ASSERT_EQ(r1.status, 200) << r1.body;
  // The key's minute is used up: the replay is refused by the key's own limit, before any
  // provider sees it, although the admin key itself has no such limit.
  const std::int64_t a0 = sim_requests(e.a), b0 = sim_requests(e.b);
  auto r2 = admin(e, "POST", path + "/replay");
  EXPECT_EQ(r2.status, 429) << r2.body;
  EXPECT_NE(r2.body.find("two-per-minute"), std::string::npos) << r2.body;
  EXPECT_EQ(sim_requests(e.a) - a0 + sim_requests(e.b) - b0, 0);
  // The same goes for the key's own traffic, and another key is not affected.
  EXPECT_EQ(post_json(e.gw.port, kChat, odd_body("metered"), kMeteredKey).status, 429);
  EXPECT_EQ(post_json(e.gw.port, kChat, odd_body("other"), kBatchKey).status, 200);
}

// ---- 3: delete and the bound --------------------------------------------------------------------

TEST(DeadLetterQueue, DeleteRemovesTheEntry) {
  Env e = start();
  break_all(e);
  ASSERT_GE(post_json(e.gw.port, kChat, odd_body("gone"), kBatchKey).status, 500);
  auto entries = list_entries(admin(e, "GET", "/admin/dead-letters").body);
  ASSERT_EQ(entries.size(), 1u);
  const std::string path = "/admin/dead-letters/" +
                           std::to_string(static_cast<std::int64_t>(json_num(entries[0], "id")));
  auto d = admin(e, "DELETE", path);
  ASSERT_EQ(d.status, 200) << d.body;
  EXPECT_NE(d.body.find("\"deleted\":true"), std::string::npos) << d.body;
  EXPECT_EQ(admin(e, "GET", path).status, 404);
  EXPECT_EQ(admin(e, "DELETE", path).status, 404);
  EXPECT_EQ(admin(e, "POST", path + "/replay").status, 404);
  auto l = admin(e, "GET", "/admin/dead-letters");
  EXPECT_TRUE(list_entries(l.body).empty()) << l.body;
  EXPECT_EQ(json_num(l.body, "size"), 0) << l.body;
  EXPECT_EQ(json_num(l.body, "dropped_total"), 0) << "a delete is not a drop: " << l.body;
}

TEST(DeadLetterQueue, BoundKeepsTheNewestAndCountsTheDropped) {
  Env e = start(/*max_entries=*/3);
  break_all(e);
  std::vector<std::string> sent;
  for (int i = 0; i < 5; ++i) {
    sent.push_back(odd_body("bound-" + std::to_string(i)));
    auto r = post_json(e.gw.port, kChat, sent.back(), kBatchKey);
    ASSERT_GE(r.status, 500) << r.body;
  }
  auto l = admin(e, "GET", "/admin/dead-letters");
  ASSERT_EQ(l.status, 200) << l.body;
  auto entries = list_entries(l.body);
  ASSERT_EQ(entries.size(), 3u) << l.body;
  EXPECT_EQ(json_num(l.body, "size"), 3) << l.body;
  EXPECT_EQ(json_num(l.body, "added_total"), 5) << l.body;
  EXPECT_EQ(json_num(l.body, "dropped_total"), 2) << l.body;
  std::vector<std::int64_t> ids;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    ids.push_back(static_cast<std::int64_t>(json_num(entries[i], "id")));
    auto g = admin(e, "GET", "/admin/dead-letters/" + std::to_string(ids.back()));
    ASSERT_EQ(g.status, 200) << g.body;
    EXPECT_EQ(json_str(g.body, "body"), sent[i + 2]) << "entry " << i << " is the newest three";
  }

  // Keyset paging: after=ID&limit=N.
  auto page = admin(e, "GET", "/admin/dead-letters?after=" + std::to_string(ids[0]) + "&limit=1");
  ASSERT_EQ(page.status, 200) << page.body;
  auto pe = list_entries(page.body);
  ASSERT_EQ(pe.size(), 1u) << page.body;
  EXPECT_EQ(json_num(pe[0], "id"), static_cast<double>(ids[1])) << page.body;
  page = admin(e, "GET", "/admin/dead-letters?after=" + std::to_string(ids[2]));
  EXPECT_TRUE(list_entries(page.body).empty()) << page.body;

  auto m = request(e.gw.port, "GET", "/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(metric(m.body, "bellwether_dlq_entries_total"), 5) << m.body;
  EXPECT_EQ(metric(m.body, "bellwether_dlq_dropped_total"), 2) << m.body;
  // A second scrape does not add the totals again.
  m = request(e.gw.port, "GET", "/metrics");
  EXPECT_EQ(metric(m.body, "bellwether_dlq_entries_total"), 5);
  EXPECT_EQ(metric(m.body, "bellwether_dlq_dropped_total"), 2);
}

// ---- 4: only the admin key ----------------------------------------------------------------------

TEST(DeadLetterQueue, AdminRoutesRefuseAClientKey) {
  Env e = start();
  break_all(e);
  ASSERT_GE(post_json(e.gw.port, kChat, odd_body("private"), kBatchKey).status, 500);
  auto entries = list_entries(admin(e, "GET", "/admin/dead-letters").body);
  ASSERT_EQ(entries.size(), 1u);
  const std::string path = "/admin/dead-letters/" +
                           std::to_string(static_cast<std::int64_t>(json_num(entries[0], "id")));
  heal_all(e);
  const std::int64_t a0 = sim_requests(e.a);
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"GET", "/admin/dead-letters"}, {"GET", path}, {"POST", path + "/replay"}, {"DELETE", path}};
  for (const char* key : {kBatchKey, kClientKey}) {
    for (const Headers& h : {Headers{{"Authorization", std::string("Bearer ") + key}},
                             Headers{{"x-api-key", key}}, Headers{}}) {
      for (const auto& [method, p] : routes) {
        auto r = request(e.gw.port, method, p, "", h);
        EXPECT_EQ(r.status, 401) << method << " " << p << ": " << r.body;
        EXPECT_NE(r.body.find("invalid_admin_key"), std::string::npos) << r.body;
        EXPECT_EQ(r.body.find("private"), std::string::npos) << "no entry data leaks: " << r.body;
      }
    }
  }
  // Nothing happened: no replay reached the provider, the entry is there and not replayed.
  EXPECT_EQ(sim_requests(e.a), a0);
  auto g = admin(e, "GET", path);
  ASSERT_EQ(g.status, 200) << g.body;
  EXPECT_TRUE(json_null(g.body, "replayed_unix_ms")) << g.body;
}

}  // namespace
}  // namespace bw::test
