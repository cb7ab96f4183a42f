# Profile-guided optimisation with GCC (docs/building.md). scripts/pgo-build.sh drives the three
# steps: the instrumented build (preset pgo-gen), a training run (scripts/pgo-train.sh) and the
# optimised build (preset pgo).
#   BW_PGO=GENERATE  every object counts its branches and calls; a process of the instrumented
#                    binary writes one .gcda file next to each object file when it exits
#   BW_PGO=USE       every object is optimised with the .gcda file next to it in this build tree
#                    (scripts/pgo-build.sh copies them from the instrumented tree). Hot and cold
#                    code are laid out apart (.text.hot, .text.unlikely), branches ordered and
#                    inlining decided from the counts.
# The profile files are found by the object's path (plain -fprofile-use, no directory), the one
# form ccache 4.7 caches: it hashes the .gcda into the key, so an unchanged profile is a cache
# hit and a new one a miss. -fprofile-use=DIR (mangled names) and -fprofile-partial-training make
# every compilation uncacheable; -fprofile-update=atomic too, so atomic counters come from -pthread
# (GCC then picks -fprofile-update=prefer-atomic: the gateway's threads share the counters).
set(BW_PGO OFF CACHE STRING "Profile-guided optimisation: OFF, GENERATE or USE")
set_property(CACHE BW_PGO PROPERTY STRINGS OFF GENERATE USE)
if(BW_PGO STREQUAL "GENERATE")
  add_compile_options(-fprofile-generate -pthread)
  add_link_options(-fprofile-generate -pthread)
elseif(BW_PGO STREQUAL "USE")
  # An object without a profile (code the training never linked) is built as without PGO; a
  # profile older than the code it is used for is a warning (the function is built without it),
  # not an error.
  add_compile_options(-fprofile-use -fprofile-correction -Wno-missing-profile
                      -Wno-error=coverage-mismatch)
  add_link_options(-fprofile-use)
elseif(NOT BW_PGO STREQUAL "OFF")
  message(FATAL_ERROR "BW_PGO must be OFF, GENERATE or USE, not ${BW_PGO}")
endif()

# `bellwether serve` and `sim` end with _exit(), which skips the exit handlers that write the
# profile. In the instrumented build the executable's calls of _exit go through
# __wrap__exit (cmake/pgo_exit.cc), which writes the profile first.
function(bw_pgo_executable target)
  if(BW_PGO STREQUAL "GENERATE")
    target_sources(${target} PRIVATE ${PROJECT_SOURCE_DIR}/cmake/pgo_exit.cc)
    target_link_options(${target} PRIVATE -Wl,--wrap=_exit)
  endif()
endfunction()
