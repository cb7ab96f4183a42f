#include <cstring>

#include "cache/cache.h"

namespace bw::cache {

namespace {

constexpr std::string_view kMagic = "BWC1";

void put_u64(std::string& out, std::uint64_t v) {
  char b[8];
  std::memcpy(b, &v, 8);
  out.append(b, 8);
}
void put_str(std::string& out, std::string_view s) {
  put_u64(out, s.size());
  out.append(s);
}

struct Reader {
  std::string_view in;
  bool ok = true;
  std::uint64_t u64() {
    if (in.size() < 8) {
      ok = false;
      return 0;
    }
    std::uint64_t v;
    std::memcpy(&v, in.data(), 8);
    in.remove_prefix(8);
    return v;
  }
  std::string str() {
    const auto n = u64();
    if (!ok || n > in.size()) {
      ok = false;
      return {};
    }
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
};

}  // namespace

std::size_t Entry::footprint() const {
  // The strings' heap blocks plus the entry, its shared_ptr control block and the LRU node.
  return sizeof(Entry) + 96 + body.capacity() + content_type.capacity() + model_served.capacity();
}

std::string encode(const Entry& e) {
  std::string out;
  out.reserve(64 + e.body.size() + e.content_type.size() + e.model_served.size());
  out.append(kMagic);
  out.push_back(static_cast<char>(e.kind));
  put_u64(out, static_cast<std::uint64_t>(e.created_unix_ms));
  put_u64(out, static_cast<std::uint64_t>(e.prompt_tokens));
  put_u64(out, static_cast<std::uint64_t>(e.completion_tokens));
  put_u64(out, static_cast<std::uint64_t>(e.cost_micro));
  put_str(out, e.content_type);
  put_str(out, e.model_served);
  put_str(out, e.body);
  return out;
}

Result<Entry> decode(std::string_view bytes) {
  auto bad = [] { return make_error(500, "server_error", "cache_corrupt", "bad cache entry"); };
  if (bytes.size() < kMagic.size() + 1 || bytes.substr(0, kMagic.size()) != kMagic) return bad();
  Entry e;
  const auto kind = static_cast<std::uint8_t>(bytes[kMagic.size()]);
  if (kind > 1) return bad();
  e.kind = static_cast<Entry::Kind>(kind);
  Reader r{bytes.substr(kMagic.size() + 1)};
  e.created_unix_ms = static_cast<std::int64_t>(r.u64());
  e.prompt_tokens = static_cast<std::int64_t>(r.u64());
  e.completion_tokens = static_cast<std::int64_t>(r.u64());
  e.cost_micro = static_cast<std::int64_t>(r.u64());
  e.content_type = r.str();
  e.model_served = r.str();
  e.body = r.str();
  if (!r.ok || !r.in.empty()) return bad();
  return e;
}

}  // namespace bw::cache
