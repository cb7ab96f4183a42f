#include "http/wire.h"

#include <algorithm>
#include <boost/beast/http/status.hpp>
#include <cassert>
#include <charconv>
#include <cstring>
#include <limits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bw::http::wire {

namespace {

// tchar (RFC 9110 5.6.2): field names and methods.
constexpr bool kTokenChar[256] = {
    // clang-format off
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,1,0,1,1,1,1,1,0,0,1,1,0,1,1,0, 1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,
    0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,0,0,0,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,0,1,0,1,0,
    // clang-format on
};
inline bool is_token(char c) {
  return kTokenChar[static_cast<unsigned char>(c)];
}

// The end of the run of tchars that starts at p, at most `end`. Letters, digits and '-' (the
// bytes of nearly every field name) are passed 16 at a time; the first other byte, and
// anything within 16 bytes of `end`, go through the table one by one.
const char* token_end(const char* p, const char* end) {
#if defined(__SSE2__)
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i l = _mm_sub_epi8(_mm_or_si128(v, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
    const __m128i letter = _mm_cmpeq_epi8(_mm_min_epu8(l, _mm_set1_epi8(25)), l);
    const __m128i d = _mm_sub_epi8(v, _mm_set1_epi8('0'));
    const __m128i digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
    const __m128i dash = _mm_cmpeq_epi8(v, _mm_set1_epi8('-'));
    const unsigned plain =
        static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(letter, digit), dash)));
    if (plain != 0xffff) {
      p += __builtin_ctz(~plain);
      break;
    }
    p += 16;
  }
#endif
  while (p < end && is_token(*p)) ++p;
  return p;
}

#if defined(__SSE2__)
// The bytes of 16 that may not appear in a field value: a control character other than HTAB,
// or DEL, as a movemask.
inline unsigned value_stops16(const char* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);  // v <= 0x1f
  const __m128i bad = _mm_or_si128(_mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x09)), ctl),
                                   _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)));
  return static_cast<unsigned>(_mm_movemask_epi8(bad));
}
#endif

// The first byte that may not appear in a field value or reason phrase: a control character
// other than HTAB (this includes CR, LF and NUL), or DEL. obs-text (0x80-0xFF) is allowed.
// 16 bytes a step. `floor` <= p: the bytes in [floor, p) are known to hold no such byte (the
// field name, its colon and whitespace, or the status line's start), so that the last step may
// be one 16-byte load that ends at `end` and starts before p, instead of a byte loop.
[[gnu::always_inline]] inline const char* value_stop(const char* p, const char* end,
                                                     const char* floor) {
#if defined(__SSE2__)
  while (end - p >= 16) {
    if (const unsigned m = value_stops16(p)) return p + __builtin_ctz(m);
    p += 16;
  }
  if (p < end && end - floor >= 16) {
    const char* const q = end - 16;
    // Every byte of [q, p) was checked above or lies in [floor, p): a stop is at p or after.
    if (const unsigned m = value_stops16(q)) return q + __builtin_ctz(m);
    return end;
  }
#else
  (void)floor;
#endif
  for (; p < end; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    if ((c < 0x20 && c != 0x09) || c == 0x7f) return p;
  }
  return end;
}

// value_stop out of line, for the start line and the general path: fast_line, which reads
// nearly every field line, has it inline (inline everywhere, the parsers took more instructions).
const char* find_value_stop(const char* p, const char* end, const char* floor) {
  return value_stop(p, end, floor);
}

// The end of a request-target: SP, a control character or DEL (obs-text is allowed, as Beast
// did).
// `floor` <= p starts readable bytes (the request line's start): the last step may be one
// 16-byte load that ends at `end` and starts before p, instead of a byte loop.
const char* find_target_stop(const char* p, const char* end, const char* floor) {
#if defined(__SSE2__)
  const __m128i k20 = _mm_set1_epi8(0x20);
  const __m128i kdel = _mm_set1_epi8(0x7f);
  auto stops16 = [&](const char* at) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
    const __m128i bad =
        _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, k20), v), _mm_cmpeq_epi8(v, kdel));
    return static_cast<unsigned>(_mm_movemask_epi8(bad));
  };
  while (end - p >= 16) {
    if (const unsigned m = stops16(p)) return p + __builtin_ctz(m);
    p += 16;
  }
  if (p < end && end - floor >= 16) {
    const char* const q = end - 16;
    // [q, p) may hold stops (the method's space): only those at p or after count.
    if (const unsigned m = stops16(q) >> (p - q)) return p + __builtin_ctz(m);
    return end;
  }
#else
  (void)floor;
#endif
  for (; p < end; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    if (c <= 0x20 || c == 0x7f) return p;
  }
  return end;
}

// `s` equals the lower-case `lower`, ignoring ASCII case. Only for names already checked to be
// tokens: among tchars, c | 0x20 maps only letters onto letters and '-' onto itself. From 4 bytes
// on, it compares whole words.
[[gnu::always_inline]] inline bool name_is(std::string_view s, std::string_view lower) {
  if (s.size() != lower.size()) return false;
  if (s.size() >= 8) {  // the same compare, 8 bytes a step (the last one overlapping)
    const std::size_t n = s.size();
    for (std::size_t i = 0;; i += 8) {
      const std::size_t at = i + 8 <= n ? i : n - 8;
      std::uint64_t x, y;
      std::memcpy(&x, s.data() + at, 8);
      std::memcpy(&y, lower.data() + at, 8);
      if ((x | 0x2020202020202020ULL) != y) return false;
      if (at + 8 == n) return true;
    }
  }
  if (s.size() >= 4) {  // 4-7 bytes: the first 4 and the last 4 (overlapping)
    const std::size_t n = s.size();
    std::uint32_t x0, y0, x1, y1;
    std::memcpy(&x0, s.data(), 4);
    std::memcpy(&y0, lower.data(), 4);
    std::memcpy(&x1, s.data() + n - 4, 4);
    std::memcpy(&y1, lower.data() + n - 4, 4);
    return ((x0 | 0x20202020U) == y0) & ((x1 | 0x20202020U) == y1);
  }
  for (std::size_t i = 0; i < s.size(); ++i) {
    if ((s[i] | 0x20) != lower[i]) return false;
  }
  return true;
}

