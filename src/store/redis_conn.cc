#include "store/redis_conn.h"

#include <openssl/sha.h>

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

namespace bw::store {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using ReplyPtr = RedisReplyPtr;

namespace {

std::chrono::steady_clock::time_point to_time_point(Nanos t) {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(t));
}

Nanos steady_now() {
  return SteadyClock::instance().now();
}

}  // namespace

std::string redis_format_command(const std::vector<std::string>& args) {
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

bool redis_reply_i64(const redisReply* r, std::int64_t& out) {
  if (r->type == REDIS_REPLY_INTEGER) {
    out = r->integer;
    return true;
  }
  if (r->type != REDIS_REPLY_STRING) return false;
  const char* end = r->str + r->len;
  auto [p, ec] = std::from_chars(r->str, end, out);
  return ec == std::errc() && p == end;
}

bool redis_int_array(const redisReply* r, std::size_t expected, std::vector<std::int64_t>& out) {
  out.clear();
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0) return false;
  if (expected != 0 && r->elements != expected) return false;
  out.resize(r->elements);
  for (std::size_t i = 0; i < r->elements; ++i) {
    if (!r->element[i] || !redis_reply_i64(r->element[i], out[i])) return false;
  }
  return true;
}

std::string redis_error_text(const redisReply* r) {
  return std::string(r->str ? std::string_view(r->str, r->len) : std::string_view("error"));
}

RedisScript make_redis_script(std::string source) {
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(source.data()), source.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  RedisScript s;
  s.sha1.reserve(2 * SHA_DIGEST_LENGTH);
  for (unsigned char b : digest) {
    s.sha1.push_back(kHex[b >> 4]);
    s.sha1.push_back(kHex[b & 0xf]);
  }
  s.source = std::move(source);
  return s;
}

// One TCP connection, used only from its executor (one worker thread), so it needs no locks.
// Requests are appended to `out_` and `pending_` in the same order; replies complete the front of
// `pending_`. A request whose caller gave up (deadline) stays queued so the FIFO stays aligned; its
// reply is dropped when it arrives.
class RedisConnection : public std::enable_shared_from_this<RedisConnection> {
 public:
  RedisConnection(asio::any_io_executor ex, RedisEndpoint endpoint, std::size_t max_in_flight,
                  std::string handshake, std::size_t handshake_count)
      : ex_(std::move(ex)),
        endpoint_(std::move(endpoint)),
        max_in_flight_(max_in_flight),
        handshake_(std::move(handshake)),
        handshake_count_(handshake_count) {}

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
          fail_all(gen, "redis handshake: " + redis_error_text(reply.get()));
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

RedisClient::RedisClient(RedisEndpoint endpoint, std::size_t pool_size, std::size_t max_in_flight,
                         std::vector<RedisScript> scripts)
    : endpoint_(std::move(endpoint)),
      pool_size_(pool_size),
      max_in_flight_(std::max<std::size_t>(max_in_flight, 1)),
      scripts_(std::move(scripts)) {
  // Sent first on every new connection: authenticate, select the db, and load the scripts so
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
  for (const RedisScript& s : scripts_) cmds.push_back({"SCRIPT", "LOAD", s.source});
  for (const auto& c : cmds) handshake_ += redis_format_command(c);
  handshake_count_ = cmds.size();
}

RedisClient::~RedisClient() = default;

std::shared_ptr<RedisConnection> RedisClient::connection_for(const asio::any_io_executor& ex,
                                                             bool& local) {
  const void* ctx = &asio::query(ex, asio::execution::context);
  std::lock_guard lock(mu_);
  for (const auto& [c, conn] : connections_) {
    if (c == ctx) {
      local = true;
      return conn;
    }
  }
  if (pool_size_ == 0 || connections_.size() < pool_size_) {
    auto conn = std::make_shared<RedisConnection>(ex, endpoint_, max_in_flight_, handshake_,
                                                  handshake_count_);
    connections_.emplace_back(ctx, conn);
    local = true;
    return conn;
  }
  local = false;
  return connections_[next_shared_++ % connections_.size()].second;
}

asio::awaitable<RedisCallResult> RedisClient::execute(std::string command, Nanos deadline) {
  auto ex = co_await asio::this_coro::executor;
  bool local = false;
  auto conn = connection_for(ex, local);
  calls_.fetch_add(1, std::memory_order_relaxed);
  if (local) co_return co_await conn->call(std::move(command), deadline);
  // Another worker's connection: run the call on its thread, resume here afterwards.
  co_return co_await asio::co_spawn(conn->executor(), conn->call(std::move(command), deadline),
                                    asio::use_awaitable);
}

asio::awaitable<RedisCallResult> RedisClient::run_script(std::size_t script,
                                                         const std::vector<std::string>& keys,
                                                         const std::vector<std::string>& args,
                                                         Nanos deadline) {
  const RedisScript& s = scripts_.at(script);
  std::vector<std::string> argv;
  argv.reserve(3 + keys.size() + args.size());
  argv.emplace_back("EVALSHA");
  argv.push_back(s.sha1);
  argv.push_back(std::to_string(keys.size()));
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  RedisCallResult r = co_await execute(redis_format_command(argv), deadline);
  if (r.reply && r.reply->type == REDIS_REPLY_ERROR &&
      redis_error_text(r.reply.get()).starts_with("NOSCRIPT")) {
    // The script cache was flushed (restart without our handshake, SCRIPT FLUSH): EVAL loads it.
    script_loads_.fetch_add(1, std::memory_order_relaxed);
    argv[0] = "EVAL";
    argv[1] = s.source;
    r = co_await execute(redis_format_command(argv), deadline);
  }
  co_return r;
}

bool RedisBreaker::allow(Nanos now) {
  std::lock_guard lock(mu_);
  if (consecutive_ < failures_) return true;
  if (probing_) return false;
  if (now - opened_at_ >= cooldown_) {
    probing_ = true;  // exactly one probe until it succeeds or fails
    return true;
  }
  return false;
}

void RedisBreaker::success() {
  std::lock_guard lock(mu_);
  consecutive_ = 0;
  probing_ = false;
  open_.store(false, std::memory_order_release);
}

void RedisBreaker::failure(Nanos now) {
  std::lock_guard lock(mu_);
  ++consecutive_;
  if (consecutive_ == failures_ || probing_) opened_at_ = now;
  if (consecutive_ >= failures_) {
    probing_ = false;
    open_.store(true, std::memory_order_release);
  }
}

}  // namespace bw::store
