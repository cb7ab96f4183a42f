#pragma once
// The operator's console as the gateway serves it: login and logout, the embedded pages, the
// JSON the pages read (the sampler's 15 minutes, the running config), and the session check
// that lets a logged-in page use the admin API. Pages live under /ui on the admin listener (or on
// the main listener when no admin listener is configured), like the admin API itself.
// Thread safety: the Console is shared by all workers; SessionStore and Sampler lock internally.
#include <cstdint>
#include <mutex>
#include <string>

#include "common/result.h"
#include "http/http.h"
#include "ui/login_throttle.h"
#include "ui/sampler.h"
#include "ui/session.h"

namespace bw::gateway {

struct Shared;
class Runtime;

struct Console {
  explicit Console(ui::SessionOptions so) : sessions(so) {}
  ui::SessionStore sessions;
  ui::LoginThrottle login_throttle;
  ui::Sampler sampler;
  std::int64_t started_unix_ms = 0;
  // The last SIGHUP reload and its outcome, for the Config page.
  std::mutex reload_mu;
  std::int64_t last_reload_unix_ms = 0;
  bool last_reload_ok = false;
  std::string last_reload_message;
};

// Starts the sampler over the gateway's state (off the data plane, once a second).
void start_console(Shared& sh);
// A request under /ui: the whole answer.
// `client_ip` throttles failed logins.
http::Response handle_console(Shared& sh, const Runtime& rt, const http::Request& req,
                              std::string_view client_ip);
// An /admin request without the admin key: Ok when it carries a console session (and, when it
// changes state, passes the CSRF checks); otherwise the error to answer with.
Result<Ok> console_admin_auth(Shared& sh, const Runtime& rt, const http::Request& req);
// Records the outcome of a configuration reload.
void note_reload(Shared& sh, bool ok, const std::string& message);
// The gateway's state as the sampler reads it.
ui::Reading console_reading(Shared& sh);

}  // namespace bw::gateway
