#include "telemetry/autoscale_cli.h"

#include <gtest/gtest.h>

namespace bw::telemetry {
namespace {

TEST(AutoscaleCli, FlagsFillTheOptions) {
  CLI::App app;
  AutoscaleOptions o;
  AutoscaleFlagSeconds s;
  add_autoscale_flags(app, o, s);
  const char* argv[] = {"autoscale",
                        "--gateway",
                        "http://a:8080",
                        "--gateway",
                        "http://b:8080",
                        "--deployment",
                        "gw",
                        "--namespace",
                        "prod",
                        "--interval",
                        "2.5",
                        "--iterations",
                        "3",
                        "--max-replicas",
                        "9",
                        "--dry-run",
                        "--api-server",
                        "https://k:6443"};
  app.parse(static_cast<int>(std::size(argv)), argv);
  finish_autoscale_flags(o, s);
  EXPECT_EQ(o.gateway_urls, (std::vector<std::string>{"http://a:8080", "http://b:8080"}));
  EXPECT_EQ(o.deployment, "gw");
  EXPECT_EQ(o.namespace_name, "prod");
  EXPECT_EQ(o.interval, millis(2500));
  EXPECT_EQ(o.iterations, 3);
  EXPECT_EQ(o.max_replicas, 9);
  EXPECT_TRUE(o.dry_run);
  EXPECT_EQ(o.api_server, "https://k:6443");
  EXPECT_EQ(o.timeout, seconds(5));
  EXPECT_EQ(o.token_file, "/var/run/secrets/kubernetes.io/serviceaccount/token");
}

TEST(AutoscaleCli, UpstreamFlags) {
  CLI::App app;
  AutoscaleOptions o;
  AutoscaleFlagSeconds s;
  add_autoscale_flags(app, o, s);
  EXPECT_TRUE(o.scale_upstreams);
  const char* argv[] = {"autoscale",
                        "--gateway",
                        "http://a:8080",
                        "--gateway-key-file",
                        "/etc/key",
                        "--no-upstreams",
                        "--deployment",
                        "",
                        "--max-upstream-replicas",
                        "12"};
  app.parse(static_cast<int>(std::size(argv)), argv);
  finish_autoscale_flags(o, s);
  EXPECT_EQ(o.gateway_key_file, "/etc/key");
  EXPECT_FALSE(o.scale_upstreams);
  EXPECT_EQ(o.deployment, "");
  EXPECT_EQ(o.max_upstream_replicas, 12);
}

}  // namespace
}  // namespace bw::telemetry
