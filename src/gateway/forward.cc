// Phases 8 and 9: forward and respond. Pick a deployment (balancer, breakers, capacity), send
// it the request through Shared::upstream, and relay the answer (streamed or buffered) in the
// client's API. Retries go to another deployment where there is one, with backoff and within
// the retry budget, and only while nothing has reached the client; fallback models follow when a
// model has nothing left.
#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include <spdlog/spdlog.h>

#include "api/chat.h"
#include "common/json_util.h"
#include "gateway/phases.h"
#include "gateway/translate.h"
#include "http/sse.h"

namespace bw::gateway {

namespace asio = boost::asio;
using http::Response;
using providers::Endpoint;

namespace {

// An attempt dropped because its client went away: it says nothing about the upstream (a
// cancelled outcome: no breaker or balancer signal, no retry). The provider has read the prompt
// and may bill it, and what it generated before the cancel is unknown. The prompt is charged
// (estimated, as for an abandoned stream), so that disconnecting cannot be a way around a budget
// or a TPM limit.
void abandon_attempt(Ctx& c, routing::RequestPlan& plan, routing::Ticket& ticket, Nanos now,
                     routing::Rng& rng) {
  routing::Outcome o;
  o.kind = routing::OutcomeKind::kCancelled;
  plan.finish(ticket, o, now, false, rng);
  note_client_gone(c);
  if (c.usage.usable()) return;
  c.usage.prompt_tokens = providers::estimate_prompt_tokens(c.llm);
  c.usage.completion_tokens = 0;
}

// A successful answer without usage, or with usage that cannot be read (canonical.h), is never
// free: it is charged `estimate` (from what was sent and received), or the counts that could be
// read where they are larger, counted and logged.
void note_usage_missing(Ctx& c, providers::Usage estimate) {
  const bool unreadable = c.usage.present;
  if (unreadable) {
    estimate.prompt_tokens = std::max(estimate.prompt_tokens, c.usage.prompt_tokens);
    estimate.completion_tokens = std::max(estimate.completion_tokens, c.usage.completion_tokens);
  }
  // The provider was told the output cap: it cannot have generated more than that per choice.
  if (c.forced_max_tokens > 0) {
    estimate.completion_tokens = std::min(
        estimate.completion_tokens, providers::completion_reservation(c.llm, c.forced_max_tokens));
  }
  c.usage = estimate;
  c.sh.metrics->usage_missing.with({c.route_model}).inc();
  spdlog::warn(
      "request {}: the upstream answer for model {} had {}; charged an estimate of "
      "{} prompt + {} completion tokens",
      c.request_id, c.route_model, unreadable ? "usage that cannot be read" : "no usage",
      estimate.prompt_tokens, estimate.completion_tokens);
}

// Output tokens a stream relayed: a token per text chunk, or 4 bytes a token, whichever is more.
std::int64_t relayed_tokens(std::size_t text_chunks, std::size_t text_chars) {
  return std::max<std::int64_t>(static_cast<std::int64_t>(text_chunks),
                                static_cast<std::int64_t>((text_chars + 3) / 4));
}

// A stream that ended without usable usage is charged its prompt estimate and what it relayed.
// An abandoned or broken one is charged that as it is; a complete one never reported usage that
// can be billed (although it was asked to), which is counted and logged (note_usage_missing).
void charge_relayed(Ctx& c, std::int64_t relayed, bool complete) {
  providers::Usage u;
  u.prompt_tokens = providers::estimate_prompt_tokens(c.llm);
  u.completion_tokens = relayed;
  if (complete) {
    note_usage_missing(c, u);
  } else {
    c.usage = u;
  }
}

const std::string& target_for(const Deployment& d, Endpoint e) {
  switch (e) {
    case Endpoint::kChat:
      return d.chat_target;
    case Endpoint::kCompletions:
      return d.completions_target;
    case Endpoint::kEmbeddings:
      return d.embeddings_target;
  }
  return d.chat_target;
}

// Request headers that are forwarded to a provider; everything else (the client's credentials,
// hop-by-hop headers, gateway controls such as x-priority) stays here.
constexpr std::array<std::string_view, 3> kForwardRequestHeaders = {"user-agent", "openai-beta",
                                                                    "accept-language"};
// Response headers passed back from a provider (at least 8 bytes: iequals_name).
constexpr std::array<std::string_view, 3> kForwardResponseHeaders = {
    "openai-processing-ms", "openai-version", "x-ratelimit-limit-requests-provider"};
static_assert(std::ranges::all_of(kForwardResponseHeaders,
                                  [](std::string_view n) { return n.size() >= 8; }));

// Fills `out`, made where it is sent from (no copy of it is moved there). `lines` holds the
// head's first lines, in pieces (http::OutboundRequest::head_lines): views of literals, the
// request id and the provider's own lines, which outlive the send. `body` is taken unless empty.
void build_upstream_request(Ctx& c, const Deployment& d, std::string& body, std::string_view target,
                            tracing::SpanRef attempt, std::array<std::string_view, 3>& lines,
                            http::OutboundRequest& out) {
  out.method = "POST";
  // A view: `target` (the caller's UpstreamBody) and the Deployment outlive the send.
  out.target = target.empty() ? std::string_view(target_for(d, c.llm.endpoint)) : target;
  // Literals, the request id (generated, or the client's checked to be printable ASCII) and the
  // provider's lines (authorization, its key's header, anthropic-version), checked once.
  lines[0] = c.llm.stream ? std::string_view(
                                "content-type: application/json\r\n"
                                "accept: text/event-stream\r\n"
                                "x-request-id: ")
                          : std::string_view(
                                "content-type: application/json\r\n"
                                "accept: application/json\r\n"
                                "x-request-id: ");
  lines[1] = c.request_id;
  lines[2] = d.provider->request_lines;
  out.head_lines = lines;
  if (d.provider->wire.wire == providers::Wire::kAnthropic) {
    if (auto v = c.req.header("anthropic-beta"); !v.empty())
      out.headers.add_known("anthropic-beta", v);
  }
  for (auto name : kForwardRequestHeaders) {
    if (auto v = c.req.header(name); !v.empty()) out.headers.add(name, v);
  }
  tracing::add_upstream_headers(c, attempt, out.headers);
  if (!body.empty()) out.body = std::move(body);
  out.cancel = &c.upstream_cancel;
}

// Header names against names of at least 8 bytes, ignoring ASCII case: http::iequals_words
// inline (http::iequals, out of line here, cost ~60 instructions a call).
bool istarts_with(std::string_view s, std::string_view name) {
  return s.size() >= name.size() && http::iequals_words(s.data(), name.data(), name.size());
}
bool iequals_name(std::string_view s, std::string_view name) {
  return s.size() == name.size() && http::iequals_words(s.data(), name.data(), name.size());
}

// What the gateway reads of an upstream answer's headers, found in one pass over them: the
// provider's rate-limit headers (all that parse_provider_limits looks up: x-ratelimit-*,
// anthropic-ratelimit-*, retry-after, retry-after-ms) into `limits`, and the headers passed back
// to the client (kForwardResponseHeaders, in the upstream's order) appended to `passed` as the
// lines they are (the answer's parser validated them). The dozen rate-limit lookups then search
// only those lines (usually none) instead of every header of every answer.
void scan_upstream_headers(const http::Headers& from, http::Headers& limits,
                           http::Headers& passed) {
  // Over the wire form ("name: value\r\n" lines): a line is split only when its first letter
  // can start a name wanted here (x-, a-, r-, o-); most of an answer's headers are not.
  const char* p = from.wire().data();
  const char* const end = p + from.wire().size();
  while (p < end) {
    // A list's lines end in CRLF; a value holds no LF.
    const auto* const lf = static_cast<const char*>(std::memchr(p, '\n', end - p));
    if (!lf) break;
    const std::string_view whole(p, static_cast<std::size_t>(lf + 1 - p));
    const char first = static_cast<char>(*p | 0x20);
    p = lf + 1;
    if (first != 'x' && first != 'a' && first != 'r' && first != 'o') continue;
    const std::string_view line = whole.substr(0, whole.size() - 2);
    // The list's form is "name: value", and a name holds no colon.
    const auto colon = line.find(':');
    if (colon == std::string_view::npos || colon + 2 > line.size()) continue;
    const std::string_view k = line.substr(0, colon), v = line.substr(colon + 2);
    // Each prefix is tried on the names of its first letter only.
    if (first == 'x'   ? istarts_with(k, "x-ratelimit-")
        : first == 'a' ? istarts_with(k, "anthropic-ratelimit-")
        : first == 'r' ? istarts_with(k, "retry-after")
                       : false) {
      limits.add_parsed(k, v);
    }
    for (auto name : kForwardResponseHeaders) {
      if (iequals_name(k, name)) passed.add_parsed_line(whole, false);
    }
  }
}

// The stretches of one read that the client gets, around the events held back from it. They
// leave as one chunk without being joined; only past the pieces that a write takes are the last
// ones joined.
class Stretches {
 public:
  void clear() {
    n_ = 0;
    size_ = 0;
    joined_.clear();
  }
  void add(std::string_view s) {
    if (s.empty()) return;
    size_ += s.size();
    if (n_ < views_.size()) {
      views_[n_++] = s;
      return;
    }
    if (joined_.empty()) joined_.assign(views_.back());
    joined_.append(s);
    views_.back() = joined_;
  }
  std::span<const std::string_view> pieces() const { return {views_.data(), n_}; }
  std::size_t size() const { return size_; }

