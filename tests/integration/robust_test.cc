// Hostile clients and failing backends through real processes: protocol defects seen from the
// gateway's access log and metrics; budget bypasses against a provider-like upstream that bills
// every choice and every input token and keeps the last of two duplicate keys
// (billing_upstream.py); and the failure policy of the money path (ledger disk full or
// unwritable: budgeted keys get 503, the others are served, recovery needs no restart).
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "harness.h"
#include "support/eventually.h"

namespace bw::test {
namespace {

using Clock = std::chrono::steady_clock;
using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr const char* kAdmin = "admin-key-robust-0123456789ab";
constexpr const char* kChat = "/v1/chat/completions";
constexpr const char* kOpenKey = "sk-robust-open-0001";      // no budget
constexpr const char* kBudgetKey = "sk-robust-budget-0001";  // cap below
constexpr double kCapUsd = 0.05;

HttpResponse admin(int port, const std::string& method, const std::string& path) {
  return request(port, method, path, "", {{"Authorization", std::string("Bearer ") + kAdmin}});
}

using bw::testing::eventually;

// Strict UTF-8 check (RFC 3629).
bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

std::string keys_yaml(const std::string& budget_cap = std::to_string(kCapUsd)) {
  return std::string("keys:\n  - {name: open, key: ") + kOpenKey + ", plan: bulk}\n" +
         "  - {name: capped, key: " + kBudgetKey + ", plan: bulk, budget: {cap_usd: " + budget_cap +
         ", period: total}}\n";
}

// Providers, plans, groups and prices; `upstream_port` serves /v1/chat/completions.
std::string gateway_yaml(int upstream_port, const std::string& ledger_path) {
  return std::string("workers: 2\nadmin:\n  key: ") + kAdmin +
         "\nproviders:\n  up:\n    base_url: http://127.0.0.1:" + std::to_string(upstream_port) +
         "/v1\nplans:\n  bulk:\n    limits: [{name: rps, rate: 1000000, period: second, burst: "
         "1000000}]\nmodel_groups:\n  m:\n    deployments: [{provider: up, model: m}]\n"
         "  m-nousage:\n    deployments: [{provider: up, model: m-nousage}]\n"
         "  m-badusage:\n    deployments: [{provider: up, model: m-badusage}]\n"
         "pricing:\n  m: {input: 1, output: 10, max_output_tokens: 4096}\n"
         "  m-nousage: {input: 1, output: 10, max_output_tokens: 4096}\n"
         "  m-badusage: {input: 1, output: 10, max_output_tokens: 4096}\n"
         "ledger: {path: " +
         ledger_path + "}\n" + keys_yaml();
}

struct Billing {
  Process proc;
  int port = 0;
  // What the upstream billed so far, in micro-dollars at the gateway's prices for "m".
  std::int64_t billed_micros() const {
    auto r = request(port, "GET", "/billed");
    const double p = num(r.body, "prompt_tokens"), c = num(r.body, "completion_tokens");
    return std::llround(p * 1.0 + c * 10.0);  // $1 / $10 per 1M tokens = 1 / 10 micro-$ a token
  }
};

Billing start_billing_upstream() {
  Billing b;
  b.port = free_port();
  b.proc = Process(
      {"/usr/bin/python3", std::string(BW_SOURCE_DIR) + "/tests/integration/billing_upstream.py",
       std::to_string(b.port)},
      {}, "billing-");
  if (!wait_for_port(b.port)) throw std::runtime_error("billing upstream did not start");
  return b;
}

struct Env {
  Billing up;
  Gw gw;
  std::string dir;
  std::int64_t spent_micros() const {
    auto r = admin(gw.port, "GET", "/admin/budgets");
    return std::llround(num(object_with(r.body, "\"id\":\"key:capped/total\""), "spent_usd") * 1e6);
  }
  std::int64_t reserved_micros() const {
    auto r = admin(gw.port, "GET", "/admin/budgets");
    return std::llround(num(object_with(r.body, "\"id\":\"key:capped/total\""), "reserved_usd") *
                        1e6);
  }
};

Env start_env(const std::string& ledger_dir = {}) {
  Env e;
  e.dir = temp_dir();
  e.up = start_billing_upstream();
  e.gw = start_gateway(
      gateway_yaml(e.up.port, (ledger_dir.empty() ? e.dir : ledger_dir) + "/ledger.db"));
  return e;
}

HttpResponse chat(const Env& e, const std::string& body, const char* key = kBudgetKey) {
  return post_json(e.gw.port, kChat, body, key);
}

// Sends `body` until the budget refuses it (at most `max` times); the settled spend and what the
// upstream billed must both stay within the cap.
void attack_until_refused(Env& e, const std::string& body, int max, const char* what,
                          const char* path = kChat) {
  int ok = 0, refused = 0;
  for (int i = 0; i < max && refused == 0; ++i) {
    auto r = post_json(e.gw.port, path, body, kBudgetKey);
    if (r.status == 200) ++ok;
    if (r.status == 429) ++refused;
    ASSERT_TRUE(r.status == 200 || r.status == 429) << what << ": " << r.status << " " << r.body;
  }
  ASSERT_TRUE(eventually([&] { return e.reserved_micros() == 0; })) << what;
  const auto cap = std::llround(kCapUsd * 1e6);
  const auto spent = e.spent_micros();
  const auto billed = e.up.billed_micros();
  std::printf(
      "[ %s ] %d served, %d refused; settled %lld, upstream billed %lld, cap %lld (micro-$)\n",
      what, ok, refused, static_cast<long long>(spent), static_cast<long long>(billed),
      static_cast<long long>(cap));
  EXPECT_EQ(refused, 1) << what << ": the cap was never reached";
  EXPECT_LE(spent, cap) << what;
  EXPECT_LE(billed, cap) << what << ": the provider billed more than the cap";
  // The gateway never charged less than the provider billed.
  EXPECT_GE(spent, billed) << what;
}

// ---- budget bypasses ---------------------------------------------------------------------------

TEST(BudgetBypass, NChoicesAreReserved) {
  auto e = start_env();
  // 100 choices of 200 tokens: 20,000 completion tokens = $0.20 a request, above the $0.05 cap.
  attack_until_refused(
      e, R"({"model":"m","n":100,"max_tokens":200,"messages":[{"role":"user","content":"hi"}]})", 5,
      "n=100");
  // A single choice still fits.
  EXPECT_EQ(
      chat(e, R"({"model":"m","max_tokens":20,"messages":[{"role":"user","content":"x"}]})").status,
      200);
}

// Images are reserved at the most one image is billed, in every client API: 25 images billed at
// 765 tokens each (19,125 micro-$ a request here) were reserved as 1,000 characters each in the
// Messages and Responses APIs (~8,300), so the third request went past the cap.
TEST(BudgetBypass, ImagesAreReservedInEveryApi) {
  std::string blocks, parts;
  for (int i = 0; i < 25; ++i) {
    blocks +=
        std::string(i ? "," : "") +
        R"({"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}})";
    parts += std::string(i ? "," : "") +
             R"({"type":"input_image","image_url":"data:image/png;base64,AAAA"})";
  }
  {
    auto e = start_env();
    attack_until_refused(
        e,
        R"({"model":"m","max_tokens":1,"messages":[{"role":"user","content":[)" + blocks + "]}]}",
        5, "25 images, Messages", "/v1/messages");
  }
  {
    auto e = start_env();
    attack_until_refused(e,
                         R"({"model":"m","max_output_tokens":16,"input":[{"role":"user",)"
                         R"("content":[)" +
                             parts + "]}]}",
                         5, "25 images, Responses", "/v1/responses");
  }
}

