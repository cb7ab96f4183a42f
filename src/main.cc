// bellwether: the command line. Subcommands: serve, sim, check-config (and more as modules land).
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <pthread.h>
#include <unistd.h>
#include <csignal>
#include <cstdlib>
#include <iostream>

#include "common/build_info.h"
#include "common/secure_random.h"
#include "config/config.h"
#include "gateway/gateway.h"
#include "gateway/keys.h"
#include "store/sqlite_key_store.h"
#include "telemetry/autoscale.h"
#include "telemetry/autoscale_cli.h"
#include "tools/sim/sim.h"

#ifdef BW_HAVE_BENCHTOOL
#include "bench_tool.h"
#endif

namespace {

// The generated demo and admin keys are secrets: 24 characters of [0-9a-zA-Z] from the kernel's
// CSPRNG without modulo bias (common/secure_random.h aborts rather than return weak bytes).
std::string random_key(const char* prefix) {
  std::string s = prefix;
  bw::append_secure_alnum(s, 24);
  return s;
}

// Blocks the control signals in every thread; the main thread takes them with sigwait.
sigset_t block_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  return set;
}

bw::Result<std::shared_ptr<const bw::config::Config>> load(const std::string& path) {
  if (path.empty())
    return bw::config::load_string(bw::config::embedded_default_yaml(), "<embedded>");
  return bw::config::load_file(path);
}

int serve(const std::string& config_path, const std::string& listen, std::int64_t clock_offset_ms) {
  auto sigs = block_signals();
  bool generated_demo = false;
  std::string demo_key;
  if (config_path.empty()) {
    // The embedded default needs a demo key and an admin key; generate them unless provided.
    if (const char* k = std::getenv("BELLWETHER_DEMO_KEY"); k && *k) {
      demo_key = k;
    } else {
      demo_key = random_key("bw-demo-");
      setenv("BELLWETHER_DEMO_KEY", demo_key.c_str(), 1);
      generated_demo = true;
    }
    if (const char* a = std::getenv("BELLWETHER_ADMIN_KEY"); !a || !*a) {
      auto admin = random_key("bw-admin-");
      setenv("BELLWETHER_ADMIN_KEY", admin.c_str(), 1);
      std::cerr << "admin key (generated): " << admin << "\n";
    }
  }
  auto cfg = load(config_path);
  if (!cfg) {
    std::cerr << "bellwether: " << cfg.error().message << "\n";
    return 2;
  }
  bw::gateway::GatewayOptions options;
  options.listen_override = listen;
  options.version = std::string(bw::build_version());
  options.commit = std::string(bw::build_commit());
  options.clock_offset = clock_offset_ms * bw::kNanosPerMilli;
  bw::gateway::Gateway gw(*cfg, options);
  if (auto r = gw.start(); !r) {
    std::cerr << "bellwether: " << r.error().message << "\n";
    return 1;
  }
  const auto& c = **cfg;
  std::string host = c.server.host;
  if (!listen.empty()) {
    std::uint16_t p;
    bw::config::parse_listen(listen, host, p);
  }
  std::cerr << "bellwether listening on http://" << host << ":" << gw.port()
            << " (config: " << c.source << ", " << c.model_groups.size() << " models";
  if (gw.sim_port()) std::cerr << ", simulated providers on 127.0.0.1:" << gw.sim_port();
  std::cerr << ")\n";
  if (gw.admin_port()) std::cerr << "admin API on " << c.admin_listen << "\n";
  if (c.console_enabled && !c.admin_key_hash.empty()) {
    std::string ui_host = host;
    std::uint16_t ui_port = gw.port();
    if (gw.admin_port()) {
      std::uint16_t ignored = 0;
      bw::config::parse_listen(c.admin_listen, ui_host, ignored);
      ui_port = gw.admin_port();
    }
    std::cerr << "console: http://" << ui_host << ":" << ui_port
              << "/ui/ (log in with the admin key)\n";
  }
  if (config_path.empty()) {
    std::cerr
        << "demo key" << (generated_demo ? " (generated)" : "") << ": " << demo_key << "\n"
        << "try:\n"
        << "  curl -s http://" << host << ":" << gw.port()
        << "/v1/chat/completions -H 'Authorization: Bearer " << demo_key << "' \\\n"
        << "    -H 'Content-Type: application/json' \\\n"
        << "    -d "
           "'{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'\n"
        << "  curl -sN http://" << host << ":" << gw.port()
        << "/v1/chat/completions -H 'Authorization: Bearer " << demo_key << "' \\\n"
        << "    -H 'Content-Type: application/json' \\\n"
        << "    -d "
           "'{\"model\":\"gpt-4.1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":"
           "\"Hello\"}]}'\n";
  }
  std::cerr.flush();
  for (;;) {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (sig == SIGHUP) {
      if (config_path.empty()) {
        std::cerr << "SIGHUP: the embedded default has no file to reload\n";
        continue;
      }
      auto next = bw::config::load_file(config_path);
      if (!next) {
        std::cerr << "reload failed, keeping the current config: " << next.error().message << "\n";
        gw.note_reload(false, next.error().message);
        continue;
      }
      if (auto r = gw.reload(*next); !r) {
        std::cerr << "reload failed, keeping the current config: " << r.error().message << "\n";
        gw.note_reload(false, r.error().message);
        continue;
      }
      std::cerr << "reloaded " << config_path << "\n";
      gw.note_reload(true, "reloaded " + config_path);
      continue;
    }
    std::cerr << "signal " << sig << ": draining\n";
    std::size_t left = gw.drain_and_stop();
    std::cerr << "stopped (" << left << " connections cut at the drain deadline)\n";
    std::cerr.flush();
    std::fflush(stdout);
    _exit(0);
  }
}

