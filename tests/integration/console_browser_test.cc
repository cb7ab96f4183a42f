// The console in a real browser: headless Chromium (Debian's `chromium`) driven by playwright-core
// (tests/ui/browser, installed by scripts/install-deps.sh) against a gateway in front of two
// simulators whose faults are switched at run time. Each test runs one scenario of
// tests/ui/browser/console.spec.mjs, which prints why it failed.
//
// BW_CONSOLE_SCREENSHOTS=<dir> makes ConsoleBrowser.Screenshots write a picture of every page
// under a spike into <dir> (docs/img holds the committed ones); without it that test skips.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>

#include "harness.h"

namespace bw::test {
namespace {

constexpr const char* kAdminKey = "admin-key-browser-0123456789";
constexpr const char* kClientKey = "sk-client-browser-secret-01";
constexpr const char* kBatchKey = "sk-batch-browser-secret-02";
constexpr const char* kProviderKey = "sk-provider-browser-secret-03";

const std::string kSpecDir = std::string(BW_SOURCE_DIR) + "/tests/ui/browser";

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

std::string chromium() {
  const char* c = std::getenv("BW_CHROMIUM");
  return c && *c ? c : "/usr/bin/chromium";
}

struct Env {
  Sim a, b;
  Gw gw;
  int admin_port = 0;
  std::string dir;
};

Env start() {
  Env e;
  const std::string sim =
      "sim:\n  workers: 2\n  defaults: {ttft: {median_ms: 40}, itl: {median_ms: 4}, "
      "completion_tokens: 12}\n"
      // A provider tier of 12 requests per minute, reported in x-ratelimit-* headers; the
      // gateway is configured with more (1,200), so what binds is what it learns. Its first
      // answers take 400 ms, so that a dozen concurrent requests all reach it before the gateway
      // learns the tier, however slow the machine: they use up the tier's minute at once.
      "  models:\n    tiered: {ttft: {median_ms: 400}, itl: {median_ms: 4}, completion_tokens: 12, "
      "rpm: 12}\n";
  e.a = start_sim(sim);
  e.b = start_sim(sim);
  e.dir = temp_dir();
  e.admin_port = free_port();
  auto provider = [](const std::string& name, const Sim& s) {
    return "  " + name + ": {base_url: \"http://127.0.0.1:" + std::to_string(s.port) +
           "/v1\", api_key_env: BW_TEST_PROVIDER_KEY}\n";
  };
  e.gw = start_gateway(
      std::string("workers: 2\nadmin: {key: ") + kAdminKey + ", listen: 127.0.0.1:" +
          std::to_string(e.admin_port) + "}\n" + "keys:\n  - {name: tester, key: " + kClientKey +
          ", budgets: [{cap_usd: 50, period: daily}]}\n" + "  - {name: batcher, key: " + kBatchKey +
          ", default_priority: 2}\n" + "providers:\n" + provider("pa", e.a) + provider("pb", e.b) +
          R"(model_groups:
  gpt-4.1:
    concurrency: {mode: fixed, initial: 16}
    deployments:
      - {id: m-a, provider: pa, model: m, rpm: 6000}
      - {id: m-b, provider: pb, model: m, rpm: 6000}
  tiered:
    concurrency: {mode: fixed, initial: 16}
    deployments:
      - {id: m-t, provider: pa, model: tiered, rpm: 1200}
pricing:
  tiered: {input: 0.4, output: 1.6}
resilience:
  breaker: {consecutive_failures: 3, open_base: 30s, open_max: 60s}
  retry: {max_attempts: 2, base: 5ms, cap: 20ms, deadline: 10s}
dead_letter: {path: )" +
          e.dir + "/dlq.db}\nledger: {path: " + e.dir + "/ledger.db}\n",
      {{"BW_TEST_PROVIDER_KEY", kProviderKey}});
  EXPECT_TRUE(wait_for_port(e.admin_port));
  return e;
}

std::string env_json(const Env& e, const std::string& out = "") {
  return std::string("{\"ui\":\"http://127.0.0.1:") + std::to_string(e.admin_port) +
         "\",\"gw\":\"http://127.0.0.1:" + std::to_string(e.gw.port) + "\",\"admin_key\":\"" +
         kAdminKey + "\",\"client_key\":\"" + kClientKey + "\",\"batch_key\":\"" + kBatchKey +
         "\",\"provider_key\":\"" + kProviderKey + "\",\"sim_a\":" + std::to_string(e.a.port) +
         ",\"sim_b\":" + std::to_string(e.b.port) + ",\"out\":\"" + out + "\"}";
}

// Runs one scenario; returns its exit status and prints its output.
int run_scenario(const std::string& name, const Env& e, const std::string& out = "") {
  const std::string log = temp_dir() + "/" + name + ".log";
  const std::string cmd = "cd '" + kSpecDir + "' && BW_CHROMIUM='" + chromium() +
                          "' timeout 150 node console.spec.mjs " + name + " '" + env_json(e, out) +
                          "' > '" + log + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  std::cerr << read_file(log);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

class ConsoleBrowser : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!exists(chromium())) GTEST_SKIP() << chromium() << " missing (scripts/install-deps.sh)";
    if (!exists(kSpecDir + "/node_modules/playwright-core")) {
      GTEST_SKIP() << "playwright-core missing in tests/ui/browser (scripts/install-deps.sh)";
    }
    if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node missing";
  }
};

TEST_F(ConsoleBrowser, LoginAndWrongKeyRefused) {
  Env e = start();
  EXPECT_EQ(run_scenario("login", e), 0);
}

TEST_F(ConsoleBrowser, LiveNumbersMoveUnderLoad) {
  Env e = start();
  EXPECT_EQ(run_scenario("live", e), 0);
}

TEST_F(ConsoleBrowser, WrongKeysThrottleTheLoginForm) {
  Env e = start();
  EXPECT_EQ(run_scenario("throttle", e), 0);
}

TEST_F(ConsoleBrowser, WaitReasonAndLearnedCapacityUnderAnRpmTier) {
  Env e = start();
  EXPECT_EQ(run_scenario("capacity", e), 0);
}

TEST_F(ConsoleBrowser, KeyCreatedInUiWorksAndRevokedStops) {
  Env e = start();
  EXPECT_EQ(run_scenario("keys", e), 0);
}

TEST_F(ConsoleBrowser, BreakerOpenInSimulatorShowsOpen) {
  Env e = start();
  EXPECT_EQ(run_scenario("breaker", e), 0);
}

TEST_F(ConsoleBrowser, DeadLetterReplays) {
  Env e = start();
  EXPECT_EQ(run_scenario("dlq", e), 0);
}

TEST_F(ConsoleBrowser, NoSecretOnAnyPage) {
  Env e = start();
  EXPECT_EQ(run_scenario("secrets", e), 0);
}

TEST_F(ConsoleBrowser, RoutesNeedSessionAndChangesNeedTokenAndOrigin) {
  Env e = start();
  EXPECT_EQ(run_scenario("security", e), 0);
}

TEST_F(ConsoleBrowser, Screenshots) {
  const char* out = std::getenv("BW_CONSOLE_SCREENSHOTS");
  if (!out || !*out) GTEST_SKIP() << "set BW_CONSOLE_SCREENSHOTS=<dir> to take screenshots";
  Env e = start();
  EXPECT_EQ(run_scenario("screenshots", e, out), 0);
}

}  // namespace
}  // namespace bw::test
