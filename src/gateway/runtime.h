#pragma once
// Runtime: the immutable snapshot the data plane reads, built from one Config. A reload builds a
// new Runtime and swaps it in atomically; requests in flight keep the snapshot they started with.
// Thread safety: immutable after construction.
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "gateway/translate.h"
#include "http/client.h"

namespace bw::gateway {

struct Provider {
  const config::ProviderConfig* cfg = nullptr;
  http::Endpoint endpoint;
  http::UpstreamOptions options;  // timeouts and pool bounds
  std::string authorization;      // "Bearer <provider key>" or empty; never logged
  // The wire format and where its requests go; the key's header by provider type
  // (authorization, api-key, x-api-key, x-goog-api-key).
  ProviderWire wire;
  std::string key_header;
  std::string key_value;  // never logged
  std::string anthropic_version;
};

struct Deployment {
  const config::DeploymentConfig* cfg = nullptr;
  const Provider* provider = nullptr;
  std::string chat_target, completions_target, embeddings_target;
};

struct ModelGroup {
  const config::ModelGroupConfig* cfg = nullptr;
  std::vector<Deployment> deployments;
};

struct KeyInfo {
  const config::KeyConfig* cfg = nullptr;
};

class Runtime {
 public:
  // sim_port: where the in-process simulator listens, for providers of type sim.
  // stored_keys: keys created through the admin API (the KeyStore), beside the config's keys.
  Runtime(std::shared_ptr<const config::Config> cfg, std::uint16_t sim_port,
          std::vector<config::KeyConfig> stored_keys = {});

  const config::Config& config() const { return *cfg_; }
  std::shared_ptr<const config::Config> config_ptr() const { return cfg_; }
  const ModelGroup* group(std::string_view model) const;
  const KeyInfo* key_by_hash(const std::string& hex_hash) const;
  const Deployment* deployment(const std::string& id) const;
  const KeyInfo* key_by_name(const std::string& name) const;
  const std::string& models_json() const { return models_json_; }
  const std::vector<config::KeyConfig>& stored_keys() const { return stored_keys_; }
  std::uint16_t sim_port() const { return sim_port_; }

 private:
  std::shared_ptr<const config::Config> cfg_;
  std::unordered_map<std::string, Provider> providers_;
  std::unordered_map<std::string, ModelGroup> groups_;
  std::unordered_map<std::string, KeyInfo> keys_;
  std::unordered_map<std::string, const Deployment*> deployments_;
  std::unordered_map<std::string, const KeyInfo*> keys_by_name_;
  std::string models_json_;
  std::vector<config::KeyConfig> stored_keys_;  // never resized: keys_ points into it
  std::uint16_t sim_port_ = 0;
};

}  // namespace bw::gateway
