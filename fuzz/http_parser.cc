// The HTTP/1.1 parsers of src/http/wire.h against Beast's basic_parser (the parser they
// replaced; tests/http/parser_reference.h): the input is a request or a response, fed to both in
// pieces whose sizes come from the input. They must accept or refuse it alike (outside the
// documented differences) and, when they accept it, agree on the start line, fields, body,
// framing, keep-alive and the bytes left for the next message.
//
// Input: byte 0 = mode (bit 7: response; bit 6: head first, then body; bits 0-5: piece size - 1),
// the rest is the message.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../tests/http/parser_reference.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace bw::http::wire::reference;
  if (size < 1) return 0;
  const bool response = (data[0] & 0x80) != 0;
  const bool head_then_body = (data[0] & 0x40) != 0;
  const std::vector<std::size_t> steps{static_cast<std::size_t>(1 + (data[0] & 0x3f))};
  const std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  Tally t;
  const std::string diff = response ? compare_response(input, steps, head_then_body, t)
                                    : compare_request(input, steps, head_then_body, t);
  if (!diff.empty()) {
    std::fprintf(stderr, "%s: %s\n%s\n", response ? "response" : "request", diff.c_str(),
                 escaped(input).c_str());
    std::abort();
  }
  return 0;
}
