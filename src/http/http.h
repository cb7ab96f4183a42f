#pragma once
// Plain HTTP message types shared by the server, the upstream client and the gateway. They keep
// Boost.Beast out of every header above src/http/. Header names compare case-insensitively.
// Thread safety: value types.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/buffer_stash.h"

namespace bw::http {

constexpr char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

// The 8 bytes of x with 'A'..'Z' made lower case: a byte below 0x80 is upper case when its
// sum with 0x3f carries into bit 7 ('A' and up) and its sum with 0x25 does not ('Z' and down).
inline std::uint64_t ascii_lower8(std::uint64_t x) {
  constexpr std::uint64_t k7f = 0x7f7f7f7f7f7f7f7fULL;
  constexpr std::uint64_t k80 = 0x8080808080808080ULL;
  const std::uint64_t h = x & k7f;
  const std::uint64_t upper = (h + 0x3f3f3f3f3f3f3f3fULL) & ~(h + 0x2525252525252525ULL) & ~x & k80;
  return x | (upper >> 2);
}

// iequals of two runs of n >= 8 bytes, 8 at a time (the last step overlaps the one before).
inline bool iequals_words(const char* a, const char* b, std::size_t n) {
  for (std::size_t i = 0;; i += 8) {
    const std::size_t at = i + 8 <= n ? i : n - 8;
    std::uint64_t x, y;
    std::memcpy(&x, a + at, 8);
    std::memcpy(&y, b + at, 8);
    if (x != y && ascii_lower8(x) != ascii_lower8(y)) return false;
    if (at + 8 == n) return true;
  }
}

constexpr bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  if (!std::is_constant_evaluated() && a.size() >= 8) {
    return iequals_words(a.data(), b.data(), a.size());
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

// A byte a header name may hold: printable ASCII other than ':' (0x21..0x7e).
constexpr bool is_header_name_byte(char c) {
  return c > 0x20 && c != ':' && c != 0x7f;
}

// One bit of 64 for a header name, from its length and its first and last bytes, the same for
// every spelling of the name that compares equal (ASCII case folded: c | 0x20 maps each
// upper-case letter onto its lower-case one). The bits of a request's names answer most
// lookups of an absent header without comparing any name (Request::header_names).
constexpr std::uint64_t header_name_bit(std::string_view n) {
  if (n.empty()) return 1;
  const unsigned h = static_cast<unsigned>(n.size()) * 7u +
                     static_cast<unsigned>(static_cast<unsigned char>(n.front()) | 0x20u) * 3u +
                     (static_cast<unsigned char>(n.back()) | 0x20u);
  return std::uint64_t{1} << (h & 63u);
}

// content-length, transfer-encoding and connection: message framing that the serializer owns.
constexpr bool is_framing_header(std::string_view name) {
  return iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
         iequals(name, "connection");
}

// Whether Headers would accept `value` (no CR, LF or NUL).
bool valid_header_value(std::string_view value);

// A header name written in the source, checked when it is compiled (a name with a ':', a space
// or a control character does not compile), with whether it is a framing header. Adding one
// (Headers::add_known) skips the run-time name check; the value is still checked.
class KnownName {
 public:
  template <std::size_t N>
  consteval KnownName(const char (&name)[N])  // NOLINT: implicit by design
      : name_(name, N - 1), framing_(is_framing_header(name_)) {
    if (name_.empty()) throw "not a valid header name";
    for (char c : name_) {
      if (!is_header_name_byte(c)) throw "not a valid header name";
    }
  }
  std::string_view view() const { return name_; }
  bool is_framing() const { return framing_; }

 private:
  std::string_view name_;
  bool framing_;
};

// A header list that owns its bytes, kept in wire format ("name: value\r\n" per header) so that
// serialising it is one copy and adding a header is an append (no allocation per header).
// A name or value that contains CR, LF or NUL is refused (dropped), so a header can never inject
// another line; names must be non-empty and contain no ':' or whitespace.
class Headers {
 public:
  class Iterator {
   public:
    using value_type = std::pair<std::string_view, std::string_view>;
    Iterator(std::string_view rest) : rest_(rest) {}
    value_type operator*() const;
    Iterator& operator++();
    bool operator==(const Iterator& o) const { return rest_.data() == o.rest_.data(); }

   private:
    std::string_view rest_;
  };
  struct Range {
    std::string_view wire;
    Iterator begin() const { return Iterator(wire); }
    Iterator end() const { return Iterator(wire.substr(wire.size())); }
  };

  Headers() = default;
  Headers(const Headers&) = default;
  Headers(Headers&&) noexcept = default;
  Headers& operator=(const Headers&) = default;
  Headers& operator=(Headers&&) noexcept = default;
  // The buffer goes back to the thread's stash (common/buffer_stash.h) for the next request.
  ~Headers() { stash::give(wire_); }

  // Appends a header (a repeated name is kept twice). Returns false if it was refused.
  bool add(std::string_view name, std::string_view value);
  // add() of a name checked at compile time: only the value is checked.
  bool add_known(KnownName name, std::string_view value);
  // add_known() of a value the caller knows to hold no CR, LF or NUL (a literal, a value an HTTP
  // parser has validated, an id whose bytes were checked when it was made): no byte check.
  void add_known_valid(KnownName name, std::string_view value);
  // add() without the byte checks, for a field an HTTP parser has already validated (token
  // name, no CR/LF/NUL in the value).
  void add_parsed(std::string_view name, std::string_view value);
  // add_parsed() of field lines that are already in this list's form: "name: value\r\n" with
  // one space after the colon (a parser's lines, validated), one or several. `framing`: a name
  // is one of is_framing_header's.
  void add_parsed_line(std::string_view line, bool framing);
  // Replaces every header of this name with one (or adds it).
  void set(std::string_view name, std::string_view value);
  std::string_view get(std::string_view name) const;  // the first value; empty if absent
  bool has(std::string_view name) const;
  void remove(std::string_view name);
  // Appends every header of `other`.
  void append(const Headers& other) {
    wire_.append(other.wire_);
    framing_ = framing_ || other.framing_;
  }
  // Direct access for producers of already-valid "name: value\r\n" lines (e.g. the limiter's
  // header formatter); the caller guarantees the format and adds no framing header.
  std::string& raw() { return wire_; }
  // Whether a content-length, transfer-encoding or connection header may be present (these
  // belong to the serializer, which drops them from a list that has them).
  bool may_have_framing() const { return framing_; }
  Range items() const { return Range{wire_}; }
  std::size_t size() const;
  bool empty() const { return wire_.empty(); }
  void clear() {
    wire_.clear();
    framing_ = false;
  }
  // clear() that also gives the buffer back to the thread's stash.
  void release() {
    stash::release(wire_);
    framing_ = false;
  }
  void reserve(std::size_t bytes) {
    if (wire_.capacity() >= bytes) return;
    if (wire_.empty()) {
      wire_ = stash::take(bytes);
    } else {
      wire_.reserve(bytes);
    }
  }
  // "name: value\r\n" for every header, in order.
  std::string_view wire() const { return wire_; }

 private:
  std::string wire_;
  bool framing_ = false;
};

// A request's body: a string of its own, or the bytes where the server read them. A body of
// known length that arrived whole with its head is not copied out of the connection's read
// buffer: at a few hundred requests in flight per worker the copy's destination was cold (about
// a dozen cache lines written per request) while the bytes the kernel had just written were not.
// Read it as a string_view; assigning a string makes it the body's own.
class Body {
 public:
  Body() = default;
  Body(std::string s) noexcept : own_(std::move(s)) {}  // NOLINT: a string is a body
  Body& operator=(std::string s) noexcept {
    own_ = std::move(s);
    at_ = nullptr;
    return *this;
  }
  Body(const Body& o) : own_(o.view()) {}  // a copy owns its bytes
  Body& operator=(const Body& o) {
    if (this != &o) *this = std::string(o.view());
    return *this;
  }
  Body(Body&&) noexcept = default;
  Body& operator=(Body&&) noexcept = default;

  std::string_view view() const { return at_ ? std::string_view(at_, size_) : own_; }
  operator std::string_view() const { return view(); }  // NOLINT: read as a string_view
  const char* data() const { return view().data(); }
  std::size_t size() const { return at_ ? size_ : own_.size(); }
  bool empty() const { return size() == 0; }
  friend bool operator==(const Body& a, std::string_view b) { return a.view() == b; }

  // The server's side. The string a parser appends to (the body is its own again).
  std::string& own() {
    at_ = nullptr;
    return own_;
  }
  // The body is `bytes`, which the caller keeps valid while the body is read.
  void refer(std::string_view bytes) {
    at_ = bytes.data();
    size_ = bytes.size();
  }
  bool referring() const { return at_ != nullptr; }

 private:
  std::string own_;
  const char* at_ = nullptr;  // non-null: the body is [at_, at_ + size_), not own_
  std::size_t size_ = 0;
};

// A request as received by the server. Header views point into storage owned by the session and
// stay valid until the handler returns, as does the body when it refers to the session's buffer.
struct Request {
  std::string_view method;
  std::string_view target;  // path and query, as sent
  std::vector<std::pair<std::string_view, std::string_view>> headers;
  Body body;
  std::string peer_ip;
  bool keep_alive = true;
  // header_name_bit() of every name in `headers`, trusted while headers.size() equals
  // header_names_count (the server sets both after the parse; a Request built or changed
  // elsewhere is searched name by name).
  std::uint64_t header_names = 0;
  std::size_t header_names_count = static_cast<std::size_t>(-1);
  // The index in `headers` of the first Authorization field (headers.size() when there is
  // none), trusted as header_names is: read by every authenticated request.
  std::size_t authorization_at = 0;

  // The first value of header `name` (case-insensitive), empty if absent.
  std::string_view header(std::string_view name) const {
    if (header_names_count == headers.size() && !(header_names & header_name_bit(name))) return {};
    return find_header(name);
  }
  // header("authorization"), without a search when the index is trusted.
  std::string_view authorization() const {
    if (header_names_count != headers.size()) return find_header("authorization");
    return authorization_at < headers.size() ? headers[authorization_at].second
                                             : std::string_view{};
  }
  std::string_view path() const;  // target without the query

 private:
  std::string_view find_header(std::string_view name) const;
};

struct Response {
  Response() = default;
  Response(const Response&) = default;
  Response(Response&&) noexcept = default;
  Response& operator=(const Response&) = default;
  Response& operator=(Response&&) noexcept = default;
  ~Response() { stash::give(body); }

  int status = 200;
  Headers headers;
  std::string body;
  // Convenience for JSON answers.
  static Response json(int status, std::string body);
};

// The raw value of query parameter `name` in a request target ("" if absent; no decoding).
std::string_view query_param(std::string_view target, std::string_view name);
// The same as an integer, or `fallback` when absent or not a number.
std::int64_t query_int(std::string_view target, std::string_view name, std::int64_t fallback);

// Hop-by-hop headers (RFC 9110 7.6.1) that a proxy must not forward.
bool is_hop_by_hop(std::string_view name);

}  // namespace bw::http
