// Tracing through real processes: the gateway exports OTLP/JSON to a receiver in this test, which
// checks the payload field by field; a recording upstream in the test sees the traceparent the
// gateway propagates; the simulator provides retries and fallbacks.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <simdjson.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "harness.h"

namespace bw::test {
namespace {

using std::chrono::milliseconds;
constexpr const char* kKey = "sk-test-tracing-0001";
constexpr const char* kClientTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
constexpr const char* kClientSpan = "00f067aa0ba902b7";

struct Received {
  std::string method, path, body;
  std::map<std::string, std::string> headers;  // lower-case names
};

// A small threaded HTTP/1.1 server (keep-alive, Content-Length bodies) whose answers come from a
// callback; every request is recorded.
class TestServer {
 public:
  using Handler = std::function<std::pair<int, std::string>(const Received&)>;
  explicit TestServer(Handler h) : handler_(std::move(h)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 64);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    accept_ = std::thread([this] { accept_loop(); });
  }
  ~TestServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    accept_.join();
    std::lock_guard lk(mu_);
    for (auto& t : conns_) t.join();
  }
  int port() const { return port_; }
  std::vector<Received> received() {
    std::lock_guard lk(mu_);
    return received_;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      std::lock_guard lk(mu_);
      conns_.emplace_back([this, c] { serve(c); });
    }
  }
  void serve(int c) {
    std::string buf;
    char tmp[65536];
    for (;;) {
      auto head_end = buf.find("\r\n\r\n");
      while (head_end == std::string::npos) {
        pollfd p{c, POLLIN, 0};
        if (stop_ || ::poll(&p, 1, 200) < 0) return close_fd(c);
        if (!(p.revents & POLLIN)) {
          if (stop_) return close_fd(c);
          continue;
        }
        auto n = ::recv(c, tmp, sizeof tmp, 0);
        if (n <= 0) return close_fd(c);
        buf.append(tmp, static_cast<std::size_t>(n));
        head_end = buf.find("\r\n\r\n");
      }
      Received r;
      std::string head = buf.substr(0, head_end);
      auto line_end = head.find("\r\n");
      std::string first = head.substr(0, line_end);
      r.method = first.substr(0, first.find(' '));
      r.path = first.substr(first.find(' ') + 1, first.rfind(' ') - first.find(' ') - 1);
      std::size_t pos = line_end + 2;
      while (pos < head.size()) {
        auto e = head.find("\r\n", pos);
        if (e == std::string::npos) e = head.size();
        auto line = head.substr(pos, e - pos);
        auto colon = line.find(':');
        if (colon != std::string::npos) {
          std::string k = line.substr(0, colon);
          for (auto& ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
          auto v = line.substr(colon + 1);
          while (!v.empty() && v.front() == ' ') v.erase(0, 1);
          r.headers[k] = v;
        }
        pos = e + 2;
      }
      std::size_t len =
          r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
      while (buf.size() < head_end + 4 + len) {
        auto n = ::recv(c, tmp, sizeof tmp, 0);
        if (n <= 0) return close_fd(c);
        buf.append(tmp, static_cast<std::size_t>(n));
      }
      r.body = buf.substr(head_end + 4, len);
      buf.erase(0, head_end + 4 + len);
      auto [status, body] = handler_(r);
      {
        std::lock_guard lk(mu_);
        received_.push_back(r);
      }
      std::string out =
          "HTTP/1.1 " + std::to_string(status) +
          " X\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
          "\r\n\r\n" + body;
      if (::send(c, out.data(), out.size(), MSG_NOSIGNAL) < 0) return close_fd(c);
    }
  }
  static void close_fd(int c) { ::close(c); }

  Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread accept_;
  std::mutex mu_;
  std::vector<std::thread> conns_;
  std::vector<Received> received_;
};

// An OpenAI-style upstream that answers every chat completion the same way; the first
// `fail_first` requests get a 503 (retried by default).
std::pair<int, std::string> completion(int& fail_first, std::mutex& mu) {
  {
    std::lock_guard lk(mu);
    if (fail_first > 0) {
      --fail_first;
      return {503, R"({"error":{"message":"overloaded","type":"server_error"}})"};
    }
  }
  return {
      200,
      R"({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"up-model-2025",)"
      R"("choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital."},)"
      R"("finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16}})"};
}

