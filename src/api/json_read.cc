#include "api/json_read.h"

#include <algorithm>
#include <array>
#include <vector>

namespace bw::api::json {

namespace {

constexpr std::size_t kFewKeys = 16;

// The first key that an object holds twice, of an object with at most kFewKeys keys (empty if
// none): pairwise is cheaper than sorting.
std::string_view first_duplicate(const std::string_view* keys, std::size_t n) {
  for (std::size_t i = 1; i < n; ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (keys[i] == keys[j]) return keys[i];
    }
  }
  return {};
}

// The same for more keys.
std::string_view first_duplicate(std::vector<std::string_view>& keys) {
  std::sort(keys.begin(), keys.end());
  for (std::size_t i = 1; i < keys.size(); ++i) {
    if (keys[i] == keys[i - 1]) return keys[i];
  }
  return {};
}

// Nesting depth (capped at `limit`) and, in the same walk, the first duplicate key at any depth.
// Keys compare after unescaping, so "stream" and "str\u0065am" are the same key.
std::size_t check_tree(simdjson::dom::element e, std::size_t limit, std::string_view& dup) {
  // Recursion is bounded by `limit`.
  if (limit == 0) return 1;
  std::size_t best = 0;
  if (e.is_object()) {
    // Bound to a local: iterating the temporary result would dangle.
    simdjson::dom::object object_1 = e.get_object().value_unsafe();
    // The keys of the usual object stay on the stack (a vector cost a few allocations for
    // every object of every request).
    std::array<std::string_view, kFewKeys> few;
    std::vector<std::string_view> many;
    std::size_t n = 0;
    for (auto field : object_1) {
      if (n < few.size()) {
        few[n] = field.key;
      } else {
        if (many.empty()) many.assign(few.begin(), few.end());
        many.push_back(field.key);
      }
      ++n;
      best = std::max(best, check_tree(field.value, limit - 1, dup));
      if (best >= limit) break;
    }
    if (dup.empty() && n > 1) {
      dup = n <= few.size() ? first_duplicate(few.data(), n) : first_duplicate(many);
    }
    return best + 1;
  }
  if (e.is_array()) {
    // Bound to a local: iterating the temporary result would dangle.
    simdjson::dom::array array_2 = e.get_array().value_unsafe();
    for (auto v : array_2) {
      best = std::max(best, check_tree(v, limit - 1, dup));
      if (best >= limit) break;
    }
    return best + 1;
  }
  return 0;
}

Error duplicate_key_error(std::string_view key) {
  return make_error(400, "invalid_request_error", "duplicate_key",
                    "The request body has the key '" + std::string(key) +
                        "' more than once in one object; each key may appear once.",
                    std::string(key));
}

}  // namespace

dom::parser& parser(int slot) {
  thread_local dom::parser p[3] = {dom::parser(16 * 1024 * 1024), dom::parser(16 * 1024 * 1024),
                                   dom::parser(16 * 1024 * 1024)};
  return p[slot < 0 || slot > 2 ? 0 : slot];
}

Result<dom::element> parse_object(std::string_view body, int slot) {
  dom::element doc;
  if (body.empty()) {  // simdjson must not be handed a null buffer
    return make_error(400, "invalid_request_error", "invalid_json", "The body is empty.");
  }
  auto err = parser(slot).parse(body.data(), body.size()).get(doc);
  if (err) {
    return make_error(400, "invalid_request_error", "invalid_json",
                      std::string("We could not parse the JSON body of your request: ") +
                          simdjson::error_message(err));
  }
  if (!doc.is_object()) {
    return make_error(400, "invalid_request_error", "invalid_json",
                      "The request body must be a JSON object.");
  }
  return doc;
}

Result<Ok> check_request_tree(dom::element doc) {
  std::string_view dup;
  if (check_tree(doc, kMaxRequestDepth + 1, dup) > kMaxRequestDepth) {
    return make_error(
        400, "invalid_request_error", "invalid_json",
        "The JSON body is nested deeper than " + std::to_string(kMaxRequestDepth) + " levels.");
  }
  if (!dup.empty()) return duplicate_key_error(dup);
  return Ok{};
}

Result<dom::element> parse_request_object(std::string_view body) {
  dom::element doc;
  if (body.empty()) {
    return make_error(400, "invalid_request_error", "invalid_json", "The request body is empty.");
  }
  auto err = parser(0).parse(body.data(), body.size()).get(doc);
  if (err == simdjson::UTF8_ERROR) {
    return make_error(400, "invalid_request_error", "invalid_json",
                      "The request body is not valid UTF-8.");
  }
  if (err == simdjson::DEPTH_ERROR) {
    return make_error(400, "invalid_request_error", "invalid_json",
                      "The JSON body is nested too deeply.");
  }
  if (err) {
    return make_error(400, "invalid_request_error", "invalid_json",
                      std::string("We could not parse the JSON body of your request: ") +
                          simdjson::error_message(err));
  }
  if (!doc.is_object()) {
    return make_error(400, "invalid_request_error", "invalid_json",
                      "The request body must be a JSON object.");
  }
  if (auto checked = check_request_tree(doc); !checked) return checked.error();
  return doc;
}

}  // namespace bw::api::json
