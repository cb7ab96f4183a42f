// bench tool: schedule math (pure), report writers, and one short open-loop run against a fake
// server.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <vector>

#include <boost/json.hpp>

#include "bench_tool.h"
#include "fake_server.h"

namespace bw::bench {
namespace {

TEST(BenchSchedule, ConstantRateIsEvenlySpaced) {
  const auto t = intended_send_times(constant_profile(60, 10));
  ASSERT_EQ(t.size(), 10u);
  for (std::size_t k = 0; k < t.size(); ++k) EXPECT_NEAR(t[k], static_cast<double>(k), 1e-9);
}

TEST(BenchSchedule, LinearRampInvertsTheQuadraticIntegral) {
  // 0 -> 120/min over 10 s: N(t) = 0.1 t^2, so request k leaves at sqrt(10 k).
  const auto t = intended_send_times(ramp_profile(0, 120, 10));
  ASSERT_EQ(t.size(), 10u);
  for (std::size_t k = 0; k < t.size(); ++k) EXPECT_NEAR(t[k], std::sqrt(10.0 * k), 1e-9);
}

TEST(BenchSchedule, DefaultSpikeProfile) {
  const Profile p = spike_profile();
  EXPECT_DOUBLE_EQ(p.duration_s(), 240);
  EXPECT_DOUBLE_EQ(p.rate_per_min_at(0), 500);
  EXPECT_DOUBLE_EQ(p.rate_per_min_at(75), 7750);  // halfway up the 90 s ramp
  EXPECT_DOUBLE_EQ(p.rate_per_min_at(120), 15000);
  EXPECT_DOUBLE_EQ(p.rate_per_min_at(150), 15000);
  EXPECT_DOUBLE_EQ(p.rate_per_min_at(200), 500);
  const auto t = intended_send_times(p);
  // Area: 250 + 11625 + 15000 + 1291.67 + 416.67 = 28583.3 requests.
  EXPECT_EQ(t.size(), 28584u);
  EXPECT_TRUE(std::is_sorted(t.begin(), t.end()));
  EXPECT_DOUBLE_EQ(t[1] - t[0], 0.12);  // 500/min
  std::size_t in_hold = 0;
  for (double x : t) in_hold += (x >= 130 && x < 131);
  EXPECT_EQ(in_hold, 250u);  // 15,000/min = 250/s
  // Compressing by 10 keeps the rates and divides times: a tenth of the requests.
  const auto c = intended_send_times(compress(p, 10));
  EXPECT_NEAR(static_cast<double>(c.size()), 2858.3, 1.0);
  EXPECT_DOUBLE_EQ(compress(p, 10).duration_s(), 24);
  EXPECT_DOUBLE_EQ(scale_rates(p, 2).rate_per_min_at(150), 30000);
}

TEST(BenchSchedule, ParsePointsAndMixes) {
  std::string err;
  auto p = parse_points("0:500,90:15000", &err);
  ASSERT_TRUE(p.has_value()) << err;
  EXPECT_DOUBLE_EQ(p->rate_per_min_at(45), 7750);
  EXPECT_FALSE(parse_points("5:10,6:10", &err).has_value());  // must start at 0
  EXPECT_FALSE(parse_points("0:10,x:5", &err).has_value());
  EXPECT_FALSE(parse_points("0:10,5:1,3:1", &err).has_value());
  auto m = parse_mix("a:0.7,b:0.3", &err);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ((*m)[1].name, "b");
  EXPECT_DOUBLE_EQ((*m)[1].weight, 0.3);
  EXPECT_FALSE(parse_mix("a:-1", &err).has_value());
  auto pm = parse_priority_mix("10/60/30", &err);
  ASSERT_TRUE(pm.has_value());
  EXPECT_EQ(*pm, (std::vector<double>{10, 60, 30}));
  EXPECT_FALSE(parse_priority_mix("10/90", &err).has_value());
}

TEST(BenchSchedule, PlanIsDeterministicAndFollowsMix) {
  std::vector<double> times(10000, 0.0);
  PlanOptions o;
  o.models = {{"a", 3}, {"b", 1}};
  o.priority_weights = {10, 60, 30};
  o.prompt_bytes = {100, 1000};
  const auto p1 = build_plan(times, o);
  const auto p2 = build_plan(times, o);
  ASSERT_EQ(p1.size(), 10000u);
  int a = 0, prio[3] = {0, 0, 0};
  for (std::size_t i = 0; i < p1.size(); ++i) {
    EXPECT_EQ(p1[i].model, p2[i].model);
    EXPECT_EQ(p1[i].priority, p2[i].priority);
    a += p1[i].model == "a";
    ++prio[p1[i].priority];
  }
  EXPECT_NEAR(a / 10000.0, 0.75, 0.03);
  EXPECT_NEAR(prio[0] / 10000.0, 0.10, 0.02);
  EXPECT_NEAR(prio[1] / 10000.0, 0.60, 0.02);
  EXPECT_NEAR(prio[2] / 10000.0, 0.30, 0.02);
}

TEST(BenchReport, Percentile) {
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0);
  EXPECT_DOUBLE_EQ(percentile({5, 1, 4, 2, 3}, 50), 3);
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_DOUBLE_EQ(percentile(v, 95), 95);
  EXPECT_DOUBLE_EQ(percentile(v, 99), 99);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 100);
}

