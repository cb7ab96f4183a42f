// The HTTP/1.1 request parser (wire::RequestParser) as the session drives it: bytes arrive in
// pieces whose sizes come from the input, the head first, then the body. Checks that what it
// reports stays within the configured limits.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/wire.h"

namespace {

using namespace bw::http;
namespace beast = boost::beast;

constexpr std::size_t kHeaderLimit = 4096;
constexpr std::size_t kBodyLimit = 64 * 1024;

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t step = 1 + data[0] % 64;  // the size of each read
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string arena, body;
  std::vector<std::pair<std::size_t, std::size_t>> fields;
  beast::flat_buffer buffer;
  std::size_t pos = 0;
  // Up to three pipelined requests on one "connection", reusing the storage as the session does.
  for (int request = 0; request < 3; ++request) {
    wire::RequestParser p(arena, fields, body, 20);
    p.header_limit(static_cast<std::uint32_t>(kHeaderLimit));
    p.body_limit(kBodyLimit);
    p.eager(true);
    bool done = false;
    for (int rounds = 0; rounds < 100000 && !done; ++rounds) {
      if (buffer.size() > 0) {
        wire::error_code ec;
        const std::size_t used = p.put(buffer.data(), ec);
        check(used <= buffer.size());
        buffer.consume(used);
        if (ec && ec != wire::bhttp::error::need_more) return 0;
        if (!ec && p.is_done()) {
          done = true;
          break;
        }
        if (!ec && used > 0 && buffer.size() > 0) continue;
      }
      if (pos == input.size()) {
        wire::error_code ec;
        if (p.got_some()) p.put_eof(ec);
        return 0;
      }
      const std::size_t n = std::min(step, input.size() - pos);
      auto mb = buffer.prepare(n);
      std::memcpy(mb.data(), input.data() + pos, n);
      buffer.commit(n);
      pos += n;
    }
    if (!done) return 0;
    std::vector<std::pair<std::string_view, std::string_view>> headers;
    p.headers(headers);
    check(headers.size() <= 20);
    check(body.size() <= kBodyLimit);
    check(!p.target().empty());
    // An absolute-form target is always rewritten to origin form.
    if (p.absolute_form()) check(p.target().front() == '/');
    for (const auto& [n, v] : headers) {
      check(!n.empty());
      check(v.find('\r') == std::string_view::npos && v.find('\n') == std::string_view::npos);
    }
  }
  return 0;
}
