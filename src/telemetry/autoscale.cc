#include "telemetry/autoscale.h"

#include <simdjson.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "common/json_util.h"
#include "common/result.h"
#include "http/fetch.h"

namespace bw::telemetry {
namespace {

std::optional<std::string> read_trimmed(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

std::string snippet(std::string_view body) {
  return std::string(body.substr(0, 200));
}

// One scale target's recommendation as a source reports it.
struct TargetRec {
  std::string name;  // "gateway" or a deployment id
  std::string ns;    // Kubernetes namespace ("" = the controller's)
  std::string deployment;
  int replicas = 0;
};

int ceil_replicas(double d) {
  return static_cast<int>(std::clamp(std::ceil(d), 0.0, 1e6));
}

// A gateway's /v1/metrics/queue body: the gateway's recommended_replicas, and each scalable
// deployment of scaling.deployments with its Kubernetes target.
Result<std::vector<TargetRec>> parse_gateway(const std::string& body) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc) != simdjson::SUCCESS) {
    return make_error(502, "api_error", "bad_json", "gateway answered invalid JSON");
  }
  std::vector<TargetRec> out;
  double d = 0;
  if (doc["recommended_replicas"].get_double().get(d) != simdjson::SUCCESS) {
    return make_error(502, "api_error", "bad_json", "no recommended_replicas in gateway answer");
  }
  out.push_back({"gateway", "", "", ceil_replicas(d)});
  simdjson::dom::array deps;
  if (doc["scaling"]["deployments"].get_array().get(deps) == simdjson::SUCCESS) {
    for (auto e : deps) {
      bool scalable = false;
      std::string_view name, ns, dep;
      if (e["scalable"].get_bool().get(scalable) != simdjson::SUCCESS || !scalable) continue;
      if (e["target"].get_string().get(name) != simdjson::SUCCESS) continue;
      if (e["k8s"]["deployment"].get_string().get(dep) != simdjson::SUCCESS || dep.empty()) {
        continue;
      }
      if (e["k8s"]["namespace"].get_string().get(ns) != simdjson::SUCCESS) ns = {};
      if (e["recommended_replicas"].get_double().get(d) != simdjson::SUCCESS) continue;
      out.push_back({std::string(name), std::string(ns), std::string(dep), ceil_replicas(d)});
    }
  }
  return out;
}

// A Prometheus instant-query vector: one target per series (labels target, k8s_namespace,
// k8s_deployment; a series without `target` is the gateway's).
Result<std::vector<TargetRec>> parse_prometheus(const std::string& body) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc) != simdjson::SUCCESS) {
    return make_error(502, "api_error", "bad_json", "prometheus answered invalid JSON");
  }
  std::string_view status;
  if (doc["status"].get_string().get(status) != simdjson::SUCCESS || status != "success") {
    return make_error(502, "api_error", "query_failed", "prometheus query failed");
  }
  simdjson::dom::array result;
  if (doc["data"]["result"].get_array().get(result) != simdjson::SUCCESS || result.size() == 0) {
    return make_error(502, "api_error", "empty_result", "prometheus query returned no series");
  }
  std::vector<TargetRec> out;
  for (auto series : result) {
    std::string_view value;
    if (series["value"].at(1).get_string().get(value) != simdjson::SUCCESS) {
      return make_error(502, "api_error", "bad_json", "unexpected prometheus result shape");
    }
    char* end = nullptr;
    const std::string v(value);
    const double d = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || !std::isfinite(d)) {
      return make_error(502, "api_error", "bad_value", "prometheus value is not a number: " + v);
    }
    std::string_view name = "gateway", ns, dep;
    if (series["metric"]["target"].get_string().get(name) != simdjson::SUCCESS || name.empty()) {
      name = "gateway";
    }
    if (series["metric"]["k8s_namespace"].get_string().get(ns) != simdjson::SUCCESS) ns = {};
    if (series["metric"]["k8s_deployment"].get_string().get(dep) != simdjson::SUCCESS) dep = {};
    if (name != "gateway" && dep.empty()) continue;
    out.push_back({std::string(name), std::string(ns), std::string(dep), ceil_replicas(d)});
  }
  return out;
}

struct Scale {
  int spec = 0;
  int status = -1;  // status.replicas (pods running), -1 when absent
};

Result<Scale> parse_scale(const std::string& body) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc) != simdjson::SUCCESS) {
    return make_error(502, "api_error", "bad_json", "scale subresource is not JSON");
  }
  int64_t n = 0;
  Scale s;
  // A Deployment scaled to zero may omit spec.replicas.
  if (doc["spec"]["replicas"].get_int64().get(n) != simdjson::SUCCESS) n = 0;
  s.spec = static_cast<int>(n);
  if (doc["status"]["replicas"].get_int64().get(n) == simdjson::SUCCESS) {
    s.status = static_cast<int>(n);
  }
  return s;
}

std::string gateway_queue_url(const std::string& base) {
  auto u = http::parse_url(base);
  if (u && u->target == "/") {
    std::string s = base;
    while (!s.empty() && s.back() == '/') s.pop_back();
    return s + "/v1/metrics/queue";
  }
  return base;
}