std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Calls f(element) for each element of a comma-separated list, OWS-trimmed (empty ones too).
template <class F>
void for_each_element(std::string_view v, F&& f) {
  for (;;) {
    const auto comma = v.find(',');
    f(trim_ows(v.substr(0, comma)));
    if (comma == std::string_view::npos) return;
    v.remove_prefix(comma + 1);
  }
}

bool is_token_string(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!is_token(c)) return false;
  }
  return true;
}

// 1*DIGIT without overflow.
bool parse_decimal(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}

int unhex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ) (RFC 9112 7.1.1),
// with chunk-ext-val = token / quoted-string. True if [p, end) is exactly that.
bool valid_chunk_extensions(const char* p, const char* end) {
  auto bws = [&] {
    while (p < end && (*p == ' ' || *p == '\t')) ++p;
  };
  auto token = [&] {
    const char* s = p;
    while (p < end && is_token(*p)) ++p;
    return p != s;
  };
  // Whitespace is allowed around ';' and '=', not at the end of the line.
  for (;;) {
    if (p == end) return true;
    bws();
    if (p == end || *p != ';') return false;
    ++p;
    bws();
    if (!token()) return false;
    const char* const name_end = p;
    bws();
    if (p == end) return p == name_end;
    if (*p == ';') continue;
    if (*p != '=') return false;
    ++p;
    bws();
    if (p == end) return false;
    if (*p == '"') {
      ++p;
      for (;;) {
        if (p == end) return false;
        const auto c = static_cast<unsigned char>(*p);
        if (c == '"') break;
        if (c == '\\') {  // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
          if (++p == end) return false;
          const auto q = static_cast<unsigned char>(*p);
          if ((q < 0x20 && q != '\t') || q == 0x7f) return false;
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
          return false;
        }
        ++p;
      }
      ++p;
    } else if (!token()) {
      return false;
    }
  }
}

}  // namespace

Field classify_field(std::string_view n) {
  switch (n.size()) {
    case 4:
      if (name_is(n, "host")) return Field::kHost;
      break;
    case 6:
      if (name_is(n, "expect")) return Field::kExpect;
      break;
    case 7:
      if (name_is(n, "upgrade")) return Field::kUpgrade;
      break;
    case 10:
      if (name_is(n, "connection")) return Field::kConnection;
      break;
    case 11:
      if (name_is(n, "retry-after")) return Field::kRetryAfter;
      break;
    case 12:
      if (name_is(n, "content-type")) return Field::kContentType;
      break;
    case 13:
      if (name_is(n, "authorization")) return Field::kAuthorization;
      break;
    case 14:
      if (name_is(n, "content-length")) return Field::kContentLength;
      break;
    case 16:
      if (name_is(n, "proxy-connection")) return Field::kProxyConnection;
      break;
    case 17:
      if (name_is(n, "transfer-encoding")) return Field::kTransferEncoding;
      break;
    default:
      break;
  }
  return Field::kOther;
}

