// Phase 1: authenticate. The presented key is hashed and looked up by hash; the stored and
// computed hashes are compared in constant time.
#include <openssl/crypto.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>

#include "config/config.h"
#include "gateway/phases.h"

namespace bw::gateway {

namespace {

// Whether a[0..n) == b[0..n), in time that depends on n only (no early exit on the first
// difference), like OpenSSL's CRYPTO_memcmp but 8 bytes per step instead of one: a request
// compares about 90 bytes (the presented key with the cached one, and its digest).
bool equal_const_time(const char* a, const char* b, std::size_t n) {
  std::uint64_t diff = 0;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    diff |= x ^ y;
  }
  if (i < n && n >= 8) {  // the last 1-7 bytes: the last 8, overlapping the step before
    std::uint64_t x, y;
    std::memcpy(&x, a + n - 8, 8);
    std::memcpy(&y, b + n - 8, 8);
    diff |= x ^ y;
    i = n;
  }
  for (; i < n; ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  // Keep the compiler from turning the accumulation into an early exit.
  __asm__ volatile("" : "+r"(diff));
  return diff == 0;
}

std::string_view bearer(const http::Request& req) {
  auto auth = req.authorization();
  if (auth.size() > 7 && http::iequals(auth.substr(0, 7), "bearer ")) return auth.substr(7);
  return {};
}

// The cache slot of a presented key: its length and its first and last 8 bytes mixed (keys
// differ in their random part; a collision only costs a digest).
std::size_t slot_of(std::string_view k) {
  std::uint64_t h = k.size();
  if (k.size() >= 8) {
    std::uint64_t a, b;
    std::memcpy(&a, k.data(), 8);
    std::memcpy(&b, k.data() + k.size() - 8, 8);
    h ^= a * 0x9e3779b97f4a7c15ULL;
    h ^= b * 0xc2b2ae3d27d4eb4fULL;
  } else {
    for (char c : k) h = h * 131 + static_cast<unsigned char>(c);
  }
  h *= 0x9e3779b97f4a7c15ULL;
  return static_cast<std::size_t>(h >> 56);
}

// A presented key, its SHA-256 (hex), and what it found in one Runtime's key table.
struct KeySlot {
  std::string key;
  std::string hash;
  std::uint64_t runtime = 0;  // Runtime::serial() of `found`; 0: not looked up
  const KeyInfo* found = nullptr;
};

// The slot of a presented key, remembered per thread for the last few distinct keys: a client
// presents the same key on every request, and the digest was the largest single item of
// authentication, its lookup by hash the next. Bytes -> digest is a pure function, and a
// Runtime's key table never changes (a reload, a revoked or a rotated key makes a new Runtime,
// with a new serial), so neither needs invalidation. A hit is decided by a constant-time compare
// of the whole presented key.
KeySlot& presented_key_slot(std::string_view presented) {
  constexpr std::size_t kSlots = 16;            // per thread; a power of two
  constexpr std::size_t kMaxCachedBytes = 256;  // longer keys are hashed every time
  thread_local std::array<KeySlot, kSlots> slots;
  thread_local KeySlot uncached;
  if (presented.size() > kMaxCachedBytes) {
    uncached.hash = config::sha256_hex(presented);
    uncached.runtime = 0;
    return uncached;
  }
  KeySlot& s = slots[slot_of(presented) & (kSlots - 1)];
  if (!s.hash.empty() && s.key.size() == presented.size() &&
      equal_const_time(s.key.data(), presented.data(), presented.size())) {
    return s;
  }
  s.key.assign(presented);
  s.hash = config::sha256_hex(presented);
  s.runtime = 0;
  return s;
}

}  // namespace

Result<const KeyInfo*> authenticate(const Runtime& rt, const http::Request& req) {
  std::string_view presented = bearer(req);
  if (presented.empty()) presented = req.header("x-api-key");
  while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
  if (presented.empty()) {
    return errors::make(errors::kInvalidApiKey,
                        "You didn't provide an API key. Provide it in the Authorization header "
                        "(Authorization: Bearer YOUR_KEY) or in x-api-key.");
  }
  KeySlot& slot = presented_key_slot(presented);
  if (slot.runtime != rt.serial()) {
    slot.found = rt.key_by_hash(slot.hash);
    slot.runtime = rt.serial();
  }
  const KeyInfo* key = slot.found;
  const std::string& hash = slot.hash;
  if (!key || key->cfg->secret_hash.size() != hash.size() ||
      !equal_const_time(key->cfg->secret_hash.data(), hash.data(), hash.size())) {
    return errors::make(errors::kInvalidApiKey, "Incorrect API key provided.");
  }
  return key;
}

bool admin_authorized(const Runtime& rt, const http::Request& req) {
  const auto& want = rt.config().admin_key_hash;
  if (want.empty()) return false;
  std::string_view presented = bearer(req);
  if (presented.empty()) presented = req.header("x-api-key");
  if (presented.empty()) return false;
  const std::string hash = config::sha256_hex(presented);
  return hash.size() == want.size() && CRYPTO_memcmp(hash.data(), want.data(), hash.size()) == 0;
}

std::optional<Verdict> phase_auth::try_now(Ctx& c) {
  if (c.replay_key) {
    c.key = c.replay_key;  // a dead-letter replay runs as the original key
  } else {
    auto key = authenticate(*c.rt, c.req);
    if (!key) return key.error();
    c.key = *key;
  }
  const auto& k = *c.key->cfg;
  c.plan = c.key->plan;  // c.key is a key of c.rt
  // The priority: the X-Priority header or the key's default, never above the key's maximum.
  const int def =
      k.default_priority >= 0 ? k.default_priority : (c.plan ? c.plan->default_priority : 1);
  const int highest = k.max_priority >= 0 ? k.max_priority : (c.plan ? c.plan->max_priority : 0);
  c.priority = admission::resolve_priority(c.req.header("x-priority"), def, highest);
  return Ok{};
}

}  // namespace bw::gateway
