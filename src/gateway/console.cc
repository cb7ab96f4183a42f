#include "gateway/console.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/clock.h"
#include "common/json_util.h"
#include "gateway/shared.h"
#include "limits/client_ip.h"
#include "ui/assets.h"

namespace bw::gateway {
namespace {

constexpr std::string_view kCsp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

void harden(http::Response& r) {
  r.headers.add("cache-control", "no-store");
  r.headers.add("x-content-type-options", "nosniff");
  r.headers.add("x-frame-options", "DENY");
  r.headers.add("referrer-policy", "same-origin");
  r.headers.add("content-security-policy", std::string(kCsp));
}

http::Response page(int status, std::string_view content_type, std::string body) {
  http::Response r;
  r.status = status;
  r.headers.add("content-type", std::string(content_type));
  r.body = std::move(body);
  harden(r);
  return r;
}

http::Response json(int status, std::string body) {
  auto r = http::Response::json(status, std::move(body));
  harden(r);
  return r;
}

http::Response redirect(std::string_view to) {
  http::Response r;
  r.status = 303;
  r.headers.add("location", std::string(to));
  r.headers.add("content-type", "text/plain; charset=utf-8");
  r.body = "See " + std::string(to) + "\n";
  harden(r);
  return r;
}

http::Response error_json(int status, std::string_view code, std::string_view message) {
  return json(status, openai_error_body(message, "invalid_request_error", code, ""));
}

std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string replace_all(std::string s, std::string_view what, std::string_view with) {
  for (auto at = s.find(what); at != std::string::npos; at = s.find(what, at + with.size())) {
    s.replace(at, what.size(), with);
  }
  return s;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded value of `name`, decoded.
std::string form_value(std::string_view body, std::string_view name) {
  while (!body.empty()) {
    auto amp = body.find('&');
    std::string_view part = body.substr(0, amp);
    body = amp == std::string_view::npos ? std::string_view{} : body.substr(amp + 1);
    auto eq = part.find('=');
    if (eq == std::string_view::npos || part.substr(0, eq) != name) continue;
    std::string out;
    std::string_view v = part.substr(eq + 1);
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i] == '+') {
        out += ' ';
      } else if (v[i] == '%' && i + 2 < v.size() && hex_digit(v[i + 1]) >= 0 &&
                 hex_digit(v[i + 2]) >= 0) {
        out += static_cast<char>(hex_digit(v[i + 1]) * 16 + hex_digit(v[i + 2]));
        i += 2;
      } else {
        out += v[i];
      }
    }
    return out;
  }
  return {};
}

bool admin_key_matches(const Runtime& rt, std::string_view presented) {
  const auto& want = rt.config().admin_key_hash;
  if (want.empty() || presented.empty()) return false;
  return ui::secret_equal(config::sha256_hex(presented), want);
}

// Secure cookies when TLS ends in front of us: configured, or said by a proxy we trust.
bool secure_cookie(const Runtime& rt, const http::Request& req) {
  const auto& cfg = rt.config();
  if (cfg.console_secure_cookie) return true;
  if (req.header("x-forwarded-proto") != "https") return false;
  auto peer = limits::parse_ip(req.peer_ip);
  if (!peer) return false;
  return std::any_of(cfg.trusted_cidrs.begin(), cfg.trusted_cidrs.end(),
                     [&](const limits::Cidr& c) { return c.contains(*peer); });
}

std::optional<ui::Session> session_of(Shared& sh, const http::Request& req) {
  if (!sh.console) return std::nullopt;
  const auto id = ui::cookie_value(req.header("cookie"), ui::kSessionCookie);
  if (id.empty()) return std::nullopt;
  return sh.console->sessions.find(id, sh.clock.now());
}

http::Response login_page(int status, std::string_view message) {
  const ui::Asset* a = ui::find_asset("static/login.html");
  std::string body(a->body);
  body = replace_all(std::move(body), "<!--ERROR-->",
                     message.empty() ? std::string()
                                     : "<p class=\"error\" role=\"alert\" id=\"login-error\">" +
                                           html_escape(message) + "</p>");
  return page(status, a->content_type, std::move(body));
}

