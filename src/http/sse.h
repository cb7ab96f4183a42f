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

  // Without copying what passes through: window() is what is pending followed by one new read,
  // which is the read itself (no copy) when nothing is pending; walk its events with next_event()
  // and hand back how far they went with keep(). The view is valid until keep() and as long as
  // `bytes` is.
  std::string_view window(std::string_view bytes);
  // Keeps window[consumed..] (an unfinished event) for the next read; false if that exceeds
  // the bound.
  bool keep(std::string_view window, std::size_t consumed);

 private:
  std::string buf_;
  std::size_t pos_ = 0;
  std::size_t max_;
};

// Takes the next complete event (with its terminating blank line, "\n\n" or "\r\n\r\n") off the
// front of `rest`; false if `rest` holds none.
bool next_event(std::string_view& rest, std::string_view& event);

// The payload of the `data:` lines of one event (joined with '\n'), without the prefix.
std::string_view sse_data(std::string_view event, std::string& scratch);

// next_event, and `data` = sse_data(event, scratch) found in the same pass for an event of one
// line (the usual "data: {...}\n\n").
bool next_event_data(std::string_view& rest, std::string_view& event, std::string_view& data,
                     std::string& scratch);

}  // namespace bw::http
