#include "http/wire.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace bw::http::wire {
namespace {

namespace beast = boost::beast;
using Fields = std::vector<std::pair<std::size_t, std::size_t>>;
using Views = std::vector<std::pair<std::string_view, std::string_view>>;
using Pairs = std::vector<std::pair<std::string, std::string>>;

// The socket side of a test: `input` arrives `step` bytes at a time, then EOF.
struct FeedResult {
  error_code ec;
  std::string rest;  // bytes received but not consumed by the parser (a pipelined message)
};

// Drives a parser the way Session::read (src/http/server.cc) does: put what is buffered, consume
// what was used, read more on need_more, put_eof at the end of the input. `whole` = false stops
// once the head is complete.
template <class Parser>
FeedResult feed(Parser& p, std::string_view input, std::size_t step, bool whole = true) {
  beast::flat_buffer buffer;
  std::size_t pos = 0;
  auto rest = [&] {
    std::string r(static_cast<const char*>(buffer.data().data()), buffer.size());
    r.append(input.substr(pos));
    return r;
  };
  for (;;) {
    if (buffer.size() > 0) {
      error_code ec;
      const std::size_t used = p.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec && ec != bhttp::error::need_more) return {ec, rest()};
      if (!ec && (whole ? p.is_done() : p.is_header_done())) return {{}, rest()};
      if (!ec && used > 0 && buffer.size() > 0) continue;
    }
    if (pos == input.size()) {  // the peer closed
      if (!p.got_some()) return {bhttp::error::end_of_stream, rest()};
      error_code eec;
      p.put_eof(eec);
      if (eec) return {eec, rest()};
      if (whole ? p.is_done() : p.is_header_done()) return {{}, rest()};
      return {bhttp::error::partial_message, rest()};
    }
    const std::size_t n = std::min(step, input.size() - pos);
    auto mb = buffer.prepare(n);
    std::memcpy(mb.data(), input.data() + pos, n);
    buffer.commit(n);
    pos += n;
  }
}

// The session's reusable storage.
struct Storage {
  std::string arena;
  Fields fields;
  std::string body;
};

void configure(RequestParser& p) {
  p.header_limit(8 * 1024);
  p.body_limit(1024 * 1024);
  p.eager(true);
}

Pairs headers_of(const RequestParser& p) {
  Views v;
  p.headers(v);
  Pairs out;
  for (auto [n, val] : v) out.emplace_back(std::string(n), std::string(val));
  return out;
}

constexpr std::string_view kSimplePost =
    "POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
    "Host: gw.local:8080\r\n"
    "Content-Type: application/json\r\n"
    "Authorization: Bearer sk-test\r\n"
    "Content-Length: 13\r\n"
    "\r\n"
    "{\"model\":\"m\"}";

TEST(RequestParser, CompleteRequestInOnePut) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  auto r = feed(p, kSimplePost, 1 << 20);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_TRUE(p.is_done());
  EXPECT_EQ(r.rest, "");
  EXPECT_EQ(p.method(), "POST");
  EXPECT_EQ(p.target(), "/v1/chat/completions?x=1");
  EXPECT_EQ(headers_of(p), (Pairs{{"Host", "gw.local:8080"},
                                  {"Content-Type", "application/json"},
                                  {"Authorization", "Bearer sk-test"},
                                  {"Content-Length", "13"}}));
  EXPECT_EQ(s.body, "{\"model\":\"m\"}");
  EXPECT_TRUE(p.has_content_length());
  EXPECT_FALSE(p.has_transfer_encoding());
  EXPECT_FALSE(p.expects_continue());
  EXPECT_FALSE(p.too_many_fields());
  EXPECT_TRUE(p.keep_alive());
  EXPECT_FALSE(p.chunked());
  ASSERT_TRUE(p.content_length());
  EXPECT_EQ(*p.content_length(), 13u);
}

TEST(RequestParser, AWholeBodyInOnePutIsReferredToWhereItIs) {
  Storage s;
  Body body;
  RequestParser p(s.arena, s.fields, body.own(), 100);
  configure(p);
  p.in_place(&body);
  // Two requests in the buffer: the first one's body is left in it, the second stays unread.
  const std::string buffered = std::string(kSimplePost) + "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  error_code ec;
  const std::size_t used = p.put(boost::asio::buffer(buffered), ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_TRUE(p.is_done());
  EXPECT_EQ(used, kSimplePost.size());
  EXPECT_TRUE(body.referring());
  EXPECT_EQ(body, "{\"model\":\"m\"}");
  EXPECT_EQ(body.data(), buffered.data() + kSimplePost.size() - 13);
  EXPECT_TRUE(body.own().empty());  // nothing was copied (and the body is its own, empty, now)
}

TEST(RequestParser, ABodyInPiecesIsCopiedEvenInPlace) {
  for (std::size_t step : {1u, 7u, 150u}) {
    Storage s;
    Body body;
    RequestParser p(s.arena, s.fields, body.own(), 100);
    configure(p);
    p.in_place(&body);
    // 150 bytes hold the head and part of the body: the rest comes in a second put.
    auto r = feed(p, kSimplePost, step);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_FALSE(body.referring()) << step;
    EXPECT_EQ(body, "{\"model\":\"m\"}") << step;
  }
  // A chunked body is copied.
  Storage s;
  Body body;
  RequestParser p(s.arena, s.fields, body.own(), 100);
  configure(p);
  p.in_place(&body);
  auto r = feed(p,
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n0\r\n\r\n",
                1 << 20);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_FALSE(body.referring());
  EXPECT_EQ(body, "hello");
}

TEST(RequestBody, ACopyOrAnAssignedStringOwnsItsBytes) {
  std::string bytes = "{\"a\":1}";
  Body referring;
  referring.refer(bytes);
  Body copy = referring;
  EXPECT_FALSE(copy.referring());
  EXPECT_EQ(copy, bytes);
  EXPECT_NE(copy.data(), bytes.data());
  referring = std::string("other");
  EXPECT_FALSE(referring.referring());
  EXPECT_EQ(referring, "other");
  EXPECT_EQ(std::string_view(referring).size(), 5u);
}

TEST(RequestParser, ByteByByteAndOddSplitsGiveTheSameResult) {
  for (std::size_t step : {1u, 2u, 3u, 7u, 16u, 64u}) {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, kSimplePost, step);
    ASSERT_FALSE(r.ec) << "step " << step << ": " << r.ec.message();
    EXPECT_EQ(r.rest, "") << step;
    EXPECT_EQ(p.method(), "POST") << step;
    EXPECT_EQ(p.target(), "/v1/chat/completions?x=1") << step;
    EXPECT_EQ(headers_of(p).size(), 4u) << step;
    EXPECT_EQ(headers_of(p)[2],
              (std::pair<std::string, std::string>{"Authorization", "Bearer sk-test"}));
    EXPECT_EQ(s.body, "{\"model\":\"m\"}") << step;
  }
}

TEST(RequestParser, HeadOnlyStopsBeforeTheBody) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  p.eager(false);
  auto r = feed(p, kSimplePost, 1 << 20, /*whole=*/false);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_TRUE(p.is_header_done());
  EXPECT_FALSE(p.is_done());
  EXPECT_EQ(p.method(), "POST");
  EXPECT_EQ(r.rest, "{\"model\":\"m\"}");
  EXPECT_EQ(s.body, "");
}

constexpr std::string_view kChunked =
    "POST /upload HTTP/1.1\r\n"
    "Host: x\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
    "5\r\nhello\r\n"
    "1;ext=1\r\n,\r\n"
    "10\r\n0123456789abcdef\r\n"
    "0\r\n"
    "\r\n";

TEST(RequestParser, ChunkedBodyIsDechunked) {
  for (std::size_t step : {1u, 5u, 1u << 20}) {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, kChunked, step);
    ASSERT_FALSE(r.ec) << "step " << step << ": " << r.ec.message();
    EXPECT_TRUE(p.is_done());
    EXPECT_TRUE(p.chunked());
    EXPECT_TRUE(p.has_transfer_encoding());
    EXPECT_FALSE(p.has_content_length());
    EXPECT_EQ(s.body, "hello,0123456789abcdef") << step;
    EXPECT_EQ(r.rest, "");
    EXPECT_EQ(p.target(), "/upload");
  }
}

TEST(RequestParser, ChunkedBodyOverTheLimitIsRefused) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  p.body_limit(10);
  auto r = feed(p, kChunked, 1 << 20);
  EXPECT_EQ(r.ec, bhttp::error::body_limit) << r.ec.message();
}

TEST(RequestParser, ContentLengthOverTheLimitIsRefused) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  p.body_limit(12);
  auto r = feed(p, kSimplePost, 1 << 20);
  EXPECT_EQ(r.ec, bhttp::error::body_limit) << r.ec.message();
  EXPECT_EQ(s.body, "");
}

