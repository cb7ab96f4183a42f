// The stream relay takes a text event of its stream's usual shape off a read in one pass
// (providers::next_shaped_event); every event, of that shape or not, framed in any way, must
// come out as the SSE split (http::next_event_data) and inspect_chunk give it, and agree with
// the parse.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "http/sse.h"
#include "providers/openai.h"
#include "support/show_bytes.h"

namespace bw {
namespace {

using providers::ChunkInfo;
using providers::ChunkPrefix;

bool same(const ChunkInfo& a, const ChunkInfo& b) {
  return a.done == b.done && a.usage_only == b.usage_only && a.text_chars == b.text_chars &&
         a.has_text == b.has_text && a.other_output == b.other_output &&
         a.usage.present == b.usage.present && a.usage.unreadable == b.usage.unreadable &&
         a.usage.prompt_tokens == b.usage.prompt_tokens &&
         a.usage.completion_tokens == b.usage.completion_tokens &&
         a.usage.cached_tokens == b.usage.cached_tokens &&
         a.usage.reasoning_tokens == b.usage.reasoning_tokens;
}

struct Step {
  std::size_t at = 0;  // the event's offset in the stream's bytes
  std::string event;
  std::string data;
  ChunkInfo info;
};

// The relay's walk over one read; `fast`: with next_shaped_event first, as the relay does.
std::vector<Step> walk(std::string_view bytes, bool fast, int* shaped = nullptr) {
  ChunkPrefix prefix;
  std::string scratch;
  std::vector<Step> out;
  std::string_view rest = bytes, event, data;
  for (;;) {
    ChunkInfo info;
    if (fast && providers::next_shaped_event(rest, event, data, info, prefix)) {
      if (shaped) ++*shaped;
    } else {
      if (!http::next_event_data(rest, event, data, scratch)) break;
      info = providers::inspect_chunk(data, prefix);
    }
    out.push_back({static_cast<std::size_t>(event.data() - bytes.data()), std::string(event),
                   std::string(data), info});
  }
  return out;
}

// A text for a JSON string: mostly one that the string takes, sometimes anything.
std::string text(std::mt19937& pick) {
  static const std::vector<std::string> plain = {
      "",
      "a",
      " word",
      "caf\xc3\xa9",
      "\\n",
      "\\\"",
      "\\u00e9",
      "\\ud83d\\ude00",
      "  ",
      "0123456789",
      std::string(70, 'x'),
      "\xe2\x82\xac",
      "\\/",
  };
  static const std::vector<std::string> odd = {
      "\xff", "\x01", "\n", "\r", "\"", "\\", "}\n\ndata: {", "\n\n", "\r\n\r\n", "\\ud800", "\t",
  };
  std::string s;
  for (int n = static_cast<int>(pick() % 4); n > 0; --n) {
    s += pick() % 8 == 0 ? odd[pick() % odd.size()] : plain[pick() % plain.size()];
  }
  return s;
}

TEST(StreamEvents, ShapedEventsSplitAsTheSplitterDoes) {
  std::mt19937 pick(20261206);
  const std::string heads[] = {
      R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1796551848,"model":"bench",)",
      R"({"id":"c2","model":"gpt-4o-mini",)",
      "{ \"id\" : \"c3\" ,\r",
  };
  const std::string mids[] = {
      R"("choices":[{"index":0,"delta":{"content":)",
      R"("choices":[{"index":0,"delta":{"role":"assistant","content":)",
      R"("choices":[{"delta":{"content":)",
  };
  const std::string tails[] = {
      R"(},"finish_reason":null}]})",
      R"(},"logprobs":null,"finish_reason":null}],"usage":null})",
      R"(}}]}  )",
      "}}]}\r",
      R"(}}],"usage":{"prompt_tokens":5,"completion_tokens":2}})",
      R"(}}]})"
      "\n}",
  };
  const std::string framings[][2] = {
      {"data: ", "\n\n"},
      {"data: ", "\n\n"},
      {"data: ", "\n\n"},
      {"data: ", "\n\n"},
      {"data:", "\n\n"},
      {"data:  ", "\n\n"},
      {"data: ", "\r\n\r\n"},
      {"data: ", "\r\n\n"},
      {"data: ", "\r\n"},
      {"data: ", "\n"},
      {"data: ", "\ndata: {}\n\n"},
      {": keep-alive\ndata: ", "\n\n"},
      {"event: x\ndata: ", "\n\n"},
      {"Data: ", "\n\n"},
      {"data: ", "\r\r\n\n"},
  };
  int shaped = 0, events = 0;
  constexpr int kStreams = 3000;
  for (int n = 0; n < kStreams; ++n) {
    std::string bytes;
    const std::string head = heads[pick() % std::size(heads)];
    std::size_t m = pick() % std::size(mids), t = pick() % 2;
    bytes += "data: " + head +
             R"("choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})" + "\n\n";
    for (int i = static_cast<int>(pick() % 12); i > 0; --i) {
      if (pick() % 8 == 0) m = pick() % std::size(mids);
      if (pick() % 8 == 0) t = pick() % 3 == 0 ? pick() % std::size(tails) : pick() % 2;
      const auto& f = pick() % 3 == 0 ? framings[pick() % std::size(framings)] : framings[0];
      std::string d = head + mids[m] + "\"" + text(pick) + "\"" + tails[t];
      if (pick() % 20 == 0) d[pick() % d.size()] = static_cast<char>(pick() % 256);
      bytes += f[0] + d + f[1];
    }
    bytes +=
        "data: " + head + R"("choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})" + "\n\n";
    bytes += "data: " + head +
             R"("choices":[],"usage":{"prompt_tokens":8,"completion_tokens":5}})" +
             "\n\ndata: [DONE]\n\n";
    if (pick() % 4 == 0) bytes.resize(pick() % bytes.size());  // a read ends anywhere
    const auto expected = walk(bytes, false);
    const auto got = walk(bytes, true, &shaped);
    ASSERT_EQ(got.size(), expected.size()) << test::show_bytes(bytes, 2000);
    for (std::size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].at, expected[i].at) << test::show_bytes(bytes, 2000);
      ASSERT_EQ(got[i].event, expected[i].event) << test::show_bytes(bytes, 2000);
      ASSERT_EQ(got[i].data, expected[i].data) << test::show_bytes(bytes, 2000);
      ASSERT_TRUE(same(got[i].info, expected[i].info)) << test::show_bytes(got[i].event, 500);
      ASSERT_TRUE(same(got[i].info, providers::parse_chunk(got[i].data)))
          << test::show_bytes(got[i].event, 500);
      ++events;
    }
  }
  // The comparison means something only if many events took the one-pass way.
  EXPECT_GT(shaped, events / 8);
}

}  // namespace
}  // namespace bw
