// Closed-loop autoscaling through real processes: `bellwether serve` in front of a self-hosted
// model server (`bellwether sim` modelling replicas of 2 sequences each), `bellwether autoscale`
// scaling it through a stand-in Kubernetes API that serves the Deployment scale subresource and
// starts the new "pods" (sets the simulator's replica count) only after a start-up delay.
//
// The same open-loop spike (4 -> 30 requests/s, 40 % of it urgent) runs three times at once, each
// against its own simulator, gateway and API: no scaling, the reactive baseline (scale when the
// queue is deeper than 20) and the predictive method (Holt). Time is compressed: one replica
// serves 10 requests/s, a new one starts in 4 s, the forecast looks 5 s ahead.
//
// It shows: predictive scales up before reactive; the queue's peak and P0's p99 latency are
// lower with it than with no scaling and with reactive scaling; after the spike it scales down
// without flapping (never up again after the first step down); the replica-minutes of each.
// A second test: the spike against RPM-tier providers keeps the gateway at 1-2 replicas with the
// reason provider_quota naming the deployments.
//
// Set BW_AUTOSCALE_REPORT_DIR to keep the time series (autoscale_<method>.csv) for the chart in
// docs/autoscaling.md (scripts/autoscale_chart.py draws it).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "harness.h"

namespace bw::test {
namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kKey = "sk-autoscale-key-0001";
constexpr const char* kAdminKey = "admin-key-autoscale-0123456789";

// ---- scenario (compressed time) ----------------------------------------------------------------
constexpr int kSeqPerReplica = 2;   // sequences one model-server replica generates at once
constexpr int kServiceMs = 200;     // per request: 10 requests/s per replica
constexpr int kStartupMs = 4000;    // a new replica serves this long after the PATCH
constexpr int kMaxReplicas = 6;     // scale.max of the deployment
constexpr double kBaseRps = 4;      // before and after the spike
constexpr double kPeakRps = 30;     // 3 replicas' worth
constexpr double kRunSeconds = 55;  // schedule length; answers may come later

double offered_rps(double t) {
  if (t < 8) return kBaseRps;
  if (t < 14) return kBaseRps + (kPeakRps - kBaseRps) * (t - 8) / 6;
  if (t < 28) return kPeakRps;
  if (t < 32) return kPeakRps - (kPeakRps - kBaseRps) * (t - 28) / 4;
  return kBaseRps;
}
constexpr double kSpikeStart = 8;

int priority_of(std::size_t i) {
  const auto k = i % 5;
  return k < 2 ? 0 : (k < 4 ? 1 : 2);  // 40 % P0, 40 % P1, 20 % P2
}

std::string sim_yaml() {
  return R"(sim:
  workers: 2
  models:
    llama-8b:
      ttft: {median_ms: )" +
         std::to_string(kServiceMs) + R"(, p99_ms: )" + std::to_string(kServiceMs) + R"(}
      completion_tokens: 1
      replicas: 1
      replica_concurrency: )" +
         std::to_string(kSeqPerReplica) + "\n";
}

std::string gw_yaml(int sim_port, const std::string& method) {
  return R"(admin:
  key: )" +
         std::string(kAdminKey) + R"(
providers:
  vllm:
    base_url: http://127.0.0.1:)" +
         std::to_string(sim_port) + R"(/v1
plans:
  bare: {limits: []}
admission:
  max_queue: 5000
  max_wait: {p0: 120s, p1: 120s, p2: 120s}
  aging: 600s
  overload: {shed_p2_at: 100000, shed_p1_at: 100000, hard_limit: 200000}
  metrics_access: any_key
scaler:
  method: )" +
         method + R"(
  sample_interval: 1s
  wma_window: 4
  holt_alpha: 0.5
  holt_beta: 0.3
  forecast_horizon: 5s
  headroom: 0.2
  scale_up_cooldown: 2s
  scale_down_cooldown: 6s
  scale_down_window: 8s
  reactive_queue_threshold: 20
  gateway: {event_loop_lag_threshold: 10s}   # a shared test machine stalls; not what is tested
