#pragma once
// The admin API: one {method, path pattern} → handler table, on the admin listener (or on the
// data-plane listener when no admin listener is configured). Every route needs the admin
// (master) key unless registered as open.
//
// Adding endpoints: write a `void add_<area>_routes(AdminTable&)` beside your code and call it
// from admin_table() in admin.cc. A pattern is a path whose `{name}` segments match any one
// segment ("/admin/keys/{id}/rotate"); the handler reads them with call.param("id").
//   t.add("GET", "/admin/things/{id}", [](AdminCall& call) -> asio::awaitable<void> {
//     co_await send_json(call.c, 200, "{...}");
//   });
//   t.add_blocking("POST", "/admin/things", [](AdminCall& call) { return http::Response...; });
// The table answers 404 (unknown_url) when no pattern matches and 405 with Allow when the path
// matches under another method.
#include <boost/asio/awaitable.hpp>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/context.h"

namespace bw::gateway {

struct AdminCall {
  Ctx& c;  // the request (c.req), the config snapshot (c.rt), Shared (c.sh)
  std::vector<std::pair<std::string_view, std::string_view>> params;
  std::string_view param(std::string_view name) const;
};

// Answers through the Ctx (send_json, reply_error, send_response).
using AdminHandler = std::function<boost::asio::awaitable<void>(AdminCall&)>;
// Blocking work (SQLite, PostgreSQL): runs on Shared::blocking; its response is sent as is
// (x-request-id added).
using BlockingAdminHandler = std::function<http::Response(AdminCall&)>;

class AdminTable {
 public:
  void add(std::string_view method, std::string pattern, AdminHandler handler, bool open = false);
  void add_blocking(std::string_view method, std::string pattern, BlockingAdminHandler handler,
                    bool open = false);
  // Authorises, matches and runs the handler of c.req (a path under /admin/).
  boost::asio::awaitable<void> dispatch(Ctx& c) const;

 private:
  struct Entry {
    std::string method;
    std::vector<std::string> segments;  // "{id}" matches any one segment
    AdminHandler handler;
    bool open = false;
  };
  std::vector<Entry> entries_;
};

// The gateway's admin table (built once).
const AdminTable& admin_table();

// Route groups, each registered by its own file.
void add_dead_letter_routes(AdminTable& t);  // admin.cc
void add_key_routes(AdminTable& t);          // keys.cc: /admin/keys, /admin/spend, /admin/budgets

}  // namespace bw::gateway
