// Differential test of the HTTP/1.1 parsers (src/http/wire.h) against Beast's basic_parser, the
// parser they replace: many generated and mutated requests and responses, fed in random pieces,
// must be accepted or refused alike, and when accepted give the same start line, header fields,
// body, framing and keep-alive, and leave the same bytes for the next message.
//
// Where the two are meant to differ (docs/security.md, "What the HTTP parser accepts"):
//  - obs-fold (a field line that starts with SP or HTAB): Beast unfolds it, we refuse it;
//  - a Transfer-Encoding value that is not a list of tokens: we refuse the message, Beast looks
//    for "chunked" in what it can read of the list;
//  - a control character (CR, LF, NUL...) inside a quoted chunk-extension value, escaped or
//    not: we refuse it (RFC 9112 7.1.1 allows HTAB, SP, VCHAR and obs-text), Beast skips it;
//  - trailer fields: Beast adds them to the header fields, we check and drop them;
//  - the head limit: we bound the whole head by header_limit, Beast the start line and the
//    fields separately (the inputs here stay far below the limit), and we also bound a
//    chunk-size line and the trailer section by it (the session already bounds them tighter).
// A case where only those differences apply is counted, not failed; the counts must stay a small
// part of the cases (so that the generator still exercises the rest).
#include <gtest/gtest.h>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <cctype>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http.h"
#include "http/wire.h"

namespace bw::http::wire {
namespace {

namespace beast = boost::beast;
using Pairs = std::vector<std::pair<std::string, std::string>>;
using sv = beast::string_view;

// ---------------------------------------------------------------------------------------------
// The reference: Beast's basic_parser with the checks Bellwether added on top of it (one
// Content-Length field without a list; the field count).

class BeastRequest final : public bhttp::basic_parser<true> {
 public:
  std::string method, target;
  Pairs fields;
  std::string body;
  int version = 0;
  bool saw_te = false, te_other = false, saw_cl = false, expect_continue = false;
  int hosts = 0;
  std::size_t max_fields = 100;

 private:
  bool head_done_ = false;
  void on_request_impl(bhttp::verb, sv m, sv t, int v, error_code&) override {
    method = std::string(m);
    target = std::string(t);
    version = v;
  }
  void on_response_impl(int, sv, int, error_code&) override {}
  void on_field_impl(bhttp::field name, sv n, sv value, error_code& ec) override {
    if (head_done_) return;  // a trailer field
    if (fields.size() >= max_fields) {
      ec = bhttp::error::header_limit;
      return;
    }
    std::string_view v = value;
    if (name == bhttp::field::transfer_encoding) {
      if (saw_te || !iequals(v, "chunked")) te_other = true;
      saw_te = true;
    }
    if (name == bhttp::field::content_length) {
      if (saw_cl || v.find(',') != std::string_view::npos) {
        ec = bhttp::error::multiple_content_length;
        return;
      }
      saw_cl = true;
    }
    if (name == bhttp::field::host) ++hosts;
    if (name == bhttp::field::expect) {
      for (std::size_t at = 0;;) {
        auto comma = v.find(',', at);
        std::string_view tok = v.substr(at, comma == std::string_view::npos ? v.npos : comma - at);
        while (!tok.empty() && (tok.front() == ' ' || tok.front() == '\t')) tok.remove_prefix(1);
        while (!tok.empty() && (tok.back() == ' ' || tok.back() == '\t')) tok.remove_suffix(1);
        if (iequals(tok, "100-continue")) expect_continue = true;
        if (comma == std::string_view::npos) break;
        at = comma + 1;
      }
    }
    fields.emplace_back(std::string(n), std::string(v));
  }
  void on_header_impl(error_code&) override { head_done_ = true; }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(sv b, error_code&) override {
    body.append(b.data(), b.size());
    return b.size();
  }
  void on_chunk_header_impl(std::uint64_t, sv, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, sv b, error_code&) override {
    body.append(b.data(), b.size());
    return b.size();
  }
  void on_finish_impl(error_code&) override {}
};

class BeastResponse final : public bhttp::basic_parser<false> {
 public:
  int status = 0;
  std::string wire;  // the fields as Headers::wire() has them
  std::string body;

