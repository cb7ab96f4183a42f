#include "gateway/context.h"

#include <algorithm>
#include <cmath>

#include "common/json_util.h"
#include "gateway/translate.h"

namespace bw::gateway {

std::string Outcome::label() const {
  switch (kind) {
    case OutcomeKind::kNone:
      return {};
    case OutcomeKind::kRateLimited:
      return "rate_limited:" + detail;
    case OutcomeKind::kBudget:
      return "budget:" + detail;
    case OutcomeKind::kAdmission:
      return "admission";
    case OutcomeKind::kError:
    case OutcomeKind::kClientGone:
    case OutcomeKind::kUpstream:
      return detail;
  }
  return detail;
}

std::string response_owner(const Ctx& c) {
  if (!c.key || !c.key->cfg) return {};
  const config::KeyConfig& k = *c.key->cfg;
  return k.tenant.empty() ? "key:" + k.name : "tenant:" + k.tenant;
}

http::Response error_response(const Ctx& c, const Error& e) {
  auto r = http::Response::json(e.status, error_body(c.inbound, e, c.request_id));
  r.headers.add("x-request-id", c.request_id);
  r.headers.append(c.extra);
  if (e.retry_after_s >= 0) {
    r.headers.add("retry-after",
                  std::to_string(static_cast<long>(std::ceil(std::max(e.retry_after_s, 0.0)))));
  }
  return r;
}

boost::asio::awaitable<void> reply_error(Ctx& c, const Error& e) {
  c.status = e.status;
  if (c.outcome.none()) c.outcome.set(OutcomeKind::kError, e.code.empty() ? e.type : e.code);
  auto r = error_response(c, e);
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

boost::asio::awaitable<void> send_json(Ctx& c, int status, std::string body) {
  auto r = http::Response::json(status, std::move(body));
  r.headers.add("x-request-id", c.request_id);
  c.status = status;
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

boost::asio::awaitable<void> send_response(Ctx& c, http::Response r) {
  r.headers.add("x-request-id", c.request_id);
  c.status = r.status;
  c.bytes_out += r.body.size();
  co_await c.w.send(std::move(r));
}

void note_client_gone(Ctx& c) {
  c.cancelled = true;
  c.status = 499;
  c.outcome.set(OutcomeKind::kClientGone, std::string(http::kUpstreamCancelled));
}

void on_client_gone(Ctx& c) {
  c.client_gone = true;
  c.cancelled = true;
  c.gone_signal.emit(boost::asio::cancellation_type::terminal);
  c.upstream_cancel.cancel();
}

}  // namespace bw::gateway
