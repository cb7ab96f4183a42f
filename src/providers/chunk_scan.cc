#include "providers/chunk_scan.h"

#include <simdjson.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "common/same_text.h"
#include "providers/json_scan.h"

namespace bw::providers {
namespace {

// Larger events are rare (a whole answer in one event); the parse takes them.
constexpr std::size_t kMaxScanBytes = 64 * 1024;
// Far below the parser's own limit, so that nesting the parser refuses never reaches the scan.
constexpr int kMaxScanDepth = 32;

constexpr bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// Whether `v`, one JSON value as written, is null, "", [] or {} (whitespace inside allowed).
bool empty_json(std::string_view v) {
  if (v == "null" || v == "\"\"") return true;
  if (v.size() < 2 || (v.front() != '[' && v.front() != '{')) return false;
  return v.find_first_not_of(" \t\r\n", 1) == v.size() - 1;
}

// A strict JSON reader for the shape of a stream event. Every method returns false for anything
// it does not take, valid JSON or not: the caller then parses the event. What it takes is valid
// JSON that the parser accepts too, and what it reads is what the parser's lookups read.
class Scanner {
 public:
  // answer: a whole buffered answer, of which only "usage" is read (its "choices" are any value);
  // output_always: the usage's completion count must be there (every endpoint but embeddings).
  Scanner(std::string_view data, bool read_usage, bool answer = false, bool output_always = true)
      : data_(data),
        p_(data.data()),
        end_(p_ + data.size()),
        read_usage_(read_usage || answer),
        answer_(answer),
        output_always_(output_always) {}

  // resume: the length of a prefix of the data that an earlier scan took as far as the first
  // member it reads ("choices" or "usage"): the scan starts there, at that member's key, in the
  // state the prefix leaves (one object open, no member read). 0: from the start.
  bool event(ChunkInfo& info, std::size_t resume = 0) {
    bool saw_choices = false, saw_usage = false;
    auto on_member = [&](const Str& key) {
      // A key written with escapes may equal a key the answer reads; a duplicate is read by the
      // parser's rule: both are left to the parser.
      if (key.escaped) return false;
      const bool reads = key.raw == "choices" || key.raw == "usage";
      if (reads && checkpoint_ == 0) checkpoint_ = static_cast<std::size_t>(key_at_ - data_.data());
      if (!reads) return value(2);
      if (key.raw == "choices" && !answer_) {
        if (saw_choices) return false;
        saw_choices = true;
        if (*p_ == '[') return choices(2, info);
      } else if (key.raw == "usage") {
        // Null (the usual value on the other events) is not usage.
        if (saw_usage) return false;
        saw_usage = true;
        if (*p_ == '{') return read_usage_ && usage(2, info.usage);
      }
      return value(2);
    };
    bool ok = false;
    if (resume > 0) {
      p_ += resume;
      ok = members(1, on_member, true);
    } else {
      ws();
      if (p_ == end_ || *p_ != '{') return false;
      if (answer_) {
        // Only "usage" is read (on_member's reading of an answer), and where the first member
        // read begins is not wanted.
        ok = plain_members(1, [&](std::string_view key) {
          if (key == "usage") {
            if (saw_usage) return false;
            saw_usage = true;
            if (*p_ == '{') return usage(2, info.usage);
          }
          return value(2);
        });
      } else {
        ok = members(1, on_member);
      }
    }
    if (!ok) return false;
    // parse_chunk's rule: usage alone when "choices" is an empty array.
    if (info.usage.present) info.usage_only = choices_array_ && choices_ == 0;
    ws();
    if (p_ != end_) return false;
    // Non-ASCII bytes occur only inside strings here; the parser refuses invalid UTF-8.
    if (high_ != 0 && !simdjson::validate_utf8(data_.data(), data_.size())) {
      return false;
    }
    return true;
  }

  // The string whose opening quote is at offset `at` of the data: its length as the parser
  // reads it, and the offset one past its closing quote. For an event of a known shape
  // (scan_chunk_with_usage), of which only that string differs.
  bool string_at(std::size_t at, std::size_t& bytes, std::size_t& end) {
    p_ = data_.data() + at;
    Str s;
    if (*p_ != '"' || !string(s)) return false;
    bytes = s.bytes;
    end = static_cast<std::size_t>(p_ - data_.data());
    return true;
  }
  bool non_ascii() const { return high_ != 0; }

  // The values of an event that another event of the same bytes around them may have
  // otherwise and still be scanned the same way: where each one is and what it is. An integer
  // (non-negative, without a sign, fraction or exponent; `count`: the usage count it is, null
  // for any other), or the text of a string value of the members before the first one read
  // (head(); the id, the model).
  struct Hole {  // no initializers: a Holes is made per scanned event, and only n are read
    std::uint32_t at;
    std::uint32_t len;
    std::int64_t Usage::*count;
    bool string;
  };
  struct Holes {
    // A stream event has a few; a buffered answer (string holes too) a dozen or more.
    static constexpr std::size_t kMax = 32;
    std::array<Hole, kMax> at;
    std::size_t n = 0;
    bool overflow = false;  // more than kMax of them
  };
  void note_holes(Holes* to) { holes_ = to; }
  // The string values met inside the values skipped are noted as holes too (a buffered
  // answer's: its id, its text), not only the integers.
  void note_string_holes() { string_holes_ = true; }

