#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <sstream>

#include "bench_tool.h"

namespace bw::bench {

double Profile::rate_per_min_at(double t) const {
  if (points.empty() || t < points.front().time_s || t > points.back().time_s) return 0;
  for (std::size_t i = 1; i < points.size(); ++i) {
    const auto& a = points[i - 1];
    const auto& b = points[i];
    if (t <= b.time_s) {
      const double len = b.time_s - a.time_s;
      if (len <= 0) return b.rate_per_min;
      return a.rate_per_min + (b.rate_per_min - a.rate_per_min) * (t - a.time_s) / len;
    }
  }
  return points.back().rate_per_min;
}

Profile spike_profile() {
  return Profile{{{0, 500}, {30, 500}, {120, 15000}, {180, 15000}, {190, 500}, {240, 500}}};
}

Profile constant_profile(double rate_per_min, double duration_s) {
  return Profile{{{0, rate_per_min}, {duration_s, rate_per_min}}};
}

Profile ramp_profile(double from_per_min, double to_per_min, double duration_s) {
  return Profile{{{0, from_per_min}, {duration_s, to_per_min}}};
}

std::optional<Profile> parse_points(const std::string& text, std::string* error) {
  Profile p;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto colon = item.find(':');
    if (colon == std::string::npos) {
      if (error) *error = "point '" + item + "' is not time_s:rate_per_min";
      return std::nullopt;
    }
    char* end1 = nullptr;
    char* end2 = nullptr;
    const std::string ts = item.substr(0, colon), rs = item.substr(colon + 1);
    const double t = std::strtod(ts.c_str(), &end1);
    const double r = std::strtod(rs.c_str(), &end2);
    if (ts.empty() || rs.empty() || *end1 != '\0' || *end2 != '\0' || t < 0 || r < 0 ||
        !std::isfinite(t) || !std::isfinite(r)) {
      if (error) *error = "point '" + item + "' has a bad number";
      return std::nullopt;
    }
    if (!p.points.empty() && t < p.points.back().time_s) {
      if (error) *error = "points must be in increasing time order";
      return std::nullopt;
    }
    p.points.push_back({t, r});
  }
  if (p.points.size() < 2 || p.points.front().time_s != 0) {
    if (error) *error = "need at least two points, the first at time 0";
    return std::nullopt;
  }
  return p;
}

Profile compress(const Profile& profile, double factor) {
  Profile out = profile;
  if (factor <= 0) return out;
  for (auto& p : out.points) p.time_s /= factor;
  return out;
}

Profile scale_rates(const Profile& profile, double factor) {
  Profile out = profile;
  for (auto& p : out.points) p.rate_per_min *= factor;
  return out;
}

std::vector<double> intended_send_times(const Profile& profile) {
  std::vector<double> times;
  double done = 0;  // requests scheduled before the current segment (cumulative integral)
  std::int64_t k = 0;
  for (std::size_t i = 1; i < profile.points.size(); ++i) {
    const auto& p0 = profile.points[i - 1];
    const auto& p1 = profile.points[i];
    const double len = p1.time_s - p0.time_s;
    if (len <= 0) continue;
    const double a = p0.rate_per_min / 60.0;  // requests/s at the segment start
    const double b = p1.rate_per_min / 60.0;
    const double c = (b - a) / (2 * len);  // N(dt) = a*dt + c*dt^2
    const double area = (a + b) / 2 * len;
    while (static_cast<double>(k) < done + area - 1e-9) {
      const double need = static_cast<double>(k) - done;
      // Root of c*dt^2 + a*dt - need = 0 in the form that stays exact when c -> 0.
      const double disc = std::max(0.0, a * a + 4 * c * need);
      const double denom = a + std::sqrt(disc);
      const double dt = denom > 0 ? 2 * need / denom : 0;
      times.push_back(p0.time_s + std::clamp(dt, 0.0, len));
      ++k;
    }
    done += area;
  }
  return times;
}