 private:
  std::array<std::string_view, http::ResponseWriter::kMaxChunkPieces> views_;
  std::size_t n_ = 0;
  std::size_t size_ = 0;
  std::string joined_;
};

constexpr std::size_t kNoSettle = static_cast<std::size_t>(-1);

// A stream's ChunkPrefix, taken from the thread's spare ones and given back when the stream
// ends: its strings keep their room, so that a stream's first events do not allocate them anew
// (three allocations and frees a stream otherwise). At most kMax spares a thread (~0.5 KB each
// for the usual events; their strings are bounded by ChunkPrefix::kMaxBytes).
class SparePrefix {
 public:
  SparePrefix() {
    auto& s = spares();
    if (s.empty()) {
      p_ = std::make_unique<providers::ChunkPrefix>();
    } else {
      p_ = std::move(s.back());
      s.pop_back();
    }
  }
  ~SparePrefix() {
    auto& s = spares();
    if (s.size() < kMax) {
      p_->reset();
      s.push_back(std::move(p_));
    }
  }
  SparePrefix(const SparePrefix&) = delete;
  SparePrefix& operator=(const SparePrefix&) = delete;
  providers::ChunkPrefix& get() { return *p_; }

 private:
  static constexpr std::size_t kMax = 256;
  static std::vector<std::unique_ptr<providers::ChunkPrefix>>& spares() {
    thread_local std::vector<std::unique_ptr<providers::ChunkPrefix>> s = [] {
      std::vector<std::unique_ptr<providers::ChunkPrefix>> v;
      v.reserve(kMax);
      return v;
    }();
    return s;
  }
  std::unique_ptr<providers::ChunkPrefix> p_;
};

// The client's head of a relayed stream (ResponseWriter::stream_head), before its body starts.
void stream_head_out(Ctx& c, const http::Headers& passed);

// Phase 8 for a stream: pass events through one by one, counting usage on the way. The extra
// usage chunk is only shown to a client that asked for it. Made in forward::run's frame when
// the answer is a stream to relay: now() relays what it can without a coroutine of its own
// (the upstream's bytes at hand, the client's socket taking them at once: a short stream that
// came whole with its head is relayed so), and rest() goes on from where it stopped, awaiting
// what must be waited for (the upstream's next bytes, the client's socket) and the rare steps
// (a broken stream's error event, a budget lease's ledger row, a truncated stream's end).
// Either way each read's events leave as soon as they are in, in the same order and writes.
class StreamRelay {
 public:
  StreamRelay(Ctx& c, http::UpstreamResponse& up)
      : c_(c), up_(up), capture_(phase_cache::capturing(c)) {}
  StreamRelay(const StreamRelay&) = delete;
  StreamRelay& operator=(const StreamRelay&) = delete;

  // Starts the stream (`passed`: the upstream's headers passed to the client,
  // kForwardResponseHeaders) and relays as far as it can without waiting. True when the relay
  // is over; false when rest() must follow.
  bool now(const http::Headers& passed) {
    stream_head_out(c_, passed);
    // When the first body bytes came with the upstream's head, the client's head leaves with
    // them in one write; otherwise it leaves now, as the upstream's did.
    held_ = up_.body_at_hand();
    return run();
  }

  // The relay from where now() (or the step before) stopped.
  asio::awaitable<void> rest() {
    for (;;) {
      switch (at_) {
        case At::kStart:
          started(co_await c_.w.start_stream(held_));
          break;
        case At::kRead: {
          Result<std::string_view> piece = co_await up_.read_some();
          at_ = take(piece);
          break;
        }
        case At::kWrite:
          at_ = written(co_await c_.w.write_chunk_pieces(send_.pieces(), last_));
          break;
        case At::kFail:
          co_await c_.w.write_chunk(fail_);
          at_ = At::kFinish;
          break;
        case At::kSettle:
          at_ = written(co_await settle());
          break;
        case At::kFinish:
          co_await finish();
          co_return;
        case At::kEnd:
          co_await c_.w.end_stream();
          co_return;
        case At::kKeep:
        case At::kDone:
          break;
      }
      if (run()) co_return;
    }
  }

 private:
  // What the relay does next.
  enum class At : std::uint8_t {
    kStart,   // start the client's stream
    kRead,    // read the upstream's next piece
    kWrite,   // write the piece's events (send_)
    kKeep,    // keep the piece's unfinished event for the next read
    kFail,    // the upstream failed: write the error event (fail_)
    kSettle,  // the events before [DONE], the budget lease's ledger row, then the rest
    kFinish,  // the stream's end: charge it, end the client's stream
    kEnd,     // charged: end the client's stream
    kDone,
  };

  // The steps that settle without waiting; false at the first that must wait (or that only
  // rest() takes), which is then at_. True when the relay is over.
  bool run() {
    for (;;) {
      switch (at_) {
        case At::kStart: {
          const auto r = c_.w.start_stream_now(held_);
          if (!r) return false;
          started(*r);
          break;
        }
        case At::kRead: {
          auto got = up_.read_some_now();
          if (!got) return false;
          at_ = take(*got);
          break;
        }
        case At::kWrite: {
          const auto r = c_.w.write_chunk_pieces_now(send_.pieces(), last_);
          if (!r) return false;
          at_ = written(*r);
          break;
        }
        case At::kKeep:
          at_ = kept();
          break;
        case At::kFinish:
          return finish_now();
        case At::kDone:
          return true;
        case At::kFail:
        case At::kSettle:
        case At::kEnd:
          return false;
      }
    }
  }

  void started(bool ok) {
    if (!ok) {
      note_client_gone(c_);
      up_.abort();
      at_ = At::kDone;
      return;
    }
    c_.status = 200;
    at_ = At::kRead;
  }