  // Where event() would set checkpoint_: the opening quote of the first top-level key it reads
  // ("choices" or "usage"), the members before it scanned as event() scans them. 0 when there
  // is no such key or the scan refuses (then event() decides from the start).
  std::size_t head() {
    ws();
    if (p_ == end_ || *p_ != '{') return 0;
    ++p_;
    ws();
    for (;;) {
      if (p_ == end_ || *p_ != '"') return 0;
      const char* const at = p_;
      Str key;
      if (!string(key) || key.escaped) return 0;
      if (key.raw == "choices" || key.raw == "usage") {
        return static_cast<std::size_t>(at - data_.data());
      }
      ws();
      if (p_ == end_ || *p_ != ':') return 0;
      ++p_;
      ws();
      const char* const v = p_;
      if (p_ == end_ || !value(2)) return 0;
      if (*v == '"') note_hole(v + 1, p_ - 1, nullptr, true);
      ws();
      if (p_ == end_ || *p_ != ',') return 0;
      ++p_;
      ws();
    }
  }
  // The offsets of the text string a shape is made around: that of the only choice. False
  // when the event has no such string.
  bool shape_text(std::size_t& begin, std::size_t& end) const {
    if (choices_ != 1 || text_begin_ == nullptr) return false;
    begin = static_cast<std::size_t>(text_begin_ - data_.data());
    end = static_cast<std::size_t>(text_end_ - data_.data());
    return true;
  }

 private:
  struct Str {
    std::string_view raw;   // between the quotes, as written
    std::size_t bytes = 0;  // after unescaping: what the parser's string_view holds
    bool escaped = false;
  };

  void ws() { p_ = json_scan::skip_ws(p_, end_); }

  // Whether the next byte past any whitespace is c (p_ then at it): json_scan::at_byte.
  bool at(char c) { return json_scan::at_byte(p_, end_, c); }

  void note_hole(const char* from, const char* to, std::int64_t Usage::*count, bool string) {
    if (holes_ == nullptr) return;
    if (holes_->n == Holes::kMax) {
      holes_->overflow = true;
      return;
    }
    holes_->at[holes_->n++] = {static_cast<std::uint32_t>(from - data_.data()),
                               static_cast<std::uint32_t>(to - from), count, string};
  }

  // At '{'. on_member(key) reads the value, which starts at p_. resumed: p_ is already at a key
  // (event()'s resume).
  // kReadKey false: the keys are only skipped (on_member is given an empty one).
  template <bool kReadKey = true, typename OnMember>
  bool members(int depth, OnMember&& on_member, bool resumed = false) {
    if (depth > kMaxScanDepth) return false;
    if (!resumed) {
      ++p_;
      ws();
      if (p_ != end_ && *p_ == '}') {
        ++p_;
        return true;
      }
    }
    for (;;) {
      if (!at('"')) return false;
      if (depth == 1) key_at_ = p_;
      Str key;
      if constexpr (kReadKey) {
        if (!string(key)) return false;
      } else if (!skip_string()) {
        return false;
      }
      if (!at(':')) return false;
      ++p_;
      ws();
      if (p_ == end_ || !on_member(key)) return false;
      if (at(',')) {
        ++p_;
        continue;
      }
      if (p_ == end_ || *p_ != '}') return false;
      ++p_;
      return true;
    }
  }

  // members() for an object whose keys are read and refused when escaped (a key written with
  // escapes may equal one that is read): on_member(key) gets the key's text, p_ at the value.
  // The position is kept in a local between the members.
  template <typename OnMember>
  bool plain_members(int depth, OnMember&& on_member) {
    if (depth > kMaxScanDepth) return false;
    const char* p = p_ + 1;
    if (json_scan::at_byte(p, end_, '}')) {
      p_ = p + 1;
      return true;
    }
    for (;;) {
      if (!json_scan::at_byte(p, end_, '"')) return false;
      const char* const q = json_scan::plain_key_end(p, end_, high_);
      if (q == nullptr) return false;
      const std::string_view key(p + 1, static_cast<std::size_t>(q - p - 1));
      p = json_scan::member_value(q + 1, end_);
      if (p == nullptr) return false;
      p_ = p;
      if (!on_member(key)) return false;
      p = p_;
      const json_scan::Next next = json_scan::after_value(p, end_, '}');
      if (next == json_scan::Next::kMore) continue;
      p_ = p;
      return next == json_scan::Next::kClosed;
    }
  }

  // At '['. on_element() reads the element, which starts at p_.
  template <typename OnElement>
  bool elements(int depth, OnElement&& on_element) {
    if (depth > kMaxScanDepth) return false;
    ++p_;
    ws();
    if (p_ != end_ && *p_ == ']') {
      ++p_;
      return true;
    }
    for (;;) {
      if (p_ == end_ || !on_element()) return false;
      if (!at(',')) break;
      ++p_;
      ws();
    }
    if (p_ == end_ || *p_ != ']') return false;
    ++p_;
    return true;
  }

  // Any value, at its first byte (p_ != end_). Most are scalars, read here; a nested object or
  // array goes to the out-of-line, recursive container().
  bool value(int depth) {
    switch (*p_) {
      case '{':
      case '[':
        return container(depth);
      case '"': {
        const char* const start = p_;
        if (!skip_string()) return false;
        if (string_holes_) note_hole(start + 1, p_ - 1, nullptr, true);
        return true;
      }
      case 't':
        return literal("true");
      case 'f':
        return literal("false");
      case 'n':
        return literal("null");
      default:
        return number();
    }
  }

  [[gnu::noinline]] bool container(int depth) {
    // Without holes to note, nothing inside is read: the same checks, without recursion.
    if (holes_ == nullptr) return skip_container(depth);
    if (*p_ == '{') return members<false>(depth, [&](const Str&) { return value(depth + 1); });
    return elements(depth, [&] { return value(depth + 1); });
  }

