#include "ui/sampler.h"

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "common/json_util.h"

namespace bw::ui {
namespace {

constexpr std::array<std::string_view, 3> kPriorities = {"p0", "p1", "p2"};

bool is_llm_endpoint(std::string_view e) {
  return e == "/v1/chat/completions" || e == "/v1/completions" || e == "/v1/embeddings";
}

std::string_view label(const MetricSample& s, const std::string& name) {
  auto it = s.labels.find(name);
  return it == s.labels.end() ? std::string_view{} : std::string_view(it->second);
}

double delta(const std::map<std::string, double>& cur, const std::map<std::string, double>* prev,
             const std::string& key) {
  auto it = cur.find(key);
  if (it == cur.end()) return 0;
  double before = 0;
  if (prev) {
    if (auto p = prev->find(key); p != prev->end()) before = p->second;
  }
  // A counter that went down was reset (not expected in one process): count from zero.
  return it->second >= before ? it->second - before : it->second;
}

void value_or_null(JsonWriter& j, double v) {
  if (v < 0 || !std::isfinite(v)) {
    j.null();
  } else {
    j.value(std::round(v * 1e4) / 1e4);
  }
}

double rounded(double v) {
  return std::isfinite(v) ? std::round(v * 1e3) / 1e3 : 0;
}

}  // namespace

std::vector<MetricSample> parse_exposition(std::string_view text) {
  std::vector<MetricSample> out;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    MetricSample s;
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const auto eq = line.find('=', i);
        if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') break;
        std::string key(line.substr(i, eq - i));
        std::string value;
        std::size_t k = eq + 2;
        for (; k < line.size() && line[k] != '"'; ++k) {
          if (line[k] == '\\' && k + 1 < line.size()) {
            ++k;
            value += line[k] == 'n' ? '\n' : line[k];
          } else {
            value += line[k];
          }
        }
        s.labels.emplace(std::move(key), std::move(value));
        i = k + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i < line.size() && line[i] == '}') ++i;
    }
    while (i < line.size() && line[i] == ' ') ++i;
    std::string_view v = line.substr(i);
    if (auto sp = v.find(' '); sp != std::string_view::npos) v = v.substr(0, sp);  // timestamp
    if (v == "+Inf") {
      s.value = INFINITY;
    } else if (v == "-Inf") {
      s.value = -INFINITY;
    } else {
      char* end = nullptr;
      std::string tmp(v);
      s.value = std::strtod(tmp.c_str(), &end);
      if (end == tmp.c_str()) continue;
    }
    out.push_back(std::move(s));
  }
  return out;
}

double histogram_quantile(double q, const std::vector<std::pair<double, double>>& cum) {
  if (cum.empty()) return -1;
  const double total = cum.back().second;
  if (total <= 0) return -1;
  const double rank = q * total;
  double prev_bound = 0, prev_count = 0;
  for (const auto& [bound, count] : cum) {
    if (count >= rank) {
      if (std::isinf(bound)) return prev_bound;  // above the last finite bound
      const double in_bucket = count - prev_count;
      if (in_bucket <= 0) return bound;
      return prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket;
    }
    prev_bound = bound;
    prev_count = count;
  }
  return prev_bound;
}

Sampler::Sampler(SamplerOptions options) : options_(options) {
  max_samples_ = static_cast<std::size_t>(std::max<Nanos>(1, options_.window / options_.interval));
}

Sampler::~Sampler() {
  stop();
}

void Sampler::start(std::function<Reading()> read) {
  stop_ = false;
  thread_ = std::thread([this, read = std::move(read)] {
    // Named so that its CPU time can be told apart (bench/load/console_overhead.sh, top -H).
    pthread_setname_np(pthread_self(), "bw-sampler");
    std::unique_lock lock(thread_mu_);
    do {
      lock.unlock();
      add(read());
      lock.lock();
    } while (
        !cv_.wait_for(lock, std::chrono::nanoseconds(options_.interval), [&] { return stop_; }));
  });
}

