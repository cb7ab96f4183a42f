#include "limits/memory_limit_store.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <unordered_map>
#include <variant>

#include "common/light_mutex.h"

namespace bw::limits {
namespace {

// A bucket's identity: `lo` hashes the whole key, `hi` the part of it that names the bucket's
// owner (owner_part). The shard is taken from `hi`, so the buckets of one owner (every limit of
// one API key) share a shard and a request's batch takes one lock. Two keys merge only if both
// halves collide: for keys of different owners that is 128 bits (p ~ n^2 / 2^129), for the few
// limits of one owner 64 bits (p ~ k^2 / 2^65); the per-process random seed keeps chosen keys
// from colliding on purpose.
struct KeyHash {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  bool operator==(const KeyHash&) const = default;
};

struct KeyHashHasher {
  // noexcept + cheap: libstdc++ then does not cache the hash in each node (saves 8 bytes/key).
  std::size_t operator()(const KeyHash& k) const noexcept { return k.lo; }
};

std::uint64_t mum(std::uint64_t a, std::uint64_t b) {
  const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
}

KeyHash hash128(std::string_view s, std::uint64_t seed) {
  constexpr std::uint64_t k1 = 0xa0761d6478bd642full, k2 = 0xe7037ed1a0b428dbull,
                          k3 = 0x8ebc6af09c88c6e3ull, k4 = 0x589965cc75374cc3ull;
  std::uint64_t a = seed ^ k1, b = (seed * k2) ^ k3;
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    a = mum(a ^ w, k2);
    b = mum(b ^ w ^ k4, k3) + a;
  }
  // The 0-7 remaining bytes, little-endian, without a variable-size memcpy (a call, and a
  // store-forwarding stall on the reload).
  const char* const t = s.data() + i;
  const std::size_t rem = s.size() - i;
  std::uint64_t tail = 0;
  if (rem >= 4) {
    std::uint32_t lo, hi;  // overlapping reads: the shared bytes are equal, so OR them
    std::memcpy(&lo, t, 4);
    std::memcpy(&hi, t + rem - 4, 4);
    tail = lo | (static_cast<std::uint64_t>(hi) << (8 * (rem - 4)));
  } else if (rem > 0) {
    tail = static_cast<std::uint64_t>(static_cast<unsigned char>(t[0])) |
           static_cast<std::uint64_t>(static_cast<unsigned char>(t[rem / 2])) << (8 * (rem / 2)) |
           static_cast<std::uint64_t>(static_cast<unsigned char>(t[rem - 1])) << (8 * (rem - 1));
  }
  a = mum(a ^ tail ^ (static_cast<std::uint64_t>(s.size()) << 56), k2);
  b = mum(b ^ tail ^ k4, k3) + a;
  return KeyHash{mum(a ^ k1, b ^ k4), mum(b ^ k2, a ^ k3)};
}

// The bytes of a key that name its owner: what follows its second 0x1f separator (the limiter's
// "<source>\x1f<name>\x1f<scope>\x1f<id>..." gives "<scope>\x1f<id>..."), or the whole key when
// it has fewer.
std::string_view owner_part(std::string_view key) {
  const std::size_t a = key.find('\x1f');
  if (a == std::string_view::npos) return key;
  const std::size_t b = key.find('\x1f', a + 1);
  return b == std::string_view::npos ? key : key.substr(b + 1);
}

constexpr std::uint64_t kOwnerSeed = 0x2d358dccaa6c78a5ull;

KeyHash hash_key(std::string_view key, std::uint64_t seed) {
  return KeyHash{hash128(key, seed).lo, hash128(owner_part(key), seed ^ kOwnerSeed).lo};
}

using StoredState = std::variant<GcraState, TokenBucketState, std::unique_ptr<SlidingWindowState>>;

struct Entry {
  Nanos idle_at = 0;  // from then on the bucket equals a fresh one and may be deleted
  StoredState state;
};

using ShardMap = std::unordered_map<KeyHash, Entry, KeyHashHasher>;

constexpr std::size_t kMinSweepSize = 1024;

// A bucket's state while a batch is evaluated; committed only if the batch passes.
struct Working {
  KeyHash key;
  std::size_t shard = 0;
  Entry* entry = nullptr;  // existing entry, or null for a new bucket
  Algorithm algorithm = Algorithm::kGcra;
  const LimitSpec* spec = nullptr;  // spec of the last check that touched it
  // The state of `algorithm`, set by load(). A union: clearing all three (~200 bytes) for every
  // bucket of every batch would cost more than the arithmetic.
  union {
    GcraState gcra;
    TokenBucketState tb;
    SlidingWindowState sw;
  };
  bool touched = false;
  bool commit = false;  // some check consumed on this bucket: write it back
  bool untracked = false;
  int checks = 0;          // checks of the batch on this bucket
  Nanos reset_after = -1;  // of the last check's decision
  // A stored sliding window that the batch's one check on this bucket decides from where it is
  // (`sw` is not loaded): at commit the check's charge is applied to it in place (`sw_charge`,
  // decided on the same ring under the same lock), or, when the check could not prepare one
  // (a cost of 0, a ring to rebuild), consumed there with the same inputs.
  SlidingWindowState* sw_stored = nullptr;
  SlidingWindowCharge sw_charge;
  std::int64_t cost = 0;

