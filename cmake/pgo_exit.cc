// Linked into the instrumented build only (BW_PGO=GENERATE, cmake/pgo.cmake): the executable is
// linked with -Wl,--wrap=_exit, so its calls of _exit() come here. _exit() skips the exit
// handlers, among them the one that writes the profile (.gcda files); write it first.
extern "C" {
void __gcov_dump(void);
[[noreturn]] void __real__exit(int status);

[[noreturn]] void __wrap__exit(int status) {
  __gcov_dump();
  __real__exit(status);
}
}