template <class Derived, bool kRequest>
std::size_t BasicParser<Derived, kRequest>::put(boost::asio::const_buffer buffer, error_code& ec) {
  const char* const begin = static_cast<const char*>(buffer.data());
  const char* const end = begin + buffer.size();
  const char* p = begin;
  ec = {};
  if (state_ == State::kComplete) return 0;
  if (state_ == State::kNothingYet) {
    if (p == end) {
      ec = bhttp::error::need_more;
      return 0;
    }
    state_ = State::kStartLine;
  }
  for (;;) {
    switch (state_) {
      case State::kNothingYet:
      case State::kComplete:
        return static_cast<std::size_t>(p - begin);
      case State::kStartLine:
      case State::kFields: {
        // Complete lines are parsed and consumed; a partial line stays with the caller, and
        // `scanned_` remembers how much of it holds no LF.
        const std::size_t room = head_bytes_ < header_limit_ ? header_limit_ - head_bytes_ : 0;
        const std::size_t avail = static_cast<std::size_t>(end - p);
        const std::size_t window = avail < room ? avail : room;
        if (state_ == State::kFields && scanned_ == 0) {
          // The usual lines, each read without a search for its end first (see fast_line),
          // one after another: the window's end stays where it is as lines are consumed (the
          // room and the bytes left shrink alike). The first other line goes the general way.
          // The lines taken are copied together once the loop ends (run_).
          const char* const limit = p + window;
          const char* const from = p;
          run_ = p;
          while (state_ == State::kFields) {
            if (limit - p >= 2 && p[0] == '\r' && p[1] == '\n') {  // the end of the head
              end_run(p);
              head_bytes_ += 2;
              p += 2;
              finish_head(ec);
              if (ec || !eager_) return static_cast<std::size_t>(p - begin);
              break;
            }
            const char* const eol = fast_line(p, limit, ec);
            if (!eol) break;
            head_bytes_ += static_cast<std::size_t>(eol + 1 - p);
            if (ec) {
              end_run(p);
              return static_cast<std::size_t>(p - begin);
            }
            p = eol + 1;
          }
          end_run(p);
          if (p != from) break;
        }
        if (state_ == State::kStartLine && scanned_ == 0) {
          if (const char* const eol = fast_start_line(p, p + window)) {
            head_bytes_ += static_cast<std::size_t>(eol + 1 - p);
            state_ = State::kFields;
            p = eol + 1;
            break;
          }
        }
        const char* eol =
            scanned_ < window
                ? static_cast<const char*>(std::memchr(p + scanned_, '\n', window - scanned_))
                : nullptr;
        if (!eol) {
          if (avail >= room) {
            ec = bhttp::error::header_limit;
          } else {
            scanned_ = window;
            ec = bhttp::error::need_more;
          }
          return static_cast<std::size_t>(p - begin);
        }
        scanned_ = 0;
        head_bytes_ += static_cast<std::size_t>(eol + 1 - p);
        if (state_ == State::kStartLine) {
          start_line(p, eol, ec);
          if (ec) return static_cast<std::size_t>(p - begin);
          state_ = State::kFields;
          p = eol + 1;
          break;
        }
        if (eol == p + 1 && *p == '\r') {  // the empty line: the head is complete
          p = eol + 1;
          finish_head(ec);
          if (ec) return static_cast<std::size_t>(p - begin);
          if (!eager_) return static_cast<std::size_t>(p - begin);
          break;
        }
        field_line(p, eol, false, ec);
        if (ec) return static_cast<std::size_t>(p - begin);
        p = eol + 1;
        break;
      }
      case State::kBody: {
        const std::size_t avail = static_cast<std::size_t>(end - p);
        const std::size_t take = remaining_ < avail ? static_cast<std::size_t>(remaining_) : avail;
        if (take == 0) return static_cast<std::size_t>(p - begin);
        const std::size_t used = self().on_body(std::string_view(p, take), ec);
        p += used;
        remaining_ -= used;
        if (ec) return static_cast<std::size_t>(p - begin);
        if (remaining_ == 0) state_ = State::kComplete;
        break;
      }
      case State::kBodyToEof: {
        const std::size_t avail = static_cast<std::size_t>(end - p);
        if (avail == 0) return 0;
        if (has_body_limit_) {
          if (avail > body_limit_) {
            ec = bhttp::error::body_limit;
            return static_cast<std::size_t>(p - begin);
          }
          body_limit_ -= avail;
        }
        p += self().on_body(std::string_view(p, avail), ec);
        return static_cast<std::size_t>(p - begin);
      }
      case State::kChunkHeader: {
        const std::size_t used = chunk_header(p, end, ec);
        p += used;
        if (ec) return static_cast<std::size_t>(p - begin);
        break;
      }
      case State::kChunkBody: {
        const std::size_t avail = static_cast<std::size_t>(end - p);
        const std::size_t take = remaining_ < avail ? static_cast<std::size_t>(remaining_) : avail;
        if (take == 0) return static_cast<std::size_t>(p - begin);
        const std::size_t used = self().on_body(std::string_view(p, take), ec);
        p += used;
        remaining_ -= used;
        if (ec) return static_cast<std::size_t>(p - begin);
        if (remaining_ == 0) state_ = State::kChunkHeader;
        break;
      }
    }
    if (state_ == State::kComplete) return static_cast<std::size_t>(p - begin);
    if (p == end) {
      // Out of bytes inside a line (head, chunk-size, trailers): the caller must read more.
      if (state_ == State::kStartLine || state_ == State::kFields ||
          state_ == State::kChunkHeader) {
        ec = bhttp::error::need_more;
      }
      return static_cast<std::size_t>(p - begin);
    }
  }
}

template <class Derived, bool kRequest>
void BasicParser<Derived, kRequest>::put_eof(error_code& ec) {
  ec = {};
  if (state_ == State::kBodyToEof) {
    state_ = State::kComplete;
    return;
  }
  if (state_ != State::kComplete) ec = bhttp::error::partial_message;
}

template <class Derived, bool kRequest>
void BasicParser<Derived, kRequest>::start_line(const char* p, const char* eol, error_code& ec) {
  // The line must end in CRLF; `last` is its CR.
  const char* const last = eol - 1;
  auto version_at = [&](const char* v, int& out) {
    if (eol - v < 8 || std::memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9') {
      return false;
    }
    out = (v[5] - '0') * 10 + (v[7] - '0');
    return out == 10 || out == 11;
  };
  if constexpr (kRequest) {
    // request-line = method SP request-target SP HTTP-version CRLF
    const char* const m = token_end(p, eol);
    if (m == p || *m != ' ') {
      ec = bhttp::error::bad_method;
      return;
    }
    const char* t = m + 1;
    const char* te = find_target_stop(t, eol, p);
    if (te == t || te == eol || *te != ' ') {
      ec = bhttp::error::bad_target;
      return;
    }
    int version = 0;
    const char* v = te + 1;
    if (!version_at(v, version) || v + 8 != last || *last != '\r') {
      ec = bhttp::error::bad_version;
      return;
    }
    if (version == 11) flags_ |= kHttp11;
    self().on_request(std::string_view(p, static_cast<std::size_t>(m - p)),
                      std::string_view(t, static_cast<std::size_t>(te - t)), version);
  } else {
    // status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF
    int version = 0;
    if (!version_at(p, version) || p + 8 >= eol || p[8] != ' ') {
      ec = bhttp::error::bad_version;
      return;
    }
    const char* s = p + 9;
    if (eol - s < 4 || s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
        s[2] > '9' || s[3] != ' ') {
      ec = bhttp::error::bad_status;
      return;
    }
    const int status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    if (find_value_stop(s + 4, eol, p) != last || *last != '\r') {
      ec = bhttp::error::bad_reason;
      return;
    }
    if (version == 11) flags_ |= kHttp11;
    self().on_status(status, version);
  }
}

