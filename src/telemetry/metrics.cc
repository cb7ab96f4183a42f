#include "telemetry/metrics.h"

#include <array>
#include <atomic>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <typeinfo>

namespace bw::telemetry {

void Gauge::add(double d) {
  double cur = value_.load(std::memory_order_relaxed);
  while (!value_.compare_exchange_weak(cur, cur + d, std::memory_order_relaxed)) {
  }
}

Histogram::Histogram(std::span<const double> bounds)
    : bounds_(bounds.begin(), bounds.end()),
      buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds.size() + 1)) {
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) {
  // Prometheus buckets are inclusive upper bounds (le): the first bound >= v (none for NaN: the
  // first bucket, as lower_bound's). From the first bound up: the latencies observed per
  // request are nearly all in the first buckets.
  const double* const b = bounds_.data();
  const std::size_t n = bounds_.size();
  std::size_t i = 0;
  while (i < n && b[i] < v) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  double cur = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.cumulative.resize(bounds_.size() + 1);
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    acc += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = acc;
  }
  s.count = acc;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> latency_buckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}
std::vector<double> queue_wait_buckets() {
  return {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

bool valid_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool valid_label_name(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;  // "__" is reserved by Prometheus
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

void append_escaped_label_value(std::string& out, std::string_view v) {
  for (const char c : v) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

void append_escaped_help(std::string& out, std::string_view v) {
  for (const char c : v) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

namespace {

const char* type_name(MetricType t) {
  switch (t) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

void append_header(std::string& out, const FamilyBase& f) {
  out += "# HELP ";
  out += f.name();
  out += ' ';
  append_escaped_help(out, f.help());
  out += "\n# TYPE ";
  out += f.name();
  out += ' ';
  out += type_name(f.type());
  out += '\n';
}

// Appends `{a="x",b="y"[,le="..."]}`; nothing when there are no labels at all.
void append_labels(std::string& out, const std::vector<std::string>& names,
                   const std::vector<std::string>& values, std::string_view le = {}) {
  if (names.empty() && le.empty()) return;
  out += '{';
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += ',';
    out += names[i];
    out += "=\"";
    append_escaped_label_value(out, values[i]);
    out += '"';
  }
  if (!le.empty()) {
    if (!names.empty()) out += ',';
    out += "le=\"";
    out += le;
    out += '"';
  }
  out += '}';
}

void append_sample(std::string& out, std::string_view name, std::string_view suffix,
                   const std::vector<std::string>& names, const std::vector<std::string>& values,
                   double v, std::string_view le = {}) {
  out += name;
  out += suffix;
  append_labels(out, names, values, le);
  out += ' ';
  append_number(out, v);
  out += '\n';
}

void expose_child(std::string& out, const FamilyBase& f, double scale,
                  const std::vector<std::string>& values, const Counter& c) {
  // Dividing by an integral 1/scale (e.g. micro-dollars / 1e6) prints 95 units as 9.5e-05, where
  // multiplying by 1e-6 would print 9.499999999999999e-05.
  const double inverse = 1.0 / scale;
  const double units = static_cast<double>(c.units());
  const double v = scale < 1 && std::abs(inverse - std::round(inverse)) < 1e-9
                       ? units / std::round(inverse)
                       : units * scale;
  append_sample(out, f.name(), "", f.label_names(), values, v);
}

void expose_child(std::string& out, const FamilyBase& f, double,
                  const std::vector<std::string>& values, const Gauge& g) {
  append_sample(out, f.name(), "", f.label_names(), values, g.value());
}

void expose_child(std::string& out, const FamilyBase& f, double,
                  const std::vector<std::string>& values, const Histogram& h) {
  const Histogram::Snapshot s = h.snapshot();
  const auto bounds = h.bounds();
  std::string le;
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    le.clear();
    append_number(le, bounds[i]);
    append_sample(out, f.name(), "_bucket", f.label_names(), values,
                  static_cast<double>(s.cumulative[i]), le);
  }
  append_sample(out, f.name(), "_bucket", f.label_names(), values,
                static_cast<double>(s.cumulative.back()), "+Inf");
  append_sample(out, f.name(), "_sum", f.label_names(), values, s.sum);
  append_sample(out, f.name(), "_count", f.label_names(), values, static_cast<double>(s.count));
}

class CallbackGaugeFamily final : public FamilyBase {
 public:
  CallbackGaugeFamily(std::string name, std::string help,
                      std::vector<std::pair<std::string, std::string>> const_labels,
                      std::function<double()> fn)
      : FamilyBase(std::move(name), std::move(help), names_of(const_labels), MetricType::kGauge, 1),
        fn_(std::move(fn)) {
    for (auto& [k, v] : const_labels) values_.push_back(std::move(v));
  }
  void expose(std::string& out) const override {
    append_header(out, *this);
    append_sample(out, name(), "", label_names(), values_, fn_());
  }

 private:
  static std::vector<std::string> names_of(
      const std::vector<std::pair<std::string, std::string>>& labels) {
    std::vector<std::string> names;
    for (const auto& [k, v] : labels) names.push_back(k);
    return names;
  }
  std::function<double()> fn_;
  std::vector<std::string> values_;
};

std::uint64_t next_family_id() {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

constexpr std::size_t kLookupCacheSize = 256;  // entries per thread and child type (power of 2)

// FNV-1a over the family id and the label values, folded to a cache slot.
std::size_t lookup_slot(std::uint64_t family, const std::string_view* values, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull ^ family;
  for (std::size_t i = 0; i < n; ++i) {
    for (const char c : values[i]) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;  // separator: ("ab","c") differs from ("a","bc")
  }
  return static_cast<std::size_t>(h ^ (h >> 32)) & (kLookupCacheSize - 1);
}

bool same_values(const std::vector<std::string>& key, const std::string_view* values,
                 std::size_t n) {
  if (key.size() != n) return false;
  for (std::size_t i = 0; i < n; ++i) {
    if (key[i] != values[i]) return false;
  }
  return true;
}

}  // namespace

FamilyBase::FamilyBase(std::string name, std::string help, std::vector<std::string> label_names,
                       MetricType type, std::size_t max_children)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      type_(type),
      max_children_(std::max<std::size_t>(2, max_children)) {
  if (!valid_metric_name(name_)) throw std::invalid_argument("invalid metric name: " + name_);
  for (const auto& l : label_names_) {
    if (!valid_label_name(l) || (type_ == MetricType::kHistogram && l == "le")) {
      throw std::invalid_argument("invalid label name '" + l + "' in metric " + name_);
    }
  }
}

template <class T>
Family<T>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                  MetricType type, std::size_t max_children, Factory factory, double unit_scale)
    : FamilyBase(std::move(name), std::move(help), std::move(label_names), type, max_children),
      factory_(std::move(factory)),
      unit_scale_(unit_scale),
      id_(next_family_id()) {}

template <class T>
T& Family<T>::with(std::initializer_list<std::string_view> values) {
  return with_range(values.begin(), values.size());
}

template <class T>
T& Family<T>::with(std::span<const std::string> values) {
  std::vector<std::string_view> views(values.begin(), values.end());
  return with_range(views.data(), views.size());
}

template <class T>
T& Family<T>::with_range(const std::string_view* values, std::size_t n) {
  // A per-thread, direct-mapped cache of recent lookups answers the hot path without the family
  // mutex (whose cache line the workers would otherwise pass back and forth on every request).
  // Sound because children are never removed: a child's address and its key stay valid for the
  // family's life, and a family's id is never reused, so an entry of a destroyed family cannot
  // match. An entry is written by its own thread after a locked lookup.
  struct Entry {
    std::uint64_t family = 0;
    const std::vector<std::string>* key = nullptr;
    T* child = nullptr;
  };
  thread_local std::array<Entry, kLookupCacheSize> cache{};
  Entry* entry = nullptr;
  if (n == label_names().size()) {
    entry = &cache[lookup_slot(id_, values, n)];
    if (entry->family == id_ && same_values(*entry->key, values, n)) return *entry->child;
  }
  std::lock_guard lock(mu_);
  if (n == label_names().size()) {
    auto it = children_.find(Values{values, n});
    if (it == children_.end() && children_.size() + 1 < max_children()) {
      // One slot is kept for the overflow child so the total never exceeds max_children.
      it = children_.emplace(std::vector<std::string>(values, values + n), factory_()).first;
    }
    if (it != children_.end()) {
      *entry = Entry{id_, &it->first, it->second.get()};
      return *it->second;
    }
  }
  if (!overflow_) overflow_ = factory_();
  return *overflow_;
}

template <class T>
std::size_t Family<T>::size() const {
  std::lock_guard lock(mu_);
  return children_.size() + (overflow_ ? 1 : 0);
}

template <class T>
void Family<T>::expose(std::string& out) const {
  append_header(out, *this);
  std::lock_guard lock(mu_);
  for (const auto& [values, child] : children_)
    expose_child(out, *this, unit_scale_, values, *child);
  if (overflow_) {
    const std::vector<std::string> values(label_names().size(), std::string(kOverflowLabelValue));
    expose_child(out, *this, unit_scale_, values, *overflow_);
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

FamilyBase* Registry::find(const std::string& name) const {
  auto it = families_.find(name);
  return it == families_.end() ? nullptr : it->second.get();
}

FamilyBase& Registry::add(std::unique_ptr<FamilyBase> family) {
  std::lock_guard lock(mu_);
  if (FamilyBase* existing = find(family->name())) {
    if (existing->type() != family->type() || existing->label_names() != family->label_names() ||
        typeid(*existing) != typeid(*family)) {
      throw std::invalid_argument("metric registered twice with different shape: " +
                                  family->name());
    }
    return *existing;
  }
  auto& slot = families_[family->name()];
  slot = std::move(family);
  return *slot;
}

CounterFamily& Registry::counter(std::string name, std::string help,
                                 std::vector<std::string> labels, double unit_scale,
                                 std::size_t max_children) {
  return static_cast<CounterFamily&>(add(std::make_unique<CounterFamily>(
      std::move(name), std::move(help), std::move(labels), MetricType::kCounter, max_children,
      [] { return std::make_unique<Counter>(); }, unit_scale)));
}

GaugeFamily& Registry::gauge(std::string name, std::string help, std::vector<std::string> labels,
                             std::size_t max_children) {
  return static_cast<GaugeFamily&>(add(std::make_unique<GaugeFamily>(
      std::move(name), std::move(help), std::move(labels), MetricType::kGauge, max_children,
      [] { return std::make_unique<Gauge>(); })));
}

HistogramFamily& Registry::histogram(std::string name, std::string help, std::vector<double> bounds,
                                     std::vector<std::string> labels, std::size_t max_children) {
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
      throw std::invalid_argument("histogram bounds must be finite and increasing: " + name);
    }
  }
  auto shared = std::make_shared<const std::vector<double>>(std::move(bounds));
  return static_cast<HistogramFamily&>(add(std::make_unique<HistogramFamily>(
      std::move(name), std::move(help), std::move(labels), MetricType::kHistogram, max_children,
      [shared] { return std::make_unique<Histogram>(*shared); })));
}

void Registry::callback_gauge(std::string name, std::string help, std::function<double()> fn,
                              std::vector<std::pair<std::string, std::string>> const_labels) {
  add(std::make_unique<CallbackGaugeFamily>(std::move(name), std::move(help),
                                            std::move(const_labels), std::move(fn)));
}

void Registry::set_build_info(std::string_view version, std::string_view commit) {
  auto& fam = gauge("bellwether_build_info", "Build of the running gateway; the value is always 1.",
                    {"version", "commit"}, 2);
  fam.with({version, commit}).set(1);
}

std::string Registry::expose() const {
  std::string out;
  out.reserve(16 * 1024);
  std::lock_guard lock(mu_);
  for (const auto& [name, family] : families_) family->expose(out);
  return out;
}

}  // namespace bw::telemetry