TEST(BudgetBypass, ToolsAndSchemasAreReserved) {
  auto e = start_env();
  // 400 KB of tool description: ~100k tokens billed = $0.10 per request.
  const std::string big(400'000, 'd');
  attack_until_refused(e,
                       R"({"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}],)"
                       R"("tools":[{"type":"function","function":{"name":"f","description":")" +
                           big + R"(","parameters":{"type":"object"}}}]})",
                       5, "tools");
  auto e2 = start_env();
  attack_until_refused(e2,
                       R"({"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}],)"
                       R"("response_format":{"type":"json_schema","json_schema":{"name":"s",)"
                       R"("schema":{"description":")" +
                           big + R"("}}}})",
                       5, "response_format");
}

TEST(BudgetBypass, DuplicateKeysAreRefusedWithTheKeyNamed) {
  auto e = start_env();
  for (const auto& [body, key] : std::vector<std::pair<std::string, std::string>>{
           {R"({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],)"
            R"("stream":false,"stream":true})",
            "stream"},
           {R"({"model":"m","max_tokens":5,"max_tokens":4000,"messages":[{"role":"user",)"
            R"("content":"hi"}]})",
            "max_tokens"},
           {R"({"model":"m","max_tokens":5,"n":1,"n":100,"messages":[{"role":"user",)"
            R"("content":"hi"}]})",
            "n"},
           {R"({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a",)"
            R"("content":"b"}]})",
            "content"}}) {
    auto r = chat(e, body);
    EXPECT_EQ(r.status, 400) << body << " -> " << r.body;
    EXPECT_NE(r.body.find("\"code\":\"duplicate_key\""), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("\"param\":\"" + key + "\""), std::string::npos) << r.body;
  }
  // The Messages and Responses APIs too, each in its own error shape.
  auto m = post_json(e.gw.port, "/v1/messages",
                     R"({"model":"m","max_tokens":5,"max_tokens":4000,"messages":[{"role":"user",)"
                     R"("content":"hi"}]})",
                     kBudgetKey);
  EXPECT_EQ(m.status, 400) << m.body;
  EXPECT_NE(m.body.find("\"type\":\"error\""), std::string::npos) << m.body;
  EXPECT_NE(m.body.find("max_tokens"), std::string::npos) << m.body;
  auto r = post_json(e.gw.port, "/v1/responses",
                     R"({"model":"m","input":"hi","max_output_tokens":5,"max_output_tokens":4000})",
                     kBudgetKey);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("\"code\":\"duplicate_key\""), std::string::npos) << r.body;
  EXPECT_EQ(e.up.billed_micros(), 0) << "a refused request reached the upstream";
}

