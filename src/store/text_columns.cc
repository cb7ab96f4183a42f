#include "store/text_columns.h"

namespace bw::store {

std::string join_lines(const std::vector<std::string>& items) {
  std::string out;
  join_lines_into(out, items);
  return out;
}

void join_lines_into(std::string& out, const std::vector<std::string>& items) {
  out.clear();
  for (const auto& item : items) {
    if (!out.empty()) out.push_back('\n');
    out += item;
  }
}

std::vector<std::string> split_lines(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const auto nl = s.find('\n');
    const auto part = s.substr(0, nl);
    if (!part.empty()) out.emplace_back(part);
    if (nl == std::string_view::npos) break;
    s.remove_prefix(nl + 1);
  }
  return out;
}

}  // namespace bw::store
