// Load execution, child-process orchestration and the command-line entry points.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include "bellwether/client.h"
#include "bench_tool.h"

extern char** environ;

namespace bw::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

std::string make_prompt(int bytes) {
  static const std::string kWords =
      "the quick brown fox jumps over the lazy dog while the gateway keeps the flock together ";
  std::string s;
  s.reserve(static_cast<std::size_t>(std::max(bytes, 0)));
  while (static_cast<int>(s.size()) < bytes) s += kWords;
  s.resize(static_cast<std::size_t>(std::max(bytes, 0)));
  return s;
}

std::optional<double> poll_queue_depth(bellwether::Client& client, const std::string& path) {
  auto r = client.get(path);
  if (!r || r->status != 200) return std::nullopt;
  boost::system::error_code ec;
  auto v = boost::json::parse(r->body, ec);
  if (ec || !v.is_object()) return std::nullopt;
  const auto* q = v.get_object().if_contains("queue_depth");
  if (!q || !q->is_number()) return std::nullopt;
  return q->to_number<double>();
}

}  // namespace

PortHold::PortHold() {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return;
  const int one = 1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0 &&
      bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port_ = ntohs(addr.sin_port);
  } else {
    release();
  }
}

void PortHold::release() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

RunSummary run_load(const std::string& name, const LoadOptions& options,
                    const std::vector<PlannedRequest>& plan) {
  std::vector<std::string> urls = options.base_urls;
  if (urls.empty()) urls.push_back(options.base_url);
  auto make_config = [&](const std::string& url) {
    bellwether::ClientConfig cfg;
    cfg.base_url = url;
    cfg.api_key = options.api_key;
    cfg.io_threads = 1;
    cfg.request_timeout = bellwether::seconds(options.timeout_s);
    cfg.retry.max_attempts = std::max(1, options.client_attempts);
    cfg.retry.total_deadline = bellwether::seconds(options.timeout_s * cfg.retry.max_attempts);
    cfg.breaker.enabled = false;  // measure the system, not the SDK's own protection
    cfg.max_idle_connections = static_cast<std::size_t>(std::max(1, options.max_in_flight));
    for (const auto& [model, price] : options.prices)
      cfg.prices.set(model, {.input_per_mtok = price.first, .output_per_mtok = price.second});
    return cfg;
  };

  std::mutex mu;
  RunTally tally(name);
  std::map<int, std::string> prompts;
  for (const auto& r : plan)
    if (!prompts.count(r.prompt_bytes)) prompts[r.prompt_bytes] = make_prompt(r.prompt_bytes);

  std::atomic<int> in_flight{0};
  std::mutex done_mu;
  std::condition_variable done_cv;
  const auto start = SteadyClock::now() + std::chrono::milliseconds(100);
  const double plan_end = plan.empty() ? 0 : plan.back().at_s;
  const double hard_stop_s =
      options.max_duration_s > 0 ? options.max_duration_s : plan_end + options.drain_s;
  const auto hard_stop = start + std::chrono::duration_cast<SteadyClock::duration>(
                                     std::chrono::duration<double>(hard_stop_s));
  auto last_completion = start;

  std::atomic<bool> stop_poll{false};
  std::thread poller;
  if (!options.queue_url.empty()) {
    poller = std::thread([&] {
      bellwether::ClientConfig qcfg;
      qcfg.base_url = options.queue_url;
      qcfg.api_key = options.api_key;
      qcfg.request_timeout = bellwether::seconds(1);
      bellwether::Client qclient(qcfg);
      auto next = start;
      while (!stop_poll.load()) {
        std::this_thread::sleep_until(next);
        next += std::chrono::seconds(1);
        if (stop_poll.load()) break;
        const double t = std::chrono::duration<double>(SteadyClock::now() - start).count();
        if (t < 0) continue;
        if (auto depth = poll_queue_depth(qclient, options.queue_path)) {
          std::lock_guard lock(mu);
          tally.queue_depth(t, *depth);
        }
      }
    });
  }

  double spend = 0;
  {
    std::vector<std::unique_ptr<bellwether::Client>> clients;
    for (const auto& url : urls)
      clients.push_back(std::make_unique<bellwether::Client>(make_config(url)));
    for (std::size_t index = 0; index < plan.size(); ++index) {
      const auto& req = plan[index];
      const auto intended = start + std::chrono::duration_cast<SteadyClock::duration>(
                                        std::chrono::duration<double>(req.at_s));
      if (intended > hard_stop) break;
      std::this_thread::sleep_until(intended);
      const double at_s = req.at_s;
      const int prio = req.priority;
      {
        std::lock_guard lock(mu);
        tally.sent(at_s, prio);
        if (in_flight.load() >= options.max_in_flight) {
          // Open loop: a request that cannot be sent now is a failure, never a delay.
          tally.dropped(at_s, prio);
          continue;
        }
      }
      ++in_flight;
      bellwether::ChatRequest chat;
      chat.model = req.model;
      chat.messages = {{"user", prompts[req.prompt_bytes]}};
      chat.max_tokens = options.max_tokens;
      chat.priority = req.priority;
      auto done = [&, intended, at_s, prio](bellwether::ChatResult r) {
        const auto now = SteadyClock::now();
        const double ms = std::chrono::duration<double, std::milli>(now - intended).count();
        {
          std::lock_guard lock(mu);
          if (r.ok()) {
            tally.completed(at_s, prio, Outcome::kOk, ms, {}, r->usage.prompt_tokens,
                            r->usage.completion_tokens);
          } else {
            const auto& e = r.error();
            std::string reason = bellwether::to_string(e.kind);
            if (e.status > 0) reason += " " + std::to_string(e.status);
            if (!e.code.empty()) reason += " " + e.code;
            tally.completed(
                at_s, prio,
                classify_outcome(false, e.status, e.kind == bellwether::ErrorKind::kRateLimited),
                ms, reason);
          }
          last_completion = std::max(last_completion, now);
        }
        if (--in_flight == 0) {
          std::lock_guard lock(done_mu);
          done_cv.notify_all();
        }
      };
      auto& client = *clients[round_robin_target(index, clients.size())];
      if (options.stream)
        client.chat_stream_async(std::move(chat), nullptr, done);
      else
        client.chat_async(std::move(chat), done);
    }
    {
      std::unique_lock lock(done_mu);
      done_cv.wait_until(lock, hard_stop, [&] { return in_flight.load() == 0; });
    }
    // Whatever is still running at the hard stop completes as cancelled (an error).
    for (auto& c : clients) c->shutdown();
    for (auto& c : clients) spend += c->metrics().spend_usd;
  }
  stop_poll = true;
  if (poller.joinable()) poller.join();

  std::lock_guard lock(mu);
  auto s = tally.finish(std::chrono::duration<double>(last_completion - start).count());
  s.spend_usd = spend;
  s.budget_usd = options.budget_usd;
  s.client_attempts = std::max(1, options.client_attempts);
  s.targets = static_cast<int>(urls.size());
  return s;
}

