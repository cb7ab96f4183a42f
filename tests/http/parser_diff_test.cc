// Differential test of the HTTP/1.1 parsers (src/http/wire.h) against Beast's basic_parser, the
// parser they replace (tests/http/parser_reference.h, which lists where they are meant to
// differ): many generated and mutated requests and responses, fed in random pieces, must be
// accepted or refused alike, and when accepted give the same start line, header fields, body,
// framing and keep-alive, and leave the same bytes for the next message. The documented
// differences are counted; the counts must stay a small part of the cases (so that the generator
// still exercises the rest).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "http/parser_reference.h"

namespace bw::http::wire::reference {
namespace {

// ---------------------------------------------------------------------------------------------
// Generation.

class Gen {
 public:
  explicit Gen(std::uint32_t seed) : rng_(seed) {}
  std::size_t below(std::size_t n) { return n == 0 ? 0 : rng_() % n; }
  bool chance(int percent) { return static_cast<int>(below(100)) < percent; }
  template <class T, std::size_t N>
  const T& pick(const T (&a)[N]) {
    return a[below(N)];
  }

  std::string token() {
    static const char* const kNames[] = {
        "x-a",       "X-Request-Id",  "accept",  "user-agent", "content-type",    "authorization",
        "x-api-key", "cache-control", "X_Under", "x.dot",      "a!#$%&'*+-.^_`|~"};
    return pick(kNames);
  }
  std::string value() {
    static const std::string_view kChars =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
        "\t!\"#$%&'()*+,-./:;<=>?@[\\]"
        "^_`{|}~";
    std::string v;
    const std::size_t n = below(24);
    for (std::size_t i = 0; i < n; ++i) v += kChars[below(kChars.size())];
    if (chance(5)) v += "\xc3\xa9";  // obs-text
    return v;
  }

  std::string chunked_body(std::string& plain) {
    std::string out;
    const std::size_t chunks = below(4);
    for (std::size_t i = 0; i < chunks; ++i) {
      const std::size_t n = 1 + below(40);
      std::string data;
      for (std::size_t k = 0; k < n; ++k) data += static_cast<char>(below(256));
      char hex[20];
      std::snprintf(hex, sizeof hex, chance(20) ? "%zX" : "%zx", n);
      out += chance(10) ? std::string("0") + hex : std::string(hex);
      if (chance(15)) out += pick(kExtensions);
      out += "\r\n" + data + "\r\n";
      plain += data;
    }
    out += chance(10) ? "000" : "0";
    if (chance(10)) out += pick(kExtensions);
    out += "\r\n";
    if (chance(15)) out += "x-trailer: " + value() + "\r\n";
    out += "\r\n";
    return out;
  }

  std::string request() {
    static const char* const kMethods[] = {"GET",  "POST",    "PUT",   "DELETE",  "PATCH",
                                           "HEAD", "OPTIONS", "PURGE", "M-SEARCH"};
    static const char* const kTargets[] = {"/",          "/v1/chat/completions", "/a?b=c&d=%20e",
                                           "*",          "http://h:1/p?q",       "HTTPS://x",
                                           "http://x?y", "/caf\xc3\xa9",         "example.com:443"};
    std::string m = std::string(pick(kMethods)) + " " + pick(kTargets) + " HTTP/1." +
                    (chance(15) ? "0" : "1") + "\r\n";
    std::string plain;
    std::string body;
    const int framing = static_cast<int>(below(3));  // none, Content-Length, chunked
    std::vector<std::string> lines;
    const std::size_t hosts = chance(85) ? 1 : below(3);
    for (std::size_t i = 0; i < hosts; ++i) lines.push_back("Host: gw.local:8080");
    const std::size_t n = below(6);
    for (std::size_t i = 0; i < n; ++i)
      lines.push_back(token() + ":" + (chance(80) ? " " : "") + value());
    if (chance(25)) lines.push_back(std::string("Connection: ") + pick(kConnection));
    if (chance(10)) lines.push_back("Expect: 100-continue");
    if (framing == 1) {
      const std::size_t len = below(60);
      for (std::size_t k = 0; k < len; ++k) body += static_cast<char>(below(256));
      lines.push_back("Content-Length: " + std::to_string(len));
      if (chance(5)) lines.push_back("content-length: " + std::to_string(len));
    } else if (framing == 2) {
      lines.push_back(std::string("Transfer-Encoding: ") + pick(kCodings));
      body = chunked_body(plain);
    }
    if (chance(5)) lines.push_back(std::string("Content-Length: ") + pick(kLengths));
    shuffle(lines);
    for (auto& l : lines) m += l + "\r\n";
    m += "\r\n" + body;
    return m;
  }