  Working() {}  // NOLINT(modernize-use-equals-default): leaves the union uninitialised
};

std::size_t variant_index(Algorithm a) {
  return static_cast<std::size_t>(a);
}

// Only the state of `algorithm` is set: run/adjust/idle_at/store never read the other two.
void load(Working& w, Algorithm algorithm) {
  w.algorithm = algorithm;
  // A reload that changed a limit's algorithm starts that bucket afresh.
  const bool stored = w.entry && w.entry->state.index() == variant_index(algorithm);
  switch (algorithm) {
    case Algorithm::kGcra:
      w.gcra = stored ? *std::get_if<GcraState>(&w.entry->state) : GcraState{};
      break;
    case Algorithm::kTokenBucket:
      w.tb = stored ? *std::get_if<TokenBucketState>(&w.entry->state) : TokenBucketState{};
      break;
    case Algorithm::kSlidingWindow: {
      const SlidingWindowState* p =
          stored ? std::get_if<std::unique_ptr<SlidingWindowState>>(&w.entry->state)->get()
                 : nullptr;
      w.sw = p ? *p : SlidingWindowState{};
      break;
    }
  }
}

Decision run(Working& w, const BucketParams& p, std::int64_t cost, Nanos now, bool mutate) {
  switch (w.algorithm) {
    case Algorithm::kGcra:
      return mutate ? Gcra::consume(w.gcra, p, cost, now) : Gcra::check(w.gcra, p, cost, now);
    case Algorithm::kTokenBucket:
      return mutate ? TokenBucket::consume(w.tb, p, cost, now)
                    : TokenBucket::check(w.tb, p, cost, now);
    case Algorithm::kSlidingWindow:
      return mutate ? SlidingWindow::consume(w.sw, p, cost, now)
                    : SlidingWindow::check(w.sw, p, cost, now);
  }
  return {};
}

void adjust_working(Working& w, const BucketParams& p, std::int64_t delta, Nanos now) {
  switch (w.algorithm) {
    case Algorithm::kGcra:
      Gcra::adjust(w.gcra, p, delta, now);
      break;
    case Algorithm::kTokenBucket:
      TokenBucket::adjust(w.tb, p, delta, now);
      break;
    case Algorithm::kSlidingWindow:
      SlidingWindow::adjust(w.sw, p, delta, now);
      break;
  }
}

Nanos idle_at(const Working& w, const BucketParams& p, Nanos now) {
  switch (w.algorithm) {
    case Algorithm::kGcra:
      return Gcra::idle_at(w.gcra, p, now);
    case Algorithm::kTokenBucket:
      return TokenBucket::idle_at(w.tb, p, now);
    case Algorithm::kSlidingWindow:
      return SlidingWindow::idle_at(w.sw, p, now);
  }
  return now;
}

void store(Entry& e, const Working& w, Nanos idle) {
  e.idle_at = idle;
  switch (w.algorithm) {
    case Algorithm::kGcra:
      e.state = w.gcra;
      break;
    case Algorithm::kTokenBucket:
      e.state = w.tb;
      break;
    case Algorithm::kSlidingWindow:
      if (auto* p = std::get_if<std::unique_ptr<SlidingWindowState>>(&e.state); p && *p) {
        **p = w.sw;
      } else {
        e.state = std::make_unique<SlidingWindowState>(w.sw);
      }
      break;
  }
}

// A fresh bucket of `algorithm` (a sliding window keeps its ring's memory), idle at any time.
void reset(Entry& e, Algorithm algorithm) {
  e.idle_at = std::numeric_limits<Nanos>::min();
  switch (algorithm) {
    case Algorithm::kGcra:
      e.state = GcraState{};
      break;
    case Algorithm::kTokenBucket:
      e.state = TokenBucketState{};
      break;
    case Algorithm::kSlidingWindow:
      if (auto* p = std::get_if<std::unique_ptr<SlidingWindowState>>(&e.state); p && *p) {
        **p = SlidingWindowState{};
      } else {
        e.state = std::make_unique<SlidingWindowState>();
      }
      break;
  }
}

}  // namespace

struct alignas(64) MemoryLimitStore::Shard {
  LightMutex mu;
  ShardMap map;
  std::size_t sweep_at = kMinSweepSize;
  Nanos last_full_sweep = std::numeric_limits<Nanos>::min();
  std::uint64_t evicted = 0;
  std::uint64_t one_shard_batches = 0;
  std::uint64_t prepared_lookups = 0;
  // Buckets deleted and added so far, by any path: a prepared batch's entries stay valid while
  // both are unchanged.
  std::uint64_t erased = 0;
  std::uint64_t added = 0;
  // The latest time this shard has decided at (see at()).
  Nanos latest = std::numeric_limits<Nanos>::min();

  // The time to decide at, under the lock, for a caller whose clock read `now`: `now`, or the
  // latest time the shard has already decided at when `now` is older than that. Two threads'
  // readings can reach the lock in the other order (the later one first); the older one then
  // comes after a state of a later time, and decided at its own reading it would see that
  // state's charges as not yet drained (a GCRA would hold or refuse a request that fits). The
  // time is monotonic per shard instead: never later than the true time at the lock, since it
  // is a reading taken before it.
  Nanos at(Nanos now) {
    if (now < latest) return latest;
    latest = now;
    return now;
  }

  std::size_t sweep(Nanos now) {
    const std::size_t removed =
        std::erase_if(map, [now](const auto& kv) { return kv.second.idle_at <= now; });
    evicted += removed;
    erased += removed;
    sweep_at = std::max(kMinSweepSize, 2 * map.size());
    return removed;
  }

