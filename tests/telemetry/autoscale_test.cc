#include "telemetry/autoscale.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

namespace bw::telemetry {
namespace {

struct Captured {
  std::string method, target, content_type, authorization, body, replicas_header;
};

// A one-thread HTTP/1.1 server on 127.0.0.1:0 answering one request per connection.
class FakeServer {
 public:
  using Handler = std::function<std::pair<int, std::string>(const Captured&)>;
  explicit FakeServer(Handler h) : handler_(std::move(h)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~FakeServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<Captured> requests() {
    std::lock_guard l(mu_);
    return requests_;
  }

 private:
  static std::string header(const std::string& head, const std::string& name) {
    std::istringstream in(head);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string k = line.substr(0, colon);
      for (auto& c : k) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (k == name) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
    return {};
  }
  void loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      std::string data;
      char buf[4096];
      std::size_t head_end = std::string::npos;
      std::size_t want = 0;
      while (true) {
        pollfd cp{c, POLLIN, 0};
        if (::poll(&cp, 1, 2000) <= 0) break;
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        data.append(buf, static_cast<std::size_t>(n));
        if (head_end == std::string::npos &&
            (head_end = data.find("\r\n\r\n")) != std::string::npos) {
          const std::string cl = header(data.substr(0, head_end), "content-length");
          want = head_end + 4 + (cl.empty() ? 0 : std::stoul(cl));
        }
        if (head_end != std::string::npos && data.size() >= want) break;
      }
      Captured cap;
      if (head_end != std::string::npos) {
        const std::string head = data.substr(0, head_end);
        std::istringstream first(head);
        first >> cap.method >> cap.target;
        cap.content_type = header(head, "content-type");
        cap.authorization = header(head, "authorization");
        cap.replicas_header = header(head, "x-bellwether-replicas");
        cap.body = data.substr(head_end + 4);
      }
      const auto [status, body] = handler_(cap);
      {
        std::lock_guard l(mu_);
        requests_.push_back(cap);
      }
      const std::string resp =
          "HTTP/1.1 " + std::to_string(status) +
          " X\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
          "\r\nConnection: close\r\n\r\n" + body;
      ::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }
  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Captured> requests_;
  std::thread thread_;
};

class AutoscaleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("bw_autoscale_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "token") << "s3cr3t-token\n";
    std::ofstream(dir_ / "namespace") << "prod\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  AutoscaleOptions options(const std::string& api, std::vector<std::string> gateways) {
    AutoscaleOptions o;
    o.gateway_urls = std::move(gateways);
    o.api_server = api;
    o.token_file = (dir_ / "token").string();
    o.namespace_file = (dir_ / "namespace").string();
    o.ca_file.clear();
    o.deployment = "bellwether";
    o.interval = 0;
    o.iterations = 2;
    o.timeout = seconds(2);
    o.log = &log_;
    return o;
  }
  std::filesystem::path dir_;
  std::ostringstream log_;
};

// The fake Kubernetes API keeps the replica count, like the real scale subresource.
FakeServer::Handler kube(std::atomic<int>& replicas) {
  return [&replicas](const Captured& c) -> std::pair<int, std::string> {
    if (c.target != "/apis/apps/v1/namespaces/prod/deployments/bellwether/scale") {
      return {404, "{}"};
    }
    if (c.method == "PATCH") {
      const auto at = c.body.find("\"replicas\":");
      if (at != std::string::npos) replicas = std::stoi(c.body.substr(at + 11));
    }
    return {200, R"({"kind":"Scale","spec":{"replicas":)" + std::to_string(replicas.load()) + "}}"};
  };
}

TEST_F(AutoscaleTest, PatchesTheScaleSubresourceWithTheMaxRecommendation) {
  std::atomic<int> replicas{2};
  FakeServer api(kube(replicas));
  FakeServer gw1([](const Captured&) {
    return std::pair<int, std::string>{200, R"({"recommended_replicas":5,"method":"holt"})"};
  });
  FakeServer gw2([](const Captured&) {
    return std::pair<int, std::string>{200, R"({"recommended_replicas":7,"method":"holt"})"};
  });
  EXPECT_EQ(run_autoscale(options(api.url(), {gw1.url(), gw2.url() + "/"})), 0) << log_.str();
  EXPECT_EQ(replicas.load(), 7);

  const auto reqs = api.requests();
  // Iteration 1: GET scale (2) then PATCH to 7. Iteration 2: GET scale (7), nothing to do.
  ASSERT_EQ(reqs.size(), 3u) << log_.str();
  EXPECT_EQ(reqs[0].method, "GET");
  EXPECT_EQ(reqs[1].method, "PATCH");
  EXPECT_EQ(reqs[1].target, "/apis/apps/v1/namespaces/prod/deployments/bellwether/scale");
  EXPECT_EQ(reqs[1].content_type, "application/merge-patch+json");
  EXPECT_EQ(reqs[1].body, R"({"spec":{"replicas":7}})");
  EXPECT_EQ(reqs[1].authorization, "Bearer s3cr3t-token");
  EXPECT_EQ(reqs[0].authorization, "Bearer s3cr3t-token");
  EXPECT_EQ(reqs[2].method, "GET");
  ASSERT_EQ(gw1.requests().size(), 2u);
  EXPECT_EQ(gw1.requests()[0].target, "/v1/metrics/queue");
  EXPECT_EQ(gw2.requests()[0].target, "/v1/metrics/queue");

  // One JSON line per decision; the token never reaches the log.
  const std::string log = log_.str();
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 2);
  EXPECT_NE(log.find("\"action\":\"patched\""), std::string::npos) << log;
  EXPECT_NE(log.find("\"action\":\"none\""), std::string::npos) << log;
  EXPECT_NE(log.find("\"deployment\":\"prod/bellwether\""), std::string::npos) << log;
  EXPECT_EQ(log.find("s3cr3t"), std::string::npos) << log;
}