std::optional<std::vector<Weighted>> parse_mix(const std::string& text, std::string* error) {
  std::vector<Weighted> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto colon = item.rfind(':');
    Weighted w{item, 1};
    if (colon != std::string::npos) {
      w.name = item.substr(0, colon);
      const std::string ws = item.substr(colon + 1);
      char* end = nullptr;
      w.weight = std::strtod(ws.c_str(), &end);
      if (ws.empty() || *end != '\0' || w.weight < 0 || !std::isfinite(w.weight)) {
        if (error) *error = "bad weight in '" + item + "'";
        return std::nullopt;
      }
    }
    if (w.name.empty()) {
      if (error) *error = "empty name in '" + item + "'";
      return std::nullopt;
    }
    out.push_back(w);
  }
  double total = 0;
  for (const auto& w : out) total += w.weight;
  if (out.empty() || total <= 0) {
    if (error) *error = "mix needs at least one positive weight";
    return std::nullopt;
  }
  return out;
}

std::optional<std::vector<double>> parse_priority_mix(const std::string& text, std::string* error) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, '/')) {
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0' || v < 0 || !std::isfinite(v)) {
      if (error) *error = "priority mix must look like 10/60/30";
      return std::nullopt;
    }
    out.push_back(v);
  }
  double total = 0;
  for (double v : out) total += v;
  if (out.size() != 3 || total <= 0) {
    if (error) *error = "priority mix needs three weights (P0/P1/P2) with a positive sum";
    return std::nullopt;
  }
  return out;
}

std::vector<PlannedRequest> build_plan(const std::vector<double>& times,
                                       const PlanOptions& options) {
  std::mt19937_64 rng(options.seed);
  std::vector<double> model_weights;
  for (const auto& m : options.models) model_weights.push_back(m.weight);
  std::discrete_distribution<std::size_t> pick_model(model_weights.begin(), model_weights.end());
  std::discrete_distribution<int> pick_priority(options.priority_weights.begin(),
                                                options.priority_weights.end());
  std::uniform_int_distribution<std::size_t> pick_size(
      0, options.prompt_bytes.empty() ? 0 : options.prompt_bytes.size() - 1);
  std::vector<PlannedRequest> plan;
  plan.reserve(times.size());
  for (double t : times) {
    PlannedRequest r;
    r.at_s = t;
    r.model = options.models.empty() ? "gpt-4o-mini" : options.models[pick_model(rng)].name;
    r.priority = pick_priority(rng);
    r.prompt_bytes = options.prompt_bytes.empty() ? 0 : options.prompt_bytes[pick_size(rng)];
    plan.push_back(std::move(r));
  }
  return plan;
}

double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank =
      std::ceil(std::clamp(q, 0.0, 100.0) / 100.0 * static_cast<double>(values.size()));
  const auto idx = static_cast<std::size_t>(std::max(rank, 1.0)) - 1;
  return values[std::min(idx, values.size() - 1)];
}

}  // namespace bw::bench

namespace bw::bench {

std::size_t round_robin_target(std::size_t request_index, std::size_t targets) {
  return targets == 0 ? 0 : request_index % targets;
}

namespace {

std::string replace_vars(std::string s, const std::map<std::string, std::string>& vars) {
  for (const auto& [key, value] : vars) {
    if (key.empty()) continue;
    for (std::size_t pos = s.find(key); pos != std::string::npos;
         pos = s.find(key, pos + value.size()))
      s.replace(pos, key.size(), value);
  }
  return s;
}

}  // namespace

std::string render_template(const std::string& text, const std::map<std::string, std::string>& vars,
                            const std::vector<std::map<std::string, std::string>>& per_sim) {
  std::string out;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    const bool has_nl = end != std::string::npos;
    if (!has_nl) end = text.size();
    const std::string line = text.substr(start, end - start);
    bool repeated = false;
    if (!per_sim.empty()) {
      for (const auto& [key, value] : per_sim.front()) {
        if (!key.empty() && line.find(key) != std::string::npos) {
          repeated = true;
          break;
        }
      }
    }
    if (repeated) {
      for (const auto& sim_vars : per_sim) {
        out += replace_vars(replace_vars(line, sim_vars), vars);
        out += '\n';
      }
      if (!has_nl && !out.empty()) out.pop_back();
    } else {
      out += replace_vars(line, vars);
      if (has_nl) out += '\n';
    }
    start = end + 1;
  }
  return out;
}

}  // namespace bw::bench
