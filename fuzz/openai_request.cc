// Request extraction for every inbound API: the body of a chat completions, completions or
// embeddings request (the first byte picks the endpoint) through parse_request, and, when it is
// accepted, the estimate and the rewrite that is sent upstream. Checks that an accepted body is
// rewritten into valid JSON without duplicate keys and that the estimates are sane, and that
// the scan that reads the usual body (scan_request), where it answers, gives the parse's answer.
#include <simdjson.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "providers/openai.h"
#include "providers/request_scan.h"

namespace {

using namespace bw::providers;

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const Endpoint endpoint = static_cast<Endpoint>(data[0] % 3);
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  auto r = parse_request(endpoint, body);
  if (auto scanned = scan_request(endpoint, body)) {
    auto full = parse_request_full(endpoint, body);
    check(full.ok());
    check(scanned->model == full->model && scanned->stream == full->stream &&
          scanned->client_wants_usage == full->client_wants_usage &&
          scanned->max_tokens == full->max_tokens && scanned->prompt_chars == full->prompt_chars &&
          scanned->message_count == full->message_count && scanned->images == full->images &&
          scanned->choices == full->choices);
    const auto &a = scanned->layout, &b = full->layout;
    auto same_span = [](const auto& x, const auto& y) {
      return x.has_value() == y.has_value() && (!x || (x->begin == y->begin && x->end == y->end));
    };
    check(a.recorded == b.recorded && a.any_member == b.any_member &&
          a.stream_options == b.stream_options && a.escaped_key == b.escaped_key &&
          a.size == b.size && a.close == b.close && same_span(a.model, b.model) &&
          same_span(a.max_tokens, b.max_tokens) &&
          same_span(a.max_completion_tokens, b.max_completion_tokens));
  }
  if (!r) {
    check(r.error().status == 400);
    return 0;
  }
  check(!r->model.empty());
  check(r->choices >= 1 && r->choices <= kMaxChoices);
  check(estimate_prompt_tokens(*r) >= 3);
  check(completion_reservation(*r, 1000) >= 1000);
  auto out = rewrite_request(body, "provider/model\"x", r->stream, r->max_tokens > 0 ? 7 : 0);
  if (out) {
    // What goes upstream is JSON that parses, and parses to the same request.
    simdjson::dom::parser p;
    simdjson::dom::element doc;
    check(p.parse(*out).get(doc) == simdjson::SUCCESS);
    auto again = parse_request(endpoint, *out);
    check(again.ok());
    check(again->stream == r->stream);
    check(again->choices == r->choices);
  }
  (void)estimate_usage(*r, body);
  return 0;
}
