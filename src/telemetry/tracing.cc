#include "telemetry/tracing.h"

#include <charconv>
#include <cmath>
#include <random>

#include "common/json_util.h"

namespace bw::telemetry {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // the W3C format is lower-case only
}

// Reads exactly 2*N lower-case hex digits into `out`.
template <std::size_t N>
bool read_hex(std::string_view s, std::array<std::uint8_t, N>& out) {
  if (s.size() != 2 * N) return false;
  for (std::size_t i = 0; i < N; ++i) {
    int hi = hex_value(s[2 * i]);
    int lo = hex_value(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return true;
}

template <std::size_t N>
bool all_zero(const std::array<std::uint8_t, N>& a) {
  for (auto b : a) {
    if (b != 0) return false;
  }
  return true;
}

template <std::size_t N>
std::string hex(const std::array<std::uint8_t, N>& a) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * N, '0');
  for (std::size_t i = 0; i < N; ++i) {
    out[2 * i] = kDigits[a[i] >> 4];
    out[2 * i + 1] = kDigits[a[i] & 0xf];
  }
  return out;
}

std::mt19937_64& rng() {
  thread_local std::mt19937_64 gen{[] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }()};
  return gen;
}

template <std::size_t N>
void fill_random(std::array<std::uint8_t, N>& a) {
  do {
    for (std::size_t i = 0; i < N; i += 8) {
      std::uint64_t r = rng()();
      for (std::size_t j = 0; j < 8 && i + j < N; ++j) {
        a[i + j] = static_cast<std::uint8_t>(r >> (8 * j));
      }
    }
  } while (all_zero(a));
}

void append_value(std::string& out, const AttrValue& v) {
  struct Visitor {
    std::string& out;
    void operator()(const std::string& s) const {
      out += "{\"stringValue\":";
      append_json_string(out, s);
      out += '}';
    }
    void operator()(std::int64_t i) const {
      out += "{\"intValue\":\"";
      out += std::to_string(i);
      out += "\"}";
    }
    void operator()(double d) const {
      if (!std::isfinite(d)) {
        out += "{\"stringValue\":\"NaN\"}";
        return;
      }
      char buf[32];
      auto r = std::to_chars(buf, buf + sizeof buf, d);
      out += "{\"doubleValue\":";
      out.append(buf, r.ptr);
      out += '}';
    }
    void operator()(bool b) const { out += b ? "{\"boolValue\":true}" : "{\"boolValue\":false}"; }
    void operator()(const std::vector<std::string>& list) const {
      out += "{\"arrayValue\":{\"values\":[";
      for (std::size_t i = 0; i < list.size(); ++i) {
        if (i) out += ',';
        (*this)(list[i]);
      }
      out += "]}}";
    }
  };
  std::visit(Visitor{out}, v);
}

void append_attributes(std::string& out, const std::vector<Attribute>& attrs) {
  out += '[';
  for (std::size_t i = 0; i < attrs.size(); ++i) {
    if (i) out += ',';
    out += "{\"key\":";
    append_json_string(out, attrs[i].key);
    out += ",\"value\":";
    append_value(out, attrs[i].value);
    out += '}';
  }
  out += ']';
}

}  // namespace

std::optional<TraceContext> parse_traceparent(std::string_view v) {
  // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2 = 55 characters.
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return std::nullopt;
  std::array<std::uint8_t, 1> version{};
  std::array<std::uint8_t, 1> flags{};
  if (!read_hex(v.substr(0, 2), version) || version[0] == 0xff) return std::nullopt;
  if (version[0] == 0 && v.size() != 55) return std::nullopt;
  if (version[0] != 0 && v.size() > 55 && v[55] != '-') return std::nullopt;
  TraceContext ctx;
  if (!read_hex(v.substr(3, 32), ctx.trace_id) || !read_hex(v.substr(36, 16), ctx.parent_span_id) ||
      !read_hex(v.substr(53, 2), flags)) {
    return std::nullopt;
  }
  if (all_zero(ctx.trace_id) || all_zero(ctx.parent_span_id)) return std::nullopt;
  ctx.sampled = (flags[0] & 0x01) != 0;
  return ctx;
}

