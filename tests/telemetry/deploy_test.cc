// test-label: tools
// Structure checks of deploy/: Prometheus rules (promtool), Kubernetes manifests rendered
// offline (kubectl kustomize) and the Grafana dashboard.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace {

// The repository root, from the build (ccache may rewrite __FILE__ to a relative path).
const std::filesystem::path kRepo = BW_SOURCE_DIR;

std::pair<int, std::string> run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

bool have(const std::string& tool) {
  return run("command -v " + tool).first == 0;
}

// The YAML document of `kind` named `name` in a multi-document stream.
std::string document(const std::string& stream, const std::string& kind, const std::string& name) {
  std::size_t start = 0;
  while (start < stream.size()) {
    std::size_t end = stream.find("\n---\n", start);
    if (end == std::string::npos) end = stream.size();
    const std::string doc = stream.substr(start, end - start);
    if (doc.find("\nkind: " + kind + "\n") != std::string::npos ||
        doc.starts_with("kind: " + kind + "\n")) {
      if (doc.find("\n  name: " + name + "\n") != std::string::npos) return doc;
    }
    start = end + 5;
  }
  return {};
}

TEST(Deploy, PrometheusRulesCheckAndUnitTests) {
  if (!have("promtool")) GTEST_SKIP() << "promtool not installed";
  const auto dir = (kRepo / "deploy/prometheus").string();
  auto [rc, out] = run("promtool check rules " + dir + "/rules.yml");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("SUCCESS"), std::string::npos) << out;
  std::tie(rc, out) = run("cd " + dir + " && promtool test rules rules_test.yml");
  EXPECT_EQ(rc, 0) << out;
  // Every alert must be covered by the unit tests.
  for (const char* alert :
       {"BellwetherHighTokenRate", "BellwetherHigh429Rate", "BellwetherBreakerOpen",
        "BellwetherBudgetNearCap", "BellwetherQueueNearFull", "BellwetherProviderQuotaBinding"}) {
    const auto [grc, gout] =
        run(std::string("grep -c 'alertname: ") + alert + "' " + dir + "/rules_test.yml");
    EXPECT_EQ(grc, 0) << alert << " has no test";
  }
}

