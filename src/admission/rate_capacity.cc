#include "admission/rate_capacity.h"

#include <algorithm>
#include <cmath>

namespace bw::admission {

namespace {

// Reads a decimal number with an optional fraction at v[i...]; false when there is none.
bool read_number(std::string_view v, std::size_t& i, double& out) {
  const std::size_t start = i;
  double n = 0;
  while (i < v.size() && v[i] >= '0' && v[i] <= '9') n = n * 10 + (v[i++] - '0');
  if (i < v.size() && v[i] == '.') {
    ++i;
    double scale = 0.1;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') {
      n += (v[i++] - '0') * scale;
      scale /= 10;
    }
  }
  out = n;
  return i > start && !(i == start + 1 && v[start] == '.');
}

std::string_view trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

}  // namespace

Nanos parse_reset_duration(std::string_view v) {
  v = trim(v);
  if (v.empty()) return -1;
  std::size_t i = 0;
  double total_s = 0;
  bool any = false;
  while (i < v.size()) {
    double n = 0;
    if (!read_number(v, i, n)) return -1;
    any = true;
    if (i == v.size()) {  // a bare number is seconds
      total_s += n;
      break;
    }
    if (v.substr(i, 2) == "ms") {
      total_s += n / 1e3;
      i += 2;
    } else if (v.substr(i, 2) == "us") {
      total_s += n / 1e6;
      i += 2;
    } else if (v.substr(i, 2) == "ns") {
      total_s += n / 1e9;
      i += 2;
    } else if (v[i] == 's') {
      total_s += n;
      ++i;
    } else if (v[i] == 'm') {
      total_s += n * 60;
      ++i;
    } else if (v[i] == 'h') {
      total_s += n * 3600;
      ++i;
    } else {
      return -1;
    }
  }
  if (!any) return -1;
  return static_cast<Nanos>(total_s * 1e9);
}

std::int64_t parse_rfc3339_ms(std::string_view v) {
  v = trim(v);
  auto digits = [&](std::size_t at, std::size_t n, int& out) {
    if (at + n > v.size()) return false;
    int x = 0;
    for (std::size_t k = at; k < at + n; ++k) {
      if (v[k] < '0' || v[k] > '9') return false;
      x = x * 10 + (v[k] - '0');
    }
    out = x;
    return true;
  };
  int y, mo, d, h, mi, s;
  if (!digits(0, 4, y) || v.size() < 19 || v[4] != '-' || !digits(5, 2, mo) || v[7] != '-' ||
      !digits(8, 2, d) || (v[10] != 'T' && v[10] != 't' && v[10] != ' ') || !digits(11, 2, h) ||
      v[13] != ':' || !digits(14, 2, mi) || v[16] != ':' || !digits(17, 2, s)) {
    return -1;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return -1;
  std::size_t i = 19;
  std::int64_t ms = 0;
  if (i < v.size() && v[i] == '.') {
    ++i;
    int scale = 100;
    while (i < v.size() && v[i] >= '0' && v[i] <= '9') {
      ms += (v[i] - '0') * scale;
      scale /= 10;
      ++i;
    }
  }
  std::int64_t offset_s = 0;
  if (i < v.size() && (v[i] == 'Z' || v[i] == 'z')) {
    ++i;
  } else if (i < v.size() && (v[i] == '+' || v[i] == '-')) {
    int oh, om;
    if (!digits(i + 1, 2, oh) || i + 3 >= v.size() || v[i + 3] != ':' || !digits(i + 4, 2, om)) {
      return -1;
    }
    offset_s = (v[i] == '+' ? 1 : -1) * (oh * 3600 + om * 60);
    i += 6;
  } else {
    return -1;
  }
  if (i != v.size()) return -1;
  const std::int64_t days = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d));
  const std::int64_t secs = days * 86400 + h * 3600 + mi * 60 + s - offset_s;
  return secs * 1000 + ms;
}

Nanos parse_retry_after_value(std::string_view v) {
  v = trim(v);
  std::size_t i = 0;
  double n = 0;
  if (!read_number(v, i, n) || i != v.size()) return -1;
  return static_cast<Nanos>(n * 1e9);
}

// ---- RateCapacity ----

RateCapacity::RateCapacity(RateLimits configured, PacingConfig cfg)
    : configured_(configured), cfg_(cfg) {
  if (cfg_.bucket <= 0) cfg_.bucket = millis(250);
  if (cfg_.window <= 0) cfg_.window = seconds(60);
  eff_window_ = cfg_.window + std::max<Nanos>(0, cfg_.margin);
  ring_.resize(static_cast<std::size_t>(eff_window_ / cfg_.bucket + 2));
}

void RateCapacity::reconfigure(RateLimits configured) {
  configured_ = configured;
}

bool RateCapacity::fresh(const Learned& l, Nanos now) const {
  return l.at >= 0 && now - l.at < cfg_.learned_ttl;
}

