#include "config/yaml_reader.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

namespace bw::config {

namespace {
std::string type_name(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Null:
      return "null";
    default:
      return "undefined";
  }
}
}  // namespace

bool parse_duration(std::string_view s, Nanos& out) {
  if (s.empty()) return false;
  std::size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) return false;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + i, v);
  if (ec != std::errc{} || p != s.data() + i || v < 0) return false;
  std::string_view unit = s.substr(i);
  double mult;
  if (unit.empty() || unit == "s")
    mult = 1e9;
  else if (unit == "ms")
    mult = 1e6;
  else if (unit == "us")
    mult = 1e3;
  else if (unit == "m")
    mult = 60e9;
  else if (unit == "h")
    mult = 3600e9;
  else if (unit == "d")
    mult = 86400e9;
  else
    return false;
  double total = v * mult;
  if (total > 9.2e18) return false;
  out = static_cast<Nanos>(std::llround(total));
  return true;
}

bool parse_size(std::string_view s, std::size_t& out) {
  std::size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0) return false;
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + i, v);
  if (ec != std::errc{}) return false;
  std::string_view unit = s.substr(i);
  std::uint64_t mult = 1;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "KiB")
    mult = 1ull << 10;
  else if (unit == "MiB")
    mult = 1ull << 20;
  else if (unit == "GiB")
    mult = 1ull << 30;
  else if (unit == "KB")
    mult = 1000;
  else if (unit == "MB")
    mult = 1000 * 1000;
  else if (unit == "GB")
    mult = 1000ull * 1000 * 1000;
  else
    return false;
  if (v > (1ull << 50) / mult) return false;
  out = static_cast<std::size_t>(v * mult);
  return true;
}

bool interpolate_env(const std::string& in, std::string& out, std::string& error) {
  out.clear();
  std::size_t i = 0;
  while (i < in.size()) {
    auto start = in.find("${", i);
    if (start == std::string::npos) {
      out.append(in, i, std::string::npos);
      break;
    }
    out.append(in, i, start - i);
    auto end = in.find('}', start);
    if (end == std::string::npos) {
      error = "unterminated ${ in value";
      return false;
    }
    std::string expr = in.substr(start + 2, end - start - 2);
    std::string name = expr, fallback;
    bool has_default = false;
    if (auto d = expr.find(":-"); d != std::string::npos) {
      name = expr.substr(0, d);
      fallback = expr.substr(d + 2);
      has_default = true;
    }
    const char* v = std::getenv(name.c_str());
    if (v && *v) {
      out += v;
    } else if (has_default) {
      out += fallback;
    } else {
      error = "environment variable " + name + " is not set";
      return false;
    }
    i = end + 1;
  }
  return true;
}

Reader::Reader(YAML::Node node, const std::string& file, std::string path)
    : node_(std::move(node)), file_(file), path_(std::move(path)) {
  if (node_ && !node_.IsMap() && !node_.IsNull()) {
    fail_here("expected a map, found " + type_name(node_));
  }
}

void Reader::fail(const char* key, const std::string& message) const {
  YAML::Node n = node_.IsMap() ? node_[key] : YAML::Node();
  int line = (n && n.IsDefined()) ? n.Mark().line + 1 : node_.Mark().line + 1;
  std::string where = path_.empty() ? key : path_ + "." + key;
  throw ConfigError(file_ + ":" + std::to_string(line) + ": " + where + ": " + message);
}

void Reader::fail_here(const std::string& message) const {
  throw ConfigError(file_ + ":" + std::to_string(node_.Mark().line + 1) + ": " +
                    (path_.empty() ? std::string("(top level)") : path_) + ": " + message);
}

bool Reader::has(const char* key) const {
  return node_.IsMap() && node_[key] && !node_[key].IsNull();
}

YAML::Node Reader::at(const char* key) {
  seen_.insert(key);
  if (!node_.IsMap()) return YAML::Node();
  return node_[key];
}

