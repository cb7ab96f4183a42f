#include "telemetry/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>
#include <vector>

#include "telemetry/gateway_metrics.h"

namespace bw::telemetry {
namespace {

// Runs `cmd`, returns exit status and output (stdout+stderr).
std::pair<int, std::string> run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

bool have(const char* tool) {
  return run(std::string("command -v ") + tool).first == 0;
}

TEST(Metrics, GoldenExposition) {
  Registry r;
  auto& req = r.counter("test_requests_total", "Requests.\nSecond line with \\ backslash.",
                        {"code", "path"});
  req.with({"200", "/a"}).add(3);
  req.with({"500", "/b\"q\"\n\\"}).inc();
  auto& g = r.gauge("test_temperature", "Temperature", {});
  g.get().set(-1.5);
  auto& h = r.histogram("test_latency_seconds", "Latency", {0.1, 1}, {"m"});
  h.with({"x"}).observe(0.05);
  h.with({"x"}).observe(0.1);  // le is inclusive
  h.with({"x"}).observe(0.5);
  h.with({"x"}).observe(7);
  auto& cost = r.counter("test_cost_usd_total", "Cost", {}, 1e-6);
  cost.get().add(1'250'000);
  r.callback_gauge("test_callback", "Evaluated at scrape", [] { return 42.0; }, {{"k", "v"}});
  r.set_build_info("1.2.3", "abc123");

  const std::string expected =
      "# HELP bellwether_build_info Build of the running gateway; the value is always 1.\n"
      "# TYPE bellwether_build_info gauge\n"
      "bellwether_build_info{version=\"1.2.3\",commit=\"abc123\"} 1\n"
      "# HELP test_callback Evaluated at scrape\n"
      "# TYPE test_callback gauge\n"
      "test_callback{k=\"v\"} 42\n"
      "# HELP test_cost_usd_total Cost\n"
      "# TYPE test_cost_usd_total counter\n"
      "test_cost_usd_total 1.25\n"
      "# HELP test_latency_seconds Latency\n"
      "# TYPE test_latency_seconds histogram\n"
      "test_latency_seconds_bucket{m=\"x\",le=\"0.1\"} 2\n"
      "test_latency_seconds_bucket{m=\"x\",le=\"1\"} 3\n"
      "test_latency_seconds_bucket{m=\"x\",le=\"+Inf\"} 4\n"
      "test_latency_seconds_sum{m=\"x\"} 7.65\n"
      "test_latency_seconds_count{m=\"x\"} 4\n"
      "# HELP test_requests_total Requests.\\nSecond line with \\\\ backslash.\n"
      "# TYPE test_requests_total counter\n"
      "test_requests_total{code=\"200\",path=\"/a\"} 3\n"
      "test_requests_total{code=\"500\",path=\"/b\\\"q\\\"\\n\\\\\"} 1\n"
      "# HELP test_temperature Temperature\n"
      "# TYPE test_temperature gauge\n"
      "test_temperature -1.5\n";
  const std::string text = r.expose();
  EXPECT_EQ(text, expected);
  EXPECT_EQ(r.expose(), text) << "exposition must be deterministic";

  if (!have("promtool")) GTEST_SKIP() << "promtool not installed";
  const auto path = std::filesystem::temp_directory_path() /
                    ("bw_metrics_" + std::to_string(::getpid()) + ".prom");
  std::ofstream(path) << text;
  const auto [rc, out] = run("promtool check metrics < " + path.string());
  std::filesystem::remove(path);
  EXPECT_EQ(rc, 0) << out;
}

TEST(Metrics, GatewayMetricsPassPromtool) {
  Registry r;
  GatewayMetricsOptions o;
  o.budget_utilization = true;
  GatewayMetrics m(r, o);
  m.requests.with({"chat", "gpt-4o", status_class(200), "p1"}).inc();
  m.request_duration.with({"chat", "gpt-4o"}).observe(0.3);
  m.ttft.with({"gpt-4o"}).observe(0.2);
  m.upstream_latency.with({"openai-1"}).observe(0.25);
  m.upstream_requests.with({"openai-1", status_class(503)}).inc();
  m.tokens.with({"gpt-4o", "prompt"}).add(120);
  m.tokens.with({"gpt-4o", "completion"}).add(30);
  m.cost_usd.with({"gpt-4o"}).add(450);  // micro-dollars
  m.rate_limited.with({"tenant_rpm"}).inc();
  m.queue_depth.with({"p0"}).set(3);
  m.queue_wait.with({"p0"}).observe(0.002);
  m.in_flight.get().inc();
  m.shed.with({"p2", "queue_full"}).inc();
  m.queue_timeouts.with({"p2"}).inc();
  m.breaker_state.with({"openai-1"}).set(GatewayMetrics::kBreakerOpen);
  m.retries.with({"gpt-4o"}).inc();
  m.fallbacks.with({"gpt-4o", "gpt-4o-mini"}).inc();
  m.dlq_entries.get().inc();
  m.cache_hits.get().inc();
  m.budget_utilization->with({"team-a"}).set(0.5);
  m.replicas_recommended.with({"gateway", "", ""}).set(4);
  m.replicas_recommended.with({"llama/vllm", "models", "vllm-llama"}).set(3);
  const std::string text = r.expose();
  for (const char* needle :
       {"bellwether_requests_total{endpoint=\"chat\",model=\"gpt-4o\",status_class=\"2xx\","
        "priority=\"p1\"} 1\n",
        "bellwether_cost_usd_total{model=\"gpt-4o\"} 0.00045\n",
        "bellwether_tokens_total{model=\"gpt-4o\",type=\"completion\"} 30\n",
        "bellwether_breaker_state{deployment=\"openai-1\"} 2\n",
        "bellwether_upstream_requests_total{deployment=\"openai-1\",status_class=\"5xx\"} 1\n",
        "bellwether_dlq_dropped_total 0\n",
        "bellwether_replicas_recommended{target=\"gateway\",k8s_namespace=\"\",k8s_deployment=\"\"}"
        " "
        "4\n",
        "bellwether_replicas_recommended{target=\"llama/vllm\",k8s_namespace=\"models\","
        "k8s_deployment=\"vllm-llama\"} 3\n",
        "bellwether_in_flight 1\n",
        "bellwether_build_info{version=\"0.1.0\",commit=\"unknown\"} 1\n",
        "bellwether_queue_wait_seconds_bucket{priority=\"p0\",le=\"0.005\"} 1\n"}) {
    EXPECT_NE(text.find(needle), std::string::npos) << needle;
  }
  if (!have("promtool")) GTEST_SKIP() << "promtool not installed";
  const auto path = std::filesystem::temp_directory_path() /
                    ("bw_gw_metrics_" + std::to_string(::getpid()) + ".prom");
  std::ofstream(path) << text;
  const auto [rc, out] = run("promtool check metrics < " + path.string());
  std::filesystem::remove(path);
  EXPECT_EQ(rc, 0) << out;
}

TEST(Metrics, Escaping) {
  std::string s;
  append_escaped_label_value(s, "a\\b\"c\nd\te");
  EXPECT_EQ(s, "a\\\\b\\\"c\\nd\te");
  s.clear();
  append_escaped_help(s, "a\\b\"c\nd");
  EXPECT_EQ(s, "a\\\\b\"c\\nd");  // HELP keeps double quotes as they are
  s.clear();
  append_number(s, 1.0 / 0.0);
  s += ' ';
  append_number(s, -1.0 / 0.0);
  s += ' ';
  append_number(s, 0.0 / 0.0);
  s += ' ';
  append_number(s, 1e-6);
  s += ' ';
  append_number(s, 12345678901.0);
  EXPECT_EQ(s, "+Inf -Inf NaN 1e-06 12345678901");
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  const std::vector<double> bounds = {1, 2, 4};
  Histogram h(bounds);
  for (const double v : {0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 100.0}) h.observe(v);
  const auto s = h.snapshot();
  EXPECT_EQ(s.cumulative, (std::vector<std::uint64_t>{2, 4, 6, 8}));
  EXPECT_EQ(s.count, 8u);
  EXPECT_DOUBLE_EQ(s.sum, 116.5);
}

// A value's bucket is the first bound >= it (lower_bound's), for the bounds themselves, values
// between and beyond them, infinities and NaN (the first bucket).
TEST(Metrics, HistogramBucketIsTheFirstBoundNotBelow) {
  const std::vector<double> bounds = latency_buckets();
  std::vector<double> values = {-1.0,
                                0.0,
                                std::numeric_limits<double>::quiet_NaN(),
                                -std::numeric_limits<double>::infinity(),
                                std::numeric_limits<double>::infinity(),
                                1e300};
  for (const double b : bounds) {
    values.push_back(b);
    values.push_back(std::nextafter(b, 0.0));
    values.push_back(std::nextafter(b, 1e9));
  }
  for (const double v : values) {
    Histogram h(bounds);
    h.observe(v);
    const auto s = h.snapshot();
    const auto want = static_cast<std::size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) -
                                               bounds.begin());
    for (std::size_t i = 0; i < s.cumulative.size(); ++i) {
      EXPECT_EQ(s.cumulative[i], i >= want ? 1u : 0u) << v << " bucket " << i;
    }
  }
}

