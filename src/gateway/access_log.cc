#include "gateway/access_log.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>

#include "common/clock.h"
#include "common/json_util.h"

namespace bw::gateway {

// A thread's lines: bytes [tail, head) of a ring of mask + 1 bytes (positions grow without
// bound; a byte's place is its position & mask). The thread that owns it writes the bytes and
// then publishes head; the log's reader writes them out and then publishes tail. When the reader
// has taken every byte, the owner's next line moves both to the start of the next lap.
struct AccessLog::Ring {
  explicit Ring(std::size_t bytes)
      : data(std::make_unique_for_overwrite<char[]>(bytes)), mask(bytes - 1) {}
  // Untouched until written: no memory for an idle log, and a busy one touches about as much as
  // piles up between two of the writer's batches.
  const std::unique_ptr<char[]> data;
  const std::size_t mask;
  alignas(64) std::atomic<std::uint64_t> head{0};
  alignas(64) std::atomic<std::uint64_t> tail{0};
  // A thread writes into it; false once that thread has ended or logs elsewhere, and then the
  // next thread that starts logging takes it (under the log's mutex).
  std::atomic<bool> owned{true};
};

namespace {

std::atomic<std::uint64_t> next_log_id{1};
constexpr std::size_t kMinRingBytes = 64 * 1024;

// The ring a thread writes into, and the log it belongs to. Shared with the log, so that
// either may end first.
struct RingMemo {
  std::uint64_t log = 0;
  std::shared_ptr<AccessLog::Ring> ring;
  RingMemo() = default;
  RingMemo(const RingMemo&) = delete;
  RingMemo& operator=(const RingMemo&) = delete;
  ~RingMemo() {
    if (ring) ring->owned.store(false, std::memory_order_release);
  }
};
thread_local RingMemo ring_memo;

// The same ring and log as plain values, for the line's fast path: a trivial thread_local is
// read without the guard call of one with a destructor.
struct RingCache {
  std::uint64_t log = 0;
  AccessLog::Ring* ring = nullptr;
};
thread_local constinit RingCache ring_cache;

}  // namespace

AccessLog::AccessLog(const std::string& path, std::size_t max_buffer_bytes)
    : ring_bytes_(std::max(kMinRingBytes, std::bit_floor(max_buffer_bytes / 4))),
      wake_bytes_(std::min(kWakeBytes, ring_bytes_ / 4)),
      id_(next_log_id.fetch_add(1, std::memory_order_relaxed)) {
  if (path == "off") return;
  if (path == "-" || path.empty()) {
    out_ = stdout;
  } else {
    out_ = std::fopen(path.c_str(), "a");
    owns_ = out_ != nullptr;
    // The writer hands whole runs of lines to fwrite: through stdio's 4 KiB buffer a run became
    // three write calls (the buffer's rest, the whole blocks, the tail at the fflush), unbuffered
    // it is one.
    if (owns_) std::setvbuf(out_, nullptr, _IONBF, 0);
    if (owns_) fd_ = ::fileno(out_);
  }
  if (out_) {
    writer_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "bw-access-log");
      run();
    });
  }
}

AccessLog::~AccessLog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (owns_) std::fclose(out_);
}

namespace {

// The line is written with a cursor into room made beforehand (`bound`): every field name is
// one fixed-size copy of its literal (write_literal), with its comma and colon, and no append
// checks capacity.

char* put_bool(char* p, bool v) {
  return v ? write_literal(p, "true") : write_literal(p, "false");
}

}  // namespace