std::string Reader::scalar(const YAML::Node& n, const char* key) const {
  if (!n.IsScalar()) fail(key, "expected a scalar value, found " + type_name(n));
  std::string out, error;
  if (!interpolate_env(n.Scalar(), out, error)) fail(key, error);
  return out;
}

void Reader::require(const char* key) {
  if (!has(key)) fail(key, "is required");
}

void Reader::get(const char* key, std::string& out) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  out = scalar(n, key);
}

void Reader::get(const char* key, bool& out) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  auto s = scalar(n, key);
  if (s == "true" || s == "yes" || s == "on")
    out = true;
  else if (s == "false" || s == "no" || s == "off")
    out = false;
  else
    fail(key, "expected true or false, found '" + s + "'");
}

void Reader::get(const char* key, std::int64_t& out, std::int64_t min, std::int64_t max) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  auto s = scalar(n, key);
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size())
    fail(key, "expected an integer, found '" + s + "'");
  if (v < min || v > max) {
    fail(key,
         "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", found " + s);
  }
  out = v;
}

void Reader::get(const char* key, int& out, int min, int max) {
  std::int64_t v = out;
  get(key, v, min, max);
  out = static_cast<int>(v);
}

void Reader::get(const char* key, double& out, double min, double max) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  auto s = scalar(n, key);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v)) {
    fail(key, "expected a number, found '" + s + "'");
  }
  if (v < min || v > max) {
    fail(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  }
  out = v;
}

void Reader::get_duration(const char* key, Nanos& out) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  auto s = scalar(n, key);
  if (!parse_duration(s, out)) {
    fail(key, "expected a duration like 250ms, 10s, 5m, found '" + s + "'");
  }
}

void Reader::get_size(const char* key, std::size_t& out) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  auto s = scalar(n, key);
  if (!parse_size(s, out)) fail(key, "expected a size like 65536, 64KiB, 10MiB, found '" + s + "'");
}

void Reader::get_list(const char* key, std::vector<std::string>& out) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  if (!n.IsSequence()) fail(key, "expected a list, found " + type_name(n));
  out.clear();
  for (const auto& item : n) out.push_back(scalar(item, key));
}

void Reader::get_string_map(const char* key,
                            std::vector<std::pair<std::string, std::string>>& out) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  if (!n.IsMap()) fail(key, "expected a map, found " + type_name(n));
  out.clear();
  for (const auto& kv : n) out.emplace_back(kv.first.as<std::string>(), scalar(kv.second, key));
}

Reader Reader::child(const char* key) {
  auto n = at(key);
  if (n && !n.IsNull() && !n.IsMap()) fail(key, "expected a map, found " + type_name(n));
  return Reader(n && !n.IsNull() ? n : YAML::Node(YAML::NodeType::Map), file_,
                path_.empty() ? key : path_ + "." + key);
}

void Reader::each(const char* key, const std::function<void(Reader&)>& f) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  if (!n.IsSequence()) fail(key, "expected a list, found " + type_name(n));
  std::size_t i = 0;
  for (const auto& item : n) {
    Reader r(
        item, file_,
        (path_.empty() ? std::string(key) : path_ + "." + key) + "[" + std::to_string(i++) + "]");
    f(r);
    r.finish();
  }
}

void Reader::each_entry(const char* key,
                        const std::function<void(const std::string&, Reader&)>& f) {
  auto n = at(key);
  if (!n || n.IsNull()) return;
  if (!n.IsMap()) fail(key, "expected a map, found " + type_name(n));
  for (const auto& kv : n) {
    auto name = kv.first.as<std::string>();
    Reader r(kv.second, file_, (path_.empty() ? std::string(key) : path_ + "." + key) + "." + name);
    f(name, r);
    r.finish();
  }
}

void Reader::finish() {
  if (!node_.IsMap()) return;
  for (const auto& kv : node_) {
    auto k = kv.first.as<std::string>();
    if (!seen_.count(k)) {
      throw ConfigError(file_ + ":" + std::to_string(kv.first.Mark().line + 1) + ": " +
                        (path_.empty() ? k : path_ + "." + k) + ": unknown key");
    }
  }
}

}  // namespace bw::config