model_groups:
  llama:
    concurrency: {mode: fixed, initial: )" +
         std::to_string(kSeqPerReplica) + R"(}
    deployments:
      - provider: vllm
        model: llama-8b
        id: llama/vllm
        scale:
          target: {namespace: models, deployment: vllm-llama}
          capacity_concurrency: )" +
         std::to_string(kSeqPerReplica) + R"(
          min: 1
          max: )" +
         std::to_string(kMaxReplicas) + R"(
          forecast_horizon: 5s
keys:
  - {name: loader, key: )" +
         std::string(kKey) + R"(, plan: bare, default_priority: 1, max_priority: 0}
)";
}

// ---- the stand-in Kubernetes API ---------------------------------------------------------------
// Serves GET/PATCH .../deployments/{vllm-llama,bellwether}/scale. A scale-up's pods run (the
// simulator's replica count rises) kStartupMs after the PATCH; a scale-down takes effect at once.
class FakeKube {
 public:
  FakeKube(int sim_port, Clock::time_point t0) : sim_port_(sim_port), t0_(t0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 64);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    server_ = std::thread([this] { serve(); });
    ticker_ = std::thread([this] { tick(); });
  }
  ~FakeKube() {
    stop_ = true;
    server_.join();
    ticker_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int spec() {
    std::lock_guard l(mu_);
    return spec_;
  }
  int running() {
    std::lock_guard l(mu_);
    return running_;
  }
  // (seconds since t0, new spec.replicas) for each PATCH of the model server.
  std::vector<std::pair<double, int>> patches() {
    std::lock_guard l(mu_);
    return patches_;
  }

 private:
  std::pair<int, std::string> handle(const std::string& method, const std::string& target,
                                     const std::string& body) {
    const bool vllm = target == "/apis/apps/v1/namespaces/models/deployments/vllm-llama/scale";
    const bool gw = target == "/apis/apps/v1/namespaces/models/deployments/bellwether/scale";
    if (!vllm && !gw) return {404, R"({"kind":"Status","code":404})"};
    std::lock_guard l(mu_);
    if (gw) {
      if (method == "PATCH") gateway_ = replicas_in(body, gateway_);
      return {200, scale_json(gateway_, gateway_)};
    }
    if (method == "PATCH") {
      const int n = replicas_in(body, spec_);
      const auto now = Clock::now();
      if (n > spec_) {
        starting_.emplace_back(now + std::chrono::milliseconds(kStartupMs), n - spec_);
      } else {
        int drop = spec_ - n;  // pods still starting go first
        while (drop > 0 && !starting_.empty()) {
          const int d = std::min(drop, starting_.back().second);
          starting_.back().second -= d;
          drop -= d;
          if (starting_.back().second == 0) starting_.pop_back();
        }
        running_ -= drop;
        dirty_ = true;
      }
      spec_ = n;
      patches_.emplace_back(std::chrono::duration<double>(now - t0_).count(), n);
    }
    return {200, scale_json(spec_, running_)};
  }
  static int replicas_in(const std::string& body, int fallback) {
    const auto at = body.find("\"replicas\":");
    return at == std::string::npos ? fallback : std::atoi(body.c_str() + at + 11);
  }
  static std::string scale_json(int spec, int running) {
    return R"({"kind":"Scale","apiVersion":"autoscaling/v1","spec":{"replicas":)" +
           std::to_string(spec) + R"(},"status":{"replicas":)" + std::to_string(running) + "}}";
  }
  void tick() {
    while (!stop_) {
      int set = -1;
      {
        std::lock_guard l(mu_);
        const auto now = Clock::now();
        while (!starting_.empty() && starting_.front().first <= now) {
          running_ += starting_.front().second;
          starting_.pop_front();
          dirty_ = true;
        }
        if (dirty_) set = running_;
        dirty_ = false;
      }
      if (set >= 0) {
        request(sim_port_, "POST", "/sim/replicas",
                R"({"model":"llama-8b","replicas":)" + std::to_string(set) + "}",
                {{"Content-Type", "application/json"}});
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      std::string data;
      char buf[4096];
      std::size_t head_end = std::string::npos, want = 0;
      while (true) {
        pollfd cp{c, POLLIN, 0};
        if (::poll(&cp, 1, 2000) <= 0) break;
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        data.append(buf, static_cast<std::size_t>(n));
        if (head_end == std::string::npos &&
            (head_end = data.find("\r\n\r\n")) != std::string::npos) {
          std::string lower = data.substr(0, head_end);
          for (auto& ch : lower) ch = static_cast<char>(std::tolower(ch));
          const auto cl = lower.find("content-length:");
          want = head_end + 4 + (cl == std::string::npos ? 0 : std::atoi(lower.c_str() + cl + 15));
        }
        if (head_end != std::string::npos && data.size() >= want) break;
      }
      std::string method, target;
      std::istringstream(data) >> method >> target;
      const bool authorized = data.find("Authorization: Bearer kube-token") != std::string::npos;
      const auto [status, body] =
          authorized ? handle(method, target,
                              head_end == std::string::npos ? "" : data.substr(head_end + 4))
                     : std::pair<int, std::string>{401, R"({"kind":"Status","code":401})"};
      const std::string resp =
          "HTTP/1.1 " + std::to_string(status) +
          " X\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
          "\r\nConnection: close\r\n\r\n" + body;
      ::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }

  const int sim_port_;
  const Clock::time_point t0_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  int spec_ = 1, running_ = 1, gateway_ = 1;
  bool dirty_ = false;
  std::deque<std::pair<Clock::time_point, int>> starting_;
  std::vector<std::pair<double, int>> patches_;
  std::thread server_, ticker_;
};

// ---- open-loop client: non-blocking sockets multiplexed with poll() ----------------------------
struct Outcome {
  int priority = 0;
  double sent_s = 0;  // scheduled send time, seconds since t0
  double latency_ms = -1;
  int status = 0;
};

struct Planned {
  std::size_t index;
  int priority;
  Clock::time_point at;
};

int status_of(const std::string& buf, bool eof, bool& complete) {
  complete = false;
  const auto head_end = buf.find("\r\n\r\n");
  if (head_end == std::string::npos || buf.size() < 12) return 0;
  const int status = std::atoi(buf.c_str() + 9);
  std::string lower = buf.substr(0, head_end);
  for (auto& ch : lower) ch = static_cast<char>(std::tolower(ch));
  const auto cl = lower.find("content-length:");
  if (cl != std::string::npos) {
    complete = buf.size() >= head_end + 4 + std::strtoul(lower.c_str() + cl + 15, nullptr, 10);
  } else {
    complete = eof;
  }
  return status;
}

void run_client(int port, const std::vector<Planned>& plan, std::vector<Outcome>& out,
                Clock::time_point t0, const std::string& model = "llama") {
  struct Live {
    int fd;
    std::size_t index;
    std::string request;
    std::size_t sent = 0;
    std::string buf;
    Clock::time_point deadline;
  };
  std::vector<Live> live;
  std::size_t next = 0;
  const auto finish = [&](Live& l, int status) {
    Outcome& o = out[l.index];
    o.latency_ms =
        std::chrono::duration<double, std::milli>(Clock::now() - t0).count() - o.sent_s * 1000;
    o.status = status;
    ::close(l.fd);
    l.fd = -1;
  };
  static const char* kNames[] = {"urgent", "standard", "batch"};
  while (next < plan.size() || !live.empty()) {
    auto now = Clock::now();
    while (next < plan.size() && plan[next].at <= now) {
      const Planned& p = plan[next++];
      Outcome& o = out[p.index];
      o.priority = p.priority;
      o.sent_s = std::chrono::duration<double>(p.at - t0).count();
      std::string req = raw_post("/v1/chat/completions", chat_body(model, false), kKey,
                                 {{"X-Priority", kNames[p.priority]}, {"Connection", "close"}});
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
      Live l{fd, p.index, std::move(req), 0, {}, p.at + std::chrono::seconds(150)};
      if (rc != 0 && errno != EINPROGRESS) {
        finish(l, 0);
        continue;
      }
      live.push_back(std::move(l));
    }
    std::vector<pollfd> fds;
    fds.reserve(live.size());
    for (auto& l : live) {
      fds.push_back(
          pollfd{l.fd, static_cast<short>(l.sent < l.request.size() ? POLLOUT : POLLIN), 0});
    }
    int wait_ms = 5;
    if (next < plan.size()) {
      const auto until =
          std::chrono::duration_cast<std::chrono::milliseconds>(plan[next].at - Clock::now());
      wait_ms = static_cast<int>(std::clamp<long>(until.count(), 0, 5));
    }
    ::poll(fds.data(), fds.size(), wait_ms);
    now = Clock::now();
    for (std::size_t i = 0; i < live.size(); ++i) {
      Live& l = live[i];
      const short ev = fds[i].revents;
      if (l.sent < l.request.size()) {
        if (ev & (POLLOUT | POLLERR | POLLHUP)) {
          const ssize_t n =
              ::send(l.fd, l.request.data() + l.sent, l.request.size() - l.sent, MSG_NOSIGNAL);
          if (n < 0 && errno != EAGAIN) {
            finish(l, 0);
            continue;
          }
          if (n > 0) l.sent += static_cast<std::size_t>(n);
        }
      } else if (ev & (POLLIN | POLLERR | POLLHUP)) {
        char tmp[16384];
        const ssize_t n = ::recv(l.fd, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EAGAIN) continue;
        bool complete = false;
        if (n <= 0) {
          const int st = status_of(l.buf, true, complete);
          finish(l, complete ? st : 0);
          continue;
        }
        l.buf.append(tmp, static_cast<std::size_t>(n));
        const int st = status_of(l.buf, false, complete);
        if (complete) finish(l, st);
        continue;
      }
      if (l.fd >= 0 && now > l.deadline) finish(l, 0);
    }
    std::erase_if(live, [](const Live& l) { return l.fd < 0; });
  }
}

double number_after(const std::string& body, const std::string& key) {
  const auto at = body.find("\"" + key + "\":");
  return at == std::string::npos ? -1 : std::atof(body.c_str() + at + key.size() + 3);
}

double p99(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(std::ceil(0.99 * v.size())) - 1)];
}

