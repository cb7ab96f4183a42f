#pragma once
// The console's static files, built into the binary from src/ui/static and src/ui/vendor (see
// embed.cmake). Nothing is read from disk and no third-party host is contacted at run time.
// Thread safety: immutable data.
#include <span>
#include <string_view>

namespace bw::ui {

struct Asset {
  std::string_view path;          // relative to src/ui, e.g. "static/console.js"
  std::string_view content_type;  // from the file extension
  std::string_view body;
};

std::span<const Asset> assets();
// The asset at `path` (relative to src/ui), or nullptr.
const Asset* find_asset(std::string_view path);

}  // namespace bw::ui
