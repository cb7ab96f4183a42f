#include "providers/openai.h"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <climits>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "api/chat.h"
#include "api/json_read.h"
#include "common/buffer_stash.h"
#include "common/json_util.h"
#include "common/same_text.h"
#include "providers/chunk_scan.h"
#include "providers/request_scan.h"

namespace bw::providers {

static_assert(kMaxJsonDepth == api::json::kMaxRequestDepth);

namespace {

simdjson::dom::parser& parser() {
  thread_local simdjson::dom::parser p(16 * 1024 * 1024);
  return p;
}

Error bad(std::string message, std::string param = {}, std::string code = {}) {
  return make_error(400, "invalid_request_error", std::move(code), std::move(message),
                    std::move(param));
}

// Bytes of a value as the provider reads it (its compact JSON).
std::size_t json_chars(simdjson::dom::element v) {
  std::string_view s;
  if (v.get(s) == simdjson::SUCCESS) return s.size();
  if (v.is_object() || v.is_array()) return simdjson::minify(v).size();
  return 3;  // a number (e.g. a token id: one token), a boolean, null
}

// Adds the text (and images) of a message's content or of a prompt/input to `r`: a string, an
// array of content parts, of strings, or of token ids (one token each, charged as 3 bytes).
void add_content(simdjson::dom::element v, LlmRequest& r) {
  std::string_view s;
  if (v.get(s) == simdjson::SUCCESS) {
    r.prompt_chars += s.size();
    return;
  }
  simdjson::dom::array arr;
  if (v.get(arr) != simdjson::SUCCESS) {
    r.prompt_chars += json_chars(v);
    return;
  }
  for (auto part : arr) {
    if (part.get(s) == simdjson::SUCCESS) {
      r.prompt_chars += s.size();
      continue;
    }
    if (part.is_array()) {  // a batch of token-id arrays
      add_content(part, r);
      continue;
    }
    if (!part.is_object()) {
      r.prompt_chars += json_chars(part);
      continue;
    }
    std::string_view type;
    if (part["type"].get(type) != simdjson::SUCCESS) type = {};
    if ((type == "text" || type == "input_text") && part["text"].get(s) == simdjson::SUCCESS) {
      r.prompt_chars += s.size();
    } else if (type == "image_url") {
      ++r.images;
    } else {
      // Audio, files and parts not known here: every byte the provider reads, as text.
      r.prompt_chars += json_chars(part);
    }
  }
}

bool is_json_ws(char c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

// The top-level members rewrite_request replaces, read from the structural index of the parse
// just made (every bracket, brace, comma and colon, and the first byte of every string and
// scalar, in body order): a few dozen entries for a chat request, where a byte scan reads every
// byte of its messages. Must run before the thread's parser parses anything else. Leaves
// `recorded` false on anything unexpected (rewrite_request then scans the body).
void record_layout(std::string_view body, BodyLayout& l) {
  const auto* impl = parser().implementation.get();
  if (!impl || body.size() >= UINT32_MAX) return;
  const std::uint32_t* idx = impl->structural_indexes.get();
  const std::uint32_t n = impl->n_structural_indexes;
  if (!idx || n < 2 || idx[0] >= body.size() || body[idx[0]] != '{') return;
  auto trim_end = [&](std::uint32_t e) {
    while (e > 0 && is_json_ws(body[e - 1])) --e;
    return e;
  };
  std::uint32_t depth = 1;
  std::optional<BodyLayout::Span>* open = nullptr;  // the member whose value end is wanted
  for (std::uint32_t k = 1; k < n; ++k) {
    const std::uint32_t pos = idx[k];
    if (pos >= body.size()) return;
    const char ch = body[pos];
    if (depth == 1) {
      if (ch == ',' || ch == '}') {
        if (open) (*open)->end = trim_end(pos);
        open = nullptr;
        if (ch == '}') {
          l.close = pos;
          l.size = static_cast<std::uint32_t>(body.size());
          l.recorded = k + 1 == n;
          return;
        }
        continue;
      }
      if (ch == '"' && k + 2 < n && idx[k + 1] < body.size() && body[idx[k + 1]] == ':') {
        const std::uint32_t key_end = trim_end(idx[k + 1]);  // one past the closing quote
        if (key_end < pos + 2 || body[key_end - 1] != '"') return;
        const std::string_view key = body.substr(pos + 1, key_end - 1 - (pos + 1));
        l.any_member = true;
        if (key.find('\\') != std::string_view::npos) l.escaped_key = true;
        std::optional<BodyLayout::Span>* span = nullptr;
        if (same_text(key, "model")) {
          span = &l.model;
        } else if (same_text(key, "max_tokens")) {
          span = &l.max_tokens;
        } else if (same_text(key, "max_completion_tokens")) {
          span = &l.max_completion_tokens;
        } else if (same_text(key, "stream_options")) {
          l.stream_options = true;
        }
        if (span) {
          if (*span) return;  // a duplicate (parse_request refuses those): the scan handles it
          *span = BodyLayout::Span{idx[k + 2], 0};
          open = span;
        }
        ++k;  // the colon; the value's first entry comes next
        continue;
      }
    }
    if (ch == '{' || ch == '[') {
      ++depth;
    } else if (ch == '}' || ch == ']') {
      if (depth <= 1) return;
      --depth;
    }
  }
}

}  // namespace

Result<LlmRequest> parse_request(Endpoint endpoint, std::string_view body) {
  LlmRequest r;
  if (auto ok = parse_request_into(endpoint, body, r); !ok) return ok.error();
  return r;
}

Result<LlmRequest> parse_request_full(Endpoint endpoint, std::string_view body) {
  simdjson::dom::element doc;
  auto err = parser().parse(body.data(), body.size()).get(doc);
  BodyLayout layout;
  if (!err) record_layout(body, layout);
  if (err == simdjson::UTF8_ERROR)
    return bad("The request body is not valid UTF-8.", {}, "invalid_json");
  if (err == simdjson::DEPTH_ERROR)
    return bad("The JSON body is nested too deeply.", {}, "invalid_json");
  if (err) {
    return bad(std::string("We could not parse the JSON body of your request: ") +
                   simdjson::error_message(err),
               {}, "invalid_json");
  }
  if (!doc.is_object()) return bad("The request body must be a JSON object.", {}, "invalid_json");
  if (auto checked = api::json::check_request_tree(doc); !checked) return checked.error();
  LlmRequest r;
  r.endpoint = endpoint;
  r.layout = layout;
  // One pass over the top-level members: check_request_tree refused a key written twice, so
  // each field is met at most once. The fields are then checked in a fixed order, so that a body
  // with several bad fields is always refused for the same one.
  struct Found {
    bool present = false;
    simdjson::dom::element v;
    // Present and not null.
    bool set() const { return present && !v.is_null(); }
  };
  Found model_f, stream_f, stream_options_f, max_tokens_f, max_completion_tokens_f, n_f, best_of_f,
      messages_f, prompt_f, input_f;
  // Bound to a local: iterating the temporary result would dangle.
  simdjson::dom::object top = doc.get_object().value_unsafe();
  for (auto f : top) {
    Found* slot = nullptr;
    switch (top_field(f.key)) {
      case TopField::kOther:
        // tools, functions, tool_choice, response_format (schemas), prediction, suffix, and any
        // field not known here: the provider reads them, so they are priced as text.
        if (f.value.is_string() || f.value.is_object() || f.value.is_array()) {
          r.prompt_chars += f.key.size() + json_chars(f.value);
        }
        continue;
      case TopField::kNoText:
        continue;
      case TopField::kModel:
        slot = &model_f;
        break;
      case TopField::kMessages:
        slot = &messages_f;
        break;
      case TopField::kPrompt:
        slot = &prompt_f;
        break;
      case TopField::kInput:
        slot = &input_f;
        break;
      case TopField::kStream:
        slot = &stream_f;
        break;
      case TopField::kStreamOptions:
        slot = &stream_options_f;
        break;
      case TopField::kMaxTokens:
        slot = &max_tokens_f;
        break;
      case TopField::kMaxCompletionTokens:
        slot = &max_completion_tokens_f;
        break;
      case TopField::kN:
        slot = &n_f;
        break;
      case TopField::kBestOf:
        slot = &best_of_f;
        break;
    }
    slot->present = true;
    slot->v = f.value;
  }

  if (!model_f.present) return bad("you must provide a model parameter", "model");
  std::string_view m;
  if (model_f.v.get(m) != simdjson::SUCCESS || m.empty())
    return bad("model must be a non-empty string", "model");
  if (m.size() > 256) return bad("model name too long", "model");
  r.model = std::string(m);

  if (stream_f.set()) {
    bool s = false;
    if (stream_f.v.get(s) != simdjson::SUCCESS) return bad("stream must be a boolean", "stream");
    r.stream = s;
  }
  if (r.stream && endpoint == Endpoint::kEmbeddings)
    return bad("embeddings cannot stream", "stream");
  if (stream_options_f.set()) {
    const auto& v = stream_options_f.v;
    if (!v.is_object()) return bad("stream_options must be an object", "stream_options");
    bool u = false;
    if (v["include_usage"].get(u) == simdjson::SUCCESS) r.client_wants_usage = u;
  }
  for (const auto& [key, f] : {std::pair{"max_completion_tokens", &max_completion_tokens_f},
                               std::pair{"max_tokens", &max_tokens_f}}) {
    if (f->set()) {
      std::int64_t mt = 0;
      if (f->v.get(mt) != simdjson::SUCCESS || mt < 1) {
        return bad(std::string(key) + " must be a positive integer", key);
      }
      r.max_tokens = mt;
      break;
    }
  }
  // Each choice is generated and billed: the reservation multiplies by them.
  for (const auto& [key, f] : {std::pair{"n", &n_f}, std::pair{"best_of", &best_of_f}}) {
    if (f->set()) {
      std::int64_t n = 0;
      if (f->v.get(n) != simdjson::SUCCESS || n < 1 || n > kMaxChoices) {
        return bad(
            std::string(key) + " must be an integer from 1 to " + std::to_string(kMaxChoices), key);
      }
      if (endpoint == Endpoint::kEmbeddings) continue;
      r.choices = std::max(r.choices, n);
    }
  }
  switch (endpoint) {
    case Endpoint::kChat: {
      simdjson::dom::array messages;
      if (!messages_f.present || messages_f.v.get(messages) != simdjson::SUCCESS) {
        return bad("messages must be an array", "messages");
      }
      for (auto msg : messages) {
        if (!msg.is_object()) return bad("each message must be an object", "messages");
        bool has_role = false;
        // Bound to a local: iterating the temporary result would dangle.
        simdjson::dom::object fields = msg.get_object().value_unsafe();
        for (auto f : fields) {
          if (same_text(f.key, "content")) {
            add_content(f.value, r);
          } else if (same_text(f.key, "role")) {
            has_role = f.value.is_string();
          } else {  // tool calls, tool_call_id, name, audio, ...
            r.prompt_chars += f.key.size() + json_chars(f.value);
          }
        }
        if (!has_role) return bad("each message needs a role", "messages");
        ++r.message_count;
      }
      if (r.message_count == 0) return bad("messages must not be empty", "messages");
      break;
    }
    case Endpoint::kCompletions: {
      if (!prompt_f.present) return bad("prompt is required", "prompt");
      add_content(prompt_f.v, r);
      break;
    }
    case Endpoint::kEmbeddings: {
      if (!input_f.present) return bad("input is required", "input");
      add_content(input_f.v, r);
      break;
    }
  }
  return r;
}

namespace {

// Byte-level walk over the members of a JSON object that simdjson has already validated.
// Yields each member's raw key (between the quotes, escapes untouched) and the byte range of its
// value. Returns false on anything unexpected (the caller falls back to the DOM path).
// Whether one of the 8 bytes of `x` is `b` (exact as a yes/no: the has-zero-byte test).
inline bool has_byte(std::uint64_t x, char b) {
  constexpr std::uint64_t k01 = 0x0101010101010101ULL;
  const std::uint64_t y = x ^ (k01 * static_cast<unsigned char>(b));
  return ((y - k01) & ~y & (k01 << 7)) != 0;
}

class MemberScanner {
 public:
  explicit MemberScanner(std::string_view json) : s_(json) {}

