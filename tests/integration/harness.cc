#include "harness.h"

#include "support/free_port.h"
#include "support/temp_dir.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmath>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <latch>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace bw::test {

namespace fs = std::filesystem;

std::string binary() {
  if (const char* b = std::getenv("BELLWETHER_BIN")) return b;
  return BW_BINARY;
}

// Reserved for this test process (support/free_port.h): a port is handed out once, and never to
// two test processes that ctest runs at once.
int free_port() {
  return ::bw::testing::reserve_loopback_port();
}

static int connect_to(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool wait_for_port(int port, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int fd = connect_to(port);
    if (fd >= 0) {
      ::close(fd);
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

namespace {

std::mutex& dirs_mu() {
  static std::mutex mu;
  return mu;
}
std::vector<std::string>& created_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}

// At exit: the directories go when every test passed; after a failure they stay, with their
// logs, and the first of them is named. BW_KEEP_TEST_DIRS=1 keeps them always.
void remove_created_dirs() {
  std::lock_guard lock(dirs_mu());
  auto& dirs = created_dirs();
  if (dirs.empty()) return;
  const auto* unit = ::testing::UnitTest::GetInstance();
  const char* keep = std::getenv("BW_KEEP_TEST_DIRS");
  if ((keep && *keep && std::string(keep) != "0") || (unit && !unit->Passed())) {
    std::fprintf(stderr, "test directories kept (logs of the processes): %s and %zu more\n",
                 dirs.front().c_str(), dirs.size() - 1);
    return;
  }
  for (const auto& d : dirs) {
    std::error_code ec;
    fs::remove_all(d, ec);
  }
}

}  // namespace

std::string temp_dir() {
  const std::string base =
      bw::testing::make_unique_dir("bw-test-" + std::to_string(::getpid()) + "-");
  if (base.empty()) throw std::runtime_error("cannot create a test directory");
  std::lock_guard lock(dirs_mu());
  if (created_dirs().empty()) std::atexit(remove_created_dirs);
  created_dirs().push_back(base);
  return base;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string shell_output(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string sqlite(const std::string& db, const std::string& sql) {
  return shell_output("sqlite3 -batch -noheader '" + db + "' \"" + sql + "\" 2>&1");
}

Process::Process(std::vector<std::string> args, std::map<std::string, std::string> env,
                 std::string log_prefix) {
  auto dir = temp_dir();
  out_ = dir + "/" + log_prefix + "stdout.log";
  err_ = dir + "/" + log_prefix + "stderr.log";
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    ::setpgid(0, 0);
    // A test that crashes or is killed by its timeout takes its servers with it: no orphaned
    // gateway or simulator keeps a port, a file lock or memory after the run.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int o = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1);
    ::dup2(e, 2);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
}

Process::~Process() {
  kill_and_reap();
}

void Process::kill_and_reap() {
  if (pid_ > 0 && status_ < 0) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  pid_ = -1;
}

Process::Process(Process&& o) noexcept
    : pid_(o.pid_), status_(o.status_), out_(std::move(o.out_)), err_(std::move(o.err_)) {
  o.pid_ = -1;
}

Process& Process::operator=(Process&& o) noexcept {
  if (this != &o) {
    kill_and_reap();  // not the destructor: the members must stay alive to be assigned
    pid_ = o.pid_;
    status_ = o.status_;
    out_ = std::move(o.out_);
    err_ = std::move(o.err_);
    o.pid_ = -1;
  }
  return *this;
}

void Process::signal(int sig) {
  if (pid_ > 0 && status_ < 0) ::kill(pid_, sig);
}

bool Process::running() {
  if (pid_ <= 0 || status_ >= 0) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

int Process::wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return status_;
}

namespace {

bool send_all(int fd, const std::string& bytes) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

// Returns true when `buf` holds one complete response; fills `out`.
bool parse_complete(const std::string& buf, HttpResponse& out, bool eof) {
  auto head_end = buf.find("\r\n\r\n");
  if (head_end == std::string::npos) return false;
  out.head = buf.substr(0, head_end + 4);
  std::istringstream head(buf.substr(0, head_end));
  std::string line;
  std::getline(head, line);
  out.status = 0;
  if (line.size() >= 12) out.status = std::atoi(line.c_str() + 9);
  out.headers.clear();
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = line.substr(0, colon);
    for (auto& ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::string v = line.substr(colon + 1);
    while (!v.empty() && v.front() == ' ') v.erase(v.begin());
    out.headers[k] = v;
  }
  std::string rest = buf.substr(head_end + 4);
  if (out.status == 100) {
    return parse_complete(rest, out, eof);
  }
  if (out.header("transfer-encoding") == "chunked") {
    std::string body;
    std::size_t pos = 0;
    for (;;) {
      auto nl = rest.find("\r\n", pos);
      if (nl == std::string::npos) return false;
      std::size_t size = std::strtoul(rest.substr(pos, nl - pos).c_str(), nullptr, 16);
      if (size == 0) {
        out.body = body;
        return rest.find("\r\n\r\n", nl) != std::string::npos || eof;
      }
      if (rest.size() < nl + 2 + size + 2) return false;
      body += rest.substr(nl + 2, size);
      pos = nl + 2 + size + 2;
    }
  }
  if (!out.header("content-length").empty()) {
    std::size_t len = std::strtoul(out.header("content-length").c_str(), nullptr, 10);
    if (rest.size() < len) return false;
    out.body = rest.substr(0, len);
    return true;
  }
  out.body = rest;
  return eof;
}

}  // namespace

HttpResponse raw_request(int port, const std::string& bytes, std::chrono::milliseconds timeout) {
  HttpResponse r;
  int fd = connect_to(port);
  if (fd < 0) return r;
  send_all(fd, bytes);
  std::string buf;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool done = false;
  while (!done) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    char tmp[65536];
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) {
      r.closed = true;
      parse_complete(buf, r, true);
      break;
    }
    buf.append(tmp, static_cast<std::size_t>(n));
    done = parse_complete(buf, r, false);
  }
  if (done) {
    // Did the server close the connection after this response?
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) > 0) {
      char tmp[16];
      if (::recv(fd, tmp, sizeof tmp, MSG_PEEK) <= 0) r.closed = true;
    }
  }
  ::close(fd);
  return r;
}