RunSummary sample_run(const std::string& name, bool with_queue) {
  RunSummary r;
  r.name = name;
  r.sent = 100;
  r.ok = 90;
  r.rate_limited = 8;
  r.errors = 2;
  r.p50_ms = 12.5;
  r.p95_ms = 40;
  r.p99_ms = 80;
  r.by_priority = {{10, 10}, {60, 55}, {30, 25}};
  r.spend_usd = 0.5;
  r.budget_usd = 2.0;
  r.tokens_per_s = 33;
  for (int t = 0; t < 5; ++t) {
    SecondStats s;
    s.sent = 20;
    s.ok = t == 2 ? 0 : 18;  // a second without successes leaves a gap in the latency chart
    s.rate_limited = 2;
    s.p50_ms = 10 + t;
    s.p95_ms = 30 + t;
    s.p99_ms = 60 + t;
    if (with_queue) s.queue_depth = t * 3;
    r.series.push_back(s);
  }
  return r;
}

TEST(BenchReport, JsonRoundTrips) {
  const auto text =
      to_json({sample_run("direct", false), sample_run("gateway", true)}, "0:60,10:60");
  boost::system::error_code ec;
  const auto v = boost::json::parse(text, ec);
  ASSERT_FALSE(ec) << text;
  const auto& runs = v.at("runs").as_array();
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[1].at("name").as_string(), "gateway");
  const auto& s = runs[0].at("summary");
  EXPECT_EQ(s.at("sent").as_int64(), 100);
  EXPECT_DOUBLE_EQ(s.at("success_rate").as_double(), 0.9);
  EXPECT_DOUBLE_EQ(s.at("rate_limited_rate").as_double(), 0.08);
  EXPECT_DOUBLE_EQ(s.at("budget_usd").as_double(), 2.0);
  EXPECT_DOUBLE_EQ(s.at("by_priority").as_array()[1].at("success_rate").as_double(), 55.0 / 60);
  EXPECT_EQ(runs[0].at("series").as_array().size(), 5u);
  EXPECT_TRUE(runs[0].at("series").as_array()[3].at("queue_depth").is_null());
  EXPECT_DOUBLE_EQ(runs[1].at("series").as_array()[3].at("queue_depth").as_double(), 9.0);
  EXPECT_EQ(v.at("profile").as_string(), "0:60,10:60");
}

std::size_t count(const std::string& s, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

TEST(BenchReport, HtmlIsSelfContainedAndBalanced) {
  const auto html = to_html({sample_run("direct", false), sample_run("gate<way>", true)}, "0:60");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("</html>"), std::string::npos);
  // Per run: latency percentiles, p99 by priority, refusals by priority; then request rate,
  // 429s and queue depth.
  EXPECT_EQ(count(html, "<svg "), 9u);
  EXPECT_EQ(count(html, "</svg>"), 9u);
  EXPECT_EQ(count(html, "p99 latency by priority over time"), 2u);
  EXPECT_EQ(count(html, "Refusals (429 + 503) by priority over time"), 2u);
  for (const char* legend : {">P0 p99<", ">P1 p99<", ">P2 p99<"})
    EXPECT_EQ(count(html, legend), 2u) << legend;
  EXPECT_EQ(count(html, "<table>"), count(html, "</table>"));
  EXPECT_EQ(count(html, "<tr>"), count(html, "</tr>"));
  EXPECT_EQ(html.find("gate<way>"), std::string::npos);  // escaped
  EXPECT_NE(html.find("gate&lt;way&gt;"), std::string::npos);
  EXPECT_EQ(html.find("nan"), std::string::npos);
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org"));  // no external resources
  EXPECT_NE(html.find("Gateway queue depth"), std::string::npos);
  const auto table = comparison_table({sample_run("direct", false), sample_run("gateway", true)});
  EXPECT_NE(table.find("429 rate"), std::string::npos);
  EXPECT_NE(table.find("8.00%"), std::string::npos);
  EXPECT_NE(table.find("91.67% of 60"), std::string::npos);
}