  // At '{' or '[' of a value of a container at depth - 1 of which nothing is read: takes what
  // members<false>() and elements() with value() take (the same tokens, whitespace, strings,
  // numbers and depth bound), with the position in a local and the open containers in a bit
  // stack instead of a call per value.
  bool skip_container(int depth) {
    const char* p = p_;
    const char* const end = end_;
    std::uint64_t objects = 0;  // bit i: the container open at level i is an object
    int level = -1;
  open:  // at '{' or '['
    ++level;
    if (depth + level > kMaxScanDepth) return false;
    if (*p == '{') {
      objects |= std::uint64_t{1} << level;
      ++p;
      if (json_scan::at_byte(p, end, '}')) {
        ++p;
        goto closed;
      }
      goto key;
    }
    objects &= ~(std::uint64_t{1} << level);
    ++p;
    if (json_scan::at_byte(p, end, ']')) {
      ++p;
      goto closed;
    }
    goto element;
  key:
    if (!json_scan::at_byte(p, end, '"')) return false;
    p = skip_string_at(p);
    if (p == nullptr || (p = json_scan::member_value(p, end)) == nullptr) return false;
  element:
    if (!json_scan::at_value(p, end)) return false;
    switch (*p) {
      case '{':
      case '[':
        goto open;
      case '"':
        p = skip_string_at(p);
        break;
      case 't':
        p = literal_at(p, "true");
        break;
      case 'f':
        p = literal_at(p, "false");
        break;
      case 'n':
        p = literal_at(p, "null");
        break;
      default:
        p = number_at(p);
        break;
    }
    if (p == nullptr) return false;
  after_value:
    switch (json_scan::after_value(p, end, (objects >> level & 1) ? '}' : ']')) {
      case json_scan::Next::kMore:
        if (objects >> level & 1) goto key;
        goto element;
      case json_scan::Next::kBad:
        return false;
      case json_scan::Next::kClosed:
        break;
    }
  closed:
    if (level == 0) {
      p_ = p;
      return true;
    }
    --level;
    goto after_value;
  }

  bool literal(std::string_view word) {
    const char* const p = literal_at(p_, word);
    if (p == nullptr) return false;
    p_ = p;
    return true;
  }
  // The position past `word` at p, or null when another word is there.
  const char* literal_at(const char* p, std::string_view word) const {
    if (static_cast<std::size_t>(end_ - p) < word.size() ||
        std::memcmp(p, word.data(), word.size()) != 0) {
      return nullptr;
    }
    return p + word.size();
  }

  // Only numbers that any double or int64 reading takes: few digits, a short exponent.
  bool number() {
    const char* const p = number_at(p_);
    if (p == nullptr) return false;
    p_ = p;
    return true;
  }
  // The position past the number at p (p != end_), or null when number() refuses it; an
  // integer without a sign is noted as a hole.
  const char* number_at(const char* const start) {
    const char* p = start;
    if (*p == '-') ++p;
    const char* int_start = p;
    if (p == end_ || !is_digit(*p)) return nullptr;
    if (*p == '0') {
      ++p;
    } else {
      while (p != end_ && is_digit(*p)) ++p;
    }
    const auto int_digits = p - int_start;
    if (int_digits > 18) return nullptr;
    const char* const int_end = p;
    if (p != end_ && *p == '.') {
      ++p;
      const char* frac_start = p;
      while (p != end_ && is_digit(*p)) ++p;
      if (p == frac_start || int_digits + (p - frac_start) > 19) return nullptr;
    }
    if (p != end_ && (*p == 'e' || *p == 'E')) {
      ++p;
      if (p != end_ && (*p == '+' || *p == '-')) ++p;
      const char* exp_start = p;
      while (p != end_ && is_digit(*p)) ++p;
      if (p == exp_start || p - exp_start > 2) return nullptr;
    }
    if (p == int_end && int_start == start) note_hole(start, p, nullptr, false);
    return p;
  }

  // The first quote, backslash or control character at or after p (json_scan::find_special).
  const char* find_special(const char* p) { return json_scan::find_special(p, end_, high_); }

  // At '"'.
  bool string(Str& s) {
    const char* const start = p_ + 1;
    std::size_t saved = 0;  // bytes that escapes take beyond what they stand for
    for (const char* from = start;;) {
      const char* at = find_special(from);
      if (at >= end_) return false;  // unterminated
      if (*at == '"') {
        s.raw = std::string_view(start, static_cast<std::size_t>(at - start));
        s.bytes = s.raw.size() - saved;
        p_ = at + 1;
        return true;
      }
      if (*at != '\\') return false;  // a control character
      s.escaped = true;
      p_ = at;
      if (!escape(saved)) return false;
      from = p_;
    }
  }

  // At '"' of a string value that is only skipped: checked as string() checks it, searched with
  // the long search (the value may be a whole answer's text), its length not counted.
  bool skip_string() {
    const char* const p = skip_string_at(p_);
    if (p == nullptr) return false;
    p_ = p;
    return true;
  }
  // The position past the string whose opening quote is at p, or null when skip_string()
  // refuses it. A short plain string (a key, most values) is taken here, the others out of line.
  [[gnu::always_inline]] const char* skip_string_at(const char* p) {
    if (const char* at = json_scan::short_string_end(p + 1, end_, high_)) return at + 1;
    return skip_long_string_at(p);
  }
  [[gnu::noinline]] const char* skip_long_string_at(const char* p) {
    return json_scan::string_end_long(p + 1, end_, high_);
  }