  // Called with the lock held, before any entry pointer of this batch is taken.
  void maintain(Nanos now, std::size_t cap, Nanos full_interval) {
    if (map.size() >= sweep_at) {
      sweep(now);
    } else if (map.size() >= cap && (last_full_sweep == std::numeric_limits<Nanos>::min() ||
                                     now - last_full_sweep >= full_interval)) {
      last_full_sweep = now;
      sweep(now);
    }
  }
};

MemoryLimitStore::MemoryLimitStore(MemoryLimitStoreOptions options)
    : options_(options), id_(PreparedChecks::new_maker_id()) {
  const std::size_t n = std::bit_ceil(std::max<std::size_t>(options_.shards, 1));
  shard_mask_ = n - 1;
  shard_cap_ = std::max<std::size_t>(1, (options_.max_entries + n - 1) / n);
  seed_ = options_.hash_seed;
  if (seed_ == 0) {
    std::random_device rd;
    seed_ = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ 0x9e3779b97f4a7c15ull;
  }
  shards_ = std::make_unique<Shard[]>(n);
}

MemoryLimitStore::~MemoryLimitStore() = default;

namespace {

// Decisions taken `late` ns after the caller's reading (Shard::at) as times from that reading: a
// wait or a reset still to come is `late` longer from it.
[[gnu::noinline]] void add_lateness(BatchResult& out, Nanos late) {
  auto later = [late](Nanos& t) {
    if (t > 0 && t < kNever && __builtin_add_overflow(t, late, &t)) t = kNever;
  };
  for (CheckResult& r : out.results) {
    later(r.decision.retry_after);
    later(r.decision.reset_after);
  }
}

// Idle from `now` on, as a bucket charged by one check is: that check's decision says when it is
// empty again (every algorithm's reset_after after a charge is exactly its idle_at, less `now`).
// -1: no such figure, evaluate the state.
Nanos idle_from_decision(Nanos now, Nanos reset_after) {
  if (reset_after < 0 || reset_after >= kNever) return -1;
  Nanos idle;
  // now + reset_after, at most kNever (reset_after >= 0: only an upward overflow).
  if (__builtin_add_overflow(now, reset_after, &idle)) idle = kNever;
  return idle;
}

// The one-shard commit of a GCRA or token bucket that its check charged: the tentative state
// written back where it is stored, or, for a bucket the batch creates, stored only if it is not
// idle at once. `idle` is the decision's figure, or -1 to evaluate the state.
// A bucket that a one-shard batch creates. Out of line: most batches charge stored buckets, and
// the insertion's code would weigh on their commit.
template <class State>
[[gnu::noinline]] Entry* add_small(MemoryLimitStore::Shard& shard, const KeyHash& key,
                                   const State& state, Nanos idle) {
  Entry* e = &shard.map.emplace(key, Entry{idle, state}).first->second;
  ++shard.added;
  return e;
}

template <class Algo, class State>
[[gnu::always_inline]] inline void commit_small(MemoryLimitStore::Shard& shard, const KeyHash& key,
                                                Entry*& entry, const State& state,
                                                const BucketParams& p, Nanos idle, Nanos now) {
  if (idle < 0) idle = Algo::idle_at(state, p, now);
  if (entry != nullptr) {
    *std::get_if<State>(&entry->state) = state;
    entry->idle_at = idle;
  } else if (idle > now) {
    entry = add_small(shard, key, state, idle);
  }
}

// One check of a one-shard batch as the shared decision reads it: its bucket, its spec and the
// spec's parameters.
struct ShardCheck {
  KeyHash key;
  const LimitSpec* spec = nullptr;
  BucketParams params;
  Algorithm algorithm = Algorithm::kGcra;  // the spec's, kept here with what the decision reads
  bool enforce = true;                     // the spec's mode is kEnforce

