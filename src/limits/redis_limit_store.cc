#include "limits/redis_limit_store.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <deque>
#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "limits/redis_script.h"

namespace bw::limits {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct ReplyDeleter {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

struct RedisCallResult {
  ReplyPtr reply;  // null on error
  std::string error;
};

namespace {

std::chrono::steady_clock::time_point to_time_point(Nanos t) {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(t));
}

Nanos steady_now() {
  return SteadyClock::instance().now();
}

// hiredis does the RESP encoding; we only own the resulting bytes.
std::string format_command(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* cmd = nullptr;
  const int len =
      redisFormatCommandArgv(&cmd, static_cast<int>(argv.size()), argv.data(), lens.data());
  std::string out;
  if (len > 0 && cmd) out.assign(cmd, static_cast<std::size_t>(len));
  redisFreeCommand(cmd);
  return out;
}

bool parse_i64(const redisReply* r, std::int64_t& out) {
  if (r->type == REDIS_REPLY_INTEGER) {
    out = r->integer;
    return true;
  }
  if (r->type != REDIS_REPLY_STRING) return false;
  const char* end = r->str + r->len;
  auto [p, ec] = std::from_chars(r->str, end, out);
  return ec == std::errc() && p == end;
}

std::string error_text(const redisReply* r) {
  return std::string(r->str ? std::string_view(r->str, r->len) : std::string_view("error"));
}

}  // namespace

// One TCP connection, used only from its executor (one worker thread), so it needs no locks.
// Requests are appended to `out_` and `pending_` in the same order; replies complete the front of
// `pending_`. A request whose caller gave up (deadline) stays queued so the FIFO stays aligned; its
// reply is dropped when it arrives.
class RedisConnection : public std::enable_shared_from_this<RedisConnection> {
 public:
  RedisConnection(asio::any_io_executor ex, RedisEndpoint endpoint, std::size_t max_in_flight)
      : ex_(std::move(ex)), endpoint_(std::move(endpoint)), max_in_flight_(max_in_flight) {
    // Sent first on every new connection: authenticate, select the db, and load the script so
    // that the requests themselves are a single EVALSHA each.
    std::vector<std::vector<std::string>> cmds;
    if (!endpoint_.password.empty()) {
      if (endpoint_.user.empty()) {
        cmds.push_back({"AUTH", endpoint_.password});
      } else {
        cmds.push_back({"AUTH", endpoint_.user, endpoint_.password});
      }
    }
    if (endpoint_.db != 0) cmds.push_back({"SELECT", std::to_string(endpoint_.db)});
    cmds.push_back({"SCRIPT", "LOAD", std::string(redis_limit_script())});
    for (const auto& c : cmds) handshake_ += format_command(c);
    handshake_count_ = cmds.size();
  }

  ~RedisConnection() {
    if (reader_) redisReaderFree(reader_);
  }

  const asio::any_io_executor& executor() const { return ex_; }

  asio::awaitable<RedisCallResult> call(std::string command, Nanos deadline) {
    auto self = shared_from_this();
    RedisCallResult res;
    if (pending_.size() >= max_in_flight_) {
      res.error = "redis pipeline full";
      co_return res;
    }
    auto req = std::make_shared<Request>(ex_);
    pending_.push_back(req);
    out_ += command;
    if (state_ == State::kIdle) {
      start_connect(deadline);
    } else if (state_ == State::kReady) {
      kick_writer();
    }
    req->timer.expires_at(to_time_point(deadline));
    boost::system::error_code ec;
    co_await req->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (req->done) {
      res.reply = std::move(req->reply);
      res.error = std::move(req->error);
    } else {
      req->abandoned = true;
      res.error = "redis timeout";
    }
    co_return res;
  }

 private:
  enum class State : std::uint8_t { kIdle, kConnecting, kReady };

  struct Request {
    explicit Request(const asio::any_io_executor& ex) : timer(ex) {}
    asio::steady_timer timer;
    ReplyPtr reply;
    std::string error;
    bool done = false;
    bool abandoned = false;
    bool internal = false;  // handshake command: nobody waits for it
  };

  void complete(Request& req, ReplyPtr reply, std::string error) {
    if (req.done) return;
    req.done = true;
    req.reply = std::move(reply);
    req.error = std::move(error);
    if (!req.internal && !req.abandoned) req.timer.cancel();
  }

