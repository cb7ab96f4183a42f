// Links against the installed SDK and exercises code from every source file without a server.
#include <bellwether/client.h>

#include <cstdio>

int main() {
  bellwether::ClientConfig cfg;
  cfg.base_url = "not-a-url";
  bellwether::Client client(cfg);
  auto r = client.chat({.model = "m", .messages = {{"user", "hi"}}});
  bellwether::TokenBucket bucket({.rate_per_s = 1, .burst = 1});
  const bool ok = !r.ok() && r.error().kind == bellwether::ErrorKind::kInvalidRequest &&
                  bellwether::parse_go_duration("6m0s") == bellwether::seconds(360) &&
                  bucket.try_acquire(0) == 0 && client.metrics().requests == 1;
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