// --- processes -------------------------------------------------------------------------------
namespace {

class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { stop(); }

  bool start(const std::string& path, const std::vector<std::string>& args,
             const std::string& log_path, std::string* error) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(path.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, path.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      if (error) *error = "cannot start " + path + ": " + std::strerror(rc);
      return false;
    }
    return true;
  }

  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    return true;
  }

  void stop() {
    if (!running()) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 100; ++i) {  // up to 5 s for a graceful drain
      if (!running()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

bool wait_for_port(int port, double timeout_s, ChildProcess& child) {
  const auto deadline = SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(
                                                 std::chrono::duration<double>(timeout_s));
  while (SteadyClock::now() < deadline) {
    if (!child.running()) return false;
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    if (ok) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::string replace_all(std::string s, const std::map<std::string, std::string>& vars) {
  for (const auto& [key, value] : vars) {
    for (std::size_t pos = s.find(key); pos != std::string::npos;
         pos = s.find(key, pos + value.size()))
      s.replace(pos, key.size(), value);
  }
  return s;
}

std::vector<std::string> split_args(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string word;
  while (in >> word) out.push_back(word);
  return out;
}

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  return static_cast<bool>(out);
}

// Flags shared by `bench` and `bench compare`.
struct LoadFlags {
  std::string profile = "spike";
  double rate = 600, from = 500, to = 15000, duration = 60;
  std::string points;
  double compress_factor = 1, rate_scale = 1;
  std::string models = "gpt-4o-mini";
  std::string priority_mix = "10/60/30";
  std::string prompt_bytes = "512";
  std::uint64_t seed = 42;
  std::vector<std::string> prices;
  std::optional<double> budget;
  std::string json_out, html_out;
  LoadOptions load;
};

void add_load_flags(CLI::App& app, LoadFlags& f) {
  app.add_option("--profile", f.profile, "spike | constant | ramp | points")
      ->check(CLI::IsMember({"spike", "constant", "ramp", "points"}));
  app.add_option("--rate", f.rate, "constant profile: requests per minute");
  app.add_option("--from", f.from, "ramp profile: start rate (requests/min)");
  app.add_option("--to", f.to, "ramp profile: end rate (requests/min)");
  app.add_option("--duration", f.duration, "constant/ramp profile length (s)");
  app.add_option("--points", f.points,
                 "points profile: time_s:rate_per_min,... e.g. 0:500,90:15000");
  app.add_option("--compress", f.compress_factor, "divide all profile times by this factor")
      ->check(CLI::PositiveNumber);
  app.add_option("--rate-scale", f.rate_scale, "multiply all profile rates by this factor")
      ->check(CLI::PositiveNumber);
  app.add_option("--models", f.models, "model mix, e.g. gpt-4o-mini:0.7,gpt-4o:0.3");
  app.add_option("--priority-mix", f.priority_mix, "P0/P1/P2 weights, e.g. 10/60/30");
  app.add_option("--prompt-bytes", f.prompt_bytes,
                 "prompt sizes in bytes, picked uniformly: 200,2000");
  app.add_option("--max-tokens", f.load.max_tokens, "max_tokens of each request");
  app.add_flag("--stream", f.load.stream, "use streaming responses");
  app.add_option("--seed", f.seed, "random seed of the request plan");
  app.add_option("--max-in-flight", f.load.max_in_flight, "in-flight bound; excess is dropped");
  app.add_option("--max-duration", f.load.max_duration_s, "hard stop (s); 0 = profile + drain");
  app.add_option("--drain", f.load.drain_s, "wait for in-flight requests after the last send (s)");
  app.add_option("--timeout", f.load.timeout_s, "per-request timeout (s)");
  app.add_option("--client-attempts", f.load.client_attempts,
                 "SDK attempts per request (1 = no retry)");
  app.add_option("--price", f.prices, "model=input_usd_per_mtok:output_usd_per_mtok (repeatable)");
  app.add_option("--budget-usd", f.budget, "budget cap shown next to spend");
  app.add_option("--json", f.json_out, "write the JSON report here");
  app.add_option("--html", f.html_out, "write the HTML report here");
}

struct Prepared {
  std::vector<PlannedRequest> plan;
  std::string profile_text;
  PlanOptions plan_options;
};

std::optional<Prepared> prepare(LoadFlags& f) {
  std::string error;
  Profile profile;
  if (f.profile == "spike")
    profile = spike_profile();
  else if (f.profile == "constant")
    profile = constant_profile(f.rate, f.duration);
  else if (f.profile == "ramp")
    profile = ramp_profile(f.from, f.to, f.duration);
  else {
    auto p = parse_points(f.points, &error);
    if (!p) {
      std::cerr << "bench: --points: " << error << '\n';
      return std::nullopt;
    }
    profile = *p;
  }
  profile = scale_rates(compress(profile, f.compress_factor), f.rate_scale);
  PlanOptions po;
  po.seed = f.seed;
  auto models = parse_mix(f.models, &error);
  if (!models) {
    std::cerr << "bench: --models: " << error << '\n';
    return std::nullopt;
  }
  po.models = *models;
  auto prio = parse_priority_mix(f.priority_mix, &error);
  if (!prio) {
    std::cerr << "bench: --priority-mix: " << error << '\n';
    return std::nullopt;
  }
  po.priority_weights = *prio;
  po.prompt_bytes.clear();
  std::stringstream ss(f.prompt_bytes);
  for (std::string item; std::getline(ss, item, ',');) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0 || v > (64 << 20)) {
      std::cerr << "bench: --prompt-bytes: bad size '" << item << "'\n";
      return std::nullopt;
    }
    po.prompt_bytes.push_back(static_cast<int>(v));
  }
  for (const auto& p : f.prices) {
    const auto eq = p.find('='), colon = p.rfind(':');
    if (eq == std::string::npos || colon == std::string::npos || colon < eq) {
      std::cerr << "bench: --price must be model=in:out, got '" << p << "'\n";
      return std::nullopt;
    }
    f.load.prices.push_back({p.substr(0, eq),
                             {std::atof(p.substr(eq + 1, colon - eq - 1).c_str()),
                              std::atof(p.substr(colon + 1).c_str())}});
  }
  f.load.budget_usd = f.budget;
  Prepared out;
  std::ostringstream pt;
  for (std::size_t i = 0; i < profile.points.size(); ++i)
    pt << (i ? "," : "") << profile.points[i].time_s << ':' << profile.points[i].rate_per_min;
  out.profile_text = pt.str();
  out.plan = build_plan(intended_send_times(profile), po);
  out.plan_options = po;
  return out;
}

int write_reports(const LoadFlags& f, const std::vector<RunSummary>& runs,
                  const std::string& profile_text) {
  std::cout << comparison_table(runs);
  int rc = 0;
  if (!f.json_out.empty() && !write_file(f.json_out, to_json(runs, profile_text))) {
    std::cerr << "bench: cannot write " << f.json_out << '\n';
    rc = 1;
  }
  if (!f.html_out.empty() && !write_file(f.html_out, to_html(runs, profile_text))) {
    std::cerr << "bench: cannot write " << f.html_out << '\n';
    rc = 1;
  }
  return rc;
}

}  // namespace

