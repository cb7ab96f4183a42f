// The console's security through a real gateway: every console route refuses without a session,
// the session cookie's flags, CSRF on state-changing requests (the console's and the admin API's
// when used with a session), no secret in any page or console JSON, and where the console lives.
// The browser-driven tests are in console_browser_test.cc.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "harness.h"

namespace bw::test {
namespace {

constexpr const char* kAdminKey = "admin-key-console-0123456789";
constexpr const char* kClientKey = "sk-client-console-secret-01";
constexpr const char* kProviderKey = "sk-provider-secret-in-env-77";

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Env {
  Sim sim;
  Gw gw;
  int admin_port = 0;  // 0: the console is on the main listener
  std::string dir;
  int ui_port() const { return admin_port ? admin_port : gw.port; }
  std::string host() const { return "127.0.0.1:" + std::to_string(ui_port()); }
  // The harness sends "Host: 127.0.0.1"; a browser would include the port (unit tests cover it).
  std::string origin() const { return "http://127.0.0.1"; }
};

Env start(bool admin_listener, const std::string& extra_admin = "", const std::string& extra = "") {
  Env e;
  e.sim = start_sim(
      "sim:\n  defaults: {ttft: {median_ms: 2}, itl: {median_ms: 1}, "
      "completion_tokens: 3}\n");
  e.dir = temp_dir();
  std::string admin = std::string("admin: {key: ") + kAdminKey + extra_admin;
  if (admin_listener) {
    e.admin_port = free_port();
    admin += ", listen: 127.0.0.1:" + std::to_string(e.admin_port);
  }
  admin += "}\n";
  e.gw = start_gateway(
      admin + "keys:\n  - {name: tester, key: " + kClientKey + "}\n" +
          "providers:\n  up: {base_url: \"http://127.0.0.1:" + std::to_string(e.sim.port) +
          "/v1\", api_key_env: BW_TEST_PROVIDER_KEY}\n" +
          "model_groups:\n  m:\n    deployments: [{id: m-a, provider: up, model: m}]\n" +
          "ledger: {path: " + e.dir + "/ledger.db}\n" + extra,
      {{"BW_TEST_PROVIDER_KEY", kProviderKey}});
  if (e.admin_port) {
    EXPECT_TRUE(wait_for_port(e.admin_port));
  }
  return e;
}

std::string form(const std::string& key) {
  std::string out = "key=";
  for (char c : key) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') {
      out += c;
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", static_cast<unsigned char>(c));
      out += buf;
    }
  }
  return out;
}

HttpResponse post_login(const Env& e, const std::string& key, Headers extra = {}) {
  extra.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  return request(e.ui_port(), "POST", "/ui/login", form(key), extra);
}

// The session cookie ("bw_console=<id>") from a successful login.
std::string login(const Env& e, Headers extra = {}) {
  auto r = post_login(e, kAdminKey, std::move(extra));
  EXPECT_EQ(r.status, 303) << r.body;
  const auto sc = r.header("set-cookie");
  return sc.substr(0, sc.find(';'));
}

// The CSRF token the console page carries.
std::string csrf_of(const Env& e, const std::string& cookie) {
  auto r = request(e.ui_port(), "GET", "/ui/", "", {{"Cookie", cookie}});
  EXPECT_EQ(r.status, 200) << r.body;
  const std::string tag = "name=\"csrf-token\" content=\"";
  auto p = r.body.find(tag);
  if (p == std::string::npos) return {};
  p += tag.size();
  return r.body.substr(p, r.body.find('"', p) - p);
}

const std::vector<std::string> kProtected = {"/ui/",
                                             "/ui/index.html",
                                             "/ui/static/console.js",
                                             "/ui/api/live",
                                             "/ui/api/info",
                                             "/ui/api/config",
                                             "/ui/vendor/uPlot.iife.min.js",
                                             "/ui/vendor/uPlot.min.css",
                                             "/ui/vendor/uPlot.LICENSE",
                                             "/ui/nope"};