TEST(BudgetBypass, AnswersWithoutUsageAreChargedAnEstimate) {
  auto e = start_env();
  const std::string buffered =
      R"({"model":"m-nousage","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]})";
  auto r = chat(e, buffered);
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(eventually([&] { return e.reserved_micros() == 0; }));
  const auto after_one = e.spent_micros();
  EXPECT_GE(after_one, e.up.billed_micros()) << "an answer without usage was charged too little";
  EXPECT_GT(after_one, 0);
  // Streamed, too.
  const std::string streamed =
      R"({"model":"m-nousage","stream":true,"max_tokens":1000,"messages":[{"role":"user",)"
      R"("content":"hi"}]})";
  auto s = chat(e, streamed);
  ASSERT_EQ(s.status, 200) << s.body;
  ASSERT_TRUE(eventually([&] { return e.reserved_micros() == 0; }));
  EXPECT_GT(e.spent_micros(), after_one);
  auto metrics = request(e.gw.port, "GET", "/metrics").body;
  EXPECT_NE(metrics.find("bellwether_usage_missing_total{model=\"m-nousage\"} 2"),
            std::string::npos)
      << metrics.substr(0, 300);
  attack_until_refused(e, buffered, 20, "no usage");
}

// One request: the path and its body.
using Call = std::pair<const char*, std::string>;

// Each call is answered 200 and charged at least what the upstream billed for it.
void expect_each_charged_what_was_billed(const Env& e, const std::vector<Call>& calls) {
  for (const auto& [path, body] : calls) {
    const auto spent_before = e.spent_micros();
    const auto billed_before = e.up.billed_micros();
    auto r = post_json(e.gw.port, path, body, kBudgetKey);
    ASSERT_EQ(r.status, 200) << path << " " << body << ": " << r.body;
    ASSERT_TRUE(eventually([&] { return e.reserved_micros() == 0; }));
    EXPECT_GE(e.spent_micros() - spent_before, e.up.billed_micros() - billed_before)
        << path << " " << body << ": charged less than the upstream billed";
  }
}

