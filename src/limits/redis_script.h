#pragma once
// The Lua script that RedisLimitStore runs once per request (EVALSHA): it checks and consumes
// every bucket of a batch atomically, with the same exact integer arithmetic as algorithms.h
// (a small bignum inside the script, since Redis Lua numbers are doubles). Pure data.
#include <string>
#include <string_view>

namespace bw::limits {

std::string_view redis_limit_script();
// Lower-case hex SHA-1 of the script, as SCRIPT LOAD returns it and EVALSHA expects it.
const std::string& redis_limit_script_sha1();

}  // namespace bw::limits
