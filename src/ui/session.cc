#include "ui/session.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <stdexcept>

namespace bw::ui {
namespace {

std::string to_hex(const unsigned char* p, std::size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[p[i] >> 4];
    out[2 * i + 1] = kHex[p[i] & 15];
  }
  return out;
}

std::string hash_id(std::string_view id) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(id.data()), id.size(), md);
  return to_hex(md, sizeof md);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// "scheme://host[:port]/..." -> "host[:port]" in lower case; "" when it is not such a URL.
std::string authority_of(std::string_view url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return {};
  url.remove_prefix(scheme_end + 3);
  const auto end = url.find_first_of("/?#");
  if (end != std::string_view::npos) url = url.substr(0, end);
  std::string out(url);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

}  // namespace

std::string random_hex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) {
    // Without randomness no session may be issued; this is not a request error to recover from.
    throw std::runtime_error("RAND_bytes failed");
  }
  return to_hex(reinterpret_cast<const unsigned char*>(raw.data()), bytes);
}

bool secret_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Session SessionStore::create(Nanos now) {
  Session s;
  s.id = random_hex(32);
  s.csrf = random_hex(32);
  s.created = now;
  s.last_seen = now;
  std::lock_guard lock(mu_);
  evict_expired(now);
  while (by_hash_.size() >= options_.max_sessions && !by_hash_.empty()) {
    auto oldest = std::min_element(by_hash_.begin(), by_hash_.end(), [](auto& a, auto& b) {
      return a.second.created < b.second.created;
    });
    by_hash_.erase(oldest);
  }
  by_hash_[hash_id(s.id)] = Entry{s.csrf, now, now};
  return s;
}

std::optional<Session> SessionStore::find(std::string_view id, Nanos now) {
  if (id.size() != 64) return std::nullopt;
  const std::string h = hash_id(id);
  std::lock_guard lock(mu_);
  auto it = by_hash_.find(h);
  if (it == by_hash_.end()) return std::nullopt;
  auto& e = it->second;
  if (now - e.created >= options_.lifetime || now - e.last_seen >= options_.idle) {
    by_hash_.erase(it);
    return std::nullopt;
  }
  e.last_seen = now;
  return Session{std::string(), e.csrf, e.created, e.last_seen};
}

void SessionStore::remove(std::string_view id) {
  const std::string h = hash_id(id);
  std::lock_guard lock(mu_);
  by_hash_.erase(h);
}

std::size_t SessionStore::size() const {
  std::lock_guard lock(mu_);
  return by_hash_.size();
}

void SessionStore::evict_expired(Nanos now) {
  std::erase_if(by_hash_, [&](const auto& kv) {
    return now - kv.second.created >= options_.lifetime ||
           now - kv.second.last_seen >= options_.idle;
  });
}

std::string_view cookie_value(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    auto semi = header.find(';');
    std::string_view part = trim(header.substr(0, semi));
    header = semi == std::string_view::npos ? std::string_view{} : header.substr(semi + 1);
    auto eq = part.find('=');
    if (eq == std::string_view::npos) continue;
    if (trim(part.substr(0, eq)) == name) return trim(part.substr(eq + 1));
  }
  return {};
}

std::string session_cookie(std::string_view id, Nanos lifetime, bool secure) {
  std::string c(kSessionCookie);
  c += "=";
  c += id;
  c += "; Path=/; Max-Age=" + std::to_string(lifetime / seconds(1));
  c += "; HttpOnly; SameSite=Strict";
  if (secure) c += "; Secure";
  return c;
}

std::string clear_session_cookie(bool secure) {
  std::string c(kSessionCookie);
  c += "=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict";
  if (secure) c += "; Secure";
  return c;
}

bool same_origin(std::string_view origin, std::string_view host) {
  if (host.empty()) return false;
  const std::string a = authority_of(origin);
  if (a.empty()) return false;
  std::string h(trim(host));
  std::transform(h.begin(), h.end(), h.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return a == h;
}

std::string_view to_string(CsrfVerdict v) {
  switch (v) {
    case CsrfVerdict::kOk:
      return "ok";
    case CsrfVerdict::kNoToken:
      return "missing CSRF token";
    case CsrfVerdict::kBadToken:
      return "wrong CSRF token";
    case CsrfVerdict::kCrossOrigin:
      return "cross-origin request";
  }
  return "?";
}

CsrfVerdict check_csrf(const Session& s, std::string_view token, std::string_view origin,
                       std::string_view referer, std::string_view host) {
  // A browser always sends Origin on a cross-origin POST; Referer is the fallback for older
  // agents. Neither present: not a browser page of ours, refused.
  const std::string_view from = !origin.empty() ? origin : referer;
  if (from.empty() || !same_origin(from, host)) return CsrfVerdict::kCrossOrigin;
  if (token.empty()) return CsrfVerdict::kNoToken;
  if (!secret_equal(token, s.csrf)) return CsrfVerdict::kBadToken;
  return CsrfVerdict::kOk;
}

bool is_safe_method(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS";
}

}  // namespace bw::ui
