#include "ui/session.h"

#include <gtest/gtest.h>

#include <set>

namespace bw::ui {
namespace {

TEST(SessionStore, CreatesRandomIdsAndFindsThem) {
  SessionStore store;
  auto a = store.create(0);
  auto b = store.create(0);
  EXPECT_EQ(a.id.size(), 64u);
  EXPECT_EQ(a.csrf.size(), 64u);
  EXPECT_NE(a.id, b.id);
  EXPECT_NE(a.id, a.csrf);
  auto found = store.find(a.id, seconds(1));
  ASSERT_TRUE(found);
  EXPECT_EQ(found->csrf, a.csrf);
  EXPECT_TRUE(found->id.empty());  // the id is not kept in clear
  EXPECT_FALSE(store.find(std::string(64, 'a'), seconds(1)));
  EXPECT_FALSE(store.find("short", seconds(1)));
}

TEST(SessionStore, ExpiresAfterLifetimeAndIdle) {
  SessionOptions o;
  o.lifetime = seconds(100);
  o.idle = seconds(30);
  SessionStore store(o);
  auto s = store.create(0);
  EXPECT_TRUE(store.find(s.id, seconds(29)));
  EXPECT_TRUE(store.find(s.id, seconds(58)));   // idle counts from the last use
  EXPECT_FALSE(store.find(s.id, seconds(89)));  // 31 s idle
  auto t = store.create(seconds(0));
  for (int i = 1; i <= 4; ++i) EXPECT_TRUE(store.find(t.id, seconds(25 * i - 1)));
  EXPECT_FALSE(store.find(t.id, seconds(100)));  // lifetime is absolute
}

TEST(SessionStore, RemoveAndBound) {
  SessionOptions o;
  o.max_sessions = 3;
  SessionStore store(o);
  auto first = store.create(0);
  for (int i = 1; i <= 3; ++i) store.create(seconds(i));
  EXPECT_EQ(store.size(), 3u);
  EXPECT_FALSE(store.find(first.id, seconds(5)));  // the oldest went
  auto s = store.create(seconds(6));
  store.remove(s.id);
  EXPECT_FALSE(store.find(s.id, seconds(6)));
}

TEST(Cookies, ValueAndFlags) {
  EXPECT_EQ(cookie_value("a=1; bw_console=abc ;c=2", "bw_console"), "abc");
  EXPECT_EQ(cookie_value("xbw_console=1", "bw_console"), "");
  EXPECT_EQ(cookie_value("", "bw_console"), "");
  const auto c = session_cookie("id", seconds(3600), false);
  EXPECT_EQ(c, "bw_console=id; Path=/; Max-Age=3600; HttpOnly; SameSite=Strict");
  EXPECT_NE(session_cookie("id", seconds(60), true).find("; Secure"), std::string::npos);
  EXPECT_NE(clear_session_cookie(false).find("Max-Age=0"), std::string::npos);
}

TEST(Csrf, NeedsSameOriginAndToken) {
  Session s;
  s.csrf = "t0ken";
  const std::string host = "127.0.0.1:9090";
  EXPECT_EQ(check_csrf(s, "t0ken", "http://127.0.0.1:9090", "", host), CsrfVerdict::kOk);
  EXPECT_EQ(check_csrf(s, "t0ken", "", "http://127.0.0.1:9090/ui/", host), CsrfVerdict::kOk);
  EXPECT_EQ(check_csrf(s, "t0ken", "https://127.0.0.1:9090", "", host), CsrfVerdict::kOk);
  EXPECT_EQ(check_csrf(s, "t0ken", "http://evil.example", "", host), CsrfVerdict::kCrossOrigin);
  EXPECT_EQ(check_csrf(s, "t0ken", "http://127.0.0.1:9091", "", host), CsrfVerdict::kCrossOrigin);
  EXPECT_EQ(check_csrf(s, "t0ken", "null", "", host), CsrfVerdict::kCrossOrigin);
  EXPECT_EQ(check_csrf(s, "t0ken", "", "", host), CsrfVerdict::kCrossOrigin);
  EXPECT_EQ(check_csrf(s, "", "http://127.0.0.1:9090", "", host), CsrfVerdict::kNoToken);
  EXPECT_EQ(check_csrf(s, "t0keN", "http://127.0.0.1:9090", "", host), CsrfVerdict::kBadToken);
  EXPECT_TRUE(is_safe_method("GET"));
  EXPECT_FALSE(is_safe_method("POST"));
  EXPECT_FALSE(is_safe_method("DELETE"));
}

TEST(Random, HexAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) seen.insert(random_hex(16));
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_TRUE(secret_equal("abc", "abc"));
  EXPECT_FALSE(secret_equal("abc", "abd"));
  EXPECT_FALSE(secret_equal("abc", "abcd"));
}

}  // namespace
}  // namespace bw::ui
