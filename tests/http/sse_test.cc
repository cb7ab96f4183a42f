// The SSE framing: events end at the first blank line ("\n\n" or "\r\n\r\n"), and the zero-copy
// window hands out the bytes of a read itself when nothing was pending.
#include "http/sse.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace bw::http {
namespace {

std::vector<std::string> events_of(std::string_view bytes, std::string_view* rest_out = nullptr) {
  std::vector<std::string> out;
  std::string_view rest = bytes, ev;
  while (next_event(rest, ev)) out.emplace_back(ev);
  if (rest_out) *rest_out = rest;
  return out;
}

TEST(SseNextEvent, SplitsAtTheFirstBlankLineOfEitherKind) {
  std::string_view rest;
  EXPECT_EQ(events_of("data: a\n\ndata: b\r\n\r\ndata: c\n\ndata: d", &rest),
            (std::vector<std::string>{"data: a\n\n", "data: b\r\n\r\n", "data: c\n\n"}));
  EXPECT_EQ(rest, "data: d");
  EXPECT_EQ(events_of("data: a\r\n\r\n\n"), (std::vector<std::string>{"data: a\r\n\r\n"}));
  EXPECT_EQ(events_of("data: a\ndata: b\n\n"), (std::vector<std::string>{"data: a\ndata: b\n\n"}));
  EXPECT_TRUE(events_of("data: a\r\n").empty());
  EXPECT_TRUE(events_of("").empty());
  EXPECT_EQ(events_of("\n\n"), (std::vector<std::string>{"\n\n"}));
}

// next_event_data gives the events of next_event and the data of sse_data, on every framing.
TEST(SseNextEvent, EventDataIsSseDataOfTheEvent) {
  const std::vector<std::string> streams = {
      "data: a\n\ndata: b\r\n\r\ndata: c\n\ndata: d",
      "data: a\r\n\r\n\n",
      "data: a\ndata: b\n\n",
      "data: a\r\n",
      "",
      "\n\n",
      "\r\n\r\n",
      "data:x\n\ndata:\n\ndata: \n\ndata:  two spaces\n\n",
      "data: a\r\n\n",
      "event: delta\ndata: {\"a\":1}\n\n: comment\n\nid: 7\n\n",
      "dat: a\n\nDATA: b\n\n data: c\n\ndata: [DONE]\n\n",
      "data: a\r\rdata: b\n\n",
      "data: {\"choices\":[]}\n\ndata: x\ndata: y\r\n\r\n",
  };
  for (const auto& bytes : streams) {
    std::string_view a = bytes, b = bytes, ev_a, ev_b, data;
    std::string scratch_a, scratch_b;
    for (;;) {
      const bool got_a = next_event(a, ev_a);
      const bool got_b = next_event_data(b, ev_b, data, scratch_b);
      ASSERT_EQ(got_a, got_b) << bytes;
      if (!got_a) break;
      EXPECT_EQ(ev_a, ev_b) << bytes;
      EXPECT_EQ(sse_data(ev_a, scratch_a), data) << bytes;
    }
    EXPECT_EQ(a, b) << bytes;
  }
}

TEST(SseSplitter, AWindowWithNothingPendingIsTheReadItself) {
  SseSplitter s;
  const std::string read = "data: 1\n\ndata: 2\n\ndata: 3";
  std::string_view w = s.window(read);
  EXPECT_EQ(w.data(), read.data());  // no copy
  std::string_view rest = w, ev;
  int n = 0;
  while (next_event(rest, ev)) ++n;
  EXPECT_EQ(n, 2);
  ASSERT_TRUE(s.keep(w, w.size() - rest.size()));
  EXPECT_EQ(s.pending(), "data: 3");
  // The unfinished event is completed by the next read.
  const std::string next = "\n\ndata: 4\n\n";
  w = s.window(next);
  EXPECT_EQ(w, "data: 3\n\ndata: 4\n\n");
  rest = w;
  std::vector<std::string> got;
  while (next_event(rest, ev)) got.emplace_back(ev);
  EXPECT_EQ(got, (std::vector<std::string>{"data: 3\n\n", "data: 4\n\n"}));
  ASSERT_TRUE(s.keep(w, w.size() - rest.size()));
  EXPECT_EQ(s.pending(), "");
  EXPECT_EQ(s.window(next).data(), next.data());
}

TEST(SseSplitter, AnUnfinishedEventOverTheBoundIsRefused) {
  SseSplitter s(8);
  const std::string read = "data: 1\n\ndata: 123456789";
  std::string_view w = s.window(read);
  std::string_view rest = w, ev;
  while (next_event(rest, ev)) {
  }
  EXPECT_FALSE(s.keep(w, w.size() - rest.size()));
}

TEST(SseSplitter, FeedAndNextStillWork) {
  SseSplitter s;
  ASSERT_TRUE(s.feed("data: a\n\ndata: "));
  std::string_view ev;
  ASSERT_TRUE(s.next(ev));
  EXPECT_EQ(ev, "data: a\n\n");
  EXPECT_FALSE(s.next(ev));
  s.compact();
  ASSERT_TRUE(s.feed("b\r\n\r\n"));
  ASSERT_TRUE(s.next(ev));
  EXPECT_EQ(ev, "data: b\r\n\r\n");
}

}  // namespace
}  // namespace bw::http