RateLimits RateCapacity::effective(Nanos now) const {
  RateLimits e = configured_;
  if (fresh(learned_req_, now) && learned_req_.limit > 0) e.rpm = learned_req_.limit;
  if (fresh(learned_tok_, now) && learned_tok_.limit > 0) e.tpm = learned_tok_.limit;
  return e;
}

bool RateCapacity::limited(Nanos now) const {
  const RateLimits e = effective(now);
  return e.rpm > 0 || e.tpm > 0 || blocked_until_ > now ||
         (fresh(learned_req_, now) && learned_req_.remaining >= 0) ||
         (fresh(learned_tok_, now) && learned_tok_.remaining >= 0);
}

bool RateCapacity::live(const Bucket& b, Nanos now) const {
  // A bucket counts until its end plus the window: every send in it is at most that old.
  return b.epoch >= 0 && (b.epoch + 1) * cfg_.bucket + eff_window_ > now;
}

std::int64_t RateCapacity::window_sum(Nanos now, bool tokens) const {
  std::int64_t total = 0;
  for (const Bucket& b : ring_) {
    if (live(b, now)) total += tokens ? b.tokens : b.requests;
  }
  return total;
}

Nanos RateCapacity::window_at(Nanos now, bool tokens, std::int64_t need, std::int64_t limit) const {
  if (limit <= 0) return now;
  need = std::min(need, limit);
  std::int64_t total = window_sum(now, tokens);
  if (total + need <= limit) return now;
  // Oldest first: the time the sum falls low enough is the end of some bucket's life.
  const std::int64_t cur = now / cfg_.bucket;
  const auto n = static_cast<std::int64_t>(ring_.size());
  for (std::int64_t e = cur - n + 1; e <= cur; ++e) {
    if (e < 0) continue;
    const Bucket& b = ring_[static_cast<std::size_t>(e % n)];
    if (b.epoch != e || !live(b, now)) continue;
    total -= tokens ? b.tokens : b.requests;
    if (total + need <= limit) return (e + 1) * cfg_.bucket + eff_window_;
  }
  return (cur + 1) * cfg_.bucket + eff_window_;
}

Nanos RateCapacity::pacer_at(const Pacer& p, Nanos now, std::int64_t cost,
                             std::int64_t per_minute) const {
  if (per_minute <= 0 || p.tat <= static_cast<double>(now)) return now;
  const double interval = static_cast<double>(cfg_.window) / static_cast<double>(per_minute);
  const double burst =
      std::max({1.0, static_cast<double>(per_minute) * cfg_.burst_seconds / to_seconds(cfg_.window),
                static_cast<double>(cost)});
  const double at = p.tat + (static_cast<double>(cost) - burst) * interval;
  return at <= static_cast<double>(now) ? now : static_cast<Nanos>(std::ceil(at));
}

std::int64_t RateCapacity::learned_remaining(const Learned& l, Nanos now) const {
  if (!fresh(l, now) || l.remaining < 0) return -1;
  double r = static_cast<double>(l.remaining);
  if (l.reset > 0 && l.limit > l.remaining) {
    const double frac =
        std::min(1.0, static_cast<double>(now - l.at) / static_cast<double>(l.reset));
    r += static_cast<double>(l.limit - l.remaining) * frac;
  } else if (l.reset > 0 && now >= l.at + l.reset && l.limit > 0) {
    r = static_cast<double>(l.limit);
  }
  return std::max<std::int64_t>(0, static_cast<std::int64_t>(r) - l.sent_since);
}

Nanos RateCapacity::learned_at(const Learned& l, Nanos now, std::int64_t cost) const {
  if (!fresh(l, now) || l.remaining < 0) return now;
  if (l.reset > 0 && now >= l.at + l.reset) return now;  // fully refilled since
  const double need = static_cast<double>(l.sent_since + cost - l.remaining);
  if (need <= 0) return now;
  Nanos t;
  if (l.reset > 0 && l.limit > l.remaining) {
    const double span = static_cast<double>(l.limit - l.remaining);
    if (need > span) return std::max(now, l.at + l.reset);
    t = l.at + static_cast<Nanos>(std::ceil(static_cast<double>(l.reset) * need / span));
  } else {
    // Nothing says how it refills: trust it until its reset, or for a second.
    t = l.at + (l.reset > 0 ? l.reset : seconds(1));
  }
  return std::max(now, t);
}

Nanos RateCapacity::requests_at(Nanos now) const {
  const RateLimits e = effective(now);
  Nanos t = std::max(now, blocked_until_);
  t = std::max(t, window_at(now, false, 1, e.rpm));
  t = std::max(t, pacer_at(req_pacer_, now, 1, e.rpm));
  t = std::max(t, learned_at(learned_req_, now, 1));
  return t;
}

Nanos RateCapacity::tokens_at(Nanos now, std::int64_t tokens) const {
  const RateLimits e = effective(now);
  tokens = std::max<std::int64_t>(0, tokens);
  if (e.tpm > 0) tokens = std::min(tokens, e.tpm);
  Nanos t = now;
  t = std::max(t, window_at(now, true, tokens, e.tpm));
  t = std::max(t, pacer_at(tok_pacer_, now, tokens, e.tpm));
  t = std::max(t, learned_at(learned_tok_, now, tokens));
  return t;
}

