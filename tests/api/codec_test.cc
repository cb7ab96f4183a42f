#include <gtest/gtest.h>
#include <simdjson.h>

#include <string>
#include <vector>

#include "api/chat.h"
#include "api/messages.h"
#include "api/responses.h"

namespace bw::api {
namespace {

namespace dom = simdjson::dom;

struct Doc {
  dom::parser parser;
  dom::element root;
  explicit Doc(const std::string& s) {
    EXPECT_EQ(parser.parse(s).get(root), simdjson::SUCCESS) << s;
  }
};

TEST(ImageUrl, PrivateAndLocalAddressesAreRefused) {
  for (const char* bad :
       {"http://127.0.0.1/x.png", "https://10.1.2.3/a", "http://192.168.0.1:8080/a",
        "http://172.16.5.4/", "http://169.254.169.254/latest/meta-data", "http://localhost/a.png",
        "http://[::1]/a", "http://[fd00::1]/a", "http://[::ffff:10.0.0.1]/a", "http://2130706433/",
        "http://user@127.0.0.1/", "http://metadata.google.internal/", "ftp://example.com/a.png",
        "file:///etc/passwd"}) {
    EXPECT_FALSE(check_image_url(bad).ok()) << bad;
  }
  for (const char* good : {"https://example.com/cat.png", "http://8.8.8.8/a.jpg",
                           "https://[2001:db8::1]/a", "data:image/png;base64,iVBORw0KGgo="}) {
    EXPECT_TRUE(check_image_url(good).ok()) << good;
  }
}

TEST(ChatDecode, RolesToolsAndErrors) {
  auto r = decode_chat_request(R"({"model":"m","messages":[
    {"role":"system","content":"be brief"},
    {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
    {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
    {"role":"tool","tool_call_id":"c1","content":"42"}],
    "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
    "max_tokens":50,"stop":"X","seed":7,"logprobs":true})");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->system.size(), 1u);
  ASSERT_EQ(r->messages.size(), 3u);
  EXPECT_EQ(r->messages[0].parts[1].media_type, "image/png");
  EXPECT_EQ(r->messages[2].parts[0].name, "f");  // resolved from its call
  EXPECT_EQ(r->max_tokens, 50);
  EXPECT_EQ(r->unmapped, (std::vector<std::string>{"seed", "logprobs"}));

  EXPECT_FALSE(
      decode_chat_request(R"({"model":"m","messages":[{"role":"wizard","content":"x"}]})").ok());
  auto orphan = decode_chat_request(
      R"({"model":"m","messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]})");
  ASSERT_FALSE(orphan.ok());
  EXPECT_NE(orphan.error().message.find("no tool call"), std::string::npos);
  EXPECT_FALSE(
      decode_chat_request(
          R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://10.0.0.1/a.png"}}]}]})")
          .ok());
}

// Chat's n is carried (Gemini generates the choices; Anthropic refuses n > 1), never dropped.
TEST(ChatDecode, NIsCarried) {
  const std::string head = R"({"model":"m","messages":[{"role":"user","content":"x"}],"n":)";
  auto three = decode_chat_request(head + "3}");
  ASSERT_TRUE(three.ok()) << three.error().message;
  EXPECT_EQ(three->n, 3);
  EXPECT_TRUE(three->unmapped.empty());
  EXPECT_EQ(decode_chat_request(head + "null}")->n, 1);
  for (const char* bad : {"0", "129", "\"2\"", "1.5"}) {
    auto r = decode_chat_request(head + bad + "}");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().param, "n") << bad;
  }
}

