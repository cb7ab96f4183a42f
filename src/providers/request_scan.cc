#include "providers/request_scan.h"

#include <simdjson.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "common/same_text.h"
#include "providers/json_scan.h"

namespace bw::providers {

TopField top_field(std::string_view key) {
  // By length first: one comparison for most keys.
  const auto is = [&](std::string_view name) {
    return std::memcmp(key.data(), name.data(), name.size()) == 0;
  };
  switch (key.size()) {
    case 1:
      return key[0] == 'n' ? TopField::kN : TopField::kOther;
    case 4:
      if (is("seed")) return TopField::kNoText;
      if (is("user")) return TopField::kNoText;
      if (is("stop")) return TopField::kNoText;
      break;
    case 5:
      if (is("model")) return TopField::kModel;
      if (is("input")) return TopField::kInput;
      if (is("top_p")) return TopField::kNoText;
      break;
    case 6:
      if (is("stream")) return TopField::kStream;
      if (is("prompt")) return TopField::kPrompt;
      break;
    case 7:
      if (is("best_of")) return TopField::kBestOf;
      break;
    case 8:
      if (is("messages")) return TopField::kMessages;
      if (is("metadata")) return TopField::kNoText;
      break;
    case 10:
      if (is("max_tokens")) return TopField::kMaxTokens;
      if (is("logit_bias")) return TopField::kNoText;
      if (is("modalities")) return TopField::kNoText;
      break;
    case 11:
      if (is("temperature")) return TopField::kNoText;
      break;
    case 12:
      if (is("service_tier")) return TopField::kNoText;
      break;
    case 14:
      if (is("stream_options")) return TopField::kStreamOptions;
      break;
    case 16:
      if (is("reasoning_effort")) return TopField::kNoText;
      break;
    case 21:
      if (is("max_completion_tokens")) return TopField::kMaxCompletionTokens;
      break;
    default:
      break;
  }
  return TopField::kOther;
}

namespace {

// Larger bodies are rare; the parse takes them.
constexpr std::size_t kMaxScanBytes = 1024 * 1024;
// Below the depth at which simdjson's minify recurses, and far below the request's limit
// (kMaxJsonDepth), which the scan therefore never has to report.
constexpr int kMaxScanDepth = 15;
// Keys of one object compared pairwise for duplicates; an object with more goes to the parse.
constexpr std::size_t kMaxKeys = 32;

static_assert(kMaxScanDepth < static_cast<int>(kMaxJsonDepth));

constexpr bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// The size of a value as simdjson::minify writes it (json_chars of parse_request prices
// objects and arrays by it). Not known for a number the writer formats anew (a fraction, an
// exponent, -0): a value priced by its JSON that holds one goes to the parse.
struct Mini {
  std::size_t size = 0;
  bool known = true;
};

// A non-negative integer as JSON writes it (no sign, fraction or exponent, at most 18 digits).
struct Count {
  bool plain = false;
  std::int64_t value = 0;
};

class RequestScanner {
 public:
  RequestScanner(Endpoint endpoint, std::string_view body)
      : body_(body), p_(body.data()), end_(body.data() + body.size()), endpoint_(endpoint) {}

  bool run(LlmRequest& r) {
    r.endpoint = endpoint_;
    r_ = &r;
    ws();
    if (p_ == end_ || *p_ != '{') return false;
    Mini top;
    if (!object(1, top, [&](std::string_view key, Mini& m) { return top_member(key, m); })) {
      return false;
    }
    const auto close = static_cast<std::uint32_t>(p_ - 1 - body_.data());
    ws();
    if (p_ != end_) return false;
    // Non-ASCII bytes occur only inside strings here; the parser refuses invalid UTF-8.
    if (high_ != 0 && !simdjson::validate_utf8(body_.data(), body_.size())) return false;
    return finish(r, close);
  }

 private:
  struct Str {
    std::string_view raw;   // between the quotes, as written
    std::size_t bytes = 0;  // after unescaping: what the parser's string_view holds
    std::size_t mini = 0;   // as minify writes it, quotes included
    bool escaped = false;
  };
  // What the top-level members said, checked in parse_request's order once all are read.
  struct Cap {
    bool set = false;  // present and not null
    Count count;
  };