TEST_F(AutoscaleTest, DryRunNeverPatches) {
  std::atomic<int> replicas{2};
  FakeServer api(kube(replicas));
  FakeServer gw([](const Captured&) {
    return std::pair<int, std::string>{200, R"({"recommended_replicas":9})"};
  });
  auto o = options(api.url(), {gw.url()});
  o.dry_run = true;
  EXPECT_EQ(run_autoscale(o), 0) << log_.str();
  EXPECT_EQ(replicas.load(), 2);
  for (const auto& r : api.requests()) EXPECT_NE(r.method, "PATCH");
  EXPECT_NE(log_.str().find("\"action\":\"dry_run\""), std::string::npos) << log_.str();
  EXPECT_NE(log_.str().find("\"desired\":9"), std::string::npos) << log_.str();
}

TEST_F(AutoscaleTest, PrometheusSourceAndClamping) {
  std::atomic<int> replicas{3};
  FakeServer api(kube(replicas));
  FakeServer prom([](const Captured&) {
    return std::pair<int, std::string>{
        200, R"({"status":"success","data":{"resultType":"vector","result":[)"
             R"({"metric":{},"value":[1767225600.123,"80"]}]}})"};
  });
  auto o = options(api.url(), {});
  o.prometheus_url = prom.url();
  o.max_replicas = 20;
  o.iterations = 1;
  EXPECT_EQ(run_autoscale(o), 0) << log_.str();
  EXPECT_EQ(replicas.load(), 20);
  ASSERT_EQ(prom.requests().size(), 1u);
  EXPECT_EQ(prom.requests()[0].target,
            "/api/v1/query?query=max%20by%20%28target%2C%20k8s_namespace%2C%20k8s_deployment%29%20%"
            "28bellwether_replicas_recommended%29");
}

TEST_F(AutoscaleTest, FailuresAreReportedNotPatched) {
  std::atomic<int> replicas{3};
  FakeServer api(kube(replicas));
  FakeServer gw([](const Captured&) { return std::pair<int, std::string>{503, "{}"}; });
  auto o = options(api.url(), {gw.url()});
  o.iterations = 1;
  EXPECT_EQ(run_autoscale(o), 1);
  EXPECT_TRUE(api.requests().empty());
  EXPECT_NE(log_.str().find("\"action\":\"error\""), std::string::npos) << log_.str();

  o.gateway_urls.clear();
  EXPECT_EQ(run_autoscale(o), 2) << "no source is a setup error";
  o.gateway_urls = {"ftp://x"};
  EXPECT_EQ(run_autoscale(o), 2);
}

