// The upstream response parsers of every provider adapter: a buffered answer (OpenAI chat,
// Anthropic Messages, OpenAI Responses, Gemini; picked by the first byte) through its decoder and
// re-encoded in every client API, or the same bytes split into SSE events through that
// provider's stream decoder. Checks that what is re-encoded is JSON that parses and that the
// usage is never negative.
#include <simdjson.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
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
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const int provider = data[0] % 4;
  const bool stream = (data[0] / 4) % 2 == 1;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (!stream) {
    bw::Result<bw::api::Response> r = bw::api::invalid("unset");
    switch (provider) {
      case 0:
        r = bw::api::decode_chat_response(body);
        break;
      case 1:
        r = bw::api::decode_messages_response(body);
        break;
      case 2:
        r = bw::api::decode_responses_response(body);
        break;
      default:
        r = bw::providers::decode_gemini_response(body);
        break;
    }
    if (!r) return 0;
    check(r->usage.prompt_tokens >= 0 && r->usage.completion_tokens >= 0);
    check_json(bw::api::encode_chat_response(*r, "m"));
    check_json(bw::api::encode_messages_response(*r, "m"));
    bw::api::Request req;
    req.model = "m";
    check_json(bw::api::encode_responses_response(*r, bw::api::response_meta(req, "m")));
    check_json(bw::providers::encode_gemini_response(*r, "m"));
    return 0;
  }
  std::unique_ptr<bw::api::StreamDecoder> dec;
  switch (provider) {
    case 0:
      dec = bw::api::make_chat_stream_decoder();
      break;
    case 1:
      dec = bw::api::make_messages_stream_decoder();
      break;
    case 2:
      dec = bw::api::make_responses_stream_decoder();
      break;
    default:
      dec = bw::providers::make_gemini_stream_decoder();
      break;
  }
  auto chat = bw::api::make_chat_stream_encoder("m", true);
  auto messages = bw::api::make_messages_stream_encoder("m");
  // Events are separated by a newline; an "event: <name>" prefix names it.
  std::vector<bw::api::StreamEvent> events;
  std::string out;
  std::size_t pos = 0;
  while (pos <= body.size()) {
    std::size_t nl = body.find('\n', pos);
    if (nl == std::string_view::npos) nl = body.size();
    std::string_view line = body.substr(pos, nl - pos);
    std::string_view name;
    if (line.starts_with("event: ")) {
      const auto sp = line.find(' ', 7);
      name = line.substr(7, sp == std::string_view::npos ? line.size() - 7 : sp - 7);
      line = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
    }
    events.clear();
    dec->feed(name, line, events);
    for (const auto& e : events) {
      chat->on_event(e, out);
      messages->on_event(e, out);
    }
    if (out.size() > (1u << 20)) out.clear();
    pos = nl + 1;
  }
  chat->finish(out);
  messages->finish(out);
  (void)dec->done();
  return 0;
}