int run_bench(int argc, char** argv) {
  CLI::App app{"Open-loop load generator against an OpenAI-compatible endpoint",
               "bellwether bench"};
  LoadFlags f;
  std::string name = "run";
  app.add_option("--url", f.load.base_url, "base URL, e.g. http://127.0.0.1:8080")->required();
  app.add_option("--api-key", f.load.api_key, "bearer key");
  app.add_option("--queue-url", f.load.queue_url, "gateway base URL to poll queue depth from");
  app.add_option("--name", name, "run name in reports");
  add_load_flags(app, f);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  auto prepared = prepare(f);
  if (!prepared) return 2;
  std::cerr << "bench: " << prepared->plan.size() << " requests, profile " << prepared->profile_text
            << '\n';
  auto run = run_load(name, f.load, prepared->plan);
  return write_reports(f, {run}, prepared->profile_text);
}

namespace {

// The simulator's own counters (GET /sim/stats): requests received and 429s it answered.
struct SimStats {
  std::int64_t requests = 0, rejected_429 = 0;
};

std::optional<SimStats> read_sim_stats(int port) {
  bellwether::ClientConfig cfg;
  cfg.base_url = "http://127.0.0.1:" + std::to_string(port);
  cfg.request_timeout = bellwether::seconds(5);
  cfg.retry.max_attempts = 1;
  bellwether::Client client(cfg);
  auto r = client.get("/sim/stats");
  if (!r || r->status != 200) return std::nullopt;
  boost::system::error_code ec;
  auto v = boost::json::parse(r->body, ec);
  if (ec || !v.is_object()) return std::nullopt;
  const auto& o = v.get_object();
  const auto* req = o.if_contains("requests");
  const auto* rej = o.if_contains("rejected_429");
  if (!req || !rej || !req->is_number() || !rej->is_number()) return std::nullopt;
  return SimStats{req->to_number<std::int64_t>(), rej->to_number<std::int64_t>()};
}

std::vector<int> parse_attempts_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 1 || v > 10) return {};
    out.push_back(static_cast<int>(v));
  }
  return out;
}

}  // namespace