template <class Derived, bool kRequest>
const char* BasicParser<Derived, kRequest>::fast_start_line(const char* p, const char* limit) {
  // No byte before the CRLF checked here can be a LF (a method is tchars, a target and a reason
  // phrase hold no control byte, the rest is fixed), so this line ends where the general
  // path's search would find its end, and the checks are start_line's. Any other line is left
  // to the general path.
  auto version_at = [&](const char* v) {
    if (limit - v < 8 || std::memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1')) {
      return 0;
    }
    return v[7] == '1' ? 11 : 10;
  };
  if constexpr (kRequest) {
    const char* const m = token_end(p, limit);
    if (m == p || m == limit || *m != ' ') return nullptr;
    const char* const t = m + 1;
    const char* const te = find_target_stop(t, limit, p);
    if (te == t || te == limit || *te != ' ') return nullptr;
    const char* const v = te + 1;
    const int version = version_at(v);
    if (version == 0 || limit - v < 10 || v[8] != '\r' || v[9] != '\n') return nullptr;
    if (version == 11) flags_ |= kHttp11;
    self().on_request(std::string_view(p, static_cast<std::size_t>(m - p)),
                      std::string_view(t, static_cast<std::size_t>(te - t)), version);
    return v + 9;
  } else {
    // "HTTP/1.x NNN " and the reason phrase up to its CRLF.
    const int version = version_at(p);
    if (version == 0 || limit - p < 13 || p[8] != ' ' || p[12] != ' ') return nullptr;
    const char* const s = p + 9;
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9') {
      return nullptr;
    }
    const char* const stop = find_value_stop(s + 4, limit, p);
    if (limit - stop < 2 || stop[0] != '\r' || stop[1] != '\n') return nullptr;
    if (version == 11) flags_ |= kHttp11;
    self().on_status((s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0'), version);
    return stop + 1;
  }
}

template <class Derived, bool kRequest>
void BasicParser<Derived, kRequest>::field_line(const char* p, const char* eol, bool trailer,
                                                error_code& ec) {
  // field-line = field-name ":" OWS field-value OWS CRLF. A line that starts with whitespace
  // is obs-fold (or space before the first field): refused (RFC 9112 5.2, 2.2).
  if (*p == ' ' || *p == '\t') {
    ec = any_field_ ? bhttp::error::bad_value : bhttp::error::bad_field;
    return;
  }
  const char* const n = token_end(p, eol);
  if (n == p || *n != ':') {
    ec = bhttp::error::bad_field;
    return;
  }
  const std::string_view name(p, static_cast<std::size_t>(n - p));
  const char* v = n + 1;
  while (v < eol && (*v == ' ' || *v == '\t')) ++v;
  const char* const stop = find_value_stop(v, eol + 1, p);
  if (stop != eol - 1 || *stop != '\r') {
    ec = *stop == '\r' ? bhttp::error::bad_line_ending : bhttp::error::bad_value;
    return;
  }
  field(p, eol, name, v, stop, trailer, ec);
}

template <class Derived, bool kRequest>
const char* BasicParser<Derived, kRequest>::fast_line(const char* p, const char* limit,
                                                      error_code& ec) {
  // The checks of field_line in one pass from the line's start: the name's tchars, its colon,
  // OWS, then the value up to its first control byte, which must be the CR of a CRLF. No byte
  // before that CR can be a LF, so this line ends where the general path's search would find
  // its end, and the name, value and checks are the same as field_line's. Any other line
  // (obs-fold, a bad byte, a line cut short by `limit`, no byte at all) is left to the general
  // path.
  if (p == limit || *p == ' ' || *p == '\t') return nullptr;
  const char* const n = token_end(p, limit);
  if (n == p || n == limit || *n != ':') return nullptr;
  // OWS: usually one space; any run of SP and HTAB.
  const char* v = n + 1;
  if (v < limit && *v == ' ') ++v;
  while (v < limit && (*v == ' ' || *v == '\t')) ++v;
  const char* const stop = value_stop(v, limit, p);
  if (limit - stop < 2 || stop[0] != '\r' || stop[1] != '\n') return nullptr;
  const std::string_view name(p, static_cast<std::size_t>(n - p));
  field(p, stop + 1, name, v, stop, false, ec);
  return stop + 1;
}

template <class Derived, bool kRequest>
void BasicParser<Derived, kRequest>::field(const char* p, const char* eol, std::string_view name,
                                           const char* v, const char* stop, bool trailer,
                                           error_code& ec) {
  const char* ve = stop;
  while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) --ve;
  const std::string_view value(v, static_cast<std::size_t>(ve - v));
  const Field f = classify_field(name);
  any_field_ = true;
  if (trailer) {
    // Trailer fields are checked, then dropped: they never join the header fields. Framing
    // fields have no place there.
    if (f == Field::kContentLength) {
      ec = bhttp::error::bad_content_length;
    } else if (f == Field::kTransferEncoding) {
      ec = bhttp::error::bad_transfer_encoding;
    } else if (f == Field::kConnection || f == Field::kProxyConnection) {
      framing_field(f, value, ec);  // checked, and honoured ("close") as Beast did
    }
    return;
  }
  // framing_field acts on these only (Host, Content-Type and the others are recognised for the
  // derived parser).
  if (f == Field::kContentLength && !(flags_ & (kChunked | kContentLength)) && !value.empty() &&
      value.size() <= 19) {
    // The usual Content-Length, the message's only one, 1 to 19 digits alone (no overflow
    // possible), read here instead of in a call of framing_field; any other is left to it.
    std::uint64_t v = 0;
    const char* d = value.data();
    const char* const e = d + value.size();
    while (d < e && static_cast<unsigned char>(*d - '0') <= 9) {
      v = v * 10 + static_cast<std::uint64_t>(*d - '0');
      ++d;
    }
    if (d == e) {
      content_length_ = v;
      remaining_ = v;
      flags_ |= kContentLength;
    } else {
      framing_field(f, value, ec);
      if (ec) return;
    }
  } else if (f == Field::kContentLength || f == Field::kTransferEncoding ||
             f == Field::kConnection || f == Field::kProxyConnection) {
    framing_field(f, value, ec);
    if (ec) return;
  }
  self().on_field(f, name, value, std::string_view(p, static_cast<std::size_t>(eol + 1 - p)), ec);
}

template <class Derived, bool kRequest>
void BasicParser<Derived, kRequest>::framing_field(Field f, std::string_view value,
                                                   error_code& ec) {
  switch (f) {
    case Field::kConnection:
    case Field::kProxyConnection: {
      // #connection-option: tokens separated by commas (empty elements allowed).
      bool ok = true;
      for_each_element(value, [&](std::string_view e) {
        if (e.empty()) return;
        if (!is_token_string(e)) {
          ok = false;
        } else if (name_is(e, "close")) {
          flags_ |= kConnClose;
        } else if (name_is(e, "keep-alive")) {
          flags_ |= kConnKeepAlive;
        }
      });
      if (!ok) ec = bhttp::error::bad_value;
      return;
    }
    case Field::kContentLength: {
      // A list of equal numbers counts as one (RFC 9112 6.3); differing ones, an element that
      // is not a number, or Content-Length next to chunked are refused.
      if (flags_ & kChunked) {
        ec = bhttp::error::bad_content_length;
        return;
      }
      // The usual value, 1 to 19 digits alone (no overflow possible), without the list walk.
      if (!value.empty() && value.size() <= 19) {
        std::uint64_t v = 0;
        bool digits = true;
        for (char c : value) {
          if (c < '0' || c > '9') {
            digits = false;
            break;
          }
          v = v * 10 + static_cast<std::uint64_t>(c - '0');
        }
        if (digits) {
          if ((flags_ & kContentLength) && v != content_length_) {
            ec = bhttp::error::multiple_content_length;
            return;
          }
          content_length_ = v;
          remaining_ = v;
          flags_ |= kContentLength;
          return;
        }
      }
      bool have = (flags_ & kContentLength) != 0;
      std::uint64_t len = content_length_;
      bool bad = false, differ = false;
      for_each_element(value, [&](std::string_view e) {
        std::uint64_t v = 0;
        if (bad || differ) return;
        if (!parse_decimal(e, v)) {
          bad = true;
        } else if (have && v != len) {
          differ = true;
        } else {
          have = true;
          len = v;
        }
      });
      if (bad) {
        ec = bhttp::error::bad_content_length;
        return;
      }
      if (differ) {
        ec = bhttp::error::multiple_content_length;
        return;
      }
      content_length_ = len;
      remaining_ = len;
      flags_ |= kContentLength;
      return;
    }
    case Field::kTransferEncoding: {
      if (flags_ & (kChunked | kContentLength)) {
        ec = bhttp::error::bad_transfer_encoding;
        return;
      }
      // Chunked when the first "chunked" coding is the last one (RFC 9112 6.1). A value that
      // is not a list of tokens (transfer-parameters included) is refused.
      int index = 0, chunked_at = -1, last = -1;
      bool ok = true;
      for_each_element(value, [&](std::string_view e) {
        if (e.empty()) return;
        if (!is_token_string(e)) ok = false;
        if (chunked_at < 0 && name_is(e, "chunked")) chunked_at = index;
        last = index++;
      });
      if (!ok) {
        ec = bhttp::error::bad_transfer_encoding;
        return;
      }
      if (chunked_at >= 0 && chunked_at == last) flags_ |= kChunked;
      return;
    }
    default:
      return;
  }
}

template <class Derived, bool kRequest>
void BasicParser<Derived, kRequest>::finish_head(error_code& ec) {
  if constexpr (!kRequest) {
    const int status = self().status();
    // 1xx, 204 and 304 have no body whatever their framing fields say (RFC 9112 6.3).
    if (status / 100 == 1 || status == 204 || status == 304) {
      state_ = State::kComplete;
      return;
    }
  }
  if (flags_ & kContentLength) {
    if (has_body_limit_ && content_length_ > body_limit_ && content_length_ > 0) {
      ec = bhttp::error::body_limit;
      return;
    }
    if (content_length_ == 0) {
      state_ = State::kComplete;
      return;
    }
    self().on_body_init(content_length_);
    state_ = State::kBody;
    return;
  }
  if (flags_ & kChunked) {
    state_ = State::kChunkHeader;
    return;
  }
  if constexpr (kRequest) {
    state_ = State::kComplete;  // a request without framing fields has no body
  } else {
    flags_ |= kNeedEof;
    state_ = State::kBodyToEof;
  }
}

template <class Derived, bool kRequest>
std::size_t BasicParser<Derived, kRequest>::chunk_header(const char* p, const char* end,
                                                         error_code& ec) {
  // chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF; the CRLF after a chunk's data is
  // taken with the next chunk-size line.
  const char* const begin = p;
  const std::size_t skip = (flags_ & kExpectCrlf) ? 2 : 0;
  if (static_cast<std::size_t>(end - p) < skip + 1) {
    ec = bhttp::error::need_more;
    return 0;
  }
  if (skip && (p[0] != '\r' || p[1] != '\n')) {
    ec = bhttp::error::bad_chunk;
    return 0;
  }
  const char* const line = p + skip;
  // The line ends at its first CR, which must be followed by LF. Bounded by header_limit.
  const std::size_t avail = static_cast<std::size_t>(end - line);
  const std::size_t window = avail < header_limit_ ? avail : header_limit_;
  const std::size_t from = scanned_ < window ? scanned_ : window;
  const char* cr = static_cast<const char*>(std::memchr(line + from, '\r', window - from));
  if (!cr || cr + 1 == end) {
    if (!cr && avail >= header_limit_) {
      ec = bhttp::error::header_limit;
      return 0;
    }
    scanned_ = cr ? static_cast<std::size_t>(cr - line) : window;
    ec = bhttp::error::need_more;
    return 0;
  }
  if (cr[1] != '\n') {
    ec = bhttp::error::bad_line_ending;
    return 0;
  }
  // chunk-size = 1*HEXDIG
  const char* h = line;
  std::uint64_t size = 0;
  if (h == cr || unhex(*h) < 0) {
    ec = bhttp::error::bad_chunk;
    return 0;
  }
  for (int d; h < cr && (d = unhex(*h)) >= 0; ++h) {
    if (size > (std::numeric_limits<std::uint64_t>::max() >> 4)) {
      ec = bhttp::error::bad_chunk;
      return 0;
    }
    size = (size << 4) | static_cast<std::uint64_t>(d);
  }
  if (size != 0) {
    if (has_body_limit_) {
      if (size > body_limit_) {
        ec = bhttp::error::body_limit;
        return 0;
      }
      body_limit_ -= size;
    }
    if (!valid_chunk_extensions(h, cr)) {
      ec = bhttp::error::bad_chunk_extension;
      return 0;
    }
    scanned_ = 0;
    remaining_ = size;
    flags_ |= kExpectCrlf;
    state_ = State::kChunkBody;
    return static_cast<std::size_t>(cr + 2 - begin);
  }
  // The last chunk: the trailer section and its empty line must be complete, within
  // header_limit bytes counted from the last chunk's line end.
  const char* const after = cr + 2;
  const std::size_t tavail = static_cast<std::size_t>(end - after);
  const std::size_t twindow = tavail < header_limit_ ? tavail : header_limit_;
  const char* eom = nullptr;
  if (twindow >= 2 && after[0] == '\r' && after[1] == '\n') {
    eom = after + 2;
  } else {
    // The first "\r\n\r\n" from the last chunk's CRLF on.
    const char* s = cr;
    const char* const limit = after + twindow;
    while (s + 4 <= limit) {
      const char* q = static_cast<const char*>(std::memchr(s + 3, '\n', limit - (s + 3)));
      if (!q) break;
      if (q[-1] == '\r' && q[-2] == '\n' && q[-3] == '\r') {
        eom = q + 1;
        break;
      }
      s = q - 2;
    }
  }
  if (!eom) {
    if (tavail >= header_limit_) {
      ec = bhttp::error::header_limit;
    } else {
      ec = bhttp::error::need_more;
    }
    scanned_ = 0;
    return 0;
  }
  if (!valid_chunk_extensions(h, cr)) {
    ec = bhttp::error::bad_chunk_extension;
    return 0;
  }
  // trailer-section = *( field-line CRLF )
  const char* t = after;
  while (t < eom - 2) {
    const char* eol = static_cast<const char*>(std::memchr(t, '\n', eom - t));
    field_line(t, eol, true, ec);
    if (ec) return 0;
    t = eol + 1;
  }
  scanned_ = 0;
  state_ = State::kComplete;
  return static_cast<std::size_t>(eom - begin);
}

template class BasicParser<RequestParser, true>;
template class BasicParser<ResponseParser, false>;

void RequestParser::headers(std::vector<std::pair<std::string_view, std::string_view>>& out) const {
  // The spans were made by on_field inside the arena: no bounds to check; one size change.
  const std::size_t n = fields_.size() / 2;
  out.resize(n);
  const char* const base = arena_.data();
  const Span* f = fields_.data();
  for (std::size_t i = 0; i < n; ++i, f += 2) {
    out[i] = {std::string_view(base + f[0].first, f[0].second),
              std::string_view(base + f[1].first, f[1].second)};
  }
}

namespace {

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

}  // namespace

