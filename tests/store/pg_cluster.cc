#include "pg_cluster.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "support/free_port.h"

namespace bw::store::testing {

namespace {

PgCluster* g_cluster = nullptr;
bool g_tried = false;
std::string g_error;

// fork + exec argv with stdout/stderr appended to `log`; returns the child pid or -1.
pid_t spawn(const std::vector<std::string>& argv, const std::string& log) {
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    // If the test binary dies without stopping the cluster, runuser passes this on to postgres.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ::close(fd);
  return pid;
}

int run(const std::vector<std::string>& argv, const std::string& log) {
  const pid_t pid = spawn(argv, log);
  if (pid < 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Reserved for this test process (support/free_port.h): no other test process is handed it.
int free_port() {
  return ::bw::testing::reserve_loopback_port();
}

std::string tail(const std::string& path) {
  std::ifstream in(path);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() > 600 ? all.substr(all.size() - 600) : all;
}

bool wait_exit(pid_t pid, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class PgEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    if (g_cluster) g_cluster->stop();
  }
};

[[maybe_unused]] ::testing::Environment* const kEnv =
    ::testing::AddGlobalTestEnvironment(new PgEnvironment);

}  // namespace

bool PgCluster::installed() {
  return ::access((std::string(kPgBinDir) + "/initdb").c_str(), X_OK) == 0;
}

const std::string& PgCluster::start_error() {
  return g_error;
}

PgCluster* PgCluster::get() {
  if (!g_tried) {
    g_tried = true;
    auto* c = new PgCluster();
    if (c->start(g_error)) {
      g_cluster = c;
    } else {
      c->stop();
      delete c;
    }
  }
  return g_cluster;
}

std::string PgCluster::uri(const std::string& db) const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" + db;
}

bool PgCluster::start(std::string& error) {
  const passwd* pw = ::getpwnam("postgres");
  if (!pw) {
    error = "no postgres user";
    return false;
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "bw_pg_XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) {
    error = "mkdtemp failed";
    return false;
  }
  dir_ = tmpl;
  if (::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0 || ::chmod(dir_.c_str(), 0700) != 0) {
    error = "chown " + dir_ + " failed";
    return false;
  }
  const std::string data = dir_ + "/data";
  const std::string bin = kPgBinDir;
  if (run({"runuser", "-u", "postgres", "--", bin + "/initdb", "-D", data, "-A", "trust", "-U",
           "postgres", "-E", "UTF8", "--locale=C", "--no-sync"},
          dir_ + "/initdb.log") != 0) {
    error = "initdb failed: " + tail(dir_ + "/initdb.log");
    return false;
  }
  for (int attempt = 0; attempt < 5; ++attempt) {
    port_ = free_port();
    bool port_taken = false;
    if (launch(error, port_taken)) return true;
    if (!port_taken) return false;
  }
  error = "postgres failed to start: " + tail(dir_ + "/postgres.log");
  return false;
}

bool PgCluster::launch(std::string& error, bool& port_taken) {
  port_taken = false;
  const std::string data = dir_ + "/data";
  runuser_pid_ =
      spawn({"runuser", "-u", "postgres", "--", std::string(kPgBinDir) + "/postgres", "-D", data,
             "-k", dir_, "-p", std::to_string(port_), "-c", "listen_addresses=127.0.0.1", "-c",
             "fsync=off", "-c", "max_connections=200"},
            dir_ + "/postgres.log");
  if (runuser_pid_ < 0) {
    error = "spawn postgres failed";
    return false;
  }
  const std::string ping = "host=127.0.0.1 port=" + std::to_string(port_) +
                           " user=postgres dbname=postgres connect_timeout=2";
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < until) {
    if (PQping(ping.c_str()) == PQPING_OK) {
      std::ifstream pidfile(data + "/postmaster.pid");
      pidfile >> postmaster_pid_;
      if (postmaster_pid_ > 0) return true;
    }
    int status = 0;
    if (::waitpid(runuser_pid_, &status, WNOHANG) == runuser_pid_) {
      runuser_pid_ = -1;
      port_taken = true;  // e.g. the port was taken meanwhile: the caller may try another
      error = "postgres exited: " + tail(dir_ + "/postgres.log");
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  error = "postgres did not accept connections: " + tail(dir_ + "/postgres.log");
  return false;
}

void PgCluster::pause() {
  if (postmaster_pid_ > 0) {
    ::kill(postmaster_pid_, SIGINT);  // fast shutdown: connections are cut
    postmaster_pid_ = -1;
  }
  if (runuser_pid_ > 0) {
    if (!wait_exit(runuser_pid_, std::chrono::seconds(30))) {
      ::kill(runuser_pid_, SIGKILL);
      wait_exit(runuser_pid_, std::chrono::seconds(5));
    }
    runuser_pid_ = -1;
  }
}

bool PgCluster::resume() {
  if (runuser_pid_ > 0) return true;
  std::string error;
  bool port_taken = false;
  return launch(error, port_taken);
}

std::string PgCluster::query(const std::string& db, const std::string& sql) const {
  PGconn* c = PQconnectdb(("host=127.0.0.1 port=" + std::to_string(port_) +
                           " user=postgres dbname=" + db + " connect_timeout=5")
                              .c_str());
  std::string out;
  if (PQstatus(c) != CONNECTION_OK) {
    out = PQerrorMessage(c);
  } else {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
      for (int row = 0; row < PQntuples(r); ++row) {
        if (row > 0) out += '\n';
        for (int col = 0; col < PQnfields(r); ++col) {
          if (col > 0) out += '|';
          out += PQgetvalue(r, row, col);
        }
      }
    } else if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      out = PQresultErrorMessage(r);
    }
    PQclear(r);
  }
  PQfinish(c);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string PgCluster::create_database(std::string* error) {
  static std::atomic<int> counter{0};
  const std::string name =
      "bw_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1));
  PGconn* c = PQconnectdb(("host=127.0.0.1 port=" + std::to_string(port_) +
                           " user=postgres dbname=postgres connect_timeout=5")
                              .c_str());
  std::string err;
  if (PQstatus(c) != CONNECTION_OK) {
    err = PQerrorMessage(c);
  } else {
    PGresult* r = PQexec(c, ("CREATE DATABASE " + name + " TEMPLATE template0").c_str());
    if (PQresultStatus(r) != PGRES_COMMAND_OK) err = PQresultErrorMessage(r);
    PQclear(r);
  }
  PQfinish(c);
  if (!err.empty()) {
    if (error) *error = err;
    return "";
  }
  return name;
}

void PgCluster::stop() {
  pause();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    dir_.clear();
  }
}

}  // namespace bw::store::testing