// The same answers reaching a client of another API: the answer is translated, and its missing
// or unreadable usage must not make it free there either.
TEST(BudgetBypass, TranslatedAnswersWithoutUsageAreChargedAnEstimate) {
  auto e = start_env();
  const std::vector<Call> calls = {
      {"/v1/messages",
       R"({"model":"m-nousage","max_tokens":500,"messages":[{"role":"user","content":"hi"}]})"},
      {"/v1/messages",
       R"({"model":"m-nousage","stream":true,"max_tokens":500,"messages":[{"role":"user",)"
       R"("content":"hi"}]})"},
      {"/v1/responses", R"({"model":"m-nousage","max_output_tokens":500,"input":"hi"})"},
      {"/v1/responses",
       R"({"model":"m-nousage","stream":true,"max_output_tokens":500,"input":"hi"})"},
  };
  expect_each_charged_what_was_billed(e, calls);
}

// Usage that is there but cannot be trusted (a count as a string, a negative count) is treated
// like usage that is missing: charged an estimate, never read as zero.
TEST(BudgetBypass, UnreadableUsageIsChargedAnEstimate) {
  auto e = start_env();
  const std::vector<Call> calls = {
      {kChat,
       R"({"model":"m-badusage","max_tokens":500,"messages":[{"role":"user","content":"hi"}]})"},
      {kChat, R"({"model":"m-badusage","stream":true,"max_tokens":500,"messages":[{"role":"user",)"
              R"("content":"hi"}]})"},
      {"/v1/messages",
       R"({"model":"m-badusage","max_tokens":500,"messages":[{"role":"user","content":"hi"}]})"},
      {"/v1/messages",
       R"({"model":"m-badusage","stream":true,"max_tokens":500,"messages":[{"role":"user",)"
       R"("content":"hi"}]})"},
      {"/v1/responses", R"({"model":"m-badusage","max_output_tokens":500,"input":"hi"})"},
      {"/v1/responses",
       R"({"model":"m-badusage","stream":true,"max_output_tokens":500,"input":"hi"})"},
  };
  expect_each_charged_what_was_billed(e, calls);
  auto metrics = request(e.gw.port, "GET", "/metrics").body;
  EXPECT_NE(metrics.find("bellwether_usage_missing_total{model=\"m-badusage\"} 6"),
            std::string::npos)
      << metrics.substr(0, 300);
}

// ---- protocol, seen from the gateway -----------------------------------------------------------