std::string info_json(Shared& sh, const Runtime& rt, const http::Request& req) {
  const auto& cfg = rt.config();
  JsonWriter j;
  j.begin_object().key("listen").value(cfg.server.host + ":" + std::to_string(cfg.server.port));
  j.key("admin_listen").value(cfg.admin_listen).key("host").value(req.header("host"));
  j.key("models").begin_array();
  for (const auto& g : cfg.model_groups) j.value(g.name);
  j.end_array();
  j.key("dead_letters").value(sh.dead_letters != nullptr);
  j.key("key_store").value(sh.key_store != nullptr);
  j.key("ledger").value(sh.ledger != nullptr);
  j.key("embedded").value(cfg.embedded);
  j.key("started_unix_ms").value(sh.console ? sh.console->started_unix_ms : 0);
  j.end_object();
  return j.take();
}

std::string config_json(Shared& sh, const Runtime& rt) {
  const auto& cfg = rt.config();
  JsonWriter j;
  j.begin_object().key("source").value(cfg.source);
  j.key("yaml").value(config::redacted_yaml(cfg.text));
  j.key("last_reload");
  std::lock_guard lock(sh.console->reload_mu);
  if (sh.console->last_reload_unix_ms == 0) {
    j.null();
  } else {
    j.begin_object()
        .key("unix_ms")
        .value(sh.console->last_reload_unix_ms)
        .key("ok")
        .value(sh.console->last_reload_ok)
        .key("message")
        .value(sh.console->last_reload_message)
        .end_object();
  }
  j.key("started_unix_ms").value(sh.console->started_unix_ms);
  j.end_object();
  return j.take();
}

}  // namespace

void start_console(Shared& sh) {
  auto rt = sh.runtime->load();
  ui::SessionOptions so;
  so.lifetime = rt->config().console_session_lifetime;
  so.idle = std::min(so.lifetime, seconds(3600));
  sh.console = std::make_unique<Console>(so);
  sh.console->started_unix_ms = sh.clock.unix_millis();
  sh.console->sampler.start([&sh] { return console_reading(sh); });
}

void note_reload(Shared& sh, bool ok, const std::string& message) {
  if (!sh.console) return;
  std::lock_guard lock(sh.console->reload_mu);
  sh.console->last_reload_unix_ms = sh.clock.unix_millis();
  sh.console->last_reload_ok = ok;
  sh.console->last_reload_message = message;
}

