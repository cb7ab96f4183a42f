#pragma once
// Text encodings of the list columns both databases store the same way: a list of names joined
// by '\n' (ledger budgets, a key's allowed models). Names never contain '\n' (validated on the
// way in), and empty names are not kept.
#include <string>
#include <string_view>
#include <vector>

namespace bw::store {

std::string join_lines(const std::vector<std::string>& items);
// join_lines() into `out`, reusing its room.
void join_lines_into(std::string& out, const std::vector<std::string>& items);
std::vector<std::string> split_lines(std::string_view s);

}  // namespace bw::store
