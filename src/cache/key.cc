#include "cache/key.h"

#include <openssl/evp.h>
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/json_util.h"

namespace bw::cache {

namespace {

// Top-level fields that never change the answer's content.
constexpr std::array<std::string_view, 6> kIgnored = {"model", "stream",   "stream_options",
                                                      "user",  "metadata", "store"};
constexpr std::array<std::string_view, 3> kPromptFields = {"messages", "input", "prompt"};

bool contains(const auto& list, std::string_view k) {
  return std::find(list.begin(), list.end(), k) != list.end();
}

void append_number(std::string& out, double d) {
  // 1 and 1.0 mean the same temperature: integral values are written as integers.
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
    out += std::to_string(static_cast<std::int64_t>(d));
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  out += buf;
}

void write(std::string& out, simdjson::dom::element e, int depth, bool top, bool without_prompt) {
  using simdjson::dom::element_type;
  switch (e.type()) {
    case element_type::OBJECT: {
      std::vector<std::pair<std::string_view, simdjson::dom::element>> fields;
      for (auto f : simdjson::dom::object(e)) {
        if (top && contains(kIgnored, f.key)) continue;
        if (top && without_prompt && contains(kPromptFields, f.key)) continue;
        fields.emplace_back(f.key, f.value);
      }
      std::stable_sort(fields.begin(), fields.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      out.push_back('{');
      for (std::size_t i = 0; i < fields.size(); ++i) {
        if (i) out.push_back(',');
        append_json_string(out, fields[i].first);
        out.push_back(':');
        write(out, fields[i].second, depth + 1, false, without_prompt);
      }
      out.push_back('}');
      return;
    }
    case element_type::ARRAY: {
      out.push_back('[');
      bool first = true;
      for (auto v : simdjson::dom::array(e)) {
        if (!first) out.push_back(',');
        first = false;
        write(out, v, depth + 1, false, without_prompt);
      }
      out.push_back(']');
      return;
    }
    case element_type::STRING:
      append_json_string(out, std::string_view(e));
      return;
    case element_type::INT64:
      out += std::to_string(std::int64_t(e));
      return;
    case element_type::UINT64:
      out += std::to_string(std::uint64_t(e));
      return;
    case element_type::DOUBLE:
      append_number(out, double(e));
      return;
    case element_type::BOOL:
      out += bool(e) ? "true" : "false";
      return;
    case element_type::NULL_VALUE:
      out += "null";
      return;
  }
}

simdjson::dom::parser& parser() {
  thread_local simdjson::dom::parser p;
  return p;
}

void append_text(std::string& out, simdjson::dom::element content) {
  std::string_view s;
  if (content.get(s) == simdjson::SUCCESS) {
    out.append(s);
    return;
  }
  simdjson::dom::array parts;
  if (content.get(parts) != simdjson::SUCCESS) return;
  for (auto p : parts) {
    if (p.get(s) == simdjson::SUCCESS) {
      out.append(s);
    } else if (p["text"].get(s) == simdjson::SUCCESS) {
      out.append(s);
    } else if (simdjson::dom::element inner; p["content"].get(inner) == simdjson::SUCCESS) {
      // A Responses input item (a message with its own content parts).
      append_text(out, inner);
    }
    out.push_back(' ');
  }
}

}  // namespace

std::optional<Scope> parse_scope(std::string_view s) {
  if (s == "tenant") return Scope::kTenant;
  if (s == "key") return Scope::kKey;
  if (s == "global") return Scope::kGlobal;
  return std::nullopt;
}

std::string_view to_string(Scope s) {
  switch (s) {
    case Scope::kTenant:
      return "tenant";
    case Scope::kKey:
      return "key";
    case Scope::kGlobal:
      return "global";
  }
  return "tenant";
}

std::string scope_id(Scope s, std::string_view tenant, std::string_view key_name) {
  switch (s) {
    case Scope::kTenant:
      // A key without a tenant is a tenant of its own (as for stored responses): all such keys
      // sharing the empty tenant's entries would hand one key's answers to another.
      if (tenant.empty()) return "k:" + std::string(key_name);
      return "t:" + std::string(tenant);
    case Scope::kKey:
      return "k:" + std::string(key_name);
    case Scope::kGlobal:
      return "g";
  }
  return "g";
}

Result<std::string> canonical_body(std::string_view body, bool without_prompt) {
  simdjson::dom::element doc;
  if (parser().parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
    return make_error(400, "invalid_request_error", "invalid_json", "not a JSON object");
  }
  std::string out;
  out.reserve(body.size());
  write(out, doc, 0, true, without_prompt);
  return out;
}

std::string make_key(const KeyParts& parts, std::string_view canonical) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  // Each part is length-prefixed, so no two different part lists hash the same bytes.
  auto feed = [&](std::string_view s) {
    const std::uint64_t n = s.size();
    EVP_DigestUpdate(ctx, &n, sizeof n);
    EVP_DigestUpdate(ctx, s.data(), s.size());
  };
  feed("bw-cache-v1");
  feed(parts.scope);
  feed(parts.model);
  feed(parts.api);
  feed(parts.stream ? "stream" : "buffered");
  feed(canonical);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    hex.push_back(kHex[md[i] >> 4]);
    hex.push_back(kHex[md[i] & 0xf]);
  }
  return hex;
}

std::string prompt_text(std::string_view body) {
  simdjson::dom::element doc;
  if (parser().parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS) return {};
  std::string out;
  simdjson::dom::array messages;
  if (doc["messages"].get(messages) == simdjson::SUCCESS) {
    for (auto m : messages) {
      std::string_view role;
      if (m["role"].get(role) == simdjson::SUCCESS) {
        out.append(role);
        out += ": ";
      }
      simdjson::dom::element content;
      if (m["content"].get(content) == simdjson::SUCCESS) append_text(out, content);
      out.push_back('\n');
    }
    return out;
  }
  for (auto field : {"input", "prompt"}) {
    simdjson::dom::element v;
    if (doc[field].get(v) == simdjson::SUCCESS) {
      append_text(out, v);
      return out;
    }
  }
  return out;
}

bool deterministic(std::string_view body, bool embeddings) {
  if (embeddings) return true;
  simdjson::dom::element doc;
  if (parser().parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS) return false;
  if (doc["seed"].error() == simdjson::SUCCESS) return true;
  double t = 1;
  if (doc["temperature"].get(t) == simdjson::SUCCESS && t == 0) return true;
  return false;
}

}  // namespace bw::cache
