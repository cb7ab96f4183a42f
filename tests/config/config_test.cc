// The config loader in process: every section's reader names file:line and the key of what it
// refuses, and the policy layers' own config types come out of it ready to use.
#include "config/config.h"

#include <gtest/gtest.h>

#include <string>

namespace bw::config {
namespace {

// A minimal valid base: one simulated provider and one model group.
constexpr const char* kBase =
    "providers:\n"              // 1
    "  sim: {type: sim}\n"      // 2
    "model_groups:\n"           // 3
    "  m:\n"                    // 4
    "    deployments:\n"        // 5
    "      - provider: sim\n";  // 6

// The error message of loading `yaml` as "t.yaml" (empty if it loaded).
std::string error_of(const std::string& yaml) {
  auto r = load_string(yaml, "t.yaml");
  return r.ok() ? std::string() : r.error().message;
}

// The message starts with "t.yaml:<line>: <key>: ".
void expect_error_at(const std::string& yaml, int line, const std::string& key) {
  const std::string e = error_of(yaml);
  const std::string prefix = "t.yaml:" + std::to_string(line) + ": " + key + ": ";
  EXPECT_EQ(e.substr(0, prefix.size()), prefix) << e;
}

TEST(ConfigLoad, TheBaseLoads) {
  auto r = load_string(kBase, "t.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Config& c = **r;
  ASSERT_EQ(c.model_groups.size(), 1u);
  EXPECT_EQ(c.model_groups[0].name, "m");
  EXPECT_EQ(c.model_groups[0].deployments.at(0).id, "m/sim/0");
}

TEST(ConfigLoad, UnknownTopLevelKey) {
  expect_error_at(std::string(kBase) + "colour: blue\n", 7, "colour");
}

TEST(ConfigServer, NamesTheKey) {
  expect_error_at("listen: nowhere\n", 1, "listen");
  expect_error_at("server:\n  max_header_bytes: 10\n", 2, "server.max_header_bytes");
  expect_error_at("server:\n  trusted_proxies: [10.0.0.0/99]\n", 2, "server.trusted_proxies");
  expect_error_at("server:\n  idle_timeout: soon\n", 2, "server.idle_timeout");
}

TEST(ConfigRedis, NamesTheKey) {
  expect_error_at("redis:\n  url: http://x\n", 2, "redis.url");
  expect_error_at("redis:\n  failure_policy: maybe\n", 2, "redis.failure_policy");
}

TEST(ConfigLimits, NamesTheKey) {
  expect_error_at("limits:\n  - name: a\n    rate: 0\n", 3, "limits[0].rate");
  expect_error_at("limits:\n  - name: a\n    rate: 5\n    algorithm: leaky\n", 4,
                  "limits[0].algorithm");
  expect_error_at("limits:\n  - {name: a, rate: 5}\n  - {name: a, rate: 6}\n", 3, "limits[1].name");
}

TEST(ConfigPlans, NamesTheKey) {
  expect_error_at("plans:\n  gold:\n    default_priority: 7\n", 3, "plans.gold.default_priority");
}

TEST(ConfigAdmin, NamesTheKey) {
  expect_error_at("admin:\n  key: short\n", 2, "admin.key");
  expect_error_at("admin:\n  listen: nowhere\n", 2, "admin.listen");
}

TEST(ConfigAccessLog, NamesTheKey) {
  expect_error_at("access_log:\n  file: x\n", 2, "access_log.file");
}

TEST(ConfigAdmission, NamesTheKey) {
  expect_error_at("admission:\n  max_queue: 0\n", 2, "admission.max_queue");
  expect_error_at("admission:\n  default_concurrency:\n    mode: psychic\n", 3,
                  "admission.default_concurrency.mode");
  expect_error_at("admission:\n  metrics_access: everyone\n", 2, "admission.metrics_access");
}

TEST(ConfigProviders, NamesTheKey) {
  expect_error_at("providers:\n  p:\n    type: carrier_pigeon\n", 3, "providers.p.type");
  expect_error_at("providers:\n  p:\n    type: openai\n    base_url: ftp://x\n", 4,
                  "providers.p.base_url");
}

TEST(ConfigModelGroups, AnInvalidBalancerFailsAtLoad) {
  expect_error_at(std::string(kBase) + "    balancer: random\n", 7, "model_groups.m.balancer");
  expect_error_at(std::string(kBase) + "      - provider: nope\n", 7,
                  "model_groups.m.deployments[1].provider");
  expect_error_at(std::string(kBase) + "    fallbacks: [m]\n", 7, "model_groups.m.fallbacks");
}

TEST(ConfigModelGroups, CarryTheRoutersOwnTypes) {
  auto r = load_string(std::string(kBase) +
                           "    balancer: least_outstanding\n"
                           "  n:\n"
                           "    deployments: [{provider: sim, weight: 3, rpm: 60}]\n"
                           "    fallbacks: [m]\n",
                       "t.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const ModelGroupConfig* m = (*r)->model_group("m");
  const ModelGroupConfig* n = (*r)->model_group("n");
  ASSERT_TRUE(m && n);
  // The router takes these as they are: no copy, no default for an unknown value.
  const routing::ModelGroupConfig& routed = *m;
  EXPECT_EQ(routed.balancer, routing::BalancerKind::kLeastOutstanding);
  EXPECT_EQ(n->balancer, routing::BalancerKind::kP2cPeakEwma);
  EXPECT_EQ(n->deployments.at(0).weight, 3u);
  EXPECT_EQ(n->deployments.at(0).rpm, 60);
  EXPECT_EQ(n->fallbacks, std::vector<std::string>{"m"});
}

TEST(ConfigModelGroups, DeploymentScaleNamesTheKey) {
  expect_error_at(std::string(kBase) + "        scale: {target: {deployment: d}, min: 2}\n", 7,
                  "model_groups.m.deployments[0].scale");
  expect_error_at(std::string(kBase) + "        scale: {target: {}, capacity_concurrency: 4}\n", 7,
                  "model_groups.m.deployments[0].scale.target.deployment");
}

TEST(ConfigKeys, NamesTheKey) {
  const std::string base = std::string(kBase) + "keys:\n";  // line 7
  expect_error_at(base + "  - {name: k, key: short}\n", 8, "keys[0].key");
  expect_error_at(base + "  - {name: k, key: long-enough-key, plan: platinum}\n", 8,
                  "keys[0].plan");
  expect_error_at(base + "  - {name: k, key: long-enough-key, allowed_models: [x]}\n", 8,
                  "keys[0].allowed_models");
  expect_error_at(
      base + "  - name: k\n    key: long-enough-key\n    budget: {cap_usd: 5, period: weekly}\n",
      10, "keys[0].budget.period");
}

TEST(ConfigResilience, NamesTheKey) {
  expect_error_at("resilience:\n  breaker:\n    failure_rate: 2\n", 3,
                  "resilience.breaker.failure_rate");
  expect_error_at("resilience:\n  retry:\n    retry_statuses: [429]\n", 3,
                  "resilience.retry.retry_statuses");
}

TEST(ConfigDeadLetter, NamesTheKey) {
  expect_error_at("dead_letter:\n  max_entries: 0\n", 2, "dead_letter.max_entries");
}

TEST(ConfigPricing, NamesTheKey) {
  expect_error_at("pricing:\n  gpt:\n    input: -1\n", 3, "pricing.gpt.input");
}

TEST(ConfigPricing, ImageTokensPerEntry) {
  expect_error_at("pricing:\n  gpt:\n    image_tokens: -5\n", 3, "pricing.gpt.image_tokens");
  auto r = load_string(std::string(kBase) +
                           "pricing:\n  mini: {input: 0.15, output: 0.6, image_tokens: 25501}\n"
                           "  plain: {input: 1, output: 2}\n",
                       "t.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Config& c = **r;
  ASSERT_NE(c.prices.find("mini"), nullptr);
  EXPECT_EQ(cost::image_token_bound(*c.prices.find("mini")), 25'501);
  EXPECT_EQ(cost::image_token_bound(*c.prices.find("plain")), cost::kDefaultImageTokens);
}

TEST(ConfigBudgets, NamesTheKey) {
  expect_error_at("budgets:\n  global: {period: monthly}\n", 2, "budgets.global.cap_usd");
  expect_error_at("tenants:\n  acme:\n    budget: {cap_usd: 1, period: hourly}\n", 3,
                  "tenants.acme.budget.period");
}

TEST(ConfigCostGuard, NamesTheKey) {
  expect_error_at(std::string(kBase) + "cost_guard:\n  downgrade: {m: nothing}\n", 8,
                  "cost_guard.downgrade");
  expect_error_at("cost_guard:\n  alerts:\n    thresholds: [2]\n", 3,
                  "cost_guard.alerts.thresholds");
}

TEST(ConfigLedger, NamesTheKey) {
  expect_error_at("ledger:\n  path: a.db\n  postgres: postgresql://x\n", 2, "ledger");
  expect_error_at("ledger:\n  path: a.db\n  durability: disk\n", 3, "ledger.durability");
}

TEST(ConfigLedger, DurabilityIsProcessUnlessMachineIsAsked) {
  auto r = load_string(std::string(kBase) + "ledger: {path: a.db}\n", "t.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE((*r)->ledger_sync_machine);
  r = load_string(std::string(kBase) + "ledger: {path: a.db, durability: machine}\n", "t.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE((*r)->ledger_sync_machine);
  r = load_string(std::string(kBase) + "ledger: {path: a.db, durability: process}\n", "t.yaml");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE((*r)->ledger_sync_machine);
}

TEST(ConfigScaler, NamesTheKey) {
  expect_error_at("scaler:\n  method: crystal_ball\n", 2, "scaler.method");
  expect_error_at("scaler:\n  min_replicas: 5\n  max_replicas: 2\n", 2, "scaler");
}

TEST(ConfigScaler, GatewayCapacityNamesTheKey) {
  expect_error_at("scaler:\n  gateway:\n    target_cpu_utilization: 2\n", 3,
                  "scaler.gateway.target_cpu_utilization");
}

TEST(ConfigSim, NamesTheKey) {
  expect_error_at("sim:\n  max_tokens: sometimes\n", 2, "sim.max_tokens");
  expect_error_at("sim:\n  models:\n    m:\n      ttft: {median_ms: 10, p99_ms: 5}\n", 4,
                  "sim.models.m.ttft");
}

}  // namespace
}  // namespace bw::config
