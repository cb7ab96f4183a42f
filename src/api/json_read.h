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

inline std::string_view str(dom::element e, std::string_view key) {
  std::string_view s;
  if (e[key].get(s) != simdjson::SUCCESS) return {};
  return s;
}
inline bool has(dom::element e, std::string_view key) {
  dom::element v;
  return e[key].get(v) == simdjson::SUCCESS && !v.is_null();
}
inline std::int64_t num(dom::element e, std::string_view key, std::int64_t fallback = 0) {
  std::int64_t v = 0;
  if (e[key].get(v) == simdjson::SUCCESS) return v;
  double d = 0;
  if (e[key].get(d) == simdjson::SUCCESS) return static_cast<std::int64_t>(d);
  return fallback;
}
inline std::string raw(dom::element e) {
  return simdjson::minify(e);
}

}  // namespace bw::api::json