TEST(BenchReport, RoundRobinSpreadsEvenlyAndAlternates) {
  EXPECT_EQ(round_robin_target(5, 0), 0u);
  EXPECT_EQ(round_robin_target(7, 1), 0u);
  std::vector<int> hits(3);
  for (std::size_t i = 0; i < 301; ++i) {
    const auto t = round_robin_target(i, 3);
    ASSERT_LT(t, 3u);
    if (i > 0) {
      EXPECT_NE(t, round_robin_target(i - 1, 3));  // consecutive requests alternate
    }
    ++hits[t];
  }
  EXPECT_EQ(hits, (std::vector<int>{101, 100, 100}));
}

TEST(BenchReport, RenderTemplateRepeatsPerSimLines) {
  const std::string text =
      "listen: 127.0.0.1:{{GATEWAY_PORT}}\nproviders:\n  sim{{I}}: {base_url: "
      "\"{{SIM_URL_I}}/v1\"}\n"
      "first: {{SIM_URL}} second: {{SIM_URL_2}}\n    - {id: d{{I}}, port: {{SIM_PORT_I}}}";
  const auto out =
      render_template(text,
                      {{"{{GATEWAY_PORT}}", "9000"},
                       {"{{SIM_URL}}", "http://a"},
                       {"{{SIM_URL_1}}", "http://a"},
                       {"{{SIM_URL_2}}", "http://b"}},
                      {{{"{{I}}", "1"}, {"{{SIM_URL_I}}", "http://a"}, {"{{SIM_PORT_I}}", "1"}},
                       {{"{{I}}", "2"}, {"{{SIM_URL_I}}", "http://b"}, {"{{SIM_PORT_I}}", "2"}}});
  EXPECT_EQ(out,
            "listen: 127.0.0.1:9000\nproviders:\n  sim1: {base_url: \"http://a/v1\"}\n"
            "  sim2: {base_url: \"http://b/v1\"}\nfirst: http://a second: http://b\n"
            "    - {id: d1, port: 1}\n    - {id: d2, port: 2}");
  // No simulators listed: lines are kept once, plain placeholders still filled.
  EXPECT_EQ(render_template("a {{X}}\n", {{"{{X}}", "1"}}, {}), "a 1\n");
}