  ShardCheck() = default;
  ShardCheck(const KeyHash& k, const LimitSpec* s)
      : key(k),
        spec(s),
        params(s->params()),
        algorithm(s->algorithm),
        enforce(s->mode == Mode::kEnforce) {}
};

constexpr std::size_t kMaxOneShard = 8;

// What the one-shard decision needs of its store.
struct OneShard {
  MemoryLimitStore::Shard& shard;
  std::size_t cap;
  const MemoryLimitStoreOptions& options;
  std::atomic<std::uint64_t>& overflows;
  std::uint64_t maker;  // the store's id, for the buckets' handles
};

// The state of a GCRA or token bucket to decide a one-shard check on: a copy of the stored one,
// or a fresh one for a bucket to create (`any_new`). False for a bucket stored with another
// algorithm.
template <class State>
bool load_small(const Entry* e, State& out, bool& any_new) {
  if (e == nullptr) {
    any_new = true;
    out = State{};
    return true;
  }
  const State* stored = std::get_if<State>(&e->state);
  if (stored == nullptr) return false;
  out = *stored;
  return true;
}

// Decides a batch of distinct buckets of one shard, under its lock, on `entry` (each check's
// stored bucket, or null). False, with no bucket changed, when a bucket needs the general batch: a
// sliding window to create, or a bucket stored with another algorithm than its check's (a reload
// starts it afresh); `out` then holds partial results, for the general batch to overwrite. Each
// bucket the batch creates is written to its `entry`; an allowed batch gives each check's bucket
// in its result (CheckResult::bucket). `cost(i)` is check i's cost.
template <class Cost>
bool decide_one_shard(const OneShard& o, std::span<const ShardCheck> items, const Cost& cost,
                      Entry** entry, Nanos now, BatchResult& out) {
  const std::size_t n = items.size();
  // Each check decided on its own bucket, in one pass that also finds a bucket the general batch
  // must decide: a GCRA or token bucket on a copy of its small state (written back at commit, or
  // a fresh one for a bucket to create: a key's first request, or one after a sweep), a ring
  // where it is (its charge applied at commit). Nothing is written to a bucket before the commit.
  union Tentative {
    GcraState gcra;
    TokenBucketState tb;
    SlidingWindowCharge sw;
    Tentative() {}  // NOLINT(modernize-use-equals-default): set by the check's algorithm
  };
  Tentative t[kMaxOneShard];
  bool allowed = true;
  bool any_new = false;
  out.results.resize(n);
  CheckResult* const results = out.results.data();  // not through the vector's accessors
  for (std::size_t i = 0; i < n; ++i) {
    const ShardCheck& item = items[i];
    const Entry* const e = entry[i];
    const BucketParams& p = item.params;
    CheckResult& r = results[i];
    switch (item.algorithm) {
      case Algorithm::kGcra: {
        if (!load_small(e, t[i].gcra, any_new)) return false;
        const std::int64_t c = cost(i);
        if (!Gcra::admit_fast(t[i].gcra, p, c, now, r.decision)) [[unlikely]] {
          r.decision = Gcra::consume(t[i].gcra, p, c, now);
        }
        break;
      }
      case Algorithm::kTokenBucket: {
        if (!load_small(e, t[i].tb, any_new)) return false;
        r.decision = TokenBucket::consume(t[i].tb, p, cost(i), now);
        break;
      }
      case Algorithm::kSlidingWindow: {
        const auto* ring =
            e != nullptr ? std::get_if<std::unique_ptr<SlidingWindowState>>(&e->state) : nullptr;
        if (ring == nullptr || !*ring) return false;
        new (&t[i].sw) SlidingWindowCharge();
        r.decision = SlidingWindow::check(**ring, p, cost(i), now, t[i].sw);
        break;
      }
    }
    r.consumed = r.decision.allowed;
    if (!r.decision.allowed && item.enforce) allowed = false;
  }
  MemoryLimitStore::Shard& shard = o.shard;
  ++shard.one_shard_batches;
  out.allowed = allowed;

  // Room for the new buckets this batch would create, in the order of the checks.
  bool untracked[kMaxOneShard] = {};
  if (out.allowed && any_new) {
    std::size_t added = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (entry[i] != nullptr || !out.results[i].consumed) continue;
      if (shard.map.size() + added < o.cap) {
        ++added;
        continue;
      }
      o.overflows.fetch_add(1, std::memory_order_relaxed);
      if (o.options.overflow == OverflowPolicy::kReject) {
        out.allowed = false;
        out.overflow = true;
        out.retry_after = o.options.overflow_retry_after;
        break;
      }
      untracked[i] = true;
    }
  }

  if (!out.allowed) {
    // Nothing is kept; the checks that would have passed (all of them, at the cap) report
    // their bucket as it is.
    for (std::size_t i = 0; i < n; ++i) {
      CheckResult& r = out.results[i];
      r.consumed = false;
      if (!r.decision.allowed && !out.overflow) continue;
      const BucketParams& p = items[i].params;
      const Entry* e = entry[i];
      Decision current;
      switch (items[i].algorithm) {
        case Algorithm::kGcra:
          current = Gcra::check(e ? *std::get_if<GcraState>(&e->state) : GcraState{}, p, 0, now);
          break;
        case Algorithm::kTokenBucket:
          current = TokenBucket::check(
              e ? *std::get_if<TokenBucketState>(&e->state) : TokenBucketState{}, p, 0, now);
          break;
        case Algorithm::kSlidingWindow:
          current = SlidingWindow::check(
              **std::get_if<std::unique_ptr<SlidingWindowState>>(&e->state), p, 0, now);
          break;
      }
      r.decision.remaining = current.remaining;
      r.decision.reset_after = current.reset_after;
      if (out.overflow) {
        r.decision.allowed = false;
        r.decision.retry_after = o.options.overflow_retry_after;
      }
    }
    return true;
  }

  // Commit: each bucket that a check charged (a new one only if it is not idle at once), and
  // where each is kept for an adjust of it later (BucketHandle: kept there until the shard
  // deletes a bucket).
  out.bucket_maker = o.maker;
  out.bucket_generation = shard.erased;
  for (std::size_t i = 0; i < n; ++i) {
    CheckResult& r = results[i];
    if (!r.consumed || untracked[i]) {
      r.bucket = entry[i];
      continue;
    }
    const BucketParams& p = items[i].params;
    Nanos idle = idle_from_decision(now, r.decision.reset_after);
    switch (items[i].algorithm) {
      case Algorithm::kGcra:
        commit_small<Gcra>(shard, items[i].key, entry[i], t[i].gcra, p, idle, now);
        break;
      case Algorithm::kTokenBucket:
        commit_small<TokenBucket>(shard, items[i].key, entry[i], t[i].tb, p, idle, now);
        break;
      case Algorithm::kSlidingWindow: {
        SlidingWindowState& s =
            **std::get_if<std::unique_ptr<SlidingWindowState>>(&entry[i]->state);
        if (t[i].sw.ready) {
          SlidingWindow::charge(s, t[i].sw);
        } else {
          SlidingWindow::consume(s, p, cost(i), now);
        }
        if (idle < 0) idle = SlidingWindow::idle_at(s, p, now);
        entry[i]->idle_at = idle;
        break;
      }
    }
    r.bucket = entry[i];
  }
  return true;
}

