#include "store/redis_conn.h"

#include <gtest/gtest.h>

namespace bw::store {
namespace {

TEST(RedisUrl, Parses) {
  auto e = parse_redis_url("redis://user:secret@redis.internal:6380/2");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "redis.internal");
  EXPECT_EQ(e->port, 6380);
  EXPECT_EQ(e->user, "user");
  EXPECT_EQ(e->password, "secret");
  EXPECT_EQ(e->db, 2);
  e = parse_redis_url("redis://[::1]:7000");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "::1");
  EXPECT_EQ(e->port, 7000);
  e = parse_redis_url("redis://:pw@localhost");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->password, "pw");
  EXPECT_EQ(e->port, 6379);
  EXPECT_FALSE(parse_redis_url("http://x").ok());
  EXPECT_FALSE(parse_redis_url("redis://host:99999").ok());
  EXPECT_FALSE(parse_redis_url("redis://host/x").ok());
}

}  // namespace
}  // namespace bw::store