TEST(RequestParser, PipelinedRequestsAreParsedOneAtATimeWithReusedStorage) {
  const std::string second =
      "GET /v1/models HTTP/1.1\r\n"
      "host: other\r\n"
      "Accept: */*\r\n"
      "\r\n";
  const std::string third = "DELETE /x HTTP/1.1\r\nHost: y\r\nContent-Length: 2\r\n\r\nab";
  const std::string input = std::string(kSimplePost) + second + third;
  Storage s;
  std::string rest;
  {
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, input, 1 << 20);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(p.method(), "POST");
    EXPECT_EQ(s.body, "{\"model\":\"m\"}");
    EXPECT_EQ(r.rest, second + third);  // exactly one message consumed
    rest = r.rest;
  }
  const auto arena_capacity = s.arena.capacity();
  {
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    EXPECT_EQ(s.arena, "");  // the old contents are cleared
    EXPECT_TRUE(s.fields.empty());
    EXPECT_EQ(s.body, "");
    auto r = feed(p, rest, 1 << 20);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(p.method(), "GET");
    EXPECT_EQ(p.target(), "/v1/models");
    EXPECT_EQ(headers_of(p), (Pairs{{"host", "other"}, {"Accept", "*/*"}}));
    EXPECT_EQ(s.body, "");
    EXPECT_FALSE(p.has_content_length());
    EXPECT_FALSE(p.has_transfer_encoding());
    EXPECT_GE(s.arena.capacity(), arena_capacity);  // storage reused, not reallocated smaller
    EXPECT_EQ(r.rest, third);
    rest = r.rest;
  }
  {
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, rest, 3);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(p.method(), "DELETE");
    EXPECT_EQ(p.target(), "/x");
    EXPECT_EQ(headers_of(p), (Pairs{{"Host", "y"}, {"Content-Length", "2"}}));
    EXPECT_EQ(s.body, "ab");
    EXPECT_EQ(r.rest, "");
  }
}

std::string request_with_headers(int n) {
  std::string r = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < n; ++i) r += "x-h" + std::to_string(i) + ": v\r\n";
  return r + "\r\n";
}

TEST(RequestParser, FieldCountAtTheLimitIsAccepted) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 5);
  configure(p);
  auto r = feed(p, request_with_headers(5), 1 << 20);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_FALSE(p.too_many_fields());
  EXPECT_EQ(headers_of(p).size(), 5u);
  EXPECT_EQ(headers_of(p)[4].first, "x-h4");
}

TEST(RequestParser, FieldCountOverTheLimitIsHeaderLimit) {
  for (std::size_t step : {1u, 1u << 20}) {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 5);
    configure(p);
    auto r = feed(p, request_with_headers(6), step);
    EXPECT_EQ(r.ec, bhttp::error::header_limit) << r.ec.message();
    EXPECT_TRUE(p.too_many_fields());
  }
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 0);
  configure(p);
  auto r = feed(p, request_with_headers(1), 1 << 20);
  EXPECT_EQ(r.ec, bhttp::error::header_limit);
  EXPECT_TRUE(p.too_many_fields());
}

TEST(RequestParser, HeaderBytesOverTheLimitIsHeaderLimitButNotTooManyFields) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  p.header_limit(64);
  auto r = feed(p, "GET / HTTP/1.1\r\nx-long: " + std::string(100, 'a') + "\r\n\r\n", 1 << 20);
  EXPECT_EQ(r.ec, bhttp::error::header_limit);
  EXPECT_FALSE(p.too_many_fields());
}

bool expects_continue(std::string_view expect_line) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  std::string req = "POST / HTTP/1.1\r\nHost: h\r\n";
  req += expect_line;
  req += "Content-Length: 3\r\n\r\n";
  auto r = feed(p, req, 1 << 20, /*whole=*/false);
  EXPECT_FALSE(r.ec) << expect_line << ": " << r.ec.message();
  EXPECT_FALSE(p.is_done());
  return p.expects_continue();
}

TEST(RequestParser, ExpectContinueDetection) {
  EXPECT_TRUE(expects_continue("Expect: 100-continue\r\n"));
  EXPECT_TRUE(expects_continue("expect: 100-Continue\r\n"));
  EXPECT_TRUE(expects_continue("EXPECT: 100-CONTINUE\r\n"));
  EXPECT_TRUE(expects_continue("Expect: foo, 100-continue\r\n"));
  EXPECT_TRUE(expects_continue("Expect: foo,100-continue ,bar\r\n"));
  EXPECT_TRUE(expects_continue("Expect: \t100-continue\t\r\n"));
  EXPECT_TRUE(expects_continue("Expect: x\r\nExpect: 100-continue\r\n"));
  EXPECT_FALSE(expects_continue(""));
  EXPECT_FALSE(expects_continue("Expect: 100-continuex\r\n"));
  EXPECT_FALSE(expects_continue("Expect: 100\r\n"));
  EXPECT_FALSE(expects_continue("Expect: 200-continue\r\n"));
  EXPECT_FALSE(expects_continue("X-Expect: 100-continue\r\n"));
  EXPECT_FALSE(expects_continue("Expect: \r\n"));
}

TEST(RequestParser, TransferEncodingAndContentLengthFlags) {
  {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, "POST / HTTP/1.1\r\nTRANSFER-ENCODING: gzip, chunked\r\n\r\n0\r\n\r\n", 4);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_TRUE(p.has_transfer_encoding());
    EXPECT_FALSE(p.has_content_length());
    EXPECT_TRUE(p.chunked());
  }
  {
    // A Transfer-Encoding that is not chunked: flagged so that the session can refuse it.
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 1 << 20, false);
    EXPECT_TRUE(p.has_transfer_encoding());
    EXPECT_FALSE(p.chunked());
  }
  {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, "PUT /a HTTP/1.1\r\ncontent-length: 0\r\n\r\n", 1 << 20);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_TRUE(p.has_content_length());
    EXPECT_FALSE(p.has_transfer_encoding());
    EXPECT_TRUE(p.is_done());
    EXPECT_EQ(s.body, "");
  }
  {
    // Both headers: Beast refuses the message itself (request smuggling).
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p,
                  "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "0\r\n\r\n",
                  1 << 20);
    EXPECT_TRUE(r.ec);
    EXPECT_TRUE(p.has_content_length());
  }
}

bool keep_alive_of(std::string_view req) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  auto r = feed(p, req, 1 << 20);
  EXPECT_FALSE(r.ec) << req << ": " << r.ec.message();
  return p.keep_alive();
}

TEST(RequestParser, KeepAlive) {
  EXPECT_TRUE(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
  EXPECT_FALSE(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
  EXPECT_FALSE(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nconnection: Close\r\n\r\n"));
  EXPECT_FALSE(keep_alive_of("GET / HTTP/1.0\r\nHost: h\r\n\r\n"));
  EXPECT_TRUE(keep_alive_of("GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"));
}

TEST(RequestParser, MethodsAndTargets) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"GET", "/"},
      {"OPTIONS", "*"},
      {"PATCH", "/a/b%20c?q=1&r=%2F"},
      {"PURGE", "/cache"},  // not a verb Beast knows: the string is kept
      {"CONNECT", "example.com:443"},
  };
  for (const auto& [m, t] : cases) {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, m + " " + t + " HTTP/1.1\r\nHost: h\r\n\r\n", 2, /*whole=*/false);
    ASSERT_FALSE(r.ec) << m << ": " << r.ec.message();
    EXPECT_EQ(p.method(), m);
    EXPECT_EQ(p.target(), t);
    EXPECT_EQ(headers_of(p), (Pairs{{"Host", "h"}}));
  }
}

// The target's end is searched 16 bytes a step, its last step one load that ends at the line's
// end and may start in the method (whose space must not count): targets of every length up to
// 40, whole or with a stop byte (SP, a control character, DEL) at any place, each request line
// alone in a heap buffer of its exact size (ASan reports a read past it).
TEST(RequestParser, TargetsOfEveryLengthWithAStopAnywhere) {
  for (std::string_view method : {"GET", "OPTIONS"}) {
    for (std::size_t len = 1; len <= 40; ++len) {
      std::string whole(len, 'a');
      whole[0] = '/';
      std::vector<std::pair<std::string, bool>> cases = {{whole, true}};
      for (std::size_t i = 1; i < len; ++i) {
        for (char c : {' ', '\x01', '\t', '\x7f'}) {
          std::string t = whole;
          t[i] = c;
          cases.emplace_back(t, false);
        }
      }
      for (const auto& [target, ok] : cases) {
        const std::string line = std::string(method) + " " + target + " HTTP/1.1\r\n";
        const auto bytes = std::make_unique<char[]>(line.size());
        std::memcpy(bytes.get(), line.data(), line.size());
        Storage s;
        RequestParser p(s.arena, s.fields, s.body, 100);
        configure(p);
        beast::error_code ec;
        p.put(boost::asio::const_buffer(bytes.get(), line.size()), ec);
        if (ok) {
          EXPECT_EQ(ec, bhttp::error::need_more) << line;
          EXPECT_EQ(p.method(), method);
          EXPECT_EQ(p.target(), target);
        } else {
          EXPECT_TRUE(ec && ec != bhttp::error::need_more) << line;
        }
      }
    }
  }
}

