#include "config/config.h"

#include <openssl/evp.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "config/yaml_reader.h"

namespace bw::config {

std::string sha256_hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

bool parse_listen(const std::string& s, std::string& host, std::uint16_t& port) {
  std::string h, p;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    h = s.substr(1, close - 1);
    p = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) return false;
    h = s.substr(0, colon);
    p = s.substr(colon + 1);
  }
  if (h.empty() || p.empty() || p.size() > 5) return false;
  unsigned v = 0;
  for (char c : p) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  host = h;
  port = static_cast<std::uint16_t>(v);
  return true;
}

const ProviderConfig* Config::provider(const std::string& name) const {
  for (const auto& p : providers) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const ModelGroupConfig* Config::model_group(const std::string& name) const {
  for (const auto& g : model_groups) {
    if (g.name == name) return &g;
  }
  return nullptr;
}

namespace {

void read_distribution(Reader& r, const char* key, Distribution& d) {
  if (!r.has(key)) {
    r.child(key);  // marks the key as seen
    return;
  }
  auto c = r.child(key);
  c.get("median_ms", d.median_ms, 0, 3'600'000);
  // A median without a p99 means no tail.
  if (!c.has("p99_ms")) d.p99_ms = d.median_ms;
  c.get("p99_ms", d.p99_ms, 0, 3'600'000);
  c.finish();
  if (d.p99_ms > 0 && d.p99_ms < d.median_ms) c.fail_here("p99_ms must be >= median_ms");
}

void read_sim_model(Reader& r, SimModelConfig& m) {
  read_distribution(r, "ttft", m.ttft);
  read_distribution(r, "itl", m.itl);
  r.get("completion_tokens", m.completion_tokens, 1, 1'000'000);
  r.get("max_concurrency", m.max_concurrency, 0, 10'000'000);
  r.get("rpm", m.rpm, 0, 1'000'000'000);
  r.get("tpm", m.tpm, 0, 1'000'000'000'000);
  r.get("error_rate", m.error_rate, 0, 1);
  r.get("reset_rate", m.reset_rate, 0, 1);
  r.get("stall_rate", m.stall_rate, 0, 1);
  r.get("context_window", m.context_window, 1, 100'000'000);
}

void read_listen(Reader& r, const char* key, std::string& host, std::uint16_t& port) {
  std::string s;
  r.get(key, s);
  if (s.empty()) return;
  if (!parse_listen(s, host, port)) r.fail(key, "expected host:port, found '" + s + "'");
}

std::shared_ptr<const Config> parse(const YAML::Node& root, const std::string& file,
                                    bool embedded) {
  auto cfg = std::make_shared<Config>();
  cfg->source = file;
  cfg->embedded = embedded;
  Reader top(root, file);

  read_listen(top, "listen", cfg->server.host, cfg->server.port);
  top.get("workers", cfg->server.workers, 0, 256);
  {
    auto s = top.child("server");
    s.get_size("max_header_bytes", cfg->server.max_header_bytes);
    std::int64_t max_headers = static_cast<std::int64_t>(cfg->server.max_headers);
    s.get("max_headers", max_headers, 1, 10'000);
    cfg->server.max_headers = static_cast<std::size_t>(max_headers);
    s.get_size("max_body_bytes", cfg->server.max_body_bytes);
    s.get_duration("header_timeout", cfg->server.header_timeout);
    s.get_duration("body_timeout", cfg->server.body_timeout);
    s.get_duration("idle_timeout", cfg->server.idle_timeout);
    s.get_duration("write_timeout", cfg->server.write_timeout);
    s.get_duration("drain_timeout", cfg->drain_timeout);
    s.get_duration("request_timeout", cfg->request_timeout);
    s.get_size("max_upstream_response_bytes", cfg->max_upstream_response_bytes);
    s.get_list("trusted_proxies", cfg->trusted_proxies);
    s.finish();
    if (cfg->server.max_header_bytes < 1024) s.fail("max_header_bytes", "must be at least 1KiB");
  }
  {
    auto a = top.child("admin");
    a.get("listen", cfg->admin_listen);
    if (!cfg->admin_listen.empty()) {
      std::string h;
      std::uint16_t p;
      if (!parse_listen(cfg->admin_listen, h, p)) a.fail("listen", "expected host:port");
    }
    std::string key;
    a.get("key", key);
    if (!key.empty()) {
      if (key.size() < 16) a.fail("key", "the admin key must be at least 16 characters");
      cfg->admin_key_hash = sha256_hex(key);
    }
    a.get("key_sha256", cfg->admin_key_hash);
    a.finish();
  }
  {
    auto l = top.child("access_log");
    l.get("path", cfg->access_log.path);
    l.finish();
  }

  top.each_entry("providers", [&](const std::string& name, Reader& r) {
    ProviderConfig p;
    p.name = name;
    r.get("type", p.type);
    if (p.type != "openai" && p.type != "sim") {
      r.fail("type", "unknown provider type '" + p.type + "' (expected openai or sim)");
    }
    r.get("base_url", p.base_url);
    r.get("api_key_env", p.api_key_env);
    r.get_duration("connect_timeout", p.timeouts.connect);
    r.get_duration("first_byte_timeout", p.timeouts.first_byte);
    r.get_duration("idle_timeout", p.timeouts.idle);
    std::int64_t maxc = static_cast<std::int64_t>(p.max_connections);
    r.get("max_connections", maxc, 1, 100'000);
    p.max_connections = static_cast<std::size_t>(maxc);
    if (p.type == "openai") {
      r.require("base_url");
      auto ep = http::Endpoint::parse(p.base_url);
      if (!ep) r.fail("base_url", ep.error().message);
    }
    if (!p.api_key_env.empty()) {
      const char* v = std::getenv(p.api_key_env.c_str());
      if (!v || !*v) r.fail("api_key_env", "environment variable " + p.api_key_env + " is not set");
      p.api_key = v;
    }
    cfg->providers.push_back(std::move(p));
  });

  top.each_entry("model_groups", [&](const std::string& name, Reader& r) {
    ModelGroupConfig g;
    g.name = name;
    r.get("balancer", g.balancer);
    if (g.balancer != "p2c_peak_ewma" && g.balancer != "weighted_round_robin" &&
        g.balancer != "least_outstanding") {
      r.fail("balancer", "unknown balancer '" + g.balancer +
                             "' (p2c_peak_ewma, weighted_round_robin, least_outstanding)");
    }
    r.get_list("fallbacks", g.fallbacks);
    r.get("context_fallback", g.context_fallback);
    r.get("max_output_tokens", g.max_output_tokens, 1, 10'000'000);
    r.get("context_window", g.context_window, 1, 100'000'000);
    r.get("owned_by", g.owned_by);
    r.require("deployments");
    int index = 0;
    r.each("deployments", [&](Reader& d) {
      DeploymentConfig dep;
      d.require("provider");
      d.get("provider", dep.provider);
      if (!cfg->provider(dep.provider)) d.fail("provider", "unknown provider '" + dep.provider + "'");
      dep.model = name;
      d.get("model", dep.model);
      dep.id = name + "/" + dep.provider + "/" + std::to_string(index++);
      d.get("id", dep.id);
      d.get("weight", dep.weight, 1, 1000);
      d.get("rpm", dep.rpm, 0, 1'000'000'000);
      d.get("tpm", dep.tpm, 0, 1'000'000'000'000);
      g.deployments.push_back(std::move(dep));
    });
    if (g.deployments.empty()) r.fail("deployments", "needs at least one deployment");
    cfg->model_groups.push_back(std::move(g));
  });
  {
    // Fallbacks must name known groups; chains are walked for cycles once all groups are known.
    std::set<std::string> ids;
    for (const auto& g : cfg->model_groups) {
      for (const auto& d : g.deployments) {
        if (!ids.insert(d.id).second) {
          throw ConfigError(file + ": model_groups." + g.name + ": duplicate deployment id '" +
                            d.id + "'");
        }
      }
      for (const auto& f : g.fallbacks) {
        if (!cfg->model_group(f) || f == g.name) {
          auto n = root["model_groups"][g.name]["fallbacks"];
          throw ConfigError(file + ":" + std::to_string(n.Mark().line + 1) + ": model_groups." +
                            g.name + ".fallbacks: '" + f + "' is not another model group");
        }
      }
    }
  }

  std::set<std::string> key_names, key_hashes;
  top.each("keys", [&](Reader& r) {
    KeyConfig k;
    r.require("name");
    r.get("name", k.name);
    std::string secret;
    r.get("key", secret);
    r.get("key_sha256", k.secret_hash);
    if (secret.empty() && k.secret_hash.empty()) r.fail_here("needs key or key_sha256");
    if (!secret.empty()) {
      if (secret.size() < 8) r.fail("key", "an API key must be at least 8 characters");
      k.secret_hash = sha256_hex(secret);
    }
    r.get("tenant", k.tenant);
    r.get("plan", k.plan);
    r.get_list("allowed_models", k.allowed_models);
    r.get("default_priority", k.default_priority, 0, 2);
    r.get("max_priority", k.max_priority, 0, 2);
    if (!key_names.insert(k.name).second) r.fail("name", "duplicate key name '" + k.name + "'");
    if (!key_hashes.insert(k.secret_hash).second) r.fail_here("duplicate key secret");
    for (const auto& m : k.allowed_models) {
      if (!cfg->model_group(m)) r.fail("allowed_models", "unknown model '" + m + "'");
    }
    cfg->keys.push_back(std::move(k));
  });

  {
    auto s = top.child("sim");
    s.get("listen", cfg->sim.listen);
    s.get("zero_latency", cfg->sim.zero_latency);
    s.get("workers", cfg->sim.workers, 1, 64);
    std::int64_t seed = static_cast<std::int64_t>(cfg->sim.seed);
    s.get("seed", seed, 0, INT64_MAX);
    cfg->sim.seed = static_cast<std::uint64_t>(seed);
    if (s.has("defaults")) {
      auto d = s.child("defaults");
      read_sim_model(d, cfg->sim.defaults);
      d.finish();
    } else {
      s.child("defaults");
    }
    s.each_entry("models", [&](const std::string& name, Reader& r) {
      SimModelConfig m = cfg->sim.defaults;
      m.name = name;
      read_sim_model(r, m);
      cfg->sim.models.push_back(std::move(m));
    });
    s.finish();
  }
  top.finish();
  return cfg;
}

Result<std::shared_ptr<const Config>> load_yaml(const std::string& text, const std::string& name,
                                                bool embedded) {
  try {
    YAML::Node root = YAML::Load(text);
    if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    return parse(root, name, embedded);
  } catch (const ConfigError& e) {
    return make_error(500, "config_error", "", e.what());
  } catch (const YAML::Exception& e) {
    return make_error(500, "config_error", "",
                      name + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

}  // namespace

Result<std::shared_ptr<const Config>> load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(500, "config_error", "", path + ": cannot open file");
  std::stringstream ss;
  ss << in.rdbuf();
  return load_yaml(ss.str(), path, false);
}

Result<std::shared_ptr<const Config>> load_string(const std::string& yaml,
                                                  const std::string& name) {
  return load_yaml(yaml, name, name == "<embedded>");
}

}  // namespace bw::config
