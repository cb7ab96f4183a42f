#pragma once

#include <string_view>

namespace bw {

// The release this binary is (the project's version) and the commit it was built from: 12 hex
// digits, with "-dirty" when the sources had uncommitted changes, or "unknown" when it was not
// built from a git checkout. Shown by `bellwether --version` and in bellwether_build_info.
std::string_view build_version();
std::string_view build_commit();

}  // namespace bw