TEST(Metrics, CardinalityCapFoldsIntoOverflow) {
  Registry r;
  auto& f = r.counter("capped_total", "Capped", {"user"}, 1.0, 3);
  Counter& a = f.with({"a"});
  Counter& b = f.with({"b"});
  Counter& c = f.with({"c"});  // cap 3 reached: the 3rd slot is reserved for overflow
  Counter& d = f.with({"d"});
  EXPECT_NE(&a, &b);
  EXPECT_EQ(&c, &d) << "past the cap every new combination shares the overflow child";
  EXPECT_EQ(&f.with({"a"}), &a) << "existing children stay reachable";
  EXPECT_EQ(&f.with({"too", "many"}), &c) << "wrong arity folds into overflow";
  a.inc();
  c.add(5);
  d.add(2);
  EXPECT_EQ(f.size(), 3u);
  const std::string text = r.expose();
  EXPECT_NE(text.find("capped_total{user=\"a\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("capped_total{user=\"__overflow__\"} 7\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("user=\"c\""), std::string::npos) << text;
  EXPECT_EQ(text.find("user=\"d\""), std::string::npos) << text;
}

TEST(Metrics, ChildCacheResolvesOnceAndServesOneFamily) {
  Registry r;
  auto& f = r.counter("cached_total", "Cached", {"route", "status"});
  auto& other = r.counter("other_total", "Other", {"route", "status"});
  ChildCache<Counter, 2> cache;
  Counter& a = cache.get(f, 0, "/x", "2xx");
  EXPECT_EQ(&a, &f.with({"/x", "2xx"}));
  EXPECT_EQ(&cache.get(f, 0, "/x", "2xx"), &a) << "the slot's child";
  Counter& b = cache.get(f, 1, "/x", "5xx");
  EXPECT_EQ(&b, &f.with({"/x", "5xx"}));
  EXPECT_NE(&a, &b);
  // Another family, or a slot out of range: looked up as usual, nothing cached.
  EXPECT_EQ(&cache.get(other, 0, "/y", "2xx"), &other.with({"/y", "2xx"}));
  EXPECT_EQ(&cache.get(f, 0, "/x", "2xx"), &a);
  EXPECT_EQ(&cache.get(f, 7, "/z", "4xx"), &f.with({"/z", "4xx"}));
  a.inc();
  cache.get(f, 0, "/x", "2xx").add(2);
  EXPECT_NE(r.expose().find("cached_total{route=\"/x\",status=\"2xx\"} 3\n"), std::string::npos)
      << r.expose();
}

// The label values given as arguments of any string type: the family's children, resolved once
// per slot; another family or a slot out of range looked up as usual.
TEST(Metrics, ChildCacheTakesTheLabelValuesAsArguments) {
  Registry r;
  auto& f = r.counter("args_total", "Args", {"route", "status"});
  auto& other = r.counter("args_other_total", "Other", {"route", "status"});
  ChildCache<Counter, 2> cache;
  const std::string route = "/x";
  Counter& a = cache.get(f, 0, route, std::string_view("2xx"));
  EXPECT_EQ(&a, &f.with({"/x", "2xx"}));
  EXPECT_EQ(&cache.get(f, 0, "/x", "2xx"), &a) << "one slot whatever the string type";
  // A filled slot serves its child whatever values are given (the caller numbers them).
  EXPECT_EQ(&cache.get(f, 0, "/elsewhere", "4xx"), &a);
  EXPECT_EQ(f.size(), 1u) << "a hit resolves nothing";
  Counter& b = cache.get(f, 1, "/x", "5xx");
  EXPECT_EQ(&b, &f.with({"/x", "5xx"}));
  EXPECT_EQ(&cache.get(other, 0, "/y", "2xx"), &other.with({"/y", "2xx"}));
  EXPECT_EQ(&cache.get(f, 9, "/z", "4xx"), &f.with({"/z", "4xx"}));
  EXPECT_EQ(f.size(), 3u);
}

TEST(Metrics, ConcurrentRecordingIsExact) {
  Registry r;
  auto& c = r.counter("conc_total", "c", {"k"}).with({"x"});
  auto& g = r.gauge("conc_gauge", "g").get();
  auto& h = r.histogram("conc_hist", "h", {0.5}).get();
  constexpr int kPerThread = 200'000;
  auto work = [&] {
    for (int i = 0; i < kPerThread; ++i) {
      c.inc();
      g.add(1);
      h.observe(i % 2 ? 1.0 : 0.25);
    }
  };
  std::thread t1(work), t2(work);
  t1.join();
  t2.join();
  EXPECT_EQ(c.units(), 2u * kPerThread);
  EXPECT_EQ(g.value(), 2.0 * kPerThread);
  const auto s = h.snapshot();
  EXPECT_EQ(s.count, 2u * kPerThread);
  EXPECT_EQ(s.cumulative[0], static_cast<std::uint64_t>(kPerThread));
  EXPECT_EQ(s.sum, kPerThread * 1.0 + kPerThread * 0.25);  // exact in binary
}

TEST(Metrics, ScrapeWhileRecordingAndRegistering) {
  Registry r;
  auto& f = r.counter("race_total", "r", {"k"}, 1.0, 50);
  std::thread writer([&] {
    for (int i = 0; i < 20'000; ++i) f.with({std::to_string(i % 100)}).inc();
  });
  for (int i = 0; i < 50; ++i) ASSERT_FALSE(r.expose().empty());
  writer.join();
  EXPECT_EQ(f.size(), 50u);
}

// with() answers from a per-thread lookup cache: it must never confuse two families, two label
// sets that hash alike, or a destroyed family with a new one, and it must stay exact across
// threads.
TEST(Metrics, LookupCacheNeverConfusesChildren) {
  std::vector<Counter*> first;
  {
    Registry r;
    auto& a = r.counter("cache_a_total", "a", {"k", "v"}, 1.0, 5000);
    auto& b = r.counter("cache_b_total", "b", {"k", "v"});
    EXPECT_NE(&a.with({"x", "y"}), &b.with({"x", "y"})) << "same labels, two families";
    EXPECT_NE(&a.with({"ab", "c"}), &a.with({"a", "bc"})) << "label boundaries matter";
    // Far more label sets than cache slots: every lookup still finds its own child.
    std::vector<Counter*> children;
    for (int i = 0; i < 2000; ++i) children.push_back(&a.with({std::to_string(i), "z"}));
    for (int round = 0; round < 2; ++round) {
      for (int i = 0; i < 2000; ++i) {
        ASSERT_EQ(&a.with({std::to_string(i), "z"}), children[static_cast<std::size_t>(i)]) << i;
      }
    }
    for (int i = 0; i < 2000; ++i) a.with({std::to_string(i), "z"}).add(static_cast<double>(i));
    for (int i = 0; i < 2000; ++i) {
      ASSERT_EQ(children[static_cast<std::size_t>(i)]->units(), static_cast<std::uint64_t>(i));
    }
    first.push_back(&a.with({"x", "y"}));
  }
  // A family created after the first one was destroyed (possibly at the same address) starts
  // empty: nothing cached for the old one is handed out.
  Registry r2;
  auto& again = r2.counter("cache_a_total", "a", {"k", "v"}, 1.0, 5000);
  EXPECT_EQ(again.with({"x", "y"}).units(), 0u);
  EXPECT_EQ(again.size(), 1u);
  // Two threads, each with its own cache, count into the same children exactly.
  auto& f = r2.counter("cache_threads_total", "t", {"k"});
  auto work = [&] {
    for (int i = 0; i < 100'000; ++i) f.with({i % 2 ? "odd" : "even"}).inc();
  };
  std::thread t1(work), t2(work);
  t1.join();
  t2.join();
  EXPECT_EQ(f.with({"odd"}).units(), 100'000u);
  EXPECT_EQ(f.with({"even"}).units(), 100'000u);
}

TEST(Metrics, RegistrationRules) {
  Registry r;
  auto& a = r.counter("dup_total", "d", {"x"});
  EXPECT_EQ(&r.counter("dup_total", "d", {"x"}), &a);
  EXPECT_THROW(r.gauge("dup_total", "d", {"x"}), std::invalid_argument);
  EXPECT_THROW(r.counter("dup_total", "d", {"y"}), std::invalid_argument);
  EXPECT_THROW(r.counter("1bad", "d"), std::invalid_argument);
  EXPECT_THROW(r.counter("ok_total", "d", {"__reserved"}), std::invalid_argument);
  EXPECT_THROW(r.histogram("h", "d", {1}, {"le"}), std::invalid_argument);
  EXPECT_THROW(r.histogram("h2", "d", {2, 1}), std::invalid_argument);
  EXPECT_TRUE(valid_metric_name("a:b_c9"));
  EXPECT_FALSE(valid_metric_name("a-b"));
}

TEST(Metrics, StatusClass) {
  EXPECT_EQ(status_class(200), "2xx");
  EXPECT_EQ(status_class(429), "4xx");
  EXPECT_EQ(status_class(503), "5xx");
  EXPECT_EQ(status_class(0), "other");
  EXPECT_EQ(status_class(700), "other");
  // Every class at both ends, and the values just outside them.
  EXPECT_EQ(status_class(100), "1xx");
  EXPECT_EQ(status_class(199), "1xx");
  EXPECT_EQ(status_class(300), "3xx");
  EXPECT_EQ(status_class(599), "5xx");
  EXPECT_EQ(status_class(99), "other");
  EXPECT_EQ(status_class(600), "other");
  EXPECT_EQ(status_class(-200), "other");
}

}  // namespace
}  // namespace bw::telemetry
