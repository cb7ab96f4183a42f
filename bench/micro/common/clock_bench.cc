// The clock's cost per reading: a fresh reading (a vDSO clock_gettime, which callgrind does not
// count) against the turn's reading that the request path takes for its decisions
// (Clock::turn_now), inside a turn of the loop (as the project's scheduler marks it) and
// outside one. Read through `const Clock&`, as the gateway does.
#include <benchmark/benchmark.h>

#include "common/clock.h"
#include "common/loop_turn.h"

namespace bw {
namespace {

const Clock& clock_under_test() {
  static const Clock& c = SteadyClock::instance();
  return c;
}

// The thread in one long turn of its loop for the benchmark's run.
struct InTurn {
  InTurn() {
    loop::in_turn = true;
    ++loop::turn;
  }
  ~InTurn() { loop::in_turn = false; }
};

void BM_Now(benchmark::State& state) {
  const Clock& c = clock_under_test();
  for (auto _ : state) benchmark::DoNotOptimize(c.now());
}
BENCHMARK(BM_Now);

void BM_TurnNowInATurn(benchmark::State& state) {
  const Clock& c = clock_under_test();
  const InTurn turn;
  for (auto _ : state) benchmark::DoNotOptimize(c.turn_now());
}
BENCHMARK(BM_TurnNowInATurn);

void BM_TurnNowOutsideALoop(benchmark::State& state) {
  const Clock& c = clock_under_test();
  for (auto _ : state) benchmark::DoNotOptimize(c.turn_now());
}
BENCHMARK(BM_TurnNowOutsideALoop);

void BM_UnixMillis(benchmark::State& state) {
  const Clock& c = clock_under_test();
  for (auto _ : state) benchmark::DoNotOptimize(c.unix_millis());
}
BENCHMARK(BM_UnixMillis);

void BM_TurnUnixMillisInATurn(benchmark::State& state) {
  const Clock& c = clock_under_test();
  const InTurn turn;
  for (auto _ : state) benchmark::DoNotOptimize(c.turn_unix_millis());
}
BENCHMARK(BM_TurnUnixMillisInATurn);

// A proxied request's readings (auth only) before the turn readings: 10 fresh monotonic and 1
// wall clock; and with them, in one turn: 3 fresh (the attempt's send, the answer's arrival,
// the request's end), 7 of the turn, 1 of the turn's wall clock.
void BM_RequestReadingsAllFresh(benchmark::State& state) {
  const Clock& c = clock_under_test();
  for (auto _ : state) {
    for (int i = 0; i < 10; ++i) benchmark::DoNotOptimize(c.now());
    benchmark::DoNotOptimize(c.unix_millis());
  }
}
BENCHMARK(BM_RequestReadingsAllFresh);

void BM_RequestReadingsWithTurnReadings(benchmark::State& state) {
  const Clock& c = clock_under_test();
  const InTurn turn;
  for (auto _ : state) {
    for (int i = 0; i < 3; ++i) benchmark::DoNotOptimize(c.now());
    for (int i = 0; i < 7; ++i) benchmark::DoNotOptimize(c.turn_now());
    benchmark::DoNotOptimize(c.turn_unix_millis());
  }
}
BENCHMARK(BM_RequestReadingsWithTurnReadings);

}  // namespace
}  // namespace bw