  bool open() {
    ws();
    if (i_ >= s_.size() || s_[i_] != '{') return false;
    ++i_;
    return true;
  }
  // Next member; false at the closing brace (close_at() then points at it) or on error.
  bool next(std::string_view& key, std::size_t& value_begin, std::size_t& value_end) {
    ws();
    if (i_ < s_.size() && s_[i_] == ',') {
      ++i_;
      ws();
    }
    if (i_ >= s_.size() || s_[i_] != '"') {
      close_ = i_ < s_.size() && s_[i_] == '}' ? i_ : std::string_view::npos;
      return false;
    }
    const std::size_t kb = i_ + 1;
    if (!skip_string()) return false;
    key = s_.substr(kb, i_ - 1 - kb);
    ws();
    if (i_ >= s_.size() || s_[i_] != ':') return false;
    ++i_;
    ws();
    value_begin = i_;
    if (!skip_value()) return false;
    value_end = i_;
    return true;
  }
  std::size_t close_at() const { return close_; }
  bool empty_object() const { return members_ == 0; }

 private:
  void ws() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) {
      ++i_;
    }
  }
  bool skip_string() {  // at the opening quote
    ++i_;
    while (i_ < s_.size()) {
      // Most of a request is message text: 8 bytes per step while none is '"' or '\\'.
      for (std::uint64_t x; i_ + 8 <= s_.size(); i_ += 8) {
        std::memcpy(&x, s_.data() + i_, 8);
        if (has_byte(x, '"') || has_byte(x, '\\')) break;
      }
      if (i_ >= s_.size()) break;
      const char c = s_[i_++];
      if (c == '\\') {
        ++i_;
      } else if (c == '"') {
        return true;
      }
    }
    return false;
  }
  bool skip_value() {
    ++members_;
    if (i_ >= s_.size()) return false;
    const char c = s_[i_];
    if (c == '"') return skip_string();
    if (c == '{' || c == '[') {
      std::size_t depth = 0;
      while (i_ < s_.size()) {
        const char d = s_[i_];
        if (d == '"') {
          if (!skip_string()) return false;
          continue;
        }
        ++i_;
        if (d == '{' || d == '[') ++depth;
        if (d == '}' || d == ']') {
          if (--depth == 0) return true;
        }
      }
      return false;
    }
    while (i_ < s_.size() && s_[i_] != ',' && s_[i_] != '}' && s_[i_] != ' ' && s_[i_] != '\n' &&
           s_[i_] != '\r' && s_[i_] != '\t') {
      ++i_;
    }
    return true;
  }

