#include "telemetry/tracing.h"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "telemetry/trace_exporter.h"

namespace bw::telemetry {
namespace {

constexpr const char* kParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceContext, ParsesAndFormatsW3cTraceparent) {
  auto ctx = parse_traceparent(kParent);
  ASSERT_TRUE(ctx);
  EXPECT_EQ(to_hex(ctx->trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(to_hex(ctx->parent_span_id), "00f067aa0ba902b7");
  EXPECT_TRUE(ctx->sampled);
  EXPECT_EQ(format_traceparent(ctx->trace_id, ctx->parent_span_id, true), kParent);
  auto unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  ASSERT_TRUE(unsampled);
  EXPECT_FALSE(unsampled->sampled);
}

TEST(TraceContext, RefusesInvalidTraceparents) {
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",       // no flags
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",    // upper case
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero parent id
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // forbidden version
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // v00 with extra field
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // bad separator
           "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",    // not hex
       }) {
    EXPECT_FALSE(parse_traceparent(bad)) << bad;
  }
  // A later version is read by its first four fields.
  EXPECT_TRUE(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
}

TEST(TraceContext, ParsesB3SingleHeader) {
  auto full = parse_b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90");
  ASSERT_TRUE(full);
  EXPECT_EQ(to_hex(full->trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
  EXPECT_EQ(to_hex(full->parent_span_id), "e457b5a2e4d86bd1");
  EXPECT_TRUE(full->sampled);
  auto short_id = parse_b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-0");
  ASSERT_TRUE(short_id);
  EXPECT_EQ(to_hex(short_id->trace_id), "000000000000000064fe8b2a57d3eff7");
  EXPECT_FALSE(short_id->sampled);
  auto deferred = parse_b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1");
  ASSERT_TRUE(deferred);
  EXPECT_TRUE(deferred->deferred);
  EXPECT_FALSE(parse_b3("1"));
  EXPECT_FALSE(parse_b3("zz-e457b5a2e4d86bd1-1"));
}

TEST(TraceContext, TracestateIsBounded) {
  EXPECT_TRUE(valid_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
  EXPECT_FALSE(valid_tracestate(""));
  EXPECT_FALSE(valid_tracestate("novalue"));
  EXPECT_FALSE(valid_tracestate(std::string(513, 'a')));
  std::string many;
  for (int i = 0; i < 33; ++i) many += "k" + std::to_string(i) + "=v,";
  EXPECT_FALSE(valid_tracestate(many));
}

TEST(TraceContext, NewIdsAreRandomAndNeverZero) {
  auto a = new_trace_id();
  auto b = new_trace_id();
  EXPECT_NE(a, b);
  EXPECT_FALSE(is_zero(new_span_id()));
}

TEST(Sampling, HeadDecisions) {
  const auto id = new_trace_id();
  SamplingConfig always{SamplingConfig::Mode::kAlways};
  SamplingConfig never{SamplingConfig::Mode::kNever};
  SamplingConfig parent_based{SamplingConfig::Mode::kParentBased, 0.0};
  EXPECT_TRUE(head_sample(always, std::nullopt, id));
  EXPECT_FALSE(head_sample(never, std::nullopt, id));
  auto sampled_parent = parse_traceparent(kParent);
  auto unsampled_parent =
      parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  EXPECT_TRUE(head_sample(parent_based, sampled_parent, id));
  EXPECT_FALSE(head_sample(parent_based, unsampled_parent, id));
  EXPECT_FALSE(head_sample(parent_based, std::nullopt, id));  // root: ratio 0
  parent_based.ratio = 1.0;
  EXPECT_TRUE(head_sample(parent_based, std::nullopt, id));
}

TEST(Sampling, RatioIsDecidedByTheTraceIdAndHitsTheRatio) {
  SamplingConfig cfg{SamplingConfig::Mode::kRatio, 0.25};
  TraceId low{};
  low[15] = 1;  // tiny: always under the bound
  TraceId high{};
  high.fill(0xff);
  EXPECT_TRUE(head_sample(cfg, std::nullopt, low));
  EXPECT_FALSE(head_sample(cfg, std::nullopt, high));
  int kept = 0;
  for (int i = 0; i < 20000; ++i) kept += head_sample(cfg, std::nullopt, new_trace_id()) ? 1 : 0;
  EXPECT_NEAR(kept / 20000.0, 0.25, 0.02);
}

TEST(Sampling, ErrorsAndSlowRequestsAreKeptWhateverTheHead) {
  SamplingConfig cfg{SamplingConfig::Mode::kRatio, 0.0, true, 500};
  EXPECT_FALSE(keep_trace(cfg, false, false, millis(100)));
  EXPECT_TRUE(keep_trace(cfg, false, true, millis(100)));
  EXPECT_TRUE(keep_trace(cfg, false, false, millis(501)));
  EXPECT_TRUE(keep_trace(cfg, true, false, millis(1)));
  cfg.always_errors = false;
  EXPECT_FALSE(keep_trace(cfg, false, true, millis(100)));
  SamplingConfig never{SamplingConfig::Mode::kNever, 1.0, true, 1};
  EXPECT_FALSE(keep_trace(never, false, true, seconds(10)));
}

TEST(RequestTrace, ChildrenHangOffTheRequestSpanWithExactTimes) {
  auto parent = parse_traceparent(kParent);
  const std::int64_t offset = 1'767'225'600'000'000'000;  // Unix ns at monotonic 0
  RequestTrace t(parent, true, "chat gpt-4.1", SpanKind::kServer, seconds(10), offset);
  EXPECT_EQ(to_hex(t.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
  auto q = t.start("bellwether.queue", SpanKind::kInternal, seconds(10) + millis(1));
  t.end(q, seconds(10) + millis(6));
  auto a = t.start("chat gpt-4.1-2025", SpanKind::kClient, seconds(10) + millis(6));
  auto tp = parse_traceparent(t.traceparent_from(a));
  ASSERT_TRUE(tp);
  EXPECT_EQ(tp->trace_id, t.trace_id());
  EXPECT_EQ(tp->parent_span_id, t.span_id(a));
  EXPECT_TRUE(tp->sampled);
  auto done = t.finish(seconds(10) + millis(50));
  ASSERT_EQ(done.spans.size(), 3u);
  EXPECT_EQ(to_hex(done.spans[0].parent_span_id), "00f067aa0ba902b7");
  EXPECT_EQ(done.spans[1].parent_span_id, done.spans[0].span_id);
  EXPECT_EQ(done.spans[2].parent_span_id, done.spans[0].span_id);
  EXPECT_EQ(done.spans[0].start_unix_nanos, offset + seconds(10));
  EXPECT_EQ(done.spans[1].end_unix_nanos - done.spans[1].start_unix_nanos, millis(5));
  EXPECT_EQ(done.spans[2].end_unix_nanos, offset + seconds(10) + millis(50));  // closed by finish
}

TEST(RequestTrace, NewTraceWithoutParent) {
  RequestTrace t(std::nullopt, false, "chat m", SpanKind::kServer, 0, 0);
  EXPECT_FALSE(parse_traceparent(t.traceparent_from(RequestTrace::kRoot))->sampled);
  auto done = t.finish(millis(1));
  EXPECT_TRUE(is_zero(done.spans[0].parent_span_id));
}

TEST(Tracing, TruncateKeepsUtf8Whole) {
  EXPECT_EQ(truncate_utf8("hello", 10), "hello");
  EXPECT_EQ(truncate_utf8("hello", 3), "hel\xE2\x80\xA6");
  // "é" is two bytes; a cut in its middle steps back before it.
  EXPECT_EQ(truncate_utf8("a\xC3\xA9z", 2), "a\xE2\x80\xA6");
}

// Checks the OTLP/JSON mapping field by field with a real JSON parser.
TEST(Tracing, EncodesOtlpJson) {
  RequestTrace t(parse_traceparent(kParent), true, "chat gpt-4.1", SpanKind::kServer, 100, 1000);
  t.span(RequestTrace::kRoot).set("gen_ai.request.model", std::string("gpt-4.1"));
  t.span(RequestTrace::kRoot).set("gen_ai.usage.input_tokens", std::int64_t{12});
  t.span(RequestTrace::kRoot).set("bellwether.cost_usd", 0.0025);
  t.span(RequestTrace::kRoot).set("bellwether.downgraded", false);
  t.span(RequestTrace::kRoot)
      .set("gen_ai.response.finish_reasons", std::vector<std::string>{"stop"});
  t.span(RequestTrace::kRoot).status = SpanStatus::kError;
  t.span(RequestTrace::kRoot).status_message = "upstream \"x\"";
  auto c = t.start("bellwether.queue", SpanKind::kInternal, 150);
  t.end(c, 170);
  std::vector<FinishedTrace> traces;
  traces.push_back(t.finish(400));
  std::string json = encode_otlp_json({{"service.name", std::string("bellwether")}}, traces);

  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(json).get(doc), simdjson::SUCCESS) << json;
  auto rs = doc["resourceSpans"].at(0);
  EXPECT_EQ(std::string_view(rs["resource"]["attributes"].at(0)["key"]), "service.name");
  EXPECT_EQ(std::string_view(rs["resource"]["attributes"].at(0)["value"]["stringValue"]),
            "bellwether");
  auto spans = rs["scopeSpans"].at(0)["spans"];
  EXPECT_EQ(std::string_view(rs["scopeSpans"].at(0)["scope"]["name"]), "bellwether");
  auto root = spans.at(0);
  EXPECT_EQ(std::string_view(root["traceId"]), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(std::string_view(root["parentSpanId"]), "00f067aa0ba902b7");
  EXPECT_EQ(std::string_view(root["spanId"]).size(), 16u);
  EXPECT_EQ(std::string_view(root["name"]), "chat gpt-4.1");
  EXPECT_EQ(std::int64_t(root["kind"]), 2);
  EXPECT_EQ(std::string_view(root["startTimeUnixNano"]), "1100");
  EXPECT_EQ(std::string_view(root["endTimeUnixNano"]), "1400");
  EXPECT_EQ(std::int64_t(root["status"]["code"]), 2);
  EXPECT_EQ(std::string_view(root["status"]["message"]), "upstream \"x\"");
  auto attrs = root["attributes"];
  EXPECT_EQ(std::string_view(attrs.at(0)["value"]["stringValue"]), "gpt-4.1");
  EXPECT_EQ(std::string_view(attrs.at(1)["value"]["intValue"]), "12");  // int64 as a string
  EXPECT_DOUBLE_EQ(double(attrs.at(2)["value"]["doubleValue"]), 0.0025);
  EXPECT_FALSE(bool(attrs.at(3)["value"]["boolValue"]));
  EXPECT_EQ(std::string_view(attrs.at(4)["value"]["arrayValue"]["values"].at(0)["stringValue"]),
            "stop");
  auto child = spans.at(1);
  EXPECT_EQ(std::string_view(child["parentSpanId"]), std::string_view(root["spanId"]));
  EXPECT_EQ(std::int64_t(child["kind"]), 1);
  EXPECT_EQ(std::int64_t(child["status"]["code"]), 0);
}

std::size_t count_spans(const std::string& body) {
  std::size_t n = 0;
  for (auto pos = body.find("\"spanId\""); pos != std::string::npos;
       pos = body.find("\"spanId\"", pos + 1)) {
    ++n;
  }
  return n;
}

FinishedTrace trace_of(std::size_t spans) {
  RequestTrace t(std::nullopt, true, "r", SpanKind::kServer, 0, 0);
  for (std::size_t i = 1; i < spans; ++i) t.start("c", SpanKind::kInternal, 0);
  return t.finish(1);
}

TEST(TraceExporter, BatchesAndCountsWhatTheCollectorTook) {
  std::mutex mu;
  std::vector<std::string> bodies;
  TraceExporterOptions o;
  o.max_batch_spans = 4;
  o.flush_interval = seconds(60);  // only full batches and flush() send
  TraceExporter ex(o, [&](const std::string& body) -> Result<int> {
    std::lock_guard lk(mu);
    bodies.push_back(body);
    return 200;
  });
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(ex.submit(trace_of(2)));
  ex.flush();
  auto s = ex.stats();
  EXPECT_EQ(s.exported_spans, 10u);
  EXPECT_EQ(s.dropped_queue_full + s.dropped_export_failed, 0u);
  std::lock_guard lk(mu);
  EXPECT_GE(bodies.size(), 3u);  // at most 4 spans per POST
  for (const auto& b : bodies) EXPECT_LE(count_spans(b), 4u);
}

TEST(TraceExporter, ADownCollectorDropsAndCountsNeverBlocks) {
  std::atomic<int> calls{0};
  TraceExporterOptions o;
  o.queue_capacity = 6;
  o.max_batch_spans = 100;
  o.flush_interval = seconds(60);
  TraceExporter ex(o, [&](const std::string&) -> Result<int> {
    ++calls;
    return make_error(502, "upstream_error", "upstream_error", "connection refused");
  });
  EXPECT_TRUE(ex.submit(trace_of(3)));
  EXPECT_TRUE(ex.submit(trace_of(3)));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(ex.submit(trace_of(3)));  // queue full: refused at once
  // Not blocked until the queue has room (the next export is a minute away): a bound of seconds
  // tells the two apart on a machine that may stall a thread for hundreds of milliseconds.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  ex.flush();
  auto s = ex.stats();
  EXPECT_EQ(s.dropped_queue_full, 3u);
  EXPECT_EQ(s.dropped_export_failed, 6u);
  EXPECT_EQ(s.exported_spans, 0u);
  EXPECT_GE(calls.load(), 1);
}

}  // namespace
}  // namespace bw::telemetry
