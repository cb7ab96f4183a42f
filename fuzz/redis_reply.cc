// Replies of the Redis scripts (rate limits, budgets): raw RESP bytes through hiredis' reader,
// then every reply through the decoders the stores use (redis_int_array with the shapes the
// scripts return, redis_reply_i64, redis_error_text).
#include <hiredis/hiredis.h>

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "limits/redis_conn.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  redisReader* reader = redisReaderCreate();
  if (!reader) return 0;
  reader->maxbuf = 0;
  redisReaderFeed(reader, reinterpret_cast<const char*>(data), size);
  for (int i = 0; i < 16; ++i) {
    void* out = nullptr;
    if (redisReaderGetReply(reader, &out) != REDIS_OK || !out) break;
    bw::limits::RedisReplyPtr reply(static_cast<redisReply*>(out));
    std::vector<std::int64_t> v;
    for (std::size_t expected : {std::size_t{0}, std::size_t{1}, std::size_t{6}, std::size_t{11}}) {
      if (bw::limits::redis_int_array(reply.get(), expected, v) && expected != 0) {
        if (v.size() != expected) std::abort();
      }
    }
    std::int64_t x = 0;
    (void)bw::limits::redis_reply_i64(reply.get(), x);
    if (reply->type == REDIS_REPLY_ERROR) (void)bw::limits::redis_error_text(reply.get());
  }
  redisReaderFree(reader);
  return 0;
}
