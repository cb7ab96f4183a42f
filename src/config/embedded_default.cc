#include "config/config.h"

namespace bw::config {

// The configuration used when `bellwether serve` runs without --config: four simulated models
// served by the in-process simulator (Claude through the Anthropic adapter, Gemini through the
// Gemini adapter), and one demo key. main() sets BELLWETHER_DEMO_KEY and
// BELLWETHER_ADMIN_KEY to generated values when they are not set.
const std::string& embedded_default_yaml() {
  static const std::string kYaml = R"yaml(# Bellwether embedded default
listen: 127.0.0.1:8080
admin:
  key: ${BELLWETHER_ADMIN_KEY}
access_log:
  path: "-"
ledger:
  path: ${BELLWETHER_DB:-bellwether.db}
admission:
  max_queue: 10000
  max_wait: {p0: 30s, p1: 20s, p2: 10s}
  default_concurrency: {mode: adaptive, initial: 64, min: 8, max: 512}
cost_guard:
  soft_threshold: 0.9
  downgrade: {gpt-4.1: deepseek-v3.2, claude-sonnet-4.5: gemini-2.5-flash}
providers:
  simulated:
    type: sim
  # The same simulator spoken to in Anthropic's and Gemini's own APIs, so that Claude and Gemini
  # go through their native adapters as they would against the real providers.
  simulated-anthropic:
    type: sim
    format: anthropic
  simulated-gemini:
    type: sim
    format: gemini
model_groups:
  gpt-4.1:
    deployments: [{provider: simulated, model: gpt-4.1}]
    fallbacks: [gemini-2.5-flash, deepseek-v3.2]
    max_output_tokens: 1024
  claude-sonnet-4.5:
    deployments: [{provider: simulated-anthropic, model: claude-sonnet-4.5}]
    fallbacks: [gemini-2.5-flash]
    max_output_tokens: 1024
  gemini-2.5-flash:
    deployments: [{provider: simulated-gemini, model: gemini-2.5-flash}]
    fallbacks: [deepseek-v3.2]
    max_output_tokens: 1024
  deepseek-v3.2:
    deployments: [{provider: simulated, model: deepseek-v3.2}]
    max_output_tokens: 1024
keys:
  - name: demo
    key: ${BELLWETHER_DEMO_KEY}
    plan: starter
    default_priority: 1
    max_priority: 0
    budget: {cap_usd: 10, period: daily}
sim:
  listen: 127.0.0.1:0
  max_tokens: limit
  defaults:
    ttft: {median_ms: 120, p99_ms: 450}
    itl: {median_ms: 12, p99_ms: 40}
    completion_tokens: 48
  models:
    gpt-4.1: {ttft: {median_ms: 250, p99_ms: 900}, itl: {median_ms: 18, p99_ms: 60}}
    claude-sonnet-4.5: {ttft: {median_ms: 300, p99_ms: 1100}, itl: {median_ms: 20, p99_ms: 70}}
    gemini-2.5-flash: {ttft: {median_ms: 120, p99_ms: 400}, itl: {median_ms: 8, p99_ms: 30}}
    deepseek-v3.2: {ttft: {median_ms: 200, p99_ms: 800}, itl: {median_ms: 15, p99_ms: 50}}
)yaml";
  return kYaml;
}

}  // namespace bw::config