struct SpanView {
  std::string trace_id, span_id, parent, name;
  int kind = 0, status = 0;
  std::map<std::string, std::string> attrs;  // scalar values as text; arrays joined by ','
};

// Parses every received OTLP/JSON body, checking the structure field by field.
std::vector<SpanView> spans_of(const std::vector<Received>& bodies) {
  std::vector<SpanView> out;
  simdjson::dom::parser parser;
  for (const auto& r : bodies) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.path, "/v1/traces");
    EXPECT_NE(r.headers.at("content-type").find("application/json"), std::string::npos);
    simdjson::dom::element doc;
    EXPECT_EQ(parser.parse(r.body).get(doc), simdjson::SUCCESS) << r.body;
    for (auto rs : doc["resourceSpans"].get_array()) {
      bool has_service = false;
      for (auto a : rs["resource"]["attributes"].get_array()) {
        if (std::string_view(a["key"]) == "service.name") has_service = true;
      }
      EXPECT_TRUE(has_service);
      for (auto ss : rs["scopeSpans"].get_array()) {
        EXPECT_EQ(std::string_view(ss["scope"]["name"]), "bellwether");
        for (auto s : ss["spans"].get_array()) {
          SpanView v;
          v.trace_id = std::string(std::string_view(s["traceId"]));
          v.span_id = std::string(std::string_view(s["spanId"]));
          std::string_view parent;
          if (s["parentSpanId"].get(parent) == simdjson::SUCCESS) v.parent = std::string(parent);
          v.name = std::string(std::string_view(s["name"]));
          v.kind = static_cast<int>(std::int64_t(s["kind"]));
          v.status = static_cast<int>(std::int64_t(s["status"]["code"]));
          EXPECT_EQ(v.trace_id.size(), 32u);
          EXPECT_EQ(v.span_id.size(), 16u);
          std::uint64_t start = std::stoull(std::string(std::string_view(s["startTimeUnixNano"])));
          std::uint64_t end = std::stoull(std::string(std::string_view(s["endTimeUnixNano"])));
          EXPECT_GE(end, start);
          EXPECT_GT(start, 1'600'000'000'000'000'000ull);  // Unix nanoseconds
          for (auto a : s["attributes"].get_array()) {
            std::string key{std::string_view(a["key"])};
            auto val = a["value"];
            std::string_view sv;
            bool b = false;
            double d = 0;
            simdjson::dom::array arr;
            if (val["stringValue"].get(sv) == simdjson::SUCCESS) {
              v.attrs[key] = std::string(sv);
            } else if (val["intValue"].get(sv) == simdjson::SUCCESS) {
              v.attrs[key] = std::string(sv);  // int64 is a decimal string in OTLP/JSON
            } else if (val["boolValue"].get(b) == simdjson::SUCCESS) {
              v.attrs[key] = b ? "true" : "false";
            } else if (val["doubleValue"].get(d) == simdjson::SUCCESS) {
              v.attrs[key] = std::to_string(d);
            } else if (val["arrayValue"]["values"].get(arr) == simdjson::SUCCESS) {
              std::string joined;
              for (auto e : arr) {
                if (!joined.empty()) joined += ',';
                joined += std::string(std::string_view(e["stringValue"]));
              }
              v.attrs[key] = joined;
            } else {
              ADD_FAILURE() << "attribute " << key << " has no OTLP value";
            }
          }
          out.push_back(std::move(v));
        }
      }
    }
  }
  return out;
}

std::vector<SpanView> wait_spans(TestServer& collector, std::size_t at_least,
                                 milliseconds timeout = milliseconds(8000)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  std::vector<SpanView> spans;
  do {
    spans = spans_of(collector.received());
    if (spans.size() >= at_least) break;
    std::this_thread::sleep_for(milliseconds(50));
  } while (std::chrono::steady_clock::now() < until);
  return spans;
}

