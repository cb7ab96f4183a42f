#include "http/sse.h"

#include <cstring>

#include "common/same_text.h"

namespace bw::http {

bool SseSplitter::feed(std::string_view bytes) {
  buf_.append(bytes);
  return buf_.size() - pos_ <= max_;
}

bool SseSplitter::next(std::string_view& event) {
  std::string_view rest = std::string_view(buf_).substr(pos_);
  const std::size_t before = rest.size();
  if (!next_event(rest, event)) return false;
  pos_ += before - rest.size();
  return true;
}

void SseSplitter::compact() {
  if (pos_ == 0) return;
  buf_.erase(0, pos_);
  pos_ = 0;
}

std::string_view SseSplitter::window(std::string_view bytes) {
  compact();
  if (buf_.empty()) return bytes;
  buf_.append(bytes);
  return buf_;
}

bool SseSplitter::keep(std::string_view window, std::size_t consumed) {
  pos_ = 0;
  if (!buf_.empty() && window.data() == buf_.data()) {
    buf_.erase(0, consumed);
  } else {
    buf_.assign(window.substr(consumed));
  }
  return buf_.size() <= max_;
}

namespace {

// next_event, which also gives where the event's first line ends (its first '\n').
bool next_event_at(std::string_view& rest, std::string_view& event, std::size_t& first_newline) {
  // One pass: the first blank line, "\n\n" or "\r\n\r\n", whichever ends first.
  const char* p = rest.data();
  const std::size_t n = rest.size();
  std::size_t i = 0;
  first_newline = std::string_view::npos;
  while (i + 1 < n) {
    const void* hit = std::memchr(p + i, '\n', n - i - 1);
    if (!hit) break;
    i = static_cast<std::size_t>(static_cast<const char*>(hit) - p);
    if (first_newline == std::string_view::npos) first_newline = i;
    std::size_t end = 0;
    if (p[i + 1] == '\n') {
      end = i + 2;
    } else if (i >= 1 && p[i - 1] == '\r' && p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n') {
      end = i + 3;
    }
    if (end != 0) {
      event = rest.substr(0, end);
      rest.remove_prefix(end);
      return true;
    }
    ++i;
  }
  return false;
}

}  // namespace

bool next_event(std::string_view& rest, std::string_view& event) {
  std::size_t first_newline = 0;
  return next_event_at(rest, event, first_newline);
}

bool next_event_data(std::string_view& rest, std::string_view& event, std::string_view& data,
                     std::string& scratch) {
  std::size_t nl = 0;
  if (!next_event_at(rest, event, nl)) return false;
  // The usual event, one line and the blank line: its line is known without a second search.
  if (nl + 2 == event.size()) {
    std::string_view line = event.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() < 5 || !same_text(line.substr(0, 5), "data:")) {
      data = {};
      return true;
    }
    line.remove_prefix(5);
    if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    data = line;
    return true;
  }
  data = sse_data(event, scratch);
  return true;
}

std::string_view sse_data(std::string_view event, std::string& scratch) {
  std::string_view single;
  int count = 0;
  scratch.clear();
  while (!event.empty()) {
    auto nl = event.find('\n');
    std::string_view line = event.substr(0, nl);
    event = nl == std::string_view::npos ? std::string_view{} : event.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.starts_with("data:")) continue;
    line.remove_prefix(5);
    if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (count == 0) {
      single = line;
    } else {
      if (count == 1) scratch.assign(single);
      scratch.push_back('\n');
      scratch.append(line);
    }
    ++count;
  }
  return count > 1 ? std::string_view(scratch) : single;
}

}  // namespace bw::http
