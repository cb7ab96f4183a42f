#include "api/json_read.h"

namespace bw::api::json {

dom::parser& parser(int slot) {
  thread_local dom::parser p[3] = {dom::parser(16 * 1024 * 1024), dom::parser(16 * 1024 * 1024),
                                   dom::parser(16 * 1024 * 1024)};
  return p[slot < 0 || slot > 2 ? 0 : slot];
}

Result<dom::element> parse_object(std::string_view body, int slot) {
  dom::element doc;
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

}  // namespace bw::api::json