ui::Reading console_reading(Shared& sh) {
  ui::Reading r;
  r.unix_ms = sh.clock.unix_millis();
  const Nanos now = sh.clock.now();
  auto rt = sh.runtime->load();
  r.metrics_text = sh.registry.expose();
  // The admission queue paces each deployment's RPM/TPM (configured, or learned from the
  // provider's rate-limit headers) and knows what each waiting request waits for.
  std::vector<admission::DeploymentCapacityRow> capacity;
  if (sh.admission) {
    auto snap = sh.admission->snapshot();
    for (std::size_t p = 0; p < 3; ++p) r.queue_depth[p] = static_cast<double>(snap.depth[p]);
    r.in_flight = static_cast<double>(snap.in_flight);
    for (const auto& [name, limit] : snap.concurrency_limits) {
      ui::GroupReading g;
      g.name = name;
      g.limit = limit;
      r.groups.push_back(std::move(g));
    }
    for (int reason = 1; reason < admission::kNumWaitReasons; ++reason) {
      r.queue_by_reason[std::string(admission::kWaitReasonNames[reason])] =
          static_cast<double>(snap.waiting_by_reason[static_cast<std::size_t>(reason)]);
    }
    capacity = std::move(snap.deployments);
  }
  for (const auto& d : sh.router.status(now)) {
    ui::DeploymentReading dr;
    dr.id = d.id;
    dr.group = d.group;
    dr.provider = d.provider;
    dr.model = d.model;
    dr.state = std::string(routing::to_string(d.state));
    dr.consecutive_failures = d.consecutive_failures;
    dr.openings = d.openings;
    dr.open_remaining_s = d.open_remaining_s;
    dr.cooldown_remaining_s = d.cooldown_remaining_s;
    dr.in_flight = d.in_flight;
    dr.ewma_ms = d.ewma_ms;
    dr.rpm_used = d.rpm_used;
    dr.tpm_used = d.tpm_used;
    if (const Deployment* dep = rt->deployment(d.id); dep && dep->cfg) {
      dr.rpm_limit = dr.configured_rpm = dep->cfg->rpm;
      dr.tpm_limit = dr.configured_tpm = dep->cfg->tpm;
    }
    for (const auto& c : capacity) {
      if (c.deployment != d.id || c.group != d.group) continue;
      dr.configured_rpm = c.configured_rpm;
      dr.configured_tpm = c.configured_tpm;
      dr.rpm_limit = c.effective_rpm;
      dr.tpm_limit = c.effective_tpm;
      dr.learned_rpm = c.learned_fresh ? c.effective_rpm : 0;
      dr.learned_tpm = c.learned_fresh ? c.effective_tpm : 0;
      dr.remaining_requests = c.remaining_requests;
      dr.remaining_tokens = c.remaining_tokens;
      if (c.effective_rpm > 0 && c.remaining_requests >= 0) {
        dr.rpm_used = std::max(dr.rpm_used, c.effective_rpm - c.remaining_requests);
      }
      if (c.effective_tpm > 0 && c.remaining_tokens >= 0) {
        dr.tpm_used = std::max(dr.tpm_used, c.effective_tpm - c.remaining_tokens);
      }
      dr.blocked_s = c.blocked_s;
      dr.binding = std::string(admission::wait_reason_name(c.binding));
    }
    r.deployments.push_back(std::move(dr));
  }
  for (const auto& g : rt->config().model_groups) {
    auto [requests, retries] = sh.router.retry_budget_usage(g.name, now);
    r.retry_budgets.push_back({g.name, requests, retries, rt->config().retry.budget_ratio});
  }
  if (sh.scaling) {
    const auto plan = sh.scaling->last();
    const auto& rec = plan.gateway.rec;
    r.scaler.recommended = rec.recommended_replicas;
    r.scaler.current = rec.current_replicas;
    r.scaler.forecast_rpm_wma = rec.forecast_rpm_wma;
    r.scaler.forecast_rpm_holt = rec.forecast_rpm_holt;
    r.scaler.arrival_rpm = rec.arrival_rpm;
    r.scaler.capacity_rpm_per_replica = rec.capacity_rpm_per_replica;
    r.scaler.method = std::string(telemetry::to_string(rec.method));
    r.scaler.reason = std::string(rec.reason);
    r.scaler.waiting_on = std::string(telemetry::to_string(plan.reason));
  }
  return r;
}

Result<Ok> console_admin_auth(Shared& sh, const Runtime& rt, const http::Request& req) {
  (void)rt;
  auto s = session_of(sh, req);
  if (!s) {
    return make_error(401, "invalid_request_error", "invalid_admin_key",
                      "The admin API needs the admin (master) key.");
  }
  if (ui::is_safe_method(req.method)) return Ok{};
  auto v = ui::check_csrf(*s, req.header("x-csrf-token"), req.header("origin"),
                          req.header("referer"), req.header("host"));
  if (v != ui::CsrfVerdict::kOk) {
    return make_error(403, "invalid_request_error", "csrf_check_failed",
                      "Refused: " + std::string(ui::to_string(v)) +
                          ". Changes from the console need its page's token and origin.");
  }
  return Ok{};
}

