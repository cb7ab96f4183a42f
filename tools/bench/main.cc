// Standalone driver for the bench tool, for machines without the gateway binary:
//   bw_bench [bench flags]            == bellwether bench [flags]
//   bw_bench compare [compare flags]  == bellwether bench compare [flags]
#include <cstring>

#include "bench_tool.h"

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "compare") == 0) {
    argv[1] = argv[0];
    return bw::bench::run_bench_compare(argc - 1, argv + 1);
  }
  return bw::bench::run_bench(argc, argv);
}
