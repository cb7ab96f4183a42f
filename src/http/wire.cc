#include "http/wire.h"

#include <boost/beast/http/error.hpp>
#include <boost/beast/http/status.hpp>
#include <charconv>

namespace bw::http::wire {

void RequestParser::headers(std::vector<std::pair<std::string_view, std::string_view>>& out) const {
  out.clear();
  out.reserve(fields_.size() / 2);
  for (std::size_t i = 0; i + 1 < fields_.size(); i += 2) {
    out.emplace_back(slice(fields_[i]), slice(fields_[i + 1]));
  }
}

namespace {

std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

}  // namespace

void RequestParser::on_request_impl(bhttp::verb, sv method, sv target, int version, error_code&) {
  method_ = keep(method);
  version_ = version;
  // RFC 9112 3.2.2: a server must accept the absolute form. Routing only needs the path and
  // query, so "http://host:port/path?q" becomes "/path?q" (and "http://host?q" becomes "/?q").
  std::string_view t = target;
  if (istarts_with(t, "http://") || istarts_with(t, "https://")) {
    absolute_form_ = true;
    const auto rest = t.substr(t.find("://") + 3);
    const auto at = rest.find_first_of("/?#");
    if (at == std::string_view::npos) {
      target_ = keep("/");
    } else if (rest[at] == '/') {
      target_ = keep(rest.substr(at));
    } else {
      target_ = {arena_.size(), 0};
      arena_.push_back('/');
      arena_.append(rest.substr(at));
      target_.second = arena_.size() - target_.first;
    }
    return;
  }
  target_ = keep(target);
}

void RequestParser::on_field_impl(bhttp::field name, sv name_string, sv value, error_code& ec) {
  if (fields_.size() / 2 >= max_fields_) {
    too_many_ = true;
    ec = bhttp::error::header_limit;
    return;
  }
  if (name == bhttp::field::transfer_encoding) {
    // Exactly one field whose value is exactly "chunked"; anything else is reported to the
    // session, which refuses it.
    if (saw_te_ || !iequals(trim_ows(value), "chunked")) te_other_ = true;
    saw_te_ = true;
  }
  if (name == bhttp::field::content_length) {
    // Beast accepts a repeated Content-Length with the same value, and lists such as "5, 5"
    // (RFC 9112 allows either). Bellwether refuses both: one field, one number, so that no
    // intermediary in front of it can have framed the body differently.
    if (saw_cl_ || std::string_view(value).find(',') != std::string_view::npos) {
      ec = bhttp::error::multiple_content_length;
      return;
    }
    saw_cl_ = true;
  }
  if (name == bhttp::field::host) ++hosts_;
  if (name == bhttp::field::expect) {
    // A token list; "100-continue" compared case-insensitively.
    std::string_view v = value;
    while (!v.empty()) {
      auto comma = v.find(',');
      auto tok = v.substr(0, comma);
      while (!tok.empty() && (tok.front() == ' ' || tok.front() == '\t')) tok.remove_prefix(1);
      while (!tok.empty() && (tok.back() == ' ' || tok.back() == '\t')) tok.remove_suffix(1);
      if (iequals(tok, "100-continue")) expect_continue_ = true;
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }
  fields_.push_back(keep(name_string));
  fields_.push_back(keep(value));
}

void RequestParser::on_body_init_impl(const boost::optional<std::uint64_t>& length, error_code&) {
  // The parser has already refused a Content-Length above the body limit.
  if (length) body_.reserve(static_cast<std::size_t>(*length));
}

std::size_t RequestParser::on_body_impl(sv body, error_code&) {
  body_.append(body);
  return body.size();
}

std::size_t RequestParser::on_chunk_body_impl(std::uint64_t, sv body, error_code&) {
  body_.append(body);
  return body.size();
}

std::size_t ResponseParser::take(std::string_view body, error_code& ec) {
  if (!sink_) return body.size();  // nobody reads this body: discard
  if (sink_->size() + body.size() > sink_limit_) {
    overflow_ = true;
    ec = bhttp::error::body_limit;
    return 0;
  }
  sink_->append(body);
  return body.size();
}

namespace {

void append_number(std::string& out, std::uint64_t n) {
  char buf[24];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, n);
  out.append(buf, p);
}

void append_headers(std::string& out, const Headers& headers) {
  if (!headers.may_have_framing()) {  // the usual case: one append
    out.append(headers.wire());
    return;
  }
  for (auto [n, v] : headers.items()) {
    if (is_framing_header(n)) continue;
    out.append(n);
    out.append(": ");
    out.append(v);
    out.append("\r\n");
  }
}

}  // namespace

void append_response_head(std::string& out, int status, std::string_view server_name,
                          const Headers& headers, std::int64_t content_length, bool keep_alive) {
  out.append("HTTP/1.1 ");
  append_number(out, static_cast<std::uint64_t>(status));
  out.push_back(' ');
  auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
  out.append(reason.data(), reason.size());
  out.append("\r\n");
  if (!server_name.empty()) {
    out.append("server: ");
    out.append(server_name);
    out.append("\r\n");
  }
  append_headers(out, headers);
  if (content_length >= 0) {
    out.append("content-length: ");
    append_number(out, static_cast<std::uint64_t>(content_length));
    out.append("\r\n");
  } else {
    out.append("transfer-encoding: chunked\r\n");
  }
  if (!keep_alive) out.append("connection: close\r\n");
  out.append("\r\n");
}

void append_request_head(std::string& out, std::string_view method, std::string_view target,
                         std::string_view host_header, const Headers& headers,
                         std::size_t content_length) {
  out.append(method);
  out.push_back(' ');
  out.append(target);
  out.append(" HTTP/1.1\r\nhost: ");
  out.append(host_header);
  out.append("\r\n");
  append_headers(out, headers);
  out.append("content-length: ");
  append_number(out, content_length);
  out.append("\r\n\r\n");
}

std::size_t chunk_header(char (&buf)[20], std::size_t size) {
  auto [p, ec] = std::to_chars(buf, buf + 16, size, 16);
  *p++ = '\r';
  *p++ = '\n';
  return static_cast<std::size_t>(p - buf);
}

}  // namespace bw::http::wire
