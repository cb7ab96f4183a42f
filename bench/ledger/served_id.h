#pragma once
// Request ids as the gateway makes them (src/gateway/routes.cc), for the ledger's benchmarks.
#include <cstdint>
#include <cstdio>
#include <string>

namespace bw::bench {

// "req_", the millisecond `ms` (11 hex digits) and 52 random bits (13 hex digits) drawn from
// `seq`: ids of one millisecond come in no order.
inline std::string served_request_id_at(std::int64_t seq, std::int64_t ms) {
  std::uint64_t z = static_cast<std::uint64_t>(seq) + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  char id[48];
  std::snprintf(id, sizeof id, "req_%011llx%013llx", static_cast<unsigned long long>(ms),
                static_cast<unsigned long long>(z & 0xfffffffffffffULL));
  return id;
}

}  // namespace bw::bench