// A key's checks resolved by MemoryLimitStore::prepare: distinct buckets of one shard, decided
// by decide_one_shard without the checks' digests being compared or their parameters derived
// per request. The entries found for them are kept (under the shard's lock) until the shard
// deletes or adds a bucket.
struct PreparedOneShard final : PreparedChecks {
  using PreparedChecks::PreparedChecks;

  std::uint64_t owner = 0;  // KeyHash::hi of every key: picks the shard
  std::size_t n = 0;
  ShardCheck items[kMaxOneShard];
  bool tokens[kMaxOneShard] = {};  // the check's cost is the request's tokens (else 1)
  // For decide_stored: the checks' indexes, its sliding windows first and then its GCRAs, when
  // every check is one of the two (else `stored_order` is false).
  bool stored_order = false;
  std::uint8_t windows = 0;
  std::uint8_t order[kMaxOneShard] = {};

  // Guarded by the shard's mutex: the entries of `items` (null: none stored) as of the shard's
  // `erased` and `added` counts.
  mutable std::uint64_t erased = ~std::uint64_t{0};
  mutable std::uint64_t added = ~std::uint64_t{0};
  mutable Entry* entry[kMaxOneShard] = {};
};

// The batch of `p` in one pass, as decide_one_shard would decide it when every check passes from
// its stored bucket (the common case): each sliding window checked where it is, then each GCRA
// charged where it is, its previous state kept, and the windows charged once every check has
// passed. False, with every bucket as it was, when it is not such a batch (a bucket to create or
// stored with another algorithm, a check refused or past admit_fast, a window charge not
// ready): decide_one_shard then decides it from the start. `out.results` has n entries.
bool decide_stored(MemoryLimitStore::Shard& shard, const PreparedOneShard& p,
                   std::int64_t token_cost, Nanos now, BatchResult& out) {
  // Set for the checks of their algorithm only (not cleared whole first).
  union Slot {
    SlidingWindowCharge charge;  // a window's charge, applied once every check has passed
    struct {
      GcraState state;
      Nanos idle_at;
    } kept;    // a GCRA's bucket as it was, to put back
    Slot() {}  // NOLINT(modernize-use-equals-default): set by the check's algorithm
  };
  Slot t[kMaxOneShard];
  CheckResult* const results = out.results.data();
  Entry* const* const entry = p.entry;
  const std::size_t n = p.n;
  std::size_t k = 0;
  for (; k < p.windows; ++k) {
    const std::size_t i = p.order[k];
    const Entry* const e = entry[i];
    const auto* ring =
        e != nullptr ? std::get_if<std::unique_ptr<SlidingWindowState>>(&e->state) : nullptr;
    if (ring == nullptr || !*ring) return false;
    CheckResult& r = results[i];
    new (&t[i].charge) SlidingWindowCharge();
    r.decision = SlidingWindow::check(**ring, p.items[i].params,
                                      p.tokens[i] ? token_cost : std::int64_t{1}, now, t[i].charge);
    if (!r.decision.allowed || !t[i].charge.ready) return false;
    r.consumed = true;
    r.bucket = entry[i];
  }
  for (; k < n; ++k) {
    const std::size_t i = p.order[k];
    Entry* const e = entry[i];
    GcraState* const s = e != nullptr ? std::get_if<GcraState>(&e->state) : nullptr;
    CheckResult& r = results[i];
    if (s != nullptr) {
      // The last check's bucket is not put back: admit_fast leaves it as it was when it declines.
      if (k + 1 < n) {
        t[i].kept.state = *s;
        t[i].kept.idle_at = e->idle_at;
      }
      if (Gcra::admit_fast(*s, p.items[i].params, p.tokens[i] ? token_cost : std::int64_t{1}, now,
                           r.decision)) {
        e->idle_at = Gcra::idle_after_admit(*s);
        r.consumed = true;
        r.bucket = e;
        continue;
      }
    }
    // Not such a batch: the GCRAs charged so far are put back.
    while (k-- > p.windows) {
      const std::size_t j = p.order[k];
      *std::get_if<GcraState>(&entry[j]->state) = t[j].kept.state;
      entry[j]->idle_at = t[j].kept.idle_at;
    }
    return false;
  }
  for (k = 0; k < p.windows; ++k) {
    const std::size_t i = p.order[k];
    SlidingWindowState& s = **std::get_if<std::unique_ptr<SlidingWindowState>>(&entry[i]->state);
    SlidingWindow::charge(s, t[i].charge);
    const Nanos idle = idle_from_decision(now, results[i].decision.reset_after);
    entry[i]->idle_at = idle >= 0 ? idle : SlidingWindow::idle_at(s, p.items[i].params, now);
  }
  ++shard.one_shard_batches;
  out.allowed = true;
  out.bucket_maker = p.maker();
  out.bucket_generation = shard.erased;
  return true;
}

}  // namespace

