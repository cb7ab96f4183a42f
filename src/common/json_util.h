#pragma once
// Small JSON writing helpers: escaping and an append-only writer. Parsing uses simdjson.
// Thread safety: pure functions; JsonWriter is a value type.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace bw {

// Appends `s` as a JSON string literal (with quotes), escaping per RFC 8259.
void append_json_string(std::string& out, std::string_view s);
std::string json_string(std::string_view s);

// The most bytes append_json_string / write_json_string produce for `n` bytes of input (a
// control byte becomes "\u00XX").
constexpr std::size_t json_string_max_size(std::size_t n) {
  return 6 * n + 2;
}
// append_json_string into memory the caller has made room in (json_string_max_size bytes):
// writes at `p` and returns the end, for a caller that builds a whole line without appends.
char* write_json_string(char* p, std::string_view s);

// Decimal text of an integer at `p` (room for 20 bytes); returns the end. What std::to_chars
// writes, two digits per step from a table and the length from the bit width, in about half its
// instructions (a request writes a dozen such numbers into headers and its log line).
char* write_uint(char* p, std::uint64_t v);
char* write_int(char* p, std::int64_t v);

// A JSON number for units / 10^scale (scale 0..18), written at `p` (room for kDecimalMaxSize
// bytes); returns the end. Exact decimal text from integers: no exponent, no trailing zeros in
// the fraction ("0.0015" for 1500 at scale 6, "12" for 12000 at scale 3, "-0.5" for -5 at
// scale 1). With `significant` > 0 the value is first rounded to that many significant digits
// (half to even), as printf's "%.<significant>g" rounds, but still without an exponent.
inline constexpr std::size_t kDecimalMaxSize = 24;
char* write_decimal(char* p, std::int64_t units, int scale, int significant = 0);

// A double as printf("%.6g") writes it (the standard defines to_chars that way), or null when
// it is not finite, at `p` (room for kDoubleMaxSize bytes); returns the end. For log lines
// (durations at six significant digits), not for values a reader must get back.
inline constexpr std::size_t kDoubleMaxSize = 32;
char* write_double(char* p, double v);
// A double with as many significant digits as reading it back to the same double needs, at
// least six, in printf("%g")'s notation ("1234.56789", "0.1", "100000", "1e-07"); null when it
// is not finite. What JsonWriter::value(double) writes: an amount of money, a sampling
// parameter or a ratio survives the trip through JSON unchanged.
char* write_double_round_trip(char* p, double v);

// Copies a string literal (without its terminating NUL) to `p` in one fixed-size copy; returns
// the end. For a caller that writes a line of known field names into room it has made.
template <std::size_t N>
char* write_literal(char* p, const char (&s)[N]) {
  std::memcpy(p, s, N - 1);
  return p + N - 1;
}

// An OpenAI-style error body: {"error":{"message":...,"type":...,"param":...,"code":...}}.
// With a request id, the error object also carries it ("request_id"), so a client that logs the
// body can be matched with the gateway's access log and trace.
std::string openai_error_body(std::string_view message, std::string_view type,
                              std::string_view code, std::string_view param = {},
                              std::string_view request_id = {});

// Minimal streaming writer for flat and nested objects. The caller is responsible for structure.
class JsonWriter {
 public:
  JsonWriter() = default;
  // Writes into `buffer` (cleared), reusing its capacity; take() gives it back.
  explicit JsonWriter(std::string buffer) : out_(std::move(buffer)) { out_.clear(); }
  JsonWriter& begin_object();
  JsonWriter& end_object();
  JsonWriter& begin_array();
  JsonWriter& end_array();
  JsonWriter& key(std::string_view k);
  // key() for a name that needs no escaping (printable ASCII without '"' or '\\', e.g. a field
  // name literal): copied as it is, without the escaping scan.
  JsonWriter& plain_key(std::string_view k);
  JsonWriter& value(std::string_view v);
  JsonWriter& value(const char* v) { return value(std::string_view(v)); }
  JsonWriter& value(std::int64_t v);
  JsonWriter& value(std::uint64_t v);
  JsonWriter& value(int v) { return value(static_cast<std::int64_t>(v)); }
  JsonWriter& value(double v);  // write_double_round_trip
  JsonWriter& value(bool v);
  JsonWriter& null();
  JsonWriter& raw(std::string_view json);  // an already serialized value
  const std::string& str() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void comma();
  std::string out_;
  bool need_comma_ = false;
};

}  // namespace bw
