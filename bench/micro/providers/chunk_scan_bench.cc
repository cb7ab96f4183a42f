// inspect_chunk per stream, on the events that the simulator streams with `completion_tokens: 5`
// (a role event, five text events, the finish event, the usage event, [DONE]), each stream with
// its own id and time through its own ChunkPrefix, as the streams of one worker thread go.
// Instructions per stream: `valgrind --tool=callgrind build/release/bench/bw_bench_providers
// --benchmark_filter=BM_InspectStream`, `callgrind_annotate --inclusive=yes`, the
// `inspect_chunk` line divided by the iterations (one stream each).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "providers/openai.h"

namespace {

using bw::providers::ChunkInfo;
using bw::providers::ChunkPrefix;
using bw::providers::inspect_chunk;

std::vector<std::string> stream_events(int n, int prompt, int completion) {
  const std::string head = R"({"id":"chatcmpl-sim-)" + std::to_string(n) +
                           R"(","object":"chat.completion.chunk","created":)" +
                           std::to_string(1796551848 + n / 7) + R"(,"model":"bench",)";
  std::vector<std::string> out;
  out.push_back(
      head +
      R"("choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})");
  for (const char* word : {"the", " gateway", " keeps", " the", " service"}) {
    out.push_back(head + R"("choices":[{"index":0,"delta":{"content":")" + word +
                  R"("},"finish_reason":null}]})");
  }
  out.push_back(head + R"("choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})");
  out.push_back(head + R"("choices":[],"usage":{"prompt_tokens":)" + std::to_string(prompt) +
                R"(,"completion_tokens":)" + std::to_string(completion) + R"(,"total_tokens":)" +
                std::to_string(prompt + completion) + "}}");
  out.push_back("[DONE]");
  return out;
}

void BM_InspectStream(benchmark::State& state) {
  std::vector<std::vector<std::string>> streams;
  for (int n = 0; n < 64; ++n) streams.push_back(stream_events(n, 8 + n % 50, 5 + n % 3));
  std::size_t i = 0, chars = 0;
  for (auto _ : state) {
    ChunkPrefix prefix;
    for (const auto& e : streams[i++ % streams.size()]) {
      const ChunkInfo info = inspect_chunk(e, prefix);
      chars += info.text_chars + static_cast<std::size_t>(info.usage.completion_tokens);
    }
  }
  benchmark::DoNotOptimize(chars);
}
BENCHMARK(BM_InspectStream)->Iterations(20000);

}  // namespace

namespace {

// The relay's walk over one read of the stream: next_shaped_event first, else the split and
// inspect_chunk (a minimal split of one-line events here; the gateway's is http::sse).
void BM_RelayWalk(benchmark::State& state) {
  std::vector<std::string> reads;
  for (int n = 0; n < 64; ++n) {
    std::string r;
    for (const auto& e : stream_events(n, 8 + n % 50, 5 + n % 3)) r += "data: " + e + "\n\n";
    reads.push_back(std::move(r));
  }
  std::size_t i = 0, chars = 0;
  for (auto _ : state) {
    ChunkPrefix prefix;
    std::string_view rest = reads[i++ % reads.size()], event, data;
    for (;;) {
      ChunkInfo info;
      if (!bw::providers::next_shaped_event(rest, event, data, info, prefix)) {
        const auto end = rest.find("\n\n");
        if (end == std::string_view::npos) break;
        data = rest.substr(6, end - 6);
        rest.remove_prefix(end + 2);
        info = inspect_chunk(data, prefix);
      }
      chars += info.text_chars;
    }
  }
  benchmark::DoNotOptimize(chars);
}
BENCHMARK(BM_RelayWalk)->Iterations(20000);

}  // namespace