  void ws() { p_ = json_scan::skip_ws(p_, end_); }

  std::uint32_t offset() const { return static_cast<std::uint32_t>(p_ - body_.data()); }

  // At '{'. on_member(key, mini) reads the value, which starts at p_, and adds its size to mini.
  // Keys are unescaped and each is met once (the parse refuses a duplicate; an escaped key may
  // equal another once unescaped: both go to the parse). The position is kept in a local
  // between the members.
  template <typename OnMember>
  bool object(int depth, Mini& m, OnMember&& on_member) {
    if (depth > kMaxScanDepth) return false;
    const char* p = p_ + 1;
    m.size += 2;
    if (json_scan::at_byte(p, end_, '}')) {
      p_ = p + 1;
      return true;
    }
    struct Key {
      const char* data;
      std::size_t size;
    };
    Key keys[kMaxKeys];
    std::size_t n = 0;
    std::uint64_t sizes = 0;  // bit i: a key of i bytes (63: of 63 or more) was met
    for (;;) {
      if (!json_scan::at_byte(p, end_, '"')) return false;
      const char* const q = json_scan::plain_key_end(p, end_, high_);
      if (q == nullptr || n == kMaxKeys) return false;
      const std::string_view key(p + 1, static_cast<std::size_t>(q - p - 1));
      // Only a key of a size met before may be met twice.
      const std::uint64_t size_bit = std::uint64_t{1} << std::min<std::size_t>(key.size(), 63);
      if (sizes & size_bit) {
        for (std::size_t i = 0; i < n; ++i) {
          if (keys[i].size == key.size() &&
              std::memcmp(keys[i].data, key.data(), key.size()) == 0) {
            return false;
          }
        }
      }
      sizes |= size_bit;
      keys[n++] = Key{key.data(), key.size()};
      // The key and its quotes, its colon, the comma before it.
      m.size += key.size() + 3 + (n > 1 ? 1 : 0);
      p = json_scan::member_value(q + 1, end_);
      if (p == nullptr) return false;
      p_ = p;
      if (!on_member(key, m)) return false;
      p = p_;
      const json_scan::Next next = json_scan::after_value(p, end_, '}');
      if (next == json_scan::Next::kMore) continue;
      p_ = p;
      return next == json_scan::Next::kClosed;
    }
  }

  // At '['. on_element(mini) reads the element, which starts at p_.
  template <typename OnElement>
  bool array(int depth, Mini& m, OnElement&& on_element) {
    if (depth > kMaxScanDepth) return false;
    const char* p = p_ + 1;
    m.size += 2;
    if (json_scan::at_byte(p, end_, ']')) {
      p_ = p + 1;
      return true;
    }
    for (bool first = true;; first = false) {
      if (!first) m.size += 1;
      if (!json_scan::at_value(p, end_)) return false;
      p_ = p;
      if (!on_element(m)) return false;
      p = p_;
      const json_scan::Next next = json_scan::after_value(p, end_, ']');
      if (next == json_scan::Next::kMore) continue;
      p_ = p;
      return next == json_scan::Next::kClosed;
    }
  }

  // Any value, at its first byte (p_ != end_), of a container at `depth`.
  bool value(int depth, Mini& m) {
    switch (*p_) {
      case '{':
      case '[':
        return container(depth + 1, m);
      case '"': {
        Str s;
        if (!string(s)) return false;
        m.size += s.mini;
        return true;
      }
      case 't':
        return literal("true", m);
      case 'f':
        return literal("false", m);
      case 'n':
        return literal("null", m);
      default: {
        Count c;
        return number(m, c);
      }
    }
  }

  [[gnu::noinline]] bool container(int depth, Mini& m) {
    if (*p_ == '{') {
      return object(depth, m, [&](std::string_view, Mini& mm) { return value(depth, mm); });
    }
    return array(depth, m, [&](Mini& mm) { return value(depth, mm); });
  }

