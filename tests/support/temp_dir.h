#pragma once
// Test helpers: a temporary directory removed at scope exit.
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace bw::testing {

// Creates a new directory under the temporary directory whose name starts with `prefix`, and
// returns its path, or "" when it cannot be made. The name is made unique by mkdtemp, never from
// the process id alone: process ids are reused during a long test run, and a directory kept from
// an earlier process (a failed test keeps its logs) must not be found again by a new one.
inline std::string make_unique_dir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
  return ::mkdtemp(tmpl.data()) ? tmpl : std::string();
}

class TempDir {
 public:
  TempDir() : path_(make_unique_dir("bw_test_")) {}
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace bw::testing
