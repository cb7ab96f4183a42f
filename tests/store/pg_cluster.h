#pragma once
// A real PostgreSQL 15 cluster for the store and fleet tests: initdb into a fresh temporary
// directory owned by the `postgres` user, `postgres` on a free 127.0.0.1 port (fsync=off: the tests
// check what the client acknowledges, not the disk), one cluster per test binary, started on first
// use and stopped (SIGINT, fast shutdown) by a gtest Environment at the end. The server runs in the
// foreground under the test binary (never daemonised), and dies with it when the binary is killed
// (a timeout, a crash). Each test gets its own database from create_database().
#include <string>

namespace bw::store::testing {

constexpr const char* kPgBinDir = "/usr/lib/postgresql/15/bin";

class PgCluster {
 public:
  // True when the PostgreSQL binaries are installed (the only reason tests may skip).
  static bool installed();
  // The running cluster, started on first call; nullptr if it could not start (see start_error()).
  static PgCluster* get();
  static const std::string& start_error();

  int port() const { return port_; }
  // "postgresql://postgres@127.0.0.1:<port>/<db>"
  std::string uri(const std::string& db) const;
  // A new empty database; its name, or "" on error (with `error` set).
  std::string create_database(std::string* error = nullptr);
  // The rows of `sql` in database `db`, columns joined by '|' and rows by '\n' (as psql -At), or
  // the error message.
  std::string query(const std::string& db, const std::string& sql) const;
  // Stops the server (fast shutdown: connections are cut) and keeps its data; resume() starts it
  // again on the same port.
  void pause();
  bool resume();
  void stop();

 private:
  PgCluster() = default;
  bool start(std::string& error);
  bool launch(std::string& error, bool& port_taken);

  std::string dir_;
  int port_ = 0;
  int runuser_pid_ = -1;
  int postmaster_pid_ = -1;
};

}  // namespace bw::store::testing