  // Ends the current connection: every queued request fails now (its caller is still within its
  // deadline and applies the failure policy), and the next call reconnects.
  void fail_all(std::uint64_t gen, const std::string& why) {
    if (gen != gen_) return;
    ++gen_;
    auto pending = std::move(pending_);
    pending_.clear();
    out_.clear();
    writing_ = false;
    state_ = State::kIdle;
    if (socket_) {
      boost::system::error_code ignored;
      socket_->close(ignored);
      socket_.reset();
    }
    if (reader_) {
      redisReaderFree(reader_);
      reader_ = nullptr;
    }
    for (auto& r : pending) complete(*r, nullptr, why);
  }

  void start_connect(Nanos deadline) {
    state_ = State::kConnecting;
    const std::uint64_t gen = ++gen_;
    asio::co_spawn(ex_, connect(gen, deadline), asio::detached);
  }

  asio::awaitable<void> connect(std::uint64_t gen, Nanos deadline) {
    auto self = shared_from_this();
    boost::system::error_code ec;
    std::vector<tcp::endpoint> targets;
    const auto addr = asio::ip::make_address(endpoint_.host, ec);
    if (!ec) {
      targets.emplace_back(addr, endpoint_.port);
    } else {
      tcp::resolver resolver(ex_);
      auto results = co_await resolver.async_resolve(endpoint_.host, std::to_string(endpoint_.port),
                                                     asio::redirect_error(asio::use_awaitable, ec));
      if (gen != gen_) co_return;
      if (ec) {
        fail_all(gen, "redis resolve: " + ec.message());
        co_return;
      }
      for (const auto& r : results) targets.push_back(r.endpoint());
    }
    auto sock = std::make_shared<tcp::socket>(ex_);
    // A connect that hangs (SYN into a black hole) must not keep the connection "connecting"
    // forever: close the socket at the deadline of the call that started it.
    asio::steady_timer watchdog(ex_);
    watchdog.expires_at(to_time_point(std::max(deadline, steady_now() + kNanosPerMilli)));
    auto fired = std::make_shared<bool>(false);
    watchdog.async_wait([sock, fired](boost::system::error_code e) {
      if (!e) {
        *fired = true;
        boost::system::error_code ignored;
        sock->close(ignored);
      }
    });
    ec = asio::error::host_not_found;
    for (const auto& t : targets) {
      if (*fired) break;
      boost::system::error_code ignored;
      sock->close(ignored);
      co_await sock->async_connect(t, asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) break;
    }
    if (*fired) ec = asio::error::timed_out;
    watchdog.cancel();
    if (gen != gen_) co_return;
    if (ec) {
      fail_all(gen, "redis connect: " + ec.message());
      co_return;
    }
    sock->set_option(tcp::no_delay(true), ec);
    socket_ = std::move(sock);
    reader_ = redisReaderCreate();
    state_ = State::kReady;
    out_.insert(0, handshake_);
    for (std::size_t i = 0; i < handshake_count_; ++i) {
      auto r = std::make_shared<Request>(ex_);
      r->internal = true;
      pending_.push_front(std::move(r));
    }
    asio::co_spawn(ex_, read_loop(gen), asio::detached);
    kick_writer();
  }

  void kick_writer() {
    if (state_ != State::kReady || writing_ || out_.empty()) return;
    writing_ = true;
    asio::co_spawn(ex_, write_loop(gen_), asio::detached);
  }

