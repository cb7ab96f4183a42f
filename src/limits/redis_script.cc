#include "limits/redis_script.h"

#include <openssl/sha.h>

#include <cstdio>

namespace bw::limits {
namespace {

// Redis runs Lua 5.1, whose only number type is a double: integers are exact only below 2^53,
// while the C++ meters need products up to ~2^100 (cost * period for day-long token limits, time
// in ns since the epoch times a rate). The script therefore carries its own small bignum: sign +
// magnitude in base-2^24 limbs (limb products stay below 2^49), and divides only by divisors
// below 2^52 (rates, periods, slot widths), using chunks small enough that every intermediate
// stays exact. Every algorithm below is a line-by-line transcription of algorithms.cc with
// __int128 replaced by these numbers, so decisions match the in-process store to the unit.
//
// KEYS: bucket keys. ARGV[1] = "c" (check and consume) or "a" (adjust); ARGV[2] = now in ns as
// decimal text, or "" to use the Redis server clock (TIME); ARGV[3] = extra TTL in ms (slack for
// caller clocks). Check: 6 ARGV per key:
// algorithm (0 gcra, 1 token bucket, 2 sliding window), rate, period ns, burst, cost, shadow (0/1).
// Adjust: one key; algorithm, rate, period, burst, delta.
// Reply (check): {allowed, then per key: allowed, consumed, remaining, retry_after, reset_after}
// (the last three as decimal text). Reply (adjust): 1.
constexpr std::string_view kScript = R"LUA(
local B = 16777216
local LIM = 9007199254740992 -- 2^53
local ZERO = 0
-- A value is a plain Lua number while |v| < 2^53 (exact in a double) and a bignum table
-- {neg, limbs...} otherwise; every operation keeps that invariant, so the common case (small
-- values) never allocates.
local function big(x)
  if type(x) == "table" then return x end
  local a = {neg = x < 0}
  if x < 0 then x = -x end
  local i = 1
  while x > 0 do local r = x % B a[i] = r x = (x - r) / B i = i + 1 end
  return a
end
local function norm(a)
  local n = #a
  while n > 0 and a[n] == 0 do a[n] = nil n = n - 1 end
  if n <= 2 or (n == 3 and a[3] < 32) then
    local x = 0
    for i = n, 1, -1 do x = x * B + a[i] end
    if a.neg and x ~= 0 then return -x end
    return x
  end
  return a
end
local function N(x) return x end
local function isneg(a)
  if type(a) == "number" then return a < 0 end
  return a.neg
end
local function ispos(a)
  if type(a) == "number" then return a > 0 end
  return not a.neg
end
local function cmpmag(a, b)
  if #a ~= #b then return (#a < #b) and -1 or 1 end
  for i = #a, 1, -1 do
    if a[i] ~= b[i] then return (a[i] < b[i]) and -1 or 1 end
  end
  return 0
end
local function addmag(a, b)
  local r = {neg=false}
  local c = 0
  local n = #a
  if #b > n then n = #b end
  for i = 1, n do
    local s = (a[i] or 0) + (b[i] or 0) + c
    if s >= B then r[i] = s - B c = 1 else r[i] = s c = 0 end
  end
  if c > 0 then r[n + 1] = c end
  return r
end
local function submag(a, b)
  local r = {neg=false}
  local c = 0
  for i = 1, #a do
    local s = a[i] - (b[i] or 0) - c
    if s < 0 then r[i] = s + B c = 1 else r[i] = s c = 0 end
  end
  return r
end
local function add(a, b)
  if type(a) == "number" and type(b) == "number" then
    local r = a + b
    if r < LIM and r > -LIM then return r end
  end
  a = big(a) b = big(b)
  if a.neg == b.neg then
    local r = addmag(a, b) r.neg = a.neg return norm(r)
  end
  local c = cmpmag(a, b)
  if c == 0 then return 0 end
  if c > 0 then local r = submag(a, b) r.neg = a.neg return norm(r) end
  local r = submag(b, a) r.neg = b.neg return norm(r)
end
local function negate(a)
  if type(a) == "number" then return -a end
  local r = {neg = not a.neg}
  for i = 1, #a do r[i] = a[i] end
  return r
end
local function sub(a, b) return add(a, negate(b)) end
local function cmp(a, b)
  local na, nb = type(a) == "number", type(b) == "number"
  if na and nb then
    if a < b then return -1 elseif a > b then return 1 end
    return 0
  end
  if na then return b.neg and 1 or -1 end
  if nb then return a.neg and -1 or 1 end
  if a.neg ~= b.neg then return a.neg and -1 or 1 end
  local c = cmpmag(a, b)
  if a.neg then return -c end
  return c
end
local function mul(a, b)
  if type(a) == "number" and type(b) == "number" then
    local r = a * b
    if r < LIM and r > -LIM then return r end
  end
  a = big(a) b = big(b)
  local r = {neg=false}
  local na, nb = #a, #b
  if na == 0 or nb == 0 then return 0 end
  for i = 1, na + nb do r[i] = 0 end
  for i = 1, na do
    local c = 0
    local ai = a[i]
    for j = 1, nb do
      local t = r[i + j - 1] + ai * b[j] + c
      c = math.floor(t / B)
      r[i + j - 1] = t - c * B
    end
    local k = i + nb
    while c > 0 do
      local t = r[k] + c
      c = math.floor(t / B)
      r[k] = t - c * B
      k = k + 1
    end
  end
  r.neg = (a.neg ~= b.neg)
  return norm(r)
end
-- a >= 0, 1 <= d < 2^52 (a double). Returns floor(a / d) and a % d (a double).
local function divmod(a, d)
  if isneg(a) or d < 1 or d >= 4503599627370496 then error("bw: divmod out of range") end
  if type(a) == "number" then
    if a < 4503599627370496 then
      -- q may be off by one from rounding; q * d <= a + d < 2^53 stays exact, so fix it.
      local q = math.floor(a / d)
      local r = a - q * d
      if r < 0 then q = q - 1 r = r + d elseif r >= d then q = q + 1 r = r - d end
      return q, r
    end
    a = big(a)
  end
  local w = 1
  if d < 268435456 then w = 24 elseif d < 1099511627776 then w = 12
  elseif d < 70368744177664 then w = 6 elseif d < 562949953421312 then w = 3 end
  local W = 2 ^ w
  local q = {neg=false}
  local r = 0
  for i = #a, 1, -1 do
    local rest = a[i]
    local qi = 0
    for s = 24 - w, 0, -w do
      local p = 2 ^ s
      local chunk = math.floor(rest / p)
      rest = rest - chunk * p
      local t = r * W + chunk
      local c = math.floor(t / d)
      r = t - c * d
      if r < 0 then c = c - 1 r = r + d elseif r >= d then c = c + 1 r = r - d end
      qi = qi * W + c
    end
    q[i] = qi
  end
  return norm(q), r
end
local function P(s)
  if #s <= 15 then return tonumber(s) end
  local neg = false
  local i = 1
  if string.sub(s, 1, 1) == "-" then neg = true i = 2 end
  local a = {neg=false}
  local len = #s
  while i <= len do
    local j = i + 6
    if j > len then j = len end
    local chunk = string.sub(s, i, j)
    local m = 10 ^ #chunk
    local c = tonumber(chunk)
    for k = 1, #a do
      local t = a[k] * m + c
      c = math.floor(t / B)
      a[k] = t - c * B
    end
    while c > 0 do local r = c % B a[#a + 1] = r c = (c - r) / B end
    i = j + 1
  end
  a.neg = neg
  return norm(a)
end
local function S(a)
  if type(a) == "number" then return string.format("%d", a) end
  local parts = {}
  local m = {neg=false}
  for i = 1, #a do m[i] = a[i] end
  -- |a| >= 2^53, so the quotient is non-zero once it fits a number.
  while type(m) == "table" do
    local q, r = divmod(m, 10000000)
    parts[#parts + 1] = r
    m = q
  end
  local out = (a.neg and "-" or "") .. string.format("%d", m)
  for i = #parts, 1, -1 do out = out .. string.format("%07d", parts[i]) end
  return out
end
local function tod(a)
  if type(a) == "number" then return a end
  error("bw: value too large")
end
local KMAX = P("9223372036854775807")
local KMIN = P("-9223372036854775808")
local function sat(a)
  if cmp(a, KMAX) >= 0 then return KMAX end
  if cmp(a, KMIN) <= 0 then return KMIN end
  return a
end
local function max0(a) if isneg(a) then return 0 end return a end
local function ceil_div(a, d)
  if not ispos(a) then return 0 end
  local q, r = divmod(a, d)
  if r > 0 then q = add(q, 1) end
  return q
end
local function mkparams(rate, period, burst)
  local p = {rate = tonumber(rate), period = tonumber(period), burst = tonumber(burst)}
  p.cap = p.rate + p.burst
  p.rateB = N(p.rate) p.periodB = N(p.period) p.capB = N(p.cap)
  p.capP = mul(p.capB, p.periodB)
  return p
end

local function decide(level, p, cost)
  local need = mul(cost, p.periodB)
  local after = add(level, need)
  local d = {}
  if cmp(after, p.capP) <= 0 then
    d.allowed = true
    d.remaining = divmod(sub(p.capP, after), p.period)
    d.retry = ZERO
    d.reset = sat(ceil_div(after, p.rate))
  else
    d.allowed = false
    if cmp(level, p.capP) >= 0 then d.remaining = ZERO
    else d.remaining = divmod(sub(p.capP, level), p.period) end
    d.reset = sat(ceil_div(level, p.rate))
    if cmp(cost, p.capB) > 0 then d.retry = KMAX
    else d.retry = sat(ceil_div(sub(after, p.capP), p.rate)) end
  end
  return d
end

-- GCRA: s = {tat, frac (bignums), rate, period (doubles)} or nil (never used)
local function gcra_level(s, p, now)
  if s == nil then return ZERO end
  if s.rate <= 0 or (s.rate == p.rate and s.period == p.period) then
    return max0(add(mul(sub(s.tat, now), p.rateB), s.frac))
  end
  local old = add(mul(sub(s.tat, now), N(s.rate)), s.frac)
  if not ispos(old) then return ZERO end
  local sp = s.period
  if sp < 1 then sp = 1 end
  return ceil_div(mul(old, p.periodB), sp)
end
local function gcra_set(p, now, level)
  local q, r = divmod(level, p.rate)
  return {tat = sat(add(now, q)), frac = N(r), rate = p.rate, period = p.period}
end
local function gcra_consume(s, p, cost, now)
  local level = gcra_level(s, p, now)
  local d = decide(level, p, cost)
  if d.allowed then s = gcra_set(p, now, add(level, mul(cost, p.periodB))) end
  return d, s
end
local function gcra_adjust(s, p, delta, now)
  local level = add(gcra_level(s, p, now), mul(delta, p.periodB))
  return gcra_set(p, now, max0(level))
end
local function gcra_idle(s, p, now)
  return sat(add(now, ceil_div(gcra_level(s, p, now), p.rate)))
end

-- Token bucket: s = {tokens (bignum), frac (double), last (bignum)} or nil (full)
local function tb_refill(s, p, now)
  if s == nil then return {tokens = p.capB, frac = 0, last = now} end
  local r = {tokens = s.tokens, frac = s.frac, last = s.last}
  if r.frac > p.period - 1 then r.frac = p.period - 1 end
  if cmp(now, r.last) > 0 then
    local acc = add(N(r.frac), mul(sub(now, r.last), p.rateB))
    local q, m = divmod(acc, p.period)
    local tokens = add(r.tokens, q)
    if cmp(tokens, p.capB) >= 0 then r.tokens = p.capB r.frac = 0
    else r.tokens = tokens r.frac = m end
    r.last = now
  end
  if cmp(r.tokens, p.capB) >= 0 then r.tokens = p.capB r.frac = 0 end
  return r
end
local function tb_level(r, p)
  return sub(mul(sub(p.capB, r.tokens), p.periodB), N(r.frac))
end
local function tb_consume(s, p, cost, now)
  local r = tb_refill(s, p, now)
  local d = decide(tb_level(r, p), p, cost)
  if d.allowed then r.tokens = sub(r.tokens, cost) s = r end
  return d, s
end
local function tb_adjust(s, p, delta, now)
  local r = tb_refill(s, p, now)
  local tokens = sub(r.tokens, delta)
  if cmp(tokens, p.capB) >= 0 then r.tokens = p.capB r.frac = 0 else r.tokens = sat(tokens) end
  return r
end
local function tb_idle(s, p, now)
  if s == nil then return KMIN end
  return sat(add(now, ceil_div(tb_level(tb_refill(s, p, now), p), p.rate)))
end

-- Sliding window: s = {head (bignum), slot (double), c[0..20] (bignums)} or nil (never used)
local KRING = 21
local function sw_g(p)
  local g = math.floor(p.period / 20)
  if g < 1 then g = 1 end
  return g
end
local function ring_of(b)
  local _, r = divmod(b, KRING)
  return r
end
local function sw_adv(s, p, now)
  local g = sw_g(p)
  local cur = divmod(now, g)
  local a = {c = {}, slot = 0}
  if s ~= nil then
    a.head = s.head a.slot = s.slot
    for i = 0, 20 do a.c[i] = s.c[i] end
  end
  if a.head ~= nil and a.slot ~= g then
    local total = ZERO
    for i = 0, 20 do total = add(total, a.c[i]) end
    for i = 0, 20 do a.c[i] = ZERO end
    a.c[ring_of(cur)] = sat(total)
    a.head = cur
  end
  a.slot = g
  if a.head == nil then
    for i = 0, 20 do a.c[i] = ZERO end
    a.head = cur
  elseif cmp(cur, a.head) > 0 then
    local gap = sub(cur, a.head)
    if cmp(gap, N(KRING)) >= 0 then
      for i = 0, 20 do a.c[i] = ZERO end
    else
      local hi = ring_of(a.head)
      for k = 1, tod(gap) do a.c[(hi + k) % KRING] = ZERO end
    end
    a.head = cur
  end
  return a
end
local function slot_expiry(a, k, g, now)
  return sat(sub(mul(add(sub(a.head, N(k)), N(KRING)), N(g)), now))
end
local function sw_reset(a, g, now)
  local hi = ring_of(a.head)
  for k = 0, 20 do
    if a.c[(hi - k) % KRING] ~= 0 then return max0(slot_expiry(a, k, g, now)) end
  end
  return ZERO
end
local function sw_decide(a, p, cost, now)
  local g = sw_g(p)
  local sum = ZERO
  for i = 0, 20 do sum = add(sum, a.c[i]) end
  local d = {}
  local hi = ring_of(a.head)
  if cmp(add(sum, cost), p.capB) <= 0 then
    d.allowed = true
    d.remaining = sub(sub(p.capB, sum), cost)
    d.retry = ZERO
    local after = {head = a.head, c = {}}
    for i = 0, 20 do after.c[i] = a.c[i] end
    after.c[hi] = add(after.c[hi], cost)
    d.reset = sw_reset(after, g, now)
    return d
  end
  d.allowed = false
  if cmp(sum, p.capB) >= 0 then d.remaining = ZERO else d.remaining = sub(p.capB, sum) end
  d.reset = sw_reset(a, g, now)
  if cmp(cost, p.capB) > 0 then d.retry = KMAX return d end
  local excess = sub(add(sum, cost), p.capB)
  local dropped = ZERO
  for k = 20, 0, -1 do
    dropped = add(dropped, a.c[(hi - k) % KRING])
    if cmp(dropped, excess) >= 0 then
      local e = slot_expiry(a, k, g, now)
      if cmp(e, N(1)) < 0 then e = N(1) end
      d.retry = e
      return d
    end
  end
  d.retry = ZERO
  return d
end
local function sw_consume(s, p, cost, now)
  local a = sw_adv(s, p, now)
  local d = sw_decide(a, p, cost, now)
  if d.allowed then
    local hi = ring_of(a.head)
    a.c[hi] = add(a.c[hi], cost)
    s = a
  end
  return d, s
end
local function sw_adjust(s, p, delta, now)
  local a = sw_adv(s, p, now)
  local hi = ring_of(a.head)
  if not isneg(delta) then
    a.c[hi] = sat(add(a.c[hi], delta))
  else
    local refund = negate(delta)
    for k = 0, 20 do
      if not ispos(refund) then break end
      local i = (hi - k) % KRING
      local take = a.c[i]
      if cmp(refund, take) < 0 then take = refund end
      a.c[i] = sub(a.c[i], take)
      refund = sub(refund, take)
    end
  end
  return a
end
local function sw_idle(s, p, now)
  if s == nil then return KMIN end
  local a = sw_adv(s, p, now)
  return sat(add(now, sw_reset(a, sw_g(p), now)))
end

-- Stored value: "g tat frac rate period" | "t tokens frac last" | "w head slot c0 .. c20".
local TAGS = {[0] = "g", [1] = "t", [2] = "w"}
local function load(raw, alg)
  if not raw then return nil end
  local f = {}
  for x in string.gmatch(raw, "%S+") do f[#f + 1] = x end
  if f[1] ~= TAGS[alg] then return nil end
  if alg == 0 then
    return {tat = P(f[2]), frac = P(f[3]), rate = tonumber(f[4]), period = tonumber(f[5])}
  elseif alg == 1 then
    return {tokens = P(f[2]), frac = tonumber(f[3]), last = P(f[4])}
  end
  local s = {head = P(f[2]), slot = tonumber(f[3]), c = {}}
  for i = 0, 20 do s.c[i] = P(f[4 + i]) end
  return s
end
local function dump(s, alg)
  if alg == 0 then
    return "g " .. S(s.tat) .. " " .. S(s.frac) .. " " .. string.format("%d %d", s.rate, s.period)
  elseif alg == 1 then
    return "t " .. S(s.tokens) .. " " .. string.format("%d", s.frac) .. " " .. S(s.last)
  end
  local out = {"w", S(s.head), string.format("%d", s.slot)}
  for i = 0, 20 do out[#out + 1] = S(s.c[i]) end
  return table.concat(out, " ")
end
local function run(alg, s, p, cost, now)
  if alg == 0 then return gcra_consume(s, p, cost, now)
  elseif alg == 1 then return tb_consume(s, p, cost, now) end
  return sw_consume(s, p, cost, now)
end
local function idle_at(alg, s, p, now)
  if alg == 0 then return gcra_idle(s, p, now)
  elseif alg == 1 then return tb_idle(s, p, now) end
  return sw_idle(s, p, now)
end
-- Keys expire when the bucket would be full again: a missing key IS the fresh state. Capped so
-- that PX stays valid; a bucket idle that long (about 10 years) is forgotten.
local TTL_CAP = N(315360000000)
local TTL_EXTRA = N(tonumber(ARGV[3]))
local function save(key, alg, s, p, now)
  local idle = idle_at(alg, s, p, now)
  local left = sub(idle, now)
  if not ispos(left) then
    redis.call("DEL", key)
    return
  end
  local ms = add(ceil_div(left, 1000000), TTL_EXTRA)
  if cmp(ms, TTL_CAP) > 0 then ms = TTL_CAP end
  redis.call("SET", key, dump(s, alg), "PX", S(ms))
end

local now
if ARGV[2] == "" then
  local t = redis.call("TIME")
  now = add(mul(P(t[1]), N(1000000000)), N(tonumber(t[2]) * 1000))
else
  now = P(ARGV[2])
end
if isneg(now) then return redis.error_reply("bw: negative time") end

if ARGV[1] == "a" then
  local key = KEYS[1]
  local alg = tonumber(ARGV[4])
  local p = mkparams(ARGV[5], ARGV[6], ARGV[7])
  local delta = P(ARGV[8])
  if delta == 0 then return 1 end
  local raw = redis.call("GET", key)
  if not raw and isneg(delta) then return 1 end
  local s = load(raw, alg)
  if alg == 0 then s = gcra_adjust(s, p, delta, now)
  elseif alg == 1 then s = tb_adjust(s, p, delta, now)
  else s = sw_adjust(s, p, delta, now) end
  save(key, alg, s, p, now)
  return 1
end

local n = #KEYS
local work = {}
local order = {}
local res = {}
local allowed = true
local args = {}
for i = 1, n do
  local b = 3 + (i - 1) * 6
  local key = KEYS[i]
  local a = {alg = tonumber(ARGV[b + 1]), p = mkparams(ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]),
             cost = P(ARGV[b + 5]), shadow = ARGV[b + 6] == "1"}
  args[i] = a
  local w = work[key]
  if w == nil then
    w = {raw = redis.call("GET", key), touched = false, commit = false}
    work[key] = w
    order[#order + 1] = key
  end
  if not w.touched or w.alg ~= a.alg then
    w.s = load(w.raw, a.alg) w.alg = a.alg w.touched = true
  end
  w.p = a.p
  local d
  d, w.s = run(a.alg, w.s, a.p, a.cost, now)
  d.consumed = d.allowed
  if d.consumed then w.commit = true end
  if not d.allowed and not a.shadow then allowed = false end
  res[i] = d
end

if not allowed then
  -- Nothing is kept; report the untouched state of the checks that would have passed.
  for _, key in ipairs(order) do work[key].touched = false end
  for i = 1, n do
    local d = res[i]
    d.consumed = false
    if d.allowed then
      local a = args[i]
      local w = work[KEYS[i]]
      if not w.touched or w.alg ~= a.alg then
        w.s = load(w.raw, a.alg) w.alg = a.alg w.touched = true
      end
      local cur = run(a.alg, w.s, a.p, ZERO, now)
      d.remaining = cur.remaining
      d.reset = cur.reset
    end
  end
else
  for _, key in ipairs(order) do
    local w = work[key]
    if w.commit then save(key, w.alg, w.s, w.p, now) end
  end
end

local out = {allowed and 1 or 0}
for i = 1, n do
  local d = res[i]
  out[#out + 1] = d.allowed and 1 or 0
  out[#out + 1] = d.consumed and 1 or 0
  out[#out + 1] = S(d.remaining)
  out[#out + 1] = S(d.retry)
  out[#out + 1] = S(d.reset)
end
return out
)LUA";

std::string compute_sha1(std::string_view text) {
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  std::string hex(2 * SHA_DIGEST_LENGTH, '0');
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = 0; i < SHA_DIGEST_LENGTH; ++i) {
    hex[2 * i] = kHex[digest[i] >> 4];
    hex[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return hex;
}

}  // namespace

std::string_view redis_limit_script() {
  return kScript;
}

const std::string& redis_limit_script_sha1() {
  static const std::string sha = compute_sha1(kScript);
  return sha;
}

}  // namespace bw::limits
