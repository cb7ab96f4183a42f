// docs/errors.md lists the same (status, type, code) triples as the catalogue in errors.h.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <tuple>

#include "gateway/errors.h"

namespace bw::gateway {
namespace {

using Triple = std::tuple<int, std::string, std::string>;

std::string trim(std::string s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '`')) s.erase(s.begin());
  while (!s.empty() && (s.back() == ' ' || s.back() == '`')) s.pop_back();
  return s;
}

std::set<Triple> documented() {
  std::ifstream in(std::string(BW_SOURCE_DIR) + "/docs/errors.md");
  EXPECT_TRUE(in.good()) << "docs/errors.md is missing";
  std::set<Triple> out;
  for (std::string line; std::getline(in, line);) {
    if (line.size() < 2 || line[0] != '|' || !std::isdigit(static_cast<unsigned char>(line[2]))) {
      continue;
    }
    std::vector<std::string> cells;
    std::stringstream ss(line.substr(1));
    for (std::string cell; std::getline(ss, cell, '|');) cells.push_back(trim(cell));
    if (cells.size() < 3) continue;
    const std::string code = cells[2] == "(none)" ? "" : cells[2];
    EXPECT_TRUE(out.emplace(std::stoi(cells[0]), cells[1], code).second) << "twice: " << line;
  }
  return out;
}

TEST(ErrorCatalogue, DocsTableMatchesErrorsH) {
  std::set<Triple> catalogue;
  for (const auto& e : errors::kAll) {
    EXPECT_TRUE(catalogue.emplace(e.status, std::string(e.type), std::string(e.code)).second)
        << "listed twice in errors.h: " << e.code;
  }
  const auto docs = documented();
  for (const auto& t : catalogue) {
    EXPECT_TRUE(docs.count(t)) << "not in docs/errors.md: " << std::get<0>(t) << " "
                               << std::get<1>(t) << " " << std::get<2>(t);
  }
  for (const auto& t : docs) {
    EXPECT_TRUE(catalogue.count(t)) << "in docs/errors.md but not in errors.h: " << std::get<0>(t)
                                    << " " << std::get<1>(t) << " " << std::get<2>(t);
  }
}

TEST(ErrorCatalogue, MakeKeepsTheSpec) {
  auto e = errors::make(errors::kModelNotFound, "no such model", "model");
  EXPECT_EQ(e.status, 404);
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.code, "model_not_found");
  EXPECT_EQ(e.param, "model");
  EXPECT_LT(e.retry_after_s, 0);
}

}  // namespace
}  // namespace bw::gateway
