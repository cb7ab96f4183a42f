// The access log's line: one JSON object per request, every field under its documented name.
#include "gateway/access_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <simdjson.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/json_util.h"

namespace bw::gateway {
namespace {

std::string temp_path() {
  char tmpl[] = "/tmp/bw-access-log-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  EXPECT_GE(fd, 0);
  ::close(fd);
  return tmpl;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(AccessLog, OffIsDisabled) {
  AccessLog off("off");
  EXPECT_FALSE(off.enabled());
  off.log(AccessRecord{});  // nothing to write to: a no-op
}

TEST(AccessLog, OneJsonLinePerRecordWithEveryField) {
  const std::string path = temp_path();
  {
    AccessLog log(path);
    ASSERT_TRUE(log.enabled());
    AccessRecord r;
    r.request_id = "req_1";
    r.key_id = "team \"a\"";  // escaped in the value
    r.method = "POST";
    r.path = "/v1/chat/completions";
    r.client_ip = "10.0.0.1";
    r.model_requested = "gpt";
    r.model_served = "gpt-mini";
    r.upstream = "openai-1";
    r.status = 200;
    r.stream = true;
    r.latency_ns = 12'500'000;
    r.ttft_ns = 3'250'000;
    r.queue_ns = 1'000'000;
    r.wait_reason = "concurrency";
    r.prompt_tokens = 11;
    r.completion_tokens = 22;
    r.cost_micro_usd = 1500;
    r.attempts = 2;
    r.bytes_in = 100;
    r.bytes_out = 200;
    r.cache = "hit";
    r.cache_age_s = 7;
    r.cache_saved_micro_usd = 250;
    r.cache_similarity = 0.5;
    r.cached_tokens = 4;
    r.priority = 1;
    r.priority_lowered = true;
    r.cancelled = true;
    r.error_code = "upstream_502";
    r.trace_id = "0af7651916cd43dd8448eb211c80319c";
    r.span_id = "b7ad6b7169203331";
    log.log(r);
    AccessRecord minimal;
    minimal.request_id = "req_2";
    log.log(minimal);
  }
  const std::string text = read_all(path);
  ::unlink(path.c_str());
  const auto nl = text.find('\n');
  ASSERT_NE(nl, std::string::npos) << text;
  ASSERT_EQ(text.find('\n', nl + 1), text.size() - 1) << text;

  simdjson::dom::parser parser;
  simdjson::dom::element line;
  ASSERT_EQ(parser.parse(text.substr(0, nl)).get(line), simdjson::SUCCESS) << text;
  auto str = [&](const char* k) {
    std::string_view v;
    EXPECT_EQ(line[k].get(v), simdjson::SUCCESS) << k;
    return std::string(v);
  };
  auto num = [&](const char* k) {
    double v = -1;
    simdjson::dom::element e;
    EXPECT_EQ(line[k].get(e), simdjson::SUCCESS) << k;
    if (e.is_int64()) return static_cast<double>(e.get_int64().value_unsafe());
    if (e.is_uint64()) return static_cast<double>(e.get_uint64().value_unsafe());
    EXPECT_EQ(e.get(v), simdjson::SUCCESS) << k;
    return v;
  };
  auto boolean = [&](const char* k) {
    bool v = false;
    EXPECT_EQ(line[k].get(v), simdjson::SUCCESS) << k;
    return v;
  };
  EXPECT_GT(num("ts_ms"), 0);
  EXPECT_EQ(str("request_id"), "req_1");
  EXPECT_EQ(str("key_id"), "team \"a\"");
  EXPECT_EQ(str("client_ip"), "10.0.0.1");
  EXPECT_EQ(str("method"), "POST");
  EXPECT_EQ(str("path"), "/v1/chat/completions");
  EXPECT_EQ(str("model"), "gpt");
  EXPECT_EQ(str("model_served"), "gpt-mini");
  EXPECT_EQ(str("upstream"), "openai-1");
  EXPECT_EQ(num("status"), 200);
  EXPECT_TRUE(boolean("stream"));
  EXPECT_EQ(num("latency_ms"), 12.5);
  EXPECT_EQ(num("ttft_ms"), 3.25);
  EXPECT_EQ(num("queue_ms"), 1);
  EXPECT_EQ(str("wait_reason"), "concurrency");
  EXPECT_EQ(num("prompt_tokens"), 11);
  EXPECT_EQ(num("completion_tokens"), 22);
  EXPECT_EQ(num("cost_usd"), 0.0015);
  EXPECT_EQ(num("attempts"), 2);
  EXPECT_EQ(num("bytes_in"), 100);
  EXPECT_EQ(num("bytes_out"), 200);
  EXPECT_EQ(str("cache"), "hit");
  EXPECT_EQ(num("cache_age_s"), 7);
  EXPECT_EQ(num("cache_saved_usd"), 0.00025);
  EXPECT_EQ(num("cache_similarity"), 0.5);
  EXPECT_EQ(num("cached_tokens"), 4);
  EXPECT_EQ(num("priority"), 1);
  EXPECT_TRUE(boolean("priority_lowered"));
  EXPECT_TRUE(boolean("cancelled"));
  EXPECT_EQ(str("error"), "upstream_502");
  EXPECT_EQ(str("trace_id"), "0af7651916cd43dd8448eb211c80319c");
  EXPECT_EQ(str("span_id"), "b7ad6b7169203331");

  // The optional fields are left out when they do not apply.
  ASSERT_EQ(parser.parse(text.substr(nl + 1, text.size() - nl - 2)).get(line), simdjson::SUCCESS);
  simdjson::dom::object fields;
  ASSERT_EQ(line.get(fields), simdjson::SUCCESS);
  std::string keys;
  for (auto f : fields) keys += std::string(f.key) + ",";
  EXPECT_EQ(keys,
            "ts_ms,request_id,key_id,client_ip,method,path,model,model_served,upstream,status,"
            "stream,latency_ms,queue_ms,prompt_tokens,completion_tokens,cost_usd,attempts,"
            "bytes_in,bytes_out,");
}

// Times keep six significant digits, money is exact to the micro-dollar; neither has an
// exponent.
TEST(AccessLog, NumbersInDecimalNotation) {
  const std::string path = temp_path();
  {
    AccessLog log(path);
    AccessRecord r;
    r.request_id = "req_n";
    r.latency_ns = 1'234'567'800;
    r.ttft_ns = 12;
    r.queue_ns = 0;
    r.cost_micro_usd = 1'234'567;
    r.cache_saved_micro_usd = 12;
    log.log(r);
  }
  const std::string text = read_all(path);
  ::unlink(path.c_str());
  EXPECT_NE(text.find("\"latency_ms\":1234.57,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"ttft_ms\":0.000012,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"queue_ms\":0,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"cost_usd\":1.234567,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"cache_saved_usd\":0.000012"), std::string::npos) << text;
}

// The line as it was written field by field before any of it was kept from one line to the
// next (everything after the time stamp, which is the clock's).
std::string reference_line(const AccessRecord& r) {
  std::string out(8192 + 6 * 4096, '\0');
  char* p = out.data();
  // Milliseconds as the picoseconds' decimal at six significant digits (what the line wrote
  // from a double's picoseconds), or, past that range, the nanoseconds'.
  auto ms = [&](std::int64_t ns) {
    p = ns > -9'000'000'000'000'000 / 1000 && ns < 9'000'000'000'000'000 / 1000
            ? write_decimal(p, ns * 1000, 9, 6)
            : write_decimal(p, ns, 6, 6);
  };
  auto str = [&](std::string_view v) { p = write_json_string(p, v); };
  auto lit = [&](std::string_view v) {
    std::memcpy(p, v.data(), v.size());
    p += v.size();
  };
  lit(",\"request_id\":");
  str(r.request_id);
  lit(",\"key_id\":");
  str(r.key_id);
  lit(",\"client_ip\":");
  str(r.client_ip);
  lit(",\"method\":");
  str(r.method);
  lit(",\"path\":");
  str(r.path);
  lit(",\"model\":");
  str(r.model_requested);
  lit(",\"model_served\":");
  str(r.model_served);
  lit(",\"upstream\":");
  str(r.upstream);
  lit(",\"status\":");
  p = write_int(p, r.status);
  lit(r.stream ? ",\"stream\":true" : ",\"stream\":false");
  lit(",\"latency_ms\":");
  ms(r.latency_ns);
  if (r.ttft_ns >= 0) {
    lit(",\"ttft_ms\":");
    ms(r.ttft_ns);
  }
  lit(",\"queue_ms\":");
  ms(r.queue_ns);
  if (!r.wait_reason.empty()) {
    lit(",\"wait_reason\":");
    str(r.wait_reason);
  }
  lit(",\"prompt_tokens\":");
  p = write_int(p, r.prompt_tokens);
  lit(",\"completion_tokens\":");
  p = write_int(p, r.completion_tokens);
  lit(",\"cost_usd\":");
  p = write_decimal(p, r.cost_micro_usd, 6);
  lit(",\"attempts\":");
  p = write_int(p, r.attempts);
  lit(",\"bytes_in\":");
  p = write_uint(p, r.bytes_in);
  lit(",\"bytes_out\":");
  p = write_uint(p, r.bytes_out);
  if (!r.cache.empty()) {
    lit(",\"cache\":");
    str(r.cache);
  }
  if (r.cache_age_s >= 0) {
    lit(",\"cache_age_s\":");
    p = write_int(p, r.cache_age_s);
  }
  if (r.cache_saved_micro_usd > 0) {
    lit(",\"cache_saved_usd\":");
    p = write_decimal(p, r.cache_saved_micro_usd, 6);
  }
  if (r.cache_similarity >= 0) {
    lit(",\"cache_similarity\":");
    p = write_double(p, r.cache_similarity);
  }
  if (r.cached_tokens > 0) {
    lit(",\"cached_tokens\":");
    p = write_int(p, r.cached_tokens);
  }
  if (r.priority >= 0) {
    lit(",\"priority\":");
    p = write_int(p, r.priority);
  }
  if (r.priority_lowered) lit(",\"priority_lowered\":true");
  if (r.cancelled) lit(",\"cancelled\":true");
  if (!r.error_code.empty()) {
    lit(",\"error\":");
    str(r.error_code);
  }
  if (!r.trace_id.empty()) {
    lit(",\"trace_id\":");
    str(r.trace_id);
  }
  if (!r.span_id.empty()) {
    lit(",\"span_id\":");
    str(r.span_id);
  }
  lit("}\n");
  out.resize(static_cast<std::size_t>(p - out.data()));
  return out;
}

// Every line is the same bytes as the field-by-field text, whichever line came before it (the
// route's fields are kept from one line to the next): a table of records with values that need
// escaping (quotes, backslashes, control bytes, UTF-8), empty ones, values of the same sizes
// with other bytes, values too long to keep, and a value changed in the same memory, logged in
// an order that repeats and alternates them.
TEST(AccessLog, EveryLineIsTheFieldByFieldText) {
  const std::string long_path = "/v1/" + std::string(300, 'p');
  // With the others (key, address, method, path: 23 bytes), 311, 320 and 321 bytes of kept
  // values: under, at and over the most kept.
  const std::string near_limit(139, 'm');
  const std::string long_key(400, 'k');
  std::vector<AccessRecord> table;
  auto add = [&](std::string_view method, std::string_view path, std::string_view model,
                 std::string_view served, std::string_view upstream, std::string_view key = "bench",
                 std::string_view ip = "127.0.0.1") {
    AccessRecord r;
    r.request_id = "req";
    r.key_id = key;
    r.client_ip = ip;
    r.method = method;
    r.path = path;
    r.model_requested = model;
    r.model_served = served;
    r.upstream = upstream;
    r.status = 200;
    r.latency_ns = 1'500'000 + 1'000'000 * static_cast<std::int64_t>(table.size());
    r.cost_micro_usd = 17;
    table.push_back(r);
  };
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim");
  add("POST", "/v1/chat/completions", "gpt-4o-mino", "gpt-4o-mini", "sim");  // same sizes
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sin");
  add("POST", "/v1/chat/completionz", "gpt-4o-mini", "gpt-4o-mini", "sim");
  add("PUT", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim");
  add("POST", "/v1/responses", "m\"quoted\"", "back\\slash", "ctl\x01\x1f\n\t");
  add("POST", "/v1/messages", "caf\xc3\xa9 \xe2\x82\xac", "\x7f", "</script>");
  add("", "", "", "", "");
  add("POST", "", "gpt", "", "up");
  add("POST", long_path, "gpt", "gpt", "sim");
  add("POST", "/v1/x", near_limit, near_limit, std::string_view(near_limit).substr(0, 10));
  add("POST", "/v1/x", near_limit, near_limit, std::string_view(near_limit).substr(0, 20));
  add("POST", "/v1/x", near_limit, near_limit, std::string_view(near_limit).substr(0, 19));
  add("GET", "/v1/models\"", "a\\", "\"", "\\");
  // The key and the client's address, kept with the route.
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", "bencH");
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", "bench", "127.0.0.2");
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", "", "");
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", "team \"a\"",
      "2001:db8::1");
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", "tab\there",
      "::ffff:10.0.0.1");
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", long_key);
  // The same bytes moved between neighbouring fields: the sizes tell them apart.
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", "bench127.0.0.1", "");
  add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim", "", "bench127.0.0.1");

  // Statuses of every width, and values no answer has.
  for (int status : {0, 7, 99, 100, 200, 404, 429, 599, 999, 1000, -1, -100,
                     std::numeric_limits<int>::min(), std::numeric_limits<int>::max()}) {
    add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim");
    table.back().status = status;
  }
  // Attempts and priorities of one digit, of more, and negative ones (a priority below zero is
  // left out).
  for (std::int64_t n :
       {std::int64_t{0}, std::int64_t{1}, std::int64_t{9}, std::int64_t{10}, std::int64_t{12},
        std::int64_t{-1}, std::int64_t{-10}, std::numeric_limits<std::int64_t>::max(),
        std::numeric_limits<std::int64_t>::min()}) {
    add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim");
    table.back().attempts = n;
    table.back().priority = static_cast<int>(std::clamp<std::int64_t>(n, -1, 1'000));
  }
  // Durations of every magnitude, the roundings at six digits (half to even, a carry into a
  // seventh digit), negative ones and the extremes.
  for (std::int64_t ns :
       {std::int64_t{1}, std::int64_t{999}, std::int64_t{999'999}, std::int64_t{1'000'000},
        std::int64_t{1'234'567}, std::int64_t{1'234'565'000}, std::int64_t{1'234'575'000},
        std::int64_t{999'999'499}, std::int64_t{999'999'500}, std::int64_t{999'999'501},
        std::int64_t{12'345'678'901'234}, std::int64_t{-1'500'000}, std::int64_t{-1},
        std::int64_t{8'999'999'999'999'999}, std::int64_t{9'000'000'000'000'000},
        std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()}) {
    add("POST", "/v1/chat/completions", "gpt-4o-mini", "gpt-4o-mini", "sim");
    table.back().latency_ns = ns;
    table.back().ttft_ns = ns < 0 ? -1 : ns / 3;
    table.back().queue_ns = ns / 7;
  }
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < table.size(); ++i) {
    order.push_back(i);
    order.push_back(i);  // kept: the second is copied
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 400; ++i) order.push_back(rng() % table.size());
  // A value changed where it lies, at the same size: the kept text must not be taken.
  char method[] = "POST";
  AccessRecord in_place = table[0];
  in_place.method = std::string_view(method, 4);

  const std::string path = temp_path();
  std::vector<std::string> want;
  {
    AccessLog log(path);
    for (std::size_t i : order) {
      log.log(table[i]);
      want.push_back(reference_line(table[i]));
    }
    for (const char* m : {"POST", "PUSH", "PUSH", "POST"}) {
      std::memcpy(method, m, 4);
      log.log(in_place);
      want.push_back(reference_line(in_place));
    }
  }
  const std::string text = read_all(path);
  ::unlink(path.c_str());
  std::size_t at = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(text.compare(at, 9, "{\"ts_ms\":"), 0) << i;
    at = text.find(',', at);  // the time stamp's end
    ASSERT_NE(at, std::string::npos) << i;
    ASSERT_EQ(text.substr(at, want[i].size()), want[i]) << i;
    at += want[i].size();
  }
  EXPECT_EQ(at, text.size());
}

// A number of `digits` random decimal digits (the first may be a zero).
std::uint64_t random_digits(std::mt19937_64& rng, std::uint64_t digits) {
  std::uint64_t v = rng() % 10;
  for (std::uint64_t d = 1; d < digits; ++d) v = v * 10 + rng() % 10;
  return v;
}

// A duration's milliseconds are write_decimal's text of its nanoseconds at six significant
// digits: every magnitude, the roundings (half to even, a carry into a seventh digit), the
// range past the fast one, negative values and the extremes.
TEST(AccessLog, DurationIsTheDecimalOfItsNanoseconds) {
  std::vector<std::int64_t> ns = {0,
                                  1,
                                  9,
                                  10,
                                  999,
                                  100'000,
                                  999'999,
                                  1'000'000,
                                  1'000'001,
                                  1'000'005,
                                  1'000'015,
                                  9'999'995,
                                  9'999'985,
                                  12'345'678,
                                  1'234'565'000,
                                  1'234'575'000,
                                  999'999'499,
                                  999'999'500,
                                  999'999'501,
                                  100'000'000'000,
                                  999'999'500'000,
                                  999'999'499'999,
                                  123'456'789'012'345,
                                  999'999'999'999'999,
                                  1'000'000'000'000'000,
                                  -1,
                                  -1'234'567,
                                  std::numeric_limits<std::int64_t>::max(),
                                  std::numeric_limits<std::int64_t>::min()};
  std::mt19937_64 rng(11);
  for (int i = 0; i < 200'000; ++i) {
    const auto digits = 1 + rng() % 17;
    std::uint64_t v = random_digits(rng, digits);
    // Now and then the digits after the sixth a tie: ...5 then zeros.
    if (rng() % 4 == 0 && digits > 6) {
      std::uint64_t q = 1;
      for (std::uint64_t d = 6; d < digits; ++d) q *= 10;
      v = v / q * q + q / 2;
    }
    ns.push_back(static_cast<std::int64_t>(v));
  }
  for (std::int64_t v : ns) {
    char got[kDecimalMaxSize + 8], want[kDecimalMaxSize];
    const std::string_view g(got, static_cast<std::size_t>(write_ms(got, v) - got));
    const std::string_view w(want, static_cast<std::size_t>(write_decimal(want, v, 6, 6) - want));
    ASSERT_EQ(g, w) << v;
  }
}

// A cost's text is write_decimal's at six places: zero, every place's digit alone, trailing
// zeros, just below and at a dollar, dollars with and without cents, negative amounts, the
// extremes, and random amounts of every size.
TEST(AccessLog, CostIsTheDecimalOfItsMicroDollars) {
  std::vector<std::int64_t> micro = {0,
                                     1,
                                     9,
                                     10,
                                     100,
                                     1'000,
                                     10'000,
                                     100'000,
                                     120'000,
                                     123'456,
                                     100'001,
                                     999'999,
                                     1'000'000,
                                     1'000'001,
                                     1'500'000,
                                     12'345'678,
                                     -1,
                                     -999'999,
                                     -1'000'000,
                                     std::numeric_limits<std::int64_t>::max(),
                                     std::numeric_limits<std::int64_t>::min()};
  std::mt19937_64 rng(5);
  for (int i = 0; i < 100'000; ++i) {
    const auto digits = 1 + rng() % 12;
    const auto v = static_cast<std::int64_t>(random_digits(rng, digits));
    micro.push_back(rng() % 8 == 0 ? -v : v);
  }
  for (std::int64_t v : micro) {
    char got[kDecimalMaxSize + 8], want[kDecimalMaxSize];
    const std::string_view g(got, static_cast<std::size_t>(write_usd(got, v) - got));
    const std::string_view w(want, static_cast<std::size_t>(write_decimal(want, v, 6) - want));
    ASSERT_EQ(g, w) << v;
  }
}

// The time stamp's text is write_int's, for a second formatted afresh or kept from the line
// before: the same second again, the next one, a digit more, times below a second, negative.
TEST(AccessLog, TimeStampIsTheIntegerText) {
  std::vector<std::int64_t> ms = {1'700'000'000'000,
                                  1'700'000'000'001,
                                  1'700'000'000'999,
                                  1'700'000'001'000,
                                  1'700'000'001'000,
                                  1'700'000'000'500,
                                  9'999'999,
                                  10'000'000,
                                  10'000'001,
                                  999,
                                  1000,
                                  1001,
                                  0,
                                  -1,
                                  -1'234'567,
                                  1'700'000'000'090,
                                  1'700'000'000'009,
                                  std::numeric_limits<std::int64_t>::max(),
                                  std::numeric_limits<std::int64_t>::min()};
  std::mt19937_64 rng(3);
  std::int64_t t = 1'765'000'000'000;
  for (int i = 0; i < 20000; ++i) {
    t += static_cast<std::int64_t>(rng() % 700);
    ms.push_back(t);
    if (rng() % 50 == 0) ms.push_back(static_cast<std::int64_t>(rng() >> 1));
  }
  for (std::int64_t v : ms) {
    char got[32], want[32];
    const std::string_view g(got, static_cast<std::size_t>(write_unix_ms(got, v) - got));
    const std::string_view w(want, static_cast<std::size_t>(write_int(want, v) - want));
    ASSERT_EQ(g, w) << v;
  }
}

// The lines of a file, each parsed: its request id (the thread and its line number, "t<T>-<N>").
std::vector<std::string> request_ids(const std::string& text) {
  std::vector<std::string> ids;
  simdjson::dom::parser parser;
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t nl = text.find('\n', at);
    EXPECT_NE(nl, std::string::npos) << "a line without its end";
    if (nl == std::string::npos) break;
    simdjson::dom::element line;
    EXPECT_EQ(parser.parse(text.substr(at, nl - at)).get(line), simdjson::SUCCESS)
        << text.substr(at, nl - at);
    std::string_view id;
    EXPECT_EQ(line["request_id"].get(id), simdjson::SUCCESS);
    ids.emplace_back(id);
    at = nl + 1;
  }
  return ids;
}

// Several threads log at once, each into its own buffer: every line is written whole, and each
// thread's lines keep their order.
TEST(AccessLog, LinesOfConcurrentThreadsAreAllWrittenInTheirThreadsOrder) {
  const std::string path = temp_path();
  // Together less than one thread's buffer: no line is dropped even if the writer does not run
  // until the end (the threads may take turns with one buffer).
  constexpr int kThreads = 4, kLines = 1000;
  {
    AccessLog log(path);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&log, t] {
        for (int i = 0; i < kLines; ++i) {
          const std::string id = "t" + std::to_string(t) + "-" + std::to_string(i);
          AccessRecord r;
          r.request_id = id;
          r.path = "/v1/chat/completions";
          r.status = 200;
          r.latency_ns = i;
          log.log(r);
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(log.dropped(), 0u);
    EXPECT_LE(log.buffers(), static_cast<std::size_t>(kThreads));
  }
  const std::vector<std::string> ids = request_ids(read_all(path));
  ::unlink(path.c_str());
  ASSERT_EQ(ids.size(), static_cast<std::size_t>(kThreads * kLines));
  std::vector<int> next(kThreads, 0);
  for (const std::string& id : ids) {
    const int t = id[1] - '0';
    ASSERT_EQ(id, "t" + std::to_string(t) + "-" + std::to_string(next[t])) << id;
    ++next[t];
  }
}

// flush() writes every line logged before it, with the log still open; a buffer that wraps
// around its end keeps each line whole.
TEST(AccessLog, FlushWritesEveryLineLoggedBeforeItAcrossTheBuffersEnd) {
  const std::string path = temp_path();
  AccessLog log(path, 1);  // the smallest buffer: 64 KiB, wrapped many times below
  const std::string padding(333, 'x');
  std::size_t logged = 0;
  for (int round = 0; round < 40; ++round) {
    for (int i = 0; i < 50; ++i) {
      const std::string id = "r" + std::to_string(logged++);
      AccessRecord r;
      r.request_id = id;
      r.path = padding;
      log.log(r);
    }
    log.flush();
    const std::vector<std::string> ids = request_ids(read_all(path));
    ASSERT_EQ(ids.size(), logged) << round;
    ASSERT_EQ(ids.back(), "r" + std::to_string(logged - 1)) << round;
  }
  EXPECT_EQ(log.dropped(), 0u);
  ::unlink(path.c_str());
}

// A line that does not fit in its thread's buffer is dropped whole and counted; the lines
// around it are written.
TEST(AccessLog, ALineThatDoesNotFitIsDroppedWhole) {
  const std::string path = temp_path();
  std::uint64_t dropped = 0;
  {
    AccessLog log(path, 1);                      // 64 KiB per thread
    const std::string too_long(70 * 1024, 'y');  // more than the whole buffer
    for (int i = 0; i < 3; ++i) {
      const std::string id = "d" + std::to_string(i);
      AccessRecord r;
      r.request_id = id;
      if (i == 1) r.path = too_long;
      log.log(r);
    }
    dropped = log.dropped();
  }
  const std::vector<std::string> ids = request_ids(read_all(path));
  ::unlink(path.c_str());
  EXPECT_EQ(dropped, 1u);
  EXPECT_EQ(ids, (std::vector<std::string>{"d0", "d2"}));
}

// Threads that end leave their buffers to the threads that start after them.
TEST(AccessLog, BuffersOfEndedThreadsAreReused) {
  const std::string path = temp_path();
  {
    AccessLog log(path);
    for (int t = 0; t < 20; ++t) {
      std::thread([&log, t] {
        const std::string id = "e" + std::to_string(t);
        AccessRecord r;
        r.request_id = id;
        log.log(r);
      }).join();
    }
    EXPECT_EQ(log.buffers(), 1u);
  }
  const std::vector<std::string> ids = request_ids(read_all(path));
  ::unlink(path.c_str());
  ASSERT_EQ(ids.size(), 20u);
  for (int t = 0; t < 20; ++t) EXPECT_EQ(ids[t], "e" + std::to_string(t));
}

// Once the writer has taken every line, the next one starts its buffer again: a busy log keeps
// writing the same few kilobytes instead of walking the whole buffer.
TEST(AccessLog, ALineAfterEveryLineWasWrittenStartsTheBufferAgain) {
  const std::string path = temp_path();
  {
    AccessLog log(path, 1);  // 64 KiB per thread
    AccessRecord r;
    r.request_id = "restart";  // every line the same size
    EXPECT_EQ(log.buffer_offset(), 0u);
    for (int i = 0; i < 100; ++i) log.log(r);
    log.flush();
    const std::size_t line = read_all(path).size() / 100;
    ASSERT_GT(line, 0u);
    log.log(r);
    EXPECT_EQ(log.buffer_offset(), line);
    log.log(r);
    EXPECT_LE(log.buffer_offset(), 2 * line);  // the writer may have taken the first already
  }
  const std::vector<std::string> ids = request_ids(read_all(path));
  ::unlink(path.c_str());
  EXPECT_EQ(ids.size(), 102u);
}

// Logs lines with the request ids `prefix`0 .. `prefix`(n - 1), in that order.
void log_numbered(AccessLog& log, char prefix, int n) {
  for (int i = 0; i < n; ++i) {
    const std::string id = prefix + std::to_string(i);
    AccessRecord r;
    r.request_id = id;
    r.path = "/v1/chat/completions";
    log.log(r);
  }
}

// The file at `path` (removed after) holds each of log_numbered's `n` lines once, whole and in
// order, except the `dropped` ones.
void expect_numbered_in_order(const std::string& path, char prefix, int n, std::uint64_t dropped) {
  const std::vector<std::string> ids = request_ids(read_all(path));
  ::unlink(path.c_str());
  EXPECT_EQ(ids.size() + dropped, static_cast<std::size_t>(n));
  int last = -1;
  for (const std::string& id : ids) {
    ASSERT_EQ(id[0], prefix) << id;
    const int i = std::stoi(id.substr(1));
    ASSERT_GT(i, last) << id;
    last = i;
  }
}

// One thread logs while the writer takes its lines in small batches (the smallest buffer wakes
// it every 16 KiB), so the buffer starts again while the writer is busy: every line is written
// once, whole and in order, or counted as dropped.
TEST(AccessLog, LinesStayInOrderWhileTheBufferStartsAgainUnderTheWriter) {
  const std::string path = temp_path();
  constexpr int kLines = 50'000;
  std::uint64_t dropped = 0;
  {
    AccessLog log(path, 1);
    log_numbered(log, 's', kLines);
    dropped = log.dropped();
  }
  expect_numbered_in_order(path, 's', kLines, dropped);
}

// Another thread drains the buffer without pause while lines are logged, so nearly every line
// finds it empty and starts it again, and the drain often reads the buffer between a line's move
// of the start and its publication: it must take nothing then (neither a wrapped length nor a
// start moved back). Every line is written once, whole and in order.
TEST(AccessLog, ADrainBetweenARestartAndItsLineTakesNothing) {
  const std::string path = temp_path();
  constexpr int kLines = 100'000;
  std::uint64_t dropped = 0;
  {
    AccessLog log(path, 1);
    std::atomic<bool> done{false};
    std::thread drainer([&] {
      while (!done.load(std::memory_order_relaxed)) log.flush();
    });
    log_numbered(log, 'd', kLines);
    done = true;
    drainer.join();
    dropped = log.dropped();
  }
  expect_numbered_in_order(path, 'd', kLines, dropped);
}

// The file's blocks are reserved megabytes ahead of its end, its size and text unchanged: the
// writer grows it into them instead of allocating blocks per write.
TEST(AccessLog, BlocksAheadOfTheFilesEndAreReservedWithoutGrowingIt) {
  const std::string path = temp_path();
  {
    const int probe = ::open(path.c_str(), O_WRONLY);
    ASSERT_GE(probe, 0);
    const bool supported = ::fallocate(probe, FALLOC_FL_KEEP_SIZE, 0, 4096) == 0;
    ::close(probe);
    ::truncate(path.c_str(), 0);
    if (!supported) GTEST_SKIP() << "the file system of /tmp reserves no blocks";
  }
  AccessLog log(path);
  AccessRecord r;
  r.request_id = "reserved";
  log.log(r);
  log.flush();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  const std::string text = read_all(path);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), text.size());
  EXPECT_EQ(request_ids(text), (std::vector<std::string>{"reserved"}));
  EXPECT_GE(static_cast<std::int64_t>(st.st_blocks) * 512, 8 << 20);
  ::unlink(path.c_str());
}

// One thread logging to two logs in turn: each line lands in its own log's file.
TEST(AccessLog, AThreadLoggingToTwoLogsWritesEachLineToItsOwn) {
  const std::string a_path = temp_path(), b_path = temp_path();
  {
    AccessLog a(a_path), b(b_path);
    for (int i = 0; i < 10; ++i) {
      const std::string id = "x" + std::to_string(i);
      AccessRecord r;
      r.request_id = id;
      (i % 2 == 0 ? a : b).log(r);
    }
  }
  const std::vector<std::string> a_ids = request_ids(read_all(a_path));
  const std::vector<std::string> b_ids = request_ids(read_all(b_path));
  ::unlink(a_path.c_str());
  ::unlink(b_path.c_str());
  EXPECT_EQ(a_ids, (std::vector<std::string>{"x0", "x2", "x4", "x6", "x8"}));
  EXPECT_EQ(b_ids, (std::vector<std::string>{"x1", "x3", "x5", "x7", "x9"}));
}

}  // namespace
}  // namespace bw::gateway