  // One read of the upstream: its complete events walked and made ready to leave (send_).
  At take(Result<std::string_view>& piece) {
    if (!piece && c_.client_gone) return At::kFinish;  // we dropped the upstream ourselves
    if (!piece) {
      // The upstream failed after bytes reached the client: no retry is possible. End the
      // stream cleanly with an error event so the client sees why it stopped.
      c_.outcome.set(OutcomeKind::kUpstream, piece.error().code);
      fail_ = "data: " +
              openai_error_body("The upstream stream failed: " + piece.error().message,
                                "upstream_error", piece.error().code) +
              "\n\n";
      c_.bytes_out += fail_.size();
      return At::kFail;
    }
    if (piece->empty()) return At::kFinish;
    if (c_.ttft < 0) c_.ttft = c_.now() - c_.start;
    // Every complete event of this read leaves in one write. Events pass through as they came:
    // the bytes are written from the read itself (`run`, a contiguous stretch of it), in
    // several stretches around an event that is held back.
    window_ = splitter_.window(*piece);
    std::string_view rest = window_, event, run, data;
    send_.clear();
    // A request covered by a budget lease gets its ledger row before [DONE]: the events before
    // it leave first (pieces [0, settle_at_)), so that a first token never waits.
    settle_at_ = kNoSettle;
    providers::ChunkPrefix& prefix = spare_.get();  // the start that this stream's events share
    providers::ChunkInfo info;
    for (;;) {
      // A text event of the stream's usual shape is split and inspected in one pass.
      if (!providers::next_shaped_event(rest, event, data, info, prefix)) {
        if (!http::next_event_data(rest, event, data, scratch_)) break;
        info = providers::inspect_chunk(data, prefix);
      }
      if (info.done && !saw_done_ && phase_cost::covered(c_)) {
        send_.add(run);
        run = {};
        settle_at_ = send_.pieces().size();
      }
      if (info.done) saw_done_ = true;
      if (info.has_text || info.other_output) {
        // A tool call's bytes are not measured on the way: its whole event counts (more than
        // was generated; only charged when the usage is missing or unreadable).
        text_chars_ += info.other_output ? data.size() : info.text_chars;
        ++text_chunks_;
      }
      if (info.usage.present) c_.usage = info.usage;
      // A stream that the cache does not keep at its start is not kept later on: its events
      // are not offered to the cache one by one.
      if (capture_) phase_cache::capture_event(c_, event);
      if (info.usage_only && !c_.llm.client_wants_usage) {
        send_.add(run);
        run = {};
        continue;
      }
      run = run.empty() ? event : std::string_view(run.data(), run.size() + event.size());
    }
    send_.add(run);
    consumed_ = window_.size() - rest.size();
    for (auto p : send_.pieces()) tracing::observe_output(c_, p);
    // Before keep(): `send_` may point into the splitter's buffer, which keep() rewrites.
    last_ = saw_done_ && up_.complete();
    if (settle_at_ != kNoSettle) return At::kSettle;
    if (send_.size() == 0) return At::kKeep;
    c_.bytes_out += send_.size();
    return At::kWrite;
  }

  // After the write of a read's events.
  At written(bool ok) {
    if (!ok) {
      // The client went away: drop the upstream connection so the provider stops generating.
      note_client_gone(c_);
      up_.abort();
      return At::kFinish;
    }
    ended_ = last_;
    return kept();
  }

  // The read's unfinished event kept for the next one.
  At kept() {
    if (!splitter_.keep(window_, consumed_)) {
      c_.outcome.set(OutcomeKind::kUpstream, "sse_event_too_large");
      up_.abort();
      return At::kFinish;
    }
    return ended_ ? At::kFinish : At::kRead;
  }

  // A read with [DONE] for a request covered by a budget lease: the events before it, the
  // ledger row, then [DONE] and what follows. False when the client is gone.
  asio::awaitable<bool> settle() {
    // Stretches joins its pieces past kMaxChunkPieces: then all of them wait.
    const auto all = send_.pieces();
    const std::size_t head = all.empty() ? 0 : std::min(settle_at_, all.size() - 1);
    bool ok = true;
    if (head > 0) {
      std::size_t head_bytes = 0;
      for (std::size_t i = 0; i < head; ++i) head_bytes += all[i].size();
      c_.bytes_out += head_bytes;
      ok = co_await c_.w.write_chunk_pieces(all.first(head), false);
    }
    if (ok) {
      // The usage as the end of the stream would take it (finish), before the row is written.
      api::check_output_counted(c_.usage, text_chunks_ > 0);
      if (!c_.usage.usable()) charge_relayed(c_, relayed_tokens(text_chunks_, text_chars_), true);
      if (phase_cost::covered(c_)) {
        if (auto row =
                phase_cost::settle_before_answer_now(c_, co_await asio::this_coro::executor)) {
          co_await phase_cost::settle_before_answer(c_, std::move(*row));
        }
      }
      std::size_t tail_bytes = 0;
      for (std::size_t i = head; i < all.size(); ++i) tail_bytes += all[i].size();
      c_.bytes_out += tail_bytes;
      if (tail_bytes > 0) ok = co_await c_.w.write_chunk_pieces(all.subspan(head), last_);
    }
    co_return ok;
  }

  // The stream's end without a write of its own (finish's, when it has none but end_stream,
  // which is then left to rest()). False when rest() must take it (at_ says how).
  bool finish_now() {
    // A truncated stream's error event: finish() writes it, in its place.
    if (truncated()) return false;
    phase_cache::capture_stream_end(c_, saw_done_);
    charge();
    if (!c_.cancelled && !ended_) {
      at_ = At::kEnd;
      return false;
    }
    at_ = At::kDone;
    return true;
  }

  asio::awaitable<void> finish() {
    phase_cache::capture_stream_end(c_, saw_done_);
    if (truncated()) {
      // The upstream ended the body without [DONE]: a truncated stream, not a success.
      c_.outcome.set(OutcomeKind::kUpstream, "upstream_truncated");
      std::string ev = "data: " +
                       openai_error_body("The upstream stream ended before it was complete.",
                                         "upstream_error", "upstream_truncated") +
                       "\n\n";
      c_.bytes_out += ev.size();
      co_await c_.w.write_chunk(ev);
    }
    charge();
    if (!c_.cancelled && !ended_) co_await c_.w.end_stream();
  }

  bool truncated() const { return !saw_done_ && !c_.cancelled && c_.outcome.none(); }

  // The stream's usage, as relayed.
  void charge() {
    // A client that left while its stream ran is logged as 499, however it was noticed.
    if (c_.client_gone || c_.cancelled) note_client_gone(c_);
    // Usage that counts no output for a stream that relayed some is unreadable, never free.
    if (saw_done_ && !c_.cancelled) api::check_output_counted(c_.usage, text_chunks_ > 0);
    if (!c_.usage.usable()) {
      charge_relayed(c_, relayed_tokens(text_chunks_, text_chars_), saw_done_ && !c_.cancelled);
    }
  }