HttpResponse request(int port, const std::string& method, const std::string& path,
                     const std::string& body,
                     const std::vector<std::pair<std::string, std::string>>& headers,
                     std::chrono::milliseconds timeout) {
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
  if (!body.empty() || method == "POST")
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "Connection: close\r\n\r\n" + body;
  return raw_request(port, req, timeout);
}

HttpResponse post_json(int port, const std::string& path, const std::string& body,
                       const std::string& key,
                       const std::vector<std::pair<std::string, std::string>>& extra) {
  std::vector<std::pair<std::string, std::string>> h = {{"Content-Type", "application/json"}};
  if (!key.empty()) h.emplace_back("Authorization", "Bearer " + key);
  h.insert(h.end(), extra.begin(), extra.end());
  return request(port, "POST", path, body, h);
}

StreamReader::StreamReader(int port, const std::string& bytes) {
  fd_ = connect_to(port);
  start_ = std::chrono::steady_clock::now();
  if (fd_ >= 0) send_all(fd_, bytes);
}

StreamReader::~StreamReader() {
  close();
}

void StreamReader::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool StreamReader::read_some(TimedChunk& out, std::chrono::milliseconds timeout) {
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
  char tmp[65536];
  ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
  if (n <= 0) return false;
  out.at_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  out.data.assign(tmp, static_cast<std::size_t>(n));
  return true;
}

std::string chat_body(const std::string& model, bool stream, int max_tokens,
                      const std::string& content) {
  std::string b = "{\"model\":\"" + model + "\",\"messages\":[{\"role\":\"user\",\"content\":\"" +
                  content + "\"}]";
  if (stream) b += ",\"stream\":true";
  if (max_tokens > 0) b += ",\"max_tokens\":" + std::to_string(max_tokens);
  return b + "}";
}

std::string raw_post(const std::string& path, const std::string& body, const std::string& key,
                     const std::vector<std::pair<std::string, std::string>>& extra) {
  std::string req =
      "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
  if (!key.empty()) req += "Authorization: Bearer " + key + "\r\n";
  for (const auto& [k, v] : extra) req += k + ": " + v + "\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  return req;
}

double metric(const std::string& text, const std::string& series) {
  auto p = text.find("\n" + series + " ");
  if (p == std::string::npos) return std::nan("");
  return std::strtod(text.c_str() + p + series.size() + 2, nullptr);
}

