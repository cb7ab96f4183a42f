// Batch job: many asynchronous requests at low priority, paced by the client-side limiter and
// stopped by a local budget cap. Prints the metrics snapshot at the end.
// Usage: bw_example_batch_priority_budget [base_url] [count] ; API key from BELLWETHER_API_KEY.
#include <bellwether/client.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>

int main(int argc, char** argv) {
  bellwether::ClientConfig cfg;
  cfg.base_url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
  if (const char* key = std::getenv("BELLWETHER_API_KEY")) cfg.api_key = key;
  cfg.default_priority = 2;  // batch: lowest priority (X-Priority: 2)
  cfg.window = {.requests_per_minute = 600, .requests_per_second = 20};
  cfg.token_bucket = {.rate_per_s = 20, .burst = 5};
  cfg.max_limiter_wait = bellwether::seconds(120);
  cfg.prices.set("gpt-4o-mini", {.input_per_mtok = 0.15, .output_per_mtok = 0.60});
  cfg.budget_cap_usd = 0.05;  // refuse locally beyond 5 cents
  bellwether::Client client(cfg);

  const int count = argc > 2 ? std::atoi(argv[2]) : 50;
  std::atomic<int> remaining{count}, ok{0}, refused{0}, failed{0};
  std::promise<void> all_done;
  for (int i = 0; i < count; ++i) {
    bellwether::ChatRequest req;
    req.model = "gpt-4o-mini";
    req.messages = {{"user", "Summarise item " + std::to_string(i) + " in one line."}};
    req.max_tokens = 64;
    client.chat_async(std::move(req), [&](bellwether::ChatResult r) {
      if (r)
        ++ok;
      else if (r.error().kind == bellwether::ErrorKind::kBudgetExceeded)
        ++refused;
      else
        ++failed;
      if (--remaining == 0) all_done.set_value();
    });
  }
  if (count > 0) all_done.get_future().wait();

  const auto m = client.metrics();
  std::printf("ok=%d budget_refused=%d failed=%d\n", ok.load(), refused.load(), failed.load());
  std::printf(
      "requests=%llu successes=%llu rate_limited=%llu circuit_open=%llu errors=%llu "
      "rpm=%.0f spend=$%.5f of $%.2f\n",
      static_cast<unsigned long long>(m.requests), static_cast<unsigned long long>(m.successes),
      static_cast<unsigned long long>(m.rate_limited),
      static_cast<unsigned long long>(m.circuit_open), static_cast<unsigned long long>(m.errors),
      m.requests_per_minute, m.spend_usd, m.budget_cap_usd.value_or(0));
  return failed > 0 ? 1 : 0;
}
