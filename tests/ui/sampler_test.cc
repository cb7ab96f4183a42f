#include "ui/sampler.h"

#include <gtest/gtest.h>

#include <cmath>

#include "ui/assets.h"

namespace bw::ui {
namespace {

std::string requests_text(int p0, int p1, int s5xx, int tokens, double lat_fast, double lat_slow) {
  std::string t = "# HELP bellwether_requests_total x\n# TYPE bellwether_requests_total counter\n";
  t += "bellwether_requests_total{endpoint=\"/v1/chat/completions\",model=\"m\",priority=\"p0\","
       "status_class=\"2xx\"} " +
       std::to_string(p0) + "\n";
  t += "bellwether_requests_total{endpoint=\"/v1/chat/completions\",model=\"m\",priority=\"p1\","
       "status_class=\"5xx\"} " +
       std::to_string(s5xx) + "\n";
  t += "bellwether_requests_total{endpoint=\"/v1/chat/completions\",model=\"m\",priority=\"p1\","
       "status_class=\"2xx\"} " +
       std::to_string(p1 - s5xx) + "\n";
  // Requests to other endpoints (the console's own polling included) are not traffic.
  t += "bellwether_requests_total{endpoint=\"other\",model=\"\",priority=\"\",status_class=\"2xx\"}"
       " 999\n";
  t += "bellwether_tokens_total{model=\"m\",type=\"prompt\"} " + std::to_string(tokens) + "\n";
  t += "bellwether_request_priority_duration_seconds_bucket{priority=\"p0\",le=\"0.1\"} " +
       std::to_string(lat_fast) + "\n";
  t += "bellwether_request_priority_duration_seconds_bucket{priority=\"p0\",le=\"1\"} " +
       std::to_string(lat_fast + lat_slow) + "\n";
  t += "bellwether_request_priority_duration_seconds_bucket{priority=\"p0\",le=\"+Inf\"} " +
       std::to_string(lat_fast + lat_slow) + "\n";
  t += "bellwether_cache_hits_total 7\n";
  return t;
}

TEST(Exposition, ParsesLabelsEscapesAndInf) {
  auto s = parse_exposition(
      "# HELP x y\nfoo{a=\"1\",b=\"q\\\"x\"} 2.5\nbar 3\nbaz_bucket{le=\"+Inf\"} +Inf\n");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].name, "foo");
  EXPECT_EQ(s[0].labels.at("b"), "q\"x");
  EXPECT_DOUBLE_EQ(s[0].value, 2.5);
  EXPECT_EQ(s[1].name, "bar");
  EXPECT_TRUE(s[1].labels.empty());
  EXPECT_TRUE(std::isinf(s[2].value));
}

TEST(Quantile, InterpolatesLikePrometheus) {
  std::vector<std::pair<double, double>> h = {{0.1, 50}, {1, 100}, {INFINITY, 100}};
  EXPECT_NEAR(histogram_quantile(0.5, h), 0.1, 1e-9);
  EXPECT_NEAR(histogram_quantile(0.75, h), 0.55, 1e-9);
  EXPECT_NEAR(histogram_quantile(0.25, h), 0.05, 1e-9);
  EXPECT_EQ(histogram_quantile(0.5, {{0.1, 0}, {INFINITY, 0}}), -1);
  EXPECT_NEAR(histogram_quantile(0.99, {{0.1, 0}, {1, 0}, {INFINITY, 10}}), 1, 1e-9);
}

TEST(Sampler, RatesQuantilesAndRing) {
  SamplerOptions o;
  o.interval = seconds(1);
  o.window = seconds(5);
  o.quantile_window = seconds(2);
  Sampler s(o);
  Reading r;
  r.unix_ms = 1'000'000;
  r.metrics_text = requests_text(0, 0, 0, 0, 0, 0);
  r.queue_depth = {1, 2, 3};
  r.in_flight = 4;
  r.groups.push_back({"m", 10, 4, {1, 2, 3}});
  DeploymentReading d;
  d.id = "m-a";
  d.state = "closed";
  d.rpm_limit = 100;
  d.rpm_used = 30;
  r.deployments.push_back(d);
  s.add(r);
  r.unix_ms += 1000;
  r.metrics_text = requests_text(10, 20, 5, 300, 9, 1);
  r.deployments[0].state = "open";
  s.add(r);
  const std::string j = s.json(0);
  EXPECT_NE(j.find("\"rps\":[10,20,0]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"st\":{\"2xx\":25,\"4xx\":0,\"5xx\":5}"), std::string::npos) << j;
  EXPECT_NE(j.find("\"q\":[1,2,3]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"inf\":4,\"lim\":10"), std::string::npos) << j;
  EXPECT_NE(j.find("\"tok\":300"), std::string::npos) << j;
  EXPECT_NE(j.find("\"cap\":{\"m-a\":70}"), std::string::npos) << j;
  EXPECT_NE(j.find("\"bellwether_cache_hits_total\":7"), std::string::npos) << j;
  // 9 of 10 under 0.1 s: p50 inside the first bucket, p99 in the second.
  EXPECT_NE(j.find("\"l50\":[0.0556,null,null]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"from\":\"closed\",\"to\":\"open\""), std::string::npos) << j;
  // Only newer samples after `since`; the ring keeps window / interval samples.
  const std::string later = s.json(1'000'000);
  EXPECT_EQ(later.find("\"t\":1000000,"), std::string::npos);
  for (int i = 0; i < 10; ++i) {
    r.unix_ms += 1000;
    s.add(r);
  }
  EXPECT_EQ(s.size(), 5u);
}

TEST(Assets, ConsoleFilesAreEmbedded) {
  for (const char* p : {"static/index.html", "static/login.html", "static/console.js",
                        "static/console.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.LICENSE"}) {
    const Asset* a = find_asset(p);
    ASSERT_NE(a, nullptr) << p;
    EXPECT_GT(a->body.size(), 100u) << p;
  }
  EXPECT_EQ(find_asset("static/nope.js"), nullptr);
  EXPECT_EQ(find_asset("static/index.html")->content_type, "text/html; charset=utf-8");
  // No page may pull anything from another host at run time (the Live page's curl example
  // names the gateway itself, as text).
  for (const auto& a : assets()) {
    if (a.path.starts_with("vendor/")) continue;
    for (const char* load : {"src=\"http", "href=\"http", "url(http", "fetch(\"http", "src=\"//",
                             "href=\"//", "https://"}) {
      EXPECT_EQ(a.body.find(load), std::string_view::npos) << a.path << " " << load;
    }
  }
}

}  // namespace
}  // namespace bw::ui