Nanos RateCapacity::available_at(Nanos now, std::int64_t tokens) const {
  return std::max(requests_at(now), tokens_at(now, tokens));
}

Binding RateCapacity::binding(Nanos now, std::int64_t tokens) const {
  const Nanos r = requests_at(now);
  const Nanos t = tokens_at(now, tokens);
  if (r <= now && t <= now) return Binding::kNone;
  return r >= t ? Binding::kRequests : Binding::kTokens;
}

void RateCapacity::reserve(Nanos now, std::int64_t tokens) {
  tokens = std::max<std::int64_t>(0, tokens);
  const std::int64_t k = now / cfg_.bucket;
  Bucket& b = ring_[static_cast<std::size_t>(k % static_cast<std::int64_t>(ring_.size()))];
  if (b.epoch != k) b = Bucket{k, 0, 0};
  b.requests += 1;
  b.tokens += tokens;
  const RateLimits e = effective(now);
  const double nd = static_cast<double>(now);
  if (e.rpm > 0) {
    req_pacer_.tat = std::max(req_pacer_.tat, nd) +
                     static_cast<double>(cfg_.window) / static_cast<double>(e.rpm);
  }
  if (e.tpm > 0) {
    const std::int64_t cost = std::min(tokens, e.tpm);
    tok_pacer_.tat = std::max(tok_pacer_.tat, nd) + static_cast<double>(cost) *
                                                        static_cast<double>(cfg_.window) /
                                                        static_cast<double>(e.tpm);
  }
  if (learned_req_.at >= 0) learned_req_.sent_since += 1;
  if (learned_tok_.at >= 0) learned_tok_.sent_since += tokens;
}

void RateCapacity::correct(Nanos reserved_at, std::int64_t estimated, std::int64_t actual,
                           Nanos now) {
  const std::int64_t delta = actual - estimated;
  if (delta == 0) return;
  const std::int64_t k = reserved_at / cfg_.bucket;
  Bucket& b = ring_[static_cast<std::size_t>(k % static_cast<std::int64_t>(ring_.size()))];
  if (b.epoch == k && live(b, now)) b.tokens = std::max<std::int64_t>(0, b.tokens + delta);
  const RateLimits e = effective(now);
  if (e.tpm > 0) {
    tok_pacer_.tat +=
        static_cast<double>(delta) * static_cast<double>(cfg_.window) / static_cast<double>(e.tpm);
  }
  if (learned_tok_.at >= 0 && reserved_at >= learned_tok_.at) {
    learned_tok_.sent_since = std::max<std::int64_t>(0, learned_tok_.sent_since + delta);
  }
}

void RateCapacity::learn(Nanos now, const ProviderLimits& p) {
  auto take = [&](Learned& l, const std::optional<std::int64_t>& limit,
                  const std::optional<std::int64_t>& remaining, Nanos reset) {
    if (!limit && !remaining) return;
    l.at = now;
    l.limit = limit.value_or(l.limit);
    l.remaining = remaining.value_or(-1);
    l.reset = reset > 0 ? reset : 0;
    l.sent_since = 0;
  };
  take(learned_req_, p.limit_requests, p.remaining_requests, p.reset_requests);
  take(learned_tok_, p.limit_tokens, p.remaining_tokens, p.reset_tokens);
  if (p.retry_after > 0) blocked_until_ = std::max(blocked_until_, now + p.retry_after);
}

CapacityStatus RateCapacity::status(Nanos now) const {
  CapacityStatus s;
  s.configured = configured_;
  s.effective = effective(now);
  s.learned_fresh = fresh(learned_req_, now) || fresh(learned_tok_, now);
  s.learned_remaining_requests = learned_remaining(learned_req_, now);
  s.learned_remaining_tokens = learned_remaining(learned_tok_, now);
  if (s.effective.rpm > 0) {
    s.remaining_requests = std::max<std::int64_t>(0, s.effective.rpm - window_sum(now, false));
  }
  if (s.effective.tpm > 0) {
    s.remaining_tokens = std::max<std::int64_t>(0, s.effective.tpm - window_sum(now, true));
  }
  if (s.learned_remaining_requests >= 0) {
    s.remaining_requests = s.remaining_requests < 0
                               ? s.learned_remaining_requests
                               : std::min(s.remaining_requests, s.learned_remaining_requests);
  }
  if (s.learned_remaining_tokens >= 0) {
    s.remaining_tokens = s.remaining_tokens < 0
                             ? s.learned_remaining_tokens
                             : std::min(s.remaining_tokens, s.learned_remaining_tokens);
  }
  s.blocked_until = blocked_until_ > now ? blocked_until_ : 0;
  s.binding = binding(now, 1);
  return s;
}

}  // namespace bw::admission
