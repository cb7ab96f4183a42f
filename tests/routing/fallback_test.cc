#include "routing/fallback.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace bw::routing {
namespace {

FallbackTable chain_table() {
  FallbackTable t;
  t["gpt-4.1"] = {{"gemini-2.5-flash", "deepseek-v3.2"}, "gemini-2.5-pro"};
  t["gemini-2.5-flash"] = {{"deepseek-v3.2"}, ""};
  t["deepseek-v3.2"] = {};
  t["gemini-2.5-pro"] = {{"claude-sonnet"}, ""};
  t["claude-sonnet"] = {};
  return t;
}

TEST(ValidateFallbacks, AcceptsValidAndMutualBackups) {
  EXPECT_EQ(validate_fallbacks(chain_table()), std::nullopt);
  FallbackTable t;
  t["a"] = {{"b"}, ""};
  t["b"] = {{"a"}, ""};  // lists are not followed transitively, so this cannot loop
  EXPECT_EQ(validate_fallbacks(t), std::nullopt);
}

TEST(ValidateFallbacks, ReportsErrors) {
  FallbackTable t = chain_table();
  t["deepseek-v3.2"].fallbacks = {"nope"};
  EXPECT_EQ(validate_fallbacks(t), "model 'deepseek-v3.2': unknown fallback model 'nope'");
  t = chain_table();
  t["gpt-4.1"].fallbacks = {"gemini-2.5-flash", "gpt-4.1"};
  EXPECT_EQ(validate_fallbacks(t), "model 'gpt-4.1': fallbacks list the model itself");
  t = chain_table();
  t["gpt-4.1"].fallbacks = {"gemini-2.5-flash", "deepseek-v3.2", "gemini-2.5-flash"};
  EXPECT_EQ(validate_fallbacks(t),
            "model 'gpt-4.1': fallback model 'gemini-2.5-flash' listed twice (loop)");
  t = chain_table();
  t["gemini-2.5-pro"].context_fallback = "claude-sonnet";
  t["claude-sonnet"].context_fallback = "gpt-4.1";
  EXPECT_EQ(validate_fallbacks(t),
            "context_fallback cycle: claude-sonnet -> gpt-4.1 -> gemini-2.5-pro -> claude-sonnet");
  t = chain_table();
  t["gpt-4.1"].context_fallback = "missing";
  EXPECT_EQ(validate_fallbacks(t), "model 'gpt-4.1': unknown context_fallback model 'missing'");
}

TEST(AttemptPlanner, WalksTheChainInOrder) {
  FallbackTable t = chain_table();
  AttemptPlanner p(&t, "gpt-4.1");
  EXPECT_EQ(p.model(), "gpt-4.1");
  EXPECT_EQ(p.on_unavailable(false), AttemptPlanner::Move::kNextModel);
  EXPECT_EQ(p.model(), "gemini-2.5-flash");
  EXPECT_EQ(p.on_unavailable(false), AttemptPlanner::Move::kNextModel);
  EXPECT_EQ(p.model(), "deepseek-v3.2");
  EXPECT_EQ(p.on_unavailable(false), AttemptPlanner::Move::kExhausted);
  EXPECT_EQ(p.visited(),
            (std::vector<std::string>{"gpt-4.1", "gemini-2.5-flash", "deepseek-v3.2"}));
}

TEST(AttemptPlanner, ExcludesFailedDeploymentsAndResetsPerModel) {
  FallbackTable t = chain_table();
  AttemptPlanner p(&t, "gpt-4.1");
  p.on_failed(0);
  p.on_failed(3);
  EXPECT_EQ(p.exclude_mask(), 0b1001u);
  EXPECT_EQ(p.on_unavailable(true), AttemptPlanner::Move::kNextModel);  // chain first
  EXPECT_EQ(p.exclude_mask(), 0u);
}

TEST(AttemptPlanner, RetriesSameModelWhenOnlyExclusionsBlockAndChainIsEmpty) {
  FallbackTable t = chain_table();
  AttemptPlanner p(&t, "deepseek-v3.2");
  p.on_failed(0);
  EXPECT_EQ(p.on_unavailable(true), AttemptPlanner::Move::kSameModel);
  EXPECT_EQ(p.exclude_mask(), 0u);
  EXPECT_EQ(p.on_unavailable(true), AttemptPlanner::Move::kExhausted);  // mask was already empty
}

TEST(AttemptPlanner, ContextOverflowMovesUpAndUsesThatModelsChain) {
  FallbackTable t = chain_table();
  AttemptPlanner p(&t, "gpt-4.1");
  EXPECT_TRUE(p.on_context_overflow());
  EXPECT_EQ(p.model(), "gemini-2.5-pro");
  EXPECT_FALSE(p.on_context_overflow());  // no larger model configured
  EXPECT_EQ(p.on_unavailable(false), AttemptPlanner::Move::kNextModel);
  EXPECT_EQ(p.model(), "claude-sonnet");
  EXPECT_EQ(p.on_unavailable(false), AttemptPlanner::Move::kExhausted);
}

TEST(AttemptPlanner, TerminatesOnAnInvalidLoopingTable) {
  FallbackTable t;
  t["a"] = {{"b", "a", "b"}, "b"};
  t["b"] = {{"a"}, "a"};
  AttemptPlanner p(&t, "a");
  int steps = 0;
  while (p.on_unavailable(false) == AttemptPlanner::Move::kNextModel) ++steps;
  EXPECT_EQ(steps, 1);                    // only b is new
  EXPECT_FALSE(p.on_context_overflow());  // a already visited
  EXPECT_EQ(p.visited(), (std::vector<std::string>{"a", "b"}));
}

TEST(AttemptPlanner, UnknownModelWithoutTable) {
  AttemptPlanner p(nullptr, "x");
  EXPECT_EQ(p.on_unavailable(false), AttemptPlanner::Move::kExhausted);
  EXPECT_FALSE(p.on_context_overflow());
}

TEST(ModelsThatMayAnswer, ListAndContextFallbacksWithTheirOwnLists) {
  const FallbackTable t = chain_table();
  // gpt-4.1's list, then its context fallback gemini-2.5-pro, which brings claude-sonnet;
  // gemini-2.5-flash's own list is not followed (deepseek is in gpt-4.1's list anyway).
  EXPECT_EQ(models_that_may_answer(t, "gpt-4.1"),
            (std::vector<std::string>{"gpt-4.1", "gemini-2.5-flash", "deepseek-v3.2",
                                      "gemini-2.5-pro", "claude-sonnet"}));
  EXPECT_EQ(models_that_may_answer(t, "deepseek-v3.2"),
            (std::vector<std::string>{"deepseek-v3.2"}));
  EXPECT_EQ(models_that_may_answer(t, "unknown"), (std::vector<std::string>{"unknown"}));
}

TEST(ModelsThatMayAnswer, AContextFallbackOfAFallbackIsEntered) {
  FallbackTable t;
  t["a"] = {{"b"}, ""};
  t["b"] = {{"c"}, "big"};  // b's list is not followed; a context overflow on b enters big
  t["c"] = {};
  t["big"] = {{"bigger-list"}, ""};
  t["bigger-list"] = {};
  EXPECT_EQ(models_that_may_answer(t, "a"),
            (std::vector<std::string>{"a", "b", "big", "bigger-list"}));
}

// Every model any walk of the planner enters is in the list (random walks on a table with lists,
// context fallbacks and mutual backups).
TEST(ModelsThatMayAnswer, CoversEveryPlannerWalk) {
  FallbackTable t;
  t["a"] = {{"b", "c"}, "d"};
  t["b"] = {{"e"}, "f"};
  t["c"] = {{"a"}, ""};
  t["d"] = {{"g"}, "h"};
  t["e"] = {};
  t["f"] = {{"i"}, ""};
  t["g"] = {{}, "j"};
  t["h"] = {};
  t["i"] = {};
  t["j"] = {{"k"}, ""};
  t["k"] = {};
  for (const char* start : {"a", "b", "c", "d", "g"}) {
    const auto may = models_that_may_answer(t, start);
    for (unsigned seed = 0; seed < 200; ++seed) {
      AttemptPlanner p(&t, start);
      unsigned bits = seed * 2654435761u;
      for (int step = 0; step < 12; ++step, bits >>= 2) {
        const bool moved = (bits & 1) ? p.on_context_overflow()
                                      : p.on_unavailable(false) == AttemptPlanner::Move::kNextModel;
        if (!moved && !(bits & 1)) break;
      }
      for (const auto& m : p.visited()) {
        EXPECT_NE(std::find(may.begin(), may.end(), m), may.end()) << start << " reached " << m;
      }
    }
  }
}

}  // namespace
}  // namespace bw::routing
