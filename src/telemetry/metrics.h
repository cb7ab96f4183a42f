#pragma once
// Metrics registry with Prometheus text exposition (format 0.0.4).
//
// Contract:
// - Recording (Counter::inc/add, Gauge::set/add, Histogram::observe) is a few relaxed atomic
//   operations: no lock, no allocation. Call it from any thread.
// - Resolving a labelled child (Family::with) takes the family's mutex and may allocate; do it once
//   (at startup or on first use) and keep the returned reference. Children live as long as the
//   registry, so references never dangle.
// - Each family holds at most `max_children` (>= 2) children, one of them kept for overflow. Past
//   the cap every new label combination maps to one shared child whose label values are all
//   "__overflow__", so a bad label source cannot grow memory or scrape size without bound.
// - Registration is startup code: it throws std::invalid_argument on an invalid name or on a
//   name registered twice with a different type or label set (a programming error).
// - Registry::expose() may run concurrently with recording and with registration. Families are
//   printed sorted by name, children sorted by label values, so output is deterministic.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bw::telemetry {

enum class MetricType { kCounter, kGauge, kHistogram };

inline constexpr std::string_view kOverflowLabelValue = "__overflow__";
inline constexpr std::size_t kDefaultMaxChildren = 1000;

// Monotonic counter. Stores integral units; the family's `unit_scale` turns units into the
// exported value, so money can be recorded exactly in micro-dollars and exported in dollars.
class Counter {
 public:
  void inc() { units_.fetch_add(1, std::memory_order_relaxed); }
  void add(std::uint64_t units) { units_.fetch_add(units, std::memory_order_relaxed); }
  std::uint64_t units() const { return units_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> units_{0};
};

class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  // A CAS loop on one word: lock-free, and uncontended in practice (gauges are few and
  // mostly written by one owner).
  void add(double d);
  void inc() { add(1.0); }
  void dec() { add(-1.0); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Fixed-bucket histogram. observe() is one bucket increment plus one CAS on the sum; _count is
// derived from the buckets at scrape time so that it always equals the +Inf bucket.
class Histogram {
 public:
  // `bounds` must be strictly increasing and finite; +Inf is implicit.
  explicit Histogram(std::span<const double> bounds);
  void observe(double v);
  struct Snapshot {
    std::vector<std::uint64_t> cumulative;  // one per bound, then +Inf
    double sum = 0;
    std::uint64_t count = 0;
  };
  Snapshot snapshot() const;
  std::span<const double> bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0.0};
};

// Common ground of all families, used by the registry for exposition.
class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, std::vector<std::string> label_names,
             MetricType type, std::size_t max_children);
  virtual ~FamilyBase() = default;
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  MetricType type() const { return type_; }
  std::size_t max_children() const { return max_children_; }
  // Appends `# HELP`, `# TYPE` and every sample of this family.
  virtual void expose(std::string& out) const = 0;

 private:
  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
  MetricType type_;
  std::size_t max_children_;
};

// A family of children keyed by label values. T is Counter, Gauge or Histogram.
template <class T>
class Family final : public FamilyBase {
 public:
  using Factory = std::function<std::unique_ptr<T>()>;
  Family(std::string name, std::string help, std::vector<std::string> label_names, MetricType type,
         std::size_t max_children, Factory factory, double unit_scale = 1.0);

  // Returns the child for these label values, creating it on first use. A wrong number of
  // values is a caller bug; it is folded into the overflow child rather than crashing the
  // data plane.
  T& with(std::initializer_list<std::string_view> values);
  T& with(std::span<const std::string> values);
  // The child of a family without labels.
  T& get() { return with(std::initializer_list<std::string_view>{}); }

  std::size_t size() const;  // children, including the overflow child once it exists
  double unit_scale() const { return unit_scale_; }
  void expose(std::string& out) const override;

 private:
  T& with_range(const std::string_view* values, std::size_t n);