http::Response handle_console(Shared& sh, const Runtime& rt, const http::Request& req,
                              std::string_view client_ip) {
  const auto path = req.path();
  const auto method = req.method;
  const auto& cfg = rt.config();
  if (!sh.console || !cfg.console_enabled || cfg.admin_key_hash.empty()) {
    return error_json(404, "console_disabled",
                      "The console is off: it needs admin.key (and admin.console not false).");
  }
  if (path == "/ui") return redirect("/ui/");
  if (path == "/ui/login") {
    if (method == "GET") return login_page(200, "");
    if (method != "POST") return error_json(405, "method_not_allowed", "GET or POST.");
    // A login form posted from another site would log the victim into our console (login CSRF).
    const auto origin = req.header("origin");
    if (!origin.empty() && !ui::same_origin(origin, req.header("host"))) {
      return login_page(403, "Refused: the login form must be sent from this page.");
    }
    const Nanos now = sh.clock.now();
    if (const Nanos wait = sh.console->login_throttle.blocked_for(client_ip, now); wait > 0) {
      const long secs = static_cast<long>((wait + kNanosPerSecond - 1) / kNanosPerSecond);
      auto r = login_page(429, "Too many wrong keys from this address. Try again in " +
                                   std::to_string(secs) + " s.");
      r.headers.add("retry-after", std::to_string(secs));
      return r;
    }
    const std::string key = form_value(req.body, "key");
    if (!admin_key_matches(rt, key)) {
      sh.console->login_throttle.failed(client_ip, now);
      spdlog::warn("console: a wrong admin key was sent to /ui/login from {}", client_ip);
      return login_page(401, "That is not the admin key. Try again.");
    }
    sh.console->login_throttle.succeeded(client_ip);
    auto s = sh.console->sessions.create(sh.clock.now());
    auto r = redirect("/ui/");
    r.headers.add("set-cookie", ui::session_cookie(s.id, sh.console->sessions.options().lifetime,
                                                   secure_cookie(rt, req)));
    return r;
  }
  if (path == "/ui/static/console.css" && method == "GET") {
    // Public: the login page needs it, and it holds nothing about this gateway.
    const ui::Asset* a = ui::find_asset("static/console.css");
    return page(200, a->content_type, std::string(a->body));
  }
  auto s = session_of(sh, req);
  const bool wants_html = path == "/ui/" || path == "/ui/index.html";
  if (!s) {
    if (wants_html && method == "GET") return redirect("/ui/login");
    return error_json(401, "no_session", "Log in to the console first (/ui/login).");
  }
  if (!ui::is_safe_method(method)) {
    auto v = ui::check_csrf(*s, req.header("x-csrf-token"), req.header("origin"),
                            req.header("referer"), req.header("host"));
    if (v != ui::CsrfVerdict::kOk) {
      return error_json(403, "csrf_check_failed", "Refused: " + std::string(ui::to_string(v)));
    }
  }
  if (path == "/ui/logout") {
    if (method != "POST") return error_json(405, "method_not_allowed", "POST.");
    sh.console->sessions.remove(ui::cookie_value(req.header("cookie"), ui::kSessionCookie));
    auto r = json(200, "{\"logged_out\":true}");
    r.headers.add("set-cookie", ui::clear_session_cookie(secure_cookie(rt, req)));
    return r;
  }
  if (method != "GET") return error_json(405, "method_not_allowed", "GET.");
  if (wants_html) {
    const ui::Asset* a = ui::find_asset("static/index.html");
    return page(200, a->content_type, replace_all(std::string(a->body), "{{CSRF}}", s->csrf));
  }
  if (path == "/ui/api/live") {
    return json(200, sh.console->sampler.json(http::query_int(req.target, "since", 0)));
  }
  if (path == "/ui/api/info") return json(200, info_json(sh, rt, req));
  if (path == "/ui/api/config") return json(200, config_json(sh, rt));
  if (path.starts_with("/ui/static/") || path.starts_with("/ui/vendor/")) {
    const ui::Asset* a = ui::find_asset(path.substr(4));
    if (a && a->path != "static/index.html" && a->path != "static/login.html") {
      return page(200, a->content_type, std::string(a->body));
    }
  }
  return error_json(404, "unknown_url", "No such console page: " + std::string(path));
}

}  // namespace bw::gateway