// An answer with output and usage that counts no output is not free; an empty one is.
TEST(Usage, OutputWithZeroOutputTokensIsNotTrusted) {
  auto r = decode_chat_response(
      R"({"choices":[{"message":{"content":"hello"}}],"usage":{"prompt_tokens":3,"completion_tokens":0}})");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(has_output(*r));
  Usage u = r->usage;
  check_output_counted(u, has_output(*r));
  EXPECT_FALSE(u.usable());
  auto empty = decode_chat_response(
      R"({"choices":[{"message":{"content":""}}],"usage":{"prompt_tokens":3,"completion_tokens":0}})");
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(has_output(*empty));
  Usage e = empty->usage;
  check_output_counted(e, has_output(*empty));
  EXPECT_TRUE(e.usable());
  Response call;
  call.content.push_back(Part{.kind = Part::Kind::kToolCall, .name = "f"});
  EXPECT_TRUE(has_output(call));
}

// A provider's parser keeps the last of two equal keys; the gateway would reserve and limit for
// the first. Every inbound API refuses such a body, at any depth, naming the key.
TEST(DuplicateKeys, EveryInboundApiRefusesThemAtAnyDepth) {
  const std::vector<std::pair<std::string, Result<Request> (*)(std::string_view)>> cases = {
      {R"({"model":"m","max_tokens":5,"max_tokens":100000,"messages":[{"role":"user","content":"hi"}]})",
       [](std::string_view b) { return decode_messages_request(b); }},
      {R"({"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"a","text":"b"}]}]})",
       [](std::string_view b) { return decode_messages_request(b); }},
      {R"({"model":"m","input":"hi","max_output_tokens":5,"max_output_tokens":99999})",
       [](std::string_view b) { return decode_responses_request(b); }},
      {R"({"model":"m","input":[{"role":"user","content":"a","content":"b"}]})",
       [](std::string_view b) { return decode_responses_request(b); }},
      {R"({"model":"m","messages":[{"role":"user","content":"hi"}],"n":1,"n":8})",
       [](std::string_view b) { return decode_chat_request(b); }},
  };
  for (const auto& [body, decode] : cases) {
    auto r = decode(body);
    ASSERT_FALSE(r) << body;
    EXPECT_EQ(r.error().status, 400) << body;
    EXPECT_EQ(r.error().code, "duplicate_key") << body;
    EXPECT_FALSE(r.error().param.empty()) << body;
  }
  // The same bodies without the second key decode.
  EXPECT_TRUE(decode_messages_request(
      R"({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]})"));
  EXPECT_TRUE(decode_responses_request(R"({"model":"m","input":"hi","max_output_tokens":5})"));
}

TEST(RequestDepth, DeepBodiesAreRefusedInEveryInboundApi) {
  std::string deep = R"({"model":"m","max_tokens":5,"metadata":)";
  for (int i = 0; i < 70; ++i) deep += "[";
  for (int i = 0; i < 70; ++i) deep += "]";
  deep += R"(,"messages":[{"role":"user","content":"hi"}]})";
  auto m = decode_messages_request(deep);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, "invalid_json");
  auto r = decode_responses_request(deep);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, "invalid_json");
}

TEST(Messages, InboundToAnthropicKeepsCacheControlAndAlwaysSendsMaxTokens) {
  auto r = decode_messages_request(R"({"model":"claude","max_tokens":100,
    "system":[{"type":"text","text":"long doc","cache_control":{"type":"ephemeral"}}],
    "messages":[{"role":"user","content":"hi"}],"stream":true})");
  ASSERT_TRUE(r.ok()) << r.error().message;
  std::vector<std::string> dropped;
  auto body = encode_messages_request(*r, "claude-x", 0, 4096, dropped);
  Doc d(body);
  EXPECT_EQ(d.root["max_tokens"].get_int64().value(), 100);
  EXPECT_EQ(std::string(d.root["system"].at(0)["cache_control"]["type"].get_string().value()),
            "ephemeral");
  EXPECT_TRUE(dropped.empty());

  auto chat = decode_chat_request(
      R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})");
  ASSERT_TRUE(chat.ok());
  body = encode_messages_request(*chat, "claude-x", 0, 777, dropped);
  Doc d2(body);
  EXPECT_EQ(d2.root["max_tokens"].get_int64().value(), 777);
  EXPECT_EQ(dropped, (std::vector<std::string>{"response_format"}));

  EXPECT_FALSE(
      decode_messages_request(R"({"model":"c","messages":[{"role":"user","content":"x"}]})").ok());
  EXPECT_FALSE(decode_messages_request(
                   R"({"model":"c","max_tokens":5,"messages":[{"role":"system","content":"x"}]})")
                   .ok());
  EXPECT_FALSE(
      decode_messages_request(
          R"({"model":"c","max_tokens":5,"messages":[{"role":"user","content":[{"type":"bogus"}]}]})")
          .ok());
  EXPECT_FALSE(
      decode_messages_request(
          R"({"model":"c","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t9","content":"x"}]}]})")
          .ok());
  EXPECT_FALSE(
      decode_messages_request(
          R"({"model":"c","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"http://192.168.1.1/a.png"}}]}]})")
          .ok());
}