std::size_t count(const std::string& hay, const std::string& needle) {
  std::size_t n = 0, pos = 0;
  while ((pos = hay.find(needle, pos)) != std::string::npos) {
    ++n;
    pos += needle.size();
  }
  return n;
}

Sim start_sim(const std::string& yaml) {
  Sim s;
  auto dir = temp_dir();
  write_file(dir + "/sim.yaml", yaml);
  // A free port can be taken by a test running in parallel before the simulator binds it: then
  // it exits with "Address already in use", and another port is tried.
  for (int attempt = 0;; ++attempt) {
    s.port = free_port();
    s.proc = Process({binary(), "sim", "--config", dir + "/sim.yaml", "--listen",
                      "127.0.0.1:" + std::to_string(s.port)},
                     {}, "sim-");
    if (wait_for_port(s.port) && s.proc.running()) return s;
    const std::string err = s.proc.stderr_text();
    if (attempt < 2 && err.find("Address already in use") != std::string::npos) continue;
    throw std::runtime_error("sim did not start: " + err);
  }
}

Gw start_gateway(const std::string& yaml, std::map<std::string, std::string> env,
                 std::vector<std::string> args) {
  Gw g;
  auto dir = temp_dir();
  g.config_path = dir + "/gateway.yaml";
  g.access_log = dir + "/access.log";
  // A reserved port is still free only for test processes: another program may have bound it
  // meanwhile. Then the gateway exits with "Address already in use", and another port is tried.
  for (int attempt = 0;; ++attempt) {
    g.port = free_port();
    write_file(g.config_path, "listen: 127.0.0.1:" + std::to_string(g.port) +
                                  "\naccess_log: {path: " + g.access_log + "}\n" + yaml);
    std::vector<std::string> argv = {binary(), "serve", "--config", g.config_path};
    argv.insert(argv.end(), args.begin(), args.end());
    g.proc = Process(std::move(argv), env, "gw-");
    if (wait_for_port(g.port)) return g;
    const std::string err = g.proc.stderr_text();
    if (attempt < 2 && err.find("Address already in use") != std::string::npos) continue;
    throw std::runtime_error("gateway did not start: " + err);
  }
}

std::vector<HttpResponse> at_once(int n, const std::function<HttpResponse(int)>& call) {
  std::vector<HttpResponse> out(static_cast<std::size_t>(n));
  std::latch go(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      out[static_cast<std::size_t>(i)] = call(i);
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

std::string object_with(const std::string& body, const std::string& needle) {
  auto at = body.find(needle);
  if (at == std::string::npos) return {};
  auto open = body.rfind('{', at);
  auto close = body.find('}', at);
  if (open == std::string::npos || close == std::string::npos) return {};
  return body.substr(open, close - open + 1);
}

HttpResponse admin_request(int port, const std::string& admin_key, const std::string& method,
                           const std::string& path, const std::string& body) {
  std::vector<std::pair<std::string, std::string>> h{{"Authorization", "Bearer " + admin_key}};
  if (!body.empty()) h.emplace_back("Content-Type", "application/json");
  return request(port, method, path, body, h);
}

std::string access_log_line(const std::string& path, const std::string& request_id,
                            std::chrono::milliseconds timeout) {
  const std::string needle = "\"request_id\":\"" + request_id + "\"";
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::string log = read_file(path);
    const auto at = log.find(needle);
    if (at != std::string::npos) {
      const auto start = log.rfind('\n', at);
      const auto from = start == std::string::npos ? 0 : start + 1;
      const auto end = log.find('\n', at);
      if (end != std::string::npos) return log.substr(from, end - from);  // a whole line
    }
    if (std::chrono::steady_clock::now() > deadline) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string budget_entry(int port, const std::string& admin_key, const std::string& id) {
  auto r = admin_request(port, admin_key, "GET", "/admin/budgets");
  if (r.status != 200) return {};
  return object_with(r.body, "\"id\":\"" + id + "\"");
}

double num(const std::string& obj, const std::string& field) {
  auto at = obj.find("\"" + field + "\":");
  if (at == std::string::npos) return std::nan("");
  return std::strtod(obj.c_str() + at + field.size() + 3, nullptr);
}

}  // namespace bw::test