int run_bench_compare(int argc, char** argv) {
  CLI::App app{
      "Same open-loop schedule direct against simulated providers, then through the gateway",
      "bellwether bench compare"};
  LoadFlags f;
  // Real applications use their SDK's retries: 3 attempts (2 retries), as the OpenAI SDKs do.
  f.load.client_attempts = 3;
  std::string binary = "/proc/self/exe";
  std::string sim_config, gateway_config, out_dir = "bench-out";
  std::string sim_args = "sim --config {config} --listen 127.0.0.1:{port}";
  std::string gateway_args = "serve --config {config}";
  std::string direct_key, gateway_key;
  std::string direct_attempts_text;
  int gateway_port = 0;
  int deployments = 1;
  double startup_timeout = 30;
  double baseline_rate = 1200, baseline_duration = 30;
  bool skip_direct = false;
  app.add_option("--bellwether", binary,
                 "bellwether binary that provides `sim` and `serve` (their listeners bind with "
                 "SO_REUSEPORT: each port stays bound here until its server listens)");
  app.add_option("--sim-config", sim_config, "simulator config template")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--gateway-config", gateway_config, "gateway config template")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--sim-args", sim_args, "simulator arguments; {config} {port} are substituted");
  app.add_option("--gateway-args", gateway_args,
                 "gateway arguments; {config} {port} {sim_url} are substituted");
  app.add_option("--gateway-port", gateway_port, "gateway port (0 = pick a free one)");
  app.add_option("--out-dir", out_dir, "rendered configs, process logs and default reports");
  app.add_option("--direct-api-key", direct_key, "key for the direct run (the simulator's)");
  app.add_option("--api-key", gateway_key, "key for the gateway run");
  app.add_option("--startup-timeout", startup_timeout, "seconds to wait for a port to accept");
  app.add_option("--deployments", deployments,
                 "fresh simulators per side: the gateway's groups get one deployment each, the "
                 "direct client spreads its requests over them round robin")
      ->check(CLI::Range(1, 8));
  app.add_option("--direct-attempts", direct_attempts_text,
                 "one direct run per entry, with that many SDK attempts, e.g. 3,1 (default: "
                 "--client-attempts)");
  app.add_option("--baseline-rate", baseline_rate,
                 "unloaded reference through the gateway, all P0: requests/min")
      ->check(CLI::PositiveNumber);
  app.add_option("--baseline-duration", baseline_duration,
                 "length of the unloaded reference run (s); 0 = no reference run");
  app.add_flag("--skip-direct", skip_direct, "run only the gateway side");
  add_load_flags(app, f);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  std::vector<int> direct_attempts{std::max(1, f.load.client_attempts)};
  if (!direct_attempts_text.empty()) {
    direct_attempts = parse_attempts_list(direct_attempts_text);
    if (direct_attempts.empty()) {
      std::cerr << "bench compare: --direct-attempts must look like 3,1\n";
      return 2;
    }
  }
  auto prepared = prepare(f);
  if (!prepared) return 2;
  std::error_code fs_ec;
  std::filesystem::create_directories(out_dir, fs_ec);
  if (binary == "/proc/self/exe")
    binary = std::filesystem::read_symlink("/proc/self/exe", fs_ec).string();
  if (f.json_out.empty()) f.json_out = out_dir + "/compare.json";
  if (f.html_out.empty()) f.html_out = out_dir + "/compare.html";
  const auto sim_template = read_file(sim_config);
  const auto gateway_template = read_file(gateway_config);
  if (!sim_template || !gateway_template) {
    std::cerr << "bench compare: cannot read config templates\n";
    return 2;
  }

  // N fresh simulators; each config may use {{SIM_PORT}} / {{SIM_URL}} (its own).
  struct Sims {
    std::vector<std::unique_ptr<ChildProcess>> procs;
    std::vector<int> ports;
    std::vector<std::string> urls() const {
      std::vector<std::string> out;
      for (int p : ports) out.push_back("http://127.0.0.1:" + std::to_string(p));
      return out;
    }
    // Reads every simulator's counters; nullopt if any cannot be read.
    void add_stats_to(RunSummary& run) const {
      SimStats total;
      for (int p : ports) {
        auto st = read_sim_stats(p);
        if (!st) return;
        total.requests += st->requests;
        total.rejected_429 += st->rejected_429;
      }
      run.provider_requests = total.requests;
      run.provider_429 = total.rejected_429;
    }
  };
  auto start_sims = [&](Sims& sims, const std::string& tag) -> bool {
    for (int i = 1; i <= deployments; ++i) {
      PortHold hold;  // released once the simulator listens on the port
      const int port = hold.port();
      const std::string id = tag + (deployments > 1 ? "-" + std::to_string(i) : "");
      const std::map<std::string, std::string> vars{
          {"{{SIM_PORT}}", std::to_string(port)},
          {"{{SIM_URL}}", "http://127.0.0.1:" + std::to_string(port)}};
      const std::string cfg_path = out_dir + "/sim-" + id + ".yaml";
      write_file(cfg_path, render_template(*sim_template, vars, {}));
      const auto args = split_args(
          replace_all(sim_args, {{"{config}", cfg_path}, {"{port}", std::to_string(port)}}));
      auto proc = std::make_unique<ChildProcess>();
      std::string error;
      if (!proc->start(binary, args, out_dir + "/sim-" + id + ".log", &error)) {
        std::cerr << "bench compare: " << error << '\n';
        return false;
      }
      if (!wait_for_port(port, startup_timeout, *proc)) {
        std::cerr << "bench compare: simulator did not listen on " << port << " (see " << out_dir
                  << "/sim-" << id << ".log)\n";
        return false;
      }
      hold.release();
      sims.procs.push_back(std::move(proc));
      sims.ports.push_back(port);
    }
    return true;
  };

  // A fresh gateway in front of N fresh simulators, then one load run through it.
  auto gateway_run = [&](const std::string& name, const std::string& tag,
                         const std::vector<PlannedRequest>& plan,
                         bool baseline) -> std::optional<RunSummary> {
    Sims sims;
    if (!start_sims(sims, tag)) return std::nullopt;
    ChildProcess gateway;
    std::optional<PortHold> hold;  // a free port, released once the gateway listens on it
    if (gateway_port <= 0) hold.emplace();
    const int gport = hold ? hold->port() : gateway_port;
    const auto urls = sims.urls();
    std::map<std::string, std::string> vars{{"{{SIM_PORT}}", std::to_string(sims.ports[0])},
                                            {"{{SIM_URL}}", urls[0]},
                                            {"{{GATEWAY_PORT}}", std::to_string(gport)},
                                            {"{{DEPLOYMENTS}}", std::to_string(deployments)}};
    std::vector<std::map<std::string, std::string>> per_sim;
    for (std::size_t i = 0; i < urls.size(); ++i) {
      vars["{{SIM_URL_" + std::to_string(i + 1) + "}}"] = urls[i];
      vars["{{SIM_PORT_" + std::to_string(i + 1) + "}}"] = std::to_string(sims.ports[i]);
      per_sim.push_back({{"{{I}}", std::to_string(i + 1)},
                         {"{{SIM_URL_I}}", urls[i]},
                         {"{{SIM_PORT_I}}", std::to_string(sims.ports[i])}});
    }
    const std::string cfg_path = out_dir + "/" + tag + ".yaml";
    write_file(cfg_path, render_template(*gateway_template, vars, per_sim));
    const auto args = split_args(replace_all(
        gateway_args,
        {{"{config}", cfg_path}, {"{port}", std::to_string(gport)}, {"{sim_url}", urls[0]}}));
    std::string error;
    if (!gateway.start(binary, args, out_dir + "/" + tag + ".log", &error)) {
      std::cerr << "bench compare: " << error << '\n';
      return std::nullopt;
    }
    if (!wait_for_port(gport, startup_timeout, gateway)) {
      std::cerr << "bench compare: gateway did not listen on " << gport << " (see " << out_dir
                << "/" << tag << ".log)\n";
      return std::nullopt;
    }
    hold.reset();
    LoadOptions lo = f.load;
    lo.base_url = "http://127.0.0.1:" + std::to_string(gport);
    lo.base_urls.clear();
    lo.api_key = gateway_key;
    lo.queue_url = lo.base_url;
    std::cerr << "bench compare: run " << name << " through the gateway at " << lo.base_url << " ("
              << plan.size() << " requests)\n";
    auto run = run_load(name, lo, plan);
    run.baseline = baseline;
    sims.add_stats_to(run);
    return run;
  };

  std::vector<RunSummary> runs;
  std::cerr << "bench compare: " << prepared->plan.size() << " requests per run, profile "
            << prepared->profile_text << ", " << deployments << " deployment(s)\n";
  std::optional<RunSummary> baseline_run;
  if (baseline_duration > 0) {
    PlanOptions bo = prepared->plan_options;
    bo.priority_weights = {1, 0, 0};
    const auto plan =
        build_plan(intended_send_times(constant_profile(baseline_rate, baseline_duration)), bo);
    baseline_run = gateway_run("gateway unloaded", "gateway-unloaded", plan, true);
    if (!baseline_run) return 1;
  }
  if (!skip_direct) {
    for (int attempts : direct_attempts) {
      Sims sims;
      const std::string tag = "direct-" + std::to_string(attempts) + "x";
      if (!start_sims(sims, tag)) return 1;
      LoadOptions lo = f.load;
      lo.base_urls = sims.urls();
      lo.api_key = direct_key;
      lo.queue_url.clear();
      lo.client_attempts = attempts;
      const std::string name = "direct " + std::to_string(attempts) + "x";
      std::cerr << "bench compare: run " << name << " against " << lo.base_urls.size()
                << " simulator(s), round robin\n";
      auto run = run_load(name, lo, prepared->plan);
      sims.add_stats_to(run);
      runs.push_back(std::move(run));
    }
  }
  auto gw = gateway_run("gateway", "gateway", prepared->plan, false);
  if (!gw) return 1;
  runs.push_back(std::move(*gw));
  if (baseline_run) runs.push_back(std::move(*baseline_run));
  const int rc = write_reports(f, runs, prepared->profile_text);
  std::cerr << "bench compare: reports in " << f.json_out << " and " << f.html_out << '\n';
  return rc;
}

}  // namespace bw::bench
