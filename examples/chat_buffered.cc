// Buffered chat completion with retries, a fallback model and typed errors.
// Usage: bw_example_chat_buffered [base_url] [model] ; API key from BELLWETHER_API_KEY.
#include <bellwether/client.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  bellwether::ClientConfig cfg;
  cfg.base_url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
  if (const char* key = std::getenv("BELLWETHER_API_KEY")) cfg.api_key = key;
  cfg.retry.max_attempts = 4;             // 429/5xx/network: backoff with full jitter
  cfg.fallback_models = {"gpt-4o-mini"};  // tried on 404/5xx/open breaker
  bellwether::Client client(cfg);

  bellwether::ChatRequest req;
  req.model = argc > 2 ? argv[2] : "gpt-4o";
  req.messages = {{"system", "You are terse."}, {"user", "Name one sheep breed."}};
  req.max_tokens = 32;

  auto r = client.chat(req);
  if (!r) {
    const auto& e = r.error();
    std::fprintf(stderr, "error %s (HTTP %d, retry after %.1fs): %s\n",
                 bellwether::to_string(e.kind), e.status, e.retry_after_s, e.message.c_str());
    return 1;
  }
  std::printf("%s\n[model %s, %lld+%lld tokens, %d attempt(s), %.0f ms]\n", r->content.c_str(),
              r->served_by.empty() ? r->model.c_str() : r->served_by.c_str(),
              static_cast<long long>(r->usage.prompt_tokens),
              static_cast<long long>(r->usage.completion_tokens), r->attempts,
              static_cast<double>(r->latency) / 1e6);
  return 0;
}