  std::string_view s_;
  std::size_t i_ = 0;
  std::size_t close_ = std::string_view::npos;
  std::size_t members_ = 0;
};

// The members a rewrite adds before the body's closing brace: stream_options when usage is
// forced, max_tokens (`cap`, unless empty) when the body had no output cap. `any`: the body
// already has a member, so each addition starts with a comma.
void append_added_members(std::string& out, bool any, bool include_usage, std::string_view cap) {
  if (include_usage) {
    out += any ? ",\"stream_options\":{\"include_usage\":true}"
               : "\"stream_options\":{\"include_usage\":true}";
    any = true;
  }
  if (!cap.empty()) {
    out += any ? ",\"max_tokens\":" : "\"max_tokens\":";
    out += cap;
  }
}

// The common case without a second parse: the body's own bytes with `model` (and the output cap)
// replaced and stream_options added. Declines (nullopt) when a key is escaped or stream_options
// must be merged into an existing object; the DOM path handles those.
std::optional<std::string> rewrite_fast(std::string_view body, std::string_view provider_model,
                                        bool force_include_usage, std::int64_t max_tokens) {
  MemberScanner sc(body);
  if (!sc.open()) return std::nullopt;
  std::string out = stash::take(body.size() + provider_model.size() + 48);
  std::size_t copied = 0;  // body bytes before this offset are in `out`
  bool saw_max = false, any = false;
  std::string_view key;
  std::size_t vb = 0, ve = 0;
  auto replace = [&](std::size_t b, std::size_t e) {
    out.append(body.substr(copied, b - copied));
    copied = e;
  };
  while (sc.next(key, vb, ve)) {
    any = true;
    if (key.find('\\') != std::string_view::npos) return std::nullopt;
    if (key == "model") {
      replace(vb, ve);
      append_json_string(out, provider_model);
    } else if (key == "stream_options" && force_include_usage) {
      return std::nullopt;
    } else if ((key == "max_tokens" || key == "max_completion_tokens") && max_tokens > 0) {
      saw_max = true;
      replace(vb, ve);
      out += std::to_string(max_tokens);
    }
  }
  const std::size_t close = sc.close_at();
  if (close == std::string_view::npos) return std::nullopt;
  out.append(body.substr(copied, close - copied));
  append_added_members(out, any, force_include_usage,
                       max_tokens > 0 && !saw_max ? std::to_string(max_tokens) : std::string());
  out.append(body.substr(close));
  return out;
}

// The replacements a recorded layout calls for, in body order: the model's value (unless
// `keep_same_model` and the body already names provider_model as it is) and, with a cap, the
// output caps' values. False when the layout does not fit the body, its spans overlap, or
// stream_options would have to be merged into an object the body has.
struct ReplacePlan {
  struct Replace {
    BodyLayout::Span at;
    bool model;
  };
  std::array<Replace, 3> reps;
  std::size_t n = 0;
  bool saw_max = false;  // the body has an output cap
};

bool plan_replacements(std::string_view body, const BodyLayout& l, std::string_view provider_model,
                       bool force_include_usage, std::int64_t max_tokens, bool keep_same_model,
                       ReplacePlan& plan) {
  if (!l.recorded || l.escaped_key || l.size != body.size() || l.close >= body.size() ||
      body[l.close] != '}') {
    return false;
  }
  if (force_include_usage && l.stream_options) return false;
  plan.n = 0;
  if (l.model) {
    const auto v = body.substr(l.model->begin, l.model->end - l.model->begin);
    const bool same = v.size() == provider_model.size() + 2 && v.front() == '"' &&
                      v.back() == '"' && v.substr(1, provider_model.size()) == provider_model;
    if (!(keep_same_model && same)) plan.reps[plan.n++] = {*l.model, true};
  }
  plan.saw_max = l.max_tokens || l.max_completion_tokens;
  if (max_tokens > 0) {
    if (l.max_tokens) plan.reps[plan.n++] = {*l.max_tokens, false};
    if (l.max_completion_tokens) plan.reps[plan.n++] = {*l.max_completion_tokens, false};
  }
  std::sort(plan.reps.begin(), plan.reps.begin() + static_cast<std::ptrdiff_t>(plan.n),
            [](const auto& a, const auto& b) { return a.at.begin < b.at.begin; });
  std::size_t after = 0;
  for (std::size_t i = 0; i < plan.n; ++i) {
    const auto& at = plan.reps[i].at;
    if (at.begin < after || at.end < at.begin || at.end > l.close) return false;
    after = at.end;
  }
  return true;
}

// rewrite_fast from a recorded layout: the same output, without reading the body.
std::optional<std::string> rewrite_from_layout(std::string_view body, const BodyLayout& l,
                                               std::string_view provider_model,
                                               bool force_include_usage, std::int64_t max_tokens) {
  ReplacePlan plan;
  if (!plan_replacements(body, l, provider_model, force_include_usage, max_tokens, false, plan)) {
    return std::nullopt;
  }
  char cap[24];
  const auto cap_len =
      max_tokens > 0 ? std::to_chars(cap, cap + sizeof cap, max_tokens).ptr - cap : 0;
  const std::string_view cap_text(cap, static_cast<std::size_t>(cap_len));
  std::string out = stash::take(body.size() + provider_model.size() + 48);
  std::size_t copied = 0;
  for (std::size_t i = 0; i < plan.n; ++i) {
    const auto& r = plan.reps[i];
    out.append(body.substr(copied, r.at.begin - copied));
    copied = r.at.end;
    if (r.model) {
      append_json_string(out, provider_model);
    } else {
      out += cap_text;
    }
  }
  out.append(body.substr(copied, l.close - copied));
  append_added_members(out, l.any_member, force_include_usage,
                       max_tokens > 0 && !plan.saw_max ? cap_text : std::string_view());
  out.append(body.substr(l.close));
  return out;
}

}  // namespace

