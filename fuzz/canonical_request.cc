// Request extraction for the canonical inbound APIs: a Messages, Responses or chat body (the first
// byte picks the API) through its decoder and, when accepted, into every upstream format (chat,
// Anthropic Messages, Gemini). Checks that a refusal is a 400, that an accepted request has a
// model, and that every upstream body is JSON that parses.
#include <simdjson.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "api/chat.h"
#include "api/messages.h"
#include "api/responses.h"
#include "providers/gemini.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

void check_json(const std::string& s) {
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  check(p.parse(s).get(doc) == simdjson::SUCCESS);
  check(doc.is_object());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  bw::Result<bw::api::Request> r = bw::api::invalid("unset");
  switch (data[0] % 3) {
    case 0:
      r = bw::api::decode_messages_request(body);
      break;
    case 1:
      r = bw::api::decode_responses_request(body);
      break;
    default:
      r = bw::api::decode_chat_request(body);
      break;
  }
  if (!r) {
    check(r.error().status == 400);
    return 0;
  }
  check(!r->model.empty());
  (void)bw::api::link_tool_results(*r);
  check(bw::api::count_input_tokens(*r) >= 0);
  std::vector<std::string> dropped;
  check_json(bw::api::encode_chat_request(*r, "upstream\"model", 7, dropped));
  check_json(bw::api::encode_messages_request(*r, "upstream\"model", 0, 1024, dropped));
  check_json(bw::providers::encode_gemini_request(*r, 7, dropped));
  return 0;
}
