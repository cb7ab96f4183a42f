#pragma once
// HTTP/1.1 wire handling shared by the server and the upstream client, without Beast's message
// containers: our own parsers (request and response heads, Content-Length, chunked and
// read-until-close bodies, with size limits and smuggling checks) feed flat, reusable storage,
// and the serializers write one contiguous head. Nothing here allocates per message once its
// buffers have grown. What the parsers accept and refuse: docs/security.md.
// Internal to src/http. Errors are Beast's http::error codes, which the callers map to answers.
// Thread safety: value types.
#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/optional.hpp>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http.h"

namespace bw::http::wire {

namespace bhttp = boost::beast::http;
using error_code = boost::system::error_code;

// The header fields the parsers act on, recognised once per field (by length and first byte).
enum class Field : std::uint8_t {
  kOther,
  kAuthorization,
  kConnection,
  kContentLength,
  kContentType,
  kExpect,
  kHost,
  kProxyConnection,
  kRetryAfter,
  kTransferEncoding,
  kUpgrade,
};
Field classify_field(std::string_view name);

// The protocol state machine of one HTTP/1.1 message (RFC 9112), driven like Beast's
// basic_parser: put() takes what is buffered and returns how many bytes it used (the caller
// consumes them and keeps the rest for the next put or the next message); need_more means a
// line or a chunk header is not complete yet. The head is consumed line by line as lines
// complete, so a head that arrives in pieces is never scanned twice. `Derived` receives the
// start line, each field and the body bytes.
template <class Derived, bool kRequest>
class BasicParser {
 public:
  void header_limit(std::uint32_t v) { header_limit_ = v; }
  void body_limit(boost::optional<std::uint64_t> v) {
    has_body_limit_ = v.has_value();
    body_limit_ = v.value_or(0);
  }
  // Eager: put() goes on into the body in the same call. Not eager: put() stops once the head
  // is complete (the body bytes stay with the caller).
  void eager(bool v) { eager_ = v; }
  bool eager() const { return eager_; }
  bool got_some() const { return state_ != State::kNothingYet; }
  bool is_header_done() const { return state_ >= State::kBody; }
  bool is_done() const { return state_ == State::kComplete; }
  bool chunked() const { return (flags_ & kChunked) != 0; }
  bool need_eof() const { return (flags_ & kNeedEof) != 0; }
  boost::optional<std::uint64_t> content_length() const {
    if (!(flags_ & kContentLength)) return boost::none;
    return content_length_;
  }
  // RFC 9112 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive"; a body
  // delimited by the close of the connection never persists.
  bool keep_alive() const {
    if (flags_ & kNeedEof) return false;
    if (flags_ & kHttp11) return !(flags_ & kConnClose);
    return (flags_ & kConnKeepAlive) != 0;
  }

  std::size_t put(boost::asio::const_buffer buffer, error_code& ec);
  // The peer closed: completes a body delimited by the close, else partial_message.
  void put_eof(error_code& ec);

 protected:
  BasicParser() = default;
  // While put() takes well-formed field lines one after another (its fast loop): where the
  // lines begin that it has taken and the derived parser has not copied yet (they are copied
  // with one copy_run(run_, end) when the loop ends); null otherwise (each line is copied by
  // on_field). on_field accounts for a pending line as if the lines before it were copied.
  const char* run_ = nullptr;
  // Copies the pending lines, those before `to`, and ends the run.
  void end_run(const char* to) {
    if (run_ && to != run_) self().copy_run(run_, to);
    run_ = nullptr;
  }

 private:
  enum class State : std::uint8_t {
    kNothingYet,
    kStartLine,
    kFields,
    kBody,  // Content-Length
    kBodyToEof,
    kChunkHeader,
    kChunkBody,
    kComplete,
  };
  enum Flag : std::uint16_t {
    kHttp11 = 1,
    kContentLength = 2,
    kChunked = 4,
    kNeedEof = 8,
    kConnClose = 16,
    kConnKeepAlive = 32,
    kExpectCrlf = 64,  // a chunk's data was read; its CRLF comes before the next chunk-size
  };