  std::string response() {
    static const char* const kStatus[] = {
        "200 OK",       "201 Created", "204 No Content",        "304 Not Modified", "404 Not Found",
        "100 Continue", "500 ",        "429 Too Many Requests", "200 \xc3\xa9\t x", "599 x"};
    std::string m =
        std::string("HTTP/1.") + (chance(15) ? "0" : "1") + " " + pick(kStatus) + "\r\n";
    std::string plain;
    std::string body;
    const int framing = static_cast<int>(below(4));  // none (to EOF), CL, chunked, CL list
    std::vector<std::string> lines;
    const std::size_t n = below(6);
    for (std::size_t i = 0; i < n; ++i) lines.push_back(token() + ": " + value());
    if (chance(25)) lines.push_back(std::string("Connection: ") + pick(kConnection));
    if (chance(20)) lines.push_back("Retry-After: 3");
    if (framing == 0) {
      const std::size_t len = below(60);
      for (std::size_t k = 0; k < len; ++k) body += static_cast<char>(below(256));
    } else if (framing == 1 || framing == 3) {
      const std::size_t len = below(60);
      for (std::size_t k = 0; k < len; ++k) body += static_cast<char>(below(256));
      lines.push_back("Content-Length: " + std::to_string(len) +
                      (framing == 3 ? ", " + std::to_string(len) : ""));
      if (chance(10)) lines.push_back("content-length: " + std::to_string(len));
    } else {
      lines.push_back(std::string("Transfer-Encoding: ") + pick(kCodings));
      body = chunked_body(plain);
    }
    if (chance(5)) lines.push_back(std::string("Content-Length: ") + pick(kLengths));
    shuffle(lines);
    for (auto& l : lines) m += l + "\r\n";
    m += "\r\n" + body;
    return m;
  }

  // A few random edits: bytes that matter to the grammar, in random places.
  std::string mutate(std::string s) {
    static const char kBytes[] = {'\r',   '\n',   '\0', ' ', '\t', ':', ',',  ';',    '"', '\x7f',
                                  '\x80', '\xff', 'a',  '0', 'F',  '=', '\\', '\x01', '-', '/'};
    const std::size_t edits = 1 + below(3);
    for (std::size_t e = 0; e < edits && !s.empty(); ++e) {
      const std::size_t at = below(s.size());
      switch (below(6)) {
        case 0:
          s[at] = kBytes[below(sizeof kBytes)];
          break;
        case 1:
          s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), kBytes[below(sizeof kBytes)]);
          break;
        case 2:
          s.erase(at, 1);
          break;
        case 3:
          s.insert(at, "\r\n");
          break;
        case 4:
          s.resize(at);
          break;
        default:  // a line repeated
          if (auto eol = s.find("\r\n", at); eol != std::string::npos) {
            auto bol = s.rfind("\r\n", at);
            bol = bol == std::string::npos ? 0 : bol + 2;
            if (bol < eol) s.insert(eol + 2, s.substr(bol, eol + 2 - bol));
          }
          break;
      }
    }
    return s;
  }

  std::vector<std::size_t> steps() {
    switch (below(4)) {
      case 0:
        return {1 << 20};
      case 1:
        return {1};
      case 2:
        return {1 + below(16)};
      default: {
        std::vector<std::size_t> v;
        for (int i = 0; i < 8; ++i) v.push_back(1 + below(64));
        return v;
      }
    }
  }