std::string format_traceparent(const TraceId& trace, const SpanId& span, bool sampled) {
  std::string out;
  out.reserve(55);
  out += "00-";
  out += hex(trace);
  out += '-';
  out += hex(span);
  out += sampled ? "-01" : "-00";
  return out;
}

std::optional<TraceContext> parse_b3(std::string_view v) {
  auto dash = v.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  std::string_view trace = v.substr(0, dash);
  std::string_view rest = v.substr(dash + 1);
  auto dash2 = rest.find('-');
  std::string_view span = rest.substr(0, dash2);
  std::string_view sampling =
      dash2 == std::string_view::npos ? std::string_view{} : rest.substr(dash2 + 1, 1);
  TraceContext ctx;
  if (trace.size() == 16) {
    std::array<std::uint8_t, 8> low{};
    if (!read_hex(trace, low)) return std::nullopt;
    std::copy(low.begin(), low.end(), ctx.trace_id.begin() + 8);
  } else if (!read_hex(trace, ctx.trace_id)) {
    return std::nullopt;
  }
  if (!read_hex(span, ctx.parent_span_id)) return std::nullopt;
  if (all_zero(ctx.trace_id) || all_zero(ctx.parent_span_id)) return std::nullopt;
  // An absent sampling state defers the decision to us; "d" (debug) means sample.
  ctx.deferred = sampling.empty();
  ctx.sampled = sampling == "1" || sampling == "d";
  return ctx;
}