std::string join_base(std::string base, std::string_view path) {
  while (!base.empty() && base.back() == '/') base.pop_back();
  return base + std::string(path);
}

struct Setup {
  std::string api;
  std::string ns;
};

std::string scale_url(const Setup& s, const std::string& ns, const std::string& deployment) {
  return join_base(s.api, "/apis/apps/v1/namespaces/" + http::url_encode(ns) + "/deployments/" +
                              http::url_encode(deployment) + "/scale");
}

Result<Setup> prepare(const AutoscaleOptions& o) {
  if (o.gateway_urls.empty() && o.prometheus_url.empty()) {
    return make_error(400, "invalid_request_error", "no_source",
                      "give at least one gateway URL or a Prometheus URL");
  }
  for (const auto& g : o.gateway_urls) {
    if (auto u = http::parse_url(g); !u) return u.error();
  }
  if (!o.prometheus_url.empty()) {
    if (auto u = http::parse_url(o.prometheus_url); !u) return u.error();
  }
  Setup s;
  s.api = o.api_server;
  if (s.api.empty()) {
    const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
    const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
    if (!host || !*host) {
      return make_error(400, "invalid_request_error", "no_api_server",
                        "no --api-server and KUBERNETES_SERVICE_HOST is not set");
    }
    const std::string h = host;
    s.api = "https://" + (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" +
            (port && *port ? port : "443");
  }
  if (auto u = http::parse_url(s.api); !u) return u.error();
  s.ns = o.namespace_name;
  if (s.ns.empty()) {
    auto ns = read_trimmed(o.namespace_file);
    if (!ns || ns->empty()) {
      return make_error(400, "invalid_request_error", "no_namespace",
                        "no --namespace and cannot read " + o.namespace_file);
    }
    s.ns = *ns;
  }
  if (o.deployment.empty() && !o.scale_upstreams) {
    return make_error(400, "invalid_request_error", "no_deployment",
                      "nothing to scale: no gateway deployment and upstreams off");
  }
  return s;
}

// What each source said, per target, for the decision lines.
struct SourceReport {
  std::string url;
  std::optional<std::vector<TargetRec>> targets;
  std::string error;
};

std::vector<SourceReport> ask_sources(const AutoscaleOptions& o,
                                      const std::map<std::string, int>& observed) {
  std::vector<SourceReport> out;
  std::string observed_header;
  for (const auto& [name, n] : observed) {
    if (!observed_header.empty()) observed_header += ",";
    observed_header += name + "=" + std::to_string(n);
  }
  std::string key;
  if (!o.gateway_key_file.empty()) key = read_trimmed(o.gateway_key_file).value_or("");
  bool any = false;
  for (const auto& g : o.gateway_urls) {
    SourceReport r;
    r.url = gateway_queue_url(g);
    http::FetchRequest req;
    req.url = r.url;
    req.timeout = o.timeout;
    req.headers = {{"Accept", "application/json"}};
    if (!key.empty()) req.headers.emplace_back("Authorization", "Bearer " + key);
    // The replica counts read from the scale subresource: the gateway turns its upstreams'
    // throughput into capacity per replica with them.
    if (!observed_header.empty())
      req.headers.emplace_back("X-Bellwether-Replicas", observed_header);
    auto resp = http::fetch(req);
    if (!resp) {
      r.error = resp.error().message;
    } else if (resp->status != 200) {
      r.error = "HTTP " + std::to_string(resp->status);
    } else if (auto t = parse_gateway(resp->body); !t) {
      r.error = t.error().message;
    } else {
      r.targets = std::move(*t);
      any = true;
    }
    out.push_back(std::move(r));
  }
  if (!any && !o.prometheus_url.empty()) {
    SourceReport r;
    r.url =
        join_base(o.prometheus_url, "/api/v1/query?query=") + http::url_encode(o.prometheus_query);
    http::FetchRequest req;
    req.url = r.url;
    req.timeout = o.timeout;
    auto resp = http::fetch(req);
    if (!resp) {
      r.error = resp.error().message;
    } else if (resp->status != 200) {
      r.error = "HTTP " + std::to_string(resp->status);
    } else if (auto t = parse_prometheus(resp->body); !t) {
      r.error = t.error().message;
    } else {
      r.targets = std::move(*t);
    }
    out.push_back(std::move(r));
  }
  return out;
}

// Scales one target; writes the decision into `w` and returns whether it succeeded. `running`
// receives the replicas the scale subresource reports.
bool scale_one(const AutoscaleOptions& o, const Setup& s, const TargetRec& t,
               const std::vector<SourceReport>& sources, JsonWriter& w, int& running) {
  std::optional<int> recommended;
  w.key("sources").begin_array();
  for (const auto& src : sources) {
    w.begin_object().key("url").value(src.url);
    if (!src.targets) {
      w.key("error").value(src.error);
    } else {
      std::optional<int> n;
      for (const auto& x : *src.targets) {
        if (x.name == t.name) n = std::max(n.value_or(0), x.replicas);
      }
      if (n) {
        w.key("replicas").value(*n);
        recommended = std::max(recommended.value_or(0), *n);
      } else {
        w.key("error").value("no recommendation for this target");
      }
    }
    w.end_object();
  }
  w.end_array();
  if (!recommended) {
    w.key("action").value("error").key("error").value("no source answered");
    return false;
  }
  const bool gateway = t.name == "gateway";
  // Upstream targets come clamped to their configured bounds by the gateway.
  const int desired =
      gateway ? std::clamp(*recommended, o.min_replicas, std::max(o.min_replicas, o.max_replicas))
              : std::clamp(*recommended, 1, std::max(1, o.max_upstream_replicas));
  w.key("recommended").value(*recommended).key("desired").value(desired);

  const auto token = read_trimmed(o.token_file);
  if (!token || token->empty()) {
    if (o.dry_run) {
      w.key("action").value("dry_run");
      return true;
    }
    w.key("action").value("error").key("error").value("cannot read token file " + o.token_file);
    return false;
  }
  const std::string auth = "Bearer " + *token;
  const std::string url = scale_url(s, t.ns.empty() ? s.ns : t.ns, t.deployment);

  http::FetchRequest get;
  get.url = url;
  get.ca_file = o.ca_file;
  get.timeout = o.timeout;
  get.headers = {{"Authorization", auth}, {"Accept", "application/json"}};
  auto cur = http::fetch(get);
  if (!cur || cur->status != 200) {
    w.key("action").value("error").key("error").value(
        !cur ? cur.error().message
             : "GET scale: HTTP " + std::to_string(cur->status) + " " + snippet(cur->body));
    return false;
  }
  auto current = parse_scale(cur->body);
  if (!current) {
    w.key("action").value("error").key("error").value(current.error().message);
    return false;
  }
  running = current->status >= 0 ? current->status : current->spec;
  w.key("current").value(current->spec);
  if (current->status >= 0) w.key("running").value(current->status);
  if (current->spec == desired) {
    w.key("action").value("none");
    return true;
  }
  if (o.dry_run) {
    w.key("action").value("dry_run");
    return true;
  }
  http::FetchRequest patch;
  patch.method = "PATCH";
  patch.url = url;
  patch.ca_file = o.ca_file;
  patch.timeout = o.timeout;
  patch.headers = {{"Authorization", auth},
                   {"Content-Type", "application/merge-patch+json"},
                   {"Accept", "application/json"}};
  patch.body = R"({"spec":{"replicas":)" + std::to_string(desired) + "}}";
  auto resp = http::fetch(patch);
  if (!resp || resp->status < 200 || resp->status >= 300) {
    w.key("action").value("error").key("error").value(
        !resp ? resp.error().message
              : "PATCH scale: HTTP " + std::to_string(resp->status) + " " + snippet(resp->body));
    return false;
  }
  w.key("action").value("patched");
  return true;
}

}  // namespace

