#include "limits/limit_spec.h"

#include <algorithm>
#include <array>
#include <utility>

namespace bw::limits {
namespace {

template <class E, std::size_t N>
std::optional<E> parse_enum(std::string_view s, const std::array<std::string_view, N>& names) {
  for (std::size_t i = 0; i < N; ++i) {
    if (names[i] == s) return static_cast<E>(i);
  }
  return std::nullopt;
}

constexpr std::array<std::string_view, 3> kAlgorithms{"gcra", "token_bucket", "sliding_window"};
constexpr std::array<std::string_view, 2> kUnits{"requests", "tokens"};
constexpr std::array<std::string_view, 4> kPeriods{"second", "minute", "hour", "day"};
constexpr std::array<std::string_view, 2> kModes{"enforce", "shadow"};
constexpr std::array<std::string_view, 2> kOnExceed{"reject", "wait"};
constexpr std::array<std::string_view, 6> kScopes{"key",      "tenant", "ip",
                                                  "endpoint", "model",  "global"};

LimitSpec make(std::string name, Unit unit, std::int64_t rate, Period period, std::int64_t burst,
               Algorithm algorithm = Algorithm::kGcra) {
  LimitSpec s;
  s.name = std::move(name);
  s.unit = unit;
  s.rate = rate;
  s.period = period;
  s.burst = burst;
  s.algorithm = algorithm;
  return s;
}

Plan make_plan(std::string name, std::optional<std::int64_t> daily, std::int64_t rps,
               std::int64_t rps_burst, std::int64_t rpm, std::int64_t tpm, int default_priority,
               int max_priority, std::vector<std::string> models) {
  Plan p;
  p.name = std::move(name);
  p.daily_requests = daily;
  p.limits = {make("rps", Unit::kRequests, rps, Period::kSecond, rps_burst),
              make("rpm", Unit::kRequests, rpm, Period::kMinute, rpm / 4),
              make("tpm", Unit::kTokens, tpm, Period::kMinute, 0)};
  // A burst over a request rate is held and let through at the plan's rate, in priority order,
  // for as long as the priority's max_wait allows; the token rate and daily quota refuse.
  p.limits[0].on_exceed = OnExceed::kWait;
  p.limits[1].on_exceed = OnExceed::kWait;
  p.allowed_models = std::move(models);
  p.default_priority = default_priority;
  p.max_priority = max_priority;
  return p;
}

}  // namespace

bool Plan::allows_model(std::string_view model) const {
  return allowed_models.empty() ||
         std::find(allowed_models.begin(), allowed_models.end(), model) != allowed_models.end();
}

std::string_view to_string(Algorithm a) {
  return kAlgorithms[static_cast<std::size_t>(a)];
}
std::string_view to_string(Unit u) {
  return kUnits[static_cast<std::size_t>(u)];
}
std::string_view to_string(Period p) {
  return kPeriods[static_cast<std::size_t>(p)];
}
std::string_view to_string(Mode m) {
  return kModes[static_cast<std::size_t>(m)];
}
std::string_view to_string(OnExceed o) {
  return kOnExceed[static_cast<std::size_t>(o)];
}
std::string_view to_string(Scope s) {
  return kScopes[static_cast<std::size_t>(s)];
}
std::optional<Algorithm> parse_algorithm(std::string_view s) {
  return parse_enum<Algorithm>(s, kAlgorithms);
}
std::optional<Unit> parse_unit(std::string_view s) {
  return parse_enum<Unit>(s, kUnits);
}
std::optional<Period> parse_period(std::string_view s) {
  return parse_enum<Period>(s, kPeriods);
}
std::optional<Mode> parse_mode(std::string_view s) {
  return parse_enum<Mode>(s, kModes);
}
std::optional<OnExceed> parse_on_exceed(std::string_view s) {
  return parse_enum<OnExceed>(s, kOnExceed);
}
std::optional<Scope> parse_scope(std::string_view s) {
  return parse_enum<Scope>(s, kScopes);
}

Result<Ok> validate(const LimitSpec& spec) {
  auto fail = [&](std::string param, std::string why) {
    return make_error(500, "config_error", "invalid_limit",
                      "limit '" + spec.name + "': " + param + " " + why, param);
  };
  if (spec.name.empty()) return fail("name", "must not be empty");
  if (spec.rate < 1) return fail("rate", "must be >= 1");
  if (spec.burst < 0) return fail("burst", "must be >= 0");
  // Keeps every derived quantity (capacity, retry times) far from 64-bit overflow.
  constexpr std::int64_t kMaxUnits = std::int64_t{1} << 50;
  if (spec.rate > kMaxUnits || spec.burst > kMaxUnits) return fail("rate", "is too large");
  if (!spec.match.empty() && spec.scope != Scope::kEndpoint && spec.scope != Scope::kModel) {
    return fail("match", "is only valid for endpoint or model scope");
  }
  return Ok{};
}

std::vector<LimitSpec> merge_limits(const Plan& plan, const std::vector<LimitSpec>* overrides) {
  std::vector<LimitSpec> out;
  out.reserve(plan.limits.size() + 1 + (overrides ? overrides->size() : 0));
  out = plan.limits;
  if (plan.daily_requests) {
    // A quota must hold over any 24 h, so it uses the sliding window rather than a leaky meter
    // that would hand back 1/86400 of the quota every second.
    out.push_back(make(std::string(kDailyQuotaName), Unit::kRequests, *plan.daily_requests,
                       Period::kDay, 0, Algorithm::kSlidingWindow));
  }
  if (overrides) {
    for (const LimitSpec& o : *overrides) {
      auto it = std::find_if(out.begin(), out.end(),
                             [&](const LimitSpec& l) { return l.name == o.name; });
      if (it != out.end()) {
        *it = o;
      } else {
        out.push_back(o);
      }
    }
  }
  return out;
}

std::vector<Plan> default_plans() {
  return {
      make_plan("free", 1'000, 2, 3, 20, 40'000, 2, 2, {"gemini-2.5-flash", "deepseek-v3.2"}),
      make_plan("starter", 50'000, 10, 10, 500, 200'000, 2, 1, {}),
      make_plan("professional", 500'000, 50, 50, 3'000, 1'000'000, 1, 0, {}),
      make_plan("enterprise", std::nullopt, 200, 200, 10'000, 5'000'000, 1, 0, {}),
  };
}

}  // namespace bw::limits