TEST(BenchReport, TallyAggregatesPerPriority) {
  EXPECT_EQ(classify_outcome(true, 200, false), Outcome::kOk);
  EXPECT_EQ(classify_outcome(false, 429, false), Outcome::kRateLimited);
  EXPECT_EQ(classify_outcome(false, 0, true), Outcome::kRateLimited);
  EXPECT_EQ(classify_outcome(false, 503, false), Outcome::kUnavailable);
  EXPECT_EQ(classify_outcome(false, 502, false), Outcome::kServerError);
  EXPECT_EQ(classify_outcome(false, 0, false), Outcome::kOtherError);

  RunTally t("gw");
  // Second 0: P0 fast, P2 refused. Second 1: P0 slower, P1 503, P2 500, one drop.
  for (int i = 1; i <= 100; ++i) {
    t.sent(0.5, 0);
    t.completed(0.5, 0, Outcome::kOk, i, {}, 10, 2);
  }
  for (int i = 0; i < 4; ++i) {
    t.sent(0.2, 2);
    t.completed(0.2, 2, Outcome::kRateLimited, 1);
  }
  t.sent(0.9, 2);
  t.completed(0.9, 2, Outcome::kOk, 5000);
  t.sent(1.1, 0);
  t.completed(1.1, 0, Outcome::kOk, 300);
  t.sent(1.2, 1);
  t.completed(1.2, 1, Outcome::kUnavailable, 3, "server_error 503 overloaded");
  t.sent(1.3, 2);
  t.completed(1.3, 2, Outcome::kServerError, 3, "server_error 500");
  t.sent(1.4, 1);
  t.dropped(1.4, 1);
  t.queue_depth(1.5, 7);
  const auto r = t.finish(2);
  EXPECT_EQ(r.sent, 109);
  EXPECT_EQ(r.ok, 102);
  EXPECT_EQ(r.rate_limited, 4);
  EXPECT_EQ(r.errors, 3);
  EXPECT_EQ(r.dropped, 1);
  EXPECT_EQ(r.errors_by_reason.at("server_error 503 overloaded"), 1);
  EXPECT_EQ(r.prompt_tokens, 1000);
  EXPECT_DOUBLE_EQ(r.tokens_per_s, 100);
  const auto& p0 = r.by_priority[0];
  EXPECT_EQ(p0.sent, 101);
  EXPECT_EQ(p0.ok, 101);
  EXPECT_EQ(p0.refused(), 0);
  EXPECT_DOUBLE_EQ(p0.p50_ms, 51);
  EXPECT_DOUBLE_EQ(p0.p99_ms, 100);
  const auto& p1 = r.by_priority[1];
  EXPECT_EQ(p1.sent, 2);
  EXPECT_EQ(p1.unavailable, 1);
  EXPECT_EQ(p1.other_errors, 1);  // the drop
  EXPECT_EQ(p1.refused(), 1);
  const auto& p2 = r.by_priority[2];
  EXPECT_EQ(p2.sent, 6);
  EXPECT_EQ(p2.rate_limited, 4);
  EXPECT_EQ(p2.server_errors, 1);
  EXPECT_DOUBLE_EQ(p2.p99_ms, 5000);
  ASSERT_EQ(r.series.size(), 2u);
  EXPECT_EQ(r.series[0].ok_by_priority, (std::array<std::int64_t, 3>{100, 0, 1}));
  EXPECT_EQ(r.series[0].refused_by_priority, (std::array<std::int64_t, 3>{0, 0, 4}));
  EXPECT_DOUBLE_EQ(r.series[0].p99_by_priority[0], 99);
  EXPECT_DOUBLE_EQ(r.series[0].p99_by_priority[2], 5000);
  EXPECT_EQ(r.series[1].refused_by_priority, (std::array<std::int64_t, 3>{0, 1, 0}));
  EXPECT_DOUBLE_EQ(r.series[1].p99_by_priority[0], 300);
  EXPECT_EQ(r.series[1].errors, 3);  // 503, 500 and the drop
  EXPECT_EQ(r.series[1].dropped, 1);
  EXPECT_DOUBLE_EQ(*r.series[1].queue_depth, 7);

  // The table and JSON carry the per-priority refusals and the ratio to the unloaded baseline.
  RunSummary base = RunTally("unloaded").finish(1);
  base.baseline = true;
  base.by_priority[0].ok = 10;
  base.by_priority[0].p99_ms = 50;
  EXPECT_DOUBLE_EQ(*p0_p99_ratio(r, {r, base}), 2.0);
  EXPECT_FALSE(p0_p99_ratio(r, {r}).has_value());
  const auto table = comparison_table({r, base});
  EXPECT_NE(table.find("P0 p99 / unloaded P0 p99"), std::string::npos) << table;
  EXPECT_NE(table.find("2.00x"), std::string::npos) << table;
  EXPECT_NE(table.find("4 (66.7%): 4 / 0"), std::string::npos) << table;  // P2 refusals
  EXPECT_NE(table.find("1 (50.0%): 0 / 1"), std::string::npos) << table;  // P1
  const auto v = boost::json::parse(to_json({r, base}, "x"));
  const auto& s = v.at("runs").as_array()[0].at("summary");
  EXPECT_EQ(s.at("by_priority").as_array()[2].at("refused").as_int64(), 4);
  EXPECT_EQ(s.at("by_priority").as_array()[2].at("server_errors").as_int64(), 1);
  EXPECT_DOUBLE_EQ(s.at("p0_p99_over_unloaded").as_double(), 2.0);
  EXPECT_EQ(v.at("runs")
                .as_array()[0]
                .at("series")
                .as_array()[0]
                .at("refused_by_priority")
                .as_array()[2]
                .as_int64(),
            4);
}