// A count that is there but not a count makes the usage unreadable (charged an estimate); a
// count that is missing is 0, since a stream reports its usage in parts.
// Tool definitions, output schemas and fields passed through unchanged are read (and billed)
// by the upstream as input: the estimate counts their characters, the messages' text apart.
TEST(Estimates, ToolsSchemasAndPassedThroughFieldsCountAsInput) {
  const std::string big(4000, 'd');
  auto m = decode_messages_request(
      R"({"model":"c","max_tokens":5,"messages":[{"role":"user","content":"hi"}],)"
      R"("tools":[{"name":"f","description":")" +
      big + R"(","input_schema":{"type":"object"}}],"container":")" + big + R"("})");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->text_chars, 2u);
  EXPECT_GE(m->other_chars, 2 * big.size());
  auto r = decode_responses_request(
      R"({"model":"m","input":"hi","tools":[{"type":"function","name":"f","description":")" + big +
      R"("}],"text":{"format":{"type":"json_schema","name":"s","schema":{"description":")" + big +
      R"("}}}})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->text_chars, 2u);
  EXPECT_GE(r->other_chars, 2 * big.size());
  // Images are counted (each priced as chat prices one), and a document passed through to
  // Anthropic counts as its characters.
  auto i = decode_messages_request(
      R"({"model":"c","max_tokens":5,"messages":[{"role":"user","content":[)"
      R"({"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}},)"
      R"({"type":"image","source":{"type":"url","url":"https://example.com/a.png"}},)"
      R"({"type":"document","source":{"type":"base64","media_type":"application/pdf","data":")" +
      big + R"("}}]}]})");
  ASSERT_TRUE(i.ok()) << i.error().message;
  EXPECT_EQ(i->images, 2u);
  EXPECT_GE(i->other_chars, big.size());
  auto ri = decode_responses_request(
      R"({"model":"m","input":[{"role":"user","content":[{"type":"input_image",)"
      R"("image_url":"data:image/png;base64,AAAA"},{"type":"input_image","file_id":"f"}]}]})");
  ASSERT_TRUE(ri.ok()) << ri.error().message;
  EXPECT_EQ(ri->images, 2u);
}

TEST(Messages, UnreadableUsageCountsAreNotTrusted) {
  for (std::string_view bad :
       {R"({"input_tokens":10,"output_tokens":"5"})", R"({"input_tokens":-10,"output_tokens":5})",
        R"({"input_tokens":10,"output_tokens":5,)"
        R"("cache_creation_input_tokens":null})"}) {
    const auto u = read_messages_usage(bad);
    EXPECT_TRUE(u.present) << bad;
    EXPECT_FALSE(u.usable()) << bad;
  }
  auto u = read_messages_usage(R"({"output_tokens":5})");
  EXPECT_TRUE(u.usable());
  EXPECT_EQ(u.completion_tokens, 5);
  u = read_messages_usage(R"({"input_tokens":10,"output_tokens":5,)"
                          R"("cache_read_input_tokens":"30"})");
  EXPECT_TRUE(u.usable()) << "a cache read only lowers the bill: unreadable, it is 0";
  EXPECT_EQ(u.prompt_tokens, 10);
  EXPECT_EQ(u.cached_tokens, 0);
}

