#include "routing/dead_letter.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>

namespace bw::routing {
namespace {

class DeadLetterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("bw-dlq-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  DeadLetterConfig cfg(std::int64_t max_entries = 100, std::int64_t max_bytes = 1 << 20) {
    return {(dir_ / "dlq.db").string(), max_entries, max_bytes};
  }
  std::unique_ptr<DeadLetterQueue> open(const DeadLetterConfig& c) {
    auto q = DeadLetterQueue::open(c);
    EXPECT_TRUE(q.ok()) << (q.ok() ? "" : q.error().message);
    return q.ok() ? std::move(q.value()) : nullptr;
  }
  static NewDeadLetter entry(int n, std::size_t body_size = 10) {
    NewDeadLetter e;
    e.created_unix_ms = 1'767'225'600'000 + n;
    e.key_id = "k1";
    e.model = "gpt-4.1";
    e.endpoint = "/v1/chat/completions";
    e.body = std::string(body_size, static_cast<char>('a' + n % 26));
    e.body[0] = '\0';  // bodies are blobs, embedded NULs survive
    e.error = "upstream 503 after 3 attempts #" + std::to_string(n);
    e.attempts = 3;
    return e;
  }
  std::filesystem::path dir_;
};

TEST_F(DeadLetterTest, AddGetListDeleteReplay) {
  auto q = open(cfg());
  ASSERT_TRUE(q);
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 5; ++i) {
    auto id = q->add(entry(i));
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  EXPECT_EQ(q->size(), 5);
  EXPECT_EQ(q->added_total(), 5u);
  EXPECT_EQ(q->dropped_total(), 0u);

  auto got = q->get(ids[2]);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  const DeadLetter& d = **got;
  EXPECT_EQ(d.id, ids[2]);
  EXPECT_EQ(d.created_unix_ms, 1'767'225'600'002);
  EXPECT_EQ(d.key_id, "k1");
  EXPECT_EQ(d.model, "gpt-4.1");
  EXPECT_EQ(d.endpoint, "/v1/chat/completions");
  EXPECT_EQ(d.body, entry(2).body);
  EXPECT_EQ(d.error, "upstream 503 after 3 attempts #2");
  EXPECT_EQ(d.attempts, 3);
  EXPECT_FALSE(d.replayed_unix_ms.has_value());

  auto page1 = q->list(0, 2);
  ASSERT_TRUE(page1.ok());
  ASSERT_EQ(page1->size(), 2u);
  EXPECT_EQ((*page1)[0].id, ids[0]);
  EXPECT_EQ((*page1)[1].id, ids[1]);
  EXPECT_TRUE((*page1)[0].body.empty());  // bodies only on request
  auto page2 = q->list((*page1)[1].id, 10, true);
  ASSERT_TRUE(page2.ok());
  ASSERT_EQ(page2->size(), 3u);
  EXPECT_EQ((*page2)[0].id, ids[2]);
  EXPECT_EQ((*page2)[0].body, entry(2).body);

  auto marked = q->mark_replayed(ids[1], 1'767'225'700'000);
  ASSERT_TRUE(marked.ok());
  EXPECT_TRUE(*marked);
  EXPECT_EQ((*q->get(ids[1]))->replayed_unix_ms, 1'767'225'700'000);
  EXPECT_FALSE(*q->mark_replayed(9999, 1));

  const std::int64_t bytes_before = q->bytes();
  EXPECT_TRUE(*q->remove(ids[0]));
  EXPECT_FALSE(*q->remove(ids[0]));
  EXPECT_EQ(q->size(), 4);
  EXPECT_EQ(q->bytes(), bytes_before - DeadLetterQueue::entry_size(entry(0)));
  EXPECT_FALSE(q->get(ids[0])->has_value());
}

TEST_F(DeadLetterTest, CountBoundDropsOldestFirst) {
  auto q = open(cfg(3));
  ASSERT_TRUE(q);
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(*q->add(entry(i)));
  EXPECT_EQ(q->size(), 3);
  EXPECT_EQ(q->added_total(), 5u);
  EXPECT_EQ(q->dropped_total(), 2u);
  auto all = q->list(0, 100);
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].id, ids[2]);
  EXPECT_EQ((*all)[2].id, ids[4]);
}

TEST_F(DeadLetterTest, ByteBoundDropsOldestFirstAndRefusesOversized) {
  const std::int64_t one = DeadLetterQueue::entry_size(entry(0, 100));
  auto q = open(cfg(100, 2 * one + one / 2));
  ASSERT_TRUE(q);
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(*q->add(entry(i, 100)));
  EXPECT_EQ(q->size(), 2);
  EXPECT_EQ(q->bytes(), 2 * one);
  EXPECT_EQ(q->dropped_total(), 2u);
  EXPECT_EQ((*q->list(0, 10))[0].id, ids[2]);

  // A big entry evicts as many old ones as it needs.
  const auto big = entry(9, 100 + static_cast<std::size_t>(one));
  auto big_id = q->add(big);
  ASSERT_TRUE(big_id.ok());
  EXPECT_EQ(q->size(), 1);
  EXPECT_EQ(q->dropped_total(), 4u);

  auto too_big = q->add(entry(10, static_cast<std::size_t>(3 * one)));
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.error().code, "dead_letter_too_large");
  EXPECT_EQ(q->dropped_total(), 5u);
  EXPECT_EQ(q->size(), 1);
  EXPECT_EQ(q->added_total(), 5u);
}

TEST_F(DeadLetterTest, PersistsAcrossReopenWithSchemaVersion) {
  std::int64_t last = 0;
  {
    auto q = open(cfg());
    ASSERT_TRUE(q);
    for (int i = 0; i < 3; ++i) last = *q->add(entry(i));
  }
  auto q = open(cfg(2));  // smaller bound after a restart applies on the next insert
  ASSERT_TRUE(q);
  EXPECT_EQ(q->size(), 3);
  EXPECT_EQ(q->bytes(), 3 * DeadLetterQueue::entry_size(entry(0)));
  EXPECT_EQ((*q->get(last))->error, "upstream 503 after 3 attempts #2");
  auto next = q->add(entry(3));
  ASSERT_TRUE(next.ok());
  EXPECT_GT(*next, last);  // ids never reused
  EXPECT_EQ(q->size(), 2);

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "dlq.db").string().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(s, 0), 1);
  sqlite3_finalize(s);
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)), "wal");
  sqlite3_finalize(s);
  sqlite3_close(db);
}

TEST_F(DeadLetterTest, RefusesNewerSchemaAndBadPath) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ / "dlq.db").string().c_str(), &db), SQLITE_OK);
    sqlite3_exec(db, "PRAGMA user_version=7", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  auto q = DeadLetterQueue::open(cfg());
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.error().message.find("schema version 7"), std::string::npos);
  auto bad = DeadLetterQueue::open({(dir_ / "missing" / "x.db").string(), 10, 100});
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace bw::routing
