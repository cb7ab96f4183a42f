#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http.h"

namespace bw::http {
namespace {

using namespace std::string_view_literals;
using Pairs = std::vector<std::pair<std::string, std::string>>;

Pairs items_of(const Headers& h) {
  Pairs out;
  for (auto [n, v] : h.items()) out.emplace_back(std::string(n), std::string(v));
  return out;
}

TEST(Headers, AddKeepsWireFormatAndOrder) {
  Headers h;
  EXPECT_TRUE(h.empty());
  EXPECT_EQ(h.size(), 0u);
  EXPECT_TRUE(h.add("Content-Type", "application/json"));
  EXPECT_TRUE(h.add("x-request-id", "abc"));
  EXPECT_TRUE(h.add("X-Empty", ""));
  EXPECT_FALSE(h.empty());
  EXPECT_EQ(h.size(), 3u);
  EXPECT_EQ(h.wire(), "Content-Type: application/json\r\nx-request-id: abc\r\nX-Empty: \r\n");
  EXPECT_EQ(
      items_of(h),
      (Pairs{{"Content-Type", "application/json"}, {"x-request-id", "abc"}, {"X-Empty", ""}}));
  EXPECT_EQ(h.get("x-empty"), "");
  EXPECT_TRUE(h.has("x-empty"));
}

// A name checked at compile time is added as add() adds it; its value is still checked.
TEST(Headers, AddKnownIsAddWithTheNameCheckedAtCompileTime) {
  Headers known, plain;
  EXPECT_TRUE(known.add_known("Content-Type", "application/json"));
  EXPECT_TRUE(plain.add("Content-Type", "application/json"));
  EXPECT_TRUE(known.add_known("x-request-id", ""));
  EXPECT_TRUE(plain.add("x-request-id", ""));
  EXPECT_EQ(known.wire(), plain.wire());
  EXPECT_FALSE(known.may_have_framing());
  EXPECT_FALSE(known.add_known("x-evil", "a\r\nset-cookie: b"));
  EXPECT_FALSE(known.add_known("x-evil", "a\nb"));
  EXPECT_FALSE(known.add_known("x-evil", std::string_view("a\0b", 3)));
  EXPECT_EQ(known.wire(), plain.wire());
  EXPECT_TRUE(known.add_known("Transfer-Encoding", "chunked"));
  EXPECT_TRUE(known.may_have_framing());
  Headers connection;
  EXPECT_TRUE(connection.add_known("connection", "close"));
  EXPECT_TRUE(connection.may_have_framing());
}

TEST(Headers, NamesCompareCaseInsensitively) {
  Headers h;
  ASSERT_TRUE(h.add("Content-Type", "text/plain"));
  EXPECT_EQ(h.get("content-type"), "text/plain");
  EXPECT_EQ(h.get("CONTENT-TYPE"), "text/plain");
  EXPECT_EQ(h.get("CoNtEnT-tYpE"), "text/plain");
  EXPECT_TRUE(h.has("CONTENT-type"));
  EXPECT_FALSE(h.has("content-typ"));
  EXPECT_FALSE(h.has("content-type2"));
  EXPECT_EQ(h.get("absent"), "");
  EXPECT_FALSE(h.has("absent"));
}

TEST(Headers, ValueWithColonSpaceInside) {
  Headers h;
  ASSERT_TRUE(h.add("x-a", "b: c: d"));
  ASSERT_TRUE(h.add("x-b", ": leading"));
  ASSERT_TRUE(h.add("x-c", "trailing: "));
  ASSERT_TRUE(h.add("x-d", "a:b"));
  EXPECT_EQ(h.get("x-a"), "b: c: d");
  EXPECT_EQ(h.get("x-b"), ": leading");
  EXPECT_EQ(h.get("x-c"), "trailing: ");
  EXPECT_EQ(h.get("x-d"), "a:b");
  EXPECT_EQ(h.size(), 4u);
  EXPECT_EQ(
      items_of(h),
      (Pairs{{"x-a", "b: c: d"}, {"x-b", ": leading"}, {"x-c", "trailing: "}, {"x-d", "a:b"}}));
  h.remove("x-a");
  EXPECT_EQ(h.wire(), "x-b: : leading\r\nx-c: trailing: \r\nx-d: a:b\r\n");
}

TEST(Headers, RefusesInjectionInNames) {
  const std::vector<std::string> bad = {
      "",       "x\r\ny",           "x\ny",       "x\ry",  std::string("x\0y", 3),
      "x:y",    "x: injected\r\nz", ":authority", "name ", "na me",
      "\tname", "x-\x7f",           "x:",         "a\r",   "\n",
  };
  for (const auto& name : bad) {
    Headers h;
    EXPECT_FALSE(h.add(name, "v")) << "name: " << name;
    EXPECT_TRUE(h.empty()) << "name: " << name;
    EXPECT_EQ(h.wire(), "");
    h.set(name, "v");
    EXPECT_TRUE(h.empty()) << "set name: " << name;
  }
}

// Names and values are checked several bytes at a time: every byte value, at every position of
// names and values long enough for that, is accepted or refused as one byte alone would be.
TEST(Headers, EveryByteAtEveryPositionOfLongNamesAndValues) {
  auto name_ok = [](unsigned char c) { return c > 0x20 && c < 0x7f && c != ':'; };
  auto value_ok = [](unsigned char c) { return c != '\r' && c != '\n' && c != '\0'; };
  for (std::size_t len : {8u, 9u, 17u}) {
    for (std::size_t pos = 0; pos < len; ++pos) {
      for (int b = 0; b < 256; ++b) {
        std::string s(len, 'a');
        s[pos] = static_cast<char>(b);
        Headers h;
        EXPECT_EQ(h.add(s, "v"), name_ok(static_cast<unsigned char>(b)))
            << "name byte " << b << " at " << pos << " of " << len;
        Headers v;
        EXPECT_EQ(v.add("x", s), value_ok(static_cast<unsigned char>(b)))
            << "value byte " << b << " at " << pos << " of " << len;
      }
    }
  }
}

TEST(Headers, RefusesInjectionInValues) {
  const std::vector<std::string> bad = {
      "a\r\nx-evil: 1", "a\nb", "a\rb", std::string("a\0b", 3), "\r\n", "\n", "\r", "ok\r\n",
  };
  for (const auto& value : bad) {
    Headers h;
    ASSERT_TRUE(h.add("x-keep", "1"));
    EXPECT_FALSE(h.add("x-v", value));
    EXPECT_EQ(h.wire(), "x-keep: 1\r\n");
    h.set("x-keep", value);  // refused: the old value stays
    EXPECT_EQ(h.wire(), "x-keep: 1\r\n");
    EXPECT_EQ(h.size(), 1u);
  }
}

TEST(Headers, DuplicatesAreKeptAndGetReturnsTheFirst) {
  Headers h;
  ASSERT_TRUE(h.add("Set-Cookie", "a=1"));
  ASSERT_TRUE(h.add("x-other", "o"));
  ASSERT_TRUE(h.add("set-cookie", "b=2"));
  EXPECT_EQ(h.size(), 3u);
  EXPECT_EQ(h.get("SET-COOKIE"), "a=1");
}

TEST(Headers, SetReplacesAllDuplicates) {
  Headers h;
  ASSERT_TRUE(h.add("x-a", "1"));
  ASSERT_TRUE(h.add("X-Dup", "first"));
  ASSERT_TRUE(h.add("x-b", "2"));
  ASSERT_TRUE(h.add("x-dup", "second"));
  ASSERT_TRUE(h.add("X-DUP", "third"));
  ASSERT_TRUE(h.add("x-c", "3"));
  h.set("x-Dup", "only");
  EXPECT_EQ(h.size(), 4u);
  EXPECT_EQ(h.get("x-dup"), "only");
  EXPECT_EQ(h.wire(), "x-a: 1\r\nx-b: 2\r\nx-c: 3\r\nx-Dup: only\r\n");
  // set on an absent name adds it.
  h.set("x-new", "n");
  EXPECT_EQ(h.size(), 5u);
  EXPECT_EQ(h.get("x-new"), "n");
}

TEST(Headers, RemoveEveryOccurrenceAndMissingIsNoOp) {
  Headers h;
  ASSERT_TRUE(h.add("a", "1"));
  ASSERT_TRUE(h.add("B", "2"));
  ASSERT_TRUE(h.add("b", "3"));
  ASSERT_TRUE(h.add("c", "4"));
  ASSERT_TRUE(h.add("b", "5"));
  h.remove("missing");
  EXPECT_EQ(h.wire(), "a: 1\r\nB: 2\r\nb: 3\r\nc: 4\r\nb: 5\r\n");
  h.remove("b");
  EXPECT_EQ(h.wire(), "a: 1\r\nc: 4\r\n");
  EXPECT_EQ(h.size(), 2u);
  h.remove("A");
  h.remove("c");
  EXPECT_TRUE(h.empty());
  EXPECT_EQ(h.size(), 0u);
  h.remove("c");
  EXPECT_TRUE(h.empty());
  // A name that is a prefix of another is not removed with it.
  ASSERT_TRUE(h.add("x-long", "1"));
  ASSERT_TRUE(h.add("x", "2"));
  h.remove("x");
  EXPECT_EQ(h.wire(), "x-long: 1\r\n");
}

TEST(Headers, AppendKeepsBothListsInOrder) {
  Headers a, b;
  ASSERT_TRUE(a.add("a1", "1"));
  ASSERT_TRUE(a.add("dup", "a"));
  ASSERT_TRUE(b.add("b1", "2"));
  ASSERT_TRUE(b.add("Dup", "b"));
  a.append(b);
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(items_of(a), (Pairs{{"a1", "1"}, {"dup", "a"}, {"b1", "2"}, {"Dup", "b"}}));
  EXPECT_EQ(a.get("DUP"), "a");
  EXPECT_EQ(b.size(), 2u);  // unchanged
  Headers empty;
  a.append(empty);
  EXPECT_EQ(a.size(), 4u);
  empty.append(a);
  EXPECT_EQ(empty.wire(), a.wire());
}

TEST(Headers, ClearAndReuse) {
  Headers h;
  ASSERT_TRUE(h.add("a", "1"));
  h.clear();
  EXPECT_TRUE(h.empty());
  EXPECT_EQ(h.size(), 0u);
  EXPECT_EQ(h.items().begin(), h.items().end());
  ASSERT_TRUE(h.add("b", "2"));
  EXPECT_EQ(h.wire(), "b: 2\r\n");
}

TEST(Headers, IterationOrderMatchesInsertion) {
  Headers h;
  Pairs expected;
  for (int i = 0; i < 50; ++i) {
    std::string n = "x-h" + std::to_string(i);
    std::string v = "value " + std::to_string(i * 7) + ": z";
    ASSERT_TRUE(h.add(n, v));
    expected.emplace_back(n, v);
  }
  EXPECT_EQ(h.size(), 50u);
  EXPECT_EQ(items_of(h), expected);
  EXPECT_EQ(h.get("X-H49"), "value 343: z");
}

TEST(Headers, ResponseJsonSetsContentType) {
  auto r = Response::json(429, "{}");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.body, "{}");
  EXPECT_EQ(r.headers.wire(), "content-type: application/json\r\n");
}

TEST(HttpHelpers, IequalsAndHopByHop) {
  EXPECT_TRUE(iequals("Keep-Alive", "keep-alive"));
  EXPECT_FALSE(iequals("keep-alive", "keep-alive "));
  EXPECT_FALSE(iequals("a", "b"));
  EXPECT_TRUE(iequals("", ""));
  for (auto n : {"Connection", "keep-alive", "Transfer-Encoding", "TE", "Upgrade", "Trailer",
                 "Proxy-Authorization", "proxy-authenticate", "Proxy-Connection"}) {
    EXPECT_TRUE(is_hop_by_hop(n)) << n;
  }
  for (auto n : {"content-type", "authorization", "content-length", "host", "x-connection"}) {
    EXPECT_FALSE(is_hop_by_hop(n)) << n;
  }
}

TEST(HttpHelpers, RequestHeaderAndPath) {
  Request r;
  r.target = "/v1/models?limit=5&after=x";
  r.headers = {{"Authorization", "Bearer k"}, {"X-A", "1"}, {"x-a", "2"}};
  EXPECT_EQ(r.path(), "/v1/models");
  EXPECT_EQ(r.header("authorization"), "Bearer k");
  EXPECT_EQ(r.header("X-a"), "1");
  EXPECT_EQ(r.header("none"), "");
  r.target = "/plain";
  EXPECT_EQ(r.path(), "/plain");
}

TEST(HttpHelpers, QueryParams) {
  EXPECT_EQ(query_param("/p?a=1&b=2", "a"), "1");
  EXPECT_EQ(query_param("/p?a=1&b=2", "b"), "2");
  EXPECT_EQ(query_param("/p?ab=1&a=2", "a"), "2");
  EXPECT_EQ(query_param("/p?a=1&a=2", "a"), "1");
  EXPECT_EQ(query_param("/p?a=&b=2", "a"), "");
  EXPECT_EQ(query_param("/p", "a"), "");
  EXPECT_EQ(query_param("/p?b=1", "a"), "");
  EXPECT_EQ(query_int("/p?n=42", "n", -1), 42);
  EXPECT_EQ(query_int("/p?n=-3", "n", -1), -3);
  EXPECT_EQ(query_int("/p?n=4x", "n", -1), -1);
  EXPECT_EQ(query_int("/p?n=", "n", 7), 7);
  EXPECT_EQ(query_int("/p", "n", 9), 9);
}

// Values are checked 16, 8 or 4 bytes at a time with overlapping last steps: every length up
// to 40, every position, the refused bytes and their neighbours.
TEST(Headers, ValueCheckAtEveryLengthAndPosition) {
  for (std::size_t len = 1; len <= 40; ++len) {
    for (std::size_t pos = 0; pos < len; ++pos) {
      for (int b : {0x00, 0x01, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x20, 0x7f, 0x80, 0x8a, 0xff}) {
        std::string v(len, 'a');
        v[pos] = static_cast<char>(b);
        const bool ok = b != '\r' && b != '\n' && b != '\0';
        Headers h;
        EXPECT_EQ(h.add_known("x-v", v), ok) << "byte " << b << " at " << pos << " of " << len;
        EXPECT_EQ(h.wire(), ok ? "x-v: " + v + "\r\n" : "");
      }
    }
  }
  Headers h;
  EXPECT_TRUE(h.add_known("x-empty", ""));
  EXPECT_EQ(h.wire(), "x-empty: \r\n");
}

// header_name_bit is the same for every spelling of a name that compares equal.
TEST(HttpHelpers, HeaderNameBitIgnoresCase) {
  for (std::string_view n : {"Authorization", "x-api-key", "X-Request-ID", "b3", "a", "Z9"}) {
    std::string lower(n), upper(n);
    for (auto& c : lower) c = ascii_lower(c);
    for (auto& c : upper) c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c;
    EXPECT_EQ(header_name_bit(n), header_name_bit(lower)) << n;
    EXPECT_EQ(header_name_bit(n), header_name_bit(upper)) << n;
  }
  Request r;
  r.headers = {{"X-A", "1"}};
  r.header_names = 0;  // a stale index (count matches, no bits): the lookup trusts it
  r.header_names_count = 1;
  EXPECT_EQ(r.header("x-a"), "");
  r.header_names_count = static_cast<std::size_t>(-1);  // no index: searched
  EXPECT_EQ(r.header("x-a"), "1");
}

// iequals compares 8 bytes at a time from 8 bytes on: every byte value at every position
// against its upper-case, lower-case and neighbouring bytes gives the byte-by-byte answer.
TEST(HttpHelpers, IequalsEveryByteAtEveryPositionOfLongNames) {
  auto lower = [](unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; };
  for (std::size_t len : {7u, 8u, 9u, 13u, 16u, 17u, 26u}) {
    for (std::size_t pos = 0; pos < len; ++pos) {
      for (int b = 0; b < 256; ++b) {
        for (int d : {0, 1, -1, 32, -32, 128}) {
          const int c = (b + d) & 0xff;
          std::string x(len, 'k'), y(len, 'K');
          x[pos] = static_cast<char>(b);
          y[pos] = static_cast<char>(c);
          const bool want =
              lower(static_cast<unsigned char>(b)) == lower(static_cast<unsigned char>(c));
          ASSERT_EQ(iequals(x, y), want) << b << " vs " << c << " at " << pos << " of " << len;
        }
      }
    }
  }
  static_assert(iequals("Content-Length", "content-length"));
  static_assert(!iequals("Content-Length", "content-lengtx"));
}

TEST(Headers, AddKnownValidAppendsLikeAddKnown) {
  Headers a, b;
  ASSERT_TRUE(a.add_known("x-request-id", "req_0123"));
  ASSERT_TRUE(a.add_known("content-length", "5"));
  b.add_known_valid("x-request-id", "req_0123");
  b.add_known_valid("content-length", "5");
  EXPECT_EQ(a.wire(), b.wire());
  EXPECT_TRUE(b.may_have_framing());
  Headers c;
  c.add_known_valid("content-type", "");
  EXPECT_EQ(c.wire(), "content-type: \r\n");
  EXPECT_FALSE(c.may_have_framing());
}

}  // namespace
}  // namespace bw::http