TEST(GatewayProtocol, RawPathBytesAreEscapedInto404AndAccessLog) {
  auto e = start_env();
  auto r = raw_request(e.gw.port, "GET /v1/\xff\xfe\xc3 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(valid_utf8(r.body)) << r.body;
  EXPECT_NE(r.body.find("\xEF\xBF\xBD"), std::string::npos) << r.body;
  ASSERT_TRUE(eventually(
      [&] { return read_file(e.gw.access_log).find("\"status\":404") != std::string::npos; }));
  EXPECT_TRUE(valid_utf8(read_file(e.gw.access_log)));
}

TEST(GatewayProtocol, FramingRejectionsWriteAnAccessLogLineAndAMetric) {
  auto e = start_env();
  auto r = raw_request(e.gw.port, std::string("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                              "Transfer-Encoding: chunked\r\n\r\n1;") +
                                      std::string(20'000, 'a'));
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(r.closed);
  r = raw_request(e.gw.port, "GET /v1/models HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.status, 400);
  std::string line;
  ASSERT_TRUE(eventually([&] {
    auto log = read_file(e.gw.access_log);
    auto at = log.find("http:chunk_line_too_long");
    if (at == std::string::npos) return false;
    line = log.substr(log.rfind('\n', at) + 1, log.find('\n', at) - log.rfind('\n', at) - 1);
    return log.find("http:missing_host") != std::string::npos;
  })) << read_file(e.gw.access_log);
  EXPECT_NE(line.find("\"status\":400"), std::string::npos) << line;
  EXPECT_NE(line.find("\"client_ip\":\"127.0.0.1\""), std::string::npos) << line;
  EXPECT_NE(line.find("\"path\":\"/v1/chat/completions\""), std::string::npos) << line;
  EXPECT_EQ(line.find("\"bytes_in\":0,"), std::string::npos) << line;
  auto metrics = request(e.gw.port, "GET", "/metrics").body;
  EXPECT_NE(metrics.find("bellwether_http_rejections_total{reason=\"chunk_line_too_long\"} 1"),
            std::string::npos);
  EXPECT_NE(metrics.find("bellwether_http_rejections_total{reason=\"missing_host\"} 1"),
            std::string::npos);
}

TEST(GatewayProtocol, HeadAnswersCarryNoBodyAndKeepTheConnectionInSync) {
  auto e = start_env();
  // A HEAD and a GET on one connection: the GET's answer must follow the HEAD's head directly.
  StreamReader s(e.gw.port,
                 "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string all;
  TimedChunk c;
  while (s.read_some(c, std::chrono::seconds(3))) all += c.data;
  const auto head_end = all.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos) << all;
  EXPECT_TRUE(all.starts_with("HTTP/1.1 200")) << all;
  EXPECT_TRUE(all.substr(head_end + 4).starts_with("HTTP/1.1 200"))
      << "a HEAD answer had a body: " << all;
  EXPECT_EQ(count(all, "HTTP/1.1 200"), 2u) << all;
}

TEST(GatewayProtocol, AbandonedStreamIsLoggedWith499) {
  // A stream that takes seconds (2,000 tokens, 2 ms apart), abandoned after its first bytes: the
  // gateway's next write after the close fails. (An upstream that answers at once would let the
  // whole stream fit in the sockets' buffers before the client's close is seen.)
  Sim sim = start_sim(
      "sim:\n  defaults: {ttft: {median_ms: 1}, itl: {median_ms: 2}, completion_tokens: 2000}\n");
  Gw gw = start_gateway(
      "workers: 1\nproviders:\n  sim: {base_url: \"http://127.0.0.1:" + std::to_string(sim.port) +
      "/v1\"}\nmodel_groups:\n  m:\n    deployments: [{provider: sim, model: m}]\n"
      "keys:\n  - {name: open, key: " +
      std::string(kOpenKey) + "}\n");
  StreamReader s(gw.port, raw_post(kChat,
                                   R"({"model":"m","stream":true,)"
                                   R"("messages":[{"role":"user","content":"hi"}]})",
                                   kOpenKey));
  TimedChunk c;
  ASSERT_TRUE(s.read_some(c));
  s.close();
  ASSERT_TRUE(eventually(
      [&] { return read_file(gw.access_log).find("\"status\":499") != std::string::npos; },
      std::chrono::seconds(10)))
      << read_file(gw.access_log);
  auto log = read_file(gw.access_log);
  EXPECT_NE(log.find("\"cancelled\":true"), std::string::npos);
}

// ---- failure policies of the money path --------------------------------------------------------

bool try_mount_tmpfs(const std::string& dir, const std::string& size) {
  return ::mount("tmpfs", dir.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
}

TEST(MoneyPath, LedgerDiskFullFailsClosedForBudgetsOnlyAndRecovers) {
  const std::string mnt = temp_dir() + "/ledger-fs";
  std::filesystem::create_directories(mnt);
  if (!try_mount_tmpfs(mnt, "2m")) GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  struct Unmount {
    std::string dir;
    ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unmount{mnt};
  auto e = start_env(mnt);
  const std::string body =
      R"({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]})";
  ASSERT_EQ(chat(e, body).status, 200);
  // Fill the file system to the last byte.
  {
    std::ofstream fill(mnt + "/filler", std::ios::binary);
    const std::string block(64 * 1024, 'x');
    while (fill.write(block.data(), block.size())) {
    }
  }
  {
    std::ofstream fill(mnt + "/filler2", std::ios::binary);
    while (fill.put('x')) {
    }
  }
  int refused = 0;
  for (int i = 0; i < 30; ++i) {
    auto r = chat(e, body + std::string(0, ' '));
    if (r.status == 503) {
      ++refused;
      EXPECT_NE(r.body.find("ledger_unavailable"), std::string::npos) << r.body;
      break;
    }
    ASSERT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(refused, 1) << "a budgeted key was served while its spend could not be recorded";
  // A key without a budget is served meanwhile.
  EXPECT_EQ(chat(e, body, kOpenKey).status, 200);
  // Space again: served again, without a restart.
  std::filesystem::remove(mnt + "/filler");
  std::filesystem::remove(mnt + "/filler2");
  EXPECT_TRUE(eventually([&] { return chat(e, body).status == 200; }, std::chrono::seconds(10)));
  ASSERT_TRUE(eventually([&] { return e.reserved_micros() == 0; }));
}

}  // namespace
}  // namespace bw::test
