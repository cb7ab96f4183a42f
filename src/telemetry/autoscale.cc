#include "telemetry/autoscale.h"

#include <simdjson.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
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

// recommended_replicas from a gateway's /v1/metrics/queue body.
Result<int> parse_gateway(const std::string& body) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc) != simdjson::SUCCESS) {
    return make_error(502, "api_error", "bad_json", "gateway answered invalid JSON");
  }
  int64_t n = 0;
  if (doc["recommended_replicas"].get_int64().get(n) != simdjson::SUCCESS) {
    double d = 0;
    if (doc["recommended_replicas"].get_double().get(d) != simdjson::SUCCESS) {
      return make_error(502, "api_error", "bad_json", "no recommended_replicas in gateway answer");
    }
    n = static_cast<int64_t>(std::ceil(d));
  }
  return static_cast<int>(std::clamp<int64_t>(n, 0, 1'000'000));
}

// First sample of a Prometheus instant-query vector: data.result[0].value[1] (a string).
Result<int> parse_prometheus(const std::string& body) {
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
  std::string_view value;
  if (result.at(0)["value"].at(1).get_string().get(value) != simdjson::SUCCESS) {
    return make_error(502, "api_error", "bad_json", "unexpected prometheus result shape");
  }
  char* end = nullptr;
  const std::string v(value);
  const double d = std::strtod(v.c_str(), &end);
  if (end == v.c_str() || !std::isfinite(d)) {
    return make_error(502, "api_error", "bad_value", "prometheus value is not a number: " + v);
  }
  return static_cast<int>(std::clamp(std::ceil(d), 0.0, 1e6));
}

Result<int> parse_scale(const std::string& body) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc) != simdjson::SUCCESS) {
    return make_error(502, "api_error", "bad_json", "scale subresource is not JSON");
  }
  int64_t n = 0;
  // A Deployment scaled to zero may omit spec.replicas.
  if (doc["spec"]["replicas"].get_int64().get(n) != simdjson::SUCCESS) n = 0;
  return static_cast<int>(n);
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
  std::string scale_url;
};

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
  if (o.deployment.empty()) {
    return make_error(400, "invalid_request_error", "no_deployment", "deployment name is empty");
  }
  s.scale_url = join_base(s.api, "/apis/apps/v1/namespaces/" + http::url_encode(s.ns) +
                                     "/deployments/" + http::url_encode(o.deployment) + "/scale");
  return s;
}

// One iteration; writes the decision into `w` and returns whether it succeeded.
bool iterate(const AutoscaleOptions& o, const Setup& s, JsonWriter& w) {
  const auto timeout = o.timeout;
  std::optional<int> recommended;
  w.key("sources").begin_array();
  const auto record = [&](const std::string& url, const Result<int>& r) {
    w.begin_object().key("url").value(url);
    if (r) {
      w.key("replicas").value(*r);
      recommended = std::max(recommended.value_or(0), *r);
    } else {
      w.key("error").value(r.error().message);
    }
    w.end_object();
  };
  for (const auto& g : o.gateway_urls) {
    const std::string url = gateway_queue_url(g);
    http::FetchRequest req;
    req.url = url;
    req.timeout = timeout;
    req.headers = {{"Accept", "application/json"}};
    auto resp = http::fetch(req);
    if (!resp) {
      record(url, resp.error());
    } else if (resp->status != 200) {
      record(url,
             make_error(502, "api_error", "bad_status", "HTTP " + std::to_string(resp->status)));
    } else {
      record(url, parse_gateway(resp->body));
    }
  }
  if (!recommended && !o.prometheus_url.empty()) {
    const std::string url =
        join_base(o.prometheus_url, "/api/v1/query?query=") + http::url_encode(o.prometheus_query);
    http::FetchRequest req;
    req.url = url;
    req.timeout = timeout;
    auto resp = http::fetch(req);
    if (!resp) {
      record(url, resp.error());
    } else if (resp->status != 200) {
      record(url,
             make_error(502, "api_error", "bad_status", "HTTP " + std::to_string(resp->status)));
    } else {
      record(url, parse_prometheus(resp->body));
    }
  }
  w.end_array();

  if (!recommended) {
    w.key("action").value("error").key("error").value("no source answered");
    return false;
  }
  const int desired =
      std::clamp(*recommended, o.min_replicas, std::max(o.min_replicas, o.max_replicas));
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

  http::FetchRequest get;
  get.url = s.scale_url;
  get.ca_file = o.ca_file;
  get.timeout = timeout;
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
  w.key("current").value(*current);
  if (*current == desired) {
    w.key("action").value("none");
    return true;
  }
  if (o.dry_run) {
    w.key("action").value("dry_run");
    return true;
  }
  http::FetchRequest patch;
  patch.method = "PATCH";
  patch.url = s.scale_url;
  patch.ca_file = o.ca_file;
  patch.timeout = timeout;
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
  for (int i = 0; o.iterations <= 0 || i < o.iterations; ++i) {
    if (i > 0 && o.interval > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(o.interval));
    JsonWriter w;
    w.begin_object()
        .key("ts_ms")
        .value(SteadyClock::instance().unix_millis())
        .key("event")
        .value("autoscale_decision")
        .key("deployment")
        .value(setup->ns + "/" + o.deployment)
        .key("dry_run")
        .value(o.dry_run);
    ok = iterate(o, *setup, w);
    w.end_object();
    log << w.str() << std::endl;  // one line per decision, flushed for log shippers
  }
  return ok ? 0 : 1;
}

}  // namespace bw::telemetry