TEST(Deploy, KustomizeRendersHpaWithRequiredBehavior) {
  if (!have("kubectl")) GTEST_SKIP() << "kubectl not installed";
  const auto [rc, out] = run("kubectl kustomize " + (kRepo / "deploy/k8s").string());
  ASSERT_EQ(rc, 0) << out;
  const std::string hpa = document(out, "HorizontalPodAutoscaler", "bellwether");
  ASSERT_FALSE(hpa.empty()) << out;
  EXPECT_NE(hpa.find("apiVersion: autoscaling/v2\n"), std::string::npos) << hpa;
  // kubectl kustomize sorts keys; match the rendered layout.
  const std::string scale_up =
      "    scaleUp:\n"
      "      policies:\n"
      "      - periodSeconds: 15\n"
      "        type: Percent\n"
      "        value: 100\n"
      "      - periodSeconds: 15\n"
      "        type: Pods\n"
      "        value: 10\n"
      "      selectPolicy: Max\n";
  const std::string scale_down =
      "    scaleDown:\n"
      "      policies:\n"
      "      - periodSeconds: 60\n"
      "        type: Percent\n"
      "        value: 50\n"
      "      selectPolicy: Max\n"
      "      stabilizationWindowSeconds: 300\n";
  EXPECT_NE(hpa.find(scale_up), std::string::npos) << hpa;
  EXPECT_NE(hpa.find(scale_down), std::string::npos) << hpa;
  // The gateway scales on its own resources (CPU, connections), never on the admission queue,
  // which upstream limits hold.
  EXPECT_NE(hpa.find("  - resource:\n      name: cpu\n"), std::string::npos) << hpa;
  EXPECT_NE(hpa.find("  - pods:\n      metric:\n        name: bellwether_gateway_connections\n"),
            std::string::npos)
      << hpa;
  EXPECT_EQ(hpa.find("queue_depth"), std::string::npos) << hpa;
  EXPECT_EQ(hpa.find("tokens"), std::string::npos) << hpa;

  const std::string dep = document(out, "Deployment", "bellwether");
  ASSERT_FALSE(dep.empty());
  for (const char* needle : {"path: /readyz", "path: /healthz", "preStop:", "secretKeyRef:",
                             "name: bellwether-provider-keys", "mountPath: /etc/bellwether",
                             "configMap:\n          name: bellwether-config", "requests:"}) {
    EXPECT_NE(dep.find(needle), std::string::npos) << needle;
  }
  const std::string role = document(out, "Role", "bellwether-autoscaler");
  ASSERT_FALSE(role.empty()) << out;
  EXPECT_NE(role.find("deployments/scale"), std::string::npos) << role;
  EXPECT_NE(role.find("verbs:\n  - get\n  - patch"), std::string::npos) << role;
  EXPECT_FALSE(document(out, "RoleBinding", "bellwether-autoscaler").empty());
  EXPECT_FALSE(document(out, "ServiceAccount", "bellwether-autoscaler").empty());
  EXPECT_FALSE(document(out, "Service", "bellwether").empty());
  EXPECT_FALSE(document(out, "ConfigMap", "bellwether-config").empty());
  EXPECT_FALSE(document(out, "ConfigMap", "bellwether-adapter-config").empty());

  // The model server example: its own HPA on the tokens/s and backlog the gateways measure for
  // it, and the controller's right to scale it from the other namespace.
  const auto [mrc, mout] = run("kubectl kustomize " + (kRepo / "deploy/k8s/model-server").string());
  ASSERT_EQ(mrc, 0) << mout;
  const std::string mhpa = document(mout, "HorizontalPodAutoscaler", "vllm-llama");
  ASSERT_FALSE(mhpa.empty()) << mout;
  EXPECT_NE(mhpa.find("name: bellwether_deployment_tokens_per_second"), std::string::npos) << mhpa;
  EXPECT_NE(mhpa.find("name: bellwether_deployment_backlog"), std::string::npos) << mhpa;
  EXPECT_NE(mhpa.find("deployment: llama-vllm"), std::string::npos) << mhpa;
  EXPECT_NE(mhpa.find("namespace: models\n"), std::string::npos) << mhpa;
  EXPECT_FALSE(document(mout, "Deployment", "vllm-llama").empty()) << mout;
  const std::string mrole = document(mout, "Role", "bellwether-autoscaler");
  EXPECT_NE(mrole.find("- vllm-llama"), std::string::npos) << mrole;
  EXPECT_NE(document(mout, "RoleBinding", "bellwether-autoscaler").find("namespace: bellwether"),
            std::string::npos);

  const auto [drc, dout] = run("kubectl kustomize " + (kRepo / "deploy/k8s/distributed").string());
  ASSERT_EQ(drc, 0) << dout;
  EXPECT_FALSE(document(dout, "StatefulSet", "bellwether-redis").empty()) << dout;
  EXPECT_FALSE(document(dout, "StatefulSet", "bellwether-postgres").empty()) << dout;
  EXPECT_FALSE(document(dout, "Service", "bellwether-redis").empty());
  EXPECT_FALSE(document(dout, "Service", "bellwether-postgres").empty());
}

TEST(Deploy, GrafanaDashboardIsValidAndComplete) {
  if (!have("python3")) GTEST_SKIP() << "python3 not installed";
  const std::string script =
      "import json,sys\n"
      "d=json.load(open(sys.argv[1]))\n"
      "exprs=' '.join(t['expr'] for p in d['panels'] for t in p.get('targets',[]))\n"
      "need=['bellwether_requests_total','bellwether_request_duration_seconds_bucket',"
      "'bellwether_tokens_total','bellwether_cost_usd_total','bellwether_queue_depth',"
      "'bellwether_breaker_state','bellwether_replicas_recommended','bellwether_ttft_seconds']\n"
      "missing=[n for n in need if n not in exprs]\n"
      "print('missing', missing) if missing else print('ok', len(d['panels']))\n"
      "sys.exit(1 if missing or d['uid']!='bellwether' else 0)\n";
  const auto path = std::filesystem::temp_directory_path() / "bw_dash_check.py";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(script.c_str(), f);
  std::fclose(f);
  const auto [rc, out] =
      run("python3 " + path.string() + " " + (kRepo / "deploy/grafana/bellwether.json").string());
  std::filesystem::remove(path);
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace
