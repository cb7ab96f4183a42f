#pragma once
// NameMemo: a per-thread memo of the last few lookups by name in a table whose entries, once
// there, are never removed or replaced (admission groups, the scaling planner's counters). The
// requests of a worker look up the same few names again and again; a hit compares the name and
// skips the table's lock and search.
// An owner (the table) is known by a process-unique id, never by its address, which a later
// owner may reuse: an entry is only ever read back through the owner that kept it, while that
// owner lives.
// Thread safety: each thread has its own memo. The values are the owner's to keep valid.
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/same_text.h"

namespace bw {

// A new owner id (never 0).
inline std::uint64_t next_memo_owner() {
  static std::atomic<std::uint64_t> last{0};
  return last.fetch_add(1, std::memory_order_relaxed) + 1;
}

// `Tag` separates the memos of different tables; `V` is a pointer or another small value whose
// default means "not found".
template <class Tag, class V, std::size_t N = 4>
class NameMemo {
 public:
  static V find(std::uint64_t owner, std::string_view name) {
    for (const Entry& e : memo().entries) {
      if (e.owner == owner && same_text(e.name, name)) {
        return e.value;
      }
    }
    return V{};
  }

  static void keep(std::uint64_t owner, std::string_view name, V value) {
    Memo& m = memo();
    Entry& e = m.entries[m.next];
    m.next = (m.next + 1) % N;
    e.owner = owner;
    e.name.assign(name);
    e.value = value;
  }

 private:
  struct Entry {
    std::uint64_t owner = 0;
    std::string name;
    V value{};
  };
  struct Memo {
    std::array<Entry, N> entries;
    std::size_t next = 0;
  };
  static Memo& memo() {
    thread_local Memo m;
    return m;
  }
};

}  // namespace bw