namespace {

// The six digits of u < 10^6, with its leading zeros, in digits[0, 6): in 32 bits, two
// divisions by constants (multiplications) and their remainders.
void six_digits(char* digits, std::uint64_t v) {
  static constexpr char kPairs[] =
      "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
      "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
      "8081828384858687888990919293949596979899";
  const auto u = static_cast<std::uint32_t>(v);
  const std::uint32_t high = u / 10'000;
  const std::uint32_t low = u - high * 10'000;
  const std::uint32_t mid = low / 100;
  std::memcpy(digits, kPairs + high * 2, 2);
  std::memcpy(digits + 2, kPairs + mid * 2, 2);
  std::memcpy(digits + 4, kPairs + (low - mid * 100) * 2, 2);
}

// "0." and the six digits of a fraction that is not zero, without its trailing zeros.
char* write_fraction(char* p, const char* digits) {
  std::memcpy(p, "0.", 2);
  std::memcpy(p + 2, digits, 6);
  char* end = p + 8;
  while (end[-1] == '0') --end;
  return end;
}

}  // namespace

char* write_usd(char* p, std::int64_t micro) {
  if (micro == 0) {
    *p = '0';
    return p + 1;
  }
  if (micro < 0 || micro >= 1'000'000) return write_decimal(p, micro, 6);
  char digits[8] = {};
  six_digits(digits, static_cast<std::uint64_t>(micro));
  return write_fraction(p, digits);
}

