#pragma once
// Reading helpers over simdjson's DOM for the codecs. Internal to api/ and providers/.
// Thread safety: the parsers are thread-local; an element is valid until its parser parses again.
#include <simdjson.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace bw::api::json {

namespace dom = simdjson::dom;

// A parser per thread and purpose: a translated stream decodes an upstream event while the
// request's own document is no longer needed, but a buffered translation holds two documents.
dom::parser& parser(int slot = 0);

// Parses an object body; the error is a 400 in OpenAI's vocabulary (the caller reshapes it).
Result<dom::element> parse_object(std::string_view body, int slot = 0);

// A client's request body is refused (400) when it nests deeper than this.
inline constexpr std::size_t kMaxRequestDepth = 64;

// The checks every client request body passes before any field is read: nesting at most
// kMaxRequestDepth, and no object with the same key twice at any depth (a provider's parser keeps
// the last one, ours would read the first: the gateway would reserve and limit for a different
// request than the one billed). Keys compare after unescaping.
Result<Ok> check_request_tree(dom::element doc);

// parse_object (slot 0) and check_request_tree, with UTF-8 and depth errors named as such.
Result<dom::element> parse_request_object(std::string_view body);

using Lookup = simdjson::simdjson_result<dom::element>;

// The member `key` of an object. With the key twice, the LAST one: providers' and client SDKs'
// JSON parsers keep the last duplicate, and simdjson's own lookup (`e[key]`) returns the first,
// so an upstream answer with `"usage"` (or a token count) twice would otherwise be billed from a
// different value than the one the client reads. Not an object, or no such member: an error.
inline Lookup member(dom::element e, std::string_view key) {
  dom::object o;
  if (e.get(o) != simdjson::SUCCESS) return simdjson::INCORRECT_TYPE;
  Lookup found = simdjson::NO_SUCH_FIELD;
  for (auto field : o) {
    if (field.key == key) found = Lookup(dom::element(field.value));
  }
  return found;
}
inline Lookup member(Lookup e, std::string_view key) {
  dom::element v;
  if (e.get(v) != simdjson::SUCCESS) return e;
  return member(v, key);
}

// Field readers (the last of duplicate members, as above): a missing field, a field of another
// type, or a parent that is not an object gives the empty value (or `fallback`), never an
// exception.
inline std::string_view str(dom::element e, std::string_view key) {
  std::string_view s;
  if (member(e, key).get(s) != simdjson::SUCCESS) return {};
  return s;
}
inline bool has(dom::element e, std::string_view key) {
  dom::element v;
  return member(e, key).get(v) == simdjson::SUCCESS && !v.is_null();
}
inline std::int64_t num(dom::element e, std::string_view key, std::int64_t fallback = 0) {
  const Lookup m = member(e, key);
  std::int64_t v = 0;
  if (m.get(v) == simdjson::SUCCESS) return v;
  double d = 0;
  if (m.get(d) == simdjson::SUCCESS) {
    // Out of range (1e300, a huge unsigned) is clamped: the cast itself would be undefined.
    if (!(d > -9.2e18)) return d != d ? fallback : INT64_MIN;
    if (!(d < 9.2e18)) return INT64_MAX;
    return static_cast<std::int64_t>(d);
  }
  return fallback;
}
// A token count as a provider reports it: a non-negative integer. A non-negative number with a
// fraction or an exponent is rounded up (never billed below what was said); huge values clamp.
// Missing: nullopt with `missing` set. Another type, a negative number, NaN: nullopt.
inline std::optional<std::int64_t> token_count(Lookup m, bool* missing = nullptr) {
  if (missing) *missing = m.error() == simdjson::NO_SUCH_FIELD;
  std::int64_t v = 0;
  if (m.get(v) == simdjson::SUCCESS) return v >= 0 ? std::optional(v) : std::nullopt;
  std::uint64_t u = 0;
  if (m.get(u) == simdjson::SUCCESS) return INT64_MAX;  // above INT64_MAX
  double d = 0;
  if (m.get(d) == simdjson::SUCCESS && d >= 0) {
    if (!(d < 9.2e18)) return INT64_MAX;
    const auto t = static_cast<std::int64_t>(d);
    return static_cast<double>(t) < d ? t + 1 : t;
  }
  return std::nullopt;
}

// How a usage reader treats one count that it cannot read (token_count gives nullopt):
//  - kAlways: the provider always sends it (OpenAI's prompt/completion tokens): missing or
//    unreadable, the whole usage is unreadable;
//  - kIfPresent: it adds to the bill (output tokens, cache writes): unreadable when it is there
//    but not a count, 0 when it is missing;
//  - kDiscount: it only lowers the bill (cached input) or is informational (reasoning): anything
//    but a count reads as 0, the dearer answer (servers send `"prompt_tokens_details": null`).
enum class Need { kAlways, kIfPresent, kDiscount };
inline void read_count(Lookup m, Need need, std::int64_t& out, bool& unreadable) {
  bool missing = false;
  if (auto n = token_count(m, &missing)) {
    out = *n;
  } else if (need == Need::kAlways || (need == Need::kIfPresent && !missing)) {
    unreadable = true;
  }
}

// The same on a lookup that may have failed (`parent["child"]`): a failed lookup reads as empty.
inline std::string_view str(Lookup e, std::string_view key) {
  dom::element v;
  return e.get(v) == simdjson::SUCCESS ? str(v, key) : std::string_view{};
}
inline bool has(Lookup e, std::string_view key) {
  dom::element v;
  return e.get(v) == simdjson::SUCCESS && has(v, key);
}
inline std::int64_t num(Lookup e, std::string_view key, std::int64_t fallback = 0) {
  dom::element v;
  return e.get(v) == simdjson::SUCCESS ? num(v, key, fallback) : fallback;
}
inline std::string raw(dom::element e) {
  return simdjson::minify(e);
}

}  // namespace bw::api::json
