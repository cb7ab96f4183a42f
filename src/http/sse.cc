#include "http/sse.h"

namespace bw::http {

bool SseSplitter::feed(std::string_view bytes) {
  buf_.append(bytes);
  return buf_.size() - pos_ <= max_;
}

bool SseSplitter::next(std::string_view& event) {
  std::string_view rest = std::string_view(buf_).substr(pos_);
  std::size_t end = std::string_view::npos;
  std::size_t lf = rest.find("\n\n");
  std::size_t crlf = rest.find("\r\n\r\n");
  if (lf != std::string_view::npos) end = lf + 2;
  if (crlf != std::string_view::npos &&
      crlf + 4 < (end == std::string_view::npos ? ~0ul : end + 2)) {
    if (end == std::string_view::npos || crlf < lf) end = crlf + 4;
  }
  if (end == std::string_view::npos) return false;
  event = rest.substr(0, end);
  pos_ += end;
  return true;
}

void SseSplitter::compact() {
  if (pos_ == 0) return;
  buf_.erase(0, pos_);
  pos_ = 0;
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