void Sampler::stop() {
  {
    std::lock_guard lock(thread_mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::size_t Sampler::size() const {
  std::lock_guard lock(mu_);
  return ring_.size();
}

void Sampler::add(const Reading& r) {
  Cumulative cur;
  cur.unix_ms = r.unix_ms;
  for (auto& s : parse_exposition(r.metrics_text)) {
    const std::string& n = s.name;
    if (n == "bellwether_requests_total") {
      if (!is_llm_endpoint(label(s, "endpoint"))) continue;
      cur.counters["prio:" + std::string(label(s, "priority"))] += s.value;
      cur.counters["status:" + std::string(label(s, "status_class"))] += s.value;
    } else if (n == "bellwether_tokens_total") {
      cur.counters["tokens"] += s.value;
    } else if (n == "bellwether_cost_usd_total") {
      cur.counters["usd"] += s.value;
    } else if (n == "bellwether_upstream_requests_total") {
      const std::string d(label(s, "deployment"));
      cur.counters["up:" + d] += s.value;
      const auto sc = label(s, "status_class");
      if (sc == "5xx" || sc == "other" || sc == "429" || sc == "4xx") {
        cur.counters["uperr:" + d] += s.value;
      }
    } else if (n == "bellwether_shed_total" || n == "bellwether_queue_timeouts_total") {
      cur.counters["shed"] += s.value;
    } else if (n == "bellwether_request_priority_duration_seconds_bucket" ||
               n == "bellwether_ttft_priority_seconds_bucket") {
      const std::string fam = n.starts_with("bellwether_ttft") ? "ttft:" : "lat:";
      auto le = label(s, "le");
      const double bound = le == "+Inf" ? INFINITY : std::strtod(std::string(le).c_str(), nullptr);
      cur.histograms[fam + std::string(label(s, "priority"))].emplace_back(bound, s.value);
    } else if (n.starts_with("bellwether_") && n.ends_with("_total")) {
      // Counters of features the console knows only by name (cache hits and savings, budget
      // downgrades and refusals): kept whole so that the Spend page can show them when present.
      cur.counters["c:" + n] += s.value;
    }
  }
  for (auto& [k, v] : cur.histograms) std::sort(v.begin(), v.end());

  std::lock_guard lock(mu_);
  const Cumulative* prev = history_.empty() ? nullptr : &history_.back();
  // The oldest kept reading within the quantile window is the base of the windowed quantiles.
  const Cumulative* old = nullptr;
  const std::int64_t window_ms = options_.quantile_window / 1'000'000;
  for (const auto& h : history_) {
    if (r.unix_ms - h.unix_ms <= window_ms) {
      old = &h;
      break;
    }
  }
  if (!old && prev) old = prev;
  std::string sample = sample_json(cur, prev, old, r);
  for (const auto& d : r.deployments) {
    auto& last = last_state_[d.id];
    if (!last.empty() && last != d.state) {
      transitions_.push_back({r.unix_ms, d.id, last, d.state});
      if (transitions_.size() > options_.max_transitions) transitions_.pop_front();
    }
    last = d.state;
  }
  now_ = now_json(r);
  ring_.emplace_back(r.unix_ms, std::move(sample));
  while (ring_.size() > max_samples_) ring_.pop_front();
  history_.push_back(std::move(cur));
  while (history_.size() > 1 && r.unix_ms - history_.front().unix_ms > window_ms) {
    history_.pop_front();
  }
}

std::string Sampler::sample_json(const Cumulative& cur, const Cumulative* prev,
                                 const Cumulative* old, const Reading& r) const {
  const double dt =
      prev && cur.unix_ms > prev->unix_ms ? (cur.unix_ms - prev->unix_ms) / 1000.0 : 0;
  const auto* pc = prev ? &prev->counters : nullptr;
  auto rate = [&](const std::string& key) {
    return dt > 0 ? rounded(delta(cur.counters, pc, key) / dt) : 0.0;
  };
  JsonWriter j;
  j.begin_object().key("t").value(cur.unix_ms);
  j.key("rps").begin_array();
  for (auto p : kPriorities) j.value(rate("prio:" + std::string(p)));
  j.end_array();
  j.key("st").begin_object();
  for (const char* sc : {"2xx", "4xx", "5xx"}) j.key(sc).value(rate(std::string("status:") + sc));
  j.end_object();
  j.key("q").begin_array();
  for (double d : r.queue_depth) j.value(d);
  j.end_array();
  j.key("qr").begin_object();
  for (const auto& [reason, n] : r.queue_by_reason) j.key(reason).value(n);
  j.end_object();
  std::int64_t limit = 0, in_use = 0;
  for (const auto& g : r.groups) {
    limit += g.limit;
    in_use += g.in_use;
  }
  j.key("inf").value(r.in_flight).key("lim").value(limit);
  // Quantiles of what finished within the window (difference of cumulative buckets).
  for (const char* fam : {"lat", "ttft"}) {
    for (double q : {0.5, 0.95, 0.99}) {
      std::string k = std::string(fam == std::string_view("lat") ? "l" : "f") +
                      std::to_string(static_cast<int>(q * 100));
      j.key(k).begin_array();
      for (auto p : kPriorities) {
        const std::string hk = std::string(fam) + ":" + std::string(p);
        auto it = cur.histograms.find(hk);
        if (it == cur.histograms.end()) {
          j.null();
          continue;
        }
        auto win = it->second;
        if (old) {
          if (auto o = old->histograms.find(hk);
              o != old->histograms.end() && o->second.size() == win.size()) {
            for (std::size_t i = 0; i < win.size(); ++i) win[i].second -= o->second[i].second;
          }
        }
        value_or_null(j, histogram_quantile(q, win));
      }
      j.end_array();
    }
  }
  j.key("tok")
      .value(rate("tokens"))
      .key("usd")
      .value(dt > 0 ? delta(cur.counters, pc, "usd") / dt : 0.0);
  j.key("shed").value(rate("shed"));
  // Remaining capacity per deployment: requests per minute left under its limit (configured or
  // learned); deployments without a limit are left out.
  j.key("cap").begin_object();
  for (const auto& d : r.deployments) {
    if (d.rpm_limit <= 0) continue;
    j.key(d.id).value(d.remaining_requests >= 0
                          ? d.remaining_requests
                          : std::max<std::int64_t>(0, d.rpm_limit - d.rpm_used));
  }
  j.end_object();
  j.key("err").begin_object();
  for (const auto& d : r.deployments) {
    const double all = delta(cur.counters, pc, "up:" + d.id);
    const double bad = delta(cur.counters, pc, "uperr:" + d.id);
    j.key(d.id).value(all > 0 ? rounded(bad / all) : 0.0);
  }
  j.end_object();
  j.key("rec").value(r.scaler.recommended).key("fc").value(rounded(r.scaler.forecast_rpm_holt));
  j.key("arr").value(rounded(r.scaler.arrival_rpm));
  j.key("c").begin_object();
  for (const auto& [k, v] : cur.counters) {
    if (k.starts_with("c:")) j.key(std::string_view(k).substr(2)).value(v);
  }
  j.end_object();
  j.end_object();
  return j.take();
}

std::string Sampler::now_json(const Reading& r) const {
  JsonWriter j;
  j.begin_object().key("t").value(r.unix_ms).key("groups").begin_array();
  for (const auto& g : r.groups) {
    j.begin_object().key("name").value(g.name).key("limit").value(g.limit);
    j.key("in_use").value(g.in_use).key("queued").begin_array();
    for (auto q : g.queued) j.value(q);
    j.end_array().end_object();
  }
  j.end_array().key("deployments").begin_array();
  for (const auto& d : r.deployments) {
    j.begin_object()
        .key("id")
        .value(d.id)
        .key("group")
        .value(d.group)
        .key("provider")
        .value(d.provider)
        .key("model")
        .value(d.model)
        .key("state")
        .value(d.state)
        .key("consecutive_failures")
        .value(d.consecutive_failures)
        .key("openings")
        .value(d.openings)
        .key("open_remaining_s")
        .value(rounded(d.open_remaining_s))
        .key("cooldown_remaining_s")
        .value(rounded(d.cooldown_remaining_s))
        .key("in_flight")
        .value(d.in_flight)
        .key("ewma_ms")
        .value(rounded(d.ewma_ms))
        .key("rpm_limit")
        .value(d.rpm_limit)
        .key("rpm_used")
        .value(d.rpm_used)
        .key("tpm_limit")
        .value(d.tpm_limit)
        .key("tpm_used")
        .value(d.tpm_used)
        .key("configured_rpm")
        .value(d.configured_rpm)
        .key("configured_tpm")
        .value(d.configured_tpm)
        .key("learned_rpm")
        .value(d.learned_rpm)
        .key("learned_tpm")
        .value(d.learned_tpm)
        .key("remaining_requests")
        .value(d.remaining_requests)
        .key("remaining_tokens")
        .value(d.remaining_tokens)
        .key("blocked_s")
        .value(rounded(d.blocked_s))
        .key("binding")
        .value(d.binding)
        .end_object();
  }
  j.end_array().key("retry_budgets").begin_array();
  for (const auto& b : r.retry_budgets) {
    j.begin_object()
        .key("group")
        .value(b.group)
        .key("requests")
        .value(b.requests)
        .key("retries")
        .value(b.retries)
        .key("ratio")
        .value(b.ratio)
        .end_object();
  }
  j.end_array().key("scaler").begin_object();
  j.key("recommended").value(r.scaler.recommended).key("current").value(r.scaler.current);
  j.key("forecast_rpm_wma").value(rounded(r.scaler.forecast_rpm_wma));
  j.key("forecast_rpm_holt").value(rounded(r.scaler.forecast_rpm_holt));
  j.key("arrival_rpm").value(rounded(r.scaler.arrival_rpm));
  j.key("capacity_rpm_per_replica").value(rounded(r.scaler.capacity_rpm_per_replica));
  j.key("method").value(r.scaler.method).key("reason").value(r.scaler.reason);
  j.key("waiting_on").value(r.scaler.waiting_on);
  j.end_object().key("transitions").begin_array();
  for (const auto& t : transitions_) {
    j.begin_object()
        .key("t")
        .value(t.unix_ms)
        .key("deployment")
        .value(t.deployment)
        .key("from")
        .value(t.from)
        .key("to")
        .value(t.to)
        .end_object();
  }
  j.end_array().end_object();
  return j.take();
}

std::string Sampler::json(std::int64_t since_unix_ms) const {
  std::lock_guard lock(mu_);
  std::string out = "{\"interval_ms\":" + std::to_string(options_.interval / 1'000'000) +
                    ",\"window_s\":" + std::to_string(options_.window / seconds(1)) + ",\"now\":";
  out += now_.empty() ? "null" : now_;
  out += ",\"samples\":[";
  bool first = true;
  for (const auto& [t, s] : ring_) {
    if (t <= since_unix_ms) continue;
    if (!first) out += ",";
    first = false;
    out += s;
  }
  out += "]}";
  return out;
}

}  // namespace bw::ui
