#pragma once
// A Server for a test: built around a handler, started on a free loopback port and run on its
// own worker threads; drained and stopped when the test ends. `started` says whether start()
// succeeded (the port is server.port()).
#include <utility>

#include "http/server.h"

namespace bw::http::test {

struct RunningServer {
  RunningServer(ServerOptions options, Handler handler)
      : server(std::move(options), std::move(handler)) {
    started = server.start().ok();
    if (started) server.run();
  }
  ~RunningServer() {
    if (!started) return;
    server.begin_drain();
    server.stop();
  }
  RunningServer(const RunningServer&) = delete;
  RunningServer& operator=(const RunningServer&) = delete;

  // Port 0 (any free one), one worker.
  static ServerOptions one_worker() {
    ServerOptions o;
    o.port = 0;
    o.workers = 1;
    return o;
  }

  Server server;
  bool started = false;
};

}  // namespace bw::http::test
