#pragma once
// Console sessions: the admin key is checked once at login and exchanged for a random session id
// carried in an HttpOnly, SameSite=Strict cookie. Sessions live only in this process (a restart
// logs everyone out) and expire after a fixed lifetime and after a shorter idle time.
//
// CSRF: each session has its own random token, given to the page (never in a cookie). A request
// that changes state must carry the token (X-CSRF-Token) and come from the same origin (Origin,
// or Referer when Origin is absent, must name the Host the request was sent to).
//
// Secrets are compared in constant time; the store keys sessions by the SHA-256 of their id, so a
// lookup's timing says nothing about the id either.
// Thread safety: every method may be called from any thread (one internal mutex, held for map
// operations only).
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/clock.h"

namespace bw::ui {

inline constexpr std::string_view kSessionCookie = "bw_console";

struct SessionOptions {
  Nanos lifetime = seconds(8 * 3600);  // absolute, from login
  Nanos idle = seconds(3600);          // since the last request
  std::size_t max_sessions = 256;      // the oldest session goes when a new one would exceed it
};

struct Session {
  std::string id;    // the cookie value (only returned by create())
  std::string csrf;  // the page's anti-CSRF token
  Nanos created = 0;
  Nanos last_seen = 0;
};

class SessionStore {
 public:
  explicit SessionStore(SessionOptions options = {}) : options_(options) {}

  // A new session with fresh random id and token (256 bits each, hex).
  Session create(Nanos now);
  // The live session of this id (refreshes its idle timer), or nullopt when unknown or expired.
  std::optional<Session> find(std::string_view id, Nanos now);
  void remove(std::string_view id);
  std::size_t size() const;
  const SessionOptions& options() const { return options_; }

 private:
  struct Entry {
    std::string csrf;
    Nanos created = 0;
    Nanos last_seen = 0;
  };
  void evict_expired(Nanos now);
  SessionOptions options_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> by_hash_;  // sha256(id) hex -> session
};

// Random bytes from OpenSSL's CSPRNG as lower-case hex (2 characters per byte).
std::string random_hex(std::size_t bytes);
// Constant-time equality (the length is not secret).
bool secret_equal(std::string_view a, std::string_view b);
// The value of cookie `name` in a Cookie header ("" when absent).
std::string_view cookie_value(std::string_view cookie_header, std::string_view name);
// The Set-Cookie value for a session. secure: add Secure (TLS terminates in front of us).
std::string session_cookie(std::string_view id, Nanos lifetime, bool secure);
// The Set-Cookie value that deletes the session cookie.
std::string clear_session_cookie(bool secure);
// True when `origin` (an Origin header, or a Referer URL) names the host `host` (a Host header):
// scheme://host[:port] with the same host and port; the scheme is not compared, as a proxy that
// terminates TLS changes it.
bool same_origin(std::string_view origin, std::string_view host);

enum class CsrfVerdict { kOk, kNoToken, kBadToken, kCrossOrigin };
std::string_view to_string(CsrfVerdict v);
// The CSRF check of a state-changing request made with a session.
CsrfVerdict check_csrf(const Session& s, std::string_view token_header,
                       std::string_view origin_header, std::string_view referer_header,
                       std::string_view host_header);
// GET, HEAD and OPTIONS do not change state.
bool is_safe_method(std::string_view method);

}  // namespace bw::ui