TEST(BenchRun, OpenLoopCountsOutcomesPerSecond) {
  std::atomic<int> n{0};
  bwtest::FakeServer server([&](const bwtest::Arrival& a, bwtest::Conn& c) {
    if (n++ % 4 == 3) {
      c.write(bwtest::response(429, R"({"error":{"message":"busy"}})", {{"Retry-After", "1"}}));
    } else {
      c.write(bwtest::response(200, bwtest::chat_body(bwtest::model_of(a.body), "ok", 7, 3)));
    }
  });
  LoadOptions o;
  o.base_url = server.url();
  o.drain_s = 5;
  o.prices = {{"m", {1e6, 1e6}}};  // $1 per token
  PlanOptions po;
  po.models = {{"m", 1}};
  const auto plan = build_plan(intended_send_times(constant_profile(1200, 1)), po);  // 20 in 1 s
  ASSERT_EQ(plan.size(), 20u);
  const auto r = run_load("fake", o, plan);
  EXPECT_EQ(r.sent, 20);
  EXPECT_EQ(r.ok, 15);
  EXPECT_EQ(r.rate_limited, 5);  // not retried: the tool measures the system
  EXPECT_EQ(r.errors, 0);
  EXPECT_EQ(r.completion_tokens, 45);
  EXPECT_DOUBLE_EQ(r.spend_usd, 150.0);
  ASSERT_EQ(r.series.size(), 1u);
  EXPECT_EQ(r.series[0].sent, 20);
  EXPECT_GT(r.p50_ms, 0);
  EXPECT_LE(r.p50_ms, r.p99_ms);
  EXPECT_EQ(server.arrivals().size(), 20u);
  const auto first = server.arrivals().front().at;
  const auto last = server.arrivals().back().at;
  EXPECT_GE(std::chrono::duration<double>(last - first).count(), 0.9);  // paced, not a burst
}

TEST(BenchRun, InFlightBoundDropsInsteadOfDelaying) {
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  bwtest::FakeServer server([&](const bwtest::Arrival& a, bwtest::Conn& c) {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(5), [&] { return release; });
    c.write(bwtest::response(200, bwtest::chat_body(bwtest::model_of(a.body), "ok")));
  });
  LoadOptions o;
  o.base_url = server.url();
  o.max_in_flight = 3;
  o.drain_s = 5;
  PlanOptions po;
  po.models = {{"m", 1}};
  const auto plan = build_plan(intended_send_times(constant_profile(600, 1)), po);  // 10 in 1 s
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1300));
    std::lock_guard lock(mu);
    release = true;
    cv.notify_all();
  });
  const auto r = run_load("bounded", o, plan);
  releaser.join();
  EXPECT_EQ(r.sent, 10);
  EXPECT_EQ(r.ok, 3);
  EXPECT_EQ(r.dropped, 7);
  EXPECT_EQ(r.errors, 7);
  // Latency counts from the intended send time, so the held requests show the full stall.
  EXPECT_GE(r.p50_ms, 1000);
}

// A loopback socket; with `reuse`, set up as the gateway's and the simulator's listeners are.
int loopback_socket(bool reuse) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (reuse) {
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  }
  return fd;
}

int bind_loopback(int fd, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 ? 0 : errno;
}

