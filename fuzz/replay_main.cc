// Replays fuzz inputs without libFuzzer: every file of every directory (or file) named on the
// command line goes once through LLVMFuzzerTestOneInput. A crash, a sanitizer report or an
// abort() from a target's own check fails the run; the regular test suite runs this over each
// committed corpus. `--except NAME` leaves out the corpus files of that name.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::vector<std::string> except;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--except" && i + 1 < argc) {
      except.emplace_back(argv[++i]);
      continue;
    }
    const fs::path p(argv[i]);
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "no such corpus: %s\n", argv[i]);
      return 2;
    }
  }
  std::erase_if(files, [&](const fs::path& f) {
    return std::find(except.begin(), except.end(), f.filename().string()) != except.end();
  });
  if (files.empty()) {
    std::fprintf(stderr, "empty corpus\n");
    return 2;
  }
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  }
  std::printf("replayed %zu inputs (%zu names left out)\n", files.size(), except.size());
  return 0;
}