bool MemoryLimitStore::check_one_shard(std::span<const LimitCheck> checks, Nanos now,
                                       BatchResult& out) {
  const std::size_t n = checks.size();
  if (n == 0 || n > kMaxOneShard) return false;
  // Every check with this store's digest, all of one shard, no bucket twice (a bucket checked
  // twice sees the batch's own tentative charge: the general path's working copies).
  ShardCheck items[kMaxOneShard];
  for (std::size_t i = 0; i < n; ++i) {
    const KeyDigest* d = checks[i].digest;
    if (d == nullptr || d->store != this) return false;
    if (i > 0 && ((d->hi ^ items[0].key.hi) & shard_mask_) != 0) return false;
    items[i].key = KeyHash{d->lo, d->hi};
    for (std::size_t j = 0; j < i; ++j) {
      if (items[i].key == items[j].key) return false;
    }
    items[i] = ShardCheck(items[i].key, checks[i].spec);
  }
  Shard& shard = shards_[static_cast<std::size_t>(items[0].key.hi) & shard_mask_];
  std::unique_lock lock(shard.mu);
  const Nanos at = shard.at(now);
  shard.maintain(at, shard_cap_, options_.full_sweep_interval);
  Entry* entry[kMaxOneShard];
  for (std::size_t i = 0; i < n; ++i) {
    auto it = shard.map.find(items[i].key);
    entry[i] = it == shard.map.end() ? nullptr : &it->second;
  }
  if (!decide_one_shard(
          OneShard{shard, shard_cap_, options_, overflows_, id_},
          std::span<const ShardCheck>(items, n), [&](std::size_t i) { return checks[i].cost; },
          entry, at, out)) {
    return false;
  }
  if (at != now) [[unlikely]]
    add_lateness(out, at - now);
  return true;
}

std::unique_ptr<const PreparedChecks> MemoryLimitStore::prepare(
    std::span<const LimitCheck> checks) const {
  const std::size_t n = checks.size();
  if (n == 0 || n > kMaxOneShard) return nullptr;
  auto p = std::make_unique<PreparedOneShard>(checks, id_);
  p->n = n;
  for (std::size_t i = 0; i < n; ++i) {
    const KeyHash h = hash_key(checks[i].key, seed_);
    if (i > 0 && ((h.hi ^ p->owner) & shard_mask_) != 0) return nullptr;
    for (std::size_t j = 0; j < i; ++j) {
      if (p->items[j].key == h) return nullptr;  // a bucket twice: the general batch
    }
    p->owner = h.hi;
    p->items[i] = ShardCheck(h, checks[i].spec);
    p->tokens[i] = checks[i].spec->unit == Unit::kTokens;
  }
  std::size_t k = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (p->items[i].algorithm == Algorithm::kSlidingWindow)
      p->order[k++] = static_cast<std::uint8_t>(i);
  }
  p->windows = static_cast<std::uint8_t>(k);
  for (std::size_t i = 0; i < n; ++i) {
    if (p->items[i].algorithm == Algorithm::kGcra) p->order[k++] = static_cast<std::uint8_t>(i);
  }
  p->stored_order = k == n;
  return p;
}

BatchResult MemoryLimitStore::check_prepared(const PreparedChecks& prepared,
                                             std::int64_t token_cost, Nanos now) {
  BatchResult out;  // the one object returned (no move of its inline results)
  bool decided = false;
  if (prepared.maker() == id_) {
    const auto* p = static_cast<const PreparedOneShard*>(&prepared);
    Shard& shard = shards_[static_cast<std::size_t>(p->owner) & shard_mask_];
    std::unique_lock lock(shard.mu);
    const Nanos at = shard.at(now);
    shard.maintain(at, shard_cap_, options_.full_sweep_interval);
    if (p->erased != shard.erased || p->added != shard.added) {
      ++shard.prepared_lookups;
      for (std::size_t i = 0; i < p->n; ++i) {
        auto it = shard.map.find(p->items[i].key);
        p->entry[i] = it == shard.map.end() ? nullptr : &it->second;
      }
      p->erased = shard.erased;
    }
    if (p->stored_order) {
      out.results.resize(p->n);
      decided = decide_stored(shard, *p, token_cost, at, out);
      if (!decided) {
        for (std::size_t i = 0; i < p->n; ++i) out.results[i] = CheckResult{};
      }
    }
    if (!decided) {
      decided = decide_one_shard(
          OneShard{shard, shard_cap_, options_, overflows_, id_},
          std::span<const ShardCheck>(p->items, p->n),
          [&](std::size_t i) { return p->tokens[i] ? token_cost : std::int64_t{1}; }, p->entry, at,
          out);
    }
    // The buckets it created are in p->entry: nothing else was added meanwhile.
    p->added = shard.added;
    if (decided && at != now) [[unlikely]]
      add_lateness(out, at - now);
  }
  if (!decided) out = check_each(prepared, token_cost, now);
  return out;
}

