#pragma once
// The simulated LLM provider: OpenAI chat completions, OpenAI Responses, Anthropic Messages and
// Gemini generateContent natively; chat completions (buffered and streamed token by
// token), completions and embeddings, with per-model latency distributions, capacity limits that
// answer 429 like a real provider, and fault injection by config, by request header
// (x-sim-fault: 500|503|429|reset|stall|slow_headers) or at runtime (POST /sim/control).
// Usage counts are deterministic: they depend only on the request.
// Thread safety: one Simulator serves many worker threads; its state is atomic or locked.
#include <memory>
#include <string>

#include "common/result.h"
#include "config/config.h"
#include "http/server.h"

namespace bw::sim {

class Simulator {
 public:
  explicit Simulator(config::SimConfig cfg);
  ~Simulator();
  // Starts listening on cfg.listen (or the override). Returns the bound port.
  Result<std::uint16_t> start(const std::string& listen_override = {});
  void stop();
  http::Server* server();
  // The handler, for embedding the simulator in another server.
  http::Handler handler();

  struct State;

 private:
  config::SimConfig cfg_;
  std::shared_ptr<State> state_;
  std::unique_ptr<http::Server> server_;
};

// Deterministic token counts shared by the simulator and tests.
std::int64_t estimate_text_tokens(std::size_t chars);

}  // namespace bw::sim
