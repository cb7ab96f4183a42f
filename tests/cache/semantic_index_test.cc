#include "cache/semantic_index.h"

#include <gtest/gtest.h>

#include <random>

namespace bw::cache {
namespace {

std::vector<float> random_vec(std::mt19937& rng, std::size_t dim = 32) {
  std::normal_distribution<float> d;
  std::vector<float> v(dim);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(SemanticIndex, NearVectorHitsAboveThresholdInItsPartition) {
  SemanticIndex idx({100});
  std::mt19937 rng(1);
  auto a = random_vec(rng);
  ASSERT_TRUE(idx.add(a, "p1", "key-a", seconds(100)));
  for (int i = 0; i < 20; ++i)
    idx.add(random_vec(rng), "p1", "k" + std::to_string(i), seconds(100));
  auto near = a;
  near[0] += 0.05f;
  auto m = idx.search(near, "p1", 0.95f, 0);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->key, "key-a");
  EXPECT_GT(m->similarity, 0.99f);
  EXPECT_FALSE(idx.search(near, "p2", 0.5f, 0));      // another partition
  EXPECT_FALSE(idx.search(near, "p1", 0.99999f, 0));  // stricter than the distance
}

TEST(SemanticIndex, ExpiredEntriesAreNotServed) {
  SemanticIndex idx({10});
  std::mt19937 rng(2);
  auto a = random_vec(rng);
  idx.add(a, "p", "k", seconds(10));
  EXPECT_TRUE(idx.search(a, "p", 0.9f, seconds(9)));
  EXPECT_FALSE(idx.search(a, "p", 0.9f, seconds(10)));
  EXPECT_EQ(idx.size(), 0u);
}

TEST(SemanticIndex, SizeIsBoundedAndOldestGoesFirst) {
  SemanticIndex idx({50});
  std::mt19937 rng(3);
  std::vector<std::vector<float>> all;
  for (int i = 0; i < 500; ++i) {
    all.push_back(random_vec(rng));
    ASSERT_TRUE(idx.add(all.back(), "p", "k" + std::to_string(i), seconds(100)));
    ASSERT_LE(idx.size(), 50u);
  }
  EXPECT_EQ(idx.size(), 50u);
  EXPECT_FALSE(idx.search(all[0], "p", 0.999f, 0));
  auto m = idx.search(all[499], "p", 0.999f, 0);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->key, "k499");
}

TEST(SemanticIndex, DimensionIsFixedByTheFirstVector) {
  SemanticIndex idx({10});
  EXPECT_TRUE(idx.add(std::vector<float>(8, 1.0f), "p", "k", seconds(1)));
  EXPECT_FALSE(idx.add(std::vector<float>(9, 1.0f), "p", "k2", seconds(1)));
  EXPECT_FALSE(idx.add(std::vector<float>(8, 0.0f), "p", "k3", seconds(1)));
  EXPECT_FALSE(idx.search(std::vector<float>(9, 1.0f), "p", 0.1f, 0));
  EXPECT_EQ(idx.dimension(), 8u);
}

}  // namespace
}  // namespace bw::cache