  Ctx& c_;
  http::UpstreamResponse& up_;
  At at_ = At::kStart;
  bool held_ = false;
  const bool capture_;
  bool saw_done_ = false;
  bool ended_ = false;
  bool last_ = false;  // the read's events end the stream
  std::size_t text_chars_ = 0, text_chunks_ = 0;
  http::SseSplitter splitter_;
  std::string_view window_;   // the read's bytes, after what was pending
  std::size_t consumed_ = 0;  // of window_: its complete events
  Stretches send_;
  std::size_t settle_at_ = kNoSettle;
  std::string scratch_;
  std::string fail_;
  SparePrefix spare_;
};

// A translated Responses answer with `store` is kept for previous_response_id, before the client
// sees its end, so that the id can be continued at once (on any replica, with Redis). A store that
// cannot take it is skipped: the answer is not held up past the store's deadline.
asio::awaitable<void> store_response(Ctx& c, const api::Response& answer) {
  if (c.inbound != api::Format::kResponses || !c.canon || !c.canon->store || !c.sh.responses) {
    co_return;
  }
  // Named first: GCC 12 mishandles a temporary aggregate inside a co_await expression.
  api::StoredConversation entry{api::conversation_after(*c.canon, answer), c.canon->system,
                                response_owner(c)};
  std::string id = c.response_meta->id;
  const Nanos now = c.now();
  const bool stored = co_await c.sh.responses->put(std::move(id), std::move(entry), now);
  if (!stored) {
    spdlog::debug("response {} not stored ({} store skipped it)", c.response_meta->id,
                  c.sh.responses->backend());
  }
}

// A Responses answer an `openai` provider stored itself (passed through, `store` not false): the
// gateway keeps a marker of whose it is under the provider's id, before the client sees its end,
// so that only its owner's previous_response_id is passed on to OpenAI.
asio::awaitable<void> store_upstream_marker(Ctx& c, const std::string& upstream_id) {
  if (c.inbound != api::Format::kResponses || !c.canon || !c.canon->store || !c.sh.responses ||
      upstream_id.empty()) {
    co_return;
  }
  api::StoredConversation marker;
  marker.owner = response_owner(c);
  marker.upstream = true;
  std::string id = upstream_id;
  const Nanos now = c.now();
  if (!co_await c.sh.responses->put(std::move(id), std::move(marker), now)) {
    spdlog::debug("response {} of the provider not marked ({} store skipped it)", upstream_id,
                  c.sh.responses->backend());
  }
}

// A previous_response_id the store did not give this caller: refused as an unknown id, unless it
// goes to OpenAI and is the caller's response stored there (a marker), or
// responses.forward_unknown_ids lets unknown ids through. Another owner's entry or marker is not
// found for this caller, so it reads exactly as an unknown id.
std::optional<Error> check_previous_response(const Ctx& c, const UpstreamBody& call) {
  if (!c.canon || c.canon->previous_response_id.empty() || c.history_expanded) return std::nullopt;
  if (call.passthrough && (c.history_upstream || c.rt->config().responses.forward_unknown_ids)) {
    return std::nullopt;
  }
  const std::string& id = c.canon->previous_response_id;
  if (c.history_unavailable) {
    Error e = errors::make(errors::kResponseStoreUnavailable,
                           "The response store could not be reached to look up "
                           "previous_response_id '" +
                               id + "'; retry later.",
                           "previous_response_id");
    e.retry_after_s = 1;
    return e;
  }
  return errors::make(errors::kPreviousResponseNotFound,
                      "Previous response with id '" + id + "' not found.", "previous_response_id");
}

// Fields the provider's format cannot carry: named in x-bellwether-dropped-params, or the request
// refused before it is sent when the client asked for strict_params.
std::optional<Error> note_dropped(Ctx& c, std::vector<std::string> dropped) {
  std::sort(dropped.begin(), dropped.end());
  dropped.erase(std::unique(dropped.begin(), dropped.end()), dropped.end());
  std::string list;
  for (const auto& f : dropped) {
    if (!list.empty()) list += ", ";
    list += f;
  }
  const bool strict =
      (c.canon && c.canon->strict_params) || c.req.header("x-bellwether-strict-params") == "true";
  if (!list.empty() && strict) {
    return errors::make(errors::kUnsupportedParams, "The provider of '" + c.route_model +
                                                        "' cannot take: " + list +
                                                        " (strict_params is set).");
  }
  c.dropped_params = std::move(list);
  return std::nullopt;
}

// Phase 9 for a stream whose client API is not the provider's (or a same-format Responses or
// Messages stream): each upstream event is decoded and the client's events are written at once,
// so the first token leaves as soon as the provider sends it. Usage is read on the way.
asio::awaitable<void> relay_translated(Ctx& c, http::UpstreamResponse& up, http::Headers headers,
                                       const UpstreamBody& call) {
  headers.add_known("content-type", "text/event-stream");
  headers.add_known("cache-control", "no-cache");
  if (!co_await c.w.begin_stream(200, headers)) {
    note_client_gone(c);
    up.abort();
    co_return;
  }
  c.status = 200;
  const bool include_usage = c.canon ? c.canon->stream_usage : c.llm.client_wants_usage;
  // A chat stream kept for the cache keeps its usage chunk, so that a later client that asks for
  // usage gets it; this client sees it only if it asked.
  const bool strip_usage =
      c.inbound == api::Format::kChat && !include_usage && phase_cache::capturing(c);
  StreamTranslator tr(c.inbound, call, c.llm.model, include_usage || strip_usage,
                      c.inbound == api::Format::kResponses ? &c.response_meta.get() : nullptr);
  http::SseSplitter splitter;
  std::string out;
  bool broken = false;
  // A Responses stream passed through is marked as its owner's once the provider's last event
  // (which names the id) is in, before the client sees it.
  bool marked = !call.passthrough || c.inbound != api::Format::kResponses;
  for (;;) {
    auto piece = co_await up.read_some();
    if (!piece && c.client_gone) break;
    if (!piece) {
      c.outcome.set(OutcomeKind::kUpstream, piece.error().code);
      out.clear();
      tr.fail("api_error", "The upstream stream failed: " + piece.error().message, out);
      c.bytes_out += out.size();
      co_await c.w.write_chunk(out);
      broken = true;
      break;
    }
    if (piece->empty()) break;
    if (c.ttft < 0) c.ttft = c.now() - c.start;
    if (!splitter.feed(*piece)) {
      c.outcome.set(OutcomeKind::kUpstream, "sse_event_too_large");
      up.abort();
      broken = true;
      break;
    }
    out.clear();
    std::string_view event;
    while (splitter.next(event)) tr.feed(event, out);
    splitter.compact();
    if (!marked && tr.done() && !tr.upstream_id().empty()) {
      marked = true;
      co_await store_upstream_marker(c, tr.upstream_id());
    }
    phase_cache::capture_event(c, out);
    if (!out.empty()) {
      c.bytes_out += out.size();
      if (!co_await c.w.write_chunk(out)) {
        note_client_gone(c);
        up.abort();
        break;
      }
    }
  }
  // A stream that ended early may still be stored by the provider: its owner may continue it.
  if (!marked && !c.cancelled && !tr.upstream_id().empty()) {
    co_await store_upstream_marker(c, tr.upstream_id());
  }
  out.clear();
  bool complete = false;
  if (!c.cancelled && !broken) {
    if (tr.done()) {
      tr.finish(out);
      complete = true;
      phase_cache::capture_event(c, out);
      if (strip_usage) out = phase_cache::without_usage_chunks(out);
      if (const auto* answer = tr.accumulated()) {
        co_await store_response(c, *answer);
      }
    } else if (c.outcome.none()) {
      c.outcome.set(OutcomeKind::kUpstream, "upstream_truncated");
      tr.fail("api_error", "The upstream stream ended before it was complete.", out);
    }
  }
  phase_cache::capture_stream_end(c, complete);
  // The usage is known before the last events leave: a request covered by a budget lease gets
  // its ledger row first.
  c.usage = tr.usage();
  if (complete) api::check_output_counted(c.usage, tr.generated());
  const std::int64_t relayed = relayed_tokens(tr.text_chunks(), tr.text_chars());
  if (c.usage.usable() && !complete) {
    // A stream that broke before its end: the usage read so far is the input side (Anthropic's
    // message_start) or a running total, not what was generated. What was relayed was.
    c.usage.completion_tokens = std::max(c.usage.completion_tokens, relayed);
  }
  if (!c.usage.usable()) charge_relayed(c, relayed, complete);
  if (complete && phase_cost::covered(c)) {
    if (auto row = phase_cost::settle_before_answer_now(c, co_await asio::this_coro::executor)) {
      co_await phase_cost::settle_before_answer(c, std::move(*row));
    }
  }
  if (!out.empty()) {
    c.bytes_out += out.size();
    co_await c.w.write_chunk(out);
  }
  // A client that left while its stream ran is logged as 499, however it was noticed.
  if (c.client_gone || c.cancelled) note_client_gone(c);
  if (!c.cancelled) co_await c.w.end_stream();
}

// The clock is read for the seed only, on the thread's first use.
routing::Rng& thread_rng(const Ctx& c) {
  thread_local routing::Rng rng(std::random_device{}() ^ static_cast<std::uint64_t>(c.now()));
  return rng;
}

asio::awaitable<void> sleep_for(Nanos n) {
  if (n <= 0) co_return;
  asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::nanoseconds(n));
  co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
}

Nanos parse_retry_after(std::string_view v) {
  if (v.empty()) return 0;
  char* end = nullptr;
  std::string s(v);
  double secs = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || !std::isfinite(secs) || secs < 0) return 0;  // HTTP dates: ignored
  return static_cast<Nanos>(std::min(secs, 86400.0) * 1e9);
}