TEST(RequestParser, HeaderViewsKeepValuesWithColonsAndEmptyValues) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  auto r = feed(p,
                "GET / HTTP/1.1\r\nX-Url: http://a:1/b\r\nX-Empty:\r\nX-Spaces:   padded   \r\n"
                "x-dup: 1\r\nX-Dup: 2\r\n\r\n",
                1);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(headers_of(p), (Pairs{{"X-Url", "http://a:1/b"},
                                  {"X-Empty", ""},
                                  {"X-Spaces", "padded"},
                                  {"x-dup", "1"},
                                  {"X-Dup", "2"}}));
  Views v = {{"stale", "entry"}};
  p.headers(v);  // replaces, does not append
  EXPECT_EQ(v.size(), 5u);
}

TEST(RequestParser, MalformedRequestsAreErrors) {
  for (std::string_view bad : {
           "GET / HTTP/1.1\r\nbad header\r\n\r\n",
           "GET / HTTP/9.9\r\n\r\n",
           "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
           "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
       }) {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, bad, 1 << 20);
    EXPECT_TRUE(r.ec) << bad;
    EXPECT_NE(r.ec, bhttp::error::need_more) << bad;
  }
}

TEST(RequestParser, ObsFoldAndWhitespaceBeforeAFieldAreRefused) {
  // RFC 9112 5.2 lets a server refuse obs-fold, and 2.2 requires refusing whitespace between
  // the start line and the first field: both are places where two parsers can disagree.
  for (std::string_view bad : {
           "GET / HTTP/1.1\r\nX: a\r\n folded\r\nY: b\r\n\r\n",
           "GET / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n",
           "GET / HTTP/1.1\r\n Host: h\r\n\r\n",
           "GET / HTTP/1.1\r\nX: a\r\n \r\n\r\n",
       }) {
    for (std::size_t step : {1u, 1u << 20}) {
      Storage s;
      RequestParser p(s.arena, s.fields, s.body, 100);
      configure(p);
      auto r = feed(p, bad, step);
      EXPECT_TRUE(r.ec) << bad;
      EXPECT_NE(r.ec, bhttp::error::need_more) << bad;
    }
  }
}

// A head read at once takes each well-formed field line in one pass from its start (no search
// for its end first); byte by byte, every line is found whole first. Both ways must give the
// same answer: the same error for each malformed line, the same fields for the rest, and the
// same header limit to the byte.
TEST(RequestParser, LinesReadAtOnceAndByteByByteGetTheSameAnswer) {
  const std::string_view lines[] = {
      "X: a\r\n",
      "X:a\r\n",
      "X:   a \t \r\n",
      "X:\r\n",
      "X: \r\n",
      "X: a\rb\r\n",
      "X: a\r\r\n",
      "X: a\n",
      "X: a\nY: b\r\n",
      "X: a\x7f\r\n",
      "X: a\x01\r\n",
      "X: a\xc3\xa9\r\n",
      "X : a\r\n",
      ": a\r\n",
      "X\r\n",
      "X;: a\r\n",
      " X: a\r\n",
      "\tX: a\r\n",
      "X: a\r\n folded\r\n",
      "X-Long-Name-Of-Thirty: v\r\n",
      "Content-Length: 3\r\n",
      "Content-Length: 3, 3\r\n",
      "Transfer-Encoding: gzip\r\n",
      "Connection: close\r\n",
      "Connection: a b\r\n",
      "X: a\r",
  };
  for (std::string_view line : lines) {
    for (std::string_view before : {"", "Host: h\r\n"}) {
      std::string req = "POST / HTTP/1.1\r\n";
      req += before;
      req += line;
      req += "Content-Length: 3\r\n\r\nabc";
      Storage s1, s2;
      RequestParser whole(s1.arena, s1.fields, s1.body, 100);
      RequestParser bytes(s2.arena, s2.fields, s2.body, 100);
      configure(whole);
      configure(bytes);
      const auto a = feed(whole, req, 1 << 20);
      const auto b = feed(bytes, req, 1);
      EXPECT_EQ(a.ec, b.ec) << req;
      if (!a.ec && !b.ec) {
        EXPECT_EQ(headers_of(whole), headers_of(bytes)) << req;
        EXPECT_EQ(s1.body, s2.body) << req;
      }
    }
  }
  // The header limit: a head (its blank line included) of exactly the limit is read, one byte
  // more is refused, whichever way it arrives.
  const std::string start = "GET / HTTP/1.1\r\n";
  for (std::size_t limit : {64u, 100u}) {
    for (std::size_t extra : {0u, 1u}) {
      const std::size_t value = limit - start.size() - std::string_view("X: \r\n\r\n").size();
      const std::string head = start + "X: " + std::string(value + extra, 'v') + "\r\n\r\n";
      for (std::size_t step : {std::size_t{1}, std::size_t{1} << 20}) {
        Storage s;
        RequestParser p(s.arena, s.fields, s.body, 100);
        configure(p);
        p.header_limit(static_cast<std::uint32_t>(limit));
        auto r = feed(p, head, step);
        if (extra == 0) {
          EXPECT_FALSE(r.ec) << limit << " step " << step << ": " << r.ec.message();
        } else {
          EXPECT_EQ(r.ec, bhttp::error::header_limit) << limit << " step " << step;
        }
      }
    }
  }
}

// The whitespace between a field's colon and its value, and after the value, in every mix of SP
// and HTAB (the usual single space is taken first): dropped from the value, whole and byte by
// byte, in requests and answers alike; the recognised fields that carry no framing (Host,
// Expect, Upgrade, Content-Type, Retry-After) are kept like any other.
TEST(RequestParser, OptionalWhitespaceAroundValuesIsDropped) {
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"X: a\r\n", "a"},
      {"X:a\r\n", "a"},
      {"X:\ta\r\n", "a"},
      {"X: \ta\r\n", "a"},
      {"X:  a\r\n", "a"},
      {"X:\t a\r\n", "a"},
      {"X: \t \ta b\t \r\n", "a b"},
      {"X: \r\n", ""},
      {"X:\t\r\n", ""},
      {"X:  \r\n", ""},
      {"X: a \r\n", "a"},
      {"X: a\t\r\n", "a"},
      {"Host:  h2\r\n", "h2"},
      {"Expect: \tx\r\n", "x"},
      {"Upgrade:  websocket\r\n", "websocket"},
      {"Content-Type:\ttext/plain \r\n", "text/plain"},
      {"Retry-After: \t7\r\n", "7"},
  };
  for (const auto& [line, want] : cases) {
    const std::string req =
        std::string("POST / HTTP/1.1\r\n") + std::string(line) + "Content-Length: 3\r\n\r\nabc";
    const std::string resp =
        std::string("HTTP/1.1 200 OK\r\n") + std::string(line) + "Content-Length: 3\r\n\r\nabc";
    for (std::size_t step : {std::size_t{1}, std::size_t{5}, std::size_t{1} << 20}) {
      Storage s;
      RequestParser p(s.arena, s.fields, s.body, 100);
      configure(p);
      const auto r = feed(p, req, step);
      ASSERT_FALSE(r.ec) << req << " step " << step << ": " << r.ec.message();
      const auto h = headers_of(p);
      ASSERT_EQ(h.size(), 2u) << req;
      EXPECT_EQ(h[0].second, want) << req << " step " << step;
      EXPECT_EQ(h[1].second, "3") << req << " step " << step;
      EXPECT_EQ(s.body, "abc") << req << " step " << step;

      Headers list;
      ResponseParser q(list);
      std::string sink;
      q.set_sink(&sink, 1024);
      q.eager(true);
      const auto rr = feed(q, resp, step);
      ASSERT_FALSE(rr.ec) << resp << " step " << step << ": " << rr.ec.message();
      const std::string name(line.substr(0, line.find(':')));
      EXPECT_EQ(list.wire(), name + ": " + std::string(want) + "\r\nContent-Length: 3\r\n")
          << resp << " step " << step;
      EXPECT_EQ(sink, "abc") << resp << " step " << step;
      if (name == "Content-Type") {
        EXPECT_EQ(q.content_type(), want);
      }
      if (name == "Retry-After") {
        EXPECT_EQ(q.retry_after(), want);
      }
    }
  }
}