char* write_ms(char* p, std::int64_t ns) {
  if (ns == 0) {  // a request that did not wait
    *p = '0';
    return p + 1;
  }
  constexpr std::int64_t kFast = 1'000'000'000'000'000;  // 11.6 days
  if (ns < 0 || ns >= kFast) return write_decimal(p, ns, 6, 6);
  static constexpr std::uint64_t kPow10[] = {1,
                                             10,
                                             100,
                                             1'000,
                                             10'000,
                                             100'000,
                                             1'000'000,
                                             10'000'000,
                                             100'000'000,
                                             1'000'000'000,
                                             10'000'000'000,
                                             100'000'000'000,
                                             1'000'000'000'000,
                                             10'000'000'000'000,
                                             100'000'000'000'000,
                                             1'000'000'000'000'000};
  // The six significant digits of the milliseconds, and how many of them (`whole`) come before
  // the point: below a millisecond the nanoseconds themselves (no rounding) after "0."; else
  // the nanoseconds rounded to six digits, `whole` being the digits dropped.
  auto u = static_cast<std::uint64_t>(ns);
  int whole = 0;
  if (u >= kPow10[6]) {
    whole = 1;
    while (u >= kPow10[whole + 6]) ++whole;
    const std::uint64_t q = kPow10[whole];
    std::uint64_t t = u / q;
    const std::uint64_t r = u - t * q;
    if (r > q / 2 || (r == q / 2 && (t & 1) != 0)) ++t;
    if (t == kPow10[6]) {  // rounded up to a seventh digit
      t = kPow10[5];
      ++whole;
    }
    u = t;
  }
  char digits[16] = {};
  six_digits(digits, u);
  if (whole >= 6) {  // a whole number of milliseconds: the digits, then zeros
    std::memcpy(p, digits, 6);
    p += 6;
    for (int i = 6; i < whole; ++i) *p++ = '0';
    return p;
  }
  if (whole == 0) return write_fraction(p, digits);
  // The point after the first `whole` digits (1-5): the digits, the rest of them again one
  // place on, and the point between. Fixed-size copies: up to p + 14.
  std::memcpy(p, digits, 8);
  std::memcpy(p + whole + 1, digits + whole, 8);
  p[whole] = '.';
  char* end = p + 7;
  while (end[-1] == '0') --end;
  if (end[-1] == '.') --end;
  return end;
}

char* write_unix_ms(char* p, std::int64_t ms) {
  if (ms < 1000) return write_int(p, ms);
  // The same digits as write_int(ms): the second's, then the millisecond's three with their
  // zeros. The second is written once per second per thread and then copied.
  struct SecondText {
    std::int64_t second = -1;
    std::size_t size = 0;
    char text[20];  // the seconds of a positive int64 take at most 16 digits
  };
  thread_local SecondText kept;
  const std::int64_t second = ms / 1000;
  const auto milli = static_cast<unsigned>(ms - second * 1000);
  if (second != kept.second) {
    kept.size = static_cast<std::size_t>(write_int(kept.text, second) - kept.text);
    kept.second = second;
  }
  std::memcpy(p, kept.text, sizeof kept.text);  // one fixed-size copy; the tail is overwritten
  p += kept.size;
  p[0] = static_cast<char>('0' + milli / 100);
  p[1] = static_cast<char>('0' + milli / 10 % 10);
  p[2] = static_cast<char>('0' + milli % 10);
  return p + 3;
}

namespace {

// An HTTP status, three digits (100-999) written at once; any other value as write_int writes it.
char* put_status(char* p, int status) {
  if (static_cast<unsigned>(status) - 100u >= 900u) return write_int(p, status);
  const auto s = static_cast<unsigned>(status);
  p[0] = static_cast<char>('0' + s / 100);
  p[1] = static_cast<char>('0' + s / 10 % 10);
  p[2] = static_cast<char>('0' + s % 10);
  return p + 3;
}

// A count that is usually one digit (attempts, a priority) written inline; any other as
// write_int writes it.
char* put_count(char* p, std::int64_t v) {
  if (static_cast<std::uint64_t>(v) >= 10) return write_int(p, v);
  *p = static_cast<char>('0' + v);
  return p + 1;
}

// Room for every field name, separator and number of the longest line; the strings are added
// per record.
constexpr std::size_t kFixedBound = 2048;

// The fields from "key_id" to "upstream" (the key, the client's address, the route, the model
// asked for, the model and the deployment that answered) are mostly the same from one line to
// the next: their text is kept per thread with the values it was written for, and copied while
// the values are the same (no escape check, one copy for the seven fields). The values are
// compared as bytes, never as pointers: a request's method and path lie in a connection buffer
// that the next request reuses.
struct RouteFields {
  static constexpr std::size_t kFields = 7;
  // Values longer in all are written every time (and not kept).
  static constexpr std::size_t kMaxValues = 320;
  // The field names with their commas and colons (83 bytes), the values' text and quotes.
  static constexpr std::size_t kMaxText = 96 + json_string_max_size(kMaxValues) + 2 * kFields;
  std::size_t text_size = 0;  // 0: nothing kept
  std::uint32_t size[kFields];
  char values[kMaxValues];
  char text[kMaxText];
};

char* write_route_fields(char* p, const std::string_view (&v)[RouteFields::kFields]) {
  p = write_literal(p, ",\"key_id\":");
  p = write_json_string(p, v[0]);
  p = write_literal(p, ",\"client_ip\":");
  p = write_json_string(p, v[1]);
  p = write_literal(p, ",\"method\":");
  p = write_json_string(p, v[2]);
  p = write_literal(p, ",\"path\":");
  p = write_json_string(p, v[3]);
  p = write_literal(p, ",\"model\":");
  p = write_json_string(p, v[4]);
  p = write_literal(p, ",\"model_served\":");
  p = write_json_string(p, v[5]);
  p = write_literal(p, ",\"upstream\":");
  return write_json_string(p, v[6]);
}

// a[0, n) == b[0, n) for the short values of a line, inline: a few word loads rather than a
// memcmp call each.
bool same_bytes(const char* a, const char* b, std::size_t n) {
  std::uint64_t x, y;
  if (n >= 8) {
    for (std::size_t i = 0; i + 8 <= n; i += 8) {
      std::memcpy(&x, a + i, 8);
      std::memcpy(&y, b + i, 8);
      if (x != y) return false;
    }
    std::memcpy(&x, a + n - 8, 8);  // the last 0-7 bytes: the last word, overlapping
    std::memcpy(&y, b + n - 8, 8);
    return x == y;
  }
  if (n >= 4) {
    std::uint32_t a0, a1, b0, b1;
    std::memcpy(&a0, a, 4);
    std::memcpy(&a1, a + n - 4, 4);
    std::memcpy(&b0, b, 4);
    std::memcpy(&b1, b + n - 4, 4);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

char* put_route_fields(char* p, const std::string_view (&v)[RouteFields::kFields]) {
  thread_local RouteFields kept;
  constexpr std::size_t n = RouteFields::kFields;
  bool same = kept.text_size != 0;
  for (std::size_t i = 0; i < n && same; ++i) same = kept.size[i] == v[i].size();
  if (same) {
    const char* at = kept.values;
    for (std::size_t i = 0; i < n && same; ++i) {
      same = same_bytes(at, v[i].data(), v[i].size());
      at += v[i].size();
    }
    if (same) {
      std::memcpy(p, kept.text, kept.text_size);
      return p + kept.text_size;
    }
  }
  char* const end = write_route_fields(p, v);
  std::size_t total = 0;
  for (std::string_view s : v) total += s.size();
  kept.text_size = 0;
  if (total <= RouteFields::kMaxValues) {
    char* at = kept.values;
    for (std::size_t i = 0; i < n; ++i) {
      kept.size[i] = static_cast<std::uint32_t>(v[i].size());
      if (!v[i].empty()) std::memcpy(at, v[i].data(), v[i].size());
      at += v[i].size();
    }
    kept.text_size = static_cast<std::size_t>(end - p);
    std::memcpy(kept.text, p, kept.text_size);
  }
  return end;
}

}  // namespace

void AccessLog::log(const AccessRecord& r) {
  if (!out_) return;
  // The line's time stamp: the wall clock's reading for this turn of the thread's loop.
  const std::int64_t now_ms = SteadyClock::instance().turn_unix_millis();
  // Every string's json_string_max_size, from the sum of their sizes (no list of them built).
  constexpr std::size_t kStrings = 13;
  const std::size_t bytes =
      r.request_id.size() + r.key_id.size() + r.client_ip.size() + r.method.size() + r.path.size() +
      r.model_requested.size() + r.model_served.size() + r.upstream.size() + r.wait_reason.size() +
      r.cache.size() + r.error_code.size() + r.trace_id.size() + r.span_id.size();
  const std::size_t bound =
      kFixedBound + json_string_max_size(bytes) + (kStrings - 1) * json_string_max_size(0);
  // Written in place in this thread's ring when the room after its head is contiguous;
  // otherwise (the ring wraps there, or is nearly full) into a per-thread scratch buffer that
  // keeps its size, and copied in if it fits.
  Ring& ring = ring_cache.log == id_ ? *ring_cache.ring : this->ring();
  std::uint64_t head = ring.head.load(std::memory_order_relaxed);
  std::uint64_t tail = ring.tail.load(std::memory_order_acquire);
  if (tail == head && (head & ring.mask) != 0) {
    // The writer has taken every line: this one starts the buffer again, so that the lines
    // between two writes stay in the few kilobytes written last (still in the cache) instead of
    // walking the whole buffer. The writer's tail moves with it (a compare and swap: the writer
    // stores its tail only while lines are pending, and none is).
    const std::uint64_t start = (head | ring.mask) + 1;
    if (ring.tail.compare_exchange_strong(tail, start, std::memory_order_acquire)) {
      head = start;
      tail = start;
    }
  }
  const std::uint64_t used = head - tail;
  const std::size_t room = ring.mask + 1 - used;
  const std::size_t at = head & ring.mask;
  const bool in_place = room >= bound && ring.mask + 1 - at >= bound;
  char* begin;
  if (in_place) {
    begin = ring.data.get() + at;
  } else {
    thread_local std::string line;
    if (line.size() < bound) line.resize(bound);
    begin = line.data();
  }
  char* p = begin;
  p = write_literal(p, "{\"ts_ms\":");
  p = write_unix_ms(p, static_cast<std::int64_t>(now_ms));
  p = write_literal(p, ",\"request_id\":");
  p = write_json_string(p, r.request_id);
  {
    const std::string_view route[] = {r.key_id,          r.client_ip,    r.method,  r.path,
                                      r.model_requested, r.model_served, r.upstream};
    p = put_route_fields(p, route);
  }
  p = write_literal(p, ",\"status\":");
  p = put_status(p, r.status);
  p = write_literal(p, ",\"stream\":");
  p = put_bool(p, r.stream);
  p = write_literal(p, ",\"latency_ms\":");
  p = write_ms(p, r.latency_ns);
  if (r.ttft_ns >= 0) {
    p = write_literal(p, ",\"ttft_ms\":");
    p = write_ms(p, r.ttft_ns);
  }
  p = write_literal(p, ",\"queue_ms\":");
  p = write_ms(p, r.queue_ns);
  if (!r.wait_reason.empty()) {
    p = write_literal(p, ",\"wait_reason\":");
    p = write_json_string(p, r.wait_reason);
  }
  p = write_literal(p, ",\"prompt_tokens\":");
  p = write_int(p, r.prompt_tokens);
  p = write_literal(p, ",\"completion_tokens\":");
  p = write_int(p, r.completion_tokens);
  p = write_literal(p, ",\"cost_usd\":");
  p = write_usd(p, r.cost_micro_usd);
  p = write_literal(p, ",\"attempts\":");
  p = put_count(p, r.attempts);
  p = write_literal(p, ",\"bytes_in\":");
  p = write_uint(p, r.bytes_in);
  p = write_literal(p, ",\"bytes_out\":");
  p = write_uint(p, r.bytes_out);
  if (!r.cache.empty()) {
    p = write_literal(p, ",\"cache\":");
    p = write_json_string(p, r.cache);
  }
  if (r.cache_age_s >= 0) {
    p = write_literal(p, ",\"cache_age_s\":");
    p = write_int(p, r.cache_age_s);
  }
  if (r.cache_saved_micro_usd > 0) {
    p = write_literal(p, ",\"cache_saved_usd\":");
    p = write_usd(p, r.cache_saved_micro_usd);
  }
  if (r.cache_similarity >= 0) {
    p = write_literal(p, ",\"cache_similarity\":");
    p = write_double(p, r.cache_similarity);
  }
  if (r.cached_tokens > 0) {
    p = write_literal(p, ",\"cached_tokens\":");
    p = write_int(p, r.cached_tokens);
  }
  if (r.priority >= 0) {
    p = write_literal(p, ",\"priority\":");
    p = put_count(p, r.priority);
  }
  if (r.priority_lowered) p = write_literal(p, ",\"priority_lowered\":true");
  if (r.cancelled) p = write_literal(p, ",\"cancelled\":true");
  if (!r.error_code.empty()) {
    p = write_literal(p, ",\"error\":");
    p = write_json_string(p, r.error_code);
  }
  if (!r.trace_id.empty()) {
    p = write_literal(p, ",\"trace_id\":");
    p = write_json_string(p, r.trace_id);
  }
  if (!r.span_id.empty()) {
    p = write_literal(p, ",\"span_id\":");
    p = write_json_string(p, r.span_id);
  }
  p = write_literal(p, "}\n");
  const auto size = static_cast<std::size_t>(p - begin);
  if (!in_place) {
    if (size > room) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const std::size_t first = std::min(size, ring.mask + 1 - at);
    std::memcpy(ring.data.get() + at, begin, first);
    std::memcpy(ring.data.get(), begin + first, size - first);
  }
  ring.head.store(head + size, std::memory_order_release);
  // The writer wakes by itself every kFlushInterval; it is woken early only once enough has
  // piled up, so a busy gateway does not pay a futex wake (and a writer context switch) per
  // line. The mutex taken once between setting the flag and the notification: the writer has
  // either seen the flag or is waiting, so the wake is not lost.
  if (used + size >= wake_bytes_ && !wake_sent_.load(std::memory_order_relaxed) &&
      !wake_sent_.exchange(true, std::memory_order_relaxed)) {
    { std::lock_guard lock(mu_); }
    cv_.notify_one();
  }
}

AccessLog::Ring& AccessLog::ring() {
  RingMemo& memo = ring_memo;
  if (memo.log == id_) return *memo.ring;
  if (memo.ring) memo.ring->owned.store(false, std::memory_order_release);
  std::shared_ptr<Ring> r;
  {
    std::lock_guard lock(mu_);
    for (const auto& free : rings_) {
      // Acquire: the bytes its last thread wrote, and its head, are seen before it is taken.
      if (!free->owned.load(std::memory_order_acquire)) {
        free->owned.store(true, std::memory_order_relaxed);
        r = free;
        break;
      }
    }
    if (!r) r = rings_.emplace_back(std::make_shared<Ring>(ring_bytes_));
  }
  memo.ring = std::move(r);
  memo.log = id_;
  ring_cache = RingCache{id_, memo.ring.get()};
  return *memo.ring;
}

std::size_t AccessLog::buffer_offset() {
  const Ring& r = ring();
  return r.head.load(std::memory_order_relaxed) & r.mask;
}

std::size_t AccessLog::buffers() {
  std::lock_guard lock(mu_);
  return rings_.size();
}

void AccessLog::drain() {
  bool wrote = false;
  for (std::size_t i = 0;; ++i) {
    Ring* r;
    {
      std::lock_guard lock(mu_);
      if (i >= rings_.size()) break;
      r = rings_[i].get();
    }
    // The head first: a line that restarted the buffer moved the tail before its head was
    // published, so the tail read after that head is the moved one. A head read before that
    // publication can still meet the moved tail, ahead of it: the line is not there yet, and
    // nothing is taken (a length from those two would wrap, and the tail stored after it would
    // go back to the old lap).
    const std::uint64_t head = r->head.load(std::memory_order_acquire);
    const std::uint64_t tail = r->tail.load(std::memory_order_relaxed);
    if (head == tail || static_cast<std::int64_t>(head - tail) < 0) continue;
    const std::size_t at = tail & r->mask;
    const auto size = static_cast<std::size_t>(head - tail);
    const std::size_t first = std::min(size, r->mask + 1 - at);
    reserve(size);
    std::fwrite(r->data.get() + at, 1, first, out_);
    if (size > first) std::fwrite(r->data.get(), 1, size - first, out_);
    // fwrite has taken the bytes: the ring may reuse them.
    r->tail.store(head, std::memory_order_release);
    wrote = true;
  }
  if (wrote) std::fflush(out_);
}

void AccessLog::reserve(std::size_t bytes) {
  if (fd_ < 0) return;
  if (bytes <= reserved_) {
    reserved_ -= bytes;
    return;
  }
  // From the file's end as it is now (another process may have appended or truncated it).
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode) ||
      ::fallocate(fd_, FALLOC_FL_KEEP_SIZE, st.st_size,
                  static_cast<off_t>(kReserveBytes + bytes)) != 0) {
    fd_ = -1;
    return;
  }
  reserved_ = kReserveBytes;
}

void AccessLog::flush() {
  if (!out_) return;
  std::lock_guard lock(drain_mu_);
  drain();
  std::fflush(out_);
}

void AccessLog::run() {
  for (;;) {
    bool stop;
    {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, kFlushInterval,
                   [&] { return stop_ || wake_sent_.load(std::memory_order_relaxed); });
      wake_sent_.store(false, std::memory_order_relaxed);
      stop = stop_;
    }
    std::lock_guard lock(drain_mu_);
    drain();
    if (stop) break;
  }
  std::fflush(out_);
}

}  // namespace bw::gateway