int run_autoscale(const AutoscaleOptions& o) {
  std::ostream& log = o.log ? *o.log : std::cout;
  auto setup = prepare(o);
  if (!setup) {
    JsonWriter w;
    w.begin_object()
        .key("ts_ms")
        .value(SteadyClock::instance().unix_millis())
        .key("event")
        .value("autoscale_setup")
        .key("error")
        .value(setup.error().message)
        .end_object();
    log << w.str() << std::endl;
    return 2;
  }
  bool ok = true;
  std::map<std::string, int> observed;  // replicas running per target, told to the gateways
  for (int i = 0; o.iterations <= 0 || i < o.iterations; ++i) {
    if (i > 0 && o.interval > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(o.interval));
    const auto sources = ask_sources(o, observed);
    // The targets: the gateway's own Deployment, then every scalable deployment any source named.
    std::vector<TargetRec> targets;
    if (!o.deployment.empty()) targets.push_back({"gateway", setup->ns, o.deployment, 0});
    if (o.scale_upstreams) {
      for (const auto& src : sources) {
        if (!src.targets) continue;
        for (const auto& t : *src.targets) {
          if (t.name == "gateway") continue;
          const bool seen = std::any_of(targets.begin(), targets.end(),
                                        [&](const TargetRec& x) { return x.name == t.name; });
          if (!seen) targets.push_back(t);
        }
      }
    }
    ok = true;
    for (const auto& t : targets) {
      const std::string ns = t.ns.empty() ? setup->ns : t.ns;
      JsonWriter w;
      w.begin_object()
          .key("ts_ms")
          .value(SteadyClock::instance().unix_millis())
          .key("event")
          .value("autoscale_decision")
          .key("target")
          .value(t.name)
          .key("deployment")
          .value(ns + "/" + t.deployment)
          .key("dry_run")
          .value(o.dry_run);
      int running = -1;
      ok = scale_one(o, *setup, t, sources, w, running) && ok;
      if (running >= 0) observed[t.name] = running;
      w.end_object();
      log << w.str() << std::endl;  // one line per decision, flushed for log shippers
    }
  }
  return ok ? 0 : 1;
}

}  // namespace bw::telemetry
