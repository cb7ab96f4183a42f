#pragma once
// Incremental Server-Sent Events framing: bytes in, complete events out. Events end at a blank
// line ("\n\n" or "\r\n\r\n"). A bounded buffer guards against an upstream that never ends one.
// Thread safety: a value type, one per stream.
#include <string>
#include <string_view>

namespace bw::http {

class SseSplitter {
 public:
  explicit SseSplitter(std::size_t max_event_bytes = 1 << 20) : max_(max_event_bytes) {}
  // Appends bytes; returns false if an unfinished event exceeds the bound.
  bool feed(std::string_view bytes);
  // Yields the next complete event (including its terminating blank line) or false.
  bool next(std::string_view& event);
  // Drops consumed bytes; call after processing the events of one feed.
  void compact();
  std::string_view pending() const { return std::string_view(buf_).substr(pos_); }

 private:
  std::string buf_;
  std::size_t pos_ = 0;
  std::size_t max_;
};

// The payload of the `data:` lines of one event (joined with '\n'), without the prefix.
std::string_view sse_data(std::string_view event, std::string& scratch);

}  // namespace bw::http
