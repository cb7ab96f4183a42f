// parse_request on the ~1 KB chat request of bench/load/isolated_chat.lua, and
// extract_usage on the simulator's buffered answer to it (82 completion tokens): the two
// scans of a proxied request. Instructions per call: `valgrind --tool=callgrind
// build/release/bench/bw_bench_providers --benchmark_filter='BM_ParseRequest|BM_AnswerUsage'`,
// `callgrind_annotate --inclusive=yes`, the scan's line divided by the iterations.
#include <benchmark/benchmark.h>

#include <array>
#include <string>
#include <string_view>

#include "providers/openai.h"

namespace {

std::string bench_request() {
  const std::string system =
      "You are a concise assistant for a support desk. Answer in plain text, keep every answer "
      "under one hundred words, never invent order numbers, and ask for the order number when "
      "the customer did not give one. Be friendly but brief.";
  const std::string user =
      "Hello there. I ordered a pair of walking boots three weeks ago and the tracking page has "
      "said 'label created' ever since. The order number is 48213-77. Could you tell me whether "
      "the parcel has left the warehouse, and if it has not, whether I can cancel the order and "
      "get a refund to the card I paid with? I would also like to know whether the boots come in "
      "a wide fit, because the last pair I bought from you pinched at the toes after a long day. "
      "Thank you for your help.";
  return R"({"model":"bench","messages":[{"role":"system","content":")" + system +
         R"("},{"role":"user","content":")" + user + R"("}],"max_tokens":128,"temperature":0.2})";
}

std::string bench_answer(int n) {
  constexpr std::array<std::string_view, 16> kWords = {
      "the",    "gateway", "keeps", "the",    "service", "alive", "while", "traffic",
      "spikes", "and",     "the",   "budget", "holds",   "under", "load",  "today"};
  std::string text;
  for (std::size_t i = 0; i < 82; ++i) {
    if (i) text += ' ';
    text += kWords[i % kWords.size()];
  }
  return R"({"id":"chatcmpl-sim-)" + std::to_string(1000 + n) +
         R"(","object":"chat.completion","created":)" + std::to_string(1796551848 + n) +
         R"(,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":")" +
         text + R"("},"finish_reason":"stop"}],"usage":{"prompt_tokens":)" +
         std::to_string(150 + n % 7) + R"(,"completion_tokens":82,"total_tokens":)" +
         std::to_string(232 + n % 7) + "}}";
}

void BM_ParseRequest(benchmark::State& state) {
  const std::string body = bench_request();
  std::size_t chars = 0;
  for (auto _ : state) {
    auto r = bw::providers::parse_request(bw::providers::Endpoint::kChat, body);
    chars += r.ok() ? r->prompt_chars : 0;
  }
  benchmark::DoNotOptimize(chars);
}
BENCHMARK(BM_ParseRequest)->Iterations(20000);

void BM_AnswerUsage(benchmark::State& state) {
  std::array<std::string, 16> answers;
  for (int n = 0; n < 16; ++n) answers[static_cast<std::size_t>(n)] = bench_answer(n);
  std::size_t i = 0;
  std::int64_t tokens = 0;
  for (auto _ : state) {
    const auto u =
        bw::providers::extract_usage(answers[i++ % answers.size()], bw::providers::Endpoint::kChat);
    tokens += u.completion_tokens;
  }
  benchmark::DoNotOptimize(tokens);
}
BENCHMARK(BM_AnswerUsage)->Iterations(20000);

}  // namespace