BatchResult MemoryLimitStore::check_and_consume(std::span<const LimitCheck> checks, Nanos reading) {
  BatchResult out;
  if (check_one_shard(checks, reading, out)) return out;
  out.results.resize(checks.size());
  if (checks.empty()) return out;

  boost::container::small_vector<Working, 8> work;
  boost::container::small_vector<std::size_t, 8> slot(checks.size(),
                                                      boost::container::default_init);
  for (std::size_t i = 0; i < checks.size(); ++i) {
    const KeyDigest* d = checks[i].digest;
    const KeyHash h =
        d && d->store == this ? KeyHash{d->lo, d->hi} : hash_key(checks[i].key, seed_);
    auto it = std::find_if(work.begin(), work.end(), [&](const Working& w) { return w.key == h; });
    if (it == work.end()) {
      Working& w = work.emplace_back();
      w.key = h;
      w.shard = static_cast<std::size_t>(h.hi) & shard_mask_;
      it = work.end() - 1;
    }
    slot[i] = static_cast<std::size_t>(it - work.begin());
    ++it->checks;
  }

  // Lock in ascending shard order so that overlapping batches cannot deadlock. The buckets of
  // one owner share a shard (KeyHash): usually there is one.
  boost::container::small_vector<std::size_t, 8> locked;
  for (const Working& w : work) {
    auto at = locked.begin();
    while (at != locked.end() && *at < w.shard) ++at;
    if (at == locked.end() || *at != w.shard) locked.insert(at, w.shard);
  }
  for (std::size_t s : locked) shards_[s].mu.lock();
  struct Unlock {
    Shard* shards;
    const boost::container::small_vector<std::size_t, 8>& ids;
    ~Unlock() {
      for (auto it = ids.rbegin(); it != ids.rend(); ++it) shards[*it].mu.unlock();
    }
  } unlock{shards_.get(), locked};

  // One time for the batch (Shard::at): the latest of its shards', theirs from now on.
  Nanos now = reading;
  for (std::size_t s : locked) now = std::max(now, shards_[s].latest);
  for (std::size_t s : locked) {
    shards_[s].latest = now;
    shards_[s].maintain(now, shard_cap_, options_.full_sweep_interval);
  }
  bool any_new = false;  // a bucket the batch may create
  for (Working& w : work) {
    auto& map = shards_[w.shard].map;
    auto it = map.find(w.key);
    w.entry = it == map.end() ? nullptr : &it->second;
    any_new = any_new || w.entry == nullptr;
  }

  // Phase 1: evaluate every check on tentative copies.
  for (std::size_t i = 0; i < checks.size(); ++i) {
    Working& w = work[slot[i]];
    const LimitSpec& spec = *checks[i].spec;
    CheckResult& r = out.results[i];
    w.spec = &spec;
    const auto* ring = w.checks == 1 && spec.algorithm == Algorithm::kSlidingWindow && w.entry
                           ? std::get_if<std::unique_ptr<SlidingWindowState>>(&w.entry->state)
                           : nullptr;
    if (ring != nullptr && *ring) {
      // The only check on a stored ring: decided without copying the ring in and out.
      w.algorithm = Algorithm::kSlidingWindow;
      w.touched = true;
      w.sw_stored = ring->get();
      w.cost = checks[i].cost;
      r.decision = SlidingWindow::check(*w.sw_stored, spec.params(), w.cost, now, w.sw_charge);
    } else {
      if (!w.touched || w.algorithm != spec.algorithm) {
        load(w, spec.algorithm);
        w.touched = true;
      }
      r.decision = run(w, spec.params(), checks[i].cost, now, /*mutate=*/true);
    }
    r.consumed = r.decision.allowed;
    // A bucket is written only if some check on it consumed; a failed shadow check leaves no
    // trace.
    w.commit = w.commit || r.consumed;
    w.reset_after = r.decision.reset_after;
    if (!r.decision.allowed && spec.mode == Mode::kEnforce) out.allowed = false;
  }

  // Room for the new buckets this batch would create.
  if (out.allowed && any_new) {
    boost::container::small_vector<std::size_t, 8> added;  // shard of each new bucket so far
    for (std::size_t k = 0; k < work.size(); ++k) {
      Working& w = work[k];
      if (w.entry || !w.commit) continue;
      const auto pending =
          static_cast<std::size_t>(std::count(added.begin(), added.end(), w.shard));
      if (shards_[w.shard].map.size() + pending < shard_cap_) {
        added.push_back(w.shard);
        continue;
      }
      overflows_.fetch_add(1, std::memory_order_relaxed);
      if (options_.overflow == OverflowPolicy::kReject) {
        out.allowed = false;
        out.overflow = true;
        out.retry_after = options_.overflow_retry_after;
        break;
      }
      w.untracked = true;
    }
  }

  if (!out.allowed) {
    // Nothing is kept; report the untouched state of the checks that would have passed.
    for (Working& w : work) {
      w.touched = false;
      w.sw_stored = nullptr;  // never charged: load() copies it as before
    }
    for (std::size_t i = 0; i < checks.size(); ++i) {
      CheckResult& r = out.results[i];
      r.consumed = false;
      if (!r.decision.allowed && !out.overflow) continue;
      Working& w = work[slot[i]];
      const LimitSpec& spec = *checks[i].spec;
      if (!w.touched || w.algorithm != spec.algorithm) {
        load(w, spec.algorithm);
        w.touched = true;
      }
      const Decision current = run(w, spec.params(), 0, now, /*mutate=*/false);
      r.decision.remaining = current.remaining;
      r.decision.reset_after = current.reset_after;
      if (out.overflow) {
        r.decision.allowed = false;
        r.decision.retry_after = options_.overflow_retry_after;
      }
    }
    if (now != reading) add_lateness(out, now - reading);
    return out;
  }

  // Phase 2: commit.
  for (std::size_t k = 0; k < work.size(); ++k) {
    Working& w = work[k];
    if (!w.commit || w.untracked) continue;
    if (w.sw_stored != nullptr) {
      const BucketParams p = w.spec->params();
      if (w.sw_charge.ready) {
        SlidingWindow::charge(*w.sw_stored, w.sw_charge);
      } else {
        SlidingWindow::consume(*w.sw_stored, p, w.cost, now);
      }
      Nanos idle;
      if (w.reset_after >= 0 && w.reset_after < kNever) {
        if (__builtin_add_overflow(now, w.reset_after, &idle)) idle = kNever;
      } else {
        idle = SlidingWindow::idle_at(*w.sw_stored, p, now);
      }
      w.entry->idle_at = idle;
      continue;
    }
    // A bucket charged by one check is idle once that check's decision says it is empty again
    // (every algorithm's reset_after after a charge is exactly its idle_at, less `now`): no
    // second evaluation of the state. Several checks on one bucket evaluate it afresh.
    Nanos idle;
    if (w.checks == 1 && w.reset_after >= 0 && w.reset_after < kNever) {
      // now + reset_after, at most kNever (reset_after >= 0: only an upward overflow).
      if (__builtin_add_overflow(now, w.reset_after, &idle)) idle = kNever;
    } else {
      idle = idle_at(w, w.spec->params(), now);
    }
    if (w.entry) {
      store(*w.entry, w, idle);
    } else if (idle > now) {
      Entry e;
      store(e, w, idle);
      shards_[w.shard].map.emplace(w.key, std::move(e));
      ++shards_[w.shard].added;
    }
  }
  if (now != reading) add_lateness(out, now - reading);
  return out;
}

