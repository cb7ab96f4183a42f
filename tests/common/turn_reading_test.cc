// A reading kept for a turn of the thread's event loop (common/loop_turn.h), with the turn and
// its "inside the loop" flag set by hand as the project's scheduler and reactor set them, and a
// FakeClock as what is read. The same with a real loop: tests/http/loop_clock_test.cc.
#include <gtest/gtest.h>

#include "common/clock.h"
#include "common/loop_turn.h"

namespace bw::loop {
namespace {

// The thread in a turn of its loop, as the scheduler marks it; restored on the way out.
class InTurn {
 public:
  InTurn() : was_(in_turn) {
    in_turn = true;
    ++turn;
  }
  ~InTurn() { in_turn = was_; }
  InTurn(const InTurn&) = delete;
  InTurn& operator=(const InTurn&) = delete;

 private:
  bool was_;
};

TEST(TurnReading, IsReadOnceInATurnAndAnewInTheNext) {
  const InTurn inside;
  FakeClock clock;
  TurnReading kept;
  int reads = 0;
  const auto read = [&] {
    ++reads;
    return clock.now();
  };
  const Nanos first = kept.get(read);
  EXPECT_EQ(first, clock.now());
  clock.advance(millis(3));
  EXPECT_EQ(kept.get(read), first);
  EXPECT_EQ(kept.get(read), first);
  EXPECT_EQ(reads, 1);
  ++turn;  // the reactor returned: a new turn
  EXPECT_EQ(kept.get(read), first + millis(3));
  EXPECT_EQ(reads, 2);
}

TEST(TurnReading, OutsideATurnEveryUseReads) {
  in_turn = false;
  FakeClock clock;
  TurnReading kept;
  const auto read = [&] { return clock.now(); };
  const Nanos first = kept.get(read);
  clock.advance(millis(3));
  EXPECT_EQ(kept.get(read), first + millis(3));
  // The turn count alone is not enough: the thread left its loop (or never ran one).
  ++turn;
  EXPECT_EQ(kept.get(read), first + millis(3));
  clock.advance(1);
  EXPECT_EQ(kept.get(read), first + millis(3) + 1);
}

TEST(TurnReading, AReadingTakenSinceIsKeptSoThatReadingsNeverGoBack) {
  const InTurn inside;
  FakeClock clock;
  TurnReading kept;
  const auto read = [&] { return clock.now(); };
  const Nanos first = kept.get(read);
  clock.advance(millis(2));
  const Nanos fresh = kept.keep(clock.now());  // a fresh reading in the same turn
  EXPECT_EQ(fresh, first + millis(2));
  EXPECT_EQ(kept.get(read), fresh);
}

TEST(TurnReading, ADifferentTurnNeverGetsTheKeptReadingEvenWhenItComesBack) {
  FakeClock clock;
  TurnReading kept;
  const auto read = [&] { return clock.now(); };
  std::int64_t first = 0;
  {
    const InTurn inside;
    first = kept.get(read);
  }
  clock.advance(millis(1));
  // The next run of a loop on this thread starts a new turn before its handlers use it.
  const InTurn next;
  EXPECT_EQ(kept.get(read), first + millis(1));
}

// Tests drive time with a FakeClock: its turn readings are its readings, in a turn or not, so
// that an advance is seen at once by code that takes the turn's reading.
TEST(TurnReading, AFakeClocksTurnReadingsFollowItsAdvances) {
  const InTurn inside;
  FakeClock clock(seconds(5), 1'767'225'600'000);
  const Clock& c = clock;
  EXPECT_EQ(c.turn_now(), seconds(5));
  EXPECT_EQ(c.turn_unix_millis(), 1'767'225'600'000);
  clock.advance(millis(7));
  EXPECT_EQ(c.turn_now(), seconds(5) + millis(7));
  EXPECT_EQ(c.turn_unix_millis(), 1'767'225'600'007);
}

}  // namespace
}  // namespace bw::loop