  Derived& self() { return static_cast<Derived&>(*this); }
  // One complete line [p, eol) (eol points at its LF).
  void start_line(const char* p, const char* eol, error_code& ec);
  void field_line(const char* p, const char* eol, bool trailer, error_code& ec);
  // A field line whose end is not known yet, all of it before `limit`: parsed as field_line
  // would, returning its LF, when it is a well-formed line; nullptr (nothing done) otherwise.
  // Inline into put()'s loop of usual lines, its only caller.
  [[gnu::always_inline]] inline const char* fast_line(const char* p, const char* limit,
                                                      error_code& ec);
  // The start line read the same way, without a search for its end first: parsed as
  // start_line would, returning its LF, when it is a well-formed line within `limit`; nullptr
  // (nothing done) otherwise.
  const char* fast_start_line(const char* p, const char* limit);
  // A checked field line: its name, its value's first byte `v` and the CR `stop` after it.
  // Inline into its two callers: the call, with its seven arguments, cost about as much as
  // the work of a usual line.
  [[gnu::always_inline]] inline void field(const char* p, const char* eol, std::string_view name,
                                           const char* v, const char* stop, bool trailer,
                                           error_code& ec);
  void framing_field(Field f, std::string_view value, error_code& ec);
  void finish_head(error_code& ec);
  // A chunk-size line (and, for the last chunk, the trailer section); returns the bytes used,
  // 0 with need_more when incomplete.
  std::size_t chunk_header(const char* p, const char* end, error_code& ec);

  std::uint64_t content_length_ = 0;
  std::uint64_t remaining_ = 0;  // of the Content-Length body or of the current chunk
  std::uint64_t body_limit_ = kRequest ? 1024 * 1024 : 8 * 1024 * 1024;
  std::size_t head_bytes_ = 0;  // consumed so far, bounded by header_limit_
  std::size_t scanned_ = 0;     // bytes of the pending line known to hold no line end
  std::uint32_t header_limit_ = 8 * 1024;
  std::uint16_t flags_ = 0;
  State state_ = State::kNothingYet;
  bool has_body_limit_ = true;
  bool eager_ = false;
  bool any_field_ = false;
};

// A request head and body. Header names, values, method and target are kept in one arena
// string; Request's views point into it after the head is complete.
class RequestParser final : public BasicParser<RequestParser, true> {
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
  // header_name_bit() of every field name so far (Request::header_names).
  std::uint64_t header_names() const { return names_; }
  // The index among headers() of the first Authorization field; the number of fields when
  // there is none (Request::authorization_at).
  std::size_t authorization_at() const {
    return authorization_ ? authorization_ - 1 : fields_.size() / 2;
  }
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
  // A body of known length that one put() holds whole is referred to by `body` where it is (in
  // the caller's buffer, which must then stay as it is while the body is read) instead of
  // being copied into the body string; any other body is copied as before.
  void in_place(Body* body) { in_place_ = body; }

 private:
  friend class BasicParser<RequestParser, true>;
  using Span = std::pair<std::size_t, std::size_t>;
  std::string_view slice(Span s) const {
    return std::string_view(arena_).substr(s.first, s.second);
  }
  Span keep(std::string_view s) {
    Span out{arena_.size(), s.size()};
    arena_.append(s);
    return out;
  }

  void on_request(std::string_view method, std::string_view target, int version);
  void on_status(int, int) {}
  // `line` is the whole field line with its CRLF; name and value are views into it. Inline into
  // the parser's field() (defined with it in wire.cc, its only caller).
  [[gnu::always_inline]] inline void on_field(Field f, std::string_view name,
                                              std::string_view value, std::string_view line,
                                              error_code& ec);
  void copy_run(const char* from, const char* to) {
    arena_.append(from, static_cast<std::size_t>(to - from));
  }
  // A body of known length gets a buffer of the thread's stash (common/buffer_stash.h), unless
  // it is left where it was read (in_place).
  void on_body_init(std::uint64_t length) {
    if (!in_place_) make_room(length);
  }
  std::size_t on_body(std::string_view body, error_code&) {
    if (in_place_ && body_.empty()) {
      const auto length = content_length();
      if (length && body.size() == *length) {
        in_place_->refer(body);
        return body.size();
      }
      if (length) make_room(*length);
    }
    body_.append(body);
    return body.size();
  }
  void make_room(std::uint64_t length) {
    const auto n = static_cast<std::size_t>(length);
    stash::room(body_, n);
    body_.reserve(n);
  }

  std::string& arena_;
  std::vector<Span>& fields_;  // name span, value span: two entries per field
  std::string& body_;
  Body* in_place_ = nullptr;
  std::size_t max_fields_;
  Span method_{0, 0};
  Span target_{0, 0};
  std::uint64_t names_ = 0;
  std::size_t authorization_ = 0;  // 1 + the index of the first Authorization field; 0: none
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
class ResponseParser final : public BasicParser<ResponseParser, false> {
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
  // In place, in place of a sink: the body's bytes are left where put() found them, in the
  // caller's buffer, and in_place_body() is one view of every body byte since the last
  // in_place(true). Bytes that follow chunk framing are moved down over the framing, right
  // after the bytes before it, so that the chunks of one read make one contiguous view: put()
  // then writes the caller's buffer, which must be writable, and must not move nor be written
  // by the caller while the view is used (the bytes after the view, not yet consumed, stay as
  // they are). No sink limit applies; the parser's body limit does. in_place(false) goes back
  // to the sink.
  void in_place(bool on) {
    in_place_ = on;
    place_ = nullptr;
    place_size_ = 0;
  }
  std::string_view in_place_body() const { return {place_, place_size_}; }