TEST(Console, EveryRouteRefusesWithoutSession) {
  Env e = start(true);
  for (const std::string& cookie : std::vector<std::string>{
           "", "bw_console=", "bw_console=" + std::string(64, 'a'), "other=1"}) {
    Headers h;
    if (!cookie.empty()) h.emplace_back("Cookie", cookie);
    for (const auto& p : kProtected) {
      auto r = request(e.ui_port(), "GET", p, "", h);
      if (p == "/ui/" || p == "/ui/index.html") {
        EXPECT_EQ(r.status, 303) << p;
        EXPECT_EQ(r.header("location"), "/ui/login") << p;
      } else {
        EXPECT_EQ(r.status, 401) << p << " " << r.body;
      }
      EXPECT_EQ(r.body.find("csrf-token"), std::string::npos) << p;
      EXPECT_EQ(r.body.find("uPlot"), std::string::npos) << p;
    }
    auto out = request(e.ui_port(), "POST", "/ui/logout", "", h);
    EXPECT_EQ(out.status, 401);
    // The admin API with a cookie that is not a session is refused like no key at all.
    EXPECT_EQ(request(e.ui_port(), "GET", "/admin/keys", "", h).status, 401);
  }
  // The login page and its stylesheet are public; nothing else is.
  EXPECT_EQ(request(e.ui_port(), "GET", "/ui/login").status, 200);
  EXPECT_EQ(request(e.ui_port(), "GET", "/ui/static/console.css").status, 200);
  // With a session, the same routes answer.
  const auto cookie = login(e);
  for (const auto& p : kProtected) {
    auto r = request(e.ui_port(), "GET", p, "", {{"Cookie", cookie}});
    EXPECT_EQ(r.status, p == "/ui/nope" ? 404 : 200) << p << " " << r.body;
  }
}

TEST(Console, LoginRefusesWrongKeyAndSetsStrictCookie) {
  Env e = start(true);
  for (const std::string& bad :
       std::vector<std::string>{"", "wrong", std::string(kAdminKey) + "x", "admin-key-console"}) {
    auto r = post_login(e, bad);
    EXPECT_EQ(r.status, 401) << bad;
    EXPECT_TRUE(r.header("set-cookie").empty()) << bad;
    EXPECT_NE(r.body.find("not the admin key"), std::string::npos);
  }
  auto ok = post_login(e, kAdminKey);
  ASSERT_EQ(ok.status, 303) << ok.body;
  EXPECT_EQ(ok.header("location"), "/ui/");
  const auto sc = ok.header("set-cookie");
  EXPECT_EQ(sc.rfind("bw_console=", 0), 0u) << sc;
  EXPECT_NE(sc.find("; HttpOnly"), std::string::npos) << sc;
  EXPECT_NE(sc.find("; SameSite=Strict"), std::string::npos) << sc;
  EXPECT_NE(sc.find("; Path=/"), std::string::npos) << sc;
  EXPECT_NE(sc.find("; Max-Age=28800"), std::string::npos) << sc;  // bounded: 8 h by default
  EXPECT_EQ(sc.find("Secure"), std::string::npos) << sc;           // plain HTTP, no proxy
  // The cookie is random, and neither it nor the page carries the admin key.
  EXPECT_EQ(sc.find(kAdminKey), std::string::npos);
  EXPECT_NE(login(e), login(e));
  // A proxy we do not trust cannot make us believe TLS is in front.
  auto fwd = post_login(e, kAdminKey, {{"X-Forwarded-Proto", "https"}});
  EXPECT_EQ(fwd.header("set-cookie").find("Secure"), std::string::npos);
  // A login form posted from another site is refused (login CSRF).
  auto cross = post_login(e, kAdminKey, {{"Origin", "http://evil.example"}});
  EXPECT_EQ(cross.status, 403);
  EXPECT_TRUE(cross.header("set-cookie").empty());
  // Logging out ends the session on the server, not only in the browser.
  const auto cookie = login(e);
  const auto token = csrf_of(e, cookie);
  auto out = request(e.ui_port(), "POST", "/ui/logout", "",
                     {{"Cookie", cookie}, {"X-CSRF-Token", token}, {"Origin", e.origin()}});
  EXPECT_EQ(out.status, 200) << out.body;
  EXPECT_NE(out.header("set-cookie").find("Max-Age=0"), std::string::npos);
  EXPECT_EQ(request(e.ui_port(), "GET", "/ui/api/live", "", {{"Cookie", cookie}}).status, 401);
}

TEST(Console, WrongKeysFromOneAddressAreThrottled) {
  Env e = start(true);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(post_login(e, "wrong-key-guess").status, 401) << i;
  // The sixth guess within the minute is refused without being checked, and so is the right key
  // from that address until the minute that began with the first failure is over.
  for (const char* key : {"wrong-key-guess", kAdminKey}) {
    auto r = post_login(e, key);
    EXPECT_EQ(r.status, 429) << key;
    EXPECT_TRUE(r.header("set-cookie").empty());
    EXPECT_NE(r.body.find("Too many wrong keys"), std::string::npos) << r.body;
    const int ra = std::atoi(r.header("retry-after").c_str());
    EXPECT_GE(ra, 1) << r.header("retry-after");
    EXPECT_LE(ra, 60) << r.header("retry-after");
  }
  // The login page itself still loads.
  EXPECT_EQ(request(e.ui_port(), "GET", "/ui/login").status, 200);
}

