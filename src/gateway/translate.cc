#include "gateway/translate.h"

#include "api/chat.h"
#include "api/json_read.h"
#include "api/messages.h"
#include "common/json_util.h"
#include "http/sse.h"
#include "providers/gemini.h"

namespace bw::gateway {

using api::Format;
using providers::Wire;

bool passthrough(Format inbound, Wire wire) {
  switch (inbound) {
    case Format::kChat:
      return wire == Wire::kOpenAI || wire == Wire::kAzure;
    case Format::kResponses:
      return wire == Wire::kOpenAI;
    case Format::kMessages:
      return wire == Wire::kAnthropic;
    case Format::kGemini:
      return wire == Wire::kGemini;
  }
  return false;
}

std::string rewrite_native(std::string_view body, std::string_view model, std::string_view max_key,
                           std::int64_t max_tokens) {
  auto doc = api::json::parse_object(body, 2);
  if (!doc) return std::string(body);
  std::string out;
  out.reserve(body.size() + 32);
  out.push_back('{');
  bool first = true, saw_max = false;
  simdjson::dom::object obj = doc->get_object().value_unsafe();
  for (auto field : obj) {
    if (field.key == "strict_params") continue;
    if (!first) out.push_back(',');
    first = false;
    append_json_string(out, field.key);
    out.push_back(':');
    if (field.key == "model") {
      append_json_string(out, model);
    } else if (field.key == max_key && max_tokens > 0) {
      saw_max = true;
      out += std::to_string(max_tokens);
    } else {
      out += simdjson::minify(field.value);
    }
  }
  if (max_tokens > 0 && !saw_max) {
    if (!first) out.push_back(',');
    append_json_string(out, max_key);
    out += ":" + std::to_string(max_tokens);
  }
  out.push_back('}');
  return out;
}

namespace {

std::string target_of(const ProviderWire& pw, Format upstream, std::string_view model,
                      bool stream) {
  switch (pw.wire) {
    case Wire::kAzure: {
      std::string t = pw.base_path + "/openai/deployments/";
      t += model;
      t += "/chat/completions?api-version=" + pw.api_version;
      return t;
    }
    case Wire::kAnthropic:
      return pw.base_path + "/messages";
    case Wire::kGemini:
      return providers::gemini_target(pw.base_path, model, stream);
    case Wire::kOpenAI:
      return pw.base_path + (upstream == Format::kResponses ? "/responses" : "/chat/completions");
  }
  return pw.base_path;
}

}  // namespace

Result<UpstreamBody> upstream_body(Format inbound, std::string_view raw,
                                   std::optional<api::Request>& canon, const ProviderWire& pw,
                                   std::string_view model, bool stream, std::int64_t max_tokens,
                                   std::int64_t default_max_tokens, bool force_translate) {
  UpstreamBody out;
  out.passthrough = passthrough(inbound, pw.wire) && !force_translate;
  out.upstream = out.passthrough ? inbound : providers::format_of(pw.wire);
  out.target = target_of(pw, out.upstream, model, stream);
  if (out.passthrough) {
    // Chat bodies take the fast splice in the caller (providers::rewrite_request).
    if (inbound == Format::kResponses) {
      out.body = rewrite_native(raw, model, "max_output_tokens", max_tokens);
    } else if (inbound == Format::kMessages) {
      out.body = rewrite_native(raw, model, "max_tokens", max_tokens);
    }
    return out;
  }
  if (!canon) {
    if (inbound != Format::kChat) {
      return make_error(400, "invalid_request_error", "unsupported_endpoint",
                        "This endpoint cannot be served by a provider of type " +
                            std::string(providers::to_string(pw.wire)) + ".");
    }
    auto decoded = api::decode_chat_request(raw);
    if (!decoded) return decoded.error();
    canon = std::move(decoded.value());
  }
  // Chat's n: Gemini generates the choices (candidateCount), buffered or streamed; Anthropic has
  // no equivalent. Refused rather than dropped: a client that asked for n choices and got one
  // would read a wrong answer, not a smaller one.
  if (canon->n > 1 && out.upstream == Format::kMessages) {
    return make_error(400, "invalid_request_error", "unsupported_parameter",
                      "n > 1 is not supported by a provider of type anthropic; send n: 1 (or "
                      "several requests).",
                      "n");
  }
  if (out.upstream == Format::kGemini) out.choices = canon->n;
  auto req = *canon;
  req.stream = stream;
  switch (out.upstream) {
    case Format::kMessages:
      out.body =
          api::encode_messages_request(req, model, max_tokens, default_max_tokens, out.dropped);
      break;
    case Format::kGemini:
      out.body = providers::encode_gemini_request(req, max_tokens, out.dropped);
      break;
    default:
      out.body = api::encode_chat_request(req, model, max_tokens, out.dropped);
      break;
  }
  for (const auto& f : canon->unmapped) out.dropped.push_back(f);
  return out;
}

namespace {

Result<api::Response> decode_answer_as_is(Format f, std::string_view body) {
  switch (f) {
    case Format::kMessages:
      return api::decode_messages_response(body);
    case Format::kResponses:
      return api::decode_responses_response(body);
    case Format::kGemini:
      return providers::decode_gemini_response(body);
    case Format::kChat:
      break;
  }
  return api::decode_chat_response(body);
}

}  // namespace

// An answer with generated output is never free: usage that counts no output for it is
// unreadable (charged an estimate).
Result<api::Response> decode_answer(Format f, std::string_view body) {
  auto r = decode_answer_as_is(f, body);
  if (r) api::check_output_counted(r->usage, api::has_output(*r));
  return r;
}

api::Usage native_usage(Format f, std::string_view body) {
  auto r = decode_answer(f, body);
  return r ? r->usage : api::Usage{};
}

Result<ClientAnswer> translate_response(Format inbound, const UpstreamBody& call,
                                        std::string_view body, std::string_view public_model,
                                        const api::ResponseMeta* meta) {
  ClientAnswer a;
  if (call.passthrough) {
    a.body = std::string(body);
    if (auto r = decode_answer(inbound, body)) {
      a.usage = r->usage;
      if (inbound == Format::kResponses) a.upstream_id = std::move(r->id);
    }
    return a;
  }
  auto decoded = decode_answer(call.upstream, body);
  if (!decoded) {
    return make_error(502, "upstream_error", "upstream_invalid_response",
                      "The upstream answer could not be read: " + decoded.error().message);
  }
  a.usage = decoded->usage;
  switch (inbound) {
    case Format::kMessages:
      a.body = api::encode_messages_response(*decoded, public_model);
      break;
    case Format::kResponses: {
      api::ResponseMeta m = meta ? *meta : api::ResponseMeta{};
      if (m.id.empty()) m.id = api::new_id("resp_");
      m.model = std::string(public_model);
      a.body = api::encode_responses_response(*decoded, m);
      break;
    }
    default:
      a.body = api::encode_chat_response(*decoded, public_model);
      break;
  }
  a.response = std::move(decoded.value());
  return a;
}

std::string error_body(Format inbound, const Error& e, std::string_view request_id) {
  if (inbound == Format::kMessages) {
    return api::anthropic_error_body(e.status, e.message, request_id);
  }
  return openai_error_body(e.message, e.type, e.code, e.param, request_id);
}

std::unique_ptr<api::StreamEncoder> client_stream_encoder(Format inbound, std::string public_model,
                                                          bool include_usage,
                                                          const api::ResponseMeta* meta,
                                                          api::ResponsesStreamEncoder** responses) {
  switch (inbound) {
    case Format::kMessages:
      return api::make_messages_stream_encoder(std::move(public_model));
    case Format::kResponses: {
      api::ResponseMeta m = meta ? *meta : api::ResponseMeta{};
      if (m.id.empty()) m.id = api::new_id("resp_");
      m.model = public_model;
      auto enc = std::make_unique<api::ResponsesStreamEncoder>(std::move(m));
      if (responses) *responses = enc.get();
      return enc;
    }
    default:
      return api::make_chat_stream_encoder(std::move(public_model), include_usage);
  }
}

std::optional<std::string> stream_of_answer(Format inbound, std::string_view body,
                                            std::string public_model, bool include_usage,
                                            const api::ResponseMeta* meta) {
  auto answer = decode_answer(inbound, body);
  if (!answer) return std::nullopt;
  api::ResponseMeta m = meta ? *meta : api::ResponseMeta{};
  if (inbound == Format::kResponses && !answer->id.empty()) m.id = answer->id;
  auto encoder =
      client_stream_encoder(inbound, std::move(public_model), include_usage, &m, nullptr);
  std::string out;
  for (const auto& e : api::stream_events(*answer)) encoder->on_event(e, out);
  encoder->finish(out);
  return out;
}

StreamTranslator::StreamTranslator(Format inbound, const UpstreamBody& call,
                                   std::string public_model, bool include_usage,
                                   const api::ResponseMeta* meta)
    : inbound_(inbound), passthrough_(call.passthrough) {
  switch (call.upstream) {
    case Format::kMessages:
      decoder_ = api::make_messages_stream_decoder();
      break;
    case Format::kGemini:
      decoder_ = providers::make_gemini_stream_decoder(call.choices);
      break;
    case Format::kResponses:
      decoder_ = api::make_responses_stream_decoder();
      break;
    case Format::kChat:
      decoder_ = api::make_chat_stream_decoder();
      break;
  }
  if (passthrough_) return;
  encoder_ =
      client_stream_encoder(inbound, std::move(public_model), include_usage, meta, &responses_);
}

void StreamTranslator::feed(std::string_view event, std::string& out) {
  std::string_view name;
  if (event.starts_with("event:")) {
    auto eol = event.find('\n');
    name = event.substr(6, eol == std::string_view::npos ? std::string_view::npos : eol - 6);
    while (!name.empty() && (name.front() == ' ')) name.remove_prefix(1);
    while (!name.empty() && (name.back() == '\r')) name.remove_suffix(1);
  }
  auto data = http::sse_data(event, scratch_);
  events_.clear();
  if (!data.empty()) decoder_->feed(name, data, events_);
  for (const auto& e : events_) {
    if (e.kind == api::StreamEvent::Kind::kTextDelta) {
      text_chars_ += e.text.size();
      ++text_chunks_;
      generated_ = generated_ || !e.text.empty();
    } else if (e.kind == api::StreamEvent::Kind::kToolCallStart) {
      ++text_chunks_;  // the call's name was generated: at least a token
      generated_ = true;
    } else if (e.kind == api::StreamEvent::Kind::kToolArgsDelta) {
      text_chars_ += e.text.size();  // generated too: counted for an estimate
      generated_ = generated_ || !e.text.empty();
    } else if (e.kind == api::StreamEvent::Kind::kUsage && e.usage.present) {
      usage_ = e.usage;
    } else if (e.kind == api::StreamEvent::Kind::kStart) {
      if (e.usage.present) usage_ = e.usage;
      if (passthrough_ && inbound_ == Format::kResponses && !e.id.empty()) upstream_id_ = e.id;
    } else if (e.kind == api::StreamEvent::Kind::kError) {
      failed_ = true;
    }
    if (encoder_) encoder_->on_event(e, out);
  }
  if (passthrough_) out.append(event);
}

void StreamTranslator::finish(std::string& out) {
  if (encoder_ && !failed_) encoder_->finish(out);
}

void StreamTranslator::fail(std::string_view type, std::string_view message, std::string& out) {
  failed_ = true;
  if (encoder_) {
    encoder_->fail(type, message, out);
  } else if (inbound_ == Format::kMessages) {
    api::make_messages_stream_encoder("")->fail(type, message, out);
  } else {
    api::ResponsesStreamEncoder(api::ResponseMeta{}).fail(type, message, out);
  }
}

bool StreamTranslator::done() const {
  return decoder_->done();
}

const api::Response* StreamTranslator::accumulated() const {
  return responses_ ? &responses_->accumulated() : nullptr;
}

}  // namespace bw::gateway
