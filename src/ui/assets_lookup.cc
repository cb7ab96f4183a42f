#include "ui/assets.h"

namespace bw::ui {

const Asset* find_asset(std::string_view path) {
  for (const auto& a : assets()) {
    if (a.path == path) return &a;
  }
  return nullptr;
}

}  // namespace bw::ui