int run_sim(const std::string& config_path, const std::string& listen) {
  auto sigs = block_signals();
  bw::config::SimConfig sc;
  if (!config_path.empty()) {
    auto cfg = bw::config::load_file(config_path);
    if (!cfg) {
      std::cerr << "bellwether sim: " << cfg.error().message << "\n";
      return 2;
    }
    sc = (*cfg)->sim;
  } else {
    auto cfg = bw::config::load_string(bw::config::embedded_default_yaml(), "<embedded>");
    if (cfg) sc = (*cfg)->sim;
    sc.listen = "127.0.0.1:9001";
  }
  if (sc.workers < 1) sc.workers = 1;
  bw::sim::Simulator sim(sc);
  auto port = sim.start(listen);
  if (!port) {
    std::cerr << "bellwether sim: " << port.error().message << "\n";
    return 1;
  }
  std::cerr << "bellwether sim listening on port " << *port << "\n";
  std::cerr.flush();
  int sig = 0;
  sigwait(&sigs, &sig);
  _exit(0);
}

// `bellwether keys ...`: the admin key operations, locally on the SQLite key store. A running
// gateway sees the change on its next SIGHUP (or at once when done through the admin API).
int run_keys(const std::string& action, const std::string& db, const std::string& config_path,
             const std::string& id, const std::string& json) {
  auto cfg = config_path.empty() ? bw::config::load_string("listen: 127.0.0.1:0\n", "<keys>")
                                 : bw::config::load_file(config_path);
  if (!cfg) {
    std::cerr << cfg.error().message << "\n";
    return 2;
  }
  auto store = bw::store::SqliteKeyStore::open(db);
  if (!store) {
    std::cerr << "bellwether keys: " << store.error().message << "\n";
    return 2;
  }
  auto& ks = **store;
  const auto now_ms = bw::SteadyClock::instance().unix_millis();
  auto fail = [](const bw::Error& e) {
    std::cerr << "bellwether keys: " << e.message << "\n";
    return 1;
  };
  if (action == "list") {
    auto list = ks.list();
    if (!list) return fail(list.error());
    for (const auto& r : *list) std::cout << bw::gateway::key_json(r) << "\n";
    return 0;
  }
  if (action == "create") {
    bw::cost::KeySpec spec;
    if (auto v = bw::gateway::key_spec_from_json(json, **cfg, spec); !v) return fail(v.error());
    auto issued = ks.create(spec, now_ms);
    if (!issued) return fail(issued.error());
    std::cout << bw::gateway::key_json(issued->record, issued->secret) << "\n";
    return 0;
  }
  if (id.empty()) {
    std::cerr << "bellwether keys " << action << ": needs a key id\n";
    return 2;
  }
  if (action == "show") {
    auto r = ks.get(id);
    if (!r) return fail(r.error());
    std::cout << bw::gateway::key_json(*r) << "\n";
    return 0;
  }
  if (action == "update") {
    auto r = ks.get(id);
    if (!r) return fail(r.error());
    auto spec = r->spec;
    if (auto v = bw::gateway::key_spec_from_json(json, **cfg, spec); !v) return fail(v.error());
    auto u = ks.update(id, spec);
    if (!u) return fail(u.error());
    std::cout << bw::gateway::key_json(*u) << "\n";
    return 0;
  }
  if (action == "revoke") {
    auto r = ks.revoke(id);
    if (!r) return fail(r.error());
    std::cout << "{\"id\":\"" << id << "\",\"revoked\":true}\n";
    return 0;
  }
  if (action == "rotate") {
    auto issued = ks.rotate(id, now_ms);
    if (!issued) return fail(issued.error());
    std::cout << bw::gateway::key_json(issued->record, issued->secret) << "\n";
    return 0;
  }
  std::cerr << "bellwether keys: unknown action '" << action << "'\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Bellwether: an OpenAI-compatible LLM API gateway"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("bellwether ") + std::string(bw::build_version()) +
                                        " (commit " + std::string(bw::build_commit()) + ")");

  std::string config_path, listen;
  auto* serve_cmd = app.add_subcommand("serve", "Run the gateway");
  serve_cmd->add_option("--config,-c", config_path, "YAML config file (default: embedded)");
  serve_cmd->add_option("--listen,-l", listen, "Override the data-plane address HOST:PORT");
  // Hidden (no group): tests of the distributed limits simulate a replica whose clock is off.
  std::int64_t clock_offset_ms = 0;
  serve_cmd->add_option("--clock-offset-ms", clock_offset_ms)->group("");

  std::string sim_config, sim_listen;
  auto* sim_cmd = app.add_subcommand("sim", "Run the simulated LLM provider");
  sim_cmd->add_option("--config,-c", sim_config, "YAML config file with a sim: section");
  sim_cmd->add_option("--listen,-l", sim_listen, "HOST:PORT (default 127.0.0.1:9001)");

  std::string check_path;
  auto* check_cmd = app.add_subcommand("check-config", "Validate a config file and exit");
  check_cmd->add_option("file", check_path, "YAML config file")->required();

  std::string keys_action, keys_db = "bellwether.db", keys_config, keys_id, keys_json = "{}";
  auto* keys_cmd = app.add_subcommand("keys", "Manage stored API keys (SQLite key store)");
  keys_cmd->add_option("action", keys_action, "create | list | show | update | revoke | rotate")
      ->required()
      ->check(CLI::IsMember({"create", "list", "show", "update", "revoke", "rotate"}));
  keys_cmd->add_option("id", keys_id, "Key id (show, update, revoke, rotate)");
  keys_cmd->add_option("--db", keys_db, "SQLite file (the gateway's ledger.path)");
  keys_cmd->add_option("--config,-c", keys_config, "Gateway config, to validate plans and models");
  keys_cmd->add_option("--json,-j", keys_json,
                       "Key fields as JSON: name, tenant, plan, limits, budget, allowed_models, "
                       "default_priority, max_priority, downgrade_opt_out");

  bw::telemetry::AutoscaleOptions autoscale_opts;
  bw::telemetry::AutoscaleFlagSeconds autoscale_secs;
  auto* autoscale_cmd = app.add_subcommand(
      "autoscale", "Set a Deployment's replicas from the gateways' recommendation");
  bw::telemetry::add_autoscale_flags(*autoscale_cmd, autoscale_opts, autoscale_secs);

