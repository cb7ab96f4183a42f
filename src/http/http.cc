#include "http/http.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cstring>
#include <optional>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bw::http {

namespace {

constexpr std::uint64_t k01 = 0x0101010101010101ULL;
constexpr std::uint64_t k80 = 0x8080808080808080ULL;

// Whether one of the 8 bytes of `x` is `b` (exact as a yes/no: the has-zero-byte test).
inline bool has_byte(std::uint64_t x, unsigned char b) {
  const std::uint64_t y = x ^ (k01 * b);
  return ((y - k01) & ~y & k80) != 0;
}

// A name byte is printable ASCII other than ':' (0x21..0x7e); checked 8 bytes per step.
bool valid_name(std::string_view n) {
  if (n.empty()) return false;
  std::size_t i = 0;
  for (std::uint64_t x; i + 8 <= n.size(); i += 8) {
    std::memcpy(&x, n.data() + i, 8);
    const bool below = ((x - k01 * 0x21) & ~x & k80) != 0;  // a byte < 0x21
    const bool above = (((x + k01) | x) & k80) != 0;        // a byte > 0x7e
    if (below || above || has_byte(x, ':')) return false;
  }
  for (; i < n.size(); ++i) {
    if (!is_header_name_byte(n[i])) return false;
  }
  return true;
}

// Whether one of the 8 bytes of `x` is CR, LF or NUL.
inline bool has_line_break_or_nul(std::uint64_t x) {
  return has_byte(x, '\r') || has_byte(x, '\n') || has_byte(x, '\0');
}

// Values (keys, ids, model names) are checked on every header added: 16 bytes a step, the
// last step overlapping the one before it instead of a byte loop; 8 bytes as two overlapping
// halves, 4 to 7 as two overlapping 4-byte loads.
bool valid_value(std::string_view v) {
  const char* const p = v.data();
  const std::size_t n = v.size();
#if defined(__SSE2__)
  if (n >= 16) {
    auto bad16 = [](const char* q) {
      const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
      const __m128i bad = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('\r')),
                                                    _mm_cmpeq_epi8(x, _mm_set1_epi8('\n'))),
                                       _mm_cmpeq_epi8(x, _mm_setzero_si128()));
      return _mm_movemask_epi8(bad) != 0;
    };
    std::size_t i = 0;
    for (; i + 16 <= n; i += 16) {
      if (bad16(p + i)) return false;
    }
    return i == n || !bad16(p + n - 16);
  }
#endif
  if (n >= 8) {
    for (std::size_t i = 0;; i += 8) {
      std::uint64_t x;
      const std::size_t at = i + 8 <= n ? i : n - 8;
      std::memcpy(&x, p + at, 8);
      if (has_line_break_or_nul(x)) return false;
      if (at + 8 == n) return true;
    }
  }
  if (n >= 4) {
    std::uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    return !has_line_break_or_nul(lo | (std::uint64_t{hi} << 32));
  }
  for (std::size_t i = 0; i < n; ++i) {
    const char c = p[i];
    if (c == '\r' || c == '\n' || c == '\0') return false;
  }
  return true;
}

// "name: value\r\n" appended with one size change.
// A list's first line: room for a few more from the thread's stash of request buffers. Out of
// line, so that append_line stays small enough to be inlined into its callers.
[[gnu::noinline]] void make_room(std::string& wire, std::size_t need) {
  wire = stash::take(std::max<std::size_t>(need, 128));
}

void append_line(std::string& wire, std::string_view name, std::string_view value) {
  const std::size_t at = wire.size();
  const std::size_t need = at + name.size() + value.size() + 4;
  if (at == 0 && wire.capacity() < need) make_room(wire, need);
  wire.resize(need);
  char* p = wire.data() + at;
  std::memcpy(p, name.data(), name.size());
  p += name.size();
  *p++ = ':';
  *p++ = ' ';
  if (!value.empty()) std::memcpy(p, value.data(), value.size());
  p += value.size();
  *p++ = '\r';
  *p = '\n';
}

// Splits the first line of `wire` into name and value; `len` is the whole line with its CRLF.
std::pair<std::string_view, std::string_view> split_line(std::string_view wire, std::size_t& len) {
  const auto eol = wire.find("\r\n");
  len = eol + 2;
  const auto line = wire.substr(0, eol);
  const auto colon = line.find(": ");
  return {line.substr(0, colon), line.substr(colon + 2)};
}

}  // namespace

bool valid_header_value(std::string_view value) {
  return valid_value(value);
}