TEST(BenchPortHold, KeepsThePortFromOthersAndLetsTheServerListen) {
  PortHold hold;
  ASSERT_GT(hold.port(), 0);
  // Anyone else binding it is refused while it is held.
  const int other = loopback_socket(false);
  EXPECT_EQ(bind_loopback(other, hold.port()), EADDRINUSE);
  ::close(other);
  // Nor is it handed out as a free port.
  std::vector<int> fds;
  for (int i = 0; i < 64; ++i) {
    fds.push_back(loopback_socket(true));
    ASSERT_EQ(bind_loopback(fds.back(), 0), 0);
    sockaddr_in a{};
    socklen_t len = sizeof a;
    ASSERT_EQ(::getsockname(fds.back(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    EXPECT_NE(ntohs(a.sin_port), hold.port());
  }
  for (int fd : fds) ::close(fd);
  // The server binds and listens on it meanwhile, and connections reach that listener.
  const int server = loopback_socket(true);
  ASSERT_EQ(bind_loopback(server, hold.port()), 0);
  ASSERT_EQ(::listen(server, 4), 0);
  const int client = loopback_socket(false);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons(static_cast<std::uint16_t>(hold.port()));
  ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
  const int accepted = ::accept(server, nullptr, nullptr);
  EXPECT_GE(accepted, 0);
  hold.release();
  ::close(client);
  if (accepted >= 0) ::close(accepted);
  ::close(server);
}

TEST(BenchPortHold, ReleaseFreesThePort) {
  PortHold hold;
  ASSERT_GT(hold.port(), 0);
  const int port = hold.port();
  hold.release();
  hold.release();  // a second release does nothing
  EXPECT_EQ(hold.port(), port);
  const int fd = loopback_socket(false);
  EXPECT_EQ(bind_loopback(fd, port), 0);
  ::close(fd);
}

TEST(BenchCompare, OrchestratesSimAndGatewayFromTemplates) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("bw_bench_compare_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    std::ofstream(dir / "sim.yaml") << "port: {{SIM_PORT}}\n";
    std::ofstream(dir / "gateway.yaml")
        << "listen: 127.0.0.1:{{GATEWAY_PORT}}\nupstream: {{SIM_URL}}\nsim{{I}}: {{SIM_URL_I}}\n";
  }
  const std::string script = std::string(BW_TEST_SOURCE_DIR) + "/fake_bellwether.py";
  std::vector<std::string> args{"compare",
                                "--bellwether",
                                "/usr/bin/python3",
                                "--sim-config",
                                (dir / "sim.yaml").string(),
                                "--gateway-config",
                                (dir / "gateway.yaml").string(),
                                "--sim-args",
                                script + " sim --config {config} --listen 127.0.0.1:{port}",
                                "--gateway-args",
                                script + " serve --config {config}",
                                "--out-dir",
                                dir.string(),
                                "--profile",
                                "constant",
                                "--rate",
                                "600",
                                "--duration",
                                "2",
                                "--models",
                                "m",
                                "--drain",
                                "5",
                                "--price",
                                "m=1000000:1000000",
                                "--deployments",
                                "2",
                                "--client-attempts",
                                "1",
                                "--baseline-rate",
                                "600",
                                "--baseline-duration",
                                "1"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  ASSERT_EQ(run_bench_compare(static_cast<int>(argv.size()), argv.data()), 0);

  std::ifstream in(dir / "compare.json");
  std::stringstream text;
  text << in.rdbuf();
  const auto v = boost::json::parse(text.str());
  const auto& runs = v.at("runs").as_array();
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].at("name").as_string(), "direct 1x");
  EXPECT_EQ(runs[0].at("targets").as_int64(), 2);
  EXPECT_EQ(runs[0].at("summary").at("sent").as_int64(), 20);
  EXPECT_EQ(runs[0].at("summary").at("ok").as_int64(), 20);
  // Round robin over the two simulators; their own counters are read before they stop.
  EXPECT_EQ(runs[0].at("summary").at("provider_requests").as_int64(), 20);
  EXPECT_EQ(runs[0].at("summary").at("provider_429").as_int64(), 0);
  EXPECT_EQ(runs[1].at("name").as_string(), "gateway");
  EXPECT_FALSE(runs[1].at("baseline").as_bool());
  EXPECT_EQ(runs[2].at("name").as_string(), "gateway unloaded");
  EXPECT_TRUE(runs[2].at("baseline").as_bool());
  EXPECT_EQ(runs[2].at("summary").at("sent").as_int64(), 10);
  EXPECT_EQ(runs[2].at("summary").at("by_priority").as_array()[0].at("sent").as_int64(), 10);
  EXPECT_TRUE(runs[1].at("summary").at("p0_p99_over_unloaded").is_number() ||
              runs[1].at("summary").at("by_priority").as_array()[0].at("ok").as_int64() == 0);
  EXPECT_EQ(runs[1].at("summary").at("ok").as_int64(), 16);  // every 5th is a 429
  EXPECT_EQ(runs[1].at("summary").at("rate_limited").as_int64(), 4);
  EXPECT_DOUBLE_EQ(runs[1].at("summary").at("spend_usd").as_double(), 16 * 14.0);
  bool saw_queue = false;
  for (const auto& s : runs[1].at("series").as_array())
    saw_queue = saw_queue ||
                (!s.at("queue_depth").is_null() && s.at("queue_depth").to_number<double>() == 4);
  EXPECT_TRUE(saw_queue);
  std::ifstream gw(dir / "gateway.yaml");
  std::stringstream rendered;
  rendered << gw.rdbuf();
  EXPECT_EQ(rendered.str().find("{{"), std::string::npos);
  EXPECT_NE(rendered.str().find("upstream: http://127.0.0.1:"), std::string::npos);
  EXPECT_NE(rendered.str().find("sim1: http://127.0.0.1:"), std::string::npos) << rendered.str();
  EXPECT_NE(rendered.str().find("sim2: http://127.0.0.1:"), std::string::npos) << rendered.str();
  EXPECT_TRUE(fs::exists(dir / "compare.html"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace bw::bench