TEST(RequestParser, TruncatedInput) {
  {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, "", 1);
    EXPECT_EQ(r.ec, bhttp::error::end_of_stream);
  }
  {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, kSimplePost.substr(0, kSimplePost.size() - 3), 7);
    EXPECT_TRUE(r.ec);
    EXPECT_FALSE(p.is_done());
  }
}

// ---------------------------------------------------------------------------------------------

TEST(ResponseParser, StatusHeadersAndContentLengthBody) {
  for (std::size_t step : {1u, 6u, 1u << 20}) {
    Headers h;
    ASSERT_TRUE(h.add("stale", "x"));
    ResponseParser p(h);
    EXPECT_TRUE(h.empty());  // cleared by the constructor
    std::string sink;
    p.set_sink(&sink, 1024);
    p.eager(true);
    auto r = feed(p,
                  "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Req: a: b\r\n"
                  "Content-Length: 11\r\n\r\n{\"ok\":true}",
                  step);
    ASSERT_FALSE(r.ec) << step << ": " << r.ec.message();
    EXPECT_EQ(p.status(), 201);
    EXPECT_EQ(h.wire(), "Content-Type: application/json\r\nX-Req: a: b\r\nContent-Length: 11\r\n");
    EXPECT_EQ(sink, "{\"ok\":true}");
    EXPECT_FALSE(p.sink_overflowed());
    EXPECT_TRUE(p.keep_alive());
  }
}

TEST(ResponseParser, ChunkedBody) {
  for (std::size_t step : {1u, 4u, 1u << 20}) {
    Headers h;
    ResponseParser p(h);
    std::string sink;
    p.set_sink(&sink, 1024);
    p.eager(true);
    auto r = feed(p,
                  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                  step);
    ASSERT_FALSE(r.ec) << step << ": " << r.ec.message();
    EXPECT_EQ(p.status(), 200);
    EXPECT_TRUE(p.chunked());
    EXPECT_EQ(h.get("transfer-encoding"), "chunked");
    EXPECT_EQ(sink, "abc0123456789");
    EXPECT_EQ(r.rest, "HTTP/1.1 204 No Content\r\n\r\n");
  }
}

