#pragma once
// HTTP/1.1 wire handling shared by the server and the upstream client, without Beast's message
// containers: the parsers are Beast's basic_parser (the protocol state machine, with its size
// limits and smuggling checks) feeding flat, reusable storage, and the serializers write one
// contiguous head. Nothing here allocates per message once its buffers have grown.
// Internal to src/http (it includes Beast). Thread safety: value types.
#include <boost/beast/http/basic_parser.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http.h"

namespace bw::http::wire {

namespace bhttp = boost::beast::http;
using error_code = boost::system::error_code;
using sv = boost::beast::string_view;  // the parser callbacks' string type

// A request head and body. Header names, values, method and target are kept in one arena
// string; Request's views point into it after the head is complete.
class RequestParser final : public bhttp::basic_parser<true> {
 public:
  // `arena`, `fields` and `body` belong to the session and are reused from request to request.
  RequestParser(std::string& arena, std::vector<std::pair<std::size_t, std::size_t>>& fields,
                std::string& body, std::size_t max_fields)
      : arena_(arena), fields_(fields), body_(body), max_fields_(max_fields) {
    arena_.clear();
    fields_.clear();
    body_.clear();
  }

  std::string_view method() const { return slice(method_); }
  std::string_view target() const { return slice(target_); }
  // Fills `out` with views into the arena (valid until the next parser on the same arena).
  void headers(std::vector<std::pair<std::string_view, std::string_view>>& out) const;
  bool has_transfer_encoding() const { return saw_te_; }
  bool has_content_length() const { return saw_cl_; }
  // True when every Transfer-Encoding field there was is exactly "chunked" (one field, one
  // coding): a request with any other coding, or a list such as "gzip, chunked", is refused
  // since an intermediary could frame its body differently.
  bool transfer_encoding_is_chunked_only() const { return saw_te_ && !te_other_; }
  // Number of Host fields (HTTP/1.1 needs exactly one).
  int host_fields() const { return hosts_; }
  int http_version() const { return version_; }  // 10 or 11
  // An absolute-form target ("http://host/path") was rewritten to origin form ("/path").
  bool absolute_form() const { return absolute_form_; }
  bool expects_continue() const { return expect_continue_; }
  bool too_many_fields() const { return too_many_; }

 private:
  using Span = std::pair<std::size_t, std::size_t>;
  std::string_view slice(Span s) const {
    return std::string_view(arena_).substr(s.first, s.second);
  }
  Span keep(std::string_view s) {
    Span out{arena_.size(), s.size()};
    arena_.append(s);
    return out;
  }

  void on_request_impl(bhttp::verb, sv method, sv target, int, error_code&) override;
  void on_response_impl(int, sv, int, error_code&) override {}
  void on_field_impl(bhttp::field name, sv name_string, sv value, error_code& ec) override;
  void on_header_impl(error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>& length, error_code&) override;
  std::size_t on_body_impl(sv body, error_code&) override;
  void on_chunk_header_impl(std::uint64_t, sv, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, sv body, error_code&) override;
  void on_finish_impl(error_code&) override {}

  std::string& arena_;
  std::vector<Span>& fields_;  // name span, value span: two entries per field
  std::string& body_;
  std::size_t max_fields_;
  Span method_{0, 0};
  Span target_{0, 0};
  bool saw_te_ = false;
  bool te_other_ = false;
  bool saw_cl_ = false;
  bool absolute_form_ = false;
  int hosts_ = 0;
  int version_ = 11;
  bool expect_continue_ = false;
  bool too_many_ = false;
};

// A response head into Headers; the body is handed to a sink piece by piece.
class ResponseParser final : public bhttp::basic_parser<false> {
 public:
  // `headers` is cleared and filled; body bytes are appended to *sink (set_sink) up to `limit`.
  explicit ResponseParser(Headers& headers) : headers_(headers) { headers_.clear(); }

  int status() const { return status_; }
  // The first Content-Type / Retry-After value (views into the Headers; empty if absent).
  std::string_view content_type() const { return view(content_type_); }
  std::string_view retry_after() const { return view(retry_after_); }
  void set_sink(std::string* sink, std::size_t limit) {
    sink_ = sink;
    sink_limit_ = limit;
  }
  bool sink_overflowed() const { return overflow_; }

 private:
  void on_request_impl(bhttp::verb, sv, sv, int, error_code&) override {}
  void on_response_impl(int code, sv, int, error_code&) override { status_ = code; }
  void on_field_impl(bhttp::field f, sv name, sv value, error_code&) override {
    const std::size_t at = headers_.wire().size() + name.size() + 2;  // where the value lands
    headers_.add_parsed(name, value);  // basic_parser has validated name and value
    if (f == bhttp::field::content_type && content_type_.second == 0) {
      content_type_ = {at, value.size()};
    } else if (f == bhttp::field::retry_after && retry_after_.second == 0) {
      retry_after_ = {at, value.size()};
    }
  }
  std::string_view view(std::pair<std::size_t, std::size_t> s) const {
    return s.second == 0 ? std::string_view{} : headers_.wire().substr(s.first, s.second);
  }
  void on_header_impl(error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(sv body, error_code& ec) override { return take(body, ec); }
  void on_chunk_header_impl(std::uint64_t, sv, error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, sv body, error_code& ec) override {
    return take(body, ec);
  }
  void on_finish_impl(error_code&) override {}
  std::size_t take(std::string_view body, error_code& ec);

  Headers& headers_;
  std::pair<std::size_t, std::size_t> content_type_{0, 0};
  std::pair<std::size_t, std::size_t> retry_after_{0, 0};
  std::string* sink_ = nullptr;
  std::size_t sink_limit_ = 0;
  int status_ = 0;
  bool overflow_ = false;
};

// "HTTP/1.1 200 OK\r\nserver: NAME\r\n" + headers (without content-length, transfer-encoding and
// connection, which the serializer owns) + the framing lines; the caller appends the body.
// `content_length` < 0 means chunked.
void append_response_head(std::string& out, int status, std::string_view server_name,
                          const Headers& headers, std::int64_t content_length, bool keep_alive);

// "POST /path HTTP/1.1\r\nhost: ...\r\n" + headers + content-length + blank line.
void append_request_head(std::string& out, std::string_view method, std::string_view target,
                         std::string_view host_header, const Headers& headers,
                         std::size_t content_length);

// "<hex size>\r\n" for a chunk of `size` bytes, written into `buf`; returns its length.
std::size_t chunk_header(char (&buf)[20], std::size_t size);

}  // namespace bw::http::wire