  // At '\\'. Surrogates other than a well-formed pair are left to the parser.
  bool escape(std::size_t& saved) {
    const json_scan::Escape e = json_scan::read_escape(p_, end_);
    if (e.bytes == 0) return false;
    p_ += e.bytes;
    saved += static_cast<std::size_t>(e.bytes - e.utf8);
    return true;
  }

  // At '[' of the top-level "choices".
  bool choices(int depth, ChunkInfo& info) {
    choices_array_ = true;
    return elements(depth, [&] {
      ++choices_;
      if (*p_ == '{') return choice(depth + 1, info);
      return value(depth + 1);
    });
  }

  // One choice: the text is delta.content if that is a string, otherwise text if that is one.
  bool choice(int depth, ChunkInfo& info) {
    bool saw_delta = false, saw_text = false, output = false;
    std::optional<std::size_t> content, text;
    const bool ok = plain_members(depth, [&](std::string_view key) {
      if (key == "delta") {
        if (saw_delta) return false;
        saw_delta = true;
        if (*p_ == '{') return delta(depth + 1, content, output);
      } else if (key == "text") {
        if (saw_text) return false;
        saw_text = true;
        if (*p_ == '"') {
          Str s;
          if (!string(s)) return false;
          text = s.bytes;
          return true;
        }
      }
      return value(depth + 1);
    });
    if (!ok) return false;
    if (const auto n = content ? content : text) {
      info.text_chars += *n;
      info.has_text = info.has_text || *n > 0;
    }
    info.other_output = info.other_output || output;
    return true;
  }

  bool delta(int depth, std::optional<std::size_t>& content, bool& output) {
    bool saw_content = false;
    return plain_members(depth, [&](std::string_view key) {
      if (is_output_member(key)) {
        const char* start = p_;
        if (!value(depth + 1)) return false;
        output =
            output || !empty_json(std::string_view(start, static_cast<std::size_t>(p_ - start)));
        return true;
      }
      if (key == "content") {
        if (saw_content) return false;
        saw_content = true;
        if (*p_ == '"') {
          const char* begin = p_;
          Str s;
          if (!string(s)) return false;
          content = s.bytes;
          if (choices_ == 1) {
            text_begin_ = begin;
            text_end_ = p_;
          }
          return true;
        }
      }
      return value(depth + 1);
    });
  }

  // A token count as api::read_openai_usage takes it without a question: a non-negative integer.
  // Anything else (another type, a sign, a fraction or an exponent) is left to the parser.
  // The digits are read as they are checked: at most 18 of them, which any int64 holds. A
  // leading zero ends the number, as JSON's grammar says (what follows it is then refused).
  bool count(Usage& u, std::int64_t Usage::*field) {
    const char* p = p_;
    if (!is_digit(*p)) return false;
    std::int64_t v = 0;
    if (*p == '0') {
      ++p;
    } else {
      int digits = 0;
      while (p != end_ && is_digit(*p)) {
        if (++digits > 18) return false;
        v = v * 10 + (*p - '0');
        ++p;
      }
    }
    if (p != end_ && (*p == '.' || *p == 'e' || *p == 'E')) return false;
    u.*field = v;
    note_hole(p_, p, field, false);
    p_ = p;
    return true;
  }

  // At '{' of the top-level "usage": what api::read_openai_usage reads of it with the chat names.
  // A member it reads that comes twice is left to the parser (whose lookup takes the last).
  bool usage(int depth, Usage& u) {
    bool saw_prompt = false, saw_completion = false, saw_in_details = false,
         saw_out_details = false;
    const bool ok = plain_members(depth, [&](std::string_view key) {
      if (key == "prompt_tokens") {
        if (saw_prompt) return false;
        saw_prompt = true;
        return count(u, &Usage::prompt_tokens);
      }
      if (key == "completion_tokens") {
        if (saw_completion) return false;
        saw_completion = true;
        return count(u, &Usage::completion_tokens);
      }
      if (key == "prompt_tokens_details") {
        if (saw_in_details) return false;
        saw_in_details = true;
        if (*p_ == '{') return details(depth + 1, "cached_tokens", u, &Usage::cached_tokens);
      } else if (key == "completion_tokens_details") {
        if (saw_out_details) return false;
        saw_out_details = true;
        if (*p_ == '{') {
          return details(depth + 1, "reasoning_tokens", u, &Usage::reasoning_tokens);
        }
      }
      // A details member that is not an object reads as 0 there too.
      return value(depth + 1);
    });
    // Without the counts the provider always sends the usage is unreadable: the parser's reader
    // says so.
    if (!ok || !saw_prompt || (output_always_ && !saw_completion)) return false;
    u.present = true;
    return true;
  }

  // A details object: `name` read as a count (missing: 0); anything else there to the parser.
  bool details(int depth, std::string_view name, Usage& u, std::int64_t Usage::*field) {
    bool saw = false;
    return plain_members(depth, [&](std::string_view key) {
      if (key == name) {
        if (saw) return false;
        saw = true;
        return count(u, field);
      }
      return value(depth + 1);
    });
  }

  std::string_view data_;
  const char* p_;
  // The first choice's delta.content string, from its opening quote to one past its closing
  // one (null: none).
  const char* text_begin_ = nullptr;
  const char* text_end_ = nullptr;
  const char* key_at_ = nullptr;  // the opening quote of the top-level key being read
  const char* end_;
  std::uint64_t high_ = 0;  // nonzero: a string had a non-ASCII byte
  Holes* holes_ = nullptr;
  bool read_usage_ = false;  // a usage object is read here, not left to the parse
  bool answer_ = false;      // a buffered answer: only its usage is read
  bool string_holes_ = false;

 public:
  // Where the first top-level member the scan reads began (0: none was met).
  std::size_t checkpoint_ = 0;