routing::Outcome outcome_for_error(const Error& e, Nanos latency) {
  routing::Outcome o;
  o.latency_ns = latency;
  o.kind = e.code == http::kUpstreamTimeout ? routing::OutcomeKind::kTimeout
                                            : routing::OutcomeKind::kConnectError;
  // The gateway's own pool bound refused it before anything was sent: the upstream's health is
  // unknown, so it must neither trip the breaker nor look like a fast failure to the balancer.
  if (e.code == http::kUpstreamConnectionLimit) o.kind = routing::OutcomeKind::kCancelled;
  return o;
}

routing::Outcome outcome_for_status(int status, const http::Headers& h, std::string_view body,
                                    Nanos latency) {
  routing::Outcome o;
  o.status = status;
  o.latency_ns = latency;
  if (status < 400) {
    o.kind = routing::OutcomeKind::kSuccess;
  } else if (status == 429) {
    o.kind = routing::OutcomeKind::kHttp429;
    o.retry_after_ns = parse_retry_after(h.get("retry-after"));
  } else if (status >= 500) {
    o.kind = routing::OutcomeKind::kHttp5xx;
    o.retry_after_ns = parse_retry_after(h.get("retry-after"));
  } else {
    o.kind = routing::OutcomeKind::kClientError;
    o.context_overflow = body.find("context_length_exceeded") != std::string_view::npos;
  }
  return o;
}

void record_attempt(Ctx& c, const std::string& deployment, int status, Nanos latency) {
  auto& m = *c.sh.metrics;
  const std::string_view cls =
      status == 0 ? std::string_view("error") : telemetry::status_class(status);
  // The attempt's deployment is c.deployment (forward sets both): its series are cached there.
  auto* cache =
      c.deployment && c.deployment->cfg->id == deployment ? c.deployment->metrics.get() : nullptr;
  const int slot = status == 0 ? 0 : status / 100;
  if (cache && slot >= 0 && slot <= 5 && (status == 0 || (status >= 100 && status < 600))) {
    cache->upstream_requests
        .get(m.upstream_requests, static_cast<std::size_t>(slot), deployment, cls)
        .inc();
    cache->upstream_latency.get(m.upstream_latency, 0, deployment).observe(to_seconds(latency));
  } else {
    m.upstream_requests.with({deployment, cls}).inc();
    m.upstream_latency.with({deployment}).observe(to_seconds(latency));
  }
  if (c.sh.scaling) c.sh.scaling->note_attempt(deployment, latency);
}

// The answer when the plan has nothing left to try and no upstream answer to pass on.
Error nothing_left(Ctx& c, const routing::RequestPlan::Step& step, const Error* last_error,
                   Nanos now) {
  if (last_error) c.last_failure = last_error->message;
  if (last_error && last_error->code == http::kUpstreamTimeout) return *last_error;
  const double wait_s = step.available_at > now ? to_seconds(step.available_at - now) : 1.0;
  Error e = errors::make(errors::kUpstreamDegraded,
                         "The service is degraded: no deployment of '" + c.route_model +
                             "' or its fallbacks can take the request now (" +
                             routing::to_string(step.failure) + "). Retry later.");
  if (step.failure == routing::PickFailure::kAllAtCapacity ||
      step.failure == routing::PickFailure::kAllCooling) {
    // The providers' own rate limits: say so as a rate limit, with their reset time.
    e = errors::make(errors::kUpstreamRateLimited,
                     "Every deployment of '" + c.route_model +
                         "' is at its provider's rate limit or cooling down after a 429. "
                         "Retry after the time in Retry-After.");
  }
  e.retry_after_s = std::max(1.0, wait_s);
  if (last_error) c.outcome.set(OutcomeKind::kUpstream, last_error->code);
  return e;
}

// A failed attempt (no answer) ends the request unless the plan retries it.
bool gives_up(const routing::RetryDecision& d) {
  return d.retry() || d.verdict == routing::RetryVerdict::kAttemptsExhausted ||
         d.verdict == routing::RetryVerdict::kDeadline ||
         d.verdict == routing::RetryVerdict::kBudgetExhausted ||
         d.verdict == routing::RetryVerdict::kNotRetryable;
}

// The gateway's headers on an upstream answer (no content-type: the caller adds it).
http::Headers answer_headers(const Ctx& c, const http::Headers& passed) {
  http::Headers headers;
  headers.reserve(256 + c.extra.wire().size() + passed.wire().size());
  headers.add_known_valid("x-request-id", c.request_id);
  headers.add_known("x-bellwether-model", c.model_served);
  if (c.model_served != c.route_model)
    headers.add_known("x-bellwether-fallback-from", c.route_model);
  headers.append(c.extra);
  headers.append(passed);
  return headers;
}

// The balancer's and breaker's view of a relayed stream.
routing::Outcome stream_outcome(const Ctx& c, Nanos latency) {
  routing::Outcome o;
  o.status = 200;
  o.latency_ns = latency;
  o.ttft_ns = c.ttft;
  o.tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
  o.kind = c.cancelled        ? routing::OutcomeKind::kCancelled
           : c.outcome.none() ? routing::OutcomeKind::kSuccess
                              : routing::OutcomeKind::kHttp5xx;
  return o;
}

// The header lines of a buffered answer (or of a relayed stream: `kStream`) as the client gets
// them, in pieces of whole lines
// (ResponseWriter::head writes them into the connection's buffer as they are, without a
// header list built first): the gateway's own (request id, model, fallback), the rate limits'
// and the earlier phases' (c.extra), those the upstream passes on (`passed`), the dropped
// parameters, the content type (the provider's, or JSON for a body the gateway wrote in the
// client's API: `translated`) and a Retry-After; a stream's content type is an event stream's,
// with no-cache. A value a header list would refuse (a CR, LF or NUL) leaves its header out,
// as Headers::add_known does. Views into the arguments and into itself: used where it is made.
class AnswerLines {
 public:
  struct Stream {};
  static constexpr Stream kStream{};

  AnswerLines(const Ctx& c, const http::Headers& passed, const http::UpstreamResponse& up,
              bool translated) {
    gateway_lines(c, passed);
    const auto ct = up.content_type();  // validated by the answer's parser
    add("\r\ncontent-type: ", translated || ct.empty() ? std::string_view("application/json") : ct);
    if (auto ra = up.retry_after(); !ra.empty() && up.status() >= 400) {
      add("\r\nretry-after: ", ra);
    } else if (up.status() == 429 && c.upstream_limits->retry_after_s >= 0) {
      const auto end = std::to_chars(digits_, digits_ + sizeof digits_,
                                     static_cast<long>(std::ceil(c.upstream_limits->retry_after_s)))
                           .ptr;
      add("\r\nretry-after: ", std::string_view(digits_, static_cast<std::size_t>(end - digits_)));
    }
    end_line();
  }
  AnswerLines(const Ctx& c, const http::Headers& passed, Stream) {
    gateway_lines(c, passed);
    add("\r\ncontent-type: ", "text/event-stream");
    add("\r\ncache-control: ", "no-cache");
    end_line();
  }
  AnswerLines(const AnswerLines&) = delete;
  AnswerLines& operator=(const AnswerLines&) = delete;