 private:
  bool head_done_ = false;
  void on_request_impl(bhttp::verb, sv, sv, int, error_code&) override {}
  void on_response_impl(int code, sv, int, error_code&) override { status = code; }
  void on_field_impl(bhttp::field, sv n, sv v, error_code&) override {
    if (head_done_) return;
    wire.append(n.data(), n.size());
    wire.append(": ");
    wire.append(v.data(), v.size());
    wire.append("\r\n");
  }
  void on_header_impl(error_code&) override { head_done_ = true; }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(sv b, error_code&) override {
    body.append(b.data(), b.size());
    return b.size();
  }
  void on_chunk_header_impl(std::uint64_t, sv, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, sv b, error_code&) override {
    body.append(b.data(), b.size());
    return b.size();
  }
  void on_finish_impl(error_code&) override {}
};

// ---------------------------------------------------------------------------------------------
// Feeding, as Session::read and the upstream client do: put what is buffered, consume what was
// used, read more on need_more; pieces of the sizes in `steps` (cycled), then EOF.

struct Fed {
  error_code ec;
  std::string rest;
};

template <class Parser>
Fed feed(Parser& p, std::string_view input, const std::vector<std::size_t>& steps,
         bool head_then_body) {
  beast::flat_buffer buffer;
  std::size_t pos = 0, step_i = 0;
  bool whole = !head_then_body;
  auto rest = [&] {
    std::string r(static_cast<const char*>(buffer.data().data()), buffer.size());
    r.append(input.substr(pos));
    return r;
  };
  for (int guard = 0; guard < 1000000; ++guard) {
    if (buffer.size() > 0) {
      error_code ec;
      const std::size_t used = p.put(buffer.data(), ec);
      buffer.consume(used);
      if (ec && ec != bhttp::error::need_more) return {ec, rest()};
      if (!ec && (whole ? p.is_done() : p.is_header_done())) {
        if (whole) return {{}, rest()};
        whole = true;  // the head is complete: now the body
        p.eager(true);
        if (p.is_done()) return {{}, rest()};
        continue;
      }
      if (!ec && used > 0 && buffer.size() > 0) continue;
    }
    if (pos == input.size()) {
      if (!p.got_some()) return {bhttp::error::end_of_stream, rest()};
      error_code eec;
      p.put_eof(eec);
      if (eec) return {eec, rest()};
      if (p.is_done()) return {{}, rest()};
      return {bhttp::error::partial_message, rest()};
    }
    const std::size_t n = std::min(steps[step_i++ % steps.size()], input.size() - pos);
    auto mb = buffer.prepare(n);
    std::memcpy(mb.data(), input.data() + pos, n);
    buffer.commit(n);
    pos += n;
  }
  ADD_FAILURE() << "no progress";
  return {bhttp::error::partial_message, rest()};
}

std::string escaped(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\r') {
      out += "\\r";
    } else if (c == '\n') {
      out += "\\n\n";
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

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

// -1 when absent (boost::optional has no operator<< without optional_io.hpp).
long long length_of(const boost::optional<std::uint64_t>& v) {
  return v ? static_cast<long long>(*v) : -1;
}

// A Transfer-Encoding field whose value is not a list of tokens: we refuse the message, Beast
// reads what it can of the list.
bool has_bad_coding(std::string_view s) {
  const auto head_end = s.find("\r\n\r\n");
  std::string_view head = s.substr(0, head_end);
  for (std::size_t at = 0; at < head.size();) {
    auto eol = head.find("\r\n", at);
    if (eol == std::string_view::npos) eol = head.size();
    std::string_view line = head.substr(at, eol - at);
    at = eol + 2;
    constexpr std::string_view kName = "transfer-encoding:";
    if (line.size() < kName.size() || !iequals(line.substr(0, kName.size()), kName)) continue;
    std::string_view v = line.substr(kName.size());
    for (;;) {
      const auto comma = v.find(',');
      std::string_view e = v.substr(0, comma);
      while (!e.empty() && (e.front() == ' ' || e.front() == '\t')) e.remove_prefix(1);
      while (!e.empty() && (e.back() == ' ' || e.back() == '\t')) e.remove_suffix(1);
      for (char c : e) {
        if (!(std::isalnum(static_cast<unsigned char>(c)) ||
              std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos)) {
          return true;
        }
      }
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }
  return false;
}

bool has_fold(std::string_view s) {
  return s.find("\r\n ") != std::string_view::npos || s.find("\r\n\t") != std::string_view::npos;
}

Pairs fields_of(const RequestParser& p) {
  std::vector<std::pair<std::string_view, std::string_view>> v;
  p.headers(v);
  Pairs out;
  for (auto [n, val] : v) out.emplace_back(std::string(n), std::string(val));
  return out;
}

// The request a Bellwether session would see after Beast, with Beast's absolute-form rewrite.
std::string origin_form(const std::string& t) {
  auto starts = [&](std::string_view pre) {
    return t.size() >= pre.size() && iequals(std::string_view(t).substr(0, pre.size()), pre);
  };
  if (!starts("http://") && !starts("https://")) return t;
  const auto rest = std::string_view(t).substr(t.find("://") + 3);
  const auto at = rest.find_first_of("/?#");
  if (at == std::string_view::npos) return "/";
  if (rest[at] == '/') return std::string(rest.substr(at));
  return "/" + std::string(rest.substr(at));
}

// `fold` as an obs-fold line after the first field line.
std::string with_fold(std::string m, std::string_view fold) {
  const auto first = m.find("\r\n");
  if (first == std::string::npos) return m;
  const auto second = m.find("\r\n", first + 2);
  if (second == std::string::npos) return m;
  m.insert(second + 2, std::string(fold) + "\r\n");
  return m;
}

struct Tally {
  int cases = 0, accepted = 0, refused = 0, fold = 0, coding = 0, quoted = 0;
};

void compare_request(const std::string& input, const std::vector<std::size_t>& steps,
                     bool head_then_body, Tally& t) {
  std::string arena, body;
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  RequestParser ours(arena, spans, body, 100);
  ours.header_limit(64 * 1024);
  ours.body_limit(1024 * 1024);
  ours.eager(!head_then_body);
  BeastRequest ref;
  ref.header_limit(64 * 1024);
  ref.body_limit(1024 * 1024);
  ref.eager(!head_then_body);
  const Fed a = feed(ours, input, steps, head_then_body);
  const Fed b = feed(ref, input, steps, head_then_body);
  ++t.cases;
  const bool ok_a = !a.ec, ok_b = !b.ec;
  if (ok_a != ok_b) {
    if (!ok_a && ok_b && has_fold(input)) {
      ++t.fold;
      return;
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_transfer_encoding && has_bad_coding(input)) {
      ++t.coding;
      return;
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_chunk_extension &&
        input.find('"') != std::string::npos) {
      ++t.quoted;
      return;
    }
    ADD_FAILURE() << "ours: " << (ok_a ? "accepted" : a.ec.message())
                  << ", Beast: " << (ok_b ? "accepted" : b.ec.message()) << ", step " << steps[0]
                  << "\n"
                  << escaped(input);
    return;
  }
  if (!ok_a) {
    ++t.refused;
    return;
  }
  ++t.accepted;
  const std::string ctx = "\n" + escaped(input);
  EXPECT_EQ(ours.method(), ref.method) << ctx;
  EXPECT_EQ(ours.target(), origin_form(ref.target)) << ctx;
  EXPECT_EQ(fields_of(ours), ref.fields) << ctx;
  EXPECT_EQ(body, ref.body) << ctx;
  EXPECT_EQ(a.rest, b.rest) << ctx;
  EXPECT_EQ(ours.http_version(), ref.version) << ctx;
  EXPECT_EQ(ours.keep_alive(), ref.keep_alive()) << ctx;
  EXPECT_EQ(ours.chunked(), ref.chunked()) << ctx;
  EXPECT_EQ(length_of(ours.content_length()), length_of(ref.content_length())) << ctx;
  EXPECT_EQ(ours.has_transfer_encoding(), ref.saw_te) << ctx;
  EXPECT_EQ(ours.has_content_length(), ref.saw_cl) << ctx;
  EXPECT_EQ(ours.transfer_encoding_is_chunked_only(), ref.saw_te && !ref.te_other) << ctx;
  EXPECT_EQ(ours.host_fields(), ref.hosts) << ctx;
  EXPECT_EQ(ours.expects_continue(), ref.expect_continue) << ctx;
}

TEST(ParserDifferential, RequestsAgreeWithBeast) {
  Gen g(20261205);
  Tally t;
  for (int i = 0; i < 40000 && !HasFailure(); ++i) {
    std::string m = g.request();
    if (g.chance(20)) m += g.request();  // pipelined
    if (g.chance(70)) m = g.mutate(m);
    if (g.chance(3)) m = with_fold(m, " x");
    compare_request(m, g.steps(), g.chance(30), t);
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

void compare_response(const std::string& input, const std::vector<std::size_t>& steps,
                      bool head_then_body, Tally& t) {
  Headers headers;
  ResponseParser ours(headers);
  std::string sink;
  ours.set_sink(&sink, 1 << 20);
  ours.header_limit(64 * 1024);
  ours.body_limit(boost::none);
  ours.eager(!head_then_body);
  BeastResponse ref;
  ref.header_limit(64 * 1024);
  ref.body_limit(boost::none);
  ref.eager(!head_then_body);
  const Fed a = feed(ours, input, steps, head_then_body);
  const Fed b = feed(ref, input, steps, head_then_body);
  ++t.cases;
  const bool ok_a = !a.ec, ok_b = !b.ec;
  if (ok_a != ok_b) {
    if (!ok_a && ok_b && has_fold(input)) {
      ++t.fold;
      return;
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_transfer_encoding && has_bad_coding(input)) {
      ++t.coding;
      return;
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_chunk_extension &&
        input.find('"') != std::string::npos) {
      ++t.quoted;
      return;
    }
    ADD_FAILURE() << "ours: " << (ok_a ? "accepted" : a.ec.message())
                  << ", Beast: " << (ok_b ? "accepted" : b.ec.message()) << ", step " << steps[0]
                  << "\n"
                  << escaped(input);
    return;
  }
  if (!ok_a) {
    ++t.refused;
    return;
  }
  ++t.accepted;
  const std::string ctx = "\n" + escaped(input);
  EXPECT_EQ(ours.status(), ref.status) << ctx;
  EXPECT_EQ(headers.wire(), ref.wire) << ctx;
  EXPECT_EQ(sink, ref.body) << ctx;
  EXPECT_EQ(a.rest, b.rest) << ctx;
  EXPECT_EQ(ours.keep_alive(), ref.keep_alive()) << ctx;
  EXPECT_EQ(ours.chunked(), ref.chunked()) << ctx;
  EXPECT_EQ(length_of(ours.content_length()), length_of(ref.content_length())) << ctx;
  EXPECT_EQ(ours.need_eof(), ref.need_eof()) << ctx;
}

TEST(ParserDifferential, ResponsesAgreeWithBeast) {
  Gen g(7);
  Tally t;
  for (int i = 0; i < 40000 && !HasFailure(); ++i) {
    std::string m = g.response();
    if (g.chance(70)) m = g.mutate(m);
    if (g.chance(3)) m = with_fold(m, "\tx");
    compare_response(m, g.steps(), g.chance(50), t);
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
}  // namespace bw::http::wire