  asio::awaitable<void> write_loop(std::uint64_t gen) {
    auto self = shared_from_this();
    auto sock = socket_;
    std::string buf;
    while (gen == gen_ && !out_.empty()) {
      buf.clear();
      buf.swap(out_);
      boost::system::error_code ec;
      co_await asio::async_write(*sock, asio::buffer(buf),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (gen != gen_) co_return;
      if (ec) {
        fail_all(gen, "redis write: " + ec.message());
        co_return;
      }
    }
    if (gen == gen_) writing_ = false;
  }

  asio::awaitable<void> read_loop(std::uint64_t gen) {
    auto self = shared_from_this();
    auto sock = socket_;
    std::array<char, 16384> buf;
    for (;;) {
      boost::system::error_code ec;
      const std::size_t n = co_await sock->async_read_some(
          asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
      if (gen != gen_) co_return;
      if (ec) {
        fail_all(gen, "redis read: " + ec.message());
        co_return;
      }
      if (redisReaderFeed(reader_, buf.data(), n) != REDIS_OK) {
        fail_all(gen, "redis protocol error");
        co_return;
      }
      for (;;) {
        void* raw = nullptr;
        if (redisReaderGetReply(reader_, &raw) != REDIS_OK) {
          fail_all(gen, "redis protocol error");
          co_return;
        }
        if (!raw) break;
        ReplyPtr reply(static_cast<redisReply*>(raw));
        if (pending_.empty()) {
          fail_all(gen, "redis reply without request");
          co_return;
        }
        auto req = std::move(pending_.front());
        pending_.pop_front();
        if (req->internal && reply->type == REDIS_REPLY_ERROR) {
          fail_all(gen, "redis handshake: " + error_text(reply.get()));
          co_return;
        }
        complete(*req, std::move(reply), {});
      }
    }
  }

  asio::any_io_executor ex_;
  RedisEndpoint endpoint_;
  std::size_t max_in_flight_;
  std::string handshake_;
  std::size_t handshake_count_ = 0;
  State state_ = State::kIdle;
  std::uint64_t gen_ = 0;  // bumped per connection attempt; stale coroutines compare and quit
  std::shared_ptr<tcp::socket> socket_;
  redisReader* reader_ = nullptr;
  std::deque<std::shared_ptr<Request>> pending_;
  std::string out_;
  bool writing_ = false;
};

Result<RedisEndpoint> parse_redis_url(std::string_view url) {
  auto bad = [&](std::string why) {
    return make_error(500, "config_error", "invalid_redis_url", "redis url: " + why);
  };
  RedisEndpoint ep;
  constexpr std::string_view kScheme = "redis://";
  if (!url.starts_with(kScheme)) return bad("must start with redis://");
  std::string_view rest = url.substr(kScheme.size());
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    const std::string_view db = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    if (!db.empty()) {
      auto [p, ec] = std::from_chars(db.data(), db.data() + db.size(), ep.db);
      if (ec != std::errc() || p != db.data() + db.size() || ep.db < 0) return bad("bad db index");
    }
  }
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view info = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const auto colon = info.find(':');
    if (colon == std::string_view::npos) {
      ep.password = std::string(info);
    } else {
      ep.user = std::string(info.substr(0, colon));
      ep.password = std::string(info.substr(colon + 1));
    }
  }
  std::string_view host = rest, port;
  if (rest.starts_with('[')) {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) return bad("unbalanced [ in host");
    host = rest.substr(1, close - 1);
    const std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("expected :port after ]");
      port = after.substr(1);
    }
  } else if (const auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty()) return bad("missing host");
  ep.host = std::string(host);
  if (!port.empty()) {
    unsigned v = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
    if (ec != std::errc() || p != port.data() + port.size() || v == 0 || v > 65535) {
      return bad("bad port");
    }
    ep.port = static_cast<std::uint16_t>(v);
  }
  return ep;
}

Result<std::shared_ptr<RedisLimitStore>> RedisLimitStore::create(RedisLimitStoreOptions options) {
  auto ep = parse_redis_url(options.url);
  if (!ep) return ep.error();
  if (options.replicas < 1) options.replicas = 1;
  if (options.breaker_failures < 1) options.breaker_failures = 1;
  if (options.max_in_flight < 1) options.max_in_flight = 1;
  return std::shared_ptr<RedisLimitStore>(new RedisLimitStore(std::move(options), std::move(*ep)));
}

RedisLimitStore::RedisLimitStore(RedisLimitStoreOptions options, RedisEndpoint endpoint)
    : options_(std::move(options)), endpoint_(std::move(endpoint)), local_(options_.local) {}

RedisLimitStore::~RedisLimitStore() = default;

std::shared_ptr<RedisConnection> RedisLimitStore::connection_for(const asio::any_io_executor& ex,
                                                                 bool& local) {
  const void* ctx = &asio::query(ex, asio::execution::context);
  std::lock_guard lock(mu_);
  for (const auto& [c, conn] : connections_) {
    if (c == ctx) {
      local = true;
      return conn;
    }
  }
  if (options_.pool_size == 0 || connections_.size() < options_.pool_size) {
    auto conn = std::make_shared<RedisConnection>(ex, endpoint_, options_.max_in_flight);
    connections_.emplace_back(ctx, conn);
    local = true;
    return conn;
  }
  local = false;
  return connections_[next_shared_++ % connections_.size()].second;
}

asio::awaitable<RedisCallResult> RedisLimitStore::execute(std::string command, Nanos deadline) {
  auto ex = co_await asio::this_coro::executor;
  bool local = false;
  auto conn = connection_for(ex, local);
  calls_.fetch_add(1, std::memory_order_relaxed);
  if (local) co_return co_await conn->call(std::move(command), deadline);
  // Another worker's connection: run the call on its thread, resume here afterwards.
  co_return co_await asio::co_spawn(conn->executor(), conn->call(std::move(command), deadline),
                                    asio::use_awaitable);
}