  std::span<const std::string_view> lines() const { return {at_.data(), n_}; }
  // The same answer as a Response, for one kept to be sent later.
  Response response(int status, std::string body) const {
    Response r;
    r.status = status;
    std::size_t size = 0;
    for (const auto l : lines()) size += l.size();
    r.headers.reserve(size);
    for (const auto l : lines()) r.headers.raw().append(l);
    r.body = std::move(body);
    return r;
  }

 private:
  // The gateway's own lines, the earlier phases' and those the upstream passes on.
  void gateway_lines(const Ctx& c, const http::Headers& passed) {
    // Generated, or the client's checked to be printable ASCII.
    add("\r\nx-request-id: ", c.request_id);
    add_checked("\r\nx-bellwether-model: ", c.model_served);
    if (c.model_served != c.route_model)
      add_checked("\r\nx-bellwether-fallback-from: ", c.route_model);
    // Neither list holds a framing header, but one that did would be dropped, as from a
    // header list's.
    add_lines(c.extra, extra_kept_);
    add_lines(passed, passed_kept_);
    if (!c.dropped_params.empty())
      add_checked("\r\nx-bellwether-dropped-params: ", c.dropped_params);
  }
  // A line "name: value": `crlf_name` is "\r\nname: ", whose CRLF ends the line before (the
  // pieces are fewer when a line's end and the next one's name are one).
  void add(std::string_view crlf_name, std::string_view value) {
    at_[n_++] = open_ ? crlf_name : crlf_name.substr(2);
    at_[n_++] = value;
    open_ = true;
  }
  void add_checked(std::string_view crlf_name, std::string_view value) {
    if (http::valid_header_value(value)) add(crlf_name, value);
  }
  void end_line() {
    if (open_) at_[n_++] = "\r\n";
    open_ = false;
  }
  void add_lines(const http::Headers& h, http::Headers& kept) {
    if (h.empty()) return;
    end_line();
    if (!h.may_have_framing()) {
      at_[n_++] = h.wire();
      return;
    }
    for (auto [n, v] : h.items()) {
      if (!http::is_framing_header(n)) kept.add_parsed(n, v);
    }
    at_[n_++] = kept.wire();
  }

  std::array<std::string_view, 16> at_;
  std::size_t n_ = 0;
  bool open_ = false;  // the last piece ends a line without its CRLF
  char digits_[24];
  http::Headers extra_kept_, passed_kept_;
};

void stream_head_out(Ctx& c, const http::Headers& passed) {
  const AnswerLines lines(c, passed, AnswerLines::kStream);
  c.w.stream_head(200, lines.lines());
}

// Room in forward::run's frame for the client's body spliced (providers::splice_request, which
// sets every member it sends), left unset until then: constructing a SplicedBody zeroes its 16
// pieces, four lines of the frame per request, most of which no request uses.
union SpliceRoom {
  SpliceRoom() {}
  providers::SplicedBody body;
};
static_assert(std::is_trivially_destructible_v<providers::SplicedBody>);

// forward::run's state across its awaits, kept in its frame. Every request in flight holds that
// frame, so it keeps only what an await must outlive, and the rare paths' state behind pointers;
// the work between two awaits is done by plain functions (below), whose locals live on the stack.
// GCC gives every local of a coroutine (and every temporary of an expression that awaits) its
// own room in the frame, whether or not it lives across an await.
struct Attempts {
  explicit Attempts(Ctx& c)
      : rng(thread_rng(c)),
        plan(c.sh.router.plan(c.route_model, c.turn_now())),
        max_retry_wait(c.rt->config().retry.cap) {
    // The admission queue reserved this deployment's rate capacity for the request.
    if (const auto& pinned = c.permit.deployment(); !pinned.empty()) plan.pin_first(pinned);
  }
  routing::Rng& rng;
  routing::RequestPlan plan;
  // A retry that must wait longer than the backoff cap (a long upstream Retry-After) is not
  // worth holding a concurrency slot for: the client gets the answer and its Retry-After now.
  Nanos max_retry_wait;
  Nanos delay = 0;  // before the next attempt
  // The last upstream answer, passed on if we give up, and the last failure: set only when an
  // attempt failed and another may follow.
  std::unique_ptr<Response> last_response;
  std::unique_ptr<Error> last_error;

  // The attempt in progress.
  routing::RequestPlan::Step step;
  const Deployment* d = nullptr;
  bool fast = false;
  Nanos sent_at = 0;
  tracing::SpanRef span = tracing::kNoSpan;
  UpstreamBody call;
  std::optional<http::OutboundRequest> out;  // while it is sent
  http::Headers headers;  // the upstream's headers passed on; a stream's: the gateway's too
  // Last: read only while the request is sent, and not destroyed. Between the members above
  // (~350 bytes), they put the ones touched after the answer and by the destructor on more
  // cache lines, cold by then at hundreds of requests in flight.
  std::array<std::string_view, 3> out_lines;  // out's first header lines
  SpliceRoom splice;                          // out's body, when it is the client's spliced

  routing::Ticket& ticket() { return *step.ticket; }
  const routing::DeploymentConfig& dep_cfg() { return ticket().deployment(); }
};

// A buffered answer, from its body's arrival to the client's answer: in the frame of
// answer_buffered, which is made when the answer has arrived and is gone when it is sent. That
// frame's memory was given back by the request answered before, and is still in the caches;
// what forward::run's frame holds across the wait for the upstream is not, by the time the
// answer arrives, with hundreds of requests in flight.
struct Buffered {
  routing::Outcome outcome;      // for the plan
  int status_out = 0;            // the status for the client
  bool translated_body = false;  // the body is one the gateway wrote
  // Not passed through: the client's body, and a translated answer of the Responses API to store
  // before the client gets it.
  std::optional<std::string> translated;
  std::unique_ptr<ClientAnswer> answer;
};

// What forward::run does next, decided by the plain functions between its awaits.
enum class Next : std::uint8_t {
  kSend,      // the attempt (or the answer) is ready: send it
  kSkip,      // nothing was sent: on to the next step of the plan
  kRetry,     // wait `delay`, then the next step of the plan
  kDone,      // the verdict is set
  kSendLast,  // nothing left to try: the last upstream answer goes to the client
};