void MemoryLimitStore::adjust(std::string_view key, const AdjustSpec& spec, std::int64_t delta,
                              Nanos reading) {
  if (delta == 0) return;
  const KeyDigest* d = spec.digest;
  const KeyHash h = d && d->store == this ? KeyHash{d->lo, d->hi} : hash_key(key, seed_);
  Shard& shard = shards_[static_cast<std::size_t>(h.hi) & shard_mask_];
  std::lock_guard lock(shard.mu);
  const Nanos now = shard.at(reading);
  Entry* e;
  if (const BucketHandle* b = spec.bucket;
      b != nullptr && b->maker == id_ && b->at != nullptr && b->generation == shard.erased) {
    // Where the check's batch found or made it: the shard has deleted no bucket since.
    e = static_cast<Entry*>(b->at);
  } else {
    auto it = shard.map.find(h);
    e = it == shard.map.end() ? nullptr : &it->second;
  }
  if (e == nullptr) {
    if (delta < 0) return;  // an untracked bucket is already empty
    if (shard.map.size() >= shard_cap_) {
      overflows_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  GcraState* const gcra = e != nullptr && spec.algorithm == Algorithm::kGcra
                              ? std::get_if<GcraState>(&e->state)
                              : nullptr;
  Nanos idle;
  if (gcra != nullptr && delta < 0 && e->idle_at <= now) {
    // A refund to a drained GCRA (its level is 0 from its idle time on, whatever a reload made of
    // its parameters) leaves it empty: emptied, below.
  } else if (gcra != nullptr && Gcra::adjust_fast(*gcra, spec.params, delta, now, idle)) {
    // A stored GCRA adjusted where it is.
    if (idle > now) {
      e->idle_at = idle;
      return;
    }
  } else {
    // The general way: another algorithm, a new bucket, or a GCRA beyond 64 bits (adjust_fast
    // declined and changed nothing).
    Working w;
    w.entry = e;
    load(w, spec.algorithm);
    adjust_working(w, spec.params, delta, now);
    idle = idle_at(w, spec.params, now);
    if (idle > now) {
      if (e != nullptr) {
        store(*e, w, idle);
      } else {
        Entry fresh;
        store(fresh, w, idle);
        shard.map.emplace(h, std::move(fresh));
        ++shard.added;
      }
      return;
    }
    if (e == nullptr) return;
  }
  if (shard.map.size() < shard_cap_) {
    // Emptied: kept as a fresh bucket, which decides as a deleted one would, for the sweep to
    // delete. A deletion here would make every prepared batch of the shard look its buckets up
    // again, and the next charge would add this one back.
    reset(*e, spec.algorithm);
  } else {
    // In a full shard the room counts more: deleted at once.
    shard.map.erase(h);
    ++shard.evicted;
    ++shard.erased;
  }
}

bool MemoryLimitStore::digest(std::string_view key, KeyDigest& out) const {
  const KeyHash h = hash_key(key, seed_);
  out = KeyDigest{this, h.lo, h.hi};
  return true;
}

std::size_t MemoryLimitStore::evict_idle(Nanos now) {
  std::size_t removed = 0;
  for (std::size_t s = 0; s <= shard_mask_; ++s) {
    std::lock_guard lock(shards_[s].mu);
    removed += shards_[s].sweep(shards_[s].at(now));
  }
  return removed;
}

std::size_t MemoryLimitStore::size() const {
  std::size_t n = 0;
  for (std::size_t s = 0; s <= shard_mask_; ++s) {
    std::lock_guard lock(shards_[s].mu);
    n += shards_[s].map.size();
  }
  return n;
}

MemoryLimitStoreStats MemoryLimitStore::stats() const {
  MemoryLimitStoreStats st;
  for (std::size_t s = 0; s <= shard_mask_; ++s) {
    std::lock_guard lock(shards_[s].mu);
    st.entries += shards_[s].map.size();
    st.evicted += shards_[s].evicted;
    st.one_shard_batches += shards_[s].one_shard_batches;
    st.prepared_lookups += shards_[s].prepared_lookups;
  }
  st.overflows = overflows_.load(std::memory_order_relaxed);
  return st;
}

}  // namespace bw::limits