struct Sample {
  double t;
  double queue;
  int spec;
  int running;
  double p0_ms;  // P0 latency of requests answered in the last 0.5 s (max), -1 if none
};

struct RunResult {
  std::string method;
  std::vector<Outcome> outcomes;
  std::vector<Sample> samples;
  std::vector<std::pair<double, int>> patches;
  double first_up_s = -1;  // first scale-up PATCH, seconds after the spike starts
  double queue_peak = 0;
  double p0_p99_ms = 0;
  double replica_minutes = 0;  // spec.replicas integrated over the schedule
  int reversals = 0;           // changes of direction in the PATCH sequence
  bool up_after_down = false;
  int peak_spec = 1;
  int final_spec = 1;
  std::string gateway_log;
};

// One run: its own simulator, gateway, API and (unless method == "none") controller.
RunResult run_method(const std::string& method, Clock::time_point t0) {
  RunResult r;
  r.method = method;
  auto sim = start_sim(sim_yaml());
  auto gw = start_gateway(gw_yaml(sim.port, method == "none" ? "holt" : method));
  FakeKube kube(sim.port, t0);
  const std::string dir = temp_dir();
  write_file(dir + "/token", "kube-token\n");
  write_file(dir + "/key", std::string(kAdminKey) + "\n");
  Process controller;
  if (method != "none") {
    controller =
        Process({binary(), "autoscale", "--gateway", "http://127.0.0.1:" + std::to_string(gw.port),
                 "--gateway-key-file", dir + "/key", "--api-server", kube.url(), "--token-file",
                 dir + "/token", "--namespace", "models", "--deployment", "bellwether",
                 "--interval", "0.5", "--timeout", "2"},
                {}, "autoscale-" + method + "-");
  }

  // The schedule: fixed send times, the same for every method.
  std::vector<Planned> plan;
  double t = 0;
  while (t < kRunSeconds) {
    plan.push_back({plan.size(), priority_of(plan.size()),
                    t0 + std::chrono::microseconds(static_cast<long>(t * 1e6))});
    t += 1.0 / offered_rps(t);
  }
  r.outcomes.resize(plan.size());

  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done) {
      const double now_s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (now_s >= 0) {
        auto q =
            request(gw.port, "GET", "/v1/metrics/queue", "",
                    {{"Authorization", std::string("Bearer ") + kKey}}, std::chrono::seconds(2));
        r.samples.push_back(
            {now_s, number_after(q.body, "queue_depth"), kube.spec(), kube.running(), -1});
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  });
  std::this_thread::sleep_until(t0);
  run_client(gw.port, plan, r.outcomes, t0);
  // The controller keeps running until every answer is in, so the scale-down is seen.
  std::this_thread::sleep_until(
      t0 + std::chrono::milliseconds(static_cast<long>(std::max(kRunSeconds * 1000, 0.0))));
  done = true;
  sampler.join();
  r.patches = kube.patches();
  r.gateway_log = gw.proc.stderr_text();

  // Figures.
  std::vector<double> p0;
  for (const auto& o : r.outcomes) {
    if (o.priority == 0 && o.status == 200) p0.push_back(o.latency_ms);
  }
  r.p0_p99_ms = p99(p0);
  for (const auto& s : r.samples) r.queue_peak = std::max(r.queue_peak, s.queue);
  int prev = 1, dir_prev = 0;
  bool went_down = false;
  for (const auto& [at, n] : r.patches) {
    if (n > prev && r.first_up_s < 0) r.first_up_s = at - kSpikeStart;
    const int d = n > prev ? 1 : (n < prev ? -1 : 0);
    if (d != 0 && dir_prev != 0 && d != dir_prev) ++r.reversals;
    if (d > 0 && went_down) r.up_after_down = true;
    if (d < 0) went_down = true;
    if (d != 0) dir_prev = d;
    r.peak_spec = std::max(r.peak_spec, n);
    prev = n;
  }
  r.final_spec = kube.spec();
  // spec.replicas over [0, kRunSeconds]: billed from the PATCH (pods start, then serve).
  double last_t = 0;
  int last_n = 1;
  for (const auto& [at, n] : r.patches) {
    const double a = std::clamp(at, 0.0, kRunSeconds);
    r.replica_minutes += last_n * (a - last_t) / 60;
    last_t = a;
    last_n = n;
  }
  r.replica_minutes += last_n * (kRunSeconds - last_t) / 60;
  // P0 latency over time for the chart: the worst P0 answer sent in each 0.5 s bucket.
  for (auto& s : r.samples) {
    for (const auto& o : r.outcomes) {
      if (o.priority == 0 && o.status == 200 && o.sent_s <= s.t && o.sent_s > s.t - 0.5) {
        s.p0_ms = std::max(s.p0_ms, o.latency_ms);
      }
    }
  }
  if (const char* d = std::getenv("BW_AUTOSCALE_REPORT_DIR"); d && *d) {
    std::ofstream csv(std::string(d) + "/autoscale_" + method + ".csv");
    csv << "t_s,offered_rps,queue_depth,replicas_spec,replicas_running,p0_latency_ms\n";
    for (const auto& s : r.samples) {
      csv << s.t << "," << offered_rps(s.t) << "," << s.queue << "," << s.spec << "," << s.running
          << "," << s.p0_ms << "\n";
    }
  }
  controller.signal(SIGTERM);
  controller.wait(std::chrono::seconds(5));
  return r;
}