  // A value that parse_request prices by json_chars: a string by its bytes, an object or an
  // array by its minified JSON, anything else as 3.
  bool priced(int depth, Mini& m, std::size_t& chars) {
    const char c = *p_;
    if (c == '"') {
      Str s;
      if (!string(s)) return false;
      m.size += s.mini;
      chars += s.bytes;
      return true;
    }
    Mini own;
    if (!value(depth, own)) return false;
    m.size += own.size;
    m.known = m.known && own.known;
    if (c == '{' || c == '[') {
      if (!own.known) return false;
      chars += own.size;
    } else {
      chars += 3;
    }
    return true;
  }

  bool literal(std::string_view word, Mini& m) {
    if (static_cast<std::size_t>(end_ - p_) < word.size() ||
        std::memcmp(p_, word.data(), word.size()) != 0) {
      return false;
    }
    p_ += word.size();
    m.size += word.size();
    return true;
  }

  // Only numbers that any double or int64 reading takes: few digits, a short exponent. An
  // integer is written by minify as it stands here; anything else (and -0) is not.
  bool number(Mini& m, Count& count) {
    const char* p = p_;
    const bool negative = *p == '-';
    if (negative) ++p;
    const char* int_start = p;
    if (p == end_ || !is_digit(*p)) return false;
    std::int64_t v = 0;
    if (*p == '0') {
      ++p;
    } else {
      while (p != end_ && is_digit(*p)) {
        if (p - int_start >= 18) return false;
        v = v * 10 + (*p - '0');
        ++p;
      }
    }
    const auto int_digits = p - int_start;
    bool integer = true;
    if (p != end_ && *p == '.') {
      integer = false;
      ++p;
      const char* frac_start = p;
      while (p != end_ && is_digit(*p)) ++p;
      if (p == frac_start || int_digits + (p - frac_start) > 19) return false;
    }
    if (p != end_ && (*p == 'e' || *p == 'E')) {
      integer = false;
      ++p;
      if (p != end_ && (*p == '+' || *p == '-')) ++p;
      const char* exp_start = p;
      while (p != end_ && is_digit(*p)) ++p;
      if (p == exp_start || p - exp_start > 2) return false;
    }
    if (integer && !(negative && v == 0)) {
      m.size += static_cast<std::size_t>(p - p_);
      if (!negative) count = Count{true, v};
    } else {
      m.known = false;
    }
    p_ = p;
    return true;
  }

  // The first quote, backslash or control character at or after p
  // (json_scan::find_special_long: a prompt's text may be long).
  const char* find_special(const char* p) { return json_scan::find_special_long(p, end_, high_); }

  // At '"'.
  [[gnu::always_inline]] bool string(Str& s) {
    const char* const start = p_ + 1;
    if (const char* at = json_scan::short_string_end(start, end_, high_)) {  // most values
      s.raw = std::string_view(start, static_cast<std::size_t>(at - start));
      s.bytes = s.raw.size();
      s.mini = s.bytes + 2;
      p_ = at + 1;
      return true;
    }
    std::size_t saved = 0;  // bytes that escapes take beyond what they stand for
    std::size_t extra = 0;  // bytes that minify's escapes take beyond what they stand for
    for (const char* from = start;;) {
      const char* at = find_special(from);
      if (at >= end_) return false;  // unterminated
      if (*at == '"') {
        s.raw = std::string_view(start, static_cast<std::size_t>(at - start));
        s.bytes = s.raw.size() - saved;
        s.mini = s.bytes + extra + 2;
        p_ = at + 1;
        return true;
      }
      if (*at != '\\') return false;  // a control character
      s.escaped = true;
      p_ = at;
      if (!escape(saved, extra)) return false;
      from = p_;
    }
  }

  // At '\\'. Surrogates other than a well-formed pair are left to the parser. minify writes '"'
  // and '\\' as two bytes, \b \t \n \f \r as two, other control characters as six (\u00XX).
  bool escape(std::size_t& saved, std::size_t& extra) {
    const json_scan::Escape e = json_scan::read_escape(p_, end_);
    if (e.bytes == 0) return false;
    p_ += e.bytes;
    saved += static_cast<std::size_t>(e.bytes - e.utf8);
    if (e.cp < 0x20) {
      extra +=
          (e.cp == '\b' || e.cp == '\t' || e.cp == '\n' || e.cp == '\f' || e.cp == '\r') ? 1 : 5;
    } else if (e.cp == '"' || e.cp == '\\') {
      extra += 1;
    }
    return true;
  }