// Picks the next deployment and prepares the request for it (a.out).
Next start_attempt(Ctx& c, Attempts& a, std::optional<Verdict>& verdict) {
  if (c.client_gone) {  // nobody is waiting for the answer: no (further) attempt
    note_client_gone(c);
    verdict = Ok{};
    return Next::kDone;
  }
  // Read anew: the attempt is sent from here, and its time starts the upstream latency that
  // the breakers and the balancer see (a turn's reading could be older by the turn's length).
  const Nanos now = c.now();
  a.plan.next(a.step, now, a.rng);  // the previous attempt's ticket released before the pick
  if (!a.step.ticket) {
    c.forward_failed = true;
    if (a.last_response) {
      c.last_failure = "upstream answered " + std::to_string(a.last_response->status);
      c.status = a.last_response->status;
      c.bytes_out += a.last_response->body.size();
      return Next::kSendLast;
    }
    verdict = nothing_left(c, a.step, a.last_error.get(), now);
    return Next::kDone;
  }
  routing::Ticket& ticket = a.ticket();
  const auto& dep_cfg = ticket.deployment();
  const Deployment* d = c.rt->deployment(dep_cfg.id);
  if (!d) {  // a reload removed it between pick and use
    routing::Outcome o;
    o.kind = routing::OutcomeKind::kCancelled;
    a.plan.finish(ticket, o, now, false, a.rng);
    return Next::kSkip;
  }
  // Chat completions to an OpenAI-format provider: the fast passthrough (no decode). Every
  // other pair goes through translate.h (a same-format Responses or Messages body passes
  // unchanged too).
  const providers::Wire wire = d->provider->wire.wire;
  const bool fast = c.inbound == api::Format::kChat && !c.history_expanded &&
                    passthrough(api::Format::kChat, wire);
  if (c.inbound == api::Format::kChat && c.llm.endpoint != Endpoint::kChat && !fast) {
    verdict =
        errors::make(errors::kBadRequest,
                     "This endpoint cannot be served by the provider type of '" + c.route_model +
                         "' (" + std::string(providers::to_string(wire)) + ").");
    return Next::kDone;
  }
  // The answer is billed at the price of the model that gives it: a fallback model's own
  // (and the requested model's again when a later attempt goes back to it). That model is
  // sent its own output cap under the requested one, as the reservation assumed.
  const bool other_model = ticket.group() != c.route_model;  // a fallback's
  if (c.attempts > 0 || other_model) {
    if (const auto* p = c.rt->config().prices.find(ticket.group())) c.price = p;
  }
  if (c.completion_cap > 0 && c.price) {
    c.forced_max_tokens = cost::completion_token_limit(*c.price, c.completion_cap);
  }
  // A previous attempt's; the first attempt's is as made.
  if (c.attempts > 0) a.call = UpstreamBody{};
  std::string body;
  bool spliced = false;
  if (fast && providers::splice_request(c.req.body, c.llm.layout, dep_cfg.model, c.llm.stream,
                                        c.forced_max_tokens, a.splice.body)) {
    // The client's bytes are sent from where they are, with the replaced members between them.
    spliced = true;
    a.call.passthrough = true;
  } else if (fast) {
    auto rewritten = providers::rewrite_request(c.req.body, c.llm.layout, dep_cfg.model,
                                                c.llm.stream, c.forced_max_tokens);
    if (!rewritten) {
      verdict = rewritten.error();
      return Next::kDone;
    }
    body = std::move(rewritten.value());
    a.call.passthrough = true;
  } else {
    auto prepared = upstream_body(c.inbound, c.req.body, c.canon, d->provider->wire, dep_cfg.model,
                                  c.llm.stream, c.forced_max_tokens,
                                  c.group->cfg->max_output_tokens, c.history_expanded);
    if (!prepared) {
      verdict = prepared.error();
      return Next::kDone;
    }
    a.call = std::move(prepared.value());
    if (auto refused = check_previous_response(c, a.call)) {
      verdict = *refused;
      return Next::kDone;
    }
    if (auto refused = note_dropped(c, a.call.dropped)) {
      verdict = *refused;
      return Next::kDone;
    }
    body = std::move(a.call.body);
  }
  ++c.attempts;
  c.upstream = dep_cfg.id;
  c.deployment = d;
  c.model_served = ticket.group();
  c.sh.router.on_start(ticket, now);
  a.d = d;
  a.fast = fast;
  a.sent_at = now;
  a.span = tracing::attempt_start(c, *d, other_model);
  build_upstream_request(c, *d, body, a.call.target, a.span, a.out_lines, a.out.emplace());
  if (spliced) a.out->body_pieces = std::span(a.splice.body.pieces.data(), a.splice.body.count);
  return Next::kSend;
}

// An attempt that got no answer: the request ends unless the plan retries it.
Next attempt_failed(Ctx& c, Attempts& a, const Error& e, std::optional<Verdict>& verdict) {
  const Nanos now = c.now();
  c.upstream_status = 0;
  c.upstream_latency = now - a.sent_at;
  tracing::attempt_end(c, a.span, 0, c.client_gone ? "cancelled" : e.code);
  if (c.client_gone) {  // cancelled by us
    abandon_attempt(c, a.plan, a.ticket(), now, a.rng);
    verdict = Ok{};
    return Next::kDone;
  }
  record_attempt(c, a.dep_cfg().id, 0, now - a.sent_at);
  auto o = outcome_for_error(e, now - a.sent_at);
  a.last_error = std::make_unique<Error>(e);
  a.last_response.reset();
  auto decision = a.plan.finish(a.ticket(), o, now, false, a.rng);
  if (decision.retry() && decision.delay <= a.max_retry_wait) {
    a.delay = decision.delay;
    return Next::kRetry;
  }
  if (gives_up(decision)) {
    c.forward_failed = true;
    c.last_failure = e.message;
    verdict = e;
    return Next::kDone;
  }
  return Next::kSkip;
}

// The upstream's head: what it says about its rate limits, and the headers it passes to the
// client (a.headers); for a stream to translate, the gateway's headers too. True when the answer
// is a stream to relay.
bool answer_head(Ctx& c, Attempts& a, const http::UpstreamResponse& up) {
  // A previous attempt's failure is not this answer's: the access log, the breaker's view of
  // a stream and the truncation check all read the outcome of the answer the client gets.
  if (c.outcome.kind == OutcomeKind::kUpstream) c.outcome = {};
  // What the provider says about its rate limits paces the next requests (learned wins).
  http::Headers limits;
  a.headers.clear();
  scan_upstream_headers(up.headers(), limits, a.headers);
  // Without any of those headers there is nothing to learn (the parse finds no limit and no
  // Retry-After).
  if (!limits.empty()) {
    c.sh.admission->learn(a.ticket().group(), a.dep_cfg().id,
                          admission::parse_provider_limits(
                              [&limits](std::string_view name) { return limits.get(name); },
                              up.status(), c.sh.clock.turn_unix_millis()));
  }
  if (!a.fast) {
    c.upstream_limits.set(providers::parse_rate_limits(
        a.d->provider->wire.wire, [&up](std::string_view n) { return up.headers().get(n); },
        up.status(), {}, c.sh.clock.turn_unix_millis()));
  }
  const bool is_sse = up.content_type().starts_with("text/event-stream");
  const bool stream = up.status() == 200 && c.llm.stream && is_sse;
  if (stream && !a.fast) {
    a.headers = answer_headers(c, a.headers);
    if (!c.dropped_params.empty())
      a.headers.add_known("x-bellwether-dropped-params", c.dropped_params);
  }
  return stream;
}

// After a relayed stream: the attempt's outcome for the plan.
void stream_relayed(Ctx& c, Attempts& a) {
  tracing::attempt_end(c, a.span, 200, c.outcome.none() ? "" : c.outcome.detail);
  const Nanos now = c.now();
  c.upstream_latency = now - a.sent_at;
  record_attempt(c, a.dep_cfg().id, 200, now - a.sent_at);
  a.plan.finish(a.ticket(), stream_outcome(c, now - a.sent_at), now, true, a.rng);
}