std::string tracing_yaml(int collector_port, const std::string& extra = "") {
  return "  endpoint: http://127.0.0.1:" + std::to_string(collector_port) +
         "/v1/traces\n  flush_interval: 100ms\n" + extra;
}

std::string gateway_yaml(int upstream_port, const std::string& tracing,
                         const std::string& more_groups = "") {
  return "workers: 1\nkeys:\n  - {name: tracer, key: " + std::string(kKey) +
         "}\nproviders:\n  up: {base_url: \"http://127.0.0.1:" + std::to_string(upstream_port) +
         "/v1\"}\nmodel_groups:\n  gpt-4.1:\n    deployments: [{id: up-0, provider: up, model: "
         "up-model}, {id: up-1, provider: up, model: up-model}]\n" +
         more_groups +
         "resilience:\n  retry: {max_attempts: 3, base: 10ms, cap: 20ms, deadline: 10s}\n"
         "tracing:\n" +
         tracing;
}

const SpanView* find_span(const std::vector<SpanView>& spans, const std::string& name_prefix) {
  for (const auto& s : spans) {
    if (s.name.rfind(name_prefix, 0) == 0) return &s;
  }
  return nullptr;
}

TEST(Tracing, ContinuesTheClientsTraceAndPropagatesItUpstream) {
  std::mutex mu;
  int fail_first = 1;  // one retry, on the group's other deployment
  TestServer upstream([&](const Received&) { return completion(fail_first, mu); });
  TestServer collector([](const Received&) { return std::pair<int, std::string>{200, "{}"}; });
  Gw gw = start_gateway(gateway_yaml(upstream.port(), tracing_yaml(collector.port())));

  const std::string tp = std::string("00-") + kClientTrace + "-" + kClientSpan + "-01";
  auto r = post_json(
      gw.port, "/v1/chat/completions",
      R"({"model":"gpt-4.1","max_tokens":20,"messages":[{"role":"user","content":"What is the capital of France? SECRET-PROMPT"}]})",
      kKey, {{"traceparent", tp}, {"tracestate", "vendor=abc"}});
  ASSERT_EQ(r.status, 200) << r.body;

  auto spans = wait_spans(collector, 3);
  const SpanView* root = nullptr;
  for (const auto& s : spans) {
    if (s.parent == kClientSpan) root = &s;
  }
  ASSERT_NE(root, nullptr) << "no span has the client's span as parent";
  EXPECT_EQ(root->trace_id, kClientTrace);
  EXPECT_EQ(root->kind, 2);  // SERVER
  EXPECT_EQ(root->name, "chat gpt-4.1");
  EXPECT_EQ(root->attrs.at("gen_ai.operation.name"), "chat");
  EXPECT_EQ(root->attrs.at("gen_ai.request.model"), "gpt-4.1");
  EXPECT_EQ(root->attrs.at("gen_ai.response.model"), "up-model-2025");
  EXPECT_EQ(root->attrs.at("gen_ai.usage.input_tokens"), "11");
  EXPECT_EQ(root->attrs.at("gen_ai.usage.output_tokens"), "5");
  EXPECT_EQ(root->attrs.at("gen_ai.request.max_tokens"), "20");
  EXPECT_EQ(root->attrs.at("gen_ai.response.finish_reasons"), "stop");
  EXPECT_EQ(root->attrs.at("bellwether.key_id"), "tracer");
  EXPECT_EQ(root->attrs.at("bellwether.priority"), "p1");
  EXPECT_EQ(root->attrs.at("http.response.status_code"), "200");
  EXPECT_TRUE(root->attrs.count("bellwether.cost_usd"));
  EXPECT_EQ(root->attrs.count("bellwether.fallback_from"), 0u);

  // Two attempts (a 500, then a 200), each a CLIENT child span of the request.
  std::vector<const SpanView*> attempts;
  for (const auto& s : spans) {
    if (s.kind == 3) attempts.push_back(&s);
  }
  ASSERT_EQ(attempts.size(), 2u);
  for (const auto* a : attempts) {
    EXPECT_EQ(a->trace_id, kClientTrace);
    EXPECT_EQ(a->parent, root->span_id);
    EXPECT_EQ(a->name, "chat up-model");
    EXPECT_EQ(a->attrs.at("gen_ai.provider.name"), "openai");
    EXPECT_EQ(a->attrs.at("gen_ai.request.model"), "up-model");
    EXPECT_EQ(a->attrs.at("bellwether.fallback"), "false");
  }
  EXPECT_NE(attempts[0]->attrs.at("bellwether.deployment"),
            attempts[1]->attrs.at("bellwether.deployment"))
      << "the retry goes to the other deployment";
  std::map<std::string, const SpanView*> by_attempt;
  for (const auto* a : attempts) by_attempt[a->attrs.at("bellwether.attempt")] = a;
  ASSERT_TRUE(by_attempt.count("1") && by_attempt.count("2"));
  EXPECT_EQ(by_attempt["1"]->attrs.at("http.response.status_code"), "503");
  EXPECT_EQ(by_attempt["1"]->status, 2);  // ERROR
  EXPECT_EQ(by_attempt["2"]->attrs.at("http.response.status_code"), "200");

  // The upstream saw the same trace, with each attempt's own span as the parent.
  auto got = upstream.received();
  ASSERT_EQ(got.size(), 2u);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const auto& h = got[i].headers;
    ASSERT_TRUE(h.count("traceparent"));
    const std::string& up_tp = h.at("traceparent");
    EXPECT_EQ(up_tp.substr(3, 32), kClientTrace);
    EXPECT_EQ(up_tp.substr(36, 16), by_attempt[std::to_string(i + 1)]->span_id);
    EXPECT_EQ(up_tp.substr(53), "01");
    EXPECT_EQ(h.count("tracestate") ? h.at("tracestate") : "", "vendor=abc");
  }

  // Prompts and completions are not exported by default.
  for (const auto& b : collector.received()) {
    EXPECT_EQ(b.body.find("SECRET-PROMPT"), std::string::npos);
    EXPECT_EQ(b.body.find("Paris is the capital"), std::string::npos);
    EXPECT_EQ(b.body.find(kKey), std::string::npos);
  }

  // The access log line carries the trace and the request's span.
  std::string log;
  for (int i = 0; i < 400 && log.find(kClientTrace) == std::string::npos; ++i) {  // 20 s
    std::this_thread::sleep_for(milliseconds(50));
    log = read_file(gw.access_log);
  }
  EXPECT_NE(log.find(std::string("\"trace_id\":\"") + kClientTrace + "\""), std::string::npos)
      << log;
  EXPECT_NE(log.find("\"span_id\":\"" + root->span_id + "\""), std::string::npos) << log;
}