asio::awaitable<RedisCallResult> RedisLimitStore::run_script(std::vector<std::string> args,
                                                             Nanos deadline) {
  // args[0], args[1] are placeholders for EVALSHA <sha> / EVAL <script>.
  args[0] = "EVALSHA";
  args[1] = redis_limit_script_sha1();
  RedisCallResult r = co_await execute(format_command(args), deadline);
  if (r.reply && r.reply->type == REDIS_REPLY_ERROR &&
      error_text(r.reply.get()).starts_with("NOSCRIPT")) {
    // The script cache was flushed (restart without our handshake, SCRIPT FLUSH): EVAL loads it.
    script_loads_.fetch_add(1, std::memory_order_relaxed);
    args[0] = "EVAL";
    args[1] = std::string(redis_limit_script());
    r = co_await execute(format_command(args), deadline);
  }
  co_return r;
}

RedisFailurePolicy RedisLimitStore::policy_for(std::string_view limit_name) const {
  if (!options_.policy_overrides.empty()) {
    auto it = options_.policy_overrides.find(std::string(limit_name));
    if (it != options_.policy_overrides.end()) return it->second;
  }
  return options_.failure_policy;
}

bool RedisLimitStore::breaker_allows(Nanos now) {
  std::lock_guard lock(mu_);
  if (consecutive_failures_ < options_.breaker_failures) return true;
  if (probing_) return false;
  if (now - opened_at_ >= options_.breaker_cooldown) {
    probing_ = true;  // exactly one probe until it succeeds or fails
    return true;
  }
  return false;
}

void RedisLimitStore::record_success() {
  std::lock_guard lock(mu_);
  consecutive_failures_ = 0;
  probing_ = false;
  degraded_.store(false, std::memory_order_release);
}

void RedisLimitStore::record_failure(Nanos now) {
  failures_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  ++consecutive_failures_;
  if (consecutive_failures_ == options_.breaker_failures || probing_) opened_at_ = now;
  if (consecutive_failures_ >= options_.breaker_failures) {
    probing_ = false;
    degraded_.store(true, std::memory_order_release);
  }
}

bool RedisLimitStore::degraded() const {
  return degraded_.load(std::memory_order_acquire);
}

RedisLimitStoreStats RedisLimitStore::stats() const {
  RedisLimitStoreStats s;
  s.calls = calls_.load(std::memory_order_relaxed);
  s.failures = failures_.load(std::memory_order_relaxed);
  s.fallbacks = fallbacks_.load(std::memory_order_relaxed);
  s.script_loads = script_loads_.load(std::memory_order_relaxed);
  s.breaker_open = degraded();
  return s;
}

LimitSpec RedisLimitStore::local_spec(const LimitSpec& spec) const {
  LimitSpec s = spec;
  s.rate = std::max<std::int64_t>(1, spec.rate / options_.replicas);
  s.burst = std::max<std::int64_t>(0, spec.burst / options_.replicas);
  return s;
}

BatchResult RedisLimitStore::fallback(std::span<const LimitCheck> checks, Nanos now) {
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  BatchResult out;
  out.results.resize(checks.size());
  bool closed = false;
  for (const LimitCheck& c : checks) {
    if (c.spec->mode == Mode::kEnforce &&
        policy_for(c.spec->name) == RedisFailurePolicy::kFailClosed) {
      closed = true;
    }
  }
  if (closed) {
    out.allowed = false;
    out.unavailable = true;
    out.retry_after = options_.fail_closed_retry_after;
    for (std::size_t i = 0; i < checks.size(); ++i) {
      Decision& d = out.results[i].decision;
      d.limit = checks[i].spec->params().capacity();
      d.remaining = 0;
      if (checks[i].spec->mode == Mode::kEnforce &&
          policy_for(checks[i].spec->name) == RedisFailurePolicy::kFailClosed) {
        d.allowed = false;
        d.retry_after = options_.fail_closed_retry_after;
      }
    }
    return out;
  }
  // Every enforced limit fails open: judge those (and fail-open shadow limits) locally. Shadow
  // limits that fail closed are simply not evaluated.
  std::vector<LimitSpec> specs;
  specs.reserve(checks.size());
  boost::container::small_vector<LimitCheck, 8> local;
  boost::container::small_vector<std::size_t, 8> index;
  for (std::size_t i = 0; i < checks.size(); ++i) {
    if (policy_for(checks[i].spec->name) == RedisFailurePolicy::kFailClosed) {
      out.results[i].decision.limit = checks[i].spec->params().capacity();
      continue;
    }
    specs.push_back(local_spec(*checks[i].spec));
    local.push_back(LimitCheck{checks[i].key, &specs.back(), checks[i].cost});
    index.push_back(i);
  }
  if (local.empty()) return out;
  BatchResult r = local_.check_and_consume(local, now);
  out.allowed = r.allowed;
  out.overflow = r.overflow;
  out.retry_after = r.retry_after;
  for (std::size_t j = 0; j < index.size(); ++j) out.results[index[j]] = r.results[j];
  return out;
}

