// The configuration loader: YAML text through load_string (parsing, typing, validation). A bad
// file must be an error with a message, never a crash.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;
  const std::string yaml(reinterpret_cast<const char*>(data), size);
  auto r = bw::config::load_string(yaml, "fuzz.yaml");
  if (!r && r.error().message.empty()) std::abort();
  return 0;
}
