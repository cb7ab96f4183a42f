// test-label: unit postgres
#include <gtest/gtest.h>

#include <set>

#include <atomic>
#include <thread>

#include "backends.h"
#include "store/key_crypto.h"
#include "store/key_spec.h"

namespace bw::store {
using namespace bw::cost;
namespace {

constexpr std::int64_t kNow = 1'767'225'600'000;

TEST(KeyCrypto, KnownVectors) {
  EXPECT_EQ(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // RFC 4231 test case 2.
  EXPECT_EQ(hmac_sha256_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_TRUE(constant_time_equal("abcdef", "abcdef"));
  EXPECT_FALSE(constant_time_equal("abcdef", "abcdeg"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_TRUE(constant_time_equal("", ""));
}

TEST(KeyCrypto, SecretsAndIdsAreWellFormedAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    auto s = generate_secret();
    ASSERT_TRUE(s);
    ASSERT_EQ(s->size(), 35u);
    EXPECT_EQ(s->substr(0, 3), "bw-");
    for (char c : s->substr(3)) {
      EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') << *s;
    }
    EXPECT_TRUE(seen.insert(*s).second);
    auto id = generate_key_id();
    ASSERT_TRUE(id);
    ASSERT_EQ(id->size(), 16u);
    EXPECT_EQ(id->substr(0, 4), "key_");
    for (char c : id->substr(4)) {
      EXPECT_TRUE(std::islower(static_cast<unsigned char>(c)) ||
                  std::isdigit(static_cast<unsigned char>(c)));
    }
  }
}

KeySpec sample_spec() {
  KeySpec s;
  s.name = "ci bot";
  s.tenant = "acme";
  s.plan = "pro";
  s.limits_json = R"({"rpm":600})";
  s.budgets = {{5'000'000, BudgetPeriod::kMonthly}, {250'000, BudgetPeriod::kDaily}};
  s.allowed_models = {"gpt-4.1", "deepseek-v3.2"};
  s.default_priority = 2;
  s.max_priority = 1;
  s.downgrade_opt_out = true;
  return s;
}

// Every case runs against SQLite and PostgreSQL (tests/cost/backends.h).
template <class B>
class KeyStoreParity : public testing::BackendTest<B> {};
TYPED_TEST_SUITE(KeyStoreParity, testing::Backends, testing::BackendNames);

TYPED_TEST(KeyStoreParity, CreateStoresOnlyTheHashAndVerifies) {
  auto store = this->backend().open_key_store();
  ASSERT_TRUE(store);
  auto issued = store->create(sample_spec(), kNow);
  ASSERT_TRUE(issued.ok()) << issued.error().message;
  const ApiKeyRecord& rec = issued->record;
  EXPECT_EQ(rec.secret_hash, hash_key(issued->secret));
  EXPECT_EQ(rec.prefix, issued->secret.substr(0, 7));
  EXPECT_EQ(rec.created_unix_ms, kNow);
  EXPECT_EQ(rec.rotated_unix_ms, 0);

  auto got = store->get(rec.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->secret_hash, rec.secret_hash);
  EXPECT_EQ(got->spec.name, "ci bot");
  EXPECT_EQ(got->spec.tenant, "acme");
  EXPECT_EQ(got->spec.plan, "pro");
  EXPECT_EQ(got->spec.limits_json, R"({"rpm":600})");
  EXPECT_EQ(got->spec.budgets, sample_spec().budgets);
  EXPECT_EQ(got->spec.allowed_models, sample_spec().allowed_models);
  EXPECT_EQ(got->spec.default_priority, 2);
  EXPECT_EQ(got->spec.max_priority, 1);
  EXPECT_TRUE(got->spec.downgrade_opt_out);
  EXPECT_FALSE(got->revoked);

  auto v = store->verify(issued->secret);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->id, rec.id);
  auto bad = store->verify(issued->secret + "x");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().status, 401);
  EXPECT_EQ(bad.error().code, "invalid_api_key");
  EXPECT_EQ(bad.error().message.find(issued->secret), std::string::npos);

  auto missing = store->get("key_nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().status, 404);
}

TYPED_TEST(KeyStoreParity, RotateInvalidatesTheOldSecret) {
  auto store = this->backend().open_key_store();
  ASSERT_TRUE(store);
  auto issued = store->create(sample_spec(), kNow);
  ASSERT_TRUE(issued.ok());
  auto rotated = store->rotate(issued->record.id, kNow + 1000);
  ASSERT_TRUE(rotated.ok());
  EXPECT_NE(rotated->secret, issued->secret);
  EXPECT_EQ(rotated->record.id, issued->record.id);
  EXPECT_EQ(rotated->record.rotated_unix_ms, kNow + 1000);
  EXPECT_EQ(rotated->record.secret_hash, hash_key(rotated->secret));
  EXPECT_FALSE(store->verify(issued->secret).ok());
  ASSERT_TRUE(store->verify(rotated->secret).ok());
  EXPECT_FALSE(store->rotate("key_nope", kNow).ok());
}

TYPED_TEST(KeyStoreParity, RevokeListAndUpdate) {
  auto store = this->backend().open_key_store();
  ASSERT_TRUE(store);
  auto a = store->create(sample_spec(), kNow);
  KeySpec other;
  other.name = "plain";
  auto b = store->create(other, kNow + 1);
  ASSERT_TRUE(a.ok() && b.ok());

  auto all = store->list();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id, a->record.id);
  EXPECT_EQ((*all)[1].id, b->record.id);
  EXPECT_TRUE((*all)[1].spec.budgets.empty());
  EXPECT_TRUE((*all)[1].spec.allowed_models.empty());

  KeySpec changed = other;
  changed.name = "renamed";
  changed.budgets = {{1, BudgetPeriod::kTotal}};
  changed.allowed_models = {"gemini-2.5-flash"};
  auto upd = store->update(b->record.id, changed);
  ASSERT_TRUE(upd.ok());
  EXPECT_EQ(upd->spec.name, "renamed");
  EXPECT_EQ(upd->spec.budgets, changed.budgets);
  EXPECT_EQ(upd->spec.allowed_models, changed.allowed_models);
  EXPECT_EQ(upd->secret_hash, b->record.secret_hash);  // secret unchanged
  EXPECT_FALSE(store->update("key_nope", changed).ok());

  ASSERT_TRUE(store->revoke(a->record.id).ok());
  auto v = store->verify(a->secret);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().status, 401);
  EXPECT_TRUE(store->get(a->record.id)->revoked);
  EXPECT_FALSE(store->rotate(a->record.id, kNow).ok());  // revoked keys stay dead
  EXPECT_TRUE(store->verify(b->secret).ok());
  EXPECT_FALSE(store->revoke("key_nope").ok());
}

TYPED_TEST(KeyStoreParity, ValidatesSpecs) {
  auto store = this->backend().open_key_store();
  ASSERT_TRUE(store);
  KeySpec s;
  s.budgets = {{10, BudgetPeriod::kDaily}, {20, BudgetPeriod::kDaily}};
  EXPECT_EQ(store->create(s, kNow).error().code, "invalid_budget");
  s.budgets = {{-1, BudgetPeriod::kDaily}};
  EXPECT_EQ(store->create(s, kNow).error().code, "invalid_budget");
  s.budgets = {};
  s.allowed_models = {"bad\nname"};
  EXPECT_EQ(store->create(s, kNow).error().code, "invalid_model");
  s.allowed_models = {std::string("gpt\0x", 5)};
  EXPECT_EQ(store->create(s, kNow).error().code, "invalid_model");
  s.allowed_models = {};
  s.default_priority = 0;
  s.max_priority = 1;
  EXPECT_EQ(store->create(s, kNow).error().code, "invalid_priority");
  s.default_priority = s.max_priority = 1;
  // A NUL byte is refused in every text field, by every backend (SQLite would cut the text at it,
  // PostgreSQL cannot store it); update() checks like create().
  for (std::string KeySpec::*field :
       {&KeySpec::name, &KeySpec::tenant, &KeySpec::plan, &KeySpec::limits_json}) {
    KeySpec bad = s;
    bad.*field = std::string("a\0b", 3);
    const auto created = store->create(bad, kNow);
    ASSERT_FALSE(created.ok());
    EXPECT_EQ(created.error().code, "invalid_value");
  }
  EXPECT_TRUE(store->list()->empty());
  auto ok = store->create(s, kNow);
  ASSERT_TRUE(ok.ok());
  KeySpec bad = s;
  bad.name = std::string("a\0b", 3);
  EXPECT_EQ(store->update(ok->record.id, bad).error().code, "invalid_value");
  EXPECT_EQ(store->get(ok->record.id)->spec.name, s.name);
}

TEST(KeySpecValidation, OneRuleForEveryBackend) {
  KeySpec s;
  EXPECT_TRUE(validate_key_spec(s).ok());
  s.limits_json = std::string("{\0}", 3);
  auto r = validate_key_spec(s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().status, 400);
  EXPECT_EQ(r.error().param, "limits_json");
  s.limits_json = "{}";
  s.budgets = {{1, BudgetPeriod::kMonthly}, {2, BudgetPeriod::kDaily}, {3, BudgetPeriod::kTotal}};
  EXPECT_TRUE(validate_key_spec(s).ok());
  s.max_priority = 0;
  s.default_priority = 2;
  EXPECT_TRUE(validate_key_spec(s).ok());
  s.default_priority = 3;
  EXPECT_EQ(validate_key_spec(s).error().code, "invalid_priority");
}

TYPED_TEST(KeyStoreParity, SharesTheDatabaseWithTheLedgerSchema) {
  auto ledger = this->backend().open_ledger();  // ledger and keys share one database
  ASSERT_TRUE(ledger);
  auto store = this->backend().open_key_store();
  ASSERT_TRUE(store);
  auto again = this->backend().open_key_store();  // second opener sees the migrated schema
  ASSERT_TRUE(again);
  auto k = store->create(KeySpec{}, kNow);
  ASSERT_TRUE(k.ok());
  EXPECT_TRUE(again->verify(k->secret).ok());
}

TEST(KeyEncoding, RoundTrips) {
  const std::vector<KeyBudget> b = {{5, BudgetPeriod::kDaily}, {kMaxMicros, BudgetPeriod::kTotal}};
  EXPECT_EQ(encode_key_budgets(b), "daily:5;total:9223372036854775807");
  EXPECT_EQ(decode_key_budgets(encode_key_budgets(b)), b);
  EXPECT_TRUE(decode_key_budgets("weekly:5;daily:x").empty());
  EXPECT_EQ(split_lines(join_lines({"a", "b"})), (std::vector<std::string>{"a", "b"}));
}

// Replicas verify keys concurrently while an admin rotates one: the old secret stops working for
// every instance as soon as rotate() returns.
TYPED_TEST(KeyStoreParity, ConcurrentVerifyAcrossInstancesAndRotation) {
  auto admin = this->backend().open_key_store();
  auto replica = this->backend().open_key_store();
  ASSERT_TRUE(admin && replica);
  auto issued = admin->create(sample_spec(), kNow);
  ASSERT_TRUE(issued.ok());
  std::atomic<int> verified{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto v = replica->verify(issued->secret);
        if (v.ok() && v->id == issued->record.id) {
          ++verified;
        } else {
          ++errors;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(verified.load(), 200);
  EXPECT_EQ(errors.load(), 0);
  auto rotated = admin->rotate(issued->record.id, kNow + 5);
  ASSERT_TRUE(rotated.ok());
  auto old = replica->verify(issued->secret);
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.error().code, "invalid_api_key");
  auto fresh = replica->verify(rotated->secret);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->rotated_unix_ms, kNow + 5);
  EXPECT_EQ(fresh->spec.budgets, sample_spec().budgets);
}

}  // namespace
}  // namespace bw::store