namespace {

char algorithm_digit(Algorithm a) {
  switch (a) {
    case Algorithm::kGcra:
      return '0';
    case Algorithm::kTokenBucket:
      return '1';
    case Algorithm::kSlidingWindow:
      return '2';
  }
  return '0';
}

void push_spec(std::vector<std::string>& args, const LimitSpec& spec) {
  const BucketParams p = spec.params();
  args.emplace_back(1, algorithm_digit(spec.algorithm));
  args.push_back(std::to_string(p.rate));
  args.push_back(std::to_string(p.period));
  args.push_back(std::to_string(p.burst));
}

}  // namespace

asio::awaitable<BatchResult> RedisLimitStore::check_and_consume_async(
    std::span<const LimitCheck> checks, Nanos now) {
  if (checks.empty()) co_return BatchResult{};
  if (!breaker_allows(now)) co_return fallback(checks, now);

  std::vector<std::string> args;
  args.reserve(5 + 7 * checks.size());
  args.emplace_back();  // EVALSHA / EVAL
  args.emplace_back();  // sha / script
  args.push_back(std::to_string(checks.size()));
  for (const LimitCheck& c : checks) args.push_back(options_.key_prefix + std::string(c.key));
  args.emplace_back("c");
  args.push_back(options_.time_source == RedisTimeSource::kCaller ? std::to_string(now) : "");
  args.push_back(std::to_string(std::max<Nanos>(options_.ttl_margin, 0) / kNanosPerMilli));
  for (const LimitCheck& c : checks) {
    push_spec(args, *c.spec);
    args.push_back(std::to_string(std::max<std::int64_t>(c.cost, 0)));
    args.emplace_back(c.spec->mode == Mode::kShadow ? "1" : "0");
  }

  RedisCallResult r = co_await run_script(std::move(args), steady_now() + options_.timeout);

  const redisReply* rep = r.reply.get();
  BatchResult out;
  bool ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 + 5 * checks.size();
  if (ok) {
    std::int64_t allowed = 0;
    ok = parse_i64(rep->element[0], allowed);
    out.allowed = allowed == 1;
    out.results.resize(checks.size());
    for (std::size_t i = 0; ok && i < checks.size(); ++i) {
      redisReply* const* e = rep->element + 1 + 5 * i;
      std::int64_t a = 0, consumed = 0;
      Decision& d = out.results[i].decision;
      ok = parse_i64(e[0], a) && parse_i64(e[1], consumed) && parse_i64(e[2], d.remaining) &&
           parse_i64(e[3], d.retry_after) && parse_i64(e[4], d.reset_after);
      d.allowed = a == 1;
      d.limit = checks[i].spec->params().capacity();
      out.results[i].consumed = consumed == 1;
    }
  }
  if (ok) {
    record_success();
    co_return out;
  }
  record_failure(now);
  co_return fallback(checks, now);
}

asio::awaitable<void> RedisLimitStore::adjust_async(std::string_view key, const LimitSpec& spec,
                                                    std::int64_t delta, Nanos now) {
  if (delta == 0) co_return;
  const bool open_local = policy_for(spec.name) == RedisFailurePolicy::kFailOpenLocal;
  if (!breaker_allows(now)) {
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    if (open_local) local_.adjust(key, local_spec(spec), delta, now);
    co_return;
  }
  std::vector<std::string> args;
  args.reserve(11);
  args.emplace_back();
  args.emplace_back();
  args.emplace_back("1");
  args.push_back(options_.key_prefix + std::string(key));
  args.emplace_back("a");
  args.push_back(options_.time_source == RedisTimeSource::kCaller ? std::to_string(now) : "");
  args.push_back(std::to_string(std::max<Nanos>(options_.ttl_margin, 0) / kNanosPerMilli));
  push_spec(args, spec);
  args.push_back(std::to_string(delta));
  RedisCallResult r = co_await run_script(std::move(args), steady_now() + options_.timeout);
  if (r.reply && r.reply->type == REDIS_REPLY_INTEGER) {
    record_success();
    co_return;
  }
  record_failure(now);
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  if (open_local) local_.adjust(key, local_spec(spec), delta, now);
}

}  // namespace bw::limits
