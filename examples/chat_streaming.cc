// Streaming chat completion: prints each delta as it arrives.
// Usage: bw_example_chat_streaming [base_url] [model] ; API key from BELLWETHER_API_KEY.
#include <bellwether/client.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  bellwether::ClientConfig cfg;
  cfg.base_url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
  if (const char* key = std::getenv("BELLWETHER_API_KEY")) cfg.api_key = key;
  bellwether::Client client(cfg);

  bellwether::ChatRequest req;
  req.model = argc > 2 ? argv[2] : "gpt-4o-mini";
  req.messages = {{"user", "Write a haiku about a bellwether."}};
  req.priority = 0;  // interactive traffic: highest priority

  auto r = client.chat_stream(req, [](const bellwether::ChatChunk& chunk) {
    std::fwrite(chunk.content.data(), 1, chunk.content.size(), stdout);
    std::fflush(stdout);
    return true;  // false would stop the stream
  });
  std::printf("\n");
  if (!r) {
    std::fprintf(stderr, "error %s: %s\n", bellwether::to_string(r.error().kind),
                 r.error().message.c_str());
    return 1;
  }
  std::printf("[%zu chunks, finish_reason=%s, %lld completion tokens]\n", r->chunks,
              r->finish_reason.c_str(), static_cast<long long>(r->usage.completion_tokens));
  return 0;
}
