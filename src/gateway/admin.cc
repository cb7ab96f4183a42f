// The admin API table, and the routes of the gateway core: status, breakers, dead letters.
#include "gateway/admin.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <exception>

#include "common/json_util.h"
#include "gateway/phases.h"
#include "gateway/pipeline.h"

namespace bw::gateway {

namespace asio = boost::asio;

namespace {

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i <= path.size()) {
    auto j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) out.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

bool is_param(std::string_view s) {
  return s.size() > 2 && s.front() == '{' && s.back() == '}';
}

}  // namespace

std::string_view AdminCall::param(std::string_view name) const {
  for (const auto& [k, v] : params) {
    if (k == name) return v;
  }
  return {};
}

void AdminTable::add(std::string_view method, std::string pattern, AdminHandler handler,
                     bool open) {
  Entry e;
  e.method = std::string(method);
  for (auto s : split_path(pattern)) e.segments.emplace_back(s);
  e.handler = std::move(handler);
  e.open = open;
  entries_.push_back(std::move(e));
}

void AdminTable::add_blocking(std::string_view method, std::string pattern,
                              BlockingAdminHandler handler, bool open) {
  add(
      method, std::move(pattern),
      [h = std::move(handler)](AdminCall& call) -> asio::awaitable<void> {
        auto resp = co_await run_blocking(call.c.sh, [&] { return h(call); });
        co_await send_response(call.c, std::move(resp));
      },
      open);
}

asio::awaitable<void> AdminTable::dispatch(Ctx& c) const {
  const auto path = c.req.path();
  const auto segments = split_path(path);
  const Entry* found = nullptr;
  std::string allow;
  AdminCall call{c, {}};
  for (const auto& e : entries_) {
    if (e.segments.size() != segments.size()) continue;
    bool match = true;
    for (std::size_t i = 0; i < segments.size() && match; ++i) {
      match = is_param(e.segments[i]) || e.segments[i] == segments[i];
    }
    if (!match) continue;
    if (e.method != c.req.method) {
      if (allow.find(e.method) == std::string::npos) {
        if (!allow.empty()) allow += ", ";
        allow += e.method;
      }
      continue;
    }
    found = &e;
    for (std::size_t i = 0; i < segments.size(); ++i) {
      const auto& s = e.segments[i];
      if (is_param(s)) {
        call.params.emplace_back(std::string_view(s).substr(1, s.size() - 2), segments[i]);
      }
    }
    break;
  }
  if (!(found && found->open) && !admin_authorized(*c.rt, c.req)) {
    // A page of the console may use the admin API with its session (and CSRF token).
    if (auto s = console_admin_auth(c.sh, *c.rt, c.req); !s) {
      co_return co_await reply_error(c, s.error());
    }
  }
  if (found) co_return co_await found->handler(call);
  if (!allow.empty()) {
    auto r = error_response(c, errors::make(errors::kMethodNotAllowed,
                                            "Method not allowed on " + std::string(path) + "."));
    r.headers.add("allow", allow);
    c.status = 405;
    c.bytes_out += r.body.size();
    co_await c.w.send(std::move(r));
    co_return;
  }
  co_await reply_error(
      c, errors::make(errors::kUnknownUrl, "Unknown admin URL: " + std::string(path) + "."));
}