// message_delta's usage is cumulative and may repeat some input-side counts: a count it leaves
// out stands as message_start gave it (the cache write is not lost when input_tokens comes again).
TEST(Messages, StreamedUsageMergesTheDeltaIntoTheStart) {
  auto dec = make_messages_stream_decoder();
  std::vector<StreamEvent> evs;
  dec->feed(
      "message_start",
      R"({"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":10,)"
      R"("cache_creation_input_tokens":2000,"cache_read_input_tokens":3000,"output_tokens":1}}})",
      evs);
  dec->feed("message_delta",
            R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},)"
            R"("usage":{"input_tokens":10,"output_tokens":300}})",
            evs);
  dec->feed("message_stop", R"({"type":"message_stop"})", evs);
  ASSERT_TRUE(dec->done());
  const Usage* last = nullptr;
  for (const auto& e : evs) {
    if (e.kind == StreamEvent::Kind::kUsage) last = &e.usage;
  }
  ASSERT_NE(last, nullptr);
  EXPECT_TRUE(last->usable());
  EXPECT_EQ(last->prompt_tokens, 5010);
  EXPECT_EQ(last->cache_write_tokens, 2000);
  EXPECT_EQ(last->cached_tokens, 3000);
  EXPECT_EQ(last->completion_tokens, 300);
  // Counts that clamp at the top of the range do not wrap when added.
  auto u = read_messages_usage(
      R"({"input_tokens":9000000000000000000,)"
      R"("cache_creation_input_tokens":9000000000000000000,"output_tokens":1})");
  EXPECT_EQ(u.prompt_tokens, INT64_MAX);
}

// A whole message's usage always has input_tokens and output_tokens, and a stream's final output
// count comes in message_delta: without it, the usage is not trusted (charged an estimate).
TEST(Messages, UsageWithoutTheOutputCountIsNotTrusted) {
  auto r = decode_messages_response(
      R"({"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text",)"
      R"("text":"hello"}],"stop_reason":"end_turn","usage":{"input_tokens":10}})");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->usage.present);
  EXPECT_FALSE(r->usage.usable());
  auto dec = make_messages_stream_decoder();
  std::vector<StreamEvent> evs;
  dec->feed("message_start",
            R"({"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":10,)"
            R"("output_tokens":1}}})",
            evs);
  dec->feed("message_delta", R"({"type":"message_delta","delta":{"stop_reason":"end_turn"}})", evs);
  dec->feed("message_stop", R"({"type":"message_stop"})", evs);
  const Usage* last = nullptr;
  for (const auto& e : evs) {
    if (e.kind == StreamEvent::Kind::kUsage && e.usage.present) last = &e.usage;
  }
  ASSERT_NE(last, nullptr);
  EXPECT_FALSE(last->usable());
}