Headers::Iterator::value_type Headers::Iterator::operator*() const {
  std::size_t len = 0;
  return split_line(rest_, len);
}

Headers::Iterator& Headers::Iterator::operator++() {
  std::size_t len = 0;
  split_line(rest_, len);
  rest_.remove_prefix(len);
  return *this;
}

bool Headers::add(std::string_view name, std::string_view value) {
  if (!valid_name(name) || !valid_value(value)) return false;
  if (!framing_ && is_framing_header(name)) framing_ = true;
  append_line(wire_, name, value);
  return true;
}

bool Headers::add_known(KnownName name, std::string_view value) {
  if (!valid_value(value)) return false;
  if (name.is_framing()) framing_ = true;
  append_line(wire_, name.view(), value);
  return true;
}

void Headers::add_known_valid(KnownName name, std::string_view value) {
  assert(valid_value(value));
  if (name.is_framing()) framing_ = true;
  append_line(wire_, name.view(), value);
}

void Headers::add_parsed(std::string_view name, std::string_view value) {
  if (!framing_ && is_framing_header(name)) framing_ = true;
  append_line(wire_, name, value);
}

void Headers::add_parsed_line(std::string_view line, bool framing) {
  if (framing) framing_ = true;
  if (wire_.empty() && wire_.capacity() < line.size()) make_room(wire_, line.size());
  wire_.append(line);
}

void Headers::set(std::string_view name, std::string_view value) {
  if (!valid_name(name) || !valid_value(value)) return;
  remove(name);
  add(name, value);
}

namespace {

// The value of the first line named `name` (case-insensitive), or nullopt. A field name never
// holds a colon, so a line is a candidate only when ": " follows the name's length: most lines
// are skipped after two byte compares, without splitting them (a lookup runs for every
// provider rate-limit header of every upstream answer).
std::optional<std::string_view> find_value(std::string_view wire, std::string_view name) {
  const std::size_t n = name.size();
  while (!wire.empty()) {
    const auto eol = wire.find("\r\n");
    const auto line = wire.substr(0, eol);
    if (line.size() >= n + 2 && line[n] == ':' && line[n + 1] == ' ' &&
        iequals(line.substr(0, n), name)) {
      return line.substr(n + 2);
    }
    if (eol == std::string_view::npos) break;
    wire.remove_prefix(eol + 2);
  }
  return std::nullopt;
}

}  // namespace

std::string_view Headers::get(std::string_view name) const {
  return find_value(wire_, name).value_or(std::string_view{});
}

bool Headers::has(std::string_view name) const {
  return find_value(wire_, name).has_value();
}

void Headers::remove(std::string_view name) {
  std::size_t pos = 0;
  while (pos < wire_.size()) {
    std::size_t len = 0;
    auto [n, v] = split_line(std::string_view(wire_).substr(pos), len);
    if (iequals(n, name)) {
      wire_.erase(pos, len);
    } else {
      pos += len;
    }
  }
}

std::size_t Headers::size() const {
  std::size_t n = 0;
  for (auto it = items().begin(), end = items().end(); !(it == end); ++it) ++n;
  return n;
}

std::string_view Request::find_header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) return v;
  }
  return {};
}

std::string_view Request::path() const {
  auto q = target.find('?');
  return q == std::string_view::npos ? target : target.substr(0, q);
}

Response Response::json(int status, std::string body) {
  Response r;
  r.status = status;
  r.headers.add("content-type", "application/json");
  r.body = std::move(body);
  return r;
}

std::string_view query_param(std::string_view target, std::string_view name) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    auto amp = query.find('&');
    auto part = query.substr(0, amp);
    if (part.size() > name.size() && part.starts_with(name) && part[name.size()] == '=') {
      return part.substr(name.size() + 1);
    }
    if (amp == std::string_view::npos) break;
    query = query.substr(amp + 1);
  }
  return {};
}

std::int64_t query_int(std::string_view target, std::string_view name, std::int64_t fallback) {
  auto v = query_param(target, name);
  std::int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  return (v.empty() || ec != std::errc{} || p != v.data() + v.size()) ? fallback : out;
}

bool is_hop_by_hop(std::string_view name) {
  static constexpr std::array<std::string_view, 9> kHop = {
      "connection",          "keep-alive", "proxy-authenticate",
      "proxy-authorization", "te",         "trailer",
      "transfer-encoding",   "upgrade",    "proxy-connection"};
  return std::any_of(kHop.begin(), kHop.end(), [&](auto h) { return iequals(h, name); });
}

}  // namespace bw::http