TEST(Console, SecureCookieBehindTlsAndShortLifetime) {
  Env e = start(true, ", secure_cookie: true, session_lifetime: 30m");
  auto ok = post_login(e, kAdminKey);
  ASSERT_EQ(ok.status, 303);
  EXPECT_NE(ok.header("set-cookie").find("; Secure"), std::string::npos) << ok.header("set-cookie");
  EXPECT_NE(ok.header("set-cookie").find("Max-Age=1800"), std::string::npos);
  // Said by a trusted proxy.
  Env t = start(true, "", "server: {trusted_proxies: [127.0.0.1]}\n");
  auto fwd = post_login(t, kAdminKey, {{"X-Forwarded-Proto", "https"}});
  EXPECT_NE(fwd.header("set-cookie").find("; Secure"), std::string::npos);
  auto plain = post_login(t, kAdminKey);
  EXPECT_EQ(plain.header("set-cookie").find("Secure"), std::string::npos);
}

TEST(Console, StateChangesNeedSessionTokenAndSameOrigin) {
  Env e = start(true);
  const auto cookie = login(e);
  const auto token = csrf_of(e, cookie);
  ASSERT_EQ(token.size(), 64u);
  const std::string body = R"({"name":"csrf-probe"})";
  auto post = [&](Headers h) {
    h.emplace_back("Content-Type", "application/json");
    return request(e.ui_port(), "POST", "/admin/keys", body, h);
  };
  // Reading with the session alone is fine.
  EXPECT_EQ(request(e.ui_port(), "GET", "/admin/keys", "", {{"Cookie", cookie}}).status, 200);
  // Writing needs all three: session, token, same origin.
  EXPECT_EQ(post({{"X-CSRF-Token", token}, {"Origin", e.origin()}}).status, 401);
  EXPECT_EQ(post({{"Cookie", cookie}, {"Origin", e.origin()}}).status, 403);
  EXPECT_EQ(post({{"Cookie", cookie}, {"X-CSRF-Token", token}}).status, 403);
  EXPECT_EQ(
      post({{"Cookie", cookie}, {"X-CSRF-Token", token}, {"Origin", "http://evil.example"}}).status,
      403);
  EXPECT_EQ(
      post({{"Cookie", cookie}, {"X-CSRF-Token", std::string(64, '0')}, {"Origin", e.origin()}})
          .status,
      403);
  // Another session's token is not this session's.
  const auto other = csrf_of(e, login(e));
  EXPECT_EQ(post({{"Cookie", cookie}, {"X-CSRF-Token", other}, {"Origin", e.origin()}}).status,
            403);
  auto keys = request(e.ui_port(), "GET", "/admin/keys", "", {{"Cookie", cookie}});
  EXPECT_EQ(keys.body.find("csrf-probe"), std::string::npos) << "a refused request created a key";
  auto ok = post({{"Cookie", cookie}, {"X-CSRF-Token", token}, {"Origin", e.origin()}});
  EXPECT_EQ(ok.status, 201) << ok.body;
  // Referer stands in for a missing Origin.
  auto ref = request(e.ui_port(), "POST", "/admin/keys", R"({"name":"csrf-probe-2"})",
                     {{"Cookie", cookie},
                      {"X-CSRF-Token", token},
                      {"Referer", e.origin() + "/ui/"},
                      {"Content-Type", "application/json"}});
  EXPECT_EQ(ref.status, 201) << ref.body;
  // DELETE and PATCH are state changes too.
  EXPECT_EQ(
      request(e.ui_port(), "DELETE", "/admin/dead-letters/1", "", {{"Cookie", cookie}}).status,
      403);
  // The admin key itself needs no CSRF token (no ambient credential to abuse).
  auto with_key = request(e.ui_port(), "POST", "/admin/keys", R"({"name":"by-key"})",
                          {{"Authorization", std::string("Bearer ") + kAdminKey}});
  EXPECT_EQ(with_key.status, 201) << with_key.body;
}

