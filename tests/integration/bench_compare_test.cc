// `bellwether bench compare` end to end, short: the spike profile compressed 40x (6 s per run; two
// deployments, direct with 3 and 1 client attempts, the gateway, and its unloaded reference run),
// with the templates of bench/compare/ (the ones the real run in bench/results/ used). It starts
// its own simulators and gateway, so this checks the orchestration and the reports, not the
// figures: no timing assertions (they belong to bench/results, not to a test on shared cores).
#include <gtest/gtest.h>

#if !__has_include("bench_tool.h")
// Built without the bench tool (BW_BUILD_CLIENT=OFF): nothing to test.
TEST(BenchCompare, NotBuilt) {
  GTEST_SKIP() << "bw_benchtool is not part of this build";
}
#else

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_tool.h"
#include "harness.h"

namespace bw::test {
namespace {

namespace fs = std::filesystem;

constexpr double kCompress = 40;
constexpr const char* kKey = "sk-bench-compare-000001";  // the key in bench/compare/gateway.yaml

// The repository root: the environment's BW_SOURCE_DIR if set, else the one this was built from
// (not __FILE__, which ccache may have rewritten to a relative path).
std::string source_dir() {
  if (const char* d = std::getenv("BW_SOURCE_DIR"); d && *d) return d;
  return BW_SOURCE_DIR;
}

// Structural JSON check without a parser: brackets balance outside strings, strings close, and
// the document is one object. Catches truncation and broken escaping.
bool json_well_formed(const std::string& s) {
  std::vector<char> stack;
  bool in_string = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        return false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      stack.push_back(c);
    } else if (c == '}' || c == ']') {
      if (stack.empty() || stack.back() != (c == '}' ? '{' : '[')) return false;
      stack.pop_back();
      if (stack.empty() && s.find_first_not_of(" \n\r\t", i + 1) != std::string::npos) return false;
    }
  }
  return !in_string && stack.empty() && !s.empty() && s[s.find_first_not_of(" \n\r\t")] == '{';
}

