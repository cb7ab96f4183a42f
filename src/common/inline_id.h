#pragma once
// InlineId: a string for ids copied into records, that keeps up to kInline characters in itself
// and only longer ones on the heap. A generated request id ("req_" and 24 digits, 28 characters)
// does not fit the 15 characters std::string keeps inline: every ledger row that copied it made
// an allocation on its event loop and freed it on the ledger's writer thread, and a block freed on
// another thread than the one that allocated it is expensive in glibc's malloc. Ids up to
// kInline characters (UUIDs too) are copied with no allocation at all.
// Thread safety: a value type, like std::string.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

namespace bw {

class InlineId {
 public:
  static constexpr std::size_t kInline = 36;

  InlineId() = default;
  // Implicit, like std::string's: ids are assigned from strings.
  InlineId(std::string_view s) { assign(s); }  // NOLINT(google-explicit-constructor)
  InlineId(const std::string& s) : InlineId(std::string_view(s)) {}  // NOLINT
  InlineId(const char* s) : InlineId(std::string_view(s)) {}         // NOLINT
  InlineId(const InlineId& other) { assign(other.view()); }
  InlineId(InlineId&& other) noexcept { take(other); }
  InlineId& operator=(const InlineId& other) {
    if (this != &other) assign(other.view());
    return *this;
  }
  InlineId& operator=(InlineId&& other) noexcept {
    if (this != &other) take(other);
    return *this;
  }
  InlineId& operator=(std::string_view s) {
    assign(s);
    return *this;
  }
  InlineId& operator=(const std::string& s) { return *this = std::string_view(s); }
  InlineId& operator=(const char* s) { return *this = std::string_view(s); }

  void assign(std::string_view s) {
    if (s.size() <= kInline) {
      std::memmove(inline_, s.data(), s.size());  // `s` may be this id itself
      heap_.reset();
    } else {
      // `s` may point into this id's own heap block: copied before that block goes.
      auto block = std::make_unique<char[]>(s.size());
      std::memcpy(block.get(), s.data(), s.size());
      heap_ = std::move(block);
    }
    size_ = static_cast<std::uint32_t>(s.size());
  }

  const char* data() const { return heap_ ? heap_.get() : inline_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const { return {data(), size_}; }
  operator std::string_view() const { return view(); }  // NOLINT(google-explicit-constructor)
  std::string str() const { return std::string(view()); }

  friend bool operator==(const InlineId& a, const InlineId& b) { return a.view() == b.view(); }
  friend bool operator==(const InlineId& a, std::string_view b) { return a.view() == b; }
  // Exact matches, so that a string or a literal picks neither conversion over the other.
  friend bool operator==(const InlineId& a, const std::string& b) { return a.view() == b; }
  friend bool operator==(const InlineId& a, const char* b) { return a.view() == b; }

 private:
  // The whole inline room is copied (a fixed size: a few moves, no call); its bytes past size_
  // are zero from the start, never uninitialised.
  void take(InlineId& other) {
    std::memcpy(inline_, other.inline_, kInline);
    heap_ = std::move(other.heap_);
    size_ = other.size_;
    other.size_ = 0;
  }

  std::uint32_t size_ = 0;
  char inline_[kInline] = {};
  std::unique_ptr<char[]> heap_;  // ids longer than kInline
};

}  // namespace bw