 private:
  bool output_always_ = true;   // the usage must have a completion count
  bool choices_array_ = false;  // the top-level "choices" is an array
  std::size_t choices_ = 0;     // of that many elements
};

}  // namespace

namespace {
std::optional<ChunkInfo> scan(std::string_view data, bool read_usage) {
  if (data.empty() || data.size() > kMaxScanBytes) return std::nullopt;
  ChunkInfo info;
  if (!Scanner(data, read_usage).event(info)) return std::nullopt;
  return info;
}
}  // namespace

std::optional<ChunkInfo> scan_chunk(std::string_view data) {
  return scan(data, false);
}

std::optional<ChunkInfo> scan_chunk_with_usage(std::string_view data) {
  return scan(data, true);
}

namespace {

// After this many events in a row that do not fit it, a stream's shape is no longer tried.
constexpr int kMaxShapeMisses = 8;

// The answer for an event made of the shape's head and tail around one string: the shape's,
// with that string's text. The scan of the shape's event went through the same bytes up to the
// string, in the same state, and on from it through the same bytes; only the string differs,
// whose length the scan reads the same way here.
std::optional<ChunkInfo> fit_shape(std::string_view data, const ChunkPrefix& prefix) {
  const std::string& head = prefix.shape_head;
  const std::string& tail = prefix.shape_tail;
  if (data.size() < head.size() + tail.size() + 2 ||
      std::memcmp(data.data(), head.data(), head.size()) != 0) {
    return std::nullopt;
  }
  Scanner scanner(data, true);
  std::size_t bytes = 0, end = 0;
  if (!scanner.string_at(head.size(), bytes, end) || data.size() - end != tail.size() ||
      std::memcmp(data.data() + end, tail.data(), tail.size()) != 0) {
    return std::nullopt;
  }
  // The head and the tail are ASCII: the string decides alone whether the event is UTF-8.
  if (scanner.non_ascii() && !simdjson::validate_utf8(data.data(), data.size())) {
    return std::nullopt;
  }
  ChunkInfo info = prefix.shape_info;
  info.text_chars = bytes;
  info.has_text = bytes > 0;
  return info;
}

// Whether the shape's events can be taken from a stream's bytes by next_shaped_event.
bool one_line(const ChunkPrefix& prefix) {
  const std::string& head = prefix.shape_head;
  const std::string& tail = prefix.shape_tail;
  return !tail.empty() && tail.back() == '}' && head.find('\n') == std::string::npos &&
         tail.find('\n') == std::string::npos;
}

// Keeps the shape of a scanned event whose only text is one delta.content string.
void learn_shape(std::string_view data, const Scanner& scanner, const ChunkInfo& info,
                 ChunkPrefix& prefix) {
  std::size_t begin = 0, end = 0;
  if (!scanner.shape_text(begin, end) || scanner.non_ascii() ||
      begin > 2 * ChunkPrefix::kMaxBytes || data.size() - end > ChunkPrefix::kMaxBytes) {
    return;
  }
  prefix.shape_head.assign(data.data(), begin);
  prefix.shape_tail.assign(data.data() + end, data.size() - end);
  prefix.shape_info = info;
  prefix.shape_one_line = one_line(prefix);
}

// An event's bytes (or the start of them) with holes where another event may have other values
// and still be scanned the same way (Scanner::Hole).
struct Skeleton {
  std::string bytes;
  std::array<Scanner::Hole, Scanner::Holes::kMax> holes;  // offsets into `bytes`
  std::size_t n = 0;

  // Keeps data[at..at + size) and the holes that a scan of `data` noted there.
  void assign(std::string_view data, std::size_t at, std::size_t size, const Scanner::Holes& h) {
    bytes.assign(data.data() + at, size);
    n = 0;
    for (std::size_t i = 0; i < h.n; ++i) {
      if (h.at[i].at < at || h.at[i].at + h.at[i].len > at + size) continue;
      holes[n] = h.at[i];
      holes[n++].at -= static_cast<std::uint32_t>(at);
    }
  }