 private:
  static constexpr const char* kExtensions[] = {";a",  ";a=b", "; a = \"q\\\"x\"", ";a;b=c",
                                                " ;x", ";=",   ";a=\"unterminated"};
  static constexpr const char* kConnection[] = {
      "close", "keep-alive", "Keep-Alive, Upgrade", "close, , keep-alive", "x y", "upgrade"};
  static constexpr const char* kCodings[] = {"chunked",       "Chunked", "gzip, chunked",
                                             "chunked, gzip", "gzip",    "chunked , chunked"};
  static constexpr const char* kLengths[] = {"0",   "5", "abc", "1, 1",
                                             "1,2", "",  "+1",  "99999999999999999999999"};
  void shuffle(std::vector<std::string>& v) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
  std::mt19937 rng_;
};

TEST(ParserDifferential, RequestsAgreeWithBeast) {
  Gen g(20261205);
  Tally t;
  for (int i = 0; i < 40000 && !HasFailure(); ++i) {
    std::string m = g.request();
    if (g.chance(20)) m += g.request();  // pipelined
    if (g.chance(70)) m = g.mutate(m);
    if (g.chance(3)) m = with_fold(m, " x");
    const auto steps = g.steps();
    const std::string diff = compare_request(m, steps, g.chance(30), t);
    EXPECT_EQ(diff, "") << "step " << steps[0] << "\n" << escaped(m);
  }
  std::printf(
      "requests: %d cases, %d accepted alike, %d refused alike; refused by us only: %d obs-fold, "
      "%d bad coding lists, %d control characters in a quoted chunk extension\n",
      t.cases, t.accepted, t.refused, t.fold, t.coding, t.quoted);
  EXPECT_LT(t.quoted, t.cases / 20);
  EXPECT_LT(t.coding, t.cases / 20);
  EXPECT_GT(t.accepted, t.cases / 4);
  EXPECT_GT(t.refused, t.cases / 5);
  EXPECT_LT(t.fold, t.cases / 10);
}

TEST(ParserDifferential, ResponsesAgreeWithBeast) {
  Gen g(7);
  Tally t;
  for (int i = 0; i < 40000 && !HasFailure(); ++i) {
    std::string m = g.response();
    if (g.chance(70)) m = g.mutate(m);
    if (g.chance(3)) m = with_fold(m, "\tx");
    const auto steps = g.steps();
    const std::string diff = compare_response(m, steps, g.chance(50), t);
    EXPECT_EQ(diff, "") << "step " << steps[0] << "\n" << escaped(m);
  }
  std::printf(
      "responses: %d cases, %d accepted alike, %d refused alike; refused by us only: %d obs-fold, "
      "%d bad coding lists, %d control characters in a quoted chunk extension\n",
      t.cases, t.accepted, t.refused, t.fold, t.coding, t.quoted);
  EXPECT_LT(t.quoted, t.cases / 20);
  EXPECT_LT(t.coding, t.cases / 20);
  EXPECT_GT(t.accepted, t.cases / 4);
  EXPECT_GT(t.refused, t.cases / 10);
  EXPECT_LT(t.fold, t.cases / 10);
}

// The documented differences, one by one.
TEST(ParserDifferential, DocumentedDifferences) {
  {
    // Trailer fields: Beast adds them to the fields, we drop them.
    const std::string m =
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "1\r\na\r\n0\r\nx-t: 1\r\n\r\n";
    std::string arena, body;
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    RequestParser ours(arena, spans, body, 100);
    ours.eager(true);
    auto r = feed(ours, m, {1 << 20}, false);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(fields_of(ours), (Pairs{{"Host", "h"}, {"Transfer-Encoding", "chunked"}}));
    EXPECT_EQ(body, "a");
  }
  {
    // obs-fold: Beast unfolds, we refuse.
    const std::string m = "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n";
    std::string arena, body;
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    RequestParser ours(arena, spans, body, 100);
    BeastRequest ref;
    EXPECT_TRUE(feed(ours, m, {1 << 20}, false).ec);
    EXPECT_FALSE(feed(ref, m, {1 << 20}, false).ec);
  }
  {
    // A chunk-size line longer than header_limit: refused by us (Beast waits for its end).
    std::string m = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a=";
    m += std::string(200, 'x');
    Headers h;
    ResponseParser ours(h);
    ours.header_limit(100);
    ours.eager(true);
    auto r = feed(ours, m, {1 << 20}, false);
    EXPECT_EQ(r.ec, bhttp::error::header_limit);
  }
}

}  // namespace
}  // namespace bw::http::wire::reference