TEST(BenchCompare, ShortCompressedSpikeWritesWellFormedReports) {
  const std::string src = source_dir();
  const std::string sim_cfg = src + "/bench/compare/sim.yaml";
  const std::string gw_cfg = src + "/bench/compare/gateway.yaml";
  ASSERT_TRUE(fs::exists(sim_cfg)) << sim_cfg;
  ASSERT_TRUE(fs::exists(gw_cfg)) << gw_cfg;
  const std::string out = temp_dir() + "/out";

  // The planned request count, from the same schedule code the tool uses.
  const auto planned = static_cast<std::int64_t>(
      bench::intended_send_times(bench::compress(bench::spike_profile(), kCompress)).size());
  ASSERT_GT(planned, 100);

  Process p({binary(),
             "bench",
             "compare",
             "--sim-config",
             sim_cfg,
             "--gateway-config",
             gw_cfg,
             "--api-key",
             kKey,
             "--profile",
             "spike",
             "--compress",
             "40",
             "--models",
             "gpt-4o-mini",
             "--priority-mix",
             "10/60/30",
             "--prompt-bytes",
             "256,2048",
             "--max-tokens",
             "32",
             "--price",
             "gpt-4o-mini=0.15:0.60",
             "--budget-usd",
             "5",
             "--drain",
             "4",
             "--timeout",
             "15",
             "--deployments",
             "2",
             "--direct-attempts",
             "3,1",
             "--baseline-rate",
             "600",
             "--baseline-duration",
             "2",
             "--out-dir",
             out},
            {}, "bench-");
  const int rc = p.wait(std::chrono::seconds(100));
  if (rc == -1) p.signal(SIGKILL);
  ASSERT_EQ(rc, 0) << "stdout:\n" << p.stdout_text() << "\nstderr:\n" << p.stderr_text();

  // The side-by-side table on stdout.
  const std::string table = p.stdout_text();
  EXPECT_NE(table.find("metric"), std::string::npos) << table;
  EXPECT_NE(table.find("direct 3x"), std::string::npos) << table;
  EXPECT_NE(table.find("direct 1x"), std::string::npos) << table;
  EXPECT_NE(table.find("gateway unloaded"), std::string::npos) << table;
  EXPECT_NE(table.find("refused P1 (429 / 503)"), std::string::npos) << table;
  EXPECT_NE(table.find("provider: 429 sent"), std::string::npos) << table;
  EXPECT_NE(table.find("P0 p99 / unloaded P0 p99"), std::string::npos) << table;
  EXPECT_NE(table.find("gateway"), std::string::npos) << table;
  EXPECT_NE(table.find("P99 latency (ms)"), std::string::npos) << table;
  EXPECT_NE(table.find("success rate P0"), std::string::npos) << table;
  EXPECT_NE(table.find("latency P0 p50/p95/p99 (ms)"), std::string::npos) << table;
  EXPECT_NE(table.find("latency P2 p50/p95/p99 (ms)"), std::string::npos) << table;

  // The rendered configs and the child logs.
  for (const char* f :
       {"sim-direct-3x-1.yaml", "sim-direct-3x-2.yaml", "sim-direct-1x-1.log", "sim-gateway-1.yaml",
        "sim-gateway-2.log", "gateway.yaml", "gateway.log", "gateway-unloaded.yaml"}) {
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  }
  const std::string rendered = read_file(out + "/gateway.yaml");
  EXPECT_EQ(rendered.find("{{"), std::string::npos) << "placeholder left:\n" << rendered;
  EXPECT_NE(rendered.find("base_url: \"http://127.0.0.1:"), std::string::npos) << rendered;
  // Two deployments, one per simulator.
  EXPECT_NE(rendered.find("provider: sim1"), std::string::npos) << rendered;
  EXPECT_NE(rendered.find("provider: sim2"), std::string::npos) << rendered;

  // JSON: well formed, and consistent with the plan.
  const std::string json_path = out + "/compare.json";
  ASSERT_TRUE(fs::exists(json_path));
  const std::string json = read_file(json_path);
  EXPECT_TRUE(json_well_formed(json)) << json.substr(0, 400);
  EXPECT_NE(json.find("\"name\":\"direct 3x\""), std::string::npos);
  EXPECT_NE(json.find("\"name\":\"gateway\""), std::string::npos);
  if (std::system("python3 -c pass > /dev/null 2>&1") == 0) {
    // A real parser, and the invariants of the report: every planned request is accounted for
    // exactly once, per run and per priority; the gateway run has queue depth samples.
    const std::string script = temp_dir() + "/check.py";
    write_file(script, R"(import json, sys
d = json.load(open(sys.argv[1]))
planned = int(sys.argv[2])
runs = {r["name"]: r for r in d["runs"]}
assert sorted(runs) == ["direct 1x", "direct 3x", "gateway", "gateway unloaded"], sorted(runs)
assert runs["gateway unloaded"]["baseline"] and not runs["gateway"]["baseline"]
assert runs["direct 3x"]["client_attempts"] == 3 and runs["direct 1x"]["client_attempts"] == 1
for name, r in runs.items():
    s = r["summary"]
    # The simulators' own counters were read before they stopped.
    assert s["provider_requests"] is not None and s["provider_429"] is not None, (name, s)
    for p in s["by_priority"]:
        assert p["refused"] == p["rate_limited"] + p["unavailable"], (name, p)
        assert p["ok"] + p["refused"] + p["server_errors"] + p["other_errors"] == p["sent"], (name, p)
    if name == "gateway unloaded":
        continue
    s = r["summary"]
    assert s["sent"] == planned, (name, s["sent"], planned)
    assert s["ok"] + s["rate_limited"] + s["errors"] == s["sent"], (name, s)
    assert s["ok"] > 0, (name, s)
    assert len(s["by_priority"]) == 3
    assert sum(p["sent"] for p in s["by_priority"]) == s["sent"], (name, s["by_priority"])
    assert sum(p["ok"] for p in s["by_priority"]) == s["ok"], (name, s["by_priority"])
    for p in s["by_priority"]:
        assert p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= s["max_ms"], (name, p)
        assert (p["p50_ms"] > 0) == (p["ok"] > 0), (name, p)
    assert sum(x["sent"] for x in r["series"]) == s["sent"], name
    assert s["budget_usd"] == 5, s["budget_usd"]
    assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"], (name, s)
assert any(x["queue_depth"] is not None for x in runs["gateway"]["series"]), "no queue depth polled"
assert all(x["queue_depth"] is None for x in runs["direct 1x"]["series"])
# The direct side reached the provider at least once per request.
assert runs["direct 1x"]["summary"]["provider_requests"] >= planned - runs["direct 1x"]["summary"]["dropped"]
)");
    const std::string cmd = "python3 " + script + " " + json_path + " " + std::to_string(planned) +
                            " > " + out + "/check.log 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << read_file(out + "/check.log");
  }

  // HTML: self-contained, with the charts, and complete.
  const std::string html_path = out + "/compare.html";
  ASSERT_TRUE(fs::exists(html_path));
  const std::string html = read_file(html_path);
  EXPECT_TRUE(html.starts_with("<!DOCTYPE html>")) << html.substr(0, 80);
  EXPECT_GE(count(html, "<svg"), 4u);
  EXPECT_EQ(count(html, "<svg"), count(html, "</svg>"));
  EXPECT_NE(html.find("Gateway queue depth"), std::string::npos);
  EXPECT_NE(html.find("p99 latency by priority over time: gateway"), std::string::npos);
  EXPECT_NE(html.find("Refusals (429 + 503) by priority over time: direct 3x"), std::string::npos);
  const auto end = html.rfind("</html>");
  ASSERT_NE(end, std::string::npos);
  EXPECT_EQ(html.find_first_not_of(" \n", end + 7), std::string::npos) << "text after </html>";
}

}  // namespace
}  // namespace bw::test

#endif  // __has_include("bench_tool.h")
