#include "cache/semantic_index.h"

#include <hnswlib/hnswlib.h>

#include <cmath>

namespace bw::cache {

struct SemanticIndex::Impl {
  struct Slot {
    std::string partition;
    std::string key;
    Nanos expires_at = 0;
    bool live = false;
  };
  std::size_t dim = 0;
  std::unique_ptr<hnswlib::InnerProductSpace> space;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> hnsw;
  std::vector<Slot> slots;
  std::unordered_map<std::string, std::size_t> by_key;
  std::size_t next = 0;  // the next slot to (re)use: the oldest insert once the index is full
  std::size_t used = 0;  // slots ever filled
  std::size_t live = 0;

  void kill(std::size_t label) {
    auto& s = slots[label];
    if (!s.live) return;
    s.live = false;
    --live;
    by_key.erase(s.key);
    try {
      hnsw->markDelete(label);
    } catch (const std::exception&) {
    }
  }
};

bool normalize(std::vector<float>& v) {
  double n = 0;
  for (float x : v) n += static_cast<double>(x) * x;
  if (n <= 0 || !std::isfinite(n)) return false;
  const float inv = static_cast<float>(1.0 / std::sqrt(n));
  for (float& x : v) x *= inv;
  return true;
}

SemanticIndex::SemanticIndex(SemanticIndexOptions options)
    : options_(options), impl_(std::make_unique<Impl>()) {
  if (options_.max_entries == 0) options_.max_entries = 1;
}

SemanticIndex::~SemanticIndex() = default;

std::optional<SemanticIndex::Match> SemanticIndex::search(std::vector<float> v,
                                                          const std::string& partition,
                                                          float threshold, Nanos now) {
  if (!normalize(v)) return std::nullopt;
  std::lock_guard lock(mu_);
  auto& im = *impl_;
  if (!im.hnsw || v.size() != im.dim || im.live == 0) return std::nullopt;
  std::priority_queue<std::pair<float, hnswlib::labeltype>> found;
  try {
    found = im.hnsw->searchKnn(v.data(), std::min(options_.candidates, im.live));
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::optional<Match> best;
  while (!found.empty()) {  // farthest first
    auto [dist, label] = found.top();
    found.pop();
    auto& s = im.slots[label];
    if (!s.live) continue;
    if (s.expires_at <= now) {
      im.kill(label);
      continue;
    }
    const float sim = 1.0f - dist;  // InnerProductSpace distance = 1 - <a, b>
    if (s.partition != partition || sim < threshold) continue;
    if (!best || sim >= best->similarity) best = Match{s.key, sim};
  }
  return best;
}

bool SemanticIndex::add(std::vector<float> v, const std::string& partition, const std::string& key,
                        Nanos expires_at) {
  if (!normalize(v)) return false;
  std::lock_guard lock(mu_);
  auto& im = *impl_;
  if (!im.hnsw) {
    im.dim = v.size();
    im.space = std::make_unique<hnswlib::InnerProductSpace>(im.dim);
    try {
      im.hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(
          im.space.get(), options_.max_entries, options_.m, options_.ef_construction);
    } catch (const std::exception&) {
      im.space.reset();
      return false;
    }
    im.hnsw->setEf(options_.ef_search);
    im.slots.resize(options_.max_entries);
  }
  if (v.size() != im.dim) return false;
  std::size_t label;
  if (auto it = im.by_key.find(key); it != im.by_key.end()) {
    label = it->second;  // the same answer again: refresh its slot
  } else {
    label = im.next;
    im.next = (im.next + 1) % options_.max_entries;
    if (im.slots[label].live) im.kill(label);
  }
  try {
    // An existing label is updated in place (and undeleted): memory never grows past the slots.
    im.hnsw->addPoint(v.data(), label);
  } catch (const std::exception&) {
    return false;
  }
  auto& s = im.slots[label];
  if (!s.live) {
    ++im.live;
    if (label >= im.used) im.used = label + 1;
  }
  s.live = true;
  s.partition = partition;
  s.key = key;
  s.expires_at = expires_at;
  im.by_key[key] = label;
  return true;
}

std::size_t SemanticIndex::size() const {
  std::lock_guard lock(mu_);
  return impl_->live;
}

std::size_t SemanticIndex::dimension() const {
  std::lock_guard lock(mu_);
  return impl_->dim;
}

}  // namespace bw::cache
