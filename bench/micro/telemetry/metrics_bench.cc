// Cost of recording on the hot path, and of a scrape of the gateway's families.
#include <benchmark/benchmark.h>

#include "telemetry/gateway_metrics.h"
#include "telemetry/metrics.h"
#include "telemetry/scaler.h"

namespace {

using bw::telemetry::GatewayMetrics;
using bw::telemetry::Registry;

Registry& registry() {
  static Registry r;
  return r;
}
GatewayMetrics& metrics() {
  static GatewayMetrics m(registry());
  return m;
}

void BM_CounterInc(benchmark::State& state) {
  auto& c = metrics().requests.with({"chat", "gpt-4o", "2xx", "p1"});
  for (auto _ : state) c.inc();
}
BENCHMARK(BM_CounterInc)->Threads(1)->Threads(2);

void BM_HistogramObserve(benchmark::State& state) {
  auto& h = metrics().request_duration.with({"chat", "gpt-4o"});
  double v = 0.001;
  for (auto _ : state) {
    h.observe(v);
    v = v < 100 ? v * 1.7 : 0.001;
  }
}
BENCHMARK(BM_HistogramObserve)->Threads(1)->Threads(2);

void BM_GaugeAdd(benchmark::State& state) {
  auto& g = metrics().in_flight.get();
  for (auto _ : state) {
    g.inc();
    g.dec();
  }
}
BENCHMARK(BM_GaugeAdd);

void BM_ResolveChild(benchmark::State& state) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(&metrics().requests.with({"chat", "gpt-4o", "2xx", "p1"}));
  }
}
BENCHMARK(BM_ResolveChild);

void BM_Expose(benchmark::State& state) {
  Registry r;
  GatewayMetrics m(r);
  // A realistic gateway: 20 models x 3 endpoints x 3 status classes x 3 priorities.
  for (int model = 0; model < 20; ++model) {
    const std::string name = "model-" + std::to_string(model);
    for (const char* ep : {"chat", "completions", "embeddings"}) {
      m.request_duration.with({ep, name}).observe(0.2);
      for (const char* sc : {"2xx", "4xx", "5xx"}) {
        for (const char* p : {"p0", "p1", "p2"}) m.requests.with({ep, name, sc, p}).inc();
      }
    }
  }
  std::size_t bytes = 0;
  for (auto _ : state) {
    const std::string text = r.expose();
    bytes = text.size();
    benchmark::DoNotOptimize(text.data());
  }
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_Expose)->Unit(benchmark::kMicrosecond);

void BM_ScalerObserve(benchmark::State& state) {
  bw::telemetry::PredictiveScaler s({});
  std::uint64_t n = 0;
  bw::Nanos t = 0;
  for (auto _ : state) {
    t += bw::seconds(5);
    n += 500;
    bw::telemetry::Observation o;
    o.arrivals_total = o.completions_total = n;
    o.queue_depth = 3;
    o.current_replicas = 4;
    benchmark::DoNotOptimize(s.observe(t, o));
  }
}
BENCHMARK(BM_ScalerObserve);

}  // namespace
