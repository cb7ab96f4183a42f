#pragma once
// Typed reading of YAML with exact diagnostics: every error names file:line and the key, and a
// key that the schema does not know is an error (a typo must not silently fall back to a
// default). ${VAR} and ${VAR:-default} are interpolated in scalars.
// Thread safety: single-threaded, used only while loading a config.
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/clock.h"

namespace bw::config {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Reader {
 public:
  Reader(YAML::Node node, const std::string& file, std::string path = {});

  bool has(const char* key) const;
  // Each getter leaves `out` untouched when the key is absent.
  void get(const char* key, std::string& out);
  void get(const char* key, bool& out);
  void get(const char* key, std::int64_t& out, std::int64_t min, std::int64_t max);
  void get(const char* key, int& out, int min, int max);
  void get(const char* key, double& out, double min, double max);
  void get_duration(const char* key, Nanos& out);
  void get_size(const char* key, std::size_t& out);
  void get_list(const char* key, std::vector<std::string>& out);
  // A map of scalars, e.g. {gpt-4.1: deepseek-v3.2}.
  void get_string_map(const char* key, std::vector<std::pair<std::string, std::string>>& out);
  void require(const char* key);
  // A nested map under `key` (must be a map).
  Reader child(const char* key);
  // Calls f for each element of a sequence under `key`.
  void each(const char* key, const std::function<void(Reader&)>& f);
  // Calls f(name, reader) for each entry of a map under `key`.
  void each_entry(const char* key, const std::function<void(const std::string&, Reader&)>& f);
  // Errors on keys that were never read.
  void finish();

  [[noreturn]] void fail(const char* key, const std::string& message) const;
  [[noreturn]] void fail_here(const std::string& message) const;
  int line() const { return node_.Mark().line + 1; }
  const YAML::Node& node() const { return node_; }
  std::string scalar(const YAML::Node& n, const char* key) const;

 private:
  YAML::Node at(const char* key);
  YAML::Node node_;
  const std::string& file_;
  std::string path_;
  std::set<std::string> seen_;
};

// Parses "250ms", "10s", "5m", "2h", "1d" or a bare number of seconds.
bool parse_duration(std::string_view s, Nanos& out);
// Parses "512", "64KiB", "10MiB", "1GiB" (also KB/MB/GB as powers of 1000).
bool parse_size(std::string_view s, std::size_t& out);
// Replaces ${VAR} and ${VAR:-default}; an unset variable without default is an error (message).
bool interpolate_env(const std::string& in, std::string& out, std::string& error);

}  // namespace bw::config
