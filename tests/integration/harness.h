#pragma once
// Test harness for whole-process tests: free ports, child processes, temp files, and a raw HTTP
// client over POSIX sockets (so tests can send malformed bytes and watch chunks arrive).
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace bw::test {

std::string binary();  // path of the bellwether binary under test
int free_port();
bool wait_for_port(int port, std::chrono::milliseconds timeout = std::chrono::seconds(10));
std::string temp_dir();  // a fresh directory, removed at exit if every test passed
void write_file(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);
// Runs `cmd` through the shell; its standard output without the trailing line breaks.
std::string shell_output(const std::string& cmd);
// The sqlite3 shell's output (errors included) for `sql` on the database file `db`.
std::string sqlite(const std::string& db, const std::string& sql);

class Process {
 public:
  Process() = default;
  Process(std::vector<std::string> args, std::map<std::string, std::string> env = {},
          std::string log_prefix = {});
  ~Process();
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;
  pid_t pid() const { return pid_; }
  void signal(int sig);
  // Waits for exit; returns the exit status (or 128+signal), -1 on timeout.
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  bool running();
  std::string stdout_text() const { return read_file(out_); }
  std::string stderr_text() const { return read_file(err_); }
  const std::string& stdout_path() const { return out_; }

 private:
  void kill_and_reap();
  pid_t pid_ = -1;
  int status_ = -1;
  std::string out_, err_;
};

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
  std::string head;     // the head's bytes as received, its blank line included
  bool closed = false;  // the server closed the connection after it
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// Sends raw bytes and reads one response (or until close/timeout).
HttpResponse raw_request(int port, const std::string& bytes,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10));
HttpResponse request(int port, const std::string& method, const std::string& path,
                     const std::string& body = {},
                     const std::vector<std::pair<std::string, std::string>>& headers = {},
                     std::chrono::milliseconds timeout = std::chrono::seconds(10));
HttpResponse post_json(int port, const std::string& path, const std::string& body,
                       const std::string& key,
                       const std::vector<std::pair<std::string, std::string>>& extra = {});
// An admin API call with `admin_key` as its bearer token; a non-empty body is sent as JSON.
HttpResponse admin_request(int port, const std::string& admin_key, const std::string& method,
                           const std::string& path, const std::string& body = {});

// A streaming read: each element is (ms since send, bytes received in that read).
struct TimedChunk {
  double at_ms;
  std::string data;
};
class StreamReader {
 public:
  StreamReader(int port, const std::string& bytes);
  ~StreamReader();
  // Reads whatever arrives next; false on close or timeout.
  bool read_some(TimedChunk& out, std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void close();

 private:
  int fd_ = -1;
  std::chrono::steady_clock::time_point start_;
};

std::string chat_body(const std::string& model, bool stream, int max_tokens = 0,
                      const std::string& content = "Hello there");
// Builds the raw bytes of a POST with a JSON body.
std::string raw_post(const std::string& path, const std::string& body, const std::string& key,
                     const std::vector<std::pair<std::string, std::string>>& extra = {});

// Counts occurrences of a substring.
std::size_t count(const std::string& hay, const std::string& needle);

// The value of one series in Prometheus text (`name` or `name{label="v"}`, exactly as exposed);
// NaN when the series is missing.
double metric(const std::string& text, const std::string& series);

// Sends `n` requests at once: `call(i)` on n threads released together; the answers in order.
std::vector<HttpResponse> at_once(int n, const std::function<HttpResponse(int)>& call);

// JSON reading for assertions, without a parser: the innermost object around the first
// occurrence of `needle` (no nested braces inside it), and the number after `"field":` (NaN when
// there is none).
std::string object_with(const std::string& body, const std::string& needle);
double num(const std::string& obj, const std::string& field);

// The access-log line of the request whose id (X-Request-Id) is `request_id`, once the gateway
// has written it; "" when it is not written within `timeout`.
std::string access_log_line(const std::string& path, const std::string& request_id,
                            std::chrono::milliseconds timeout = std::chrono::seconds(20));

// The /admin/budgets entry of budget `id` (empty when it has none or the call fails).
std::string budget_entry(int port, const std::string& admin_key, const std::string& id);

// Starts `bellwether sim` with the given YAML; returns its port.
struct Sim {
  Process proc;
  int port = 0;
};
Sim start_sim(const std::string& yaml);
// Starts `bellwether serve` with the given YAML (which must contain "listen: 127.0.0.1:PORT").
struct Gw {
  Process proc;
  int port = 0;
  std::string config_path;
  std::string access_log;
};
// `args` are added to the serve command line.
Gw start_gateway(const std::string& yaml_without_listen,
                 std::map<std::string, std::string> env = {}, std::vector<std::string> args = {});

}  // namespace bw::test