namespace {

std::string dead_letter_json(const routing::DeadLetter& d, bool with_body) {
  JsonWriter j;
  j.begin_object()
      .key("id")
      .value(d.id)
      .key("created_unix_ms")
      .value(d.created_unix_ms)
      .key("key_id")
      .value(d.key_id)
      .key("model")
      .value(d.model)
      .key("endpoint")
      .value(d.endpoint)
      .key("error")
      .value(d.error)
      .key("attempts")
      .value(static_cast<std::int64_t>(d.attempts))
      .key("replayed_unix_ms");
  if (d.replayed_unix_ms) {
    j.value(*d.replayed_unix_ms);
  } else {
    j.null();
  }
  if (with_body) j.key("body").value(d.body);
  j.end_object();
  return j.take();
}

Error no_such_dead_letter() {
  return errors::make(errors::kNotFound, "No such dead letter.");
}

// The dead letter's id, or 0 (no such entry) when the segment is not a positive number.
std::int64_t dead_letter_id(const AdminCall& call) {
  return std::atoll(std::string(call.param("id")).c_str());
}

// Wraps a dead-letter handler: 404 when no queue is configured.
AdminHandler with_dlq(
    std::function<asio::awaitable<void>(AdminCall&, routing::DeadLetterQueue&)> f) {
  return [f = std::move(f)](AdminCall& call) -> asio::awaitable<void> {
    if (!call.c.sh.dead_letters) {
      co_return co_await reply_error(
          call.c, errors::make(errors::kDlqDisabled, "The dead-letter queue is not configured."));
    }
    co_await f(call, *call.c.sh.dead_letters);
  };
}

asio::awaitable<void> list_dead_letters(AdminCall& call, routing::DeadLetterQueue& dlq) {
  auto& c = call.c;
  const auto after = http::query_int(c.req.target, "after", 0);
  const int limit = static_cast<int>(
      std::clamp<std::int64_t>(http::query_int(c.req.target, "limit", 100), 1, 1000));
  auto list = co_await run_blocking(c.sh, [&] { return dlq.list(after, limit, false); });
  if (!list) co_return co_await reply_error(c, list.error());
  std::string body = "{\"object\":\"list\",\"data\":[";
  for (std::size_t i = 0; i < list->size(); ++i) {
    if (i) body += ",";
    body += dead_letter_json((*list)[i], false);
  }
  body += "],\"size\":" + std::to_string(dlq.size()) +
          ",\"added_total\":" + std::to_string(dlq.added_total()) +
          ",\"dropped_total\":" + std::to_string(dlq.dropped_total()) + "}";
  co_await send_json(c, 200, std::move(body));
}

asio::awaitable<void> get_dead_letter(AdminCall& call, routing::DeadLetterQueue& dlq) {
  auto& c = call.c;
  const auto id = dead_letter_id(call);
  if (id <= 0) co_return co_await reply_error(c, no_such_dead_letter());
  auto entry = co_await run_blocking(c.sh, [&] { return dlq.get(id); });
  if (!entry) co_return co_await reply_error(c, entry.error());
  if (!entry->has_value()) co_return co_await reply_error(c, no_such_dead_letter());
  co_await send_json(c, 200, dead_letter_json(**entry, true));
}

asio::awaitable<void> delete_dead_letter(AdminCall& call, routing::DeadLetterQueue& dlq) {
  auto& c = call.c;
  const auto id = dead_letter_id(call);
  if (id <= 0) co_return co_await reply_error(c, no_such_dead_letter());
  auto removed = co_await run_blocking(c.sh, [&] { return dlq.remove(id); });
  if (!removed) co_return co_await reply_error(c, removed.error());
  if (!*removed) co_return co_await reply_error(c, no_such_dead_letter());
  co_await send_json(c, 200, "{\"deleted\":true,\"id\":" + std::to_string(id) + "}");
}

// The replay goes through the whole pipeline again (limits and budgets included), as the
// original key, and its answer is the admin's answer. It is a request of its own: finish runs
// for it (settle, access log), and then for the admin request.
asio::awaitable<void> replay_dead_letter(AdminCall& call, routing::DeadLetterQueue& dlq) {
  auto& c = call.c;
  auto& sh = c.sh;
  const auto id = dead_letter_id(call);
  if (id <= 0) co_return co_await reply_error(c, no_such_dead_letter());
  auto entry = co_await run_blocking(sh, [&] { return dlq.get(id); });
  if (!entry) co_return co_await reply_error(c, entry.error());
  if (!entry->has_value()) co_return co_await reply_error(c, no_such_dead_letter());
  const auto& d = **entry;
  const KeyInfo* key = c.rt->key_by_name(d.key_id);
  if (!key) {
    co_return co_await reply_error(
        c, errors::make(errors::kKeyGone,
                        "The key '" + d.key_id + "' of this entry no longer exists."));
  }
  http::Request replay_req;
  replay_req.method = "POST";
  replay_req.target = d.endpoint;
  replay_req.body = d.body;
  replay_req.peer_ip = c.req.peer_ip;
  replay_req.headers.emplace_back("x-priority", "2");
  Ctx rc(sh, c.rt, replay_req, c.w);
  rc.start = c.now();
  rc.request_id = c.request_id;
  rc.client_ip = c.client_ip;
  rc.replay_key = key;
  const auto ep = d.endpoint == "/v1/completions"  ? providers::Endpoint::kCompletions
                  : d.endpoint == "/v1/embeddings" ? providers::Endpoint::kEmbeddings
                                                   : providers::Endpoint::kChat;
  if (d.endpoint == "/v1/responses") rc.inbound = api::Format::kResponses;
  if (d.endpoint == "/v1/messages") rc.inbound = api::Format::kMessages;
  std::exception_ptr failed;
  try {
    co_await run_llm(rc, ep);
  } catch (...) {
    failed = std::current_exception();
  }
  if (!finish::try_now(rc)) co_await finish::run(rc);
  if (failed) std::rethrow_exception(failed);
  c.status = rc.status;
  if (rc.status >= 200 && rc.status < 300) {
    auto now_ms = sh.clock.unix_millis();
    co_await run_blocking(sh, [&] { return dlq.mark_replayed(id, now_ms); });
  }
}

void add_core_routes(AdminTable& t) {
  t.add("GET", "/admin/status", [](AdminCall& call) -> asio::awaitable<void> {
    auto& c = call.c;
    JsonWriter j;
    j.begin_object()
        .key("config")
        .value(c.rt->config().source)
        .key("requests")
        .value(c.sh.requests.load())
        .key("model_groups")
        .value(static_cast<std::int64_t>(c.rt->config().model_groups.size()))
        .key("keys")
        .value(static_cast<std::int64_t>(c.rt->config().keys.size()))
        .key("shadow_rejections")
        .value(c.sh.shadow_rejections.load())
        .end_object();
    co_await send_json(c, 200, j.take());
  });
  t.add("GET", "/admin/breakers", [](AdminCall& call) -> asio::awaitable<void> {
    co_await send_json(call.c, 200, routing::status_json(call.c.sh.router.status(call.c.now())));
  });
}

}  // namespace

void add_dead_letter_routes(AdminTable& t) {
  t.add("GET", "/admin/dead-letters", with_dlq(list_dead_letters));
  t.add("GET", "/admin/dead-letters/{id}", with_dlq(get_dead_letter));
  t.add("DELETE", "/admin/dead-letters/{id}", with_dlq(delete_dead_letter));
  t.add("POST", "/admin/dead-letters/{id}/replay", with_dlq(replay_dead_letter));
}

const AdminTable& admin_table() {
  static const AdminTable table = [] {
    AdminTable t;
    add_core_routes(t);
    add_dead_letter_routes(t);
    add_key_routes(t);
    return t;
  }();
  return table;
}

}  // namespace bw::gateway