TEST(Console, NoSecretInAnyPage) {
  Env e = start(true);
  // Some traffic, and a stored key whose secret the admin API shows once.
  EXPECT_EQ(
      post_json(e.gw.port, "/v1/chat/completions", chat_body("m", false, 3), kClientKey).status,
      200);
  auto created = request(e.ui_port(), "POST", "/admin/keys", R"({"name":"stored"})",
                         {{"Authorization", std::string("Bearer ") + kAdminKey}});
  ASSERT_EQ(created.status, 201);
  const auto sp = created.body.find("\"secret\":\"") + 10;
  const std::string stored_secret = created.body.substr(sp, created.body.find('"', sp) - sp);
  ASSERT_GT(stored_secret.size(), 16u);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // a sampler round
  const auto cookie = login(e);
  std::vector<std::string> paths = {"/ui/login",    "/ui/",           "/ui/static/console.js",
                                    "/ui/api/live", "/ui/api/info",   "/ui/api/config",
                                    "/admin/keys",  "/admin/budgets", "/admin/breakers"};
  for (const auto& p : paths) {
    auto r = request(e.ui_port(), "GET", p, "", {{"Cookie", cookie}});
    EXPECT_EQ(r.status, 200) << p << " " << r.body;
    for (const std::string& s : {std::string(kAdminKey), std::string(kClientKey),
                                 std::string(kProviderKey), stored_secret}) {
      EXPECT_EQ(r.body.find(s), std::string::npos) << p << " shows " << s.substr(0, 8);
    }
  }
  auto cfg = request(e.ui_port(), "GET", "/ui/api/config", "", {{"Cookie", cookie}});
  EXPECT_NE(cfg.body.find("<redacted>"), std::string::npos) << cfg.body;
  EXPECT_NE(cfg.body.find("BW_TEST_PROVIDER_KEY"), std::string::npos) << cfg.body;
  // Every console answer is private and framed by a strict policy.
  auto page = request(e.ui_port(), "GET", "/ui/", "", {{"Cookie", cookie}});
  EXPECT_EQ(page.header("cache-control"), "no-store");
  EXPECT_NE(page.header("content-security-policy").find("default-src 'none'"), std::string::npos);
  EXPECT_EQ(page.header("x-frame-options"), "DENY");
}

TEST(Console, LivesOnTheAdminListenerOrUnderUi) {
  Env sep = start(true);
  // With an admin listener, the main (data-plane) listener has no console.
  EXPECT_EQ(request(sep.gw.port, "GET", "/ui/login").status, 404);
  EXPECT_EQ(request(sep.admin_port, "GET", "/ui/login").status, 200);
  EXPECT_EQ(request(sep.admin_port, "GET", "/ui").status, 303);
  Env one = start(false);
  EXPECT_EQ(request(one.gw.port, "GET", "/ui/login").status, 200);
  const auto cookie = login(one);
  auto live = request(one.gw.port, "GET", "/ui/api/live", "", {{"Cookie", cookie}});
  EXPECT_EQ(live.status, 200);
  EXPECT_NE(live.body.find("\"samples\":["), std::string::npos) << live.body;
  // Turned off in the config: no console at all.
  Env off = start(true, ", console: false");
  EXPECT_EQ(request(off.admin_port, "GET", "/ui/login").status, 404);
}

TEST(Console, ConfigPageShowsTheLastReload) {
  Env e = start(true);
  const auto cookie = login(e);
  auto before = request(e.ui_port(), "GET", "/ui/api/config", "", {{"Cookie", cookie}});
  EXPECT_NE(before.body.find("\"last_reload\":null"), std::string::npos) << before.body;
  // A broken file: the reload fails and says why.
  const auto good = read_file(e.gw.config_path);
  write_file(e.gw.config_path, good + "\nthis_key_does_not_exist: 1\n");
  e.gw.proc.signal(SIGHUP);
  std::string body;
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    body = request(e.ui_port(), "GET", "/ui/api/config", "", {{"Cookie", cookie}}).body;
    if (body.find("\"ok\":false") != std::string::npos) break;
  }
  EXPECT_NE(body.find("\"ok\":false"), std::string::npos) << body;
  EXPECT_NE(body.find("this_key_does_not_exist"), std::string::npos) << body;
  write_file(e.gw.config_path, good);
  e.gw.proc.signal(SIGHUP);
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    body = request(e.ui_port(), "GET", "/ui/api/config", "", {{"Cookie", cookie}}).body;
    if (body.find("\"ok\":true") != std::string::npos) break;
  }
  EXPECT_NE(body.find("\"ok\":true"), std::string::npos) << body;
}

}  // namespace
}  // namespace bw::test
