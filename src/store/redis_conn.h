#pragma once
// RedisClient: the small asynchronous Redis client shared by RedisLimitStore (limits) and
// RedisBudgetStore (cost/redis_budget.h). docs/distributed.md, "Connections".
//
// I/O: Boost.Asio TCP sockets with hiredis only for the RESP encoding (redisFormatCommandArgv) and
// the reply parser (redisReader). Connections are per io_context: a caller on worker W uses W's
// connection directly (no locks, no thread hop). Requests are pipelined on it and replies matched
// FIFO; `max_in_flight` bounds the queue. With pool_size > 0 and more workers than that, extra
// workers hop onto an existing connection's executor. Every call has a deadline (connect
// included). A new connection first pipelines AUTH / SELECT and SCRIPT LOAD of every registered
// script, so that each later script call is one EVALSHA; a NOSCRIPT reply (SCRIPT FLUSH, failover)
// is answered with one EVAL.
//
// RedisBreaker: consecutive-failure circuit breaker with a single probe after the cooldown.
//
// Thread safety: RedisClient and RedisBreaker may be used concurrently from coroutines on any
// io_context. A RedisClient must be destroyed before the io_contexts its connections were created
// on.
#include <hiredis/hiredis.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "common/clock.h"
#include "common/result.h"

namespace bw::store {

struct RedisEndpoint {
  std::string host = "127.0.0.1";
  std::uint16_t port = 6379;
  std::string user;
  std::string password;
  int db = 0;
};

// Parses redis://[[user]:password@]host[:port][/db] (and [v6]:port). Errors name the problem.
Result<RedisEndpoint> parse_redis_url(std::string_view url);

struct RedisReplyDeleter {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};
using RedisReplyPtr = std::unique_ptr<redisReply, RedisReplyDeleter>;

struct RedisCallResult {
  RedisReplyPtr reply;  // null on error (a Redis error reply is a reply, not an error)
  std::string error;
};

// RESP encoding of one command (hiredis does the encoding).
std::string redis_format_command(const std::vector<std::string>& args);
// An integer reply, or a bulk string holding a decimal integer.
bool redis_reply_i64(const redisReply* r, std::int64_t& out);
std::string redis_error_text(const redisReply* r);
// The elements of an array reply that must all be integers (or decimal bulk strings): exactly
// `expected` of them, or any non-zero number when `expected` is 0. False for any other shape, so
// that a malformed script reply is an error, never a crash (the fuzzer feeds it raw RESP).
bool redis_int_array(const redisReply* r, std::size_t expected, std::vector<std::int64_t>& out);

// A Lua script the client loads on every new connection and calls by SHA-1.
struct RedisScript {
  std::string source;
  std::string sha1;  // lower-case hex, as SCRIPT LOAD returns it
};
RedisScript make_redis_script(std::string source);

class RedisConnection;

class RedisClient {
 public:
  RedisClient(RedisEndpoint endpoint, std::size_t pool_size, std::size_t max_in_flight,
              std::vector<RedisScript> scripts);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // One command (already RESP-encoded) on the caller's worker's connection.
  boost::asio::awaitable<RedisCallResult> execute(std::string command, Nanos deadline);
  // EVALSHA of scripts()[script] with `keys` and `args`; NOSCRIPT falls back to one EVAL.
  boost::asio::awaitable<RedisCallResult> run_script(std::size_t script,
                                                     const std::vector<std::string>& keys,
                                                     const std::vector<std::string>& args,
                                                     Nanos deadline);

  const std::vector<RedisScript>& scripts() const { return scripts_; }
  std::uint64_t calls() const { return calls_.load(std::memory_order_relaxed); }
  std::uint64_t script_loads() const { return script_loads_.load(std::memory_order_relaxed); }

 private:
  std::shared_ptr<RedisConnection> connection_for(const boost::asio::any_io_executor& ex,
                                                  bool& local);

  RedisEndpoint endpoint_;
  std::size_t pool_size_;
  std::size_t max_in_flight_;
  std::vector<RedisScript> scripts_;
  std::string handshake_;  // AUTH / SELECT / SCRIPT LOAD..., RESP-encoded
  std::size_t handshake_count_ = 0;

  std::mutex mu_;  // guards connections_; never held across co_await
  std::vector<std::pair<const void*, std::shared_ptr<RedisConnection>>> connections_;
  std::size_t next_shared_ = 0;
  std::atomic<std::uint64_t> calls_{0}, script_loads_{0};
};

// Opens after `failures` consecutive failures; while open, allow() is false for `cooldown`, then
// exactly one probe is let through; its success closes the breaker, its failure re-opens it.
class RedisBreaker {
 public:
  RedisBreaker(int failures, Nanos cooldown)
      : failures_(std::max(failures, 1)), cooldown_(cooldown) {}
  bool allow(Nanos now);
  void success();
  void failure(Nanos now);
  bool open() const { return open_.load(std::memory_order_acquire); }

 private:
  const int failures_;
  const Nanos cooldown_;
  std::mutex mu_;
  int consecutive_ = 0;
  Nanos opened_at_ = 0;
  bool probing_ = false;
  std::atomic<bool> open_{false};
};

}  // namespace bw::store