TEST(Tracing, AtRatioZeroOnlyFailedRequestsAreExported) {
  std::mutex mu;
  int always_fail = 1 << 30;
  int never_fail = 0;
  TestServer down([&](const Received&) { return completion(always_fail, mu); });
  TestServer up([&](const Received&) { return completion(never_fail, mu); });
  TestServer collector([](const Received&) { return std::pair<int, std::string>{200, "{}"}; });
  // Ratio 0: only failed or slow requests are kept.
  const std::string groups =
      "  spare:\n    deployments: [{id: spare-0, provider: up2, model: s}]\n";
  std::string yaml =
      "workers: 1\nkeys:\n  - {name: tracer, key: " + std::string(kKey) +
      "}\nproviders:\n  up: {base_url: \"http://127.0.0.1:" + std::to_string(down.port()) +
      "/v1\"}\n  up2: {base_url: \"http://127.0.0.1:" + std::to_string(up.port()) +
      "/v1\"}\nmodel_groups:\n  gpt-4.1:\n    deployments: [{id: up-0, provider: "
      "up, model: up-model}]\n    fallbacks: [spare]\n" +
      groups +
      "resilience:\n  retry: {max_attempts: 2, base: 10ms, cap: 20ms, deadline: "
      "10s}\ntracing:\n" +
      tracing_yaml(collector.port(), "  sampler: ratio\n  ratio: 0\n");
  Gw gw = start_gateway(yaml);

  // A successful request through the fallback at ratio 0 is not exported...
  auto ok = post_json(gw.port, "/v1/chat/completions", chat_body("gpt-4.1", false, 5), kKey);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(ok.header("x-bellwether-fallback-from"), "gpt-4.1");
  // ...but a failed one is (always_sample_errors defaults to true).
  auto bad = post_json(gw.port, "/v1/chat/completions", chat_body("nope", false, 5), kKey);
  EXPECT_EQ(bad.status, 404);
  EXPECT_NE(bad.body.find(bad.header("x-request-id")), std::string::npos)
      << "the error body carries the request id: " << bad.body;
  auto spans = wait_spans(collector, 1);
  ASSERT_FALSE(spans.empty());
  for (const auto& s : spans) {
    EXPECT_EQ(s.attrs.count("bellwether.fallback_from"), 0u) << "the sampled-out success leaked";
  }
  const SpanView* err = find_span(spans, "chat nope");
  ASSERT_NE(err, nullptr);
  EXPECT_EQ(err->status, 0) << "a 4xx leaves a SERVER span's status unset";
  EXPECT_EQ(err->attrs.at("http.response.status_code"), "404");
  EXPECT_EQ(err->attrs.at("error.type"), "model_not_found");
}

