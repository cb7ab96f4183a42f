// Replies of the Redis scripts (rate limits, budgets): raw RESP bytes through hiredis' reader,
// then every reply through the decoders the stores use (redis_int_array with the shapes the
// scripts return, redis_reply_i64, redis_error_text).
#include <hiredis/hiredis.h>

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "store/redis_conn.h"

// hiredis allocates an aggregate's element array at the count the server declares, so
// "*2000000000\r\n" asks for gigabytes before any element arrives. Redis is a trusted backend
// (and this hiredis has no limit to set), so such counts are not fuzzed: only the decoding is.
bool declares_huge_aggregate(const std::uint8_t* data, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    const char c = static_cast<char>(data[i]);
    if (c != '*' && c != '%' && c != '~' && c != '>' && c != '|') continue;
    std::uint64_t n = 0;
    for (std::size_t k = i + 1; k < size && data[k] >= '0' && data[k] <= '9'; ++k) {
      n = n * 10 + (data[k] - '0');
      if (n > 4096) return true;
    }
  }
  return false;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (declares_huge_aggregate(data, size)) return 0;
  redisReader* reader = redisReaderCreate();
  if (!reader) return 0;
  reader->maxbuf = 0;
  redisReaderFeed(reader, reinterpret_cast<const char*>(data), size);
  for (int i = 0; i < 16; ++i) {
    void* out = nullptr;
    if (redisReaderGetReply(reader, &out) != REDIS_OK || !out) break;
    bw::store::RedisReplyPtr reply(static_cast<redisReply*>(out));
    std::vector<std::int64_t> v;
    for (std::size_t expected : {std::size_t{0}, std::size_t{1}, std::size_t{6}, std::size_t{11}}) {
      if (bw::store::redis_int_array(reply.get(), expected, v) && expected != 0) {
        if (v.size() != expected) std::abort();
      }
    }
    std::int64_t x = 0;
    (void)bw::store::redis_reply_i64(reply.get(), x);
    if (reply->type == REDIS_REPLY_ERROR) (void)bw::store::redis_error_text(reply.get());
  }
  redisReaderFree(reader);
  return 0;
}