TEST(Messages, UsageMapsCacheTokensIntoPromptTokens) {
  auto r =
      decode_messages_response(R"({"id":"msg_1","type":"message","role":"assistant","model":"c",
    "content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}],
    "stop_reason":"tool_use","usage":{"input_tokens":10,"cache_creation_input_tokens":20,"cache_read_input_tokens":30,"output_tokens":5}})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->usage.prompt_tokens, 60);
  EXPECT_EQ(r->usage.cached_tokens, 30);
  EXPECT_EQ(r->usage.cache_write_tokens, 20);
  EXPECT_EQ(r->finish, FinishReason::kToolCalls);
  Doc chat(encode_chat_response(*r, "claude-sonnet-4.5"));
  EXPECT_EQ(chat.root["usage"]["prompt_tokens"].get_int64().value(), 60);
  EXPECT_EQ(chat.root["usage"]["prompt_tokens_details"]["cached_tokens"].get_int64().value(), 30);
  EXPECT_EQ(std::string(chat.root["choices"].at(0)["finish_reason"].get_string().value()),
            "tool_calls");
  EXPECT_EQ(std::string(chat.root["choices"]
                            .at(0)["message"]["tool_calls"]
                            .at(0)["function"]["arguments"]
                            .get_string()
                            .value()),
            "{\"a\":1}");
  // And back: the Messages shape reports the uncached remainder as input_tokens.
  Doc msg(encode_messages_response(*r, "claude-sonnet-4.5"));
  EXPECT_EQ(msg.root["usage"]["input_tokens"].get_int64().value(), 10);
  EXPECT_EQ(msg.root["usage"]["cache_read_input_tokens"].get_int64().value(), 30);
  EXPECT_EQ(std::string(msg.root["stop_reason"].get_string().value()), "tool_use");
}

std::vector<std::pair<std::string, std::string>> sse_events(const std::string& s) {
  std::vector<std::pair<std::string, std::string>> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    auto end = s.find("\n\n", pos);
    if (end == std::string::npos) break;
    std::string ev = s.substr(pos, end - pos);
    std::string name, data;
    std::size_t lp = 0;
    while (lp < ev.size()) {
      auto le = ev.find('\n', lp);
      if (le == std::string::npos) le = ev.size();
      auto line = ev.substr(lp, le - lp);
      if (line.starts_with("event: ")) name = line.substr(7);
      if (line.starts_with("data: ")) data = line.substr(6);
      lp = le + 1;
    }
    out.emplace_back(name, data);
    pos = end + 2;
  }
  return out;
}

TEST(Streams, AnthropicEventsBecomeChatChunks) {
  auto dec = make_messages_stream_decoder();
  auto enc = make_chat_stream_encoder("claude-sonnet-4.5", true);
  std::vector<StreamEvent> evs;
  std::string out;
  for (
      const char* data :
      {R"({"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":7,"cache_read_input_tokens":3,"output_tokens":1}}})",
       R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})",
       R"({"type":"ping"})",
       R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}})",
       R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}})",
       R"({"type":"content_block_stop","index":0})",
       R"({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_9","name":"f","input":{}}})",
       R"({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}})",
       R"({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}})",
       R"({"type":"content_block_stop","index":1})",
       R"({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}})",
       R"({"type":"message_stop"})"}) {
    evs.clear();
    dec->feed("", data, evs);
    for (const auto& e : evs) enc->on_event(e, out);
  }
  EXPECT_TRUE(dec->done());
  enc->finish(out);
  auto events = sse_events(out);
  ASSERT_GE(events.size(), 7u);
  EXPECT_EQ(events.back().second, "[DONE]");
  EXPECT_NE(out.find("\"content\":\"Hel\""), std::string::npos);
  EXPECT_NE(out.find("\"name\":\"f\""), std::string::npos);
  EXPECT_NE(out.find("\"finish_reason\":\"tool_calls\""), std::string::npos);
  Doc usage(events[events.size() - 2].second);
  EXPECT_EQ(usage.root["usage"]["prompt_tokens"].get_int64().value(), 10);
  EXPECT_EQ(usage.root["usage"]["completion_tokens"].get_int64().value(), 9);
  EXPECT_EQ(usage.root["usage"]["prompt_tokens_details"]["cached_tokens"].get_int64().value(), 3);
}