TEST(Tracing, FallbackSpansCarryTheirGroup) {
  std::mutex mu;
  int always_fail = 1 << 30;
  int never_fail = 0;
  TestServer down([&](const Received&) { return completion(always_fail, mu); });
  TestServer up([&](const Received&) { return completion(never_fail, mu); });
  TestServer collector([](const Received&) { return std::pair<int, std::string>{200, "{}"}; });
  std::string yaml =
      "workers: 1\nkeys:\n  - {name: tracer, key: " + std::string(kKey) +
      "}\nproviders:\n  up: {base_url: \"http://127.0.0.1:" + std::to_string(down.port()) +
      "/v1\"}\n  up2: {base_url: \"http://127.0.0.1:" + std::to_string(up.port()) +
      "/v1\"}\nmodel_groups:\n  gpt-4.1:\n    deployments: [{id: up-0, provider: "
      "up, model: up-model}]\n    fallbacks: [spare]\n  spare:\n    deployments: "
      "[{id: spare-0, provider: up2, model: s}]\n"
      "resilience:\n  retry: {max_attempts: 2, base: 10ms, cap: 20ms, deadline: "
      "10s}\ntracing:\n" +
      tracing_yaml(collector.port());
  Gw gw = start_gateway(yaml);
  auto ok = post_json(gw.port, "/v1/chat/completions", chat_body("gpt-4.1", false, 5), kKey);
  ASSERT_EQ(ok.status, 200) << ok.body;
  auto spans = wait_spans(collector, 3);
  const SpanView* root = find_span(spans, "chat gpt-4.1");
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(root->attrs.at("bellwether.fallback_from"), "gpt-4.1");
  EXPECT_EQ(root->attrs.at("bellwether.model_group"), "spare");
  int primary = 0, fallback = 0;
  for (const auto& s : spans) {
    if (s.kind != 3) continue;
    EXPECT_EQ(s.parent, root->span_id);
    if (s.attrs.at("bellwether.deployment") == "up-0") ++primary;
    if (s.attrs.at("bellwether.deployment") == "spare-0") {
      ++fallback;
      EXPECT_EQ(s.attrs.at("bellwether.fallback"), "true");
    }
  }
  EXPECT_GE(primary, 1);
  EXPECT_EQ(fallback, 1);
}