  // Whether `data` is these bytes with other values in the holes: all of it (`whole`), or its
  // start, whose length is then `matched`. An integer is 1 to 18 digits without a leading zero
  // (what follows one in `bytes` is not a digit, so a longer one does not match); a string's
  // text is plain ASCII without an escape, or with `high` any text the scan skips alike
  // (json_scan::string_end_long: escapes, non-ASCII bytes noted in *high). `values` gets the
  // integers, in the holes' order.
  bool fits(std::string_view data, bool whole,
            std::array<std::int64_t, Scanner::Holes::kMax>& values, std::size_t& matched,
            std::uint64_t* high = nullptr) const {
    if (bytes.empty()) return false;
    const char* const t = bytes.data();
    const char* p = data.data();
    const char* const end = p + data.size();
    std::size_t from = 0;  // in `bytes`
    for (std::size_t i = 0; i < n; ++i) {
      const auto& hole = holes[i];
      const std::size_t same = hole.at - from;
      // A value whose bytes are not read (a string, an integer that is not a count) is most
      // often the one here (a model's name, a role, an index): the bytes as far as the one
      // after it (a string's closing quote, the byte after an integer, which is no digit) are
      // compared at once, and then it is that value.
      if (hole.count == nullptr && hole.at + hole.len < bytes.size()) {
        const std::size_t with = same + hole.len + 1;
        if (static_cast<std::size_t>(end - p) >= with && same_bytes(p, t + from, with)) {
          p += same + hole.len;
          from = hole.at + hole.len;
          continue;
        }
      }
      if (static_cast<std::size_t>(end - p) <= same || !same_bytes(p, t + from, same)) {
        return false;
      }
      p += same;
      from = hole.at + hole.len;
      if (hole.string) {
        if (high != nullptr) {
          p = json_scan::string_end_long(p, end, *high);
          if (p == nullptr) return false;
          --p;  // at the closing quote, where the bytes go on
          continue;
        }
        std::uint64_t plain = 0;
        p = json_scan::find_special(p, end, plain);
        if (p == end || *p != '"' || plain != 0) return false;
        continue;
      }
      std::int64_t v = 0;
      if (!is_digit(*p)) return false;
      if (*p == '0') {
        ++p;
      } else {
        int digits = 0;
        for (; p != end && is_digit(*p); ++p) {
          if (++digits > 18) return false;
          v = v * 10 + (*p - '0');
        }
      }
      values[i] = v;
    }
    const std::size_t left = bytes.size() - from;
    if (static_cast<std::size_t>(end - p) < left + (whole ? 0 : 1) ||
        (whole && static_cast<std::size_t>(end - p) != left) || !same_bytes(p, t + from, left)) {
      return false;
    }
    matched = static_cast<std::size_t>(p - data.data()) + left;
    return true;
  }
};

// What the streams of one thread share. After its prefix (id, created, model: different in
// every stream), an event that carries no text, usage or other output (the role event that
// opens a stream, the finish event that ends a choice) is the same bytes in every stream of a
// model, and a text event is the same bytes around its text. The scan of what follows a prefix
// is a function of those bytes alone (scan_chunk_with_usage's resume), so the answer found for
// them once stands for every stream: a stream's first event is scanned as far as its prefix,
// and its first text event fits the shape that an earlier stream's text event had.
// Few entries, replaced in turn: streams of a few models at once on one thread.
struct Recall {
  static constexpr std::size_t kEntries = 4;
  struct Framing {
    std::string rest;  // the event from its checkpoint on
    ChunkInfo info;
  };
  struct Shape {
    std::string mid;  // from the checkpoint to the text string's opening quote
    std::string tail;
    ChunkInfo info;
  };
  // A stream's prefix (what its first event is scanned as far as): the same bytes in every
  // stream of a model but for the id and such values (Scanner::head()'s holes).
  std::array<Skeleton, kEntries> prefixes;
  // An event with usage (the last one of a stream, with its counts): the same bytes in every
  // stream of a model but for the integers, which are read from each event.
  struct Counted {
    Skeleton rest;  // the event from its checkpoint on
    ChunkInfo info;
  };
  std::array<Framing, kEntries> framing;
  std::array<Shape, kEntries> shapes;
  std::array<Counted, kEntries> counted;
  std::size_t next_framing = 0;
  std::size_t next_shape = 0;
  std::size_t next_counted = 0;
  std::size_t next_prefix = 0;
};

Recall& recall() {
  thread_local Recall r;
  return r;
}

// The answer recalled for `rest` (an event after its prefix), if an earlier stream had it.
const ChunkInfo* recall_framing(std::string_view rest) {
  for (const auto& f : recall().framing) {
    if (f.rest.size() == rest.size() && !rest.empty() &&
        std::memcmp(f.rest.data(), rest.data(), rest.size()) == 0) {
      return &f.info;
    }
  }
  return nullptr;
}

// The answer recalled for `rest` (an event after its prefix) when it is the bytes of an earlier
// stream's usage event with other integers where that one had integers: the scan went through
// the same bytes in the same state, and an integer of the same kind (non-negative, 1 to 18
// digits, no leading zero) takes the same path through it; only the counts it read differ,
// which are read here from the integers in their places.
std::optional<ChunkInfo> recall_counted(std::string_view rest) {
  for (const auto& c : recall().counted) {
    std::array<std::int64_t, Scanner::Holes::kMax> values;
    std::size_t matched = 0;
    if (!c.rest.fits(rest, true, values, matched)) continue;
    ChunkInfo info = c.info;
    for (std::size_t i = 0; i < c.rest.n; ++i) {
      if (c.rest.holes[i].count != nullptr) info.usage.*(c.rest.holes[i].count) = values[i];
    }
    return info;
  }
  return std::nullopt;
}

// The length of `data`'s prefix when it begins with an earlier stream's prefix with other
// values in its holes, followed by the key that ends a prefix (Scanner::head() would find the
// same end there: the same keys, values it takes the same way, then that key); 0 otherwise.
std::size_t recall_prefix(std::string_view data) {
  constexpr std::string_view kChoices = "\"choices\"", kUsage = "\"usage\"";
  for (const auto& sk : recall().prefixes) {
    std::array<std::int64_t, Scanner::Holes::kMax> values;
    std::size_t matched = 0;
    if (!sk.fits(data, false, values, matched)) continue;
    const std::string_view next = data.substr(matched);
    if (next.starts_with(kChoices) || next.starts_with(kUsage)) return matched;
  }
  return 0;
}

// The answer for `data`, whose first `known` bytes are its stream's prefix, when what follows
// them fits the shape of an earlier stream's text event (fit_shape's reasoning, with the
// prefix and the shape's middle as the head); the stream takes that shape as its own.
std::optional<ChunkInfo> recall_shape(std::string_view data, ChunkPrefix& prefix) {
  const std::size_t known = prefix.bytes.size();
  for (const auto& sh : recall().shapes) {
    const std::size_t head = known + sh.mid.size();
    if (sh.mid.empty() || data.size() < head + sh.tail.size() + 2 ||
        std::memcmp(data.data() + known, sh.mid.data(), sh.mid.size()) != 0) {
      continue;
    }
    Scanner scanner(data, true);
    std::size_t bytes = 0, end = 0;
    if (!scanner.string_at(head, bytes, end) || data.size() - end != sh.tail.size() ||
        std::memcmp(data.data() + end, sh.tail.data(), sh.tail.size()) != 0) {
      continue;
    }
    if (scanner.non_ascii() && !simdjson::validate_utf8(data.data(), data.size())) {
      return std::nullopt;
    }
    prefix.shape_head.assign(data.data(), head);
    prefix.shape_tail.assign(sh.tail);
    prefix.shape_info = sh.info;
    prefix.shape_one_line = one_line(prefix);
    ChunkInfo info = sh.info;
    info.text_chars = bytes;
    info.has_text = bytes > 0;
    return info;
  }
  return std::nullopt;
}

// Keeps what a scanned event (ASCII, its prefix `at` bytes) tells later streams. `integers`:
// the holes that the scan noted from offset `at` on.
void remember(std::string_view data, std::size_t at, const Scanner& scanner, const ChunkInfo& info,
              bool shapes, const Scanner::Holes& integers) {
  if (at == 0 || scanner.non_ascii() || data.size() - at > ChunkPrefix::kMaxBytes) return;
  auto& r = recall();
  const std::string_view rest = data.substr(at);
  if (info.usage.present && !integers.overflow && integers.n > 0) {
    auto& c = r.counted[r.next_counted];
    r.next_counted = (r.next_counted + 1) % Recall::kEntries;
    c.rest.assign(data, at, rest.size(), integers);
    c.info = info;
  }
  if (!info.has_text && !info.other_output && !info.usage.present && !info.done) {
    if (recall_framing(rest) != nullptr) return;
    auto& f = r.framing[r.next_framing];
    r.next_framing = (r.next_framing + 1) % Recall::kEntries;
    f.rest.assign(rest);
    f.info = info;
    return;
  }
  std::size_t begin = 0, end = 0;
  if (!shapes || !scanner.shape_text(begin, end) || begin < at) return;
  const std::string_view mid = data.substr(at, begin - at);
  const std::string_view tail = data.substr(end);
  for (const auto& sh : r.shapes) {
    if (sh.mid == mid && sh.tail == tail) return;
  }
  auto& sh = r.shapes[r.next_shape];
  r.next_shape = (r.next_shape + 1) % Recall::kEntries;
  sh.mid.assign(mid);
  sh.tail.assign(tail);
  sh.info = info;
}

}  // namespace

std::optional<ChunkInfo> scan_chunk_with_usage(std::string_view data, ChunkPrefix& prefix) {
  if (data.empty() || data.size() > kMaxScanBytes) return std::nullopt;
  const bool shaped = !prefix.shape_head.empty() && prefix.shape_misses < kMaxShapeMisses;
  if (shaped) {
    if (auto fit = fit_shape(data, prefix)) {
      prefix.shape_misses = 0;
      return fit;
    }
    ++prefix.shape_misses;
  }
  const std::string& known = prefix.bytes;
  if (known.empty()) {
    // The stream's first event: its prefix is scanned alone (or found to be an earlier
    // stream's with other values), then the rest as below. A prefix is kept when it is plain
    // ASCII (so that the rest of an event decides alone whether the event needs a UTF-8 check).
    if (const std::size_t at = recall_prefix(data); at > 0 && at <= ChunkPrefix::kMaxBytes) {
      prefix.bytes.assign(data.data(), at);
    } else {
      Scanner head(data, true);
      Scanner::Holes holes;
      head.note_holes(&holes);
      const std::size_t end = head.head();
      if (end > 0 && end <= ChunkPrefix::kMaxBytes && !head.non_ascii()) {
        prefix.bytes.assign(data.data(), end);
        if (!holes.overflow) {
          auto& r = recall();
          r.prefixes[r.next_prefix].assign(data, 0, end, holes);
          r.next_prefix = (r.next_prefix + 1) % Recall::kEntries;
        }
      }
    }
  }
  const bool resume = !known.empty() && data.size() > known.size() &&
                      std::memcmp(data.data(), known.data(), known.size()) == 0;
  if (resume) {
    const std::string_view rest = data.substr(known.size());
    if (const ChunkInfo* hit = recall_framing(rest)) return *hit;
    if (auto counted = recall_counted(rest)) return counted;
    if (prefix.shape_misses < kMaxShapeMisses) {
      if (auto fit = recall_shape(data, prefix)) return fit;
    }
  }
  ChunkInfo info;
  Scanner scanner(data, true);
  Scanner::Holes integers;
  if (resume) scanner.note_holes(&integers);
  if (!scanner.event(info, resume ? known.size() : 0)) return std::nullopt;
  if (resume) {
    remember(data, known.size(), scanner, info, prefix.shape_misses < kMaxShapeMisses, integers);
  } else if (const std::size_t at = scanner.checkpoint_; at > 0 && at <= ChunkPrefix::kMaxBytes) {
    // Another start than the stream's first: kept when it is plain ASCII, as above.
    bool ascii = true;
    for (std::size_t i = 0; i < at; ++i)
      ascii = ascii && static_cast<unsigned char>(data[i]) < 0x80;
    if (ascii) {
      prefix.bytes.assign(data.data(), at);
    }
  }
  if (prefix.shape_misses < kMaxShapeMisses) learn_shape(data, scanner, info, prefix);
  return info;
}

bool next_shaped_event(std::string_view& rest, std::string_view& event, std::string_view& data,
                       ChunkInfo& info, ChunkPrefix& prefix) {
  // "data: " + head + string + tail + "\n\n". Neither the head nor the tail has a line end, and
  // the string cannot (a control character ends the scan): the event is one line of data that
  // ends at its first "\n\n", with no '\r' before it to be taken off, as next_event_data reads.
  constexpr std::string_view kField = "data: ";
  if (!prefix.shape_one_line || prefix.shape_misses >= kMaxShapeMisses) return false;
  const std::string& head = prefix.shape_head;
  const std::string& tail = prefix.shape_tail;
  if (rest.size() < kField.size() + head.size() + tail.size() + 4 ||
      std::memcmp(rest.data(), kField.data(), kField.size()) != 0 ||
      std::memcmp(rest.data() + kField.size(), head.data(), head.size()) != 0) {
    return false;
  }
  // Scanned as far as the string's end: the bytes after the data are never read as JSON.
  const std::string_view line = rest.substr(kField.size());
  Scanner scanner(line, true);
  std::size_t bytes = 0, end = 0;
  if (!scanner.string_at(head.size(), bytes, end) || line.size() - end < tail.size() + 2 ||
      std::memcmp(line.data() + end, tail.data(), tail.size()) != 0 ||
      line[end + tail.size()] != '\n' || line[end + tail.size() + 1] != '\n') {
    return false;
  }
  const std::string_view d = line.substr(0, end + tail.size());
  if (d.size() > kMaxScanBytes ||
      (scanner.non_ascii() && !simdjson::validate_utf8(d.data(), d.size()))) {
    return false;
  }
  data = d;
  event = rest.substr(0, kField.size() + d.size() + 2);
  rest.remove_prefix(event.size());
  info = prefix.shape_info;
  info.text_chars = bytes;
  info.has_text = bytes > 0;
  prefix.shape_misses = 0;
  return true;
}

namespace {

// The buffered answers of one thread. A provider's answers to one model are the same bytes
// but for their values: the id, the time, the text, the counts. The scan of an answer is a
// function of its bytes, and takes any string it skips (escaped or not, any text) and any
// integer of one kind (non-negative, 1 to 18 digits, no leading zero) the same way: an answer
// that is an earlier one's bytes with other such values in those places is scanned the same
// way through the same bytes, and only the counts it reads differ, which are read from it
// (Skeleton::fits). A few shapes, replaced in turn; one learned on a scan that missed, until
// many misses in a row (answers of no common shape), then on one miss in kLearnEvery.
struct AnswerRecall {
  static constexpr std::size_t kEntries = 4;
  static constexpr std::size_t kMaxBytes = 8 * 1024;
  static constexpr std::uint32_t kLearnEvery = 16;
  struct Entry {
    Skeleton skeleton;
    Usage usage;
    bool output_always = true;  // learned for an endpoint whose usage has a completion count
  };
  std::array<Entry, kEntries> entries;
  std::size_t next = 0;
  std::uint32_t misses = 0;  // in a row
  std::size_t recalled = 0;
};

AnswerRecall& answer_recall() {
  thread_local AnswerRecall r;
  return r;
}

// The usage of `body` as the scan reads it, from a recalled shape; nullopt when none fits (then
// the scan decides).
std::optional<Usage> recall_answer(std::string_view body, bool output_always) {
  auto& r = answer_recall();
  for (const auto& e : r.entries) {
    std::array<std::int64_t, Scanner::Holes::kMax> values;
    std::size_t matched = 0;
    std::uint64_t high = 0;
    if (e.output_always != output_always || !e.skeleton.fits(body, true, values, matched, &high)) {
      continue;
    }
    // The shape is ASCII: the values decide whether the answer needs the UTF-8 check, which
    // the scan then gives.
    if (high != 0 && !simdjson::validate_utf8(body.data(), body.size())) return std::nullopt;
    Usage u = e.usage;
    for (std::size_t i = 0; i < e.skeleton.n; ++i) {
      if (e.skeleton.holes[i].count != nullptr) u.*(e.skeleton.holes[i].count) = values[i];
    }
    r.misses = 0;
    ++r.recalled;
    return u;
  }
  return std::nullopt;
}

std::optional<Usage> scan_answer(std::string_view body, Endpoint endpoint) {
  if (body.empty() || body.size() > kMaxScanBytes) return std::nullopt;
  const bool output_always = endpoint != Endpoint::kEmbeddings;
  if (auto u = recall_answer(body, output_always)) return u;
  auto& r = answer_recall();
  const bool learn =
      body.size() <= AnswerRecall::kMaxBytes &&
      (r.misses < AnswerRecall::kLearnEvery || r.misses % AnswerRecall::kLearnEvery == 0);
  ++r.misses;
  ChunkInfo info;
  Scanner scanner(body, true, true, output_always);
  Scanner::Holes holes;
  if (learn) {
    scanner.note_holes(&holes);
    scanner.note_string_holes();
  }
  if (!scanner.event(info)) return std::nullopt;
  if (learn && !holes.overflow && !scanner.non_ascii()) {
    auto& e = r.entries[r.next];
    r.next = (r.next + 1) % AnswerRecall::kEntries;
    e.skeleton.assign(body, 0, body.size(), holes);
    e.usage = info.usage;
    e.output_always = output_always;
  }
  return info.usage;
}

}  // namespace

std::optional<Usage> scan_answer_usage(std::string_view body, Endpoint endpoint) {
  auto usage = scan_answer(body, endpoint);
  // No output tokens: the parse decides whether the answer generated output all the same (then
  // the usage is not trusted).
  if (usage && endpoint != Endpoint::kEmbeddings && usage->usable() &&
      usage->completion_tokens == 0) {
    return std::nullopt;
  }
  return usage;
}

std::size_t answers_recalled() {
  return answer_recall().recalled;
}

}  // namespace bw::providers
