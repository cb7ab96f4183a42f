// The upstream answer parsers of the OpenAI adapter (every OpenAI-compatible provider): an SSE
// stream split into events (pieces sized by the input), each event's data through
// inspect_chunk, and the whole input as a buffered answer through extract_usage and
// estimate_usage. Checks the splitter's bound and that counts are never negative.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "http/sse.h"
#include "providers/openai.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t step = 1 + data[0] % 97;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  constexpr std::size_t kMaxEvent = 4096;
  bw::http::SseSplitter splitter(kMaxEvent);
  std::string scratch;
  for (std::size_t pos = 0; pos < input.size(); pos += step) {
    if (!splitter.feed(input.substr(pos, step))) break;
    std::string_view event;
    while (splitter.next(event)) {
      const auto payload = bw::http::sse_data(event, scratch);
      check(payload.size() <= event.size());
      auto info = bw::providers::inspect_chunk(payload);
      if (info.has_text) check(info.text_chars > 0);
    }
    splitter.compact();
    check(splitter.pending().size() <= kMaxEvent + step);
  }
  auto u = bw::providers::extract_usage(input);
  (void)u;
  bw::providers::LlmRequest req;
  auto e = bw::providers::estimate_usage(req, input);
  check(e.prompt_tokens >= 0 && e.completion_tokens >= 0);
  return 0;
}