  // n, best_of, max_tokens, max_completion_tokens: null is "not set".
  bool cap(Mini& m, Cap& c) {
    if (*p_ == 'n') return literal("null", m);
    c.set = true;
    if (*p_ == '-' || is_digit(*p_)) return number(m, c.count);
    return value(1, m);
  }

  // One member of the request object.
  bool top_member(std::string_view key, Mini& m) {
    const std::uint32_t begin = offset();
    std::optional<BodyLayout::Span>* span = nullptr;
    bool ok = false;
    switch (top_field(key)) {
      case TopField::kOther: {
        // Priced as text when a string, an object or an array (parse_request's rule).
        const char c = *p_;
        if (c == '"' || c == '{' || c == '[') {
          r_->prompt_chars += key.size();
          ok = priced(1, m, r_->prompt_chars);
        } else {
          ok = value(1, m);
        }
        break;
      }
      case TopField::kNoText:
        ok = value(1, m);
        break;
      case TopField::kModel: {
        span = &layout_.model;
        saw_model_ = true;
        Str s;
        if (*p_ != '"' || !string(s) || s.escaped || s.bytes == 0 || s.bytes > 256) return false;
        r_->model.assign(s.raw);
        ok = true;
        break;
      }
      case TopField::kStream:
        if (*p_ == 't') {
          stream_ = true;
          ok = literal("true", m);
        } else if (*p_ == 'f') {
          ok = literal("false", m);
        } else {
          ok = *p_ == 'n' && literal("null", m);
        }
        break;
      case TopField::kStreamOptions:
        layout_.stream_options = true;
        if (*p_ == 'n') {
          ok = literal("null", m);
        } else if (*p_ == '{') {
          ok = object(2, m, [&](std::string_view k, Mini& mm) {
            if (same_text(k, "include_usage")) {
              if (*p_ == 't') {
                wants_usage_ = true;
                return literal("true", mm);
              }
              if (*p_ == 'f') {
                wants_usage_ = false;
                return literal("false", mm);
              }
            }
            return value(2, mm);
          });
        }
        break;
      case TopField::kMaxTokens:
        span = &layout_.max_tokens;
        ok = cap(m, max_tokens_);
        break;
      case TopField::kMaxCompletionTokens:
        span = &layout_.max_completion_tokens;
        ok = cap(m, max_completion_tokens_);
        break;
      case TopField::kN:
        ok = cap(m, n_);
        break;
      case TopField::kBestOf:
        ok = cap(m, best_of_);
        break;
      case TopField::kMessages:
        if (endpoint_ != Endpoint::kChat) {
          ok = value(1, m);
          break;
        }
        saw_text_ = true;
        ok = *p_ == '[' && messages(m);
        break;
      case TopField::kPrompt:
      case TopField::kInput: {
        const bool read = top_field(key) == TopField::kPrompt ? endpoint_ == Endpoint::kCompletions
                                                              : endpoint_ == Endpoint::kEmbeddings;
        if (!read) {
          ok = value(1, m);
          break;
        }
        saw_text_ = true;
        ok = content(1, m);
        break;
      }
    }
    if (!ok) return false;
    layout_.any_member = true;
    if (span) *span = BodyLayout::Span{begin, offset()};
    return true;
  }

  // At '[' of the chat messages: objects with a string role; the content's text and every
  // other member's JSON are priced.
  bool messages(Mini& m) {
    return array(2, m, [&](Mini& em) {
      if (*p_ != '{') return false;
      bool has_role = false;
      const bool ok = object(3, em, [&](std::string_view k, Mini& mm) {
        if (same_text(k, "content")) return content(3, mm);
        if (same_text(k, "role")) {
          has_role = *p_ == '"';
          return value(3, mm);
        }
        // Tool calls, tool_call_id, name, audio, ...
        r_->prompt_chars += k.size();
        return priced(3, mm, r_->prompt_chars);
      });
      if (!ok || !has_role) return false;
      ++r_->message_count;
      return true;
    });
  }

