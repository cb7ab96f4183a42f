// The access log's line: one JSON object per request, every field under its documented name.
#include "gateway/access_log.h"

#include <gtest/gtest.h>
#include <simdjson.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace bw::gateway {
namespace {

std::string temp_path() {
  char tmpl[] = "/tmp/bw-access-log-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  EXPECT_GE(fd, 0);
  ::close(fd);
  return tmpl;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(AccessLog, OffIsDisabled) {
  AccessLog off("off");
  EXPECT_FALSE(off.enabled());
  off.log(AccessRecord{});  // nothing to write to: a no-op
}

TEST(AccessLog, OneJsonLinePerRecordWithEveryField) {
  const std::string path = temp_path();
  {
    AccessLog log(path);
    ASSERT_TRUE(log.enabled());
    AccessRecord r;
    r.request_id = "req_1";
    r.key_id = "team \"a\"";  // escaped in the value
    r.method = "POST";
    r.path = "/v1/chat/completions";
    r.client_ip = "10.0.0.1";
    r.model_requested = "gpt";
    r.model_served = "gpt-mini";
    r.upstream = "openai-1";
    r.status = 200;
    r.stream = true;
    r.latency_ms = 12.5;
    r.ttft_ms = 3.25;
    r.queue_ms = 1;
    r.wait_reason = "concurrency";
    r.prompt_tokens = 11;
    r.completion_tokens = 22;
    r.cost_micro_usd = 1500;
    r.attempts = 2;
    r.bytes_in = 100;
    r.bytes_out = 200;
    r.cache = "hit";
    r.cache_age_s = 7;
    r.cache_saved_micro_usd = 250;
    r.cache_similarity = 0.5;
    r.cached_tokens = 4;
    r.priority = 1;
    r.priority_lowered = true;
    r.cancelled = true;
    r.error_code = "upstream_502";
    r.trace_id = "0af7651916cd43dd8448eb211c80319c";
    r.span_id = "b7ad6b7169203331";
    log.log(r);
    AccessRecord minimal;
    minimal.request_id = "req_2";
    log.log(minimal);
  }
  const std::string text = read_all(path);
  ::unlink(path.c_str());
  const auto nl = text.find('\n');
  ASSERT_NE(nl, std::string::npos) << text;
  ASSERT_EQ(text.find('\n', nl + 1), text.size() - 1) << text;

  simdjson::dom::parser parser;
  simdjson::dom::element line;
  ASSERT_EQ(parser.parse(text.substr(0, nl)).get(line), simdjson::SUCCESS) << text;
  auto str = [&](const char* k) {
    std::string_view v;
    EXPECT_EQ(line[k].get(v), simdjson::SUCCESS) << k;
    return std::string(v);
  };
  auto num = [&](const char* k) {
    double v = -1;
    simdjson::dom::element e;
    EXPECT_EQ(line[k].get(e), simdjson::SUCCESS) << k;
    if (e.is_int64()) return static_cast<double>(e.get_int64().value_unsafe());
    if (e.is_uint64()) return static_cast<double>(e.get_uint64().value_unsafe());
    EXPECT_EQ(e.get(v), simdjson::SUCCESS) << k;
    return v;
  };
  auto boolean = [&](const char* k) {
    bool v = false;
    EXPECT_EQ(line[k].get(v), simdjson::SUCCESS) << k;
    return v;
  };
  EXPECT_GT(num("ts_ms"), 0);
  EXPECT_EQ(str("request_id"), "req_1");
  EXPECT_EQ(str("key_id"), "team \"a\"");
  EXPECT_EQ(str("client_ip"), "10.0.0.1");
  EXPECT_EQ(str("method"), "POST");
  EXPECT_EQ(str("path"), "/v1/chat/completions");
  EXPECT_EQ(str("model"), "gpt");
  EXPECT_EQ(str("model_served"), "gpt-mini");
  EXPECT_EQ(str("upstream"), "openai-1");
  EXPECT_EQ(num("status"), 200);
  EXPECT_TRUE(boolean("stream"));
  EXPECT_EQ(num("latency_ms"), 12.5);
  EXPECT_EQ(num("ttft_ms"), 3.25);
  EXPECT_EQ(num("queue_ms"), 1);
  EXPECT_EQ(str("wait_reason"), "concurrency");
  EXPECT_EQ(num("prompt_tokens"), 11);
  EXPECT_EQ(num("completion_tokens"), 22);
  EXPECT_EQ(num("cost_usd"), 0.0015);
  EXPECT_EQ(num("attempts"), 2);
  EXPECT_EQ(num("bytes_in"), 100);
  EXPECT_EQ(num("bytes_out"), 200);
  EXPECT_EQ(str("cache"), "hit");
  EXPECT_EQ(num("cache_age_s"), 7);
  EXPECT_EQ(num("cache_saved_usd"), 0.00025);
  EXPECT_EQ(num("cache_similarity"), 0.5);
  EXPECT_EQ(num("cached_tokens"), 4);
  EXPECT_EQ(num("priority"), 1);
  EXPECT_TRUE(boolean("priority_lowered"));
  EXPECT_TRUE(boolean("cancelled"));
  EXPECT_EQ(str("error"), "upstream_502");
  EXPECT_EQ(str("trace_id"), "0af7651916cd43dd8448eb211c80319c");
  EXPECT_EQ(str("span_id"), "b7ad6b7169203331");

  // The optional fields are left out when they do not apply.
  ASSERT_EQ(parser.parse(text.substr(nl + 1, text.size() - nl - 2)).get(line), simdjson::SUCCESS);
  simdjson::dom::object fields;
  ASSERT_EQ(line.get(fields), simdjson::SUCCESS);
  std::string keys;
  for (auto f : fields) keys += std::string(f.key) + ",";
  EXPECT_EQ(keys,
            "ts_ms,request_id,key_id,client_ip,method,path,model,model_served,upstream,status,"
            "stream,latency_ms,queue_ms,prompt_tokens,completion_tokens,cost_usd,attempts,"
            "bytes_in,bytes_out,");
}

// Times keep six significant digits, money is exact to the micro-dollar; neither has an
// exponent.
TEST(AccessLog, NumbersInDecimalNotation) {
  const std::string path = temp_path();
  {
    AccessLog log(path);
    AccessRecord r;
    r.request_id = "req_n";
    r.latency_ms = 1234.5678;
    r.ttft_ms = 0.000012;
    r.queue_ms = 0;
    r.cost_micro_usd = 1'234'567;
    r.cache_saved_micro_usd = 12;
    log.log(r);
  }
  const std::string text = read_all(path);
  ::unlink(path.c_str());
  EXPECT_NE(text.find("\"latency_ms\":1234.57,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"ttft_ms\":0.000012,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"queue_ms\":0,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"cost_usd\":1.234567,"), std::string::npos) << text;
  EXPECT_NE(text.find("\"cache_saved_usd\":0.000012"), std::string::npos) << text;
}

}  // namespace
}  // namespace bw::gateway