TEST(Tracing, TheCacheLookupIsASpanWithItsOutcome) {
  std::mutex mu;
  int never_fail = 0;
  TestServer up([&](const Received&) { return completion(never_fail, mu); });
  TestServer collector([](const Received&) { return std::pair<int, std::string>{200, "{}"}; });
  std::string yaml = gateway_yaml(up.port(), tracing_yaml(collector.port()));
  yaml.replace(yaml.find("model: up-model}]\n") + std::string("model: up-model}]\n").size(), 0,
               "    cache: {mode: exact, ttl: 10m}\n");
  Gw gw = start_gateway(yaml);
  const std::string body = chat_body("gpt-4.1", false, 5);
  ASSERT_EQ(post_json(gw.port, "/v1/chat/completions", body, kKey).status, 200);
  auto hit = post_json(gw.port, "/v1/chat/completions", body, kKey);
  ASSERT_EQ(hit.status, 200) << hit.body;
  ASSERT_EQ(hit.header("x-bellwether-cache").rfind("hit", 0), 0u)
      << hit.header("x-bellwether-cache");
  // Two requests: each a root, a cache span; the miss has one attempt too.
  auto spans = wait_spans(collector, 5);
  int roots_miss = 0, roots_hit = 0, cache_miss = 0, cache_hit = 0;
  for (const auto& s : spans) {
    auto it = s.attrs.find("bellwether.cache");
    if (it == s.attrs.end()) continue;
    const bool is_cache_span = s.name == "bellwether.cache";
    if (it->second == "miss") ++(is_cache_span ? cache_miss : roots_miss);
    if (it->second == "hit") ++(is_cache_span ? cache_hit : roots_hit);
  }
  EXPECT_EQ(roots_miss, 1);
  EXPECT_EQ(roots_hit, 1);
  EXPECT_EQ(cache_miss, 1);
  EXPECT_EQ(cache_hit, 1);
}

TEST(Tracing, ContentIsExportedOnlyWhenAskedAndBounded) {
  std::mutex mu;
  int never_fail = 0;
  TestServer upstream([&](const Received&) { return completion(never_fail, mu); });
  TestServer collector([](const Received&) { return std::pair<int, std::string>{200, "{}"}; });
  Gw gw = start_gateway(gateway_yaml(
      upstream.port(),
      tracing_yaml(collector.port(), "  capture_content: true\n  max_content_bytes: 200\n")));
  std::string long_prompt = "SECRET-PROMPT " + std::string(500, 'x');
  auto r = post_json(
      gw.port, "/v1/chat/completions",
      R"({"model":"gpt-4.1","messages":[{"role":"user","content":")" + long_prompt + R"("}]})",
      kKey);
  ASSERT_EQ(r.status, 200) << r.body;
  auto spans = wait_spans(collector, 2);
  const SpanView* root = find_span(spans, "chat gpt-4.1");
  ASSERT_NE(root, nullptr);
  ASSERT_TRUE(root->attrs.count("gen_ai.input.messages"));
  EXPECT_NE(root->attrs.at("gen_ai.input.messages").find("SECRET-PROMPT"), std::string::npos);
  EXPECT_LE(root->attrs.at("gen_ai.input.messages").size(), 200u + 3u);
  ASSERT_TRUE(root->attrs.count("gen_ai.output.messages"));
  EXPECT_NE(root->attrs.at("gen_ai.output.messages").find("Paris"), std::string::npos);
}

TEST(Tracing, ADownCollectorNeverFailsARequestAndCountsDroppedSpans) {
  std::mutex mu;
  int never_fail = 0;
  TestServer upstream([&](const Received&) { return completion(never_fail, mu); });
  int dead_port = free_port();  // nothing listens here
  Gw gw = start_gateway(gateway_yaml(upstream.port(), tracing_yaml(dead_port)));
  for (int i = 0; i < 20; ++i) {
    auto r = post_json(gw.port, "/v1/chat/completions", chat_body("gpt-4.1", false, 5), kKey);
    ASSERT_EQ(r.status, 200) << r.body;
  }
  double dropped = 0;
  for (int i = 0; i < 400 && dropped < 20; ++i) {  // 20 s
    std::this_thread::sleep_for(milliseconds(50));
    auto m = request(gw.port, "GET", "/metrics");
    auto p = m.body.find("bellwether_trace_spans_dropped_total{reason=\"export_failed\"}");
    if (p != std::string::npos)
      dropped = std::strtod(m.body.c_str() + m.body.find(' ', p), nullptr);
  }
  EXPECT_GE(dropped, 20.0) << "each request's spans are counted as dropped";
}

}  // namespace
}  // namespace bw::test