 private:
  friend class BasicParser<ResponseParser, false>;
  void on_request(std::string_view, std::string_view, int) {}
  void on_status(int code, int) { status_ = code; }
  void on_field(Field f, std::string_view name, std::string_view value, std::string_view line,
                error_code&) {
    // The parser has validated name and value. A line already in the list's form ("name:
    // value" with one space, no trailing whitespace) is copied as it is, with the lines of its
    // run when it has one; any other line is written in that form, after the run so far.
    const bool framing =
        f == Field::kContentLength || f == Field::kTransferEncoding || f == Field::kConnection;
    const bool as_is = value.data() == name.data() + name.size() + 2 &&
                       name.data()[name.size() + 1] == ' ' &&
                       value.data() + value.size() + 2 == line.data() + line.size();
    std::size_t at = headers_.wire().size() + name.size() + 2;  // where the value lands
    if (run_ && as_is) {
      at += static_cast<std::size_t>(line.data() - run_);
      run_framing_ = run_framing_ || framing;
    } else if (run_) {
      end_run(line.data());
      at = headers_.wire().size() + name.size() + 2;
      headers_.add_parsed(name, value);
      run_ = line.data() + line.size();
    } else if (as_is) {
      headers_.add_parsed_line(line, framing);
    } else {
      headers_.add_parsed(name, value);
    }
    if (f == Field::kContentType && content_type_.second == 0) {
      content_type_ = {at, value.size()};
    } else if (f == Field::kRetryAfter && retry_after_.second == 0) {
      retry_after_ = {at, value.size()};
    }
  }
  std::string_view view(std::pair<std::size_t, std::size_t> s) const {
    return s.second == 0 ? std::string_view{} : headers_.wire().substr(s.first, s.second);
  }
  void on_body_init(std::uint64_t) {}
  std::size_t on_body(std::string_view body, error_code& ec);
  void copy_run(const char* from, const char* to) {
    headers_.add_parsed_line(std::string_view(from, static_cast<std::size_t>(to - from)),
                             run_framing_);
    run_framing_ = false;
  }

  Headers& headers_;
  std::pair<std::size_t, std::size_t> content_type_{0, 0};
  std::pair<std::size_t, std::size_t> retry_after_{0, 0};
  std::string* sink_ = nullptr;
  std::size_t sink_limit_ = 0;
  char* place_ = nullptr;
  std::size_t place_size_ = 0;
  int status_ = 0;
  bool overflow_ = false;
  bool in_place_ = false;
  bool run_framing_ = false;  // a pending line of the run is a framing header
};

extern template class BasicParser<RequestParser, true>;
extern template class BasicParser<ResponseParser, false>;

// "HTTP/1.1 200 OK\r\nserver: NAME\r\n" + headers (without content-length, transfer-encoding and
// connection, which the serializer owns) + the framing lines; the caller appends the body.
// `content_length` < 0 means chunked.
void append_response_head(std::string& out, int status, std::string_view server_name,
                          const Headers& headers, std::int64_t content_length, bool keep_alive);

// The same head with its header lines given in pieces instead of a Headers list, written with
// one size change: the pieces joined are whole "name: value\r\n" lines that Headers::add would
// accept, none of them a framing header.
void append_response_head(std::string& out, int status, std::string_view server_name,
                          std::span<const std::string_view> lines, std::int64_t content_length,
                          bool keep_alive);

// "POST /path HTTP/1.1\r\nhost: ...\r\n" + headers + content-length + blank line.
void append_request_head(std::string& out, std::string_view method, std::string_view target,
                         std::string_view host_header, const Headers& headers,
                         std::size_t content_length);
// The same with header lines in pieces before the list's (as append_response_head's `lines`).
void append_request_head(std::string& out, std::string_view method, std::string_view target,
                         std::string_view host_header, std::span<const std::string_view> lines,
                         const Headers& headers, std::size_t content_length);

// "<hex size>\r\n" for a chunk of `size` bytes, written into `buf`; returns its length.
std::size_t chunk_header(char (&buf)[20], std::size_t size);

}  // namespace bw::http::wire