bool valid_tracestate(std::string_view v) {
  if (v.empty() || v.size() > 512) return false;
  int members = 0;
  std::size_t pos = 0;
  while (pos <= v.size()) {
    auto comma = v.find(',', pos);
    std::string_view m = v.substr(pos, comma == std::string_view::npos ? v.npos : comma - pos);
    while (!m.empty() && (m.front() == ' ' || m.front() == '\t')) m.remove_prefix(1);
    while (!m.empty() && (m.back() == ' ' || m.back() == '\t')) m.remove_suffix(1);
    if (!m.empty()) {
      auto eq = m.find('=');
      if (eq == 0 || eq == std::string_view::npos || eq + 1 == m.size()) return false;
      for (char c : m) {
        if (c < 0x20 || c > 0x7e) return false;
      }
      if (++members > 32) return false;
    }
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return members > 0;
}

std::string to_hex(const TraceId& id) {
  return hex(id);
}
std::string to_hex(const SpanId& id) {
  return hex(id);
}
TraceId new_trace_id() {
  TraceId id;
  fill_random(id);
  return id;
}
SpanId new_span_id() {
  SpanId id;
  fill_random(id);
  return id;
}
bool is_zero(const SpanId& id) {
  return all_zero(id);
}

void Span::set(std::string_view key, AttrValue value) {
  for (auto& a : attributes) {
    if (a.key == key) {
      a.value = std::move(value);
      return;
    }
  }
  attributes.push_back(Attribute{std::string(key), std::move(value)});
}

const AttrValue* Span::find(std::string_view key) const {
  for (const auto& a : attributes) {
    if (a.key == key) return &a.value;
  }
  return nullptr;
}

bool head_sample(const SamplingConfig& cfg, const std::optional<TraceContext>& parent,
                 const TraceId& trace_id) {
  auto by_ratio = [&] {
    if (cfg.ratio >= 1.0) return true;
    if (cfg.ratio <= 0.0) return false;
    std::uint64_t low = 0;
    for (std::size_t i = 8; i < 16; ++i) low = (low << 8) | trace_id[i];
    // ratio * 2^64 without overflow: compare in long double.
    return static_cast<long double>(low) <
           static_cast<long double>(cfg.ratio) * 18446744073709551616.0L;
  };
  switch (cfg.mode) {
    case SamplingConfig::Mode::kAlways:
      return true;
    case SamplingConfig::Mode::kNever:
      return false;
    case SamplingConfig::Mode::kRatio:
      return by_ratio();
    case SamplingConfig::Mode::kParentBased:
      return parent && !parent->deferred ? parent->sampled : by_ratio();
  }
  return false;
}

bool keep_trace(const SamplingConfig& cfg, bool head_sampled, bool error, Nanos duration) {
  if (head_sampled) return true;
  if (cfg.mode == SamplingConfig::Mode::kNever) return false;
  if (error && cfg.always_errors) return true;
  return cfg.slow_ms > 0 && duration > millis(cfg.slow_ms);
}

RequestTrace::RequestTrace(const std::optional<TraceContext>& parent, bool head_sampled,
                           std::string name, SpanKind kind, Nanos now, std::int64_t unix_offset)
    : head_sampled_(head_sampled), unix_offset_(unix_offset) {
  spans_.reserve(6);
  Span root;
  root.span_id = new_span_id();
  if (parent) {
    trace_id_ = parent->trace_id;
    root.parent_span_id = parent->parent_span_id;
    if (valid_tracestate(parent->trace_state)) trace_state_ = parent->trace_state;
  } else {
    trace_id_ = new_trace_id();
  }
  root.name = std::move(name);
  root.kind = kind;
  root.start_unix_nanos = unix(now);
  spans_.push_back(std::move(root));
}

RequestTrace::SpanRef RequestTrace::start(std::string name, SpanKind kind, Nanos now) {
  Span s;
  s.span_id = new_span_id();
  s.parent_span_id = spans_[kRoot].span_id;
  s.name = std::move(name);
  s.kind = kind;
  s.start_unix_nanos = unix(now);
  spans_.push_back(std::move(s));
  return spans_.size() - 1;
}

void RequestTrace::end(SpanRef s, Nanos now) {
  if (spans_[s].end_unix_nanos == 0)
    spans_[s].end_unix_nanos = std::max(unix(now), spans_[s].start_unix_nanos);
}

std::string RequestTrace::traceparent_from(SpanRef s) const {
  return format_traceparent(trace_id_, spans_[s].span_id, head_sampled_);
}

FinishedTrace RequestTrace::finish(Nanos now) {
  for (std::size_t i = 0; i < spans_.size(); ++i) end(i, now);
  FinishedTrace t;
  t.trace_id = trace_id_;
  t.trace_state = trace_state_;
  t.spans = std::move(spans_);
  spans_.clear();
  return t;
}

std::string truncate_utf8(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  std::size_t cut = max_bytes;
  // Step back over continuation bytes so a multi-byte character is never split.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  std::string out(text.substr(0, cut));
  out += "\xE2\x80\xA6";  // …
  return out;
}

std::string encode_otlp_json(const std::vector<Attribute>& resource,
                             const std::vector<FinishedTrace>& traces) {
  std::string out;
  out.reserve(512 + 640 * traces.size());
  out += "{\"resourceSpans\":[{\"resource\":{\"attributes\":";
  append_attributes(out, resource);
  out += "},\"scopeSpans\":[{\"scope\":{\"name\":\"bellwether\"},\"spans\":[";
  bool first = true;
  for (const auto& t : traces) {
    const std::string trace_hex = hex(t.trace_id);
    for (const auto& s : t.spans) {
      if (!first) out += ',';
      first = false;
      out += "{\"traceId\":\"";
      out += trace_hex;
      out += "\",\"spanId\":\"";
      out += hex(s.span_id);
      out += '"';
      if (!all_zero(s.parent_span_id)) {
        out += ",\"parentSpanId\":\"";
        out += hex(s.parent_span_id);
        out += '"';
      }
      if (!t.trace_state.empty()) {
        out += ",\"traceState\":";
        append_json_string(out, t.trace_state);
      }
      out += ",\"name\":";
      append_json_string(out, s.name);
      out += ",\"kind\":";
      out += std::to_string(static_cast<int>(s.kind));
      out += ",\"startTimeUnixNano\":\"";
      out += std::to_string(s.start_unix_nanos);
      out += "\",\"endTimeUnixNano\":\"";
      out += std::to_string(s.end_unix_nanos);
      out += "\",\"attributes\":";
      append_attributes(out, s.attributes);
      out += ",\"status\":{\"code\":";
      out += std::to_string(static_cast<int>(s.status));
      if (!s.status_message.empty()) {
        out += ",\"message\":";
        append_json_string(out, s.status_message);
      }
      out += "}}";
    }
  }
  out += "]}]}]}";
  return out;
}

}  // namespace bw::telemetry