BodyLayout body_layout(std::string_view body) {
  BodyLayout l;
  simdjson::dom::element doc;
  if (parser().parse(body.data(), body.size()).get(doc) == simdjson::SUCCESS && doc.is_object()) {
    record_layout(body, l);
  }
  return l;
}

bool splice_request(std::string_view body, const BodyLayout& l, std::string_view provider_model,
                    bool force_include_usage, std::int64_t max_tokens, SplicedBody& out) {
  for (const char ch : provider_model) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u >= 0x80 || ch == '"' || ch == '\\') return false;
  }
  // A model the deployment names as the client did stays as it is in the body.
  ReplacePlan plan;
  if (!plan_replacements(body, l, provider_model, force_include_usage, max_tokens, true, plan)) {
    return false;
  }
  const auto cap_len =
      max_tokens > 0
          ? std::to_chars(out.cap.data(), out.cap.data() + out.cap.size(), max_tokens).ptr -
                out.cap.data()
          : 0;
  const std::string_view cap_text(out.cap.data(), static_cast<std::size_t>(cap_len));
  out.count = 0;
  out.size = 0;
  // Adjacent spans of the body join into one piece: a body that keeps its model and cap and
  // gets nothing added is one piece, the body itself.
  auto add = [&out](std::string_view p) {
    if (p.empty()) return;
    out.size += p.size();
    if (out.count > 0) {
      auto& last = out.pieces[out.count - 1];
      if (last.data() + last.size() == p.data()) {
        last = std::string_view(last.data(), last.size() + p.size());
        return;
      }
    }
    out.pieces[out.count++] = p;
  };
  std::size_t copied = 0;
  for (std::size_t i = 0; i < plan.n; ++i) {
    const auto& r = plan.reps[i];
    add(body.substr(copied, r.at.begin - copied));
    copied = r.at.end;
    if (r.model) {
      add("\"");
      add(provider_model);
      add("\"");
    } else {
      add(cap_text);
    }
  }
  add(body.substr(copied, l.close - copied));
  bool any = l.any_member;
  if (force_include_usage) {
    add(any ? ",\"stream_options\":{\"include_usage\":true}"
            : "\"stream_options\":{\"include_usage\":true}");
    any = true;
  }
  if (max_tokens > 0 && !plan.saw_max) {
    add(any ? ",\"max_tokens\":" : "\"max_tokens\":");
    add(cap_text);
  }
  add(body.substr(l.close));
  return true;
}