TEST(AutoscaleLoop, PredictiveBeatsReactiveAndNoScalingOnASpike) {
  const auto t0 = Clock::now() + std::chrono::seconds(4);  // every process up by then
  RunResult none, reactive, holt;
  std::thread a([&] { none = run_method("none", t0); });
  std::thread b([&] { reactive = run_method("reactive", t0); });
  std::thread c([&] { holt = run_method("holt", t0); });
  a.join();
  b.join();
  c.join();

  std::printf(
      "method     first_up_s  queue_peak  p0_p99_ms  peak_replicas  final  replica_min  "
      "reversals  answered\n");
  for (const RunResult* r : {&none, &reactive, &holt}) {
    const auto ok = std::count_if(r->outcomes.begin(), r->outcomes.end(),
                                  [](const Outcome& o) { return o.status == 200; });
    std::printf("%-9s  %10.1f  %10.0f  %9.0f  %13d  %5d  %11.2f  %9d  %zd/%zu\n", r->method.c_str(),
                r->first_up_s, r->queue_peak, r->p0_p99_ms, r->peak_spec, r->final_spec,
                r->replica_minutes, r->reversals, ok, r->outcomes.size());
    std::string seq;
    for (const auto& [at, n] : r->patches)
      seq += " " + std::to_string(at).substr(0, 5) + "s:" + std::to_string(n);
    std::printf("  %s patches:%s\n", r->method.c_str(), seq.c_str());
  }

  // Every request was answered, whatever the method (the queue holds, it does not refuse).
  for (const RunResult* r : {&none, &reactive, &holt}) {
    for (const auto& o : r->outcomes) ASSERT_EQ(o.status, 200) << r->method;
  }
  EXPECT_TRUE(none.patches.empty());
  // Predictive scales up first, before the reactive baseline.
  ASSERT_GE(holt.first_up_s, 0) << holt.gateway_log;
  ASSERT_GE(reactive.first_up_s, 0) << reactive.gateway_log;
  EXPECT_LT(holt.first_up_s, reactive.first_up_s);
  // Lower queue peak and P0 p99 than both.
  EXPECT_LT(holt.queue_peak, none.queue_peak);
  EXPECT_LT(holt.queue_peak, reactive.queue_peak);
  EXPECT_LT(holt.p0_p99_ms, none.p0_p99_ms);
  EXPECT_LT(holt.p0_p99_ms, reactive.p0_p99_ms);
  // Scales down after the spike, without flapping: never up again after the first step down.
  EXPECT_LT(holt.final_spec, holt.peak_spec);
  EXPECT_FALSE(holt.up_after_down);
  EXPECT_LE(holt.reversals, 1);
  EXPECT_LE(holt.peak_spec, kMaxReplicas);
}