void RequestParser::on_request(std::string_view method, std::string_view target, int version) {
  version_ = version;
  // The usual origin form ("/path?q"): the method, its space and the target kept with one copy
  // (start_line's views are into one line).
  if (target.starts_with('/')) {
    const std::size_t at = arena_.size();
    const auto gap = static_cast<std::size_t>(target.data() - method.data());
    arena_.append(method.data(), gap + target.size());
    method_ = {at, method.size()};
    target_ = {at + gap, target.size()};
    return;
  }
  method_ = keep(method);
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

void RequestParser::on_field(Field f, std::string_view name, std::string_view value,
                             std::string_view line, error_code& ec) {
  if (fields_.size() / 2 >= max_fields_) {
    too_many_ = true;
    ec = bhttp::error::header_limit;
    return;
  }
  switch (f) {
    case Field::kTransferEncoding:
      // Exactly one field whose value is exactly "chunked"; anything else is reported to the
      // session, which refuses it.
      if (saw_te_ || !name_is(value, "chunked")) te_other_ = true;
      saw_te_ = true;
      break;
    case Field::kContentLength:
      // A repeated Content-Length with the same value, and lists such as "5, 5", are allowed
      // by RFC 9112 but refused here: one field, one number, so that no intermediary in front
      // of Bellwether can have framed the body differently.
      if (saw_cl_ || std::find(value.begin(), value.end(), ',') != value.end()) {
        saw_cl_ = true;
        ec = bhttp::error::multiple_content_length;
        return;
      }
      saw_cl_ = true;
      break;
    case Field::kHost:
      ++hosts_;
      break;
    case Field::kAuthorization:
      if (authorization_ == 0) authorization_ = fields_.size() / 2 + 1;
      break;
    case Field::kExpect:
      // A token list; "100-continue" compared case-insensitively.
      for_each_element(value, [&](std::string_view tok) {
        if (iequals(tok, "100-continue")) expect_continue_ = true;
      });
      break;
    default:
      break;
  }
  // The whole line is kept with one copy (with the lines of its run when it has one); name and
  // value are spans inside it.
  std::size_t at = arena_.size();
  if (run_) {
    at += static_cast<std::size_t>(line.data() - run_);
  } else {
    arena_.append(line);
  }
  fields_.emplace_back(at, name.size());
  fields_.emplace_back(at + static_cast<std::size_t>(value.data() - line.data()), value.size());
  names_ |= header_name_bit(name);
}

std::size_t ResponseParser::on_body(std::string_view body, error_code& ec) {
  if (in_place_) {
    // The caller's buffer is writable (in_place()); `body` lies at or after the view's end,
    // and what lies between them is framing that put() has consumed.
    char* const at = const_cast<char*>(body.data());
    if (place_size_ == 0) {
      place_ = at;
    } else if (at != place_ + place_size_) {
      std::memmove(place_ + place_size_, at, body.size());
    }
    place_size_ += body.size();
    return body.size();
  }
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

namespace {

// A head written into `out` with one size change: the caller adds up the sizes first, then
// writes the pieces; a literal's copy is a fixed-size move the compiler inlines.
class HeadWriter {
 public:
  HeadWriter(std::string& out, std::size_t size) : out_(out), at_(out.size()) {
    out.resize(at_ + size);
    p_ = out.data() + at_;
  }
  template <std::size_t N>
  void lit(const char (&s)[N]) {
    std::memcpy(p_, s, N - 1);
    p_ += N - 1;
  }
  void str(std::string_view s) {
    const std::size_t n = s.size();
    const char* const q = s.data();
    // A head's pieces are mostly short (names, ids, a CRLF): copied inline, with two loads
    // that may overlap, instead of a call each.
    if (n >= 8 && n <= 16) {
      std::uint64_t a, b;
      std::memcpy(&a, q, 8);
      std::memcpy(&b, q + n - 8, 8);
      std::memcpy(p_, &a, 8);
      std::memcpy(p_ + n - 8, &b, 8);
    } else if (n >= 4 && n < 8) {
      std::uint32_t a, b;
      std::memcpy(&a, q, 4);
      std::memcpy(&b, q + n - 4, 4);
      std::memcpy(p_, &a, 4);
      std::memcpy(p_ + n - 4, &b, 4);
    } else if (n < 4) {
      for (std::size_t i = 0; i < n; ++i) p_[i] = q[i];
    } else {
      std::memcpy(p_, q, n);
    }
    p_ += n;
  }
  void digits(const char* d, std::size_t n) {
    std::memcpy(p_, d, n);
    p_ += n;
  }
  // The size written must be the size announced.
  bool exact() const { return p_ == out_.data() + out_.size(); }

 private:
  std::string& out_;
  std::size_t at_;
  char* p_ = nullptr;
};

// HeadWriter's interface over std::string::append, for a head that is not sized first.
class AppendWriter {
 public:
  explicit AppendWriter(std::string& out) : out_(out) {}
  template <std::size_t N>
  void lit(const char (&s)[N]) {
    out_.append(s, N - 1);
  }
  void str(std::string_view s) { out_.append(s); }
  void digits(const char* d, std::size_t n) { out_.append(d, n); }

 private:
  std::string& out_;
};

// The end of a response head: its framing line ("content-length: N" with the `ln` digits at
// `ld`, or chunked when `ld` is null), "connection: close" unless kept alive, the blank line.
constexpr std::size_t response_tail_size(bool sized, std::size_t ln, bool keep_alive) {
  return (sized ? 16 + ln + 2 : 28) + (keep_alive ? 0 : 19) + 2;
}
template <class Writer>
void write_response_tail(Writer& w, const char* ld, std::size_t ln, bool keep_alive) {
  if (ld) {
    w.lit("content-length: ");
    w.digits(ld, ln);
    w.lit("\r\n");
  } else {
    w.lit("transfer-encoding: chunked\r\n");
  }
  if (!keep_alive) w.lit("connection: close\r\n");
  w.lit("\r\n");
}

// The end of a request head: its content-length and the blank line.
constexpr std::size_t request_tail_size(std::size_t ln) {
  return 16 + ln + 4;
}
template <class Writer>
void write_request_tail(Writer& w, const char* ld, std::size_t ln) {
  w.lit("content-length: ");
  w.digits(ld, ln);
  w.lit("\r\n\r\n");
}

// The decimal digits of n at the end of buf; returns where they start.
const char* format_decimal(char (&buf)[24], std::uint64_t n) {
  char* p = buf + sizeof buf;
  do {
    *--p = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n != 0);
  return p;
}

}  // namespace

namespace {

// A response head: its status line, the server line, `lines` (joined: whole header lines without
// framing headers) and the framing lines, sized first; or, with `rest` (a list with framing
// headers, dropped), everything before `lines`, then the rest's lines and the end appended.
void write_response_head(std::string& out, int status, std::string_view server_name,
                         std::span<const std::string_view> lines, const Headers* rest,
                         std::int64_t content_length, bool keep_alive) {
  char sbuf[24], lbuf[24];
  // "HTTP/1.1 <status> <reason>\r\n"; nearly every answer's, "200 OK", as it is.
  std::string_view status_line = "HTTP/1.1 200 OK\r\n";
  const char* sd = nullptr;
  std::size_t sn = 0;
  std::string_view reason;
  if (status != 200) {
    sd = format_decimal(sbuf, static_cast<std::uint64_t>(status));
    sn = static_cast<std::size_t>(sbuf + sizeof sbuf - sd);
    const auto r = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
    reason = std::string_view(r.data(), r.size());
    status_line = {};
  }
  const char* ld = nullptr;  // chunked
  std::size_t ln = 0;
  if (content_length >= 0) {
    ld = format_decimal(lbuf, static_cast<std::uint64_t>(content_length));
    ln = static_cast<std::size_t>(lbuf + sizeof lbuf - ld);
  }
  std::size_t size = status_line.empty() ? 9 + sn + 1 + reason.size() + 2 : status_line.size();
  if (!server_name.empty()) size += 8 + server_name.size() + 2;
  if (!rest) {
    for (const auto l : lines) size += l.size();
    size += response_tail_size(ld != nullptr, ln, keep_alive);
  }
  {
    HeadWriter w(out, size);
    if (!status_line.empty()) {
      w.str(status_line);
    } else {
      w.lit("HTTP/1.1 ");
      w.digits(sd, sn);
      w.lit(" ");
      w.str(reason);
      w.lit("\r\n");
    }
    if (!server_name.empty()) {
      w.lit("server: ");
      w.str(server_name);
      w.lit("\r\n");
    }
    if (!rest) {
      for (const auto l : lines) w.str(l);
      write_response_tail(w, ld, ln, keep_alive);
      assert(w.exact());
      return;
    }
    assert(w.exact());
  }
  append_headers(out, *rest);
  AppendWriter w(out);
  write_response_tail(w, ld, ln, keep_alive);
}

}  // namespace

void append_response_head(std::string& out, int status, std::string_view server_name,
                          const Headers& headers, std::int64_t content_length, bool keep_alive) {
  // A list with framing headers is written line by line (they are dropped), after the rest.
  if (headers.may_have_framing()) {
    write_response_head(out, status, server_name, {}, &headers, content_length, keep_alive);
    return;
  }
  const std::string_view wire = headers.wire();
  write_response_head(out, status, server_name, std::span(&wire, 1), nullptr, content_length,
                      keep_alive);
}

void append_response_head(std::string& out, int status, std::string_view server_name,
                          std::span<const std::string_view> lines, std::int64_t content_length,
                          bool keep_alive) {
  write_response_head(out, status, server_name, lines, nullptr, content_length, keep_alive);
}

void append_request_head(std::string& out, std::string_view method, std::string_view target,
                         std::string_view host_header, std::span<const std::string_view> lines,
                         const Headers& headers, std::size_t content_length) {
  char lbuf[24];
  const char* const ld = format_decimal(lbuf, content_length);
  const auto ln = static_cast<std::size_t>(lbuf + sizeof lbuf - ld);
  const bool whole = !headers.may_have_framing();
  std::size_t size = method.size() + 1 + target.size() + 17 + host_header.size() + 2;
  for (const auto l : lines) size += l.size();
  if (whole) size += headers.wire().size() + request_tail_size(ln);
  {
    HeadWriter w(out, size);
    w.str(method);
    w.lit(" ");
    w.str(target);
    w.lit(" HTTP/1.1\r\nhost: ");
    w.str(host_header);
    w.lit("\r\n");
    for (const auto l : lines) w.str(l);
    if (whole) {
      w.str(headers.wire());
      write_request_tail(w, ld, ln);
      assert(w.exact());
      return;
    }
    assert(w.exact());
  }
  append_headers(out, headers);
  AppendWriter w(out);
  write_request_tail(w, ld, ln);
}

void append_request_head(std::string& out, std::string_view method, std::string_view target,
                         std::string_view host_header, const Headers& headers,
                         std::size_t content_length) {
  append_request_head(out, method, target, host_header, {}, headers, content_length);
}

std::size_t chunk_header(char (&buf)[20], std::size_t size) {
  auto [p, ec] = std::to_chars(buf, buf + 16, size, 16);
  *p++ = '\r';
  *p++ = '\n';
  return static_cast<std::size_t>(p - buf);
}

}  // namespace bw::http::wire