Result<std::string> rewrite_request(std::string_view body, const BodyLayout& layout,
                                    std::string_view provider_model, bool force_include_usage,
                                    std::int64_t max_tokens) {
  if (auto spliced =
          rewrite_from_layout(body, layout, provider_model, force_include_usage, max_tokens)) {
    return std::move(*spliced);
  }
  return rewrite_request(body, provider_model, force_include_usage, max_tokens);
}

Result<std::string> rewrite_request(std::string_view body, std::string_view provider_model,
                                    bool force_include_usage, std::int64_t max_tokens) {
  if (auto fast = rewrite_fast(body, provider_model, force_include_usage, max_tokens)) {
    return std::move(*fast);
  }
  simdjson::dom::element doc;
  if (parser().parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return bad("invalid JSON", {}, "invalid_json");
  }
  std::string out;
  out.reserve(body.size() + 64);
  out.push_back('{');
  bool first = true;
  bool saw_stream_options = false;
  bool saw_max = false;
  // Bound to a local: iterating the temporary result would dangle.
  simdjson::dom::object object_3 = doc.get_object().value_unsafe();
  for (auto field : object_3) {
    if (!first) out.push_back(',');
    first = false;
    append_json_string(out, field.key);
    out.push_back(':');
    if (field.key == "model") {
      append_json_string(out, provider_model);
    } else if (field.key == "stream_options" && force_include_usage) {
      saw_stream_options = true;
      out.push_back('{');
      bool f2 = true;
      if (field.value.is_object()) {
        // Bound to a local: iterating the temporary result would dangle.
        simdjson::dom::object object_4 = field.value.get_object().value_unsafe();
        for (auto opt : object_4) {
          if (opt.key == "include_usage") continue;
          if (!f2) out.push_back(',');
          f2 = false;
          append_json_string(out, opt.key);
          out.push_back(':');
          out += simdjson::minify(opt.value);
        }
      }
      if (!f2) out.push_back(',');
      out += "\"include_usage\":true}";
    } else if ((field.key == "max_tokens" || field.key == "max_completion_tokens") &&
               max_tokens > 0) {
      saw_max = true;
      out += std::to_string(max_tokens);
    } else {
      out += simdjson::minify(field.value);
    }
  }
  if (force_include_usage && !saw_stream_options) {
    if (!first) out.push_back(',');
    first = false;
    out += "\"stream_options\":{\"include_usage\":true}";
  }
  if (max_tokens > 0 && !saw_max) {
    if (!first) out.push_back(',');
    out += "\"max_tokens\":" + std::to_string(max_tokens);
  }
  out.push_back('}');
  return out;
}