  // parse_request's add_content: a message's content or a prompt/input, of a container at
  // `depth`: a string, an array of content parts, of strings, or of token ids.
  bool content(int depth, Mini& m) {
    if (*p_ != '[') return priced(depth, m, r_->prompt_chars);  // a string by its bytes
    return array(depth + 1, m, [&](Mini& em) {
      const char c = *p_;
      if (c == '[') return content(depth + 1, em);  // a batch of token-id arrays
      if (c != '{') return priced(depth + 1, em, r_->prompt_chars);
      return part(depth + 2, em);
    });
  }

  // At '{' of a content part: its text, an image, or its JSON as text.
  bool part(int depth, Mini& m) {
    Mini own;
    std::string_view type;
    bool has_text = false;
    std::size_t text = 0;
    const bool ok = object(depth, own, [&](std::string_view k, Mini& mm) {
      if (*p_ == '"' && (same_text(k, "type") || same_text(k, "text"))) {
        Str s;
        if (!string(s)) return false;
        mm.size += s.mini;
        if (k.size() == 4 && k[1] == 'y') {
          if (s.escaped) return false;  // may spell a type once unescaped
          type = s.raw;
        } else {
          has_text = true;
          text = s.bytes;
        }
        return true;
      }
      return value(depth, mm);
    });
    if (!ok) return false;
    m.size += own.size;
    m.known = m.known && own.known;
    if ((same_text(type, "text") || same_text(type, "input_text")) && has_text) {
      r_->prompt_chars += text;
    } else if (same_text(type, "image_url")) {
      ++r_->images;
    } else {
      // Audio, files and parts not known here: every byte the provider reads, as text.
      if (!own.known) return false;
      r_->prompt_chars += own.size;
    }
    return true;
  }

  // parse_request's checks, in its order; any that would refuse the body leaves it to the parse.
  bool finish(LlmRequest& r, std::uint32_t close) {
    if (!saw_model_) return false;
    r.stream = stream_;
    if (r.stream && endpoint_ == Endpoint::kEmbeddings) return false;
    r.client_wants_usage = wants_usage_;
    for (const Cap* c : {&max_completion_tokens_, &max_tokens_}) {
      if (c->set) {
        if (!c->count.plain || c->count.value < 1) return false;
        r.max_tokens = c->count.value;
        break;
      }
    }
    for (const Cap* c : {&n_, &best_of_}) {
      if (c->set) {
        if (!c->count.plain || c->count.value < 1 || c->count.value > kMaxChoices) return false;
        if (endpoint_ == Endpoint::kEmbeddings) continue;
        r.choices = std::max(r.choices, c->count.value);
      }
    }
    if (!saw_text_) return false;  // messages, prompt or input is required
    if (endpoint_ == Endpoint::kChat && r.message_count == 0) return false;
    layout_.close = close;
    layout_.size = static_cast<std::uint32_t>(body_.size());
    layout_.recorded = true;
    r.layout = layout_;
    return true;
  }

  std::string_view body_;
  const char* p_;
  const char* end_;
  Endpoint endpoint_;
  LlmRequest* r_ = nullptr;
  std::uint64_t high_ = 0;  // nonzero: a string had a non-ASCII byte
  BodyLayout layout_;
  Cap max_tokens_, max_completion_tokens_, n_, best_of_;
  bool saw_model_ = false;
  bool saw_text_ = false;  // the endpoint's messages, prompt or input
  bool stream_ = false;
  bool wants_usage_ = false;
};

}  // namespace

std::optional<LlmRequest> scan_request(Endpoint endpoint, std::string_view body) {
  std::optional<LlmRequest> r(std::in_place);
  if (!scan_request(endpoint, body, *r)) return std::nullopt;
  return r;
}

bool scan_request(Endpoint endpoint, std::string_view body, LlmRequest& out) {
  if (body.empty() || body.size() > kMaxScanBytes) return false;
  return RequestScanner(endpoint, body).run(out);
}

}  // namespace bw::providers
