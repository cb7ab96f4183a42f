#pragma once
// StringHash: a transparent hash for maps keyed by std::string, so that a lookup by
// std::string_view (with std::equal_to<>) builds no string: a key longer than the short-string
// buffer would otherwise cost an allocation per lookup.
// Thread safety: stateless.
#include <cstddef>
#include <functional>
#include <string_view>

namespace bw {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace bw
