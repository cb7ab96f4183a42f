#pragma once
// SemanticIndex: nearest-neighbour search over prompt embeddings (hnswlib, inner product of
// normalised vectors = cosine similarity), for the semantic cache. An entry is (vector,
// partition, exact-cache key, expiry). The partition is a hash of everything that must match
// exactly besides the prompt (scope, model, API, stream, tools and parameters); a match must be
// in the same partition, unexpired and at or above the threshold.
//
// Memory is bounded: the index has `max_entries` slots, allocated once; when it is full the
// oldest insert's slot is reused (its vector replaced in place). Expired entries are skipped and
// marked deleted. The `candidates` nearest neighbours are checked for a partition match, so a
// partition crowded out by closer vectors of other partitions misses (never a wrong answer).
// Thread safety: every method may be called from any thread (one mutex; operations take
// microseconds at these sizes and never wait on I/O).
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/clock.h"

namespace bw::cache {

struct SemanticIndexOptions {
  std::size_t max_entries = 10000;
  std::size_t m = 16;
  std::size_t ef_construction = 100;
  std::size_t ef_search = 64;
  std::size_t candidates = 16;
};

class SemanticIndex {
 public:
  explicit SemanticIndex(SemanticIndexOptions options);
  ~SemanticIndex();

  struct Match {
    std::string key;
    float similarity = 0;
  };
  std::optional<Match> search(std::vector<float> v, const std::string& partition, float threshold,
                              Nanos now);
  // False for a vector of another dimension than the first one added, or an all-zero one.
  bool add(std::vector<float> v, const std::string& partition, const std::string& key,
           Nanos expires_at);

  std::size_t size() const;  // live (unexpired at last sight) entries
  std::size_t capacity() const { return options_.max_entries; }
  std::size_t dimension() const;

 private:
  struct Impl;
  SemanticIndexOptions options_;
  mutable std::mutex mu_;
  std::unique_ptr<Impl> impl_;
};

// Scales v to unit length; false for a zero vector.
bool normalize(std::vector<float>& v);

}  // namespace bw::cache