// Several Deployments, each from its own recommendation: the gateway's from recommended_replicas,
// a self-hosted model server's from scaling.deployments[] with its Kubernetes target. The replica
// counts read back are told to the gateway on the next call.
TEST_F(AutoscaleTest, ScalesEveryTargetFromItsOwnRecommendation) {
  std::atomic<int> gateway{2}, vllm{1};
  FakeServer api([&](const Captured& c) -> std::pair<int, std::string> {
    std::atomic<int>* r = nullptr;
    if (c.target == "/apis/apps/v1/namespaces/prod/deployments/bellwether/scale") r = &gateway;
    if (c.target == "/apis/apps/v1/namespaces/models/deployments/vllm-llama/scale") r = &vllm;
    if (!r) return {404, "{}"};
    if (c.method == "PATCH") {
      const auto at = c.body.find("\"replicas\":");
      if (at != std::string::npos) *r = std::stoi(c.body.substr(at + 11));
    }
    // status.replicas lags: the pods of a new count are not running yet.
    return {200, R"({"kind":"Scale","spec":{"replicas":)" + std::to_string(r->load()) +
                     R"(},"status":{"replicas":1}})"};
  });
  FakeServer gw([](const Captured&) {
    return std::pair<int, std::string>{
        200,
        R"({"queue_depth":40,"recommended_replicas":1,"scaling":{"reason":"upstream_capacity",)"
        R"("gateway":{"target":"gateway","recommended_replicas":1},"deployments":[)"
        R"({"target":"llama/vllm","scalable":true,"k8s":{"namespace":"models",)"
        R"("deployment":"vllm-llama"},"recommended_replicas":4},)"
        R"({"target":"gpt/openai","scalable":false,"recommended_replicas":0}]}})"};
  });
  auto o = options(api.url(), {gw.url()});
  EXPECT_EQ(run_autoscale(o), 0) << log_.str();
  EXPECT_EQ(gateway.load(), 1);
  EXPECT_EQ(vllm.load(), 4);
  const auto calls = gw.requests();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].replicas_header, "");
  EXPECT_EQ(calls[1].replicas_header, "gateway=1,llama/vllm=1");
  const std::string log = log_.str();
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 4) << log;  // 2 targets x 2 iterations
  EXPECT_NE(log.find("\"target\":\"llama/vllm\",\"deployment\":\"models/vllm-llama\""),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("gpt/openai"), std::string::npos) << "not scalable: never a target";

  // Only the upstreams: the gateway's Deployment is left alone.
  log_.str("");
  gateway = 2;
  o.deployment.clear();
  o.iterations = 1;
  EXPECT_EQ(run_autoscale(o), 0) << log_.str();
  EXPECT_EQ(gateway.load(), 2);
}

TEST_F(AutoscaleTest, PrometheusSeriesPerTarget) {
  std::atomic<int> gateway{3}, vllm{1};
  FakeServer api([&](const Captured& c) -> std::pair<int, std::string> {
    std::atomic<int>* r = c.target.find("/bellwether/") != std::string::npos ? &gateway : &vllm;
    if (c.method == "PATCH") *r = std::stoi(c.body.substr(c.body.find("\"replicas\":") + 11));
    return {200, R"({"spec":{"replicas":)" + std::to_string(r->load()) + "}}"};
  });
  FakeServer prom([](const Captured&) {
    return std::pair<int, std::string>{
        200, R"({"status":"success","data":{"resultType":"vector","result":[)"
             R"({"metric":{"target":"gateway","k8s_namespace":"","k8s_deployment":""},)"
             R"("value":[1767225600.1,"2"]},)"
             R"({"metric":{"target":"llama/vllm","k8s_namespace":"models",)"
             R"("k8s_deployment":"vllm-llama"},"value":[1767225600.1,"6"]}]}})"};
  });
  auto o = options(api.url(), {});
  o.prometheus_url = prom.url();
  o.iterations = 1;
  EXPECT_EQ(run_autoscale(o), 0) << log_.str();
  EXPECT_EQ(gateway.load(), 2);
  EXPECT_EQ(vllm.load(), 6);
}

}  // namespace
}  // namespace bw::telemetry