bool is_output_member(std::string_view key) {
  return key == "tool_calls" || key == "function_call" || key == "refusal" ||
         key == "reasoning_content" || key == "audio";
}

namespace {

// null, "", [] and {}: nothing generated.
bool empty_value(simdjson::dom::element v) {
  std::string_view s;
  if (v.is_null()) return true;
  if (v.get(s) == simdjson::SUCCESS) return s.empty();
  simdjson::dom::array a;
  if (v.get(a) == simdjson::SUCCESS) return a.size() == 0;
  simdjson::dom::object o;
  if (v.get(o) == simdjson::SUCCESS) return o.size() == 0;
  return false;
}

// Whether a buffered chat or completions answer holds generated output: the text of a choice,
// or a message member that is generated (content, tool calls, a refusal, ...), not empty.
bool has_generated_output(simdjson::dom::element doc) {
  simdjson::dom::array choices;
  if (doc["choices"].get(choices) != simdjson::SUCCESS) return false;
  for (auto c : choices) {
    simdjson::dom::element text;
    if (c["text"].get(text) == simdjson::SUCCESS && !empty_value(text)) return true;
    simdjson::dom::object m;
    if (c["message"].get(m) != simdjson::SUCCESS) continue;
    for (auto f : m) {
      if ((f.key == "content" || is_output_member(f.key)) && !empty_value(f.value)) return true;
    }
  }
  return false;
}

}  // namespace

Usage extract_usage(std::string_view body, Endpoint endpoint) {
  // The usual answer: its usage read by a scan, without a DOM of the whole answer.
  if (auto scanned = scan_answer_usage(body, endpoint)) return *scanned;
  return parse_answer_usage(body, endpoint);
}

Usage parse_answer_usage(std::string_view body, Endpoint endpoint) {
  Usage u;
  simdjson::dom::element doc;
  if (body.empty()) return u;
  if (parser().parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS) return u;
  simdjson::dom::element usage;
  if (api::json::member(doc, "usage").get(usage) == simdjson::SUCCESS) {
    api::OpenAiUsageNames names = api::kChatUsageNames;
    names.output_always = endpoint != Endpoint::kEmbeddings;
    api::read_openai_usage(usage, names, u);
    // Generated output reported as no output tokens is not free: the count is not trusted.
    if (endpoint != Endpoint::kEmbeddings) {
      api::check_output_counted(
          u, u.usable() && u.completion_tokens == 0 && has_generated_output(doc));
    }
  }
  return u;
}

ChunkInfo inspect_chunk(std::string_view data) {
  if (data == "[DONE]" || data.empty()) return parse_chunk(data);
  // Most events are one delta, or the usage: read without a parse.
  if (auto scanned = scan_chunk_with_usage(data)) return *scanned;
  return parse_chunk(data);
}

ChunkInfo inspect_chunk(std::string_view data, ChunkPrefix& prefix) {
  if (data == "[DONE]" || data.empty()) return parse_chunk(data);
  if (auto scanned = scan_chunk_with_usage(data, prefix)) return *scanned;
  return parse_chunk(data);
}

ChunkInfo parse_chunk(std::string_view data) {
  ChunkInfo info;
  if (data == "[DONE]") {
    info.done = true;
    return info;
  }
  // An event without data (an SSE comment such as ": keep-alive") has nothing to inspect; an
  // empty view may also have no data pointer, which the parser must not be given.
  if (data.empty()) return info;
  const bool maybe_usage = data.find("\"usage\"") != std::string_view::npos;
  simdjson::dom::element doc;
  if (parser().parse(data.data(), data.size()).get(doc) != simdjson::SUCCESS) return info;
  simdjson::dom::array choices;
  bool empty_choices = false;
  if (doc["choices"].get(choices) == simdjson::SUCCESS) {
    empty_choices = choices.size() == 0;
    for (auto c : choices) {
      std::string_view s;
      if (c["delta"]["content"].get(s) == simdjson::SUCCESS ||
          c["text"].get(s) == simdjson::SUCCESS) {
        info.text_chars += s.size();
        info.has_text = info.has_text || !s.empty();
      }
      simdjson::dom::object delta;
      if (c["delta"].get(delta) == simdjson::SUCCESS) {
        for (auto f : delta) {
          if (is_output_member(f.key) && !empty_value(f.value)) info.other_output = true;
        }
      }
    }
  }
  if (maybe_usage) {
    simdjson::dom::element usage;
    if (api::json::member(doc, "usage").get(usage) == simdjson::SUCCESS && usage.is_object()) {
      api::read_chat_usage(usage, info.usage);
      info.usage_only = empty_choices;
    }
  }
  return info;
}

std::int64_t estimate_prompt_tokens(const LlmRequest& req) {
  // Conservative: about 3 characters a token for English, plus per-message framing.
  std::int64_t images = 0;
  if (__builtin_mul_overflow(req.images, std::max<std::int64_t>(req.image_tokens_each, 0),
                             &images)) {
    images = INT64_MAX / 4;
  }
  return static_cast<std::int64_t>((req.prompt_chars + 2) / 3) +
         4 * static_cast<std::int64_t>(req.message_count) + 3 + images;
}

std::int64_t completion_reservation(const LlmRequest& req, std::int64_t per_choice_cap) {
  const std::int64_t n = std::max<std::int64_t>(1, req.choices);
  std::int64_t out = 0;
  if (__builtin_mul_overflow(per_choice_cap, n, &out)) return INT64_MAX / 4;
  return out;
}

Usage estimate_usage(const LlmRequest& req, std::string_view response_body) {
  Usage u;
  u.prompt_tokens = estimate_prompt_tokens(req);
  if (req.endpoint == Endpoint::kEmbeddings) return u;
  std::size_t chars = 0;
  std::int64_t choices = 0;
  simdjson::dom::element doc;
  simdjson::dom::array arr;
  if (!response_body.empty() &&
      parser().parse(response_body.data(), response_body.size()).get(doc) == simdjson::SUCCESS &&
      doc["choices"].get(arr) == simdjson::SUCCESS) {
    for (auto c : arr) {
      ++choices;
      simdjson::dom::element v;
      if (c["text"].get(v) == simdjson::SUCCESS) chars += json_chars(v);
      if (c["message"].get(v) == simdjson::SUCCESS && v.is_object()) {
        // Bound to a local: iterating the temporary result would dangle.
        simdjson::dom::object m = v.get_object().value_unsafe();
        for (auto f : m) {
          if (f.key != "role" && !f.value.is_null()) chars += json_chars(f.value);
        }
      }
    }
  } else {
    // Not JSON, or an answer in another API's shape (a translated one): every byte received.
    chars = response_body.size();
  }
  u.completion_tokens = std::max<std::int64_t>(choices, static_cast<std::int64_t>((chars + 2) / 3));
  return u;
}

}  // namespace bw::providers