#ifdef BW_HAVE_BENCHTOOL
  auto* bench_cmd =
      app.add_subcommand("bench", "Open-loop load generator (see docs/spike-benchmark.md)");
  bench_cmd->allow_extras();
  bench_cmd->prefix_command();
#endif

  CLI11_PARSE(app, argc, argv);

  if (*serve_cmd) return serve(config_path, listen, clock_offset_ms);
  if (*sim_cmd) return run_sim(sim_config, sim_listen);
  if (*keys_cmd) return run_keys(keys_action, keys_db, keys_config, keys_id, keys_json);
  if (*autoscale_cmd) {
    bw::telemetry::finish_autoscale_flags(autoscale_opts, autoscale_secs);
    return bw::telemetry::run_autoscale(autoscale_opts);
  }
  if (*check_cmd) {
    auto cfg = bw::config::load_file(check_path);
    if (!cfg) {
      std::cerr << cfg.error().message << "\n";
      return 1;
    }
    std::cout << check_path << ": ok (" << (*cfg)->model_groups.size() << " model groups, "
              << (*cfg)->keys.size() << " keys)\n";
    return 0;
  }
#ifdef BW_HAVE_BENCHTOOL
  if (*bench_cmd) {
    auto rest = bench_cmd->remaining();
    std::vector<std::string> args{"bellwether bench"};
    args.insert(args.end(), rest.begin(), rest.end());
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    if (args.size() > 1 && args[1] == "compare") {
      av.erase(av.begin() + 1);
      return bw::bench::run_bench_compare(static_cast<int>(av.size()), av.data());
    }
    return bw::bench::run_bench(static_cast<int>(av.size()), av.data());
  }
#endif
  return 0;
}
