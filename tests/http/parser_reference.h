#pragma once
// The reference for the HTTP/1.1 parsers of src/http/wire.h: Beast's basic_parser (the parser
// they replaced) with the checks Bellwether had added on top of it, a driver that feeds either
// one as the session and the upstream client do, and comparisons of the two on one input.
// Used by tests/http/parser_diff_test.cc and the fuzz target fuzz/http_parser.cc.
//
// Where the two are meant to differ (docs/security.md, "What the HTTP parser accepts"):
//  - obs-fold (a field line that starts with SP or HTAB): Beast unfolds it, we refuse it;
//  - a Transfer-Encoding value that is not a list of tokens: we refuse the message, Beast looks
//    for "chunked" in what it can read of the list;
//  - a control character (CR, LF, NUL...) inside a quoted chunk-extension value, escaped or
//    not: we refuse it (RFC 9112 7.1.1 allows HTAB, SP, VCHAR and obs-text), Beast skips it;
//  - trailer fields: Beast adds them to the header fields, we check and drop them;
//  - the head limit: we bound the whole head by header_limit, Beast the start line and the
//    fields separately (the inputs compared stay far below the limit), and we also bound a
//    chunk-size line and the trailer section by it (the session already bounds them tighter).
// A case where only those differences apply is counted in a Tally, not reported.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http.h"
#include "http/wire.h"

namespace bw::http::wire::reference {

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

// `short_chunk_puts` = false: while a chunked body is being read, no put of fewer than 5 bytes
// unless the input is exhausted (Beast before 1.86 asserts n >= 5 in its last-chunk path, a wrong
// assertion corrected upstream in boostorg/beast#2861; a complete last chunk has 5 bytes at least,
// so this changes no outcome).
template <class Parser>
Fed feed(Parser& p, std::string_view input, const std::vector<std::size_t>& steps,
         bool head_then_body, bool short_chunk_puts = true) {
  beast::flat_buffer buffer;
  std::size_t pos = 0, step_i = 0;
  bool whole = !head_then_body;
  auto rest = [&] {
    std::string r(static_cast<const char*>(buffer.data().data()), buffer.size());
    r.append(input.substr(pos));
    return r;
  };
  for (int guard = 0; guard < 1000000; ++guard) {
    const bool hold = !short_chunk_puts && p.is_header_done() && p.chunked() && buffer.size() < 5 &&
                      pos < input.size();
    if (buffer.size() > 0 && !hold) {
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
  return {bhttp::error::partial_message, rest()};  // no progress: reported as incomplete
}

inline std::string escaped(std::string_view s) {
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

// -1 when absent (boost::optional has no operator<< without optional_io.hpp).
inline long long length_of(const boost::optional<std::uint64_t>& v) {
  return v ? static_cast<long long>(*v) : -1;
}

// A Transfer-Encoding field whose value is not a list of tokens: we refuse the message, Beast
// reads what it can of the list.
inline bool has_bad_coding(std::string_view s) {
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

inline bool has_fold(std::string_view s) {
  return s.find("\r\n ") != std::string_view::npos || s.find("\r\n\t") != std::string_view::npos;
}

inline Pairs fields_of(const RequestParser& p) {
  std::vector<std::pair<std::string_view, std::string_view>> v;
  p.headers(v);
  Pairs out;
  for (auto [n, val] : v) out.emplace_back(std::string(n), std::string(val));
  return out;
}

// The request a Bellwether session would see after Beast, with Beast's absolute-form rewrite.
inline std::string origin_form(const std::string& t) {
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
inline std::string with_fold(std::string m, std::string_view fold) {
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

// "" when both agree (or differ only where documented, counted in `t`), else what differs.
inline std::string compare_request(const std::string& input, const std::vector<std::size_t>& steps,
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
  const Fed b = feed(ref, input, steps, head_then_body, false);
  ++t.cases;
  const bool ok_a = !a.ec, ok_b = !b.ec;
  if (ok_a != ok_b) {
    if (!ok_a && ok_b && has_fold(input)) {
      ++t.fold;
      return {};
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_transfer_encoding && has_bad_coding(input)) {
      ++t.coding;
      return {};
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_chunk_extension &&
        input.find('"') != std::string::npos) {
      ++t.quoted;
      return {};
    }
    return std::string("ours: ") + (ok_a ? "accepted" : a.ec.message()) +
           ", Beast: " + (ok_b ? "accepted" : b.ec.message());
  }
  if (!ok_a) {
    ++t.refused;
    return {};
  }
  ++t.accepted;
  std::string diff;
  auto same = [&](const auto& x, const auto& y, const char* what) {
    if (!(x == y)) diff += std::string(what) + " differs; ";
  };
  same(ours.method(), ref.method, "ours.method()");
  same(ours.target(), origin_form(ref.target), "ours.target()");
  same(fields_of(ours), ref.fields, "fields_of(ours)");
  same(body, ref.body, "body");
  same(a.rest, b.rest, "a.rest");
  same(ours.http_version(), ref.version, "ours.http_version()");
  same(ours.keep_alive(), ref.keep_alive(), "ours.keep_alive()");
  same(ours.chunked(), ref.chunked(), "ours.chunked()");
  same(length_of(ours.content_length()), length_of(ref.content_length()),
       "length_of(ours.content_length())");
  same(ours.has_transfer_encoding(), ref.saw_te, "ours.has_transfer_encoding()");
  same(ours.has_content_length(), ref.saw_cl, "ours.has_content_length()");
  same(ours.transfer_encoding_is_chunked_only(), ref.saw_te && !ref.te_other,
       "ours.transfer_encoding_is_chunked_only()");
  same(ours.host_fields(), ref.hosts, "ours.host_fields()");
  same(ours.expects_continue(), ref.expect_continue, "ours.expects_continue()");
  return diff;
}

inline std::string compare_response(const std::string& input, const std::vector<std::size_t>& steps,
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
  const Fed b = feed(ref, input, steps, head_then_body, false);
  ++t.cases;
  const bool ok_a = !a.ec, ok_b = !b.ec;
  if (ok_a != ok_b) {
    if (!ok_a && ok_b && has_fold(input)) {
      ++t.fold;
      return {};
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_transfer_encoding && has_bad_coding(input)) {
      ++t.coding;
      return {};
    }
    if (!ok_a && ok_b && a.ec == bhttp::error::bad_chunk_extension &&
        input.find('"') != std::string::npos) {
      ++t.quoted;
      return {};
    }
    return std::string("ours: ") + (ok_a ? "accepted" : a.ec.message()) +
           ", Beast: " + (ok_b ? "accepted" : b.ec.message());
  }
  if (!ok_a) {
    ++t.refused;
    return {};
  }
  ++t.accepted;
  std::string diff;
  auto same = [&](const auto& x, const auto& y, const char* what) {
    if (!(x == y)) diff += std::string(what) + " differs; ";
  };
  same(ours.status(), ref.status, "ours.status()");
  same(headers.wire(), ref.wire, "headers.wire()");
  same(sink, ref.body, "sink");
  same(a.rest, b.rest, "a.rest");
  same(ours.keep_alive(), ref.keep_alive(), "ours.keep_alive()");
  same(ours.chunked(), ref.chunked(), "ours.chunked()");
  same(length_of(ours.content_length()), length_of(ref.content_length()),
       "length_of(ours.content_length())");
  same(ours.need_eof(), ref.need_eof(), "ours.need_eof()");
  return diff;
}

}  // namespace bw::http::wire::reference