// A buffered answer's body has arrived (or failed): its usage, or its translation into the
// client's API (b.answer, b.translated). kSend: go on to answer_ready.
Next answer_read(Ctx& c, Attempts& a, Buffered& b, const http::UpstreamResponse& up,
                 const Result<std::string>& all, std::optional<Verdict>& verdict) {
  // Read anew: it ends the upstream latency and the time to first token, after an await that
  // may have completed in the attempt's own turn.
  const Nanos now = c.now();
  c.upstream_latency = now - a.sent_at;
  tracing::attempt_end(c, a.span, all ? up.status() : 0,
                       all ? std::string_view{} : std::string_view(all.error().code));
  if (!all && c.client_gone) {  // cancelled by us
    abandon_attempt(c, a.plan, a.ticket(), now, a.rng);
    verdict = Ok{};
    return Next::kDone;
  }
  record_attempt(c, a.dep_cfg().id, all ? up.status() : 0, now - a.sent_at);
  if (!all) {
    auto o = outcome_for_error(all.error(), now - a.sent_at);
    a.last_error = std::make_unique<Error>(all.error());
    a.last_response.reset();
    auto decision = a.plan.finish(a.ticket(), o, now, false, a.rng);
    if (decision.retry() && decision.delay <= a.max_retry_wait) {
      a.delay = decision.delay;
      return Next::kRetry;
    }
    verdict = all.error();
    return Next::kDone;
  }
  if (c.ttft < 0) c.ttft = now - c.start;
  b.outcome = outcome_for_status(up.status(), up.headers(), *all, now - a.sent_at);
  b.status_out = up.status();
  const providers::Wire wire = a.d->provider->wire.wire;
  if (up.status() == 200 && a.fast) {
    c.usage = providers::extract_usage(*all, c.llm.endpoint);
    if (!c.usage.usable()) note_usage_missing(c, providers::estimate_usage(c.llm, *all));
    b.outcome.tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
  } else if (up.status() == 200) {
    auto answer =
        translate_response(c.inbound, a.call, *all, c.llm.model,
                           c.inbound == api::Format::kResponses ? &c.response_meta.get() : nullptr);
    if (!answer) {
      b.outcome.status = 502;
      b.outcome.kind = routing::OutcomeKind::kHttp5xx;
      a.plan.finish(a.ticket(), b.outcome, now, false, a.rng);
      verdict = answer.error();
      return Next::kDone;
    }
    c.usage = answer->usage;
    if (!c.usage.usable()) note_usage_missing(c, providers::estimate_usage(c.llm, *all));
    b.outcome.tokens = c.usage.prompt_tokens + c.usage.completion_tokens;
    b.answer = std::make_unique<ClientAnswer>(std::move(answer.value()));
  } else if (!a.call.passthrough) {
    // A provider's error in the client's API shape (its status and Retry-After kept).
    if (wire == providers::Wire::kGemini && up.status() == 429) {
      c.upstream_limits.set(providers::parse_rate_limits(
          wire, [&up](std::string_view n) { return up.headers().get(n); }, 429, *all,
          c.sh.clock.unix_millis()));
    }
    const Error ue = providers::upstream_error(wire, up.status(), *all);
    b.status_out = ue.status;  // Anthropic's 529 is a 503 to other clients
    b.translated = error_body(c.inbound, ue);
  }
  return Next::kSend;
}

// The client's answer from a buffered upstream answer, its body in `all` from here on (the
// provider's, or the one the gateway wrote), unless the plan retries: then it is kept as the
// last answer and the result is kRetry.
Next answer_ready(Ctx& c, Attempts& a, Buffered& b, const http::UpstreamResponse& up,
                  Result<std::string>& all) {
  if (b.answer) b.translated = std::move(b.answer->body);
  b.translated_body = b.translated.has_value();
  if (b.translated_body) all.value() = std::move(*b.translated);
  b.answer.reset();
  b.translated.reset();
  const int status = b.status_out;
  // The plan's time for the outcome (its latency was measured by answer_read).
  const Nanos now = c.turn_now();
  auto decision = a.plan.finish(a.ticket(), b.outcome, now, false, a.rng);
  if (decision.retry() && decision.delay <= a.max_retry_wait) {
    a.last_response = std::make_unique<Response>(
        AnswerLines(c, a.headers, up, b.translated_body).response(status, std::move(all.value())));
    a.last_error.reset();
    c.outcome.set(OutcomeKind::kUpstream, "upstream_" + std::to_string(up.status()));
    a.delay = decision.delay;
    return Next::kRetry;
  }
  c.status = status;
  if (status >= 400) c.outcome.set(OutcomeKind::kUpstream, "upstream_" + std::to_string(status));
  if (status >= 500 || status == 429) {
    c.forward_failed = true;
    c.last_failure = "upstream answered " + std::to_string(status);
  }
  const std::string& body = all.value();
  if (phase_cache::capturing(c)) {
    const auto ct = up.content_type();
    phase_cache::capture_body(
        c, status, b.translated_body || ct.empty() ? std::string_view("application/json") : ct,
        body);
  }
  c.bytes_out += body.size();
  tracing::observe_output(c, body);
  return Next::kSend;
}

// The head of the answer that answer_ready made, written where the client's connection keeps it.
void answer_head_out(Ctx& c, const Attempts& a, const Buffered& b, const http::UpstreamResponse& up,
                     const std::string& body) {
  const AnswerLines lines(c, a.headers, up, b.translated_body);
  c.w.head(b.status_out, lines.lines(), body.size());
}

// Phase 9 for a buffered answer whose head has arrived: its body read, checked or translated, the
// budget lease's ledger row, and the client's answer. kDone (the verdict is set) or kRetry (wait
// a.delay, then the next step of the plan). Its own coroutine: see Buffered.
asio::awaitable<Next> answer_buffered(Ctx& c, Attempts& a, http::UpstreamResponse& up,
                                      std::optional<Verdict>& verdict) {
  Buffered b;
  // An answer read whole with its head is at hand without a coroutine for its body.
  const std::size_t limit = c.rt->config().max_upstream_response_bytes;
  std::optional<Result<std::string>> got = up.read_all_now(limit);
  if (!got) got.emplace(co_await up.read_all(limit));
  Result<std::string>& all = *got;
  const Next next = answer_read(c, a, b, up, all, verdict);
  if (next != Next::kSend) co_return next;
  if (b.answer) {
    if (b.answer->response) co_await store_response(c, *b.answer->response);
    if (a.call.passthrough) co_await store_upstream_marker(c, b.answer->upstream_id);
  }
  if (answer_ready(c, a, b, up, all) == Next::kRetry) co_return Next::kRetry;
  // A request covered by a budget lease: its ledger row before the answer.
  if (b.status_out < 300 && phase_cost::covered(c)) {
    if (auto row = phase_cost::settle_before_answer_now(c, co_await asio::this_coro::executor)) {
      co_await phase_cost::settle_before_answer(c, std::move(*row));
    }
  }
  answer_head_out(c, a, b, up, all.value());
  if (!c.w.send_body_now(all.value())) co_await c.w.send_body(std::move(all.value()));
  verdict = Ok{};
  co_return Next::kDone;
}

}  // namespace

asio::awaitable<void> forward::run(Ctx& c) {
  std::optional<Verdict> verdict;
  {
    Attempts a(c);
    for (;;) {
      Next next = start_attempt(c, a, verdict);
      if (next == Next::kDone) break;
      if (next == Next::kSkip) continue;
      if (next == Next::kSendLast) {
        co_await c.w.send(std::move(*a.last_response));
        verdict = Ok{};
        break;
      }
      auto resp = co_await c.sh.upstream->send(*a.d->provider, *a.out);
      a.out.reset();
      if (!resp) {
        next = attempt_failed(c, a, resp.error(), verdict);
        if (next == Next::kDone) break;
        if (next == Next::kRetry) co_await sleep_for(a.delay);
        continue;
      }
      auto& up = resp.value();
      if (answer_head(c, a, up)) {
        c.upstream_status = 200;
        if (a.fast) {
          StreamRelay relay(c, up);
          if (!relay.now(a.headers)) co_await relay.rest();
        } else {
          co_await relay_translated(c, up, std::move(a.headers), a.call);
        }
        stream_relayed(c, a);
        verdict = Ok{};
        break;
      }
      c.upstream_status = up.status();
      if (co_await answer_buffered(c, a, up, verdict) == Next::kDone) break;
      co_await sleep_for(a.delay);
    }
  }
  // The attempts are over (their state gone): an error the flow answers.
  if (!verdict->ok()) co_await reply_error(c, verdict->error());
  c.permit.complete(c.upstream_latency, c.upstream_status);
}

}  // namespace bw::gateway