TEST(Streams, ChatChunksBecomeAnthropicEvents) {
  auto dec = make_chat_stream_decoder();
  auto enc = make_messages_stream_encoder("gpt-4.1");
  std::vector<StreamEvent> evs;
  std::string out;
  for (
      const char* data :
      {R"({"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})",
       R"({"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}]})",
       R"({"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]})",
       R"({"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]})",
       R"({"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]})",
       R"({"id":"c1","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4}})",
       "[DONE]"}) {
    evs.clear();
    dec->feed("", data, evs);
    for (const auto& e : evs) enc->on_event(e, out);
  }
  EXPECT_TRUE(dec->done());
  enc->finish(out);
  auto events = sse_events(out);
  std::vector<std::string> names;
  for (auto& [n, d] : events) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "message_start", "ping", "content_block_start", "content_block_delta",
                       "content_block_stop", "content_block_start", "content_block_delta",
                       "content_block_stop", "message_delta", "message_stop"}));
  Doc delta(events[8].second);
  EXPECT_EQ(std::string(delta.root["delta"]["stop_reason"].get_string().value()), "tool_use");
  EXPECT_EQ(delta.root["usage"]["output_tokens"].get_int64().value(), 4);
  EXPECT_EQ(delta.root["usage"]["input_tokens"].get_int64().value(), 11);
}

TEST(Responses, DecodeItemsAndStreamEvents) {
  auto r = decode_responses_request(R"({"model":"m","instructions":"sys","input":[
    {"role":"user","content":[{"type":"input_text","text":"q"}]},
    {"type":"function_call","call_id":"call_1","name":"f","arguments":"{}"},
    {"type":"function_call_output","call_id":"call_1","output":"ok"}],"max_output_tokens":20})");
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_TRUE(link_tool_results(*r).ok());
  EXPECT_EQ(r->messages.size(), 3u);
  EXPECT_EQ(r->max_tokens, 20);
  EXPECT_FALSE(
      decode_responses_request(R"({"model":"m","input":[{"role":"robot","content":"x"}]})").ok());
  EXPECT_FALSE(decode_responses_request(R"({"model":"m","input":[{"type":"nonsense"}]})").ok());

  ResponsesStreamEncoder enc(response_meta(*r, "m"));
  std::string out;
  enc.on_event(StreamEvent{.kind = StreamEvent::Kind::kStart}, out);
  enc.on_event(StreamEvent{.kind = StreamEvent::Kind::kTextDelta, .text = "Hel"}, out);
  enc.on_event(StreamEvent{.kind = StreamEvent::Kind::kTextDelta, .text = "lo"}, out);
  Usage u;
  u.present = true;
  u.prompt_tokens = 5;
  u.completion_tokens = 2;
  enc.on_event(StreamEvent{.kind = StreamEvent::Kind::kUsage, .usage = u}, out);
  enc.finish(out);
  auto events = sse_events(out);
  std::vector<std::string> names;
  for (auto& [n, d] : events) names.push_back(n);
  EXPECT_EQ(names,
            (std::vector<std::string>{"response.created", "response.in_progress",
                                      "response.output_item.added", "response.content_part.added",
                                      "response.output_text.delta", "response.output_text.delta",
                                      "response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "response.completed"}));
  Doc done(events.back().second);
  EXPECT_EQ(done.root["sequence_number"].get_int64().value(), 9);
  EXPECT_EQ(done.root["response"]["usage"]["input_tokens"].get_int64().value(), 5);
  EXPECT_EQ(
      std::string(
          done.root["response"]["output"].at(0)["content"].at(0)["text"].get_string().value()),
      "Hello");
  // The completed response names the message item by the id its events used.
  Doc added(events[2].second);
  EXPECT_EQ(std::string(done.root["response"]["output"].at(0)["id"].get_string().value()),
            std::string(added.root["item"]["id"].get_string().value()));
}

// A buffered answer as stream events: fed to each format's encoder it is that format's whole
// stream, with the text, the tool call, the finish and the usage.
TEST(Streams, ABufferedAnswerBecomesAWholeStreamOfEachFormat) {
  Response r;
  r.id = "chatcmpl-1";
  r.model = "m";
  r.content = {Part{.kind = Part::Kind::kText, .text = "Hi there"},
               Part{.kind = Part::Kind::kToolCall,
                    .id = "call_7",
                    .name = "lookup",
                    .arguments = R"({"q":"x"})"}};
  r.finish = FinishReason::kToolCalls;
  r.usage.present = true;
  r.usage.prompt_tokens = 11;
  r.usage.completion_tokens = 4;
  const auto ev = stream_events(r);
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev.front().kind, StreamEvent::Kind::kStart);
  EXPECT_EQ(ev[1].text, "Hi there");
  EXPECT_EQ(ev[2].kind, StreamEvent::Kind::kToolCallStart);
  EXPECT_EQ(ev[2].id, "call_7");
  EXPECT_EQ(ev[3].text, R"({"q":"x"})");
  EXPECT_EQ(ev[4].finish, FinishReason::kToolCalls);
  EXPECT_EQ(ev[5].usage.prompt_tokens, 11);

  std::string chat;
  auto ce = make_chat_stream_encoder("m", true);
  for (const auto& e : ev) ce->on_event(e, chat);
  ce->finish(chat);
  EXPECT_NE(chat.find(R"("content":"Hi there")"), std::string::npos) << chat;
  EXPECT_NE(chat.find(R"("finish_reason":"tool_calls")"), std::string::npos) << chat;
  EXPECT_NE(chat.find(R"("prompt_tokens":11)"), std::string::npos) << chat;
  EXPECT_TRUE(chat.ends_with("data: [DONE]\n\n"));

  std::string msg;
  auto me = make_messages_stream_encoder("m");
  for (const auto& e : ev) me->on_event(e, msg);
  me->finish(msg);
  auto events = sse_events(msg);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front().first, "message_start");
  EXPECT_EQ(events.back().first, "message_stop");
  EXPECT_NE(msg.find(R"("stop_reason":"tool_use")"), std::string::npos) << msg;
  EXPECT_NE(msg.find(R"("output_tokens":4)"), std::string::npos) << msg;
}