TEST(ResponseParser, BodyOverTheSinkLimitOverflows) {
  for (std::string_view resp : {
           std::string_view("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789abcdefghij"),
           std::string_view("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "8\r\n01234567\r\n8\r\n89abcdef\r\n4\r\nghij\r\n0\r\n\r\n"),
       }) {
    Headers h;
    ResponseParser p(h);
    std::string sink;
    p.set_sink(&sink, 10);
    p.eager(true);
    auto r = feed(p, resp, 1 << 20);
    EXPECT_EQ(r.ec, bhttp::error::body_limit) << resp;
    EXPECT_TRUE(p.sink_overflowed());
    EXPECT_LE(sink.size(), 10u);
  }
  // Exactly at the limit is fine.
  Headers h;
  ResponseParser p(h);
  std::string sink;
  p.set_sink(&sink, 20);
  p.eager(true);
  auto r = feed(p, "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789abcdefghij", 3);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_FALSE(p.sink_overflowed());
  EXPECT_EQ(sink, "0123456789abcdefghij");
}

TEST(ResponseParser, NullSinkDiscardsTheBody) {
  Headers h;
  ResponseParser p(h);
  p.set_sink(nullptr, 0);
  p.eager(true);
  auto r = feed(p, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\n\r\nhello", 2);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_TRUE(p.is_done());
  EXPECT_EQ(p.status(), 502);
  EXPECT_FALSE(p.sink_overflowed());
  EXPECT_EQ(h.get("content-length"), "5");
}

TEST(ResponseParser, BodyUntilEofAndNoBodyStatuses) {
  {
    Headers h;
    ResponseParser p(h);
    std::string sink;
    p.set_sink(&sink, 100);
    p.eager(true);
    auto r = feed(p, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 5);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(sink, "until the end");
    EXPECT_FALSE(p.keep_alive());
  }
  {
    Headers h;
    ResponseParser p(h);
    std::string sink;
    p.set_sink(&sink, 100);
    auto r = feed(p, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", 1 << 20, /*whole=*/false);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_TRUE(p.is_done());
    EXPECT_EQ(p.status(), 204);
    EXPECT_EQ(h.wire(), "X-A: 1\r\n");
  }
  {
    Headers h;
    ResponseParser p(h);
    auto r = feed(p, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 1 << 20);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_FALSE(p.keep_alive());
  }
}

// ---------------------------------------------------------------------------------------------

TEST(AppendResponseHead, ContentLengthFraming) {
  Headers h;
  ASSERT_TRUE(h.add("content-type", "application/json"));
  ASSERT_TRUE(h.add("x-request-id", "r1"));
  std::string out = "prefix|";
  append_response_head(out, 200, "bellwether", h, 42, true);
  EXPECT_EQ(out,
            "prefix|"
            "HTTP/1.1 200 OK\r\n"
            "server: bellwether\r\n"
            "content-type: application/json\r\n"
            "x-request-id: r1\r\n"
            "content-length: 42\r\n"
            "\r\n");
}

TEST(AppendResponseHead, ChunkedAndClose) {
  Headers h;
  ASSERT_TRUE(h.add("content-type", "text/event-stream"));
  std::string out;
  append_response_head(out, 429, "bw", h, -1, false);
  EXPECT_EQ(out,
            "HTTP/1.1 429 Too Many Requests\r\n"
            "server: bw\r\n"
            "content-type: text/event-stream\r\n"
            "transfer-encoding: chunked\r\n"
            "connection: close\r\n"
            "\r\n");
}

TEST(AppendResponseHead, ZeroLengthNoServerNameNoHeaders) {
  std::string out;
  append_response_head(out, 204, "", Headers{}, 0, true);
  EXPECT_EQ(out, "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
}

TEST(AppendResponseHead, CallerFramingHeadersAreDropped) {
  Headers h;
  ASSERT_TRUE(h.add("X-First", "1"));
  ASSERT_TRUE(h.add("Content-Length", "999"));
  ASSERT_TRUE(h.add("x-middle", "a: b"));
  ASSERT_TRUE(h.add("TRANSFER-ENCODING", "chunked"));
  ASSERT_TRUE(h.add("Connection", "keep-alive"));
  ASSERT_TRUE(h.add("x-last", "z"));
  ASSERT_TRUE(h.add("x-content-length", "kept"));
  std::string out;
  append_response_head(out, 503, "bw", h, 7, true);
  EXPECT_EQ(out,
            "HTTP/1.1 503 Service Unavailable\r\n"
            "server: bw\r\n"
            "X-First: 1\r\n"
            "x-middle: a: b\r\n"
            "x-last: z\r\n"
            "x-content-length: kept\r\n"
            "content-length: 7\r\n"
            "\r\n");
  out.clear();
  append_response_head(out, 200, "bw", h, -1, false);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\n"
            "server: bw\r\n"
            "X-First: 1\r\n"
            "x-middle: a: b\r\n"
            "x-last: z\r\n"
            "x-content-length: kept\r\n"
            "transfer-encoding: chunked\r\n"
            "connection: close\r\n"
            "\r\n");
}

// The head of a list without framing headers is written sized in one piece; a list with them
// line by line. Both end in the same framing lines, for every framing.
TEST(AppendResponseHead, BothWritersEndTheHeadAlike) {
  Headers plain;
  ASSERT_TRUE(plain.add("x-a", "1"));
  Headers framed = plain;
  ASSERT_TRUE(framed.add("Content-Length", "5"));
  ASSERT_FALSE(plain.may_have_framing());
  ASSERT_TRUE(framed.may_have_framing());
  const std::int64_t lengths[] = {-1, 0, 9, 10, 1234567, std::numeric_limits<std::int64_t>::max()};
  for (const std::int64_t length : lengths) {
    for (const bool keep_alive : {true, false}) {
      const std::string tail = (length < 0 ? std::string("transfer-encoding: chunked\r\n")
                                           : "content-length: " + std::to_string(length) + "\r\n") +
                               (keep_alive ? "" : "connection: close\r\n") + "\r\n";
      std::string a = "|", b = "|";
      append_response_head(a, 200, "bw", plain, length, keep_alive);
      append_response_head(b, 200, "bw", framed, length, keep_alive);
      EXPECT_EQ(a, "|HTTP/1.1 200 OK\r\nserver: bw\r\nx-a: 1\r\n" + tail);
      EXPECT_EQ(b, a);
    }
  }
}

// Header lines given in pieces are written as they are, each piece whole: pieces of every length
// from 0 to 40 bytes (the writer copies short ones inline), in every split of the same lines.
TEST(AppendResponseHead, LinesInPiecesAreJoinedExactly) {
  std::string text;
  for (int i = 0; text.size() < 400; ++i) {
    text += "x-h" + std::to_string(i) + ": " + std::string(static_cast<std::size_t>(i % 23), 'v') +
            "\r\n";
  }
  for (std::size_t step = 1; step <= 40; ++step) {
    std::vector<std::string_view> pieces;
    for (std::size_t at = 0, k = 0; at < text.size();) {
      // 0, step, 2 * step, ... modulo 41 (a prime: every length from 0 to 40 comes up).
      const std::size_t n = std::min((step * k++) % 41, text.size() - at);
      pieces.push_back(std::string_view(text).substr(at, n));
      at += n;
    }
    std::string got = "|", want = "|";
    append_response_head(got, 200, "bw", pieces, 12, false);
    want += "HTTP/1.1 200 OK\r\nserver: bw\r\n" + text +
            "content-length: 12\r\nconnection: close\r\n\r\n";
    ASSERT_EQ(got, want) << step;
    // The same lines as one list give the same head.
    Headers h;
    h.raw() = text;
    std::string from_list = "|";
    append_response_head(from_list, 200, "bw", h, 12, false);
    EXPECT_EQ(from_list, want);
  }
}

TEST(AppendResponseHead, ReasonPhrases) {
  const std::vector<std::pair<int, std::string>> cases = {
      {100, "Continue"},
      {201, "Created"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {404, "Not Found"},
      {413, "Payload Too Large"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {502, "Bad Gateway"},
      {504, "Gateway Timeout"},
  };
  for (const auto& [status, reason] : cases) {
    std::string out;
    append_response_head(out, status, "", Headers{}, 0, true);
    EXPECT_EQ(
        out, "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\ncontent-length: 0\r\n\r\n");
  }
}

TEST(AppendResponseHead, RoundTripsThroughTheResponseParser) {
  for (int status : {200, 299, 404, 418, 429, 499, 503, 599}) {
    Headers h;
    ASSERT_TRUE(h.add("x-a", "1"));
    std::string out;
    append_response_head(out, status, "bw", h, 5, true);
    out += "hello";
    Headers parsed;
    ResponseParser p(parsed);
    std::string sink;
    p.set_sink(&sink, 100);
    auto r = feed(p, out, 1 << 20);
    ASSERT_FALSE(r.ec) << status << ": " << r.ec.message() << "\n" << out;
    EXPECT_EQ(p.status(), status);
    EXPECT_EQ(parsed.wire(), "server: bw\r\nx-a: 1\r\ncontent-length: 5\r\n");
    EXPECT_EQ(sink, "hello");
  }
}

TEST(AppendRequestHead, ExactBytes) {
  Headers h;
  ASSERT_TRUE(h.add("authorization", "Bearer up"));
  ASSERT_TRUE(h.add("Content-Length", "1"));
  ASSERT_TRUE(h.add("content-type", "application/json"));
  ASSERT_TRUE(h.add("Transfer-Encoding", "chunked"));
  ASSERT_TRUE(h.add("connection", "close"));
  ASSERT_TRUE(h.add("accept", "*/*"));
  std::string out;
  append_request_head(out, "POST", "/v1/chat/completions", "api.example.com:8443", h, 123);
  EXPECT_EQ(out,
            "POST /v1/chat/completions HTTP/1.1\r\n"
            "host: api.example.com:8443\r\n"
            "authorization: Bearer up\r\n"
            "content-type: application/json\r\n"
            "accept: */*\r\n"
            "content-length: 123\r\n"
            "\r\n");
  out.clear();
  append_request_head(out, "GET", "/v1/models?x=1", "h", Headers{}, 0);
  EXPECT_EQ(out, "GET /v1/models?x=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n");
}

TEST(AppendRequestHead, BothWritersEndTheHeadAlike) {
  Headers plain;
  ASSERT_TRUE(plain.add("x-a", "1"));
  Headers framed = plain;
  ASSERT_TRUE(framed.add("connection", "close"));
  for (const std::size_t length :
       {std::size_t{0}, std::size_t{7}, std::size_t{10}, std::numeric_limits<std::size_t>::max()}) {
    std::string a = "|", b = "|";
    append_request_head(a, "POST", "/p", "h", plain, length);
    append_request_head(b, "POST", "/p", "h", framed, length);
    EXPECT_EQ(a, "|POST /p HTTP/1.1\r\nhost: h\r\nx-a: 1\r\ncontent-length: " +
                     std::to_string(length) + "\r\n\r\n");
    EXPECT_EQ(b, a);
  }
}

// Lines in pieces come first, then the list's (without its framing headers), then the framing.
TEST(AppendRequestHead, LinesInPiecesBeforeTheList) {
  const std::string_view pieces[] = {
      "content-type: application/json\r\nx-request-id: ", "req_0123456789abcdef01234567", "\r\n",
      "authorization: Bearer k\r\n"};
  Headers h;
  ASSERT_TRUE(h.add("user-agent", "t/1"));
  std::string out;
  append_request_head(out, "POST", "/v1/chat/completions", "u:1", pieces, h, 5);
  const std::string want =
      "POST /v1/chat/completions HTTP/1.1\r\nhost: u:1\r\n"
      "content-type: application/json\r\nx-request-id: req_0123456789abcdef01234567\r\n"
      "authorization: Bearer k\r\nuser-agent: t/1\r\ncontent-length: 5\r\n\r\n";
  EXPECT_EQ(out, want);
  ASSERT_TRUE(h.add("Content-Length", "9"));  // dropped: the framing is the serializer's
  out.clear();
  append_request_head(out, "POST", "/v1/chat/completions", "u:1", pieces, h, 5);
  EXPECT_EQ(out, want);
}

TEST(AppendRequestHead, ParsesBackWithTheRequestParser) {
  Headers h;
  ASSERT_TRUE(h.add("x-a", "1"));
  std::string out;
  append_request_head(out, "POST", "/p?q", "h:1", h, 4);
  out += "body";
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 10);
  configure(p);
  auto r = feed(p, out, 5);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(p.method(), "POST");
  EXPECT_EQ(p.target(), "/p?q");
  EXPECT_EQ(headers_of(p), (Pairs{{"host", "h:1"}, {"x-a", "1"}, {"content-length", "4"}}));
  EXPECT_EQ(s.body, "body");
}

std::string chunk(std::size_t n) {
  char buf[20];
  const std::size_t len = chunk_header(buf, n);
  return std::string(buf, len);
}

TEST(ChunkHeader, HexSizes) {
  EXPECT_EQ(chunk(0), "0\r\n");
  EXPECT_EQ(chunk(1), "1\r\n");
  EXPECT_EQ(chunk(9), "9\r\n");
  EXPECT_EQ(chunk(10), "a\r\n");
  EXPECT_EQ(chunk(15), "f\r\n");
  EXPECT_EQ(chunk(16), "10\r\n");
  EXPECT_EQ(chunk(255), "ff\r\n");
  EXPECT_EQ(chunk(256), "100\r\n");
  EXPECT_EQ(chunk(4096), "1000\r\n");
  EXPECT_EQ(chunk(65535), "ffff\r\n");
  EXPECT_EQ(chunk(1u << 20), "100000\r\n");
  EXPECT_EQ(chunk(0xdeadbeefULL), "deadbeef\r\n");
  EXPECT_EQ(chunk(0x123456789abcdefULL), "123456789abcdef\r\n");
  EXPECT_EQ(chunk(std::numeric_limits<std::size_t>::max()), "ffffffffffffffff\r\n");
}

TEST(ChunkHeader, ChunksParseBack) {
  std::string resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string expected;
  for (std::size_t n : {1u, 15u, 16u, 255u, 300u, 4096u}) {
    std::string data(n, static_cast<char>('a' + n % 26));
    resp += chunk(n) + data + "\r\n";
    expected += data;
  }
  resp += chunk(0) + "\r\n";
  Headers h;
  ResponseParser p(h);
  std::string sink;
  p.set_sink(&sink, 1 << 20);
  auto r = feed(p, resp, 1000);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(sink, expected);
}

// Reads a response the way UpstreamResponse::read_some (src/http/client.cc) does, one piece
// per call: put what is buffered, and once some body bytes are in hand, stop at the end of the
// buffered bytes or at an incomplete chunk line; read more only while the piece is empty. The
// socket delivers `input` in the sizes `reads` (cycled). `in_place`: the piece is the parser's
// in-place view of the buffer (written over the chunk framing) instead of a sink's copy. Each
// piece is copied out before the next call; "!error" ends the list on a parse error.
std::vector<std::string> read_pieces(std::string_view input, const std::vector<std::size_t>& reads,
                                     bool in_place) {
  Headers h;
  ResponseParser p(h);
  beast::flat_buffer buffer;
  std::size_t pos = 0, next = 0;
  auto read = [&] {
    if (pos == input.size()) return false;
    const std::size_t n = std::min(reads[next++ % reads.size()], input.size() - pos);
    auto mb = buffer.prepare(n);
    std::memcpy(mb.data(), input.data() + pos, n);
    buffer.commit(n);
    pos += n;
    return true;
  };
  std::vector<std::string> out;
  // The head, not eager: the body's bytes stay buffered.
  while (!p.is_header_done()) {
    if (buffer.size() > 0) {
      error_code ec;
      buffer.consume(p.put(buffer.data(), ec));
      if (ec && ec != bhttp::error::need_more) return {"!error"};
      if (p.is_header_done()) break;
    }
    if (!read()) return {"!error"};
  }
  std::string sink;
  for (int call = 0; call < 100000; ++call) {
    sink.clear();
    if (in_place) {
      p.in_place(true);
    } else {
      p.set_sink(&sink, std::numeric_limits<std::size_t>::max());
    }
    auto have = [&] { return in_place ? !p.in_place_body().empty() : !sink.empty(); };
    for (;;) {
      if (buffer.size() > 0 && !p.is_done()) {
        error_code ec;
        const std::size_t used = p.put(buffer.data(), ec);
        buffer.consume(used);
        if (ec && ec != bhttp::error::need_more) return out.push_back("!error"), out;
        if (p.is_done()) break;
        if (!ec && used > 0 && buffer.size() > 0) continue;
        if (have()) break;
      }
      if (p.is_done()) break;
      if (!read()) {
        error_code ec;
        p.put_eof(ec);
        if (ec) return out.push_back("!error"), out;
        break;
      }
    }
    out.emplace_back(in_place ? std::string(p.in_place_body()) : sink);
    p.in_place(false);
    p.set_sink(nullptr, 0);
    if (p.is_done() && out.back().empty()) break;
    if (p.is_done()) {
      out.emplace_back();
      break;
    }
  }
  return out;
}

// Random SSE bodies in random chunk framings (sizes from one byte up, hex digits of either case,
// leading zeros, extensions, trailers), read in random sizes: the in-place pieces are the
// copied pieces, byte for byte, and together the body.
TEST(ResponseParser, InPlacePiecesAreTheCopiedPieces) {
  std::mt19937 rng(20261206);
  auto pick = [&](std::size_t lo, std::size_t hi) {
    return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
  };
  const std::vector<std::string> events = {
      "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
      "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\r\n\r\n",
      ": keep-alive\n\n",
      "event: x\ndata: a\ndata: b\n\n",
      "data: [DONE]\n\n",
  };
  const char* const hex = "0123456789abcdef0123456789ABCDEF";
  auto size_line = [&](std::size_t n) {
    std::string digits;
    do {
      digits.insert(digits.begin(), hex[(n % 16) + (pick(0, 1) ? 16 : 0)]);
      n /= 16;
    } while (n > 0);
    std::string line = std::string(pick(0, 3) == 0 ? pick(1, 2) : 0, '0') + digits;
    if (pick(0, 5) == 0) line += ";ext=\"v\"";
    return line + "\r\n";
  };
  int multi_chunk_pieces = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string body;
    for (std::size_t e = pick(1, 12); e > 0; --e) body += events[pick(0, events.size() - 1)];
    std::string wire =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    const std::size_t largest = pick(0, 2) == 0 ? 4 : body.size();
    std::size_t chunks = 0;
    for (std::size_t at = 0; at < body.size();) {
      const std::size_t n = std::min(pick(1, largest), body.size() - at);
      wire += size_line(n) + body.substr(at, n) + "\r\n";
      at += n;
      ++chunks;
    }
    wire += pick(0, 3) == 0 ? "0\r\nx-trailer: 1\r\n\r\n" : "0\r\n\r\n";
    std::vector<std::size_t> reads;
    for (std::size_t i = pick(1, 6); i > 0; --i) {
      reads.push_back(pick(0, 2) == 0 ? pick(1, 8) : pick(1, wire.size()));
    }
    const auto copied = read_pieces(wire, reads, false);
    const auto placed = read_pieces(wire, reads, true);
    ASSERT_EQ(placed, copied) << "round " << round;
    std::string joined;
    for (const auto& piece : placed) joined += piece;
    ASSERT_EQ(joined, body) << "round " << round;
    ASSERT_TRUE(placed.back().empty());
    if (chunks > placed.size()) ++multi_chunk_pieces;
  }
  // Pieces made of several chunks (the framing written over) were among them.
  EXPECT_GT(multi_chunk_pieces, 500);
}

// Content-Length and close-delimited bodies are left where they are too.
TEST(ResponseParser, InPlaceBodiesOfKnownLengthAndToTheClose) {
  for (std::string_view wire : {
           std::string_view(
               "HTTP/1.1 200 OK\r\ncontent-length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz"),
           std::string_view("HTTP/1.1 200 OK\r\n\r\nabcdefghijklmnopqrstuvwxyz"),
       }) {
    for (std::size_t step : {1u, 3u, 7u, 100u}) {
      const auto placed = read_pieces(wire, {step}, true);
      EXPECT_EQ(placed, read_pieces(wire, {step}, false)) << wire << " " << step;
      std::string joined;
      for (const auto& piece : placed) joined += piece;
      EXPECT_EQ(joined, "abcdefghijklmnopqrstuvwxyz") << wire << " " << step;
    }
  }
}

// Field names are passed 16 bytes at a time while they hold only letters, digits and '-', the
// rest byte by byte: every byte value at every position of names of many lengths gets the
// answer that one byte alone would (a tchar is accepted, anything else refused; ':' ends the
// name and is left out).
TEST(RequestParser, EveryByteAtEveryPositionOfFieldNames) {
  auto tchar = [](unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
  };
  for (std::size_t len : {1u, 2u, 7u, 13u, 15u, 16u, 17u, 24u, 31u, 32u, 33u, 40u}) {
    for (std::size_t pos = 0; pos < len; ++pos) {
      for (int b = 0; b < 256; ++b) {
        if (b == ':') continue;
        std::string name(len, 'x');
        name[len - 1] = '9';
        if (len > 2) name[1] = '-';
        name[pos] = static_cast<char>(b);
        const std::string req = "GET / HTTP/1.1\r\n" + name + ": value\r\nHost: h\r\n\r\n";
        Storage s;
        RequestParser p(s.arena, s.fields, s.body, 100);
        configure(p);
        auto r = feed(p, req, 1 << 20);
        if (tchar(static_cast<unsigned char>(b))) {
          ASSERT_FALSE(r.ec) << "byte " << b << " at " << pos << " of " << len;
          ASSERT_EQ(headers_of(p).at(0), (std::pair<std::string, std::string>{name, "value"}));
        } else {
          EXPECT_TRUE(r.ec) << "byte " << b << " at " << pos << " of " << len;
        }
      }
    }
  }
}

// Field values are checked 16 bytes at a time, the last step overlapping the name: every byte
// value at every position of values of many lengths, after names of several lengths, gets the
// answer that one byte alone would (HTAB, SP, VCHAR and obs-text accepted; other controls and
// DEL refused).
TEST(RequestParser, EveryByteAtEveryPositionOfFieldValues) {
  auto vchar = [](unsigned char c) { return (c >= 0x20 && c != 0x7f) || c == '\t'; };
  for (std::size_t nlen : {1u, 4u, 13u, 16u, 20u}) {
    const std::string name(nlen, 'n');
    for (std::size_t len = 1; len <= 36; ++len) {
      for (std::size_t pos = 0; pos < len; ++pos) {
        for (int b = 0; b < 256; ++b) {
          std::string value(len, 'v');
          value[pos] = static_cast<char>(b);
          const std::string req =
              "GET / HTTP/1.1\r\nHost: h\r\n" + name + ": " + value + "\r\n\r\n";
          for (std::size_t step : {std::size_t{1} << 20, std::size_t{7}}) {
            // In pieces only for the bytes at the edges of the accepted ranges.
            if (step == 7 && b > 0x0e && b != 0x1f && b != 0x20 && b != 0x7f && b != 0x80) continue;
            Storage s;
            RequestParser p(s.arena, s.fields, s.body, 100);
            configure(p);
            auto r = feed(p, req, step);
            if (vchar(static_cast<unsigned char>(b))) {
              ASSERT_FALSE(r.ec) << "byte " << b << " at " << pos << " of " << len << " after "
                                 << nlen;
              std::string_view want = value;
              while (!want.empty() && (want.front() == ' ' || want.front() == '\t'))
                want.remove_prefix(1);
              while (!want.empty() && (want.back() == ' ' || want.back() == '\t'))
                want.remove_suffix(1);
              ASSERT_EQ(headers_of(p).at(1).second, want);
            } else {
              ASSERT_TRUE(r.ec) << "byte " << b << " at " << pos << " of " << len << " after "
                                << nlen;
            }
          }
        }
      }
    }
  }
}

// A reason phrase is checked like a field value, with the status line's start as the bytes
// known to be clean.
TEST(ResponseParser, EveryControlByteAtEveryPositionOfTheReason) {
  for (std::size_t len = 1; len <= 24; ++len) {
    for (std::size_t pos = 0; pos < len; ++pos) {
      for (int b : {0x00, 0x01, 0x09, 0x0b, 0x1f, 0x20, 0x41, 0x7f, 0x80, 0xff}) {
        std::string reason(len, 'R');
        reason[pos] = static_cast<char>(b);
        Headers h;
        ResponseParser p(h);
        p.eager(true);
        auto r = feed(p, "HTTP/1.1 200 " + reason + "\r\nContent-Length: 0\r\n\r\n", 1 << 20);
        const bool ok = b == 0x09 || (b >= 0x20 && b != 0x7f);
        EXPECT_EQ(!r.ec, ok) << "byte " << b << " at " << pos << " of " << len;
      }
    }
  }
}

// An answer's field lines already in the list's form are copied as they are; the others are
// rewritten to it. Both give the same list, framing headers noted either way.
// A head read at once is copied into the list a run of lines at a time: the list, its framing
// flag and the Content-Type and Retry-After views are the same as when each line is copied by
// itself (a head that arrives byte by byte), wherever those lines are among the others.
TEST(ResponseParser, LinesCopiedInRunsGiveTheSameListAndViews) {
  const std::string_view heads[] = {
      "HTTP/1.1 429 Too Many\r\nContent-Length: 0\r\nX-A: 1\r\nContent-Type: a/b\r\n"
      "Retry-After: 7\r\nX-B: 2\r\n\r\n",
      "HTTP/1.1 429 Too Many\r\nX-A:1\r\nRetry-After: 7\r\nX-B:  2\r\nContent-Type: a/b\r\n"
      "Connection: keep-alive\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nContent-Type: a/b \r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
  };
  for (std::string_view head : heads) {
    std::string wire[2], type[2], retry[2];
    bool framing[2] = {};
    for (int i = 0; i < 2; ++i) {
      Headers h;
      ResponseParser p(h);
      p.eager(false);
      auto r = feed(p, head, i == 0 ? std::size_t{1} << 20 : 1, /*whole=*/false);
      ASSERT_FALSE(r.ec) << r.ec.message() << ": " << head;
      wire[i] = h.wire();
      type[i] = p.content_type();
      retry[i] = p.retry_after();
      framing[i] = h.may_have_framing();
    }
    EXPECT_EQ(wire[0], wire[1]) << head;
    EXPECT_EQ(type[0], type[1]) << head;
    EXPECT_EQ(retry[0], retry[1]) << head;
    EXPECT_EQ(framing[0], framing[1]) << head;
    EXPECT_EQ(type[0], head.find("Content-Type") != std::string_view::npos ? "a/b" : "") << head;
    EXPECT_EQ(retry[0], head.find("Retry-After") != std::string_view::npos ? "7" : "") << head;
  }
}

TEST(ResponseParser, FieldLinesInAndOutOfTheListsFormGiveTheSameList) {
  for (std::size_t step : {1u, 5u, 1u << 20}) {
    Headers h;
    ResponseParser p(h);
    p.eager(true);
    auto r = feed(p,
                  "HTTP/1.1 200 OK\r\nA:b\r\nC:  d \r\nE: f\t\r\nG: h\r\nI:\r\nJ: \r\n"
                  "K:\t \tl m\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
                  step);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(h.wire(),
              "A: b\r\nC: d\r\nE: f\r\nG: h\r\nI: \r\nJ: \r\nK: l m\r\nContent-Type: text/plain\r\n"
              "Content-Length: 0\r\n");
    EXPECT_TRUE(h.may_have_framing());
    EXPECT_EQ(p.content_type(), "text/plain");
  }
  Headers h;
  ResponseParser p(h);
  p.eager(true);
  auto r = feed(p, "HTTP/1.1 204 No Content\r\nX-A: 1\r\nX-B:2\r\n\r\n", 1 << 20);
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(h.wire(), "X-A: 1\r\nX-B: 2\r\n");
  EXPECT_FALSE(h.may_have_framing());
}

// The request's names are summarised in header_names(); a lookup of a name whose bit is clear
// answers "absent" without comparing, and every present name is found in any case.
TEST(RequestParser, HeaderNamesIndexFindsEveryPresentName) {
  Storage s;
  RequestParser p(s.arena, s.fields, s.body, 100);
  configure(p);
  auto r = feed(p, kSimplePost, 1 << 20);
  ASSERT_FALSE(r.ec);
  Request req;
  p.headers(req.headers);
  req.header_names = p.header_names();
  req.header_names_count = req.headers.size();
  for (std::string_view n : {"host", "HOST", "content-type", "Content-Type", "authorization",
                             "AUTHORIZATION", "content-length"}) {
    EXPECT_NE(req.header_names & header_name_bit(n), 0u) << n;
    EXPECT_FALSE(req.header(n).empty()) << n;
  }
  EXPECT_EQ(req.header("authorization"), "Bearer sk-test");
  for (std::string_view n : {"x-api-key", "x-priority", "x-request-id", "traceparent", "b3",
                             "anthropic-beta", "x-bellwether-strict-params", "hos", "hostt"}) {
    EXPECT_EQ(req.header(n), "") << n;
  }
  // A header added after the parse is found: the index no longer matches the list.
  req.headers.emplace_back("X-Priority", "2");
  EXPECT_EQ(req.header("x-priority"), "2");
}

// The first Authorization field is remembered by its index during the parse; without one the
// index is past the list. A list changed after the parse is searched.
TEST(RequestParser, AuthorizationIndexIsTheFirstAuthorizationField) {
  struct Case {
    std::string_view fields;
    std::string_view want;
  };
  for (const Case& k : {
           Case{"Host: a\r\nAuthorization: Bearer one\r\n", "Bearer one"},
           Case{"authorization: x\r\nHost: a\r\nAUTHORIZATION: y\r\n", "x"},
           Case{"Host: a\r\nX-Api-Key: k\r\nAuthorizatio: n\r\nAuthorization2: m\r\n", ""},
           Case{"Host: a\r\nAuthorization:\r\nAuthorization: later\r\n", ""},
       }) {
    Storage s;
    RequestParser p(s.arena, s.fields, s.body, 100);
    configure(p);
    auto r = feed(p, "GET / HTTP/1.1\r\n" + std::string(k.fields) + "\r\n", 1 << 20);
    ASSERT_FALSE(r.ec) << k.fields << r.ec.message();
    Request req;
    p.headers(req.headers);
    req.header_names = p.header_names();
    req.header_names_count = req.headers.size();
    req.authorization_at = p.authorization_at();
    EXPECT_EQ(req.authorization(), k.want) << k.fields;
    EXPECT_EQ(req.authorization(), req.header("authorization")) << k.fields;
    req.headers.insert(req.headers.begin(), {"Authorization", "Bearer added"});
    EXPECT_EQ(req.authorization(), "Bearer added") << k.fields;
  }
}

// A Content-Length of digits alone is read without the list walk; lists, 20 digits and more,
// and repeated fields keep their answers.
TEST(ResponseParser, ContentLengthValues) {
  struct Case {
    std::string_view fields;
    bool ok;
    std::uint64_t length;
  };
  for (const Case& k : {
           Case{"Content-Length: 0000000000000000005\r\n", true, 5},
           Case{"Content-Length: 9999999999999999999\r\n", true, 9999999999999999999ULL},
           Case{"Content-Length: 18446744073709551615\r\n", true, 18446744073709551615ULL},
           Case{"Content-Length: 18446744073709551616\r\n", false, 0},
           Case{"Content-Length: 5\r\nContent-Length: 5\r\n", true, 5},
           Case{"Content-Length: 5\r\nContent-Length: 6\r\n", false, 0},
           Case{"Content-Length: 5, 5\r\n", true, 5},
           Case{"Content-Length: 5,6\r\n", false, 0},
           Case{"Content-Length: 5a\r\n", false, 0},
           Case{"Content-Length: -5\r\n", false, 0},
           Case{"Content-Length: +5\r\n", false, 0},
           Case{"Content-Length: \r\n", false, 0},
           Case{"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", false, 0},
       }) {
    Headers h;
    ResponseParser p(h);
    p.body_limit(boost::none);
    p.eager(false);
    auto r = feed(p, "HTTP/1.1 200 OK\r\n" + std::string(k.fields) + "\r\n", 1 << 20, false);
    EXPECT_EQ(!r.ec, k.ok) << k.fields << r.ec.message();
    if (k.ok) {
      ASSERT_TRUE(p.content_length()) << k.fields;
      EXPECT_EQ(*p.content_length(), k.length) << k.fields;
    }
  }
}

// Calls f(input, what) for `line` with every byte value at each of its positions, then `rest`.
template <class F>
void each_byte_at_each_position(std::string_view line, std::string_view rest, F f) {
  for (std::size_t pos = 0; pos < line.size(); ++pos) {
    for (int b = 0; b < 256; ++b) {
      std::string input(line);
      input[pos] = static_cast<char>(b);
      input += rest;
      f(input, "byte " + std::to_string(b) + " at " + std::to_string(pos));
    }
  }
}

// A start line that arrives whole is read without a search for its end first; one that arrives
// a byte at a time is read by the general path. Every byte value at every position of a start
// line gets the same answer both ways.
TEST(RequestParser, StartLineWholeOrByteByByteEveryByteAtEveryPosition) {
  const auto check = [](const std::string& input, const std::string& what) {
    struct Seen {
      error_code ec;
      std::string method, target;
      int version = 0;
      bool keep_alive = false;
    };
    auto run = [&](std::size_t step) {
      Storage s;
      RequestParser p(s.arena, s.fields, s.body, 100);
      configure(p);
      auto r = feed(p, input, step);
      Seen out{r.ec, {}, {}, 0, false};
      if (!r.ec) {
        out.method = p.method();
        out.target = p.target();
        out.version = p.http_version();
        out.keep_alive = p.keep_alive();
      }
      return out;
    };
    const Seen whole = run(1 << 20), bytes = run(1);
    ASSERT_EQ(whole.ec, bytes.ec) << what;
    EXPECT_EQ(whole.method, bytes.method) << what;
    EXPECT_EQ(whole.target, bytes.target) << what;
    EXPECT_EQ(whole.version, bytes.version) << what;
    EXPECT_EQ(whole.keep_alive, bytes.keep_alive) << what;
  };
  each_byte_at_each_position("GET /a?b HTTP/1.1\r\n", "Host: h\r\n\r\n", check);
}

TEST(ResponseParser, StatusLineWholeOrByteByByteEveryByteAtEveryPosition) {
  const auto check = [](const std::string& input, const std::string& what) {
    auto run = [&](std::size_t step) {
      Headers h;
      ResponseParser p(h);
      p.eager(true);
      auto r = feed(p, input, step);
      return std::make_tuple(r.ec, r.ec ? 0 : p.status(), !r.ec && p.keep_alive());
    };
    ASSERT_EQ(run(1 << 20), run(1)) << what;
  };
  each_byte_at_each_position("HTTP/1.1 200 OK\r\n", "Content-Length: 0\r\n\r\n", check);
  // The forms around the usual one: HTTP/1.0, an empty reason, a 1xx.
  for (std::string_view input : {"HTTP/1.0 404 Not Found\r\n\r\n", "HTTP/1.1 200 \r\n\r\n",
                                 "HTTP/1.1 100 Continue\r\n\r\n"}) {
    Headers h;
    ResponseParser p(h);
    p.eager(true);
    auto r = feed(p, input, 1 << 20);
    ASSERT_FALSE(r.ec) << input;
    EXPECT_EQ(p.status(), input[9] == '4' ? 404 : input[9] == '2' ? 200 : 100) << input;
  }
}

// The message's first Content-Length is read in the parser's line loop, any other value by the
// general path: every byte value at every position of 1 to 8 digits gives the answer of RFC
// 9112's rule (1*DIGIT, a list of equal numbers, whitespace around it dropped), after any form
// of the name.
TEST(ResponseParser, ShortContentLengthEveryByteAtEveryPosition) {
  auto trim = [](std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    return v;
  };
  // The reference: nullopt when refused.
  auto expected = [&](std::string_view v) -> std::optional<std::uint64_t> {
    for (char c : v) {
      const auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && u != '\t') || u == 0x7f) return std::nullopt;  // not a field value
    }
    std::optional<std::uint64_t> out;
    v = trim(v);
    for (;;) {
      const auto comma = v.find(',');
      const auto e = trim(v.substr(0, comma));
      if (e.empty()) return std::nullopt;
      std::uint64_t n = 0;
      for (char c : e) {
        if (c < '0' || c > '9') return std::nullopt;
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
      }
      if (out && *out != n) return std::nullopt;
      out = n;
      if (comma == std::string_view::npos) return out;
      v.remove_prefix(comma + 1);
    }
  };
  const std::string_view prefixes[] = {"Content-Length: ", "content-length:", "CONTENT-LENGTH:\t"};
  for (std::size_t len = 1; len <= 8; ++len) {
    for (std::size_t pos = 0; pos < len; ++pos) {
      for (int b = 0; b < 256; ++b) {
        std::string v = std::string("98765432").substr(8 - len);
        v[pos] = static_cast<char>(b);
        if (b == '\r' || b == '\n') continue;  // another line
        const auto want = expected(v);
        const std::string_view prefix = prefixes[(pos + static_cast<std::size_t>(b)) % 3];
        Headers h;
        ResponseParser p(h);
        p.body_limit(boost::none);
        p.eager(false);
        auto r =
            feed(p, "HTTP/1.1 200 OK\r\n" + std::string(prefix) + v + "\r\n\r\n", 1 << 20, false);
        ASSERT_EQ(!r.ec, want.has_value()) << "byte " << b << " at " << pos << " of " << len;
        if (want) {
          ASSERT_TRUE(p.content_length());
          EXPECT_EQ(*p.content_length(), *want) << v;
        }
      }
    }
  }
  // Eight digits each, and repeated fields that differ in their last digit only.
  for (std::string_view v : {"00000000", "99999999", "12345678", "10000000", "0", "7"}) {
    Headers h;
    ResponseParser p(h);
    p.body_limit(boost::none);
    p.eager(false);
    auto r = feed(p, "HTTP/1.1 200 OK\r\nContent-Length: " + std::string(v) + "\r\n\r\n", 1 << 20,
                  false);
    ASSERT_FALSE(r.ec) << v;
    std::uint64_t n = 0;
    for (char c : v) n = n * 10 + static_cast<std::uint64_t>(c - '0');
    EXPECT_EQ(*p.content_length(), n) << v;
  }
  Headers h;
  ResponseParser p(h);
  p.eager(false);
  auto r =
      feed(p, "HTTP/1.1 200 OK\r\nContent-Length: 12345678\r\nContent-Length: 12345679\r\n\r\n",
           1 << 20, false);
  EXPECT_EQ(r.ec, bhttp::error::multiple_content_length);
}

// The framing names are recognised in any case, 8 bytes a step from 8 bytes on; a name with
// any one byte changed is another field.
TEST(ClassifyField, KnownNamesInAnyCaseAndNearMisses) {
  const std::pair<std::string_view, Field> known[] = {
      {"host", Field::kHost},
      {"expect", Field::kExpect},
      {"authorization", Field::kAuthorization},
      {"upgrade", Field::kUpgrade},
      {"connection", Field::kConnection},
      {"retry-after", Field::kRetryAfter},
      {"content-type", Field::kContentType},
      {"content-length", Field::kContentLength},
      {"proxy-connection", Field::kProxyConnection},
      {"transfer-encoding", Field::kTransferEncoding},
  };
  for (auto [name, f] : known) {
    std::string upper(name), mixed(name);
    for (std::size_t i = 0; i < upper.size(); ++i) {
      if (upper[i] >= 'a' && upper[i] <= 'z') upper[i] = static_cast<char>(upper[i] - 32);
      if (i % 2 == 0) mixed[i] = upper[i];
    }
    EXPECT_EQ(classify_field(name), f) << name;
    EXPECT_EQ(classify_field(upper), f) << upper;
    EXPECT_EQ(classify_field(mixed), f) << mixed;
    for (std::size_t pos = 0; pos < name.size(); ++pos) {
      for (char c : {'x', '_', '~', '^', '0'}) {
        std::string near(name);
        if (near[pos] == c) continue;
        near[pos] = c;
        EXPECT_EQ(classify_field(near), Field::kOther) << near;
      }
    }
  }
}

}  // namespace
}  // namespace bw::http::wire