// The spike against providers limited by an RPM tier: no gateway replica helps, and the gateway
// says so instead of asking for 30 to 50 of them.
TEST(AutoscaleLoop, ProviderQuotaKeepsTheGatewaySmallAndNamesTheDeployments) {
  auto sim = start_sim(R"(sim:
  workers: 1
  models:
    tier-a: {ttft: {median_ms: 20, p99_ms: 20}, completion_tokens: 1, rpm: 60}
    tier-b: {ttft: {median_ms: 20, p99_ms: 20}, completion_tokens: 1, rpm: 60}
)");
  auto gw = start_gateway(R"(providers:
  sim:
    base_url: http://127.0.0.1:)" +
                          std::to_string(sim.port) +
                          R"(/v1
plans:
  bare: {limits: []}
admission:
  metrics_access: any_key
scaler:
  sample_interval: 1s
  forecast_horizon: 5s
  gateway: {event_loop_lag_threshold: 10s}
model_groups:
  gpt:
    deployments:
      - {provider: sim, model: tier-a, id: gpt/tier-a, rpm: 60}
      - {provider: sim, model: tier-b, id: gpt/tier-b, rpm: 60}
keys:
  - {name: loader, key: )" +
                          std::string(kKey) +
                          R"(, plan: bare, default_priority: 1, max_priority: 0}
)");
  // 25 requests/s (1,500/min) for 8 s against 2 x 60 RPM.
  const auto t0 = Clock::now() + std::chrono::milliseconds(200);
  std::vector<Planned> plan;
  for (int i = 0; i < 200; ++i) {
    plan.push_back({static_cast<std::size_t>(i), 1, t0 + std::chrono::milliseconds(40 * i)});
  }
  std::vector<Outcome> out(plan.size());
  std::thread client([&] { run_client(gw.port, plan, out, t0, "gpt"); });
  std::string body;
  int max_recommended = 0;
  for (int i = 0; i < 30; ++i) {  // during the spike
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    auto q = request(gw.port, "GET", "/v1/metrics/queue", "",
                     {{"Authorization", std::string("Bearer ") + kKey}});
    body = q.body;
    max_recommended =
        std::max(max_recommended, static_cast<int>(number_after(body, "recommended_replicas")));
  }
  client.join();
  std::printf("%s\n", body.c_str());
  EXPECT_LE(max_recommended, 2) << body;
  EXPECT_NE(body.find("\"scaling\":{\"reason\":\"provider_quota\""), std::string::npos) << body;
  EXPECT_NE(body.find("{\"deployment\":\"gpt/tier-a\",\"group\":\"gpt\",\"missing_rpm\":"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("{\"deployment\":\"gpt/tier-b\",\"group\":\"gpt\",\"missing_rpm\":"),
            std::string::npos)
      << body;
  auto m = request(gw.port, "GET", "/metrics");
  EXPECT_NE(m.body.find("bellwether_scaling_binding{target=\"gpt/tier-a\",constraint=\""
                        "provider_quota\",horizon=\"now\"} 1"),
            std::string::npos);
  EXPECT_NE(
      m.body.find("bellwether_provider_quota_missing{deployment=\"gpt/tier-a\",kind=\"rpm\"}"),
      std::string::npos);
}

}  // namespace
}  // namespace bw::test