// An answer of several choices (chat's n) streams each choice after the other, each with its
// index; a format with one choice (Messages, Responses) streams the first alone.
TEST(Streams, FurtherChoicesStreamWithTheirIndex) {
  Response r;
  r.content = {Part{.kind = Part::Kind::kText, .text = "first"}};
  r.finish = FinishReason::kLength;
  r.more_choices.push_back(
      {{Part{.kind = Part::Kind::kText, .text = "second"}}, FinishReason::kStop});
  r.usage.present = true;
  r.usage.prompt_tokens = 3;
  r.usage.completion_tokens = 8;
  const auto ev = stream_events(r);
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[3].choice, 1);
  EXPECT_EQ(ev[3].text, "second");
  EXPECT_EQ(ev[4].kind, StreamEvent::Kind::kFinish);
  EXPECT_EQ(ev[4].choice, 1);
  EXPECT_EQ(ev[5].kind, StreamEvent::Kind::kUsage);

  std::string chat;
  auto ce = make_chat_stream_encoder("m", true);
  for (const auto& e : ev) ce->on_event(e, chat);
  ce->finish(chat);
  EXPECT_NE(chat.find(R"("index":1,"delta":{"role":"assistant")"), std::string::npos) << chat;
  EXPECT_NE(chat.find(R"("index":1,"delta":{"content":"second"})"), std::string::npos) << chat;
  EXPECT_NE(chat.find(R"("index":0,"delta":{},"finish_reason":"length")"), std::string::npos)
      << chat;
  EXPECT_NE(chat.find(R"("index":1,"delta":{},"finish_reason":"stop")"), std::string::npos) << chat;

  std::string msg;
  auto me = make_messages_stream_encoder("m");
  for (const auto& e : ev) me->on_event(e, msg);
  me->finish(msg);
  EXPECT_NE(msg.find("first"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("second"), std::string::npos) << msg;
}

}  // namespace
}  // namespace bw::api