  // Label values as looked up: compared with a stored key without building one (no allocation
  // on the hot path).
  struct Values {
    const std::string_view* data;
    std::size_t size;
  };
  struct Less {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      const std::size_t n = std::min(size(a), size(b));
      for (std::size_t i = 0; i < n; ++i) {
        const int c = at(a, i).compare(at(b, i));
        if (c != 0) return c < 0;
      }
      return size(a) < size(b);
    }
    static std::size_t size(const std::vector<std::string>& v) { return v.size(); }
    static std::size_t size(const Values& v) { return v.size; }
    static std::string_view at(const std::vector<std::string>& v, std::size_t i) { return v[i]; }
    static std::string_view at(const Values& v, std::size_t i) { return v.data[i]; }
  };

  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>, Less> children_;
  std::unique_ptr<T> overflow_;
  Factory factory_;
  double unit_scale_;
  // Process-unique, never reused: keys this family's entries in the per-thread lookup cache.
  const std::uint64_t id_;
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// Children of one family resolved once, in N numbered slots: for a caller that looks the same
// label values up on every request (a label lookup costs a few hundred instructions, and a
// request makes about ten). The caller numbers the label combinations it caches; a slot must
// always stand for the same values. Sound because a family never removes a child. The cache
// serves one family (the first it is used with); any other is looked up as usual.
// Thread safety: get() may be called from any thread.
template <class T, std::size_t N>
class ChildCache {
 public:
  // The label values are arguments: their list is made only when the slot is empty, so that a
  // hit (inlined into the caller) stores nothing.
  template <class... Values>
  T& get(Family<T>& family, std::size_t slot, const Values&... values) {
    if (T* c = cached(family, slot)) return *c;
    return keep(family, slot, family.with({std::string_view(values)...}));
  }

 private:
  T* cached(const Family<T>& family, std::size_t slot) const {
    if (slot < N && family_.load(std::memory_order_acquire) == &family) {
      return slots_[slot].load(std::memory_order_acquire);
    }
    return nullptr;
  }
  T& keep(Family<T>& family, std::size_t slot, T& child) {
    if (slot < N) {
      const void* none = nullptr;
      family_.compare_exchange_strong(none, &family, std::memory_order_acq_rel);
      if (family_.load(std::memory_order_acquire) == &family) {
        slots_[slot].store(&child, std::memory_order_release);
      }
    }
    return child;
  }

  std::atomic<const void*> family_{nullptr};
  std::array<std::atomic<T*>, N> slots_{};
};

// Common bucket layouts, in seconds.
std::vector<double> latency_buckets();     // 5 ms .. 120 s, for request and upstream latency
std::vector<double> queue_wait_buckets();  // 1 ms .. 60 s

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registering the same name again with the same type and labels returns the existing family.
  CounterFamily& counter(std::string name, std::string help, std::vector<std::string> labels = {},
                         double unit_scale = 1.0, std::size_t max_children = kDefaultMaxChildren);
  GaugeFamily& gauge(std::string name, std::string help, std::vector<std::string> labels = {},
                     std::size_t max_children = kDefaultMaxChildren);
  HistogramFamily& histogram(std::string name, std::string help, std::vector<double> bounds,
                             std::vector<std::string> labels = {},
                             std::size_t max_children = kDefaultMaxChildren);
  // A gauge evaluated at scrape time (e.g. queue length owned by another component). `fn` runs on
  // the scraping thread and must be thread-safe and quick. Constant labels are allowed.
  void callback_gauge(std::string name, std::string help, std::function<double()> fn,
                      std::vector<std::pair<std::string, std::string>> const_labels = {});
  // bellwether_build_info{version,commit} 1.
  void set_build_info(std::string_view version, std::string_view commit);

  // Prometheus text format 0.0.4 of every family.
  std::string expose() const;
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  FamilyBase& add(std::unique_ptr<FamilyBase> family);
  FamilyBase* find(const std::string& name) const;

  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<FamilyBase>> families_;  // sorted: deterministic output
};

// Text-format helpers, exposed for tests.
bool valid_metric_name(std::string_view name);
bool valid_label_name(std::string_view name);
void append_escaped_label_value(std::string& out, std::string_view v);  // \\, \", \n
void append_escaped_help(std::string& out, std::string_view v);         // \\, \n
void append_number(std::string& out, double v);                         // shortest, +Inf, NaN

}  // namespace bw::telemetry
