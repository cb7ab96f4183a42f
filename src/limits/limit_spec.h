#pragma once
// Limit and plan definitions: plain value structs that config/ fills from YAML (see
// docs/limits.md). Immutable once built; safe to share read-only across threads.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "limits/algorithms.h"

namespace bw::limits {

enum class Algorithm : std::uint8_t { kGcra, kTokenBucket, kSlidingWindow };
enum class Unit : std::uint8_t { kRequests, kTokens };
enum class Period : std::uint8_t { kSecond, kMinute, kHour, kDay };
enum class Mode : std::uint8_t { kEnforce, kShadow };
enum class OnExceed : std::uint8_t { kReject, kWait };
enum class Scope : std::uint8_t { kKey, kTenant, kIp, kEndpoint, kModel, kGlobal };

struct LimitSpec {
  std::string name;  // unique within its list; the bucket identity
  Algorithm algorithm = Algorithm::kGcra;
  Unit unit = Unit::kRequests;
  std::int64_t rate = 1;  // units admitted per period, >= 1
  Period period = Period::kSecond;
  std::int64_t burst = 0;  // extra units on top of rate, >= 0
  Mode mode = Mode::kEnforce;
  OnExceed on_exceed = OnExceed::kReject;
  Scope scope = Scope::kKey;
  // Endpoint path or model name the limit applies to (endpoint/model scope). Empty: every value,
  // each with its own bucket. A trailing '*' matches a prefix; matching requests share one bucket.
  std::string match;

  BucketParams params() const;
};

struct Plan {
  std::string name;
  std::vector<LimitSpec> limits;               // scope key (or tenant) limits of each key
  std::optional<std::int64_t> daily_requests;  // rolling 24 h request quota; nullopt = none
  std::vector<std::string> allowed_models;     // empty = every model
  int default_priority = 2;                    // 0 = P0 (highest) .. 2 = P2
  int max_priority = 2;                        // highest priority (lowest number) allowed

  bool allows_model(std::string_view model) const;
};

// Name of the limit synthesised from Plan::daily_requests (a key may override it by this name).
inline constexpr std::string_view kDailyQuotaName = "daily-requests";

// Inline: the limiter asks for a limit's parameters several times per request.
inline Nanos period_nanos(Period p) {
  switch (p) {
    case Period::kSecond:
      return kNanosPerSecond;
    case Period::kMinute:
      return 60 * kNanosPerSecond;
    case Period::kHour:
      return 3600 * kNanosPerSecond;
    case Period::kDay:
      return 86400 * kNanosPerSecond;
  }
  return kNanosPerSecond;
}

inline BucketParams LimitSpec::params() const {
  return BucketParams{rate > 1 ? rate : 1, period_nanos(period), burst > 0 ? burst : 0};
}

// Text forms used in YAML and messages ("gcra", "tokens", "minute", ...).
std::string_view to_string(Algorithm a);
std::string_view to_string(Unit u);
std::string_view to_string(Period p);
std::string_view to_string(Mode m);
std::string_view to_string(OnExceed o);
std::string_view to_string(Scope s);
std::optional<Algorithm> parse_algorithm(std::string_view s);
std::optional<Unit> parse_unit(std::string_view s);
std::optional<Period> parse_period(std::string_view s);
std::optional<Mode> parse_mode(std::string_view s);
std::optional<OnExceed> parse_on_exceed(std::string_view s);
std::optional<Scope> parse_scope(std::string_view s);

// Checks one spec; the message names the offending field (for config errors at startup).
Result<Ok> validate(const LimitSpec& spec);

// The plan's limits (plus the synthesised daily quota) with every limit of the same name
// replaced by the key's override. Overrides with a new name are appended.
std::vector<LimitSpec> merge_limits(const Plan& plan, const std::vector<LimitSpec>* overrides);

// free, starter, professional, enterprise.
std::vector<Plan> default_plans();

}  // namespace bw::limits
